"""The last step of template matching (phy_tmatch.consolidate): spikes matched twice, units
matched by two templates.

Spike trains are built with a known answer (which spikes are another template's seen again,
which templates are one unit), on templates made by `build_templates` as the runner makes them.
"""

from __future__ import annotations

import numpy as np

from phy_core.bunch import Bunch
from phy_tmatch.consolidate import ConsolidateParameters, consolidate, duplicate_spikes
from phy_tmatch.templates import build_templates

N_T, N_CHANNELS, RATE = 40, 24, 30000.0
POSITIONS = np.c_[np.zeros(N_CHANNELS), 20.0 * np.arange(N_CHANNELS)]
DURATION = int(100 * RATE)


def _waveform(home: int, peak: float, shift: int = 0) -> np.ndarray:
    """A unit's mean waveform ``(N_T, N_CHANNELS)`` in noise units, delayed by `shift`."""
    t = np.arange(N_T)[:, None] - 15.0 - shift
    shape = -np.exp(-0.5 * (t / 2.0) ** 2) + 0.4 * np.exp(-0.5 * ((t - 6.0) / 4.0) ** 2)
    footprint = np.exp(-0.5 * ((np.arange(N_CHANNELS) - home) / 2.0) ** 2)
    return peak * shape * footprint[None, :]


def _train(rng, n: int, dead: int = 60) -> np.ndarray:
    """`n` sorted spike samples in the recording, at least `dead` samples apart."""
    gaps = dead + rng.exponential((DURATION - n * dead) / n, n)
    return np.cumsum(gaps).astype(np.int64)[np.cumsum(gaps) < DURATION - 100]


def _result(trains: list, amplitudes: list) -> Bunch:
    samples = np.concatenate(trains)
    kinds = np.concatenate([np.full(len(t), k) for k, t in enumerate(trains)])
    amps = np.concatenate(amplitudes).astype(np.float32)
    order = np.argsort(samples, kind="stable")
    return Bunch(spike_samples=samples[order], spike_templates=kinds[order],
                 amplitudes=amps[order])


def _templates(waveforms: list):
    return build_templates(np.stack(waveforms), np.full(len(waveforms), 200),
                           np.arange(len(waveforms)) + 10, np.ones(N_CHANNELS))


def _far_field_case(rng, own_amplitude: float):
    """A strong unit (template 0), a weak template 100 um away that also matched 300 of
    its spikes (template 1, besides 60 spikes of its own at `own_amplitude`), and an
    independent weak unit 40 um from the strong one (template 2)."""
    strong = _train(rng, 400)
    again = np.sort(rng.choice(strong, 300, replace=False)) + rng.integers(-3, 4, 300)
    own = _train(rng, 60, dead=5000)
    other = _train(rng, 300)
    trains = [strong, np.concatenate([again, own]), other]
    amplitudes = [np.ones(len(strong)),
                  np.concatenate([np.full(300, 0.75), np.full(len(own), own_amplitude)]),
                  np.ones(len(other))]
    templates = _templates([_waveform(6, 40.0), _waveform(11, 5.0), _waveform(8, 5.0)])
    return templates, _result(trains, amplitudes), again, own, other


def _brute_force_coincidences(a: np.ndarray, b: np.ndarray, window: int) -> np.ndarray:
    """Whether each spike of `b` has a spike of `a` within `window` samples."""
    return (np.abs(b[:, None] - a[None, :]) <= window).any(axis=1)


def test_spikes_a_smaller_template_matched_again_are_removed():
    rng = np.random.default_rng(0)
    templates, result, again, own, other = _far_field_case(rng, 1.0)
    window = int(round(0.2e-3 * RATE))
    samples, kinds = result.spike_samples, result.spike_templates
    peaks = np.abs(templates.dense()).max(axis=(1, 2))
    homes = np.abs(templates.dense()).max(axis=1).argmax(axis=1)
    remove, pairs = duplicate_spikes(samples, kinds, peaks, homes, POSITIONS, DURATION, window,
                                     ConsolidateParameters())
    # The one pair found: template 1 matched template 0's spikes again.
    assert [(a, b) for a, b, _, _ in pairs] == [(0, 1)]
    strong = samples[kinds == 0]
    expected = np.zeros(len(samples), dtype=bool)
    expected[kinds == 1] = _brute_force_coincidences(strong, samples[kinds == 1], window)
    assert np.array_equal(remove, expected)
    assert expected.sum() >= 300  # its own spikes may fall on the strong unit's by chance
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    # Template 1 keeps its own spikes (amplitudes near 1: a unit), template 2 all of its.
    kept_1 = out.spike_samples[out.spike_templates == 1]
    assert np.isin(own[~_brute_force_coincidences(strong, own, window)], kept_1).all()
    assert not np.isin(again, kept_1).any()
    assert np.array_equal(out.spike_samples[out.spike_templates == 2], np.sort(other))
    assert np.array_equal(out.spike_samples[out.spike_templates == 0], np.sort(strong))
    assert np.all(np.diff(out.spike_samples) >= 0)
    assert info["n_dropped"] == 0 and info["n_duplicate_spikes"] == expected.sum()


def test_a_template_left_with_fragments_at_the_bottom_of_its_range_is_dropped():
    rng = np.random.default_rng(1)
    templates, result, _, _, other = _far_field_case(rng, 0.75)
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    assert info["n_dropped"] == 1
    assert not (out.spike_templates == 1).any()
    assert (out.spike_templates == 2).sum() == len(other)
    # Off: nothing changes.
    same, _ = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE,
                          ConsolidateParameters(remove_duplicates=False, merge=False))
    assert np.array_equal(same.spike_samples, result.spike_samples)


def test_two_templates_of_one_unit_one_sample_apart_are_merged():
    rng = np.random.default_rng(2)
    train = _train(rng, 300)
    # Unit dated on either of two samples (its trough between them): half the spikes on a
    # template one sample later, so dated one sample later with it.
    half = rng.random(len(train)) < 0.5
    templates = _templates([_waveform(8, 10.0), _waveform(8, 10.0, shift=1),
                            _waveform(20, 10.0)])
    other = _train(rng, 200)
    result = _result([train[~half], train[half], other],
                     [np.ones((~half).sum()), np.ones(half.sum()), np.ones(len(other))])
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    assert info["n_merged"] == 1
    # One template for the unit (the one with more spikes), its spikes' times unchanged:
    # a spike's time is its trough, which the two templates date alike.
    unit = out.spike_templates != 2
    assert len(np.unique(out.spike_templates[unit])) == 1
    assert np.array_equal(out.spike_samples[unit], np.sort(train))
    assert np.allclose(out.amplitudes[unit], 1.0, atol=0.02)
    assert np.array_equal(out.spike_samples[~unit], np.sort(other))


def test_two_templates_of_one_shape_firing_independently_are_not_merged():
    rng = np.random.default_rng(3)
    # Two units of one shape at one site, independent trains at 30 Hz: their spikes
    # come closer than the refractory period, so they are two units.
    a, b = _train(rng, 3000), _train(rng, 3000)
    templates = _templates([_waveform(8, 10.0), _waveform(8, 10.0, shift=1)])
    result = _result([a, b], [np.ones(len(a)), np.ones(len(b))])
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    assert info["n_merged"] == 0
    assert np.array_equal(out.spike_templates, result.spike_templates)
