"""Tests of the data-model protocol checks: `check_model` and `summary`."""

import numpy as np
import pytest

from phy_core.model import REQUIRED, DataModel, check_model, summary
from phy_synthetic.features import SyntheticFeatureModel


@pytest.fixture
def model():
    return SyntheticFeatureModel(n_units=3, n_channels=4, n_spikes=200, seed=1,
                                 n_features_per_channel=2, sample_rate=1000.0, duration_s=10.0)


def test_synthetic_model_is_consistent(model):
    assert isinstance(model, DataModel)
    assert check_model(model) == []


def test_required_attributes_listed():
    for name in ("sample_rate", "n_channels", "spike_samples", "features", "masks", "waveforms"):
        assert name in REQUIRED


@pytest.mark.parametrize("name", ["features", "spike_clusters", "sample_rate"])
def test_missing_attribute(model, name):
    class Partial:
        pass

    partial = Partial()
    for key in REQUIRED:
        if key != name:
            setattr(partial, key, getattr(model, key))
    partial.save, partial.describe, partial.close = model.save, model.describe, model.close
    problems = check_model(partial)
    assert problems == [f"missing attribute {name!r}"]


def test_missing_method(model):
    class NoClose:
        pass

    obj = NoClose()
    for key in REQUIRED:
        setattr(obj, key, getattr(model, key))
    obj.save, obj.describe = model.save, model.describe
    assert check_model(obj) == ["missing method close()"]


def test_wrong_feature_shape(model):
    model.features = model.features[:, :-1]
    problems = check_model(model)
    assert len(problems) == 1
    assert "features" in problems[0]
    assert "(200, 7)" in problems[0] and "(200, 8)" in problems[0]


def test_wrong_masks_and_positions(model):
    model.masks = model.masks[:-1]
    model.channel_positions = model.channel_positions[:, :1]
    problems = check_model(model)
    assert len(problems) == 2
    assert any(p.startswith("masks has shape (199, 4)") for p in problems)
    assert any(p.startswith("channel_positions has shape (4, 1)") for p in problems)


def test_wrong_spike_arrays(model):
    model.spike_clusters = model.spike_clusters[:10]
    problems = check_model(model)
    assert problems == ["spike_clusters has shape (10,), expected (200,)"]


def test_wrong_waveforms_shape(model):
    class Fake:
        shape = (200, 32, 5)

    model.waveforms = Fake()
    problems = check_model(model)
    assert len(problems) == 1 and problems[0].startswith("waveforms has shape (200, 32, 5)")


def test_wrong_traces_shape(model):
    model.traces = np.zeros((1000, 3))
    problems = check_model(model)
    assert len(problems) == 1 and problems[0].startswith("traces has shape (1000, 3)")
    model.traces = np.zeros((1000, 4))
    assert check_model(model) == []


def test_unsorted_spikes(model):
    samples = model.spike_samples.copy()
    samples[[0, -1]] = samples[[-1, 0]]
    model.spike_samples = samples
    assert check_model(model) == ["spike_samples are not sorted"]


def test_sample_rate_zero(model):
    model.sample_rate = 0
    problems = check_model(model)
    assert problems == ["sample_rate is 0, expected > 0"]


def test_several_problems_all_named(model):
    model.sample_rate = -1.0
    model.spike_samples = model.spike_samples[::-1].copy()
    model.masks = np.zeros((200, 5))
    problems = check_model(model)
    assert len(problems) == 3
    text = "\n".join(problems)
    assert "masks" in text and "not sorted" in text and "sample_rate" in text


def test_summary(model):
    s = summary(model)
    assert s.path == "(in memory)"
    assert s.sample_rate == 1000.0
    assert s.n_channels == 4
    assert s.n_spikes == 200
    assert s.n_features_per_channel == 2
    assert s.n_clusters == len(set(model.spike_clusters.tolist()))
    # No traces: the duration is the time of the last spike.
    assert s.duration_s == pytest.approx(model.spike_samples[-1] / 1000.0)


def test_summary_with_traces_and_path(model, tmp_path):
    model.traces = np.zeros((5000, 4), dtype=np.int16)
    model.path = tmp_path / "data.dat"
    s = summary(model)
    assert s.duration_s == pytest.approx(5.0)
    assert s.path == str(tmp_path / "data.dat")


def test_summary_no_spikes():
    class Empty:
        path = None
        sample_rate = 20000.0
        n_channels = 2
        n_spikes = 0
        n_features_per_channel = 3
        spike_samples = np.zeros(0, dtype=np.int64)
        spike_clusters = np.zeros(0, dtype=np.int64)
        traces = None

    s = summary(Empty())
    assert s.duration_s == 0.0
    assert s.n_clusters == 0
    assert s.n_spikes == 0
