"""The last step of template matching (phy_tmatch.consolidate): spikes matched twice, units
matched by two templates.

Spike trains are built with a known answer (which spikes are another template's seen again,
which templates are one unit), on templates made by `build_templates` as the runner makes them.
"""

from __future__ import annotations

import math

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


def _clipped(rng, n: int, mean: float, spread: float) -> np.ndarray:
    """`n` amplitudes of one unit as the pursuit gives them: clipped to 0.75-1.35."""
    return np.clip(rng.normal(mean, spread, n), 0.75, 1.35)


def test_another_units_spikes_at_the_bottom_of_a_templates_range_are_removed():
    rng = np.random.default_rng(4)
    # Template 0: a unit of 600 spikes (amplitudes 1.02 +- 0.1) and 90 spikes of a weaker
    # unit at the pursuit's lower bound. Template 1, 200 um away: a weak unit whose template
    # is too large (0.9 +- 0.12: 11 % of its spikes clipped at the bound, as the Gaussian
    # predicts). Template 2: a unit whose median is at the bound (left to the other tests).
    own, foreign = _train(rng, 600), _train(rng, 90, dead=5000)
    weak, low = _train(rng, 2000), _train(rng, 300)
    trains = [np.concatenate([own, foreign]), weak, low]
    amplitudes = [np.concatenate([_clipped(rng, len(own), 1.02, 0.1), np.full(len(foreign),
                                                                          0.75)]),
                  _clipped(rng, len(weak), 0.9, 0.12), np.full(len(low), 0.75)]
    templates = _templates([_waveform(2, 6.0), _waveform(12, 4.0), _waveform(22, 4.0)])
    result = _result(trains, amplitudes)
    out, _ = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    # The expected count, computed here independently: n Phi((0.75 - median) / spread).
    # (The normal distribution's quartile is 0.6745 of its spread.)
    a0 = amplitudes[0].astype(np.float32)
    median, q75 = np.quantile(a0.astype(np.float64), [0.5, 0.75])
    z = (0.75 - median) / ((q75 - median) / 0.6744897501960817)
    expected = len(a0) * 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    at_bound = a0 <= np.float32(0.75)
    assert at_bound.sum() > 3 * expected + 5  # the case is the one the rule is for
    kept_0 = out.spike_samples[out.spike_templates == 0]
    assert not np.isin(foreign, kept_0).any()
    # Template 0 loses its spikes at the bound, no other; 1 and 2 lose none.
    assert np.array_equal(np.sort(kept_0), np.sort(trains[0][~at_bound]))
    assert np.array_equal(out.spike_samples[out.spike_templates == 1], np.sort(weak))
    assert np.array_equal(out.spike_samples[out.spike_templates == 2], np.sort(low))
    # Off: every spike stays.
    same, _ = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE,
                          ConsolidateParameters(remove_foreign=False))
    assert len(same.spike_samples) == len(result.spike_samples)


def test_a_rare_template_at_the_bottom_of_its_range_is_dropped():
    rng = np.random.default_rng(5)
    # 100 s at 0.1 Hz: fewer than 10 spikes is rare. Template 0: 8 spikes at the bound
    # (fragments); 1: 8 spikes near amplitude 1 (a rare unit, kept); 2: 14 spikes at the
    # bound (not rare); 3: a unit of 500 spikes.
    trains = [_train(rng, 8, dead=100000), _train(rng, 8, dead=100000),
              _train(rng, 14, dead=100000), _train(rng, 500)]
    amplitudes = [np.full(8, 0.75), _clipped(rng, 8, 1.0, 0.05), np.full(14, 0.75),
                  _clipped(rng, 500, 1.0, 0.1)]
    templates = _templates([_waveform(2, 5.0), _waveform(9, 5.0), _waveform(16, 5.0),
                            _waveform(22, 8.0)])
    result = _result(trains, amplitudes)
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    assert info["n_dropped"] == 1
    assert not (out.spike_templates == 0).any()
    for k in (1, 2, 3):
        assert np.array_equal(out.spike_samples[out.spike_templates == k], np.sort(trains[k]))
    # At a tenth of the rate, template 0 is not rare either.
    same, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE,
                             ConsolidateParameters(min_rate_hz=0.01))
    assert info["n_dropped"] == 0 and len(same.spike_samples) == len(result.spike_samples)


def test_a_template_of_a_strong_units_remainders_is_dropped():
    rng = np.random.default_rng(6)
    # Template 0: a strong unit (2000 spikes in 100 s). Template 1, 100 um away: 300
    # remainders of its spikes, each dated 8-25 samples after one (outside the 0.2 ms of a
    # spike seen twice, within 1 ms). Template 2, 40 um away: an independent weak unit.
    strong = _train(rng, 2000)
    follow = np.sort(rng.choice(strong, 300, replace=False)) + rng.integers(8, 26, 300)
    other = _train(rng, 400)
    amplitudes = [np.ones(len(strong)), np.full(len(follow), 0.8), np.ones(len(other))]
    templates = _templates([_waveform(6, 40.0), _waveform(11, 5.0), _waveform(8, 5.0)])
    result = _result([strong, follow, other], amplitudes)
    # Not duplicates in the 0.2 ms sense: none within 6 samples.
    assert not _brute_force_coincidences(strong, follow, int(round(0.2e-3 * RATE))).any()
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    assert info["n_dropped"] == 1 and not (out.spike_templates == 1).any()
    # The independent unit: its chance coincidences within 1 ms (about 2000 * 61 / 3e6 of
    # its spikes, computed here by brute force) are far from half of them: kept whole.
    assert _brute_force_coincidences(strong, other, 30).mean() < 0.2
    assert np.array_equal(out.spike_samples[out.spike_templates == 2], np.sort(other))
    assert np.array_equal(out.spike_samples[out.spike_templates == 0], np.sort(strong))
    same, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE,
                             ConsolidateParameters(drop_remainders=False))
    assert info["n_dropped"] == 0 and len(same.spike_samples) == len(result.spike_samples)


def test_two_templates_the_refinement_told_apart_are_not_merged():
    # Two units of one shape at one site with few spikes (60 and 200 in 100 s: units 89
    # and 130 of the 1024 channels, 20 s): no pair of their spikes comes within the
    # refractory period, so the consolidation takes them for one unit; the refinement,
    # which compared their spikes (`refine`'s ``kept_apart``), knows better.
    rng = np.random.default_rng(4)
    a, b = _train(rng, 60, dead=30000), _train(rng, 200, dead=9000)
    templates = _templates([_waveform(8, 10.0), _waveform(8, 11.0, shift=1)])
    result = _result([a, b], [np.ones(len(a)), np.ones(len(b))])
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    assert info["n_merged"] == 1
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE,
                            apart=[(1, 0)])
    assert info["n_merged"] == 0
    assert np.array_equal(out.spike_templates, result.spike_templates)


def _wide(home: int, peak: float, width: float) -> np.ndarray:
    """`_waveform` with a wider footprint (`width` channels against 2)."""
    t = np.arange(N_T)[:, None] - 15.0
    shape = -np.exp(-0.5 * (t / 2.0) ** 2) + 0.4 * np.exp(-0.5 * ((t - 6.0) / 4.0) ** 2)
    footprint = np.exp(-0.5 * ((np.arange(N_CHANNELS) - home) / width) ** 2)
    return peak * shape * footprint[None, :]


def test_two_templates_of_one_unit_unlike_on_their_far_channels_are_merged_if_refractory():
    # One unit's two templates, alike on the peak channel, one wider (cosine 0.89: below
    # ``merge_similarity``, as a weak unit's at the probe's edge on the 384-channel,
    # 200 s recording): their 1,500 spikes never come closer than the dead time, where
    # chance gives 12 pairs of two independent units' trains: one unit.
    rng = np.random.default_rng(5)
    templates = _templates([_waveform(8, 10.0), _wide(8, 9.0, 4.0)])
    dense = templates.dense()
    cos = float(np.sum(dense[0] * dense[1]) / np.linalg.norm(dense[0]) / np.linalg.norm(dense[1]))
    assert 0.85 < cos < ConsolidateParameters().merge_similarity
    train = _train(rng, 1500)
    part = rng.random(len(train)) < 0.3
    result = _result([train[~part], train[part]], [np.ones((~part).sum()), np.ones(part.sum())])
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    assert info["n_merged"] == 1
    assert np.array_equal(out.spike_templates, np.zeros(len(train)))
    assert np.array_equal(out.spike_samples, train)
    # Two independent units with these templates: their trains come close by chance.
    a, b = _train(rng, 1050), _train(rng, 450)
    result = _result([a, b], [np.ones(len(a)), np.ones(len(b))])
    assert consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION,
                       RATE)[1]["n_merged"] == 0
    # Too few spikes for chance to give enough pairs: the refractory trains do not tell.
    few = train[:300]
    part = part[:300]
    result = _result([few[~part], few[part]], [np.ones((~part).sum()), np.ones(part.sum())])
    assert consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION,
                       RATE)[1]["n_merged"] == 0


def test_a_template_of_a_strong_units_tail_beyond_1_ms_is_dropped():
    rng = np.random.default_rng(11)
    # Template 1, 40 um from a strong unit (template 0): 400 matches of what is left of its
    # waveform after its template's window, 33-38 samples after its spikes (beyond the 1 ms
    # that was the remainders' window, within the N_T samples of a template).
    strong = _train(rng, 2000)
    tail = np.sort(rng.choice(strong, 400, replace=False)) + rng.integers(33, 39, 400)
    other = _train(rng, 400)
    amplitudes = [np.ones(len(strong)), np.full(len(tail), 0.9), np.ones(len(other))]
    templates = _templates([_waveform(6, 40.0), _waveform(8, 5.0), _waveform(9, 5.0)])
    result = _result([strong, tail, other], amplitudes)
    # Within 1 ms of one of the strong unit's spikes: only by chance (its next one).
    assert _brute_force_coincidences(strong, tail, 30).mean() < 0.1
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    assert info["n_dropped"] == 1 and not (out.spike_templates == 1).any()
    # The independent unit 60 um away: by chance about 2000 * 79 / 3e6 of its spikes have
    # one of the strong unit's within N_T - 1 samples (brute force), far from half: kept.
    assert _brute_force_coincidences(strong, other, N_T - 1).mean() < 0.15
    assert np.array_equal(out.spike_samples[out.spike_templates == 2], np.sort(other))
    assert np.array_equal(out.spike_samples[out.spike_templates == 0], np.sort(strong))
    # With the 1 ms window alone the tail stays.
    same, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE,
                             ConsolidateParameters(drop_tails=False))
    assert info["n_dropped"] == 0 and len(same.spike_samples) == len(result.spike_samples)


def test_a_rare_template_of_two_units_firing_together_is_dropped():
    rng = np.random.default_rng(12)
    # Units A (template 0) and B (template 1), 40 um apart, 500 spikes each in 100 s.
    # Template 2: their sum, B 3 samples after A (made of the few times they fired
    # together), 8 spikes (rare: under 0.1 Hz). Template 3: a rare unit of a shape of its
    # own between them (slower, and positive first), 8 spikes; template 4: a rare copy of A
    # at twice its size (A's spikes over another unit's of its shape), 8 spikes.
    a, b = _waveform(6, 8.0), _waveform(8, 6.0, shift=3)
    t = np.arange(N_T)[:, None] - 20.0
    own = 6.0 * (np.exp(-0.5 * (t / 5.0) ** 2) - 0.8 * np.exp(-0.5 * ((t - 9.0) / 3.0) ** 2)) \
        * np.exp(-0.5 * ((np.arange(N_CHANNELS) - 7) / 2.0) ** 2)[None, :]
    templates = _templates([_waveform(6, 8.0), _waveform(8, 6.0), a + b, own,
                            2 * _waveform(6, 8.0)])
    trains = [_train(rng, 500), _train(rng, 500)] + [_train(rng, 8, dead=100000)
                                                     for _ in range(3)]
    amplitudes = [_clipped(rng, len(x), 1.0, 0.1) for x in trains]
    result = _result(trains, amplitudes)
    # Independently: least squares of each rare template on A and B at the true lag.
    dense = templates.dense().astype(np.float64)
    basis = np.stack([dense[0].ravel(), np.roll(dense[1], 3, axis=0).ravel()], axis=1)
    for k, explained in ((2, 0.95), (4, 0.95)):
        coef, residual, _, _ = np.linalg.lstsq(basis, dense[k].ravel(), rcond=None)
        assert 1 - residual[0] / (dense[k] ** 2).sum() > explained and (coef > 0).all()
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    assert info["n_dropped"] == 2
    assert not np.isin(out.spike_templates, (2, 4)).any()
    for k in (0, 1, 3):
        assert np.array_equal(out.spike_samples[out.spike_templates == k], np.sort(trains[k]))
    # Off, or at a tenth of the rate (not rare): kept.
    for p in (ConsolidateParameters(drop_composites=False),
              ConsolidateParameters(min_rate_hz=0.01)):
        same, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION,
                                 RATE, p)
        assert info["n_dropped"] == 0 and len(same.spike_samples) == len(result.spike_samples)


def test_a_rare_template_at_the_top_of_its_range_is_dropped():
    rng = np.random.default_rng(13)
    # 100 s at 0.1 Hz: fewer than 10 spikes is rare. Template 0: 8 spikes, 6 of them clipped
    # at the pursuit's ceiling (larger events than itself); 1: 8 spikes near 1 (a rare unit
    # of a shape of its own, kept); 2: 14 spikes at the ceiling (not rare); 3: 500 spikes.
    trains = [_train(rng, 8, dead=100000), _train(rng, 8, dead=100000),
              _train(rng, 14, dead=100000), _train(rng, 500)]
    amplitudes = [np.r_[np.full(6, 1.35), 1.1, 1.2], _clipped(rng, 8, 1.0, 0.05),
                  np.full(14, 1.35), _clipped(rng, 500, 1.0, 0.1)]
    templates = _templates([_waveform(2, 5.0), _waveform(9, 5.0), _waveform(16, 5.0),
                            _waveform(22, 8.0)])
    result = _result(trains, amplitudes)
    out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE)
    assert info["n_dropped"] == 1 and not (out.spike_templates == 0).any()
    for k in (1, 2, 3):
        assert np.array_equal(out.spike_samples[out.spike_templates == k], np.sort(trains[k]))
    # A pursuit whose range reaches 1.6: 1.35 is not its ceiling.
    same, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, DURATION, RATE,
                             amplitude_max=1.6)
    assert info["n_dropped"] == 0 and len(same.spike_samples) == len(result.spike_samples)
