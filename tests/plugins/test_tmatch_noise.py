"""The template stage's noise measured before it (phy_tmatch.noise), and its ``on_idle``
hook."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phy_core.progress import ProgressReporter
from phy_detect.executors import SerialExecutor
from phy_synthetic.recording import synthesize_recording
from phy_tmatch.runner import match_spikes

DURATION_S = 4.0
OUTPUTS = ("spike_times.npy", "spike_templates.npy", "amplitudes.npy", "templates.npy")


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tmatch_noise")
    synthesize_recording(folder, name="rec", probe="linear32", duration_s=DURATION_S, seed=7)
    return folder


@pytest.fixture(scope="module")
def ground_truth(recording):
    return dict(np.load(recording / "rec.groundtruth.npz"))


def _match(recording, gt, out, **options):
    return match_spikes(recording / "rec.prm", gt["spike_samples"], gt["spike_clusters"], out,
                        executor=SerialExecutor(), refine_rounds=1, **options)


def _info(out) -> dict:
    return json.loads((out / "tmatch.json").read_text())


@pytest.fixture(scope="module")
def matched(recording, ground_truth, tmp_path_factory):
    """The template matching measuring the noise itself."""
    return _match(recording, ground_truth, tmp_path_factory.mktemp("measured_here"))


def test_noise_statistics_are_those_of_evenly_spread_whole_chunks(recording):
    from phy_detect.filtering import Filter
    from phy_rawdata.model import open_traces
    from phy_rawdata.prm import read_prm
    from phy_tmatch.noise import (
        filter_arguments,
        measure_noise,
        template_chunks,
        template_window,
    )

    stats = measure_noise(recording / "rec.prm", SerialExecutor(), n_noise_chunks=3)
    prm = read_prm(recording / "rec.prm")
    traces = np.asarray(open_traces(prm)[:], dtype=np.float32)
    rate = float(prm.traces.sample_rate)
    filter_ = Filter(**filter_arguments(prm))
    _, n_t = template_window(0.8, 1.4, rate)  # the default before_ms, after_ms
    plan = template_chunks(len(traces), rate, filter_.margin_samples, n_t)
    assert len(plan) == 4 and len(stats.medians) == 3  # chunks 0, 2 (1.5 rounded) and 3
    sigma = []
    for chunk, medians in zip([plan[0], plan[2], plan[3]], stats.medians):
        filtered = filter_(traces[chunk.load_start:chunk.load_stop])
        keep = filtered[chunk.keep_start - chunk.load_start:chunk.keep_stop - chunk.load_start]
        np.testing.assert_array_equal(medians, np.median(np.abs(keep[::4]), axis=0))
        sigma.append(medians / 0.6744897501960817)
    # The covariance sums: X^T X over every other quiet row (no channel beyond 5 sigma
    # within half a template), chunk by chunk.
    assert stats.xtx.shape == (32, 32) and 0 < stats.n_rows < 3 * int(rate) / 2
    np.testing.assert_allclose(np.diag(stats.xtx) / stats.n_rows,
                               np.mean(np.square(sigma), axis=0), rtol=0.3)
    assert stats.cpu_s > 0


def test_noise_measured_beforehand_gives_the_same_sorting(recording, ground_truth, matched,
                                                          tmp_path):
    from phy_tmatch.noise import measure_noise

    prm = recording / "rec.prm"
    assert _info(matched)["noise_measured_before"] is False
    # Measured beforehand (other options are ignored there): used, the same result.
    stats = measure_noise(prm, SerialExecutor(), channels=np.arange(32), refine_rounds=1)
    before = _match(recording, ground_truth, tmp_path / "before", noise_statistics=stats)
    info = _info(before)
    assert info["noise_measured_before"] is True and info["cpu_noise_before_s"] > 0
    assert info["projection_sigma"] == _info(matched)["projection_sigma"]
    for name in OUTPUTS:
        np.testing.assert_array_equal(np.load(before / name), np.load(matched / name))
    # Measured for something else (other noise chunks): measured again, the same result.
    other = measure_noise(prm, SerialExecutor(), n_noise_chunks=2)
    again = _match(recording, ground_truth, tmp_path / "again", noise_statistics=other)
    assert _info(again)["noise_measured_before"] is False
    for name in OUTPUTS:
        np.testing.assert_array_equal(np.load(again / name), np.load(matched / name))


def test_on_idle_is_called_once_when_the_parent_starts_refining(recording, ground_truth,
                                                                 matched, tmp_path):
    calls = []
    reporter = ProgressReporter()
    out = _match(recording, ground_truth, tmp_path / "idle", reporter=reporter,
                 on_idle=lambda: calls.append(reporter.value))
    # One template job, then the noise excerpts and the chunks of the first pass.
    info = _info(out)
    n_jobs = sum(1 for _, what, _, _ in info["timeline"] if what in ("templates", "match 0"))
    n_noise = sum(1 for _, what, _, _ in info["timeline"] if what == "noise")
    assert len(calls) == 1 and calls[0] >= n_jobs + 1 and calls[0] < n_jobs + n_noise
    # Without refinement rounds, at the start; a failing callback changes nothing.
    calls.clear()
    reporter = ProgressReporter()

    def fail():
        calls.append(reporter.value)
        raise RuntimeError("not the stage's problem")

    failing = match_spikes(recording / "rec.prm", ground_truth["spike_samples"],
                           ground_truth["spike_clusters"], tmp_path / "failing",
                           executor=SerialExecutor(), refine_rounds=0, on_idle=fail,
                           reporter=reporter)
    assert calls == [0] and _info(failing)["refinements"] == []
    assert np.load(failing / "spike_times.npy").size > 0
