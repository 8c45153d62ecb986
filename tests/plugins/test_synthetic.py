"""Tests of the `synthetic` plugin: the feature-level dataset, its reader, and `phy demo`."""

from pathlib import Path

import numpy as np
import pytest

import phy_synthetic
from phy_core.model import check_model
from phy_core.plugins import AUTOLOAD_ENV
from phy_synthetic.demo import unit_accuracies
from phy_synthetic.features import (
    LazyWaveforms,
    SyntheticFeatureModel,
    open_synthetic,
    parse_synthetic_path,
)

SMALL = dict(n_units=3, n_channels=6, n_spikes=300, n_features_per_channel=2, oversplit=3)


@pytest.fixture
def model():
    return SyntheticFeatureModel(seed=7, **SMALL)


# Dataset
# -----------------------------------------------------------------------------


def test_deterministic_from_seed(model):
    other = SyntheticFeatureModel(seed=7, **SMALL)
    for name in ("spike_samples", "spike_units", "spike_clusters", "features", "masks"):
        np.testing.assert_array_equal(getattr(model, name), getattr(other, name))
    np.testing.assert_array_equal(model.waveforms[:20], other.waveforms[:20])
    different = SyntheticFeatureModel(seed=8, **SMALL)
    assert not np.array_equal(model.features, different.features)
    assert not np.array_equal(model.spike_samples, different.spike_samples)


def test_shapes(model):
    assert check_model(model) == []
    assert model.features.shape == (300, 12)
    assert model.masks.shape == (300, 6)
    assert model.channel_positions.shape == (6, 2)
    assert model.waveforms.shape == (300, 32, 6)
    assert len(model.waveforms) == 300
    assert model.spike_samples.dtype.kind in "iu"
    assert np.all(np.diff(model.spike_samples) >= 0)
    np.testing.assert_allclose(model.spike_times, model.spike_samples / model.sample_rate)
    assert model.spike_times[-1] < 60.0
    assert model.path is None and model.traces is None


def test_masks_in_unit_interval(model):
    assert model.masks.min() >= 0.0
    assert model.masks.max() <= 1.0
    # Every spike is fully unmasked on its unit's channel.
    channels = model.unit_channels[model.spike_units]
    np.testing.assert_array_equal(model.masks[np.arange(300), channels], 1.0)


def test_invalid_parameters():
    with pytest.raises(ValueError, match="at least 1"):
        SyntheticFeatureModel(n_units=0)
    with pytest.raises(ValueError, match="positive"):
        SyntheticFeatureModel(sample_rate=0.0)


def test_ground_truth_oversplit(model):
    assert set(np.unique(model.spike_units).tolist()) <= {0, 1, 2}
    for cluster in np.unique(model.spike_clusters):
        units = np.unique(model.spike_units[model.spike_clusters == cluster])
        assert len(units) == 1, f"cluster {cluster} mixes units {units}"
    for unit in np.unique(model.spike_units):
        clusters = np.unique(model.spike_clusters[model.spike_units == unit])
        assert 1 < len(clusters) <= 3  # split in (up to) `oversplit` parts


def test_save_keeps_a_copy(model):
    clusters = model.spike_clusters.copy()
    clusters[:5] = 99
    model.save(clusters, {99: 2}, {"comment": {99: "x"}})
    clusters[:5] = 0
    assert np.all(model.saved["spike_clusters"][:5] == 99)
    assert model.saved["cluster_groups"] == {99: 2}
    assert model.saved["labels"] == {"comment": {99: "x"}}
    assert "Synthetic" in model.describe()


# Lazy waveforms
# -----------------------------------------------------------------------------


def test_waveforms_indexing(model):
    w = model.waveforms
    assert isinstance(w, LazyWaveforms)
    assert w[5].shape == (32, 6)
    assert w[-1].shape == (32, 6)
    assert w[2:7].shape == (5, 32, 6)
    assert w[np.array([3, 1, 4])].shape == (3, 32, 6)
    assert w[[0]].shape == (1, 32, 6)
    assert w[5].dtype == np.float32
    with pytest.raises(IndexError):
        w[300]


def test_waveforms_deterministic_per_spike(model):
    w = model.waveforms
    batch = w[np.array([9, 4, 200])]
    np.testing.assert_array_equal(batch[0], w[9])
    np.testing.assert_array_equal(batch[1], w[4])
    np.testing.assert_array_equal(batch[2], w[200])
    np.testing.assert_array_equal(w[3:10][6], w[9])
    np.testing.assert_array_equal(w[-1], w[299])
    assert not np.array_equal(w[4], w[9])


def test_waveforms_follow_unit(model):
    w = model.waveforms[np.arange(300)]
    # The trough is on the unit's channel, about minus the unit's amplitude.
    troughs = w.min(axis=1)
    channels = model.unit_channels[model.spike_units]
    np.testing.assert_array_equal(troughs.argmin(axis=1), channels)
    # The trough depth is proportional to the unit's amplitude (one template for all).
    ratio = troughs.min(axis=1) / model.unit_amplitudes[model.spike_units]
    assert ratio.min() > -1.05 and ratio.max() < -0.85
    assert np.ptp(ratio) < 0.1


# Pseudo-path parsing and the reader hook
# -----------------------------------------------------------------------------


def test_parse_synthetic_path():
    assert parse_synthetic_path("synthetic:") == {}
    params = parse_synthetic_path("synthetic:n_units=4, n_spikes=1e3,sample_rate=20000,seed=2")
    assert params == {"n_units": 4, "n_spikes": 1000, "sample_rate": 20000.0, "seed": 2}
    assert type(params["n_spikes"]) is int
    assert type(params["sample_rate"]) is float


@pytest.mark.parametrize("text, match", [
    ("synthetic:n_cells=3", "cannot understand 'n_cells=3'"),
    ("synthetic:n_units", "cannot understand 'n_units'"),
    ("synthetic:n_units=three", "n_units must be a number"),
    ("synthetic:n_units=2.5", "n_units must be an integer"),
    ("synthetic:n_units=True", "n_units must be a number"),
    ("synthetic:n_units='3'", "n_units must be a number"),
    ("synthetic:seed=1e400", "seed must be a number"),
    ("synthetic:seed=__import__('os')", "seed must be a number"),
])
def test_parse_synthetic_path_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_synthetic_path(text)


def test_import_is_not_evaluated(monkeypatch):
    calls = []
    monkeypatch.setattr("builtins.__import__", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match="not a literal|must be a number"):
        parse_synthetic_path("synthetic:seed=__import__('os')")
    assert calls == []


def test_open_synthetic():
    model = open_synthetic("synthetic:n_units=2,n_channels=3,n_spikes=50,seed=1")
    assert (model.n_channels, model.n_spikes, model.seed) == (3, 50, 1)


def test_reader_hook(phy_plugin_manager):
    pm = phy_plugin_manager
    assert pm.register_plugin(phy_synthetic, "synthetic").status == "loaded"
    path = Path("synthetic:n_units=2,n_channels=4,n_spikes=100,seed=5")
    model = pm.hook.phy_open_model(path=path, options={})
    assert isinstance(model, SyntheticFeatureModel)
    assert (model.n_channels, model.n_spikes) == (4, 100)
    np.testing.assert_array_equal(
        model.features,
        SyntheticFeatureModel(n_units=2, n_channels=4, n_spikes=100, seed=5).features)
    assert pm.hook.phy_open_model(path=Path("data.dat"), options={}) is None
    with pytest.raises(ValueError, match="cannot understand"):
        pm.hook.phy_open_model(path=Path("synthetic:bogus=1"), options={})
    assert [c.name for c in pm.collect("phy_commands")] == ["demo", "synth"]


# Accuracy against ground truth
# -----------------------------------------------------------------------------


def test_unit_accuracies_perfect():
    acc = unit_accuracies(np.array([0, 0, 1, 1, 2]), np.array([5, 5, 7, 7, 9]))
    np.testing.assert_allclose(acc, [1.0, 1.0, 1.0])


def test_unit_accuracies_merge():
    # Two units in one cluster: only one unit gets the cluster, 3 / (3 + 2 false positives).
    acc = unit_accuracies(np.array([0, 0, 0, 1, 1]), np.array([4, 4, 4, 4, 4]))
    np.testing.assert_allclose(acc, [0.6, 0.0])


def test_unit_accuracies_split():
    # Unit 0 split 3 + 1: 3 matches, 1 miss; unit 1 intact.
    acc = unit_accuracies(np.array([0, 0, 0, 0, 1, 1]), np.array([1, 1, 1, 2, 3, 3]))
    np.testing.assert_allclose(acc, [0.75, 1.0])


def test_unit_accuracies_assignment():
    # Greedy per unit would give cluster 1 to both; the matching is one-to-one.
    acc = unit_accuracies(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1, 1]))
    np.testing.assert_allclose(acc, [2 / 3, 0.75])
    # Unit 0 with cluster 5: 2 / (2 + 5 - 2) = 0.4, unit 1 with cluster 6: 1 / 4; total 0.65
    # beats unit 1 with cluster 5 (3 / 6) and unit 0 with nothing (total 0.5).
    acc = unit_accuracies(np.array([0, 0, 1, 1, 1, 1]), np.array([5, 5, 5, 5, 5, 6]))
    np.testing.assert_allclose(acc, [0.4, 0.25])


# # The demo command
# -----------------------------------------------------------------------------


def test_demo_command(capsys, phy_user_dir, monkeypatch):
    from phy_core.cli import main

    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    code = main(["demo", "--n-units", "4", "--n-spikes", "2000", "--duration", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "4 of 4 units" in out
    assert "quality: masked_amplitude, similarity: masked_features" in out
    assert "merged" in out and "undo x" in out and "redo x" in out
