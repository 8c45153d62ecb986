"""`Session.recluster`: automatic clustering of some clusters, as one undoable action."""

import numpy as np
import pytest

import phy_masked_em
import phy_stats
from phy_core import hookimpl
from phy_core.descriptors import ClusteringAlgorithm
from phy_core.errors import PluginError
from phy_core.progress import ProgressReporter
from phy_core.session import Session
from phy_core.settings import Settings
from phy_synthetic.features import SyntheticFeatureModel


@pytest.fixture
def model():
    # 4 units on 8 channels, each split in 2 clusters (0-1 are unit 0, 2-3 unit 1, ...).
    return SyntheticFeatureModel(n_units=4, n_channels=8, n_spikes=600, seed=1)


@pytest.fixture
def pm(phy_plugin_manager):
    for plugin, name in ((phy_stats, "stats"), (phy_masked_em, "masked_em")):
        assert phy_plugin_manager.register_plugin(plugin, name).status == "loaded"
    return phy_plugin_manager


class HalvesPlugin:
    """Another algorithm: the spikes below / above the median of one feature."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def phy_register_clustering_algorithms(self):
        def run(features, masks, parameters, reporter):
            self.calls.append((features.shape, masks.shape, dict(parameters)))
            column = features[:, parameters["feature"]]
            return (column > np.median(column)).astype(np.int64)

        return [ClusteringAlgorithm("halves", "split at the median", run, {"feature": 0})]


def _best_share(units, clusters, unit):
    """The cluster holding most of `unit`'s spikes and the fraction it holds, and its purity."""
    ids, counts = np.unique(clusters[units == unit], return_counts=True)
    best = ids[np.argmax(counts)]
    return best, counts.max() / np.sum(units == unit), np.mean(units[clusters == best] == unit)


def test_recluster_separates_two_merged_units(model, pm):
    session = Session(model, pm)
    clustering, units = session.clustering, model.spike_units
    original = clustering.spike_clusters.copy()
    merged = clustering.merge([0, 1, 2, 3]).added[0]  # units 0 and 1 in one cluster
    events = []
    session.connect(events.append, event="cluster")
    reporter = ProgressReporter()
    progress = []
    reporter.connect(lambda value, value_max: progress.append(value), event="progress")

    up = session.recluster([merged], reporter=reporter)

    assert len(events) == 1 and events[0] is up and up.description == "assign"
    assert up.deleted == [merged] and progress
    np.testing.assert_array_equal(up.spikes, np.flatnonzero(units <= 1))
    after = clustering.spike_clusters
    assert set(np.unique(after[units <= 1])) == set(up.added)
    # Each true unit is one new cluster again, with (almost) all its spikes and no others.
    found = [_best_share(units, after, unit) for unit in (0, 1)]
    assert found[0][0] != found[1][0]
    for _, recall, precision in found:
        assert recall >= 0.95 and precision >= 0.95
    # The other clusters were left alone.
    np.testing.assert_array_equal(after[units > 1], original[units > 1])

    # One undo restores the merged cluster, a second one the original clusters.
    undone = clustering.undo()
    assert undone.added == [merged] and sorted(undone.deleted) == up.added
    np.testing.assert_array_equal(clustering.spikes_in_clusters([merged]), up.spikes)
    clustering.undo()
    np.testing.assert_array_equal(clustering.spike_clusters, original)
    clustering.redo()
    clustering.redo()
    np.testing.assert_array_equal(clustering.spike_clusters, after)


def test_recluster_algorithm_from_argument_setting_or_first(model, pm, phy_user_dir):
    halves = HalvesPlugin()
    pm.register_plugin(halves, "halves")
    spikes = np.flatnonzero(np.isin(model.spike_clusters, [4, 5]))
    settings = Settings(defaults={"clustering.algorithm": "halves"}, user_dir=phy_user_dir)
    session = Session(model, pm, settings)
    assert session.clustering_algorithm().name == "halves"
    assert session.clustering_algorithm("masked_em").name == "masked_em"

    up = session.recluster([4, 5], parameters={"feature": 2})
    ((f_shape, m_shape, parameters),) = halves.calls
    assert f_shape == (len(spikes), 24) and m_shape == (len(spikes), 8)
    assert parameters == {"feature": 2}
    # The algorithm ran on these spikes' features: check its split independently.
    column = model.features[spikes, 2]
    high = spikes[column > np.median(column)]
    assert len(up.added) == 2
    assert {len(high), len(spikes) - len(high)} == {len(up.new_spikes_per_cluster[c])
                                                    for c in up.added}
    assert len(np.unique(session.clustering.spike_clusters[high])) == 1

    # Without a setting the first registered algorithm is used (masked_em is trylast).
    assert Session(model, pm).clustering_algorithm().name == "halves"
    settings = Settings(defaults={"clustering.algorithm": "kmeans"}, user_dir=phy_user_dir)
    with pytest.raises(PluginError, match="setting clustering.algorithm is 'kmeans'.*halves"):
        Session(model, pm, settings).recluster([0])
    with pytest.raises(PluginError, match="asked for is 'nope'"):
        session.recluster([0], algorithm="nope")


def test_recluster_errors_leave_the_clustering_alone(model, phy_plugin_manager):
    phy_plugin_manager.register_plugin(phy_stats, "stats")
    session = Session(model, phy_plugin_manager)
    with pytest.raises(PluginError, match="No plugin provides a clustering algorithm"):
        session.recluster([0])

    class Broken:
        @hookimpl
        def phy_register_clustering_algorithms(self):
            return [ClusteringAlgorithm("broken", "one label too few",
                                        lambda f, m, p, r: np.zeros(len(f) - 1, dtype=int))]

    phy_plugin_manager.register_plugin(Broken(), "broken")
    before = session.clustering.spike_clusters.copy()
    with pytest.raises(PluginError, match="'broken' returned .* for"):
        session.recluster([0, 1])
    with pytest.raises(ValueError, match="Unknown cluster"):
        session.recluster([999])
    np.testing.assert_array_equal(session.clustering.spike_clusters, before)
    assert session.clustering.undo() is None  # nothing was recorded
