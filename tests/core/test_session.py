"""Tests of `Session`: a dataset curated with the statistics, quality and similarity of plugins."""

import numpy as np
import pytest

import phy_stats
from phy_core import hookimpl
from phy_core.descriptors import ClusterMetric, ClusterSimilarity
from phy_core.errors import PluginError
from phy_core.session import Session
from phy_core.settings import Settings
from phy_synthetic.features import SyntheticFeatureModel


@pytest.fixture
def model():
    return SyntheticFeatureModel(n_units=4, n_channels=8, n_spikes=600, seed=3)


@pytest.fixture
def pm(phy_plugin_manager):
    info = phy_plugin_manager.register_plugin(phy_stats, "stats")
    assert info.status == "loaded"
    return phy_plugin_manager


def _expected_quality(model, cluster):
    spikes = model.spike_clusters == cluster
    n_fpc = model.n_features_per_channel
    features = model.features[spikes].astype(np.float64).mean(axis=0).reshape(-1, n_fpc)
    masks = model.masks[spikes].astype(np.float64).mean(axis=0)
    return np.linalg.norm(features * masks[:, None], axis=1).max()


class SizePlugin:
    """A second plugin: quality = cluster size, similarity = minus difference of sizes."""

    @hookimpl
    def phy_register_quality(self):
        def factory(services):
            counts = services.clustering.cluster_counts
            return lambda c: float(counts[c])
        return [ClusterMetric("size", "number of spikes", factory)]

    @hookimpl
    def phy_register_similarity(self):
        def factory(services):
            def similarity(c0, c1):
                counts = services.clustering.cluster_counts
                return -abs(counts[c0] - counts[c1])
            return similarity
        return [ClusterSimilarity("size_difference", "minus the size difference", factory)]


def test_session_from_stats_plugin(model, pm):
    session = Session(model, pm)
    assert session.quality.name == "masked_amplitude"
    assert session.similarity.name == "masked_features"
    assert set(session.store.statistics) >= {"mean_features", "mean_masks"}
    assert session.services.store is session.store
    assert session.services.wizard is session.wizard
    assert session.services.model is model
    np.testing.assert_array_equal(session.clustering.spike_clusters, model.spike_clusters)


def test_wizard_ranks_with_plugin_quality(model, pm):
    session = Session(model, pm)
    session.wizard.start()
    clusters = np.unique(model.spike_clusters).tolist()
    qualities = {c: _expected_quality(model, c) for c in clusters}
    expected = sorted(clusters, key=lambda c: (-qualities[c], c))
    assert session.wizard.best_list == expected
    assert session.wizard.best == expected[0]
    for c in clusters:
        assert session.quality_function(c) == pytest.approx(qualities[c])
    # The quality was computed through the store (cached statistics).
    assert all(session.store.is_cached("mean_features", c) for c in clusters)


def test_wizard_matches_with_plugin_similarity(model, pm):
    session = Session(model, pm)
    session.wizard.start()
    session.wizard.pin()
    best = session.wizard.best
    others = [c for c in np.unique(model.spike_clusters).tolist() if c != best]
    sims = {c: session.similarity_function(best, c) for c in others}
    assert session.wizard.match_list == sorted(others, key=lambda c: (-sims[c], c))
    # The synthetic clustering splits each unit in two: the best match is its other half.
    assert model.spike_units[model.spike_clusters == session.wizard.match][0] == \
        model.spike_units[model.spike_clusters == best][0]


def test_settings_choose_quality_and_similarity(model, pm, phy_user_dir):
    pm.register_plugin(SizePlugin(), "size")
    # Without settings, the first collected wins: the later, non-trylast plugin.
    assert Session(model, pm).quality.name == "size"

    settings = Settings(defaults={"wizard.quality": "masked_amplitude",
                                  "wizard.similarity": "masked_features"}, user_dir=phy_user_dir)
    session = Session(model, pm, settings)
    assert session.quality.name == "masked_amplitude"
    assert session.similarity.name == "masked_features"

    settings = Settings(defaults={"wizard.quality": "size",
                                  "wizard.similarity": "size_difference"}, user_dir=phy_user_dir)
    session = Session(model, pm, settings)
    assert session.quality.name == "size"
    assert session.similarity.name == "size_difference"
    session.wizard.start()
    counts = session.clustering.cluster_counts
    assert session.wizard.best_list == sorted(counts, key=lambda c: (-counts[c], c))


def test_unknown_setting_name(model, pm, phy_user_dir):
    pm.register_plugin(SizePlugin(), "size")
    settings = Settings(defaults={"wizard.quality": "nope"}, user_dir=phy_user_dir)
    with pytest.raises(PluginError) as info:
        Session(model, pm, settings)
    message = str(info.value)
    assert "wizard.quality" in message and "'nope'" in message
    assert "size" in message and "masked_amplitude" in message

    settings = Settings(defaults={"wizard.similarity": "euclid"}, user_dir=phy_user_dir)
    with pytest.raises(PluginError, match="masked_features") as info:
        Session(model, pm, settings)
    assert "wizard.similarity" in str(info.value)


def test_no_plugin(model, phy_plugin_manager):
    with pytest.raises(PluginError, match="No plugin provides a quality"):
        Session(model, phy_plugin_manager)


def test_no_similarity_plugin(model, phy_plugin_manager):
    class QualityOnly:
        @hookimpl
        def phy_register_quality(self):
            return [ClusterMetric("one", "constant", lambda services: lambda c: 1.0)]

    phy_plugin_manager.register_plugin(QualityOnly(), "quality-only")
    with pytest.raises(PluginError, match="No plugin provides a similarity"):
        Session(model, phy_plugin_manager)


def test_save_hands_current_state_to_model(model, pm):
    model.cluster_groups = {0: 0}  # cluster 0 saved as noise
    session = Session(model, pm)
    clustering = session.clustering
    assert clustering.metadata.group(0) == 0
    up = clustering.merge([2, 3])
    new = up.added[0]
    clustering.set_group([new], "good")
    clustering.set_label([4], "comment", "nice")
    session.save()

    saved = model.saved
    np.testing.assert_array_equal(saved["spike_clusters"], clustering.spike_clusters)
    assert np.all(saved["spike_clusters"][np.isin(model.spike_clusters, [2, 3])] == new)
    # A copy, not a view of the live clustering.
    clustering.undo()
    assert np.all(saved["spike_clusters"][np.isin(model.spike_clusters, [2, 3])] == new)

    current = [c for c in np.unique(model.spike_clusters).tolist() if c not in (2, 3)] + [new]
    assert sorted(saved["cluster_groups"]) == sorted(current)
    assert saved["cluster_groups"][0] == 0
    assert saved["cluster_groups"][new] == 2
    assert saved["cluster_groups"][1] == 3  # unsorted by default
    assert set(saved["labels"]) == {"comment"}
    assert saved["labels"]["comment"][4] == "nice"
    assert saved["labels"]["comment"][1] is None


def test_noise_from_model_ignored_by_wizard(model, pm):
    model.cluster_groups = {1: "noise"}
    session = Session(model, pm)
    session.wizard.start()
    assert 1 not in session.wizard.best_list
    assert len(session.wizard.best_list) == len(np.unique(model.spike_clusters)) - 1


def test_cluster_events_forwarded(model, pm):
    session = Session(model, pm)
    received = []
    session.connect(received.append, event="cluster")
    up = session.clustering.merge([0, 1])
    assert received == [up]
    session.clustering.undo()
    assert len(received) == 2
    assert received[1].history == "undo"
    assert received[1].deleted == up.added
