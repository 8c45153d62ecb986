"""Tests of `ClusterStore`: per-cluster statistics computed once, cached by cluster id."""

import numpy as np
import pytest

from phy_core.bunch import Bunch
from phy_core.clustering import Clustering
from phy_core.descriptors import ClusterStatistic
from phy_core.store import ClusterStore


class Counter:
    """A statistic's compute function that records every call."""

    def __init__(self, func):
        self.func = func
        self.calls = []

    def __call__(self, model, spike_ids):
        self.calls.append(np.array(spike_ids))
        return self.func(model, spike_ids)


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    n_spikes = 300
    model = Bunch(features=rng.normal(size=(n_spikes, 6)), masks=rng.uniform(size=(n_spikes, 3)))
    spike_clusters = rng.integers(0, 5, n_spikes)
    clustering = Clustering(spike_clusters)
    mean = Counter(lambda m, s: m.features[s].mean(axis=0))
    count = Counter(lambda m, s: len(s))
    store = ClusterStore(model, clustering, [
        ClusterStatistic("mean_features", "mean", mean),
        ClusterStatistic("count", "number of spikes", count),
    ])
    return Bunch(model=model, spike_clusters=spike_clusters, clustering=clustering,
                 store=store, mean=mean, count=count)


def test_values_match_numpy(setup):
    for cluster in range(5):
        expected = setup.model.features[setup.spike_clusters == cluster].mean(axis=0)
        np.testing.assert_allclose(setup.store.get("mean_features", cluster), expected)
        assert setup.store.get("count", cluster) == np.sum(setup.spike_clusters == cluster)


def test_computed_once_per_cluster(setup):
    store, mean = setup.store, setup.mean
    assert not store.is_cached("mean_features", 2)
    first = store.get("mean_features", 2)
    assert store.is_cached("mean_features", 2)
    assert not store.is_cached("count", 2)
    for _ in range(3):
        assert store.get("mean_features", 2) is first
        assert store.get("mean_features", np.int64(2)) is first
    assert len(mean.calls) == 1
    np.testing.assert_array_equal(mean.calls[0], np.flatnonzero(setup.spike_clusters == 2))
    store.get("mean_features", 3)
    assert len(mean.calls) == 2
    assert setup.count.calls == []


def test_clear(setup):
    setup.store.get("count", 0)
    setup.store.clear()
    assert not setup.store.is_cached("count", 0)
    setup.store.get("count", 0)
    assert len(setup.count.calls) == 2


def test_valid_after_merge_and_undo(setup):
    store, clustering, mean = setup.store, setup.clustering, setup.mean
    before = {c: store.get("mean_features", c) for c in range(5)}
    assert len(mean.calls) == 5

    up = clustering.merge([1, 3])
    new = up.added[0]
    assert new not in before
    merged = store.get("mean_features", new)
    mask = np.isin(setup.spike_clusters, [1, 3])
    np.testing.assert_allclose(merged, setup.model.features[mask].mean(axis=0))
    assert len(mean.calls) == 6
    # Untouched clusters are not recomputed.
    assert store.get("mean_features", 0) is before[0]
    assert len(mean.calls) == 6

    clustering.undo()
    for c in range(5):
        value = store.get("mean_features", c)
        assert value is before[c]
        np.testing.assert_allclose(
            value, setup.model.features[setup.spike_clusters == c].mean(axis=0))
    assert len(mean.calls) == 6  # nothing recomputed after undo

    clustering.redo()
    assert store.get("mean_features", new) is merged
    assert len(mean.calls) == 6


def test_unknown_statistic(setup):
    with pytest.raises(KeyError) as info:
        setup.store.get("mean_waveforms", 0)
    message = str(info.value)
    assert "'mean_waveforms'" in message
    assert "count, mean_features" in message


def test_unknown_cluster(setup):
    with pytest.raises(KeyError, match="Cluster 99 does not exist"):
        setup.store.get("count", 99)
    assert not setup.store.is_cached("count", 99)
    assert setup.count.calls == []


def test_deleted_cluster_not_computed(setup):
    setup.clustering.merge([0, 1])
    with pytest.raises(KeyError, match="Cluster 0 does not exist"):
        setup.store.get("count", 0)
    assert setup.count.calls == []


def test_statistics_from_plugin_manager(phy_plugin_manager, setup):
    from phy_core import hookimpl

    class Plugin:
        @hookimpl
        def phy_register_statistics(self):
            return [ClusterStatistic("max_mask", "largest mask", lambda m, s: m.masks[s].max())]

    phy_plugin_manager.register_plugin(Plugin(), "test-stat")
    store = ClusterStore(setup.model, setup.clustering,
                         phy_plugin_manager.collect("phy_register_statistics"))
    assert list(store.statistics) == ["max_mask"]
    expected = setup.model.masks[setup.spike_clusters == 4].max()
    assert store.get("max_mask", 4) == expected
