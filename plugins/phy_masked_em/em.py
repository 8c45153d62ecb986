"""One iteration of the classification EM of the masked EM algorithm (KlustaKwik 2).

- **M-step** (`model.fit`): cluster weights and means (see `model`).
- **E-step** (numba): negative expected log-likelihood of each spike under each
  cluster; each spike goes to its best cluster (classification EM).
- **Deletion**: the cluster whose removal (its spikes going to their second-best
  cluster) lowers the score most, if any, is deleted (one per iteration; the
  weights of the new counts are used, see `MaskedEM.deletion_gains`).
- **Score**: the sum of the spikes' negative log-likelihoods plus the clusters'
  penalties. Penalty of a cluster: as KlustaKwik 2, with ``k`` the mean over its
  spikes of a number of parameters, ``2 penalty_k k + penalty_k_log_n k
  log(n_spikes) / 2``; the noise cluster has none. KlustaKwik 2 counts for a
  spike a mean and a full covariance on its unmasked features, ``u (u + 1) / 2
  + u + 1`` (``u`` the sum of its masks, its "float number of unmasked
  features"); the clusters here estimate no covariance (see `model`), and a spike
  counts ``u + 1``. With the tens of unmasked features of a spike on a dense
  probe, the quadratic count is hundreds to thousands of parameters: small units
  never paid for themselves, and mixed clusters were never split.
"""

from __future__ import annotations

import math

import numpy as np

from .data import MaskedData
from .model import FIRST_GAUSSIAN, MUA, NOISE, Model, fit

# Entry-cluster visits above which the E-step runs on several threads: below, the
# synchronisation of a parallel region costs more than it saves.
_PARALLEL_WORK = 2_000_000


class MaskedEM:
    """Masked classification EM on `data` with KlustaKwik 2 parameters `p`."""

    def __init__(self, data: MaskedData, p: dict, use_noise: bool | None = None,
                 use_mua: bool | None = None) -> None:
        self.data = data
        self.p = p
        self.use_noise = bool(p["use_noise_cluster"] if use_noise is None else use_noise)
        self.use_mua = bool(p["use_mua_cluster"] if use_mua is None else use_mua)
        self._inv_nv = 1.0 / data.noise_variance
        #: Parameters counted for each spike by the penalty.
        self.params = data.float_num_unmasked + 1.0

    # M-step and E-step ----------------------------------------------------------

    def fit(self, labels: np.ndarray) -> Model:
        return fit(self.data, labels, self.p, self.use_noise, self.use_mua)

    def e_step(self, model: Model):
        """Best and second-best cluster of each spike and their negative log-likelihoods."""
        from .kernels import _e_step_chunk, e_step_parallel

        d = self.data
        n = d.n_spikes
        best, second = np.empty(n), np.empty(n)
        best_c, second_c = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        # The slots unmasked on each feature, feature-major.
        features, slots = np.nonzero(model.support.T)
        feat_ptr = np.searchsorted(features, np.arange(d.n_features + 1))
        feat_g = model.g[slots, features]
        args = (d.indptr, d.indices, d.dy, d.deta, self._inv_nv, model.ids, model.const,
                model.inv_scale, model.is_const, feat_ptr, slots.astype(np.int64), feat_g,
                best_c, best, second_c, second)
        work = len(d.indices) * (len(slots) / max(d.n_features, 1) + 1) + n * len(model.ids)
        if work > _PARALLEL_WORK:
            e_step_parallel(*args)
        else:
            _e_step_chunk(0, n, *args)
        return best_c, best, second_c, second

    def own_log_p(self, model: Model, labels: np.ndarray) -> np.ndarray:
        """Negative log-likelihood of each spike under its own cluster (inf if not fitted)."""
        from .kernels import own_log_p

        d = self.data
        slots = model.slot_of(int(labels.max()) + 1 if len(labels) else 0)[labels]
        out = np.empty(d.n_spikes)
        own_log_p(d.indptr, d.indices, d.dy, d.deta, self._inv_nv, slots, model.const,
                  model.inv_scale, model.is_const, model.g, out)
        return out

    # Score ----------------------------------------------------------------------

    @property
    def penalty_per_parameter(self) -> float:
        log_n = math.log(max(self.data.n_spikes, 1))
        return 2 * self.p["penalty_k"] + self.p["penalty_k_log_n"] * log_n / 2

    def penalty(self, params_sum, counts) -> np.ndarray:
        """Penalties of clusters of `counts` spikes whose parameter counts sum to `params_sum`."""
        params_sum, counts = np.asarray(params_sum, float), np.asarray(counts)
        pen = params_sum / np.maximum(counts, 1) * self.penalty_per_parameter
        pen[counts == 0] = 0.0
        return pen

    def penalties(self, labels: np.ndarray, n_clusters: int | None = None) -> np.ndarray:
        """Penalty of each cluster id (0 for empty clusters and the noise cluster)."""
        if n_clusters is None:
            n_clusters = max(int(labels.max()) + 1 if len(labels) else 0, FIRST_GAUSSIAN)
        pen = self.penalty(np.bincount(labels, weights=self.params, minlength=n_clusters),
                           np.bincount(labels, minlength=n_clusters))
        pen[NOISE] = 0.0
        return pen

    def _priors(self, n_clusters: int) -> np.ndarray:
        """The weight prior (pseudo-spikes) of each cluster id."""
        prior = np.full(n_clusters, float(self.p["prior_point"]))
        prior[NOISE] = self.p["noise_point"]
        prior[MUA] = self.p["mua_point"]
        return prior

    def deletion(self, model: Model, best_c, best, second_c, second) -> int | None:
        """The cluster whose deletion lowers the score most, or None (see `deletion_gains`)."""
        gains = self.deletion_gains(model, best_c, best, second_c, second)
        c = int(np.argmax(gains))
        return c if gains[c] > 0 else None

    def deletion_gains(self, model: Model, best_c, best, second_c, second) -> np.ndarray:
        """How much deleting each cluster would lower the score (-inf: not deletable).

        Deleting cluster ``c`` moves its spikes to their second-best cluster
        (KlustaKwik 2): their log-likelihoods are their second-best ones (means
        kept), the penalty of ``c`` goes, and those of the clusters receiving its
        spikes change with their mean parameter counts. Unlike KlustaKwik 2, the
        weights are those of the new counts (the receivers grow, the common
        denominator loses ``c``'s prior): with the old weights, two clusters
        sharing one unit each see the other's spikes at half their weight and
        never merge. The score before uses the weights of the current counts too.
        """
        n = len(best_c)
        n_clusters = max(int(best_c.max()) + 1, int(second_c.max()) + 1, FIRST_GAUSSIAN)
        counts = np.bincount(best_c, minlength=n_clusters)
        prior = self._priors(n_clusters)
        used = np.ones(n_clusters, dtype=bool)
        used[NOISE], used[MUA] = self.use_noise, self.use_mua
        used[FIRST_GAUSSIAN:] = counts[FIRST_GAUSSIAN:] > 0
        denom = n + prior[used].sum()
        # Log-likelihoods without the model's weight terms.
        log_w = np.log(model.weights[model.slot_of(n_clusters)])
        loss = np.bincount(best_c, weights=(second + log_w[second_c]) - (best + log_w[best_c]),
                           minlength=n_clusters)
        total = np.bincount(best_c, weights=self.params, minlength=n_clusters)
        pen = self.penalty(total, counts)
        pen[NOISE] = 0.0
        order = np.argsort(best_c, kind="stable")
        bounds = np.searchsorted(best_c[order], np.arange(n_clusters + 1))
        gains = np.full(n_clusters, -np.inf)
        for c in range(FIRST_GAUSSIAN, n_clusters):
            spikes = order[bounds[c]:bounds[c + 1]]
            to = second_c[spikes]
            if not len(spikes) or np.any(to < 0):
                continue
            receivers, inverse = np.unique(to, return_inverse=True)
            moved = np.bincount(inverse)
            n_r, p_r = counts[receivers], prior[receivers]
            # Weight terms -log((count + prior) / denom), summed over the spikes, after - before.
            weights_change = (n_r * np.log(n_r + p_r) - (n_r + moved) * np.log(n_r + moved + p_r)
                              ).sum() + len(spikes) * np.log(len(spikes) + prior[c])
            weights_change += n * np.log((denom - prior[c]) / denom)
            new = self.penalty(total[receivers] + np.bincount(inverse, weights=self.params[spikes]),
                               n_r + moved)
            new[receivers == NOISE] = 0.0
            gains[c] = pen[c] + pen[receivers].sum() - new.sum() - loss[c] - weights_change
        return gains

    def iterate(self, labels: np.ndarray, deletion: bool, noise: bool = True):
        """M-step, E-step (and deletion): new labels, score, whether a cluster was deleted.

        With `noise` False, no spike goes to the noise cluster.
        """
        model = self.fit(labels)
        if not noise:
            model.const = np.where(model.is_const, np.inf, model.const)
        best_c, best, second_c, second = self.e_step(model)
        if np.any(best_c < 0):
            raise FloatingPointError("no cluster can hold some spikes (degenerate data).")
        deleted = self.deletion(model, best_c, best, second_c, second) if deletion else None
        if deleted is not None:
            moved = best_c == deleted
            best_c = np.where(moved, second_c, best_c)
            best = np.where(moved, second, best)
        score = float(best.sum() + self.penalties(best_c).sum())
        return best_c, score, deleted is not None


__all__ = ["MaskedEM", "NOISE", "MUA", "FIRST_GAUSSIAN"]
