"""The templates the refinement makes get their channels beyond the snippets' (`phy_tmatch.means`).

The refinement sees its events on a few local channels (`snippet_channels`); a
unit wider than those is still given a template on all the channels where it
stands out, read again from the recording.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from phy_detect.executors import SerialExecutor
from phy_detect.filtering import Filter
from phy_rawdata.model import open_traces
from phy_rawdata.prm import read_prm
from phy_tmatch.means import WindowMeans
from phy_tmatch.runner import filter_arguments, match_spikes

# Seed 1, 8 s on linear32: unit 6 (channel 25, SNR 14.8) has 39 spikes.
LONE = 6
# Fewer local channels than the lone unit spans (five channels at a fifth of its peak).
SNIPPET_CHANNELS = 2


@pytest.fixture(scope="module")
def recording(linear32_seed1_8s):
    # Seed 1, 8 s: shared with other modules (conftest.py), read only.
    return linear32_seed1_8s


@pytest.fixture(scope="module")
def truth(recording):
    return dict(np.load(recording / "rec.groundtruth.npz"))


def _footprint(truth, unit: int, fraction: float = 0.2) -> np.ndarray:
    """The channels where the true unit's waveform reaches `fraction` of its peak."""
    peak = np.abs(truth["templates"][unit]).max(axis=0)
    return np.flatnonzero(peak >= fraction * peak.max())


def test_window_means_are_the_means_of_the_whole_filtered_recording(recording, truth):
    prm = read_prm(recording / "rec.prm")
    traces = open_traces(prm)
    filter_ = Filter(**filter_arguments(prm))
    n_channels = int(traces.shape[1])
    whole = filter_(np.asarray(traces[:], dtype=np.float32))
    n_t, before = 40, 12
    troughs = truth["spike_samples"][truth["spike_clusters"] == LONE]
    starts = troughs - before
    channels = np.array([3, 20, 24, 25, 31])
    means = WindowMeans(traces, np.arange(n_channels), filter_, n_t, before, max_spikes=1000)
    mean, n = means(starts, channels)
    fits = starts[(starts >= means.margin)
                  & (starts + n_t + means.margin <= traces.shape[0])]
    assert n == len(fits) >= 30
    expected = np.mean([whole[s:s + n_t][:, channels] for s in fits], axis=0)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(mean, expected, atol=1e-3 * scale)
    # At most `max_spikes` windows, evenly spread.
    few = WindowMeans(traces, np.arange(n_channels), filter_, n_t, before, max_spikes=10)
    assert few(starts, channels)[1] == 10


def _new_template_channels(recording, truth, out, full_means: bool) -> int:
    keep = truth["spike_clusters"] != LONE
    out = match_spikes(recording / "rec.prm", truth["spike_samples"][keep],
                       truth["spike_clusters"][keep], out, executor=SerialExecutor(),
                       refine_rounds=1, snippet_channels=SNIPPET_CHANNELS,
                       pool_channels=SNIPPET_CHANNELS, full_means=full_means)
    info = json.loads((out / "tmatch.json").read_text())
    assert info["refinements"][0]["n_new"] >= 1
    seeds = set(np.unique(truth["spike_clusters"][keep]).tolist())
    n_channels = [n for c, n in zip(info["cluster_ids"], info["template_n_channels"])
                  if c not in seeds]
    assert n_channels, "the lone unit got no template"
    return max(n_channels)


def test_a_template_made_from_residual_events_keeps_its_far_channels(recording, truth,
                                                                      tmp_path):
    footprint = _footprint(truth, LONE)
    assert len(footprint) > 2 * SNIPPET_CHANNELS  # the test's premise
    narrow = _new_template_channels(recording, truth, tmp_path / "narrow", False)
    wide = _new_template_channels(recording, truth, tmp_path / "wide", True)
    # Without: the snippets' channels alone; with: (nearly) all those of the unit.
    assert narrow <= SNIPPET_CHANNELS
    assert wide >= 0.8 * len(footprint)


def test_the_windows_are_of_the_residual_the_pass_left(recording, truth):
    # The spikes a pass matched are taken out of the windows, but a window's own spike.
    prm = read_prm(recording / "rec.prm")
    traces = open_traces(prm)
    filter_ = Filter(**filter_arguments(prm))
    n_channels, n_samples = int(traces.shape[1]), int(traces.shape[0])
    n_t, before = 40, 12
    rng = np.random.default_rng(0)
    waveforms = rng.normal(size=(3, n_t, n_channels)).astype(np.float32)
    spike_starts = np.sort(rng.choice(np.arange(300, n_samples - 300), 2000, replace=False))
    spike_templates = rng.integers(0, 3, len(spike_starts))
    amplitudes = rng.uniform(0.75, 1.35, len(spike_starts)).astype(np.float32)
    # Independently: the pass's model of the recording, every matched spike added in place.
    model = np.zeros((n_samples, n_channels))
    for s, k, a in zip(spike_starts, spike_templates, amplitudes):
        model[s:s + n_t] += a * waveforms[k]
    # Windows at some matched spikes (their own kept) and at other samples.
    own_rows = np.arange(0, len(spike_starts), 97)
    starts = np.concatenate([spike_starts[own_rows], rng.integers(300, n_samples - 300, 20)])
    own = np.concatenate([spike_templates[own_rows], np.full(20, -1)])
    channels = np.array([0, 7, 8, 30])
    means = WindowMeans(traces, np.arange(n_channels), filter_, n_t, before, max_spikes=1000)
    raw = means.windows(starts, channels, own)
    means.set_matched(spike_starts, spike_templates, amplitudes, waveforms)
    residual = means.windows(starts, channels, own)
    order = np.argsort(starts, kind="stable")  # the windows come in time order
    expected = np.stack([model[s:s + n_t][:, channels] for s in starts[order]], axis=1)
    for i, (s, k) in enumerate(zip(starts[order], own[order])):
        if k >= 0:  # the window's own spike stays
            at = np.flatnonzero((spike_starts == s) & (spike_templates == k))[0]
            expected[:, i] -= amplitudes[at] * waveforms[k][:, channels]
    assert np.abs(expected).max() > 1  # the test's premise: spikes in the windows
    np.testing.assert_allclose(raw - residual, expected, atol=1e-4)
    # Forgotten: the windows of the recording again.
    means.set_matched(None, None, None, None)
    np.testing.assert_array_equal(means.windows(starts, channels, own), raw)
