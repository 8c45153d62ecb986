"""Statistics from masked features, and the quality and similarity built on them.

Per cluster, the mean features and mean masks are computed on at most
`MAX_SPIKES` spikes taken at regular intervals (a cluster's mean barely
changes past a few thousand spikes, and this bounds the cost per cluster).

- quality ``masked_amplitude``: the largest norm of a channel's mean
  features, weighted by that channel's mean mask. Big, clean units first.
- similarity ``masked_features``: minus the Euclidean distance between the
  clusters' mean features after each is weighted by its own mean masks, so
  that channels a cluster does not use count as zero for it.
"""

from __future__ import annotations

import numpy as np

from phy_core.descriptors import ClusterMetric, ClusterSimilarity, ClusterStatistic

MAX_SPIKES = 10_000


def _subsample(spike_ids: np.ndarray, max_spikes: int | None = None) -> np.ndarray:
    # Read MAX_SPIKES at call time (a default argument would freeze it at import).
    max_spikes = MAX_SPIKES if max_spikes is None else max_spikes
    spike_ids = np.asarray(spike_ids)
    if len(spike_ids) <= max_spikes:
        return spike_ids
    step = int(np.ceil(len(spike_ids) / max_spikes))
    return spike_ids[::step]


def mean_features(model, spike_ids) -> np.ndarray:
    """Mean features, ``(n_channels * n_features_per_channel,)``."""
    spikes = _subsample(spike_ids)
    return np.asarray(model.features[spikes], dtype=np.float64).mean(axis=0)


def mean_masks(model, spike_ids) -> np.ndarray:
    """Mean masks, ``(n_channels,)``."""
    spikes = _subsample(spike_ids)
    return np.asarray(model.masks[spikes], dtype=np.float64).mean(axis=0)


def masked_mean_features(store, cluster_id: int) -> np.ndarray:
    """Mean features weighted by mean masks, ``(n_channels, n_features_per_channel)``."""
    n_fpc = store.model.n_features_per_channel
    features = store.get("mean_features", cluster_id).reshape(-1, n_fpc)
    return features * store.get("mean_masks", cluster_id)[:, None]


def _masked_amplitude(services):
    store = services.store

    def quality(cluster_id: int) -> float:
        return float(np.linalg.norm(masked_mean_features(store, cluster_id), axis=1).max())

    return quality


def _n_spikes(services):
    clustering = services.clustering

    def n_spikes(cluster_id: int) -> float:
        return float(clustering.cluster_counts.get(int(cluster_id), 0))

    return n_spikes


def _masked_features_similarity(services):
    store = services.store

    def similarity(cluster_0: int, cluster_1: int) -> float:
        difference = masked_mean_features(store, cluster_0) - masked_mean_features(store, cluster_1)
        return -float(np.linalg.norm(difference))

    return similarity


STATISTICS = [
    ClusterStatistic("mean_features", "mean features of the cluster's spikes", mean_features),
    ClusterStatistic("mean_masks", "mean masks of the cluster's spikes", mean_masks),
]
METRICS = [
    ClusterMetric("n_spikes", "number of spikes", _n_spikes),
]
QUALITY = [
    ClusterMetric(
        "masked_amplitude", "largest mask-weighted mean feature norm of a channel",
        _masked_amplitude,
    ),
]
SIMILARITY = [
    ClusterSimilarity(
        "masked_features", "minus the distance between mask-weighted mean features",
        _masked_features_similarity,
    ),
]
