"""Tests of the `stats` plugin: mean features/masks, masked_amplitude, masked_features."""

import numpy as np
import pytest

import phy_stats
from phy_core.clustering import Clustering
from phy_core.descriptors import Services
from phy_core.store import ClusterStore
from phy_stats import features as stats


class TinyModel:
    """Two channels, two features per channel."""

    n_features_per_channel = 2
    n_channels = 2

    def __init__(self, features, masks):
        self.features = np.asarray(features, dtype=np.float32)
        self.masks = np.asarray(masks, dtype=np.float32)
        self.n_spikes = len(self.features)


FEATURES = [
    [3, 4, 1, 1],   # cluster 0
    [3, 4, 9, 9],   # cluster 0
    [1, 0, 2, 2],   # cluster 1
    [3, 0, 2, 2],   # cluster 1
    [2, 0, 8, 2],   # cluster 1
    [3, 4, 1, 1],   # cluster 2: a copy of cluster 0
    [3, 4, 9, 9],   # cluster 2
]
MASKS = [
    [1, 0],
    [1, 0],
    [0.5, 1],
    [0.5, 1],
    [0.5, 0.5],
    [1, 0],
    [1, 0],
]
SPIKE_CLUSTERS = [0, 0, 1, 1, 1, 2, 2]


@pytest.fixture
def services():
    model = TinyModel(FEATURES, MASKS)
    clustering = Clustering(SPIKE_CLUSTERS)
    store = ClusterStore(model, clustering, stats.STATISTICS)
    return Services(model=model, clustering=clustering, store=store)


def _masked_means(cluster):
    spikes = np.array(SPIKE_CLUSTERS) == cluster
    features = np.array(FEATURES, dtype=np.float64)[spikes].mean(axis=0).reshape(2, 2)
    masks = np.array(MASKS, dtype=np.float64)[spikes].mean(axis=0)
    return features * masks[:, None]


def test_plugin_hooks(phy_plugin_manager):
    phy_plugin_manager.register_plugin(phy_stats, "stats")
    assert [s.name for s in phy_plugin_manager.collect("phy_register_statistics")] == [
        "mean_features", "mean_masks"]
    assert [m.name for m in phy_plugin_manager.collect("phy_register_metrics")] == ["n_spikes"]
    assert [q.name for q in phy_plugin_manager.collect("phy_register_quality")] == [
        "masked_amplitude"]
    assert [s.name for s in phy_plugin_manager.collect("phy_register_similarity")] == [
        "masked_features"]


def test_mean_statistics(services):
    store = services.store
    np.testing.assert_allclose(store.get("mean_features", 0), [3, 4, 5, 5])
    np.testing.assert_allclose(store.get("mean_masks", 0), [1, 0])
    np.testing.assert_allclose(store.get("mean_features", 1), [2, 0, 4, 2])
    np.testing.assert_allclose(store.get("mean_masks", 1), [0.5, 2.5 / 3])
    assert store.get("mean_features", 1).dtype == np.float64


def test_masked_mean_features(services):
    for cluster in (0, 1, 2):
        np.testing.assert_allclose(stats.masked_mean_features(services.store, cluster),
                                   _masked_means(cluster))


def test_masked_amplitude(services):
    quality = stats.QUALITY[0].factory(services)
    # Cluster 0: channel 0 has mean (3, 4) with mask 1 -> 5; channel 1 is masked out.
    assert quality(0) == pytest.approx(5.0)
    # Cluster 1: channel 0: 0.5 * (2, 0) -> 1; channel 1: 5/6 * (4, 2) -> 5/6 * sqrt(20).
    assert quality(1) == pytest.approx(5 / 6 * np.sqrt(20))
    for cluster in (0, 1, 2):
        expected = np.linalg.norm(_masked_means(cluster), axis=1).max()
        assert quality(cluster) == pytest.approx(expected)


def test_masked_features_similarity(services):
    similarity = stats.SIMILARITY[0].factory(services)
    expected = -np.linalg.norm(_masked_means(0) - _masked_means(1))
    assert similarity(0, 1) == pytest.approx(expected)
    for a in (0, 1, 2):
        for b in (0, 1, 2):
            assert similarity(a, b) == pytest.approx(similarity(b, a))
            assert similarity(a, b) <= 0.0
    # Identical clusters: distance 0, the maximum.
    assert similarity(0, 2) == 0.0
    assert similarity(1, 1) == 0.0
    assert similarity(0, 1) < 0.0 and similarity(2, 1) < 0.0


def test_n_spikes_metric(services):
    n_spikes = stats.METRICS[0].factory(services)
    assert [n_spikes(c) for c in (0, 1, 2)] == [2.0, 3.0, 2.0]
    assert n_spikes(42) == 0.0
    services.clustering.merge([0, 1])
    assert n_spikes(3) == 5.0


def test_subsampling(monkeypatch):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 4))
    masks = rng.uniform(size=(50, 2))
    model = TinyModel(features, masks)
    spikes = np.arange(3, 50)  # 47 spikes
    monkeypatch.setattr(stats, "MAX_SPIKES", 10)
    # Regular intervals: step ceil(47 / 10) = 5, so 10 spikes.
    kept = spikes[::5]
    assert len(kept) == 10
    np.testing.assert_allclose(stats.mean_features(model, spikes),
                               model.features[kept].astype(np.float64).mean(axis=0))
    np.testing.assert_allclose(stats.mean_masks(model, spikes),
                               model.masks[kept].astype(np.float64).mean(axis=0))
    assert not np.allclose(stats.mean_features(model, spikes),
                           model.features[spikes].astype(np.float64).mean(axis=0))
    # At or below the limit, every spike counts.
    few = np.arange(10)
    np.testing.assert_allclose(stats.mean_masks(model, few),
                               model.masks[few].astype(np.float64).mean(axis=0))


def test_subsample_bound():
    for n in (1, 9, 10, 11, 99, 100, 101, 12345):
        ids = np.arange(n)
        kept = stats._subsample(ids, 10)
        assert 1 <= len(kept) <= 10
        assert kept[0] == 0
        if n <= 10:
            np.testing.assert_array_equal(kept, ids)
