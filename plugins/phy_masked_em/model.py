"""The M-step: cluster parameters from labels, packed for the E-step kernels.

Clusters: 0 is the noise cluster (uniform density 1 on the features scaled to
``[0, 1]``), 1 the MUA cluster, 2 and up the Gaussian clusters.

- Weight (KlustaKwik 2): ``(n_c + prior) / (n + noise_point + mua_point +
  prior_point * n_gaussian)``, with ``prior`` `noise_point` for the noise
  cluster, `mua_point` for MUA and `prior_point` for the others.
- *Unmasked features* of a cluster (its "cluster mask"): those on which the masks
  of its spikes sum to at least `points_for_cluster_mask` and to at least
  `fraction_for_cluster_mask` times its number of spikes. The fraction keeps the
  cluster mask of a large cluster to its channels: its spikes include false
  detections and overlaps that unmask other channels here and there, and with an
  absolute threshold alone every channel is reached once a cluster is large enough
  (measured on a 1024-channel recording: 683 unmasked features per spike's cluster
  at 14,000 spikes, 2,109 at 56,000, so the E-step's work grew as the square of the
  number of spikes). A feature unmasked in a small fraction of the spikes has a mean
  offset of that fraction times theirs (masked spikes count as the noise mean): leaving
  it at the noise mean changes the likelihoods little. Off (0) by default: with the fit
  bounded to `max_spikes` spikes (see `loop`) it saves little (56,000 spikes of that
  recording: 48 -> 43 CPU s, the split trials dominate), and it changes the 20 s
  benchmark sortings (0.04 or 0.05: one unit more or one unit fewer at SNR >= 3 after
  template matching, depending on the seed; 2 more units on 1024 channels), where 0
  keeps them bit for bit.
- Mean: on its unmasked features, the mean of the corrected data with ``prior``
  pseudo-points at the noise mean (KlustaKwik 2); on the others, the noise mean.
- Variance: ``(n_c + prior) / (n_c + prior - 1)`` times the noise variance on
  every feature, the variance KlustaKwik 2 gives a cluster on its masked
  features.

This departs from KlustaKwik 2, which estimates a full covariance block on a
cluster's unmasked features (and keeps the empirical mean on all features).
Measured on synthetic 384- and 1024-channel recordings, the blocks let a large
cluster absorb its neighbours (a mixture of units looks like one broad
Gaussian) while the halves of a split lose them, so mixed clusters never split:
"a unit is its mean waveform plus noise" sorts much better. It also makes the
M-step a sum over unmasked entries and the E-step sparse (see `kernels`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .data import MaskedData

NOISE, MUA, FIRST_GAUSSIAN = 0, 1, 2


@dataclass
class Model:
    """Cluster parameters, one *slot* per cluster, cluster ids ascending."""

    ids: np.ndarray  # (k,) cluster id of each slot
    counts: np.ndarray  # (k,) spikes
    weights: np.ndarray  # (k,)
    const: np.ndarray  # (k,) negative log-likelihood of a fully masked spike
    inv_scale: np.ndarray  # (k,) noise variance / cluster variance
    is_const: np.ndarray  # (k,) bool: the noise cluster (no feature terms)
    g: np.ndarray  # (k, n_features): (noise mean - mean) / noise variance
    support: np.ndarray  # (k, n_features) bool: the unmasked features

    def slot_of(self, n_clusters: int) -> np.ndarray:
        """Slot of each cluster id ``0 .. n_clusters - 1`` (-1 if not in the model)."""
        out = np.full(max(n_clusters, int(self.ids.max()) + 1 if len(self.ids) else 0), -1,
                      dtype=np.int64)
        out[self.ids] = np.arange(len(self.ids))
        return out


def unmasked_features(mask_sums: np.ndarray, counts: np.ndarray, p: dict) -> np.ndarray:
    """Which features are unmasked for clusters of `counts` spikes with these summed masks
    (one row per cluster): at least `points_for_cluster_mask` and at least
    `fraction_for_cluster_mask` of the cluster's spikes."""
    fraction = float(p.get("fraction_for_cluster_mask") or 0.0)
    counts = np.asarray(counts, dtype=np.float64)
    return mask_sums >= np.maximum(p["points_for_cluster_mask"], fraction * counts)[:, None]


def fit(data: MaskedData, labels: np.ndarray, p: dict, use_noise: bool = True,
        use_mua: bool = True) -> Model:
    """Fit the noise and MUA clusters (if used) and every non-empty Gaussian cluster.

    Parameters
    ----------
    data : MaskedData
    labels : int array (n_spikes,)
    p : dict
        KlustaKwik 2 parameters.
    use_noise, use_mua : bool
        Whether the noise and MUA clusters exist (even when empty).
    """
    from .kernels import cluster_sums

    n, n_features = data.n_spikes, data.n_features
    n_clusters = max(int(labels.max()) + 1 if n else 0, FIRST_GAUSSIAN)
    counts, s1, mask_sums = cluster_sums(data.indptr, data.indices, data.dy, data.masks,
                                         labels, n_clusters, n_features)
    alive = np.flatnonzero(counts[FIRST_GAUSSIAN:] > 0) + FIRST_GAUSSIAN
    ids = np.concatenate([[NOISE] if use_noise else [], [MUA] if use_mua else [],
                          alive]).astype(np.int64)
    prior = np.array([p["noise_point"] if c == NOISE else p["mua_point"] if c == MUA
                      else p["prior_point"] for c in ids], dtype=np.float64)
    denom = n + prior.sum()
    n_c = counts[ids].astype(np.float64)
    weights = (n_c + prior) / denom
    scale = (n_c + prior) / np.maximum(n_c + prior - 1.0, 1.0)
    is_const = ids == NOISE
    support = unmasked_features(mask_sums[ids], n_c, p)
    support[is_const] = False
    nv = data.noise_variance
    g = np.where(support, -s1[ids] / (n_c + prior)[:, None], 0.0) / nv
    # Fully masked spike: y = noise mean, eta = noise variance on every feature.
    const = (-np.log(weights) + 0.5 * n_features * (math.log(2 * math.pi) + np.log(scale))
             + 0.5 * np.log(nv).sum()
             + 0.5 / scale * ((g * g * nv).sum(axis=1) + n_features))
    const[is_const] = -np.log(weights[is_const])
    return Model(ids, counts[ids], weights, const, 1.0 / scale, is_const, g, support)
