"""Amplitudes of a group's spikes (phy_tmatch.amplitude): the mean amplitude, two modes,
the recording's jitter, modes independent of time and intervals."""

from __future__ import annotations

import numpy as np
from tmatch_spikes import interleaved as _interleaved
from tmatch_spikes import spike as _spike
from tmatch_spikes import spikes as _spikes

from phy_tmatch.amplitude import (
    amplitude_modes,
    mean_amplitude,
    modes_independent,
    recording_jitter,
)
from phy_tmatch.refine import RefineParameters


def test_mean_amplitude_is_the_spikes_amplitude_whatever_their_alignment():
    rng = np.random.default_rng(3)
    template = _spike().reshape(-1)
    slope = np.gradient(_spike(), axis=0).reshape(-1)
    x = _spikes(rng, 400, 0.6).reshape(400, -1)
    mean, error = mean_amplitude(x, template, slope)
    assert abs(mean - 0.6) < 3 * error and error < 0.01
    assert abs(mean_amplitude(x[:40], template, slope)[0] - 0.6) < 0.05


def _two_unit_amplitudes(rng, n_small: int, n_large: int, ratio: float,
                         noise_sd: float) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes on a template of two units' mixed spikes (the smaller unit at 1), 10 %
    jitter plus the estimate's noise; (amplitudes, true labels: 1 for the larger unit)."""
    truth = np.r_[np.zeros(n_small, np.int64), np.ones(n_large, np.int64)]
    means = np.where(truth == 1, ratio, 1.0)
    a = means * (1 + 0.1 * rng.standard_normal(len(truth))) + noise_sd * rng.standard_normal(
        len(truth))
    return a, truth


def test_amplitudes_of_two_units_form_two_modes_and_of_one_unit_one():
    p = RefineParameters(amplitude_split=True, amplitude_jitter=0.1)
    rng = np.random.default_rng(11)
    # Seed 0's units 24 and 39 (384 channels): 17 and 32 spikes, amplitude ratio 1.42,
    # estimate noise 0.09 of the template's amplitude (here of the smaller unit's).
    found = 0
    for _ in range(20):
        a, truth = _two_unit_amplitudes(rng, 17, 32, 1.42, 0.09)
        labels = amplitude_modes(a, 0.09 ** 2, p)
        if labels is not None:
            found += 1
            # The modes overlap: the next matching pass, not these labels, assigns spikes.
            assert (labels == truth).mean() >= 0.7
    assert found >= 12
    # One unit: 10 % jitter and the estimate's noise, whatever the count.
    false = 0
    for n in (20, 49, 100, 300):
        for _ in range(25):
            a = 1 + 0.1 * rng.standard_normal(n) + 0.09 * rng.standard_normal(n)
            false += amplitude_modes(a, 0.09 ** 2, p) is not None
    assert false <= 2
    # Two modes closer than `amplitude_split_ratio`, or a mode of a few spikes, are one unit.
    a, _ = _two_unit_amplitudes(rng, 100, 100, 1.2, 0.02)
    assert amplitude_modes(a, 0.02 ** 2, p) is None
    a, _ = _two_unit_amplitudes(rng, 5, 95, 1.6, 0.02)
    assert amplitude_modes(a, 0.02 ** 2, p) is None


def test_recording_jitter_is_the_median_of_the_templates_spread_beyond_the_noise():
    rng = np.random.default_rng(21)
    sets = [(1 + 0.15 * rng.standard_normal(200) + 0.05 * rng.standard_normal(200), 0.05 ** 2)
            for _ in range(6)]
    # A template of two units (two modes 1.4 apart) spreads more: the median ignores it.
    sets.append((np.r_[np.ones(100), 1.4 * np.ones(100)] + 0.05 * rng.standard_normal(200),
                 0.05 ** 2))
    assert abs(recording_jitter(sets, 30) - 0.15) < 0.02
    # Too few spikes or too few templates: nothing measured.
    assert recording_jitter(sets[:2], 30) is None
    assert recording_jitter([(a[:20], v) for a, v in sets], 30) is None


def test_amplitude_modes_of_two_units_are_independent_of_time_and_intervals():
    p = RefineParameters()
    rng = np.random.default_rng(5)
    independent = 0
    for _ in range(20):
        # Two units: which one fired is independent of when, and of the interval before.
        labels = rng.integers(0, 2, 60)
        independent += modes_independent(labels, _interleaved(rng, 60), p)
        # A bursting unit: its smaller spikes (label 0) come 4-8 ms after another.
        first = rng.permutation(_interleaved(rng, 40))
        samples = np.r_[first, first[:20] + rng.integers(120, 240, 20)]
        assert not modes_independent(np.r_[np.ones(40), np.zeros(20)].astype(int), samples, p)
        # A drifting unit: its larger spikes (label 1) late in the recording.
        samples = _interleaved(rng, 60)
        labels = (np.arange(60) + 15 * rng.standard_normal(60) > 30).astype(int)
        assert not modes_independent(labels, samples, p)
    assert independent >= 19
