"""The classification EM loop of the masked EM algorithm (KlustaKwik 2).

Clusters: 0 is the noise cluster (uniform density 1 on the features scaled to
``[0, 1]``), 1 the MUA cluster (a Gaussian with diagonal covariance), 2 and up
the Gaussian clusters. Each iteration:

- **M-step**: weight ``(n_c + prior) / (n + noise_point + mua_point +
  prior_point * n_gaussian)``; mean of the corrected data with `prior_point`
  pseudo-points at the noise mean; covariance of the corrected data plus the
  variance corrections plus `prior_point` times the noise variance on the
  diagonal, divided by ``n_c + prior - 1``. The covariance is a full block on
  the cluster's unmasked features (those whose summed masks reach
  `points_for_cluster_mask`) and diagonal elsewhere, where (as KlustaKwik
  2) the variance is the noise variance, ``(n_c + prior) / (n_c + prior - 1)``
  times it: spikes are noise on the features their cluster masks.
- **E-step** (numba): negative expected log-likelihood of each spike under
  each cluster; each spike goes to its best cluster (classification EM).
- **Deletion**: the cluster whose removal (its spikes going to their
  second-best cluster) costs less than the penalty it saves is deleted (one
  per iteration). Penalty per cluster (as KlustaKwik 2): with ``k`` the mean
  over its spikes of ``u (u + 1) / 2 + u + 1`` (``u`` the sum of the spike's
  masks, KlustaKwik 2's "float number of unmasked features"),
  ``2 penalty_k k + penalty_k_log_n k log(n_spikes) / 2``.
- **Splits**: at iteration `split_first`, every `split_every` iterations after,
  and when the loop converges, each cluster is split in two along the first
  principal axis of its corrected data, refined by a CEM on its spikes, and
  the split kept if it lowers the total score (negative log-likelihood plus
  penalties) of the whole data set.
- Stop when at most ``num_changed_threshold * n_spikes`` spikes changed
  cluster and no split helps, or after `max_iterations`.

Simplifications with respect to KlustaKwik 2: no quick steps (every E-step is
full: `full_step_every`, `dist_thresh` and the quick-step parameters are
ignored), dense corrected data, the covariance of masked features uses the
exact variance corrections, and splits start from the principal axis rather
than a random/mask start (deterministic and independent of the spike order).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .data import MaskedData

logger = logging.getLogger("phy")

NOISE, MUA, FIRST_GAUSSIAN = 0, 1, 2


@dataclass
class _Cluster:
    mean: np.ndarray
    unmasked: np.ndarray  # feature indices of the covariance block
    chol: np.ndarray  # Cholesky factor of the block
    diag: np.ndarray  # (n_features,) covariance diagonal of the other features
    inv_cov_diag: np.ndarray
    log_root_det: float
    weight: float


def subset(data: MaskedData, spikes: np.ndarray) -> MaskedData:
    """The data of some spikes (same noise statistics)."""
    counts = np.diff(data.unmasked_indptr)[spikes]
    indptr = np.zeros(len(spikes) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.concatenate([data.unmasked_indices[data.unmasked_indptr[s]:
                                                    data.unmasked_indptr[s + 1]]
                              for s in spikes]) if len(spikes) else np.zeros(0, np.int64)
    return MaskedData(data.features[spikes], data.masks[spikes], data.noise_mean,
                      data.noise_variance, data.corrected[spikes], data.correction[spikes],
                      indptr, indices.astype(np.int64))


class MaskedEM:
    """Masked classification EM on `data` with KlustaKwik 2 parameters `p`."""

    def __init__(self, data: MaskedData, p: dict) -> None:
        self.data = data
        self.p = p
        # KlustaKwik 2 counts the parameters of a spike with its *float* number of
        # unmasked features, the sum of its masks (not the number of masks > 0): with
        # soft masks on many channels the count overstates the penalty several-fold.
        self.n_unmasked = data.masks.sum(axis=1)

    # M-step -------------------------------------------------------------------

    def _prior(self, c: int) -> float:
        return float(self.p["mua_point"] if c == MUA else self.p["prior_point"])

    def m_step(self, labels: np.ndarray) -> dict[int, _Cluster]:
        d, p = self.data, self.p
        n_clusters = int(labels.max()) + 1 if labels.size else FIRST_GAUSSIAN
        counts = np.bincount(labels, minlength=max(n_clusters, FIRST_GAUSSIAN))
        alive = [c for c in range(FIRST_GAUSSIAN, len(counts)) if counts[c] > 0]
        denom = d.n_spikes + p["prior_point"] * len(alive)
        denom += p["noise_point"] if p["use_noise_cluster"] else 0
        denom += p["mua_point"] if p["use_mua_cluster"] else 0
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(len(counts) + 1))
        model: dict[int, _Cluster] = {}
        if p["use_noise_cluster"]:
            model[NOISE] = None  # handled apart: uniform density
            self.noise_weight = (counts[NOISE] + p["noise_point"]) / denom
        candidates = ([MUA] if p["use_mua_cluster"] else []) + alive
        for c in candidates:
            spikes = order[bounds[c]:bounds[c + 1]]
            cluster = self._estimate(c, spikes, denom)
            if cluster is not None:
                model[c] = cluster
        return model

    def _estimate(self, c: int, spikes: np.ndarray, denom: float) -> _Cluster | None:
        d = self.data
        prior = self._prior(c)
        n_c = len(spikes)
        y, eta = d.corrected[spikes], d.correction[spikes]
        mean = (y.sum(axis=0) + prior * d.noise_mean) / (n_c + prior)
        if c == MUA:
            unmasked = np.zeros(0, dtype=np.int64)
        else:
            mask_sum = d.masks[spikes].sum(axis=0)
            unmasked = np.flatnonzero(mask_sum >= self.p["points_for_cluster_mask"])
        z = y - mean
        factor = 1.0 / max(n_c + prior - 1.0, 1.0)
        diag = ((z ** 2).sum(axis=0) + eta.sum(axis=0) + prior * d.noise_variance) * factor
        if c != MUA:
            # As KlustaKwik 2: on the features the cluster masks, the variance is the
            # noise variance (its spikes there are noise), not the empirical one.
            masked = np.ones(d.n_features, dtype=bool)
            masked[unmasked] = False
            diag[masked] = (n_c + prior) * d.noise_variance[masked] * factor
        zu = z[:, unmasked]
        block = zu.T @ zu * factor
        block[np.diag_indices_from(block)] = diag[unmasked]
        try:
            chol = np.linalg.cholesky(block) if len(unmasked) else np.zeros((0, 0))
        except np.linalg.LinAlgError:
            logger.debug("Cluster %d: singular covariance, dropped.", c)
            return None
        if np.any(diag <= 0):
            return None
        inv_cov_diag = 1.0 / diag
        if len(unmasked):
            inv_chol = np.linalg.inv(chol)
            inv_cov_diag[unmasked] = (inv_chol ** 2).sum(axis=0)
        is_block = np.zeros(d.n_features, dtype=bool)
        is_block[unmasked] = True
        log_root_det = float(np.log(np.diag(chol)).sum() + 0.5 * np.log(diag[~is_block]).sum())
        weight = (n_c + prior) / denom
        return _Cluster(mean, unmasked.astype(np.int64), np.ascontiguousarray(chol), diag,
                        inv_cov_diag, log_root_det, weight)

    # E-step -------------------------------------------------------------------

    def cluster_log_p(self, cluster: _Cluster) -> np.ndarray:
        """Negative expected log-likelihood of each spike under a Gaussian cluster."""
        from .kernels import cluster_log_p

        d = self.data
        is_block = np.zeros(d.n_features, dtype=bool)
        is_block[cluster.unmasked] = True
        block_pos = np.full(d.n_features, -1, dtype=np.int64)
        block_pos[cluster.unmasked] = np.arange(len(cluster.unmasked))
        d0 = d.noise_mean - cluster.mean
        const = (cluster.log_root_det - math.log(cluster.weight)
                 + 0.5 * d.n_features * math.log(2 * math.pi)
                 + 0.5 * (d0[~is_block] ** 2 / cluster.diag[~is_block]).sum()
                 + 0.5 * (d.noise_variance * cluster.inv_cov_diag).sum())
        out = np.empty(d.n_spikes)
        cluster_log_p(d.corrected, d.correction, d.unmasked_indptr, d.unmasked_indices,
                      d.noise_mean, d.noise_variance, cluster.mean, block_pos,
                      cluster.unmasked, cluster.chol, cluster.diag, cluster.inv_cov_diag,
                      const, out)
        return out

    def e_step(self, model: dict[int, _Cluster]):
        """Best and second-best cluster of every spike, and their negative log-likelihoods."""
        n = self.data.n_spikes
        best = np.full(n, np.inf)
        second = np.full(n, np.inf)
        best_c = np.full(n, -1, dtype=np.int64)
        second_c = np.full(n, -1, dtype=np.int64)
        for c in sorted(model):
            if c == NOISE:
                log_p = np.full(n, -math.log(self.noise_weight))
            else:
                log_p = self.cluster_log_p(model[c])
            # Strict comparisons: ties go to the lowest cluster id.
            new_best = log_p < best
            new_second = ~new_best & (log_p < second)
            second = np.where(new_best, best, np.where(new_second, log_p, second))
            second_c = np.where(new_best, best_c, np.where(new_second, c, second_c))
            best = np.where(new_best, log_p, best)
            best_c = np.where(new_best, c, best_c)
        if np.any(best_c < 0):
            raise FloatingPointError("no cluster can hold some spikes (degenerate data).")
        return best_c, best, second_c, second

    # Score ----------------------------------------------------------------------

    def penalties(self, labels: np.ndarray) -> np.ndarray:
        u = self.n_unmasked.astype(np.float64)
        params = u * (u + 1) / 2 + u + 1
        n_clusters = max(int(labels.max()) + 1, FIRST_GAUSSIAN) if labels.size else 2
        total = np.bincount(labels, weights=params, minlength=n_clusters)
        counts = np.bincount(labels, minlength=n_clusters)
        mean_params = total / np.maximum(counts, 1)
        n = max(self.data.n_spikes, 1)
        pen = (2 * self.p["penalty_k"] * mean_params
               + self.p["penalty_k_log_n"] * mean_params * math.log(n) / 2)
        pen[NOISE] = 0.0
        return pen

    def iterate(self, labels: np.ndarray, deletion: bool):
        """One M-step, E-step (and deletion): new labels, score, and the E-step output."""
        model = self.m_step(labels)
        best_c, best, second_c, second = self.e_step(model)
        pen = self.penalties(best_c)
        deleted = False
        if deletion:
            n_clusters = len(pen)
            loss = np.bincount(best_c, weights=second - best, minlength=n_clusters)
            counts = np.bincount(best_c, minlength=n_clusters)
            gain = loss - pen
            gain[:FIRST_GAUSSIAN] = np.inf
            gain[counts == 0] = np.inf
            c = int(np.argmin(gain))
            if gain[c] < 0:
                moved = best_c == c
                if np.all(second_c[moved] >= 0):
                    best_c = np.where(moved, second_c, best_c)
                    best = np.where(moved, second, best)
                    pen = self.penalties(best_c)
                    deleted = True
        counts = np.bincount(best_c, minlength=len(pen))
        score = float(best.sum() + pen[:len(counts)][counts > 0].sum())
        return best_c, score, deleted
