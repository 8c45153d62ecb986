"""Masked data for the masked EM algorithm (Kadir, Goodman & Harris, 2014).

Each spike has a feature vector ``x`` and a mask ``m`` in ``[0, 1]`` per feature.
Features are first scaled to ``[0, 1]`` (per feature, by min/max over all
spikes, as KlustaKwik 2 does), which gives the noise cluster its uniform
density of 1. The *noise distribution* of feature ``f`` is estimated from the
masked parts of the data: mean and variance of ``x_f`` weighted by ``1 - m_f``.

The algorithm works on the *corrected* data: the expected value of each
feature when masked entries are drawn from the noise distribution,
``y = m x + (1 - m) noise_mean``, and the per-entry variance correction
``eta = m x**2 + (1 - m) (noise_mean**2 + noise_variance) - y**2``, which enters
the covariance estimates and the expected log-likelihoods.

Simplification: the corrected data are stored densely (``n_spikes x
n_features``); the sparse list of each spike's unmasked features (mask > 0) is
kept alongside, and the E-step only loops over those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phy_core.errors import PhyError


class MaskedEMError(PhyError, ValueError):
    """Bad input to the masked EM algorithm."""


@dataclass
class MaskedData:
    """Normalised, corrected masked data (see the module docstring)."""

    features: np.ndarray  # (n_spikes, n_features), scaled to [0, 1]
    masks: np.ndarray  # (n_spikes, n_features), in [0, 1]
    noise_mean: np.ndarray  # (n_features,)
    noise_variance: np.ndarray  # (n_features,)
    corrected: np.ndarray  # y
    correction: np.ndarray  # eta
    unmasked_indptr: np.ndarray  # CSR: spike i's unmasked features are
    unmasked_indices: np.ndarray  # indices[indptr[i]:indptr[i + 1]]

    @property
    def n_spikes(self) -> int:
        return self.features.shape[0]

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    @property
    def n_unmasked(self) -> np.ndarray:
        """Number of unmasked features of each spike."""
        return np.diff(self.unmasked_indptr)


def expand_masks(features: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Masks per feature: per-channel masks are repeated for the channel's features.

    Features are channel-major (``channel * n_features_per_channel + k``), as
    in Kwik files.
    """
    n, n_features = features.shape
    if masks.ndim != 2 or masks.shape[0] != n:
        raise MaskedEMError(f"masks have shape {masks.shape}, expected ({n}, n_channels) or "
                            f"({n}, {n_features}).")
    if masks.shape[1] == n_features:
        return masks
    if masks.shape[1] == 0 or n_features % masks.shape[1]:
        raise MaskedEMError(f"{n_features} features are not a multiple of the "
                            f"{masks.shape[1]} mask columns.")
    return np.repeat(masks, n_features // masks.shape[1], axis=1)


def noise_statistics(features: np.ndarray, masks: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of each feature over its masked entries (weights ``1 - m``).

    A feature that is never masked gets the statistics of all its values.
    """
    w = 1.0 - masks
    total = w.sum(axis=0)
    none = total <= 0
    w = np.where(none[None, :], 1.0, w)
    total = w.sum(axis=0)
    mean = (w * features).sum(axis=0) / total
    var = (w * (features - mean) ** 2).sum(axis=0) / total
    # A floor so that covariances stay positive definite on constant features.
    var = np.maximum(var, 1e-8)
    return mean, var


def prepare_data(features, masks) -> MaskedData:
    """Check, normalise and correct features and masks.

    Parameters
    ----------
    features : array (n_spikes, n_features)
    masks : array (n_spikes, n_channels) or (n_spikes, n_features), values in [0, 1]
    """
    features = np.asarray(features, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    if features.ndim != 2:
        raise MaskedEMError(f"features have shape {features.shape}, expected 2 dimensions "
                            "(n_spikes, n_features).")
    masks = expand_masks(features, masks)
    if not (np.all(np.isfinite(features)) and np.all(np.isfinite(masks))):
        raise MaskedEMError("features and masks must be finite numbers.")
    if masks.size and (masks.min() < 0 or masks.max() > 1):
        raise MaskedEMError(f"masks must be in [0, 1], found values in "
                            f"[{masks.min()}, {masks.max()}].")
    if features.shape[0]:
        lo, hi = features.min(axis=0), features.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        features = (features - lo) / span
    mean, var = noise_statistics(features, masks) if features.shape[0] else (
        np.zeros(features.shape[1]), np.ones(features.shape[1]))
    y = masks * features + (1 - masks) * mean
    eta = masks * features ** 2 + (1 - masks) * (mean ** 2 + var) - y ** 2
    eta = np.maximum(eta, 0.0)  # rounding
    unmasked = masks > 0
    indptr = np.zeros(features.shape[0] + 1, dtype=np.int64)
    np.cumsum(unmasked.sum(axis=1), out=indptr[1:])
    indices = np.nonzero(unmasked)[1].astype(np.int64)
    return MaskedData(features, masks, mean, var, y, eta, indptr, indices)
