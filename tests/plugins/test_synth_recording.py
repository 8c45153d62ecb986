"""`phy_synthetic.recording`: files, determinism, ground truth, noise, safety."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt

from phy_core.literals import read_literal_file
from phy_core.progress import ProgressReporter
from phy_synthetic.recording import SynthError, synthesize_recording
from phy_synthetic.templates import refractory_samples


class TinyMEA:
    """A probe-like object: two shanks, a channel id missing (a dead channel 3)."""

    def to_channel_groups(self):
        return {
            0: {"channels": [0, 1, 2], "graph": [(0, 1), (1, 2)],
                "geometry": {0: (0.0, 0.0), 1: (0.0, 20.0), 2: (0.0, 40.0)}},
            1: {"channels": [4, 5, 6], "graph": [],
                "geometry": {4: (200.0, 0.0), 5: (200.0, 20.0), 6: (200.0, 40.0)}},
        }


def _load(result):
    gt = dict(np.load(result.groundtruth_path))
    traces = np.fromfile(result.dat_path, dtype=np.int16).reshape(-1, result.n_channels)
    return traces, gt


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = synthesize_recording(out, probe=TinyLinear(32), duration_s=4.0, seed=3,
                                  n_units=8)
    return (result, *_load(result))


class TinyLinear:
    """A single-shank linear probe, 20 um pitch (like the built-in linear32)."""

    def __init__(self, n):
        self.n = n

    def to_channel_groups(self):
        return {0: {"channels": list(range(self.n)),
                    "geometry": {c: (0.0, 20.0 * c) for c in range(self.n)}}}


def test_files_and_sizes(recording):
    result, traces, gt = recording
    assert result.dat_path.stat().st_size == result.n_samples * result.n_channels * 2
    assert result.n_samples == 120_000 and result.n_channels == 32
    assert result.prb_path.exists() and result.prm_path.exists()
    assert sorted(p.name for p in result.dat_path.parent.iterdir()) == sorted(
        ["synthetic.dat", "synthetic.prb", "synthetic.prm", "synthetic.groundtruth.npz"])
    assert gt["sample_rate"] == 30000.0 and len(gt["spike_samples"]) == result.n_spikes


def test_ground_truth_consistent(recording):
    result, traces, gt = recording
    samples, clusters, templates = gt["spike_samples"], gt["spike_clusters"], gt["templates"]
    trough = int(gt["template_trough"])
    assert samples.dtype == np.int64 and clusters.dtype == np.int64
    assert np.all(np.diff(samples) >= 0)
    assert set(np.unique(clusters)) <= set(range(result.n_units))
    dead = refractory_samples(30000.0)
    for unit in range(result.n_units):
        s = samples[clusters == unit]
        assert np.all(np.diff(s) >= dead)
    assert templates.dtype == np.float32
    assert templates.shape == (8, templates.shape[1], 32)
    assert 45 <= templates.shape[1] <= 75  # ~2 ms at 30 kHz
    assert samples.min() >= trough and samples.max() < result.n_samples - (
        templates.shape[1] - trough) + 1
    peak = gt["unit_peak_channels"]
    np.testing.assert_array_equal(peak, np.abs(templates).max(axis=1).argmax(axis=1))
    for unit in range(result.n_units):
        # The trough of the peak channel is the template's trough sample.
        assert templates[unit, :, peak[unit]].argmin() == trough
    # The SNR compares signal and noise as detection sees them: after the band-pass.
    from scipy.signal import butter, sosfiltfilt

    sos = butter(3, [500, 0.475 * 30000], btype="band", fs=30000, output="sos")
    waves = np.pad(templates[np.arange(8), :, peak].astype(np.float64), ((0, 0), (200, 200)))
    bandpassed = np.abs(sosfiltfilt(sos, waves, axis=1)).max(axis=1)
    expected_snr = bandpassed * float(gt["uv_per_bit"]) / gt["noise_std_uv"][peak]
    np.testing.assert_allclose(gt["unit_snr"], expected_snr, rtol=1e-3)


def test_injected_spikes_are_there(recording):
    result, traces, gt = recording
    trough = int(gt["template_trough"])
    n_t = gt["templates"].shape[1]
    checked = 0
    for unit in range(result.n_units):
        select = gt["spike_clusters"] == unit
        s = gt["spike_samples"][select]
        if len(s) < 15:
            continue
        peak = gt["unit_peak_channels"][unit]
        snippets = np.stack([traces[t - trough:t - trough + n_t, peak] for t in s]).astype(float)
        snippets -= snippets.mean(axis=1, keepdims=True)  # remove the slow LFP drift
        expected = gt["templates"][unit, :, peak] * gt["spike_amplitudes"][select].mean()
        expected = expected - expected.mean()
        tolerance = 5 * snippets.std(axis=0) / np.sqrt(len(s)) + 1.0
        assert np.all(np.abs(snippets.mean(axis=0) - expected) < tolerance)
        # And the mean really has the template's shape, not just a small error.
        if gt["unit_snr"][unit] > 5:
            assert np.corrcoef(snippets.mean(axis=0), expected)[0, 1] > 0.9
        checked += 1
    assert checked >= 2


def test_deterministic_and_independent_of_chunks(tmp_path):
    kwargs = dict(probe=TinyMEA(), duration_s=1.3, seed=5, n_units=4)
    a = synthesize_recording(tmp_path / "a", chunk_s=0.1, **kwargs)
    b = synthesize_recording(tmp_path / "b", chunk_s=0.37, n_threads=1, **kwargs)
    c = synthesize_recording(tmp_path / "c", chunk_s=5.0, **kwargs)
    d = synthesize_recording(tmp_path / "d", **{**kwargs, "seed": 6})
    raw = [r.dat_path.read_bytes() for r in (a, b, c, d)]
    assert raw[0] == raw[1] == raw[2]
    assert raw[0] != raw[3] and len(raw[0]) == len(raw[3]) == 39_000 * 7 * 2
    assert a.n_channels == 7  # channel 3 is not on the probe but is in the .dat
    gts = [np.load(r.groundtruth_path) for r in (a, c, d)]
    np.testing.assert_array_equal(gts[0]["spike_samples"], gts[1]["spike_samples"])
    np.testing.assert_array_equal(gts[0]["templates"], gts[1]["templates"])
    assert not np.array_equal(gts[0]["templates"], gts[2]["templates"])
    traces = np.frombuffer(raw[0], dtype=np.int16).reshape(-1, 7)
    # Units on the second shank never show up on the first one (200 um away).
    far = gts[0]["templates"][:, :, :3].any(axis=(1, 2)) & \
        gts[0]["templates"][:, :, 4:].any(axis=(1, 2))
    assert not far.any()
    assert traces[:, 3].std() > 0  # the dead channel still has noise


def test_noise_level_and_spatial_correlation(tmp_path):
    result = synthesize_recording(tmp_path, probe=TinyLinear(32), duration_s=2.0, n_units=0,
                                  seed=1)
    traces, gt = _load(result)
    assert result.n_spikes == 0 and len(gt["spike_samples"]) == 0
    sos = butter(3, (500.0, 0.475 * 30000.0), btype="bandpass", fs=30000.0, output="sos")
    filtered = sosfiltfilt(sos, traces.astype(float), axis=0)[3000:-3000] * 0.195
    std = filtered.std(axis=0)
    # The analytic spike-band level matches the measured one (and the request).
    np.testing.assert_allclose(gt["noise_std_uv"], 10.0, rtol=1e-6)
    assert abs(std.mean() - 10.0) < 0.3 and np.all(np.abs(std - 10.0) < 0.8)
    corr = np.corrcoef(filtered.T)
    near = np.mean([corr[c, c + 1] for c in range(31)])
    far = np.mean([corr[c, c + 25] for c in range(7)])
    assert near > 0.15 and near > far + 0.1
    # Raw data carries the LFP-like drift: more power than the spike band alone.
    assert (traces * 0.195).std(axis=0).mean() > 2 * std.mean()


def test_unit_snr_covers_the_noise_floor(tmp_path):
    result = synthesize_recording(tmp_path, probe=TinyLinear(32), duration_s=0.2,
                                  n_units=40, seed=2)
    snr = result.unit_snr
    assert len(snr) == 40
    assert snr.min() >= 2.5 * 0.98 and snr.max() <= 20.0 * 1.02
    assert snr.min() < 3.5 and (snr < 5).sum() >= 8 and snr.max() > 12


def test_prm_reads_back(recording):
    result, _, _ = recording
    values = read_literal_file(result.prm_path, allowed_calls=("dict",))
    assert values["experiment_name"] == "synthetic"
    assert values["prb_file"] == "synthetic.prb"
    traces = values["traces"]
    assert traces == dict(raw_data_files=["synthetic.dat"], voltage_gain=0.195,
                          sample_rate=30000.0, n_channels=32, dtype="int16")
    assert values["spikedetekt"]["filter_high_factor"] == pytest.approx(0.475)
    assert "klustakwik2" in values
    prm = pytest.importorskip("phy_rawdata.prm")
    read = prm.read_prm(result.prm_path)
    assert read.traces.n_channels == 32 and read.traces.sample_rate == 30000.0
    assert read.traces.raw_data_files == [result.dat_path.resolve()]
    assert read.prb_file == result.prb_path.resolve()


def test_prb_reads_back(recording):
    from phy_probes.prb import read_prb

    result, _, _ = recording
    groups = read_prb(result.prb_path)
    assert groups[0]["channels"] == list(range(32))
    assert groups[0]["geometry"][5] == (0.0, 100.0)


def test_interrupted_write_leaves_no_dat(tmp_path):
    reporter = ProgressReporter()
    calls = []

    def fail(value, value_max):
        calls.append(value)
        if value == 2:
            raise KeyboardInterrupt  # what a Ctrl-C in the middle looks like

    reporter.connect(fail, event="progress")
    with pytest.raises(KeyboardInterrupt):
        synthesize_recording(tmp_path, probe=TinyLinear(8), duration_s=0.5, chunk_s=0.05,
                             reporter=reporter)
    assert calls == [1, 2]
    assert list(tmp_path.iterdir()) == []  # no .dat, no temporary file, nothing else


def test_reporter_reaches_complete(tmp_path):
    reporter = ProgressReporter()
    values = []
    reporter.connect(lambda value, value_max: values.append((value, value_max)),
                     event="progress")
    synthesize_recording(tmp_path, probe=TinyLinear(4), duration_s=0.1, chunk_s=0.035,
                         reporter=reporter)
    assert reporter.is_complete()
    assert values[-1][0] == values[-1][1] == len(values)


def test_existing_files_and_bad_parameters(tmp_path):
    synthesize_recording(tmp_path, probe=TinyLinear(4), duration_s=0.05)
    with pytest.raises(SynthError, match="exist"):
        synthesize_recording(tmp_path, probe=TinyLinear(4), duration_s=0.05)
    synthesize_recording(tmp_path, probe=TinyLinear(4), duration_s=0.05, overwrite=True)
    bad = [dict(duration_s=-1.0), dict(duration_s=float("nan")), dict(sample_rate=0.0),
           dict(seed=-3), dict(n_units=-1), dict(dtype="float32"), dict(name="a/b"),
           dict(chunk_s=0.0), dict(uv_per_bit=-0.1), dict(noise_std_uv=-1.0)]
    for kwargs in bad:
        with pytest.raises(SynthError):
            synthesize_recording(tmp_path / "bad", probe=TinyLinear(4), **kwargs)
    assert not (tmp_path / "bad").exists()


def test_clipping_is_reported(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="phy"):
        result = synthesize_recording(tmp_path, probe=TinyLinear(4), duration_s=0.1,
                                      uv_per_bit=0.001, n_units=0)
    assert result.n_clipped > 0
    assert "clipped" in caplog.text
    traces, _ = _load(result)
    assert traces.max() == 32767 and traces.min() == -32768
