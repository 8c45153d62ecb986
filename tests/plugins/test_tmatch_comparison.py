"""Comparisons of the refinement's groups (phy_tmatch.comparison): snippets, means beyond
a scale and a shift, duplicates, refractory conflicts."""

from __future__ import annotations

import numpy as np

from phy_tmatch.comparison import (
    beyond_scale_and_shift,
    compare_snippets,
    duplicates,
    refractory_conflict,
)
from phy_tmatch.groups import Group
from phy_tmatch.refine import RefineParameters
from phy_tmatch.residual import local_channels
from phy_tmatch.snippet_whitener import SnippetWhitener


def test_snippet_comparison_joins_a_weak_units_residual_events_but_not_another_unit():
    # A weak unit (trough 3x the noise on channel 0, 1.5x on channel 1) in white noise.
    rng = np.random.default_rng(1)
    p = RefineParameters()
    n_t = 30
    positions = np.c_[np.zeros(4), 20.0 * np.arange(4)]
    local = local_channels(positions, 4)
    whitener = SnippetWhitener(None, np.ones(4), local)
    whitener.temporal = np.eye(n_t)
    shape = np.zeros((n_t, 4))
    shape[8:13, 0] = [-1.0, -2.5, -3.0, -2.5, -1.0]
    shape[8:13, 1] = shape[8:13, 0] / 2
    shape[14:20, 0] = 1.0

    def events(n, waveform=shape):
        return waveform + rng.standard_normal((n, n_t, 4))

    matched = events(80)
    # The same unit's events of a fair sample: indistinct by the test.
    same, cos, ratio = compare_snippets(matched, 0, events(30), 0, 0, whitener, local, p)
    assert same and cos > 0.8
    # The 8 deepest of 40 (residual events are chosen by their troughs): their mean is
    # biased, yet alike in shape and amplitude, which is what joins them to the template.
    pool = events(40)
    deepest = pool[np.argsort(pool[:, 10, 0])[:8]]
    same, cos, ratio = compare_snippets(matched, 0, deepest, 0, 0, whitener, local, p)
    assert cos >= p.fragment_similarity
    assert 1 / p.merge_amplitude_ratio <= ratio <= p.merge_amplitude_ratio
    # Another unit of the same amplitude on the channels next to it: neither.
    other = np.zeros_like(shape)
    other[:, 2], other[:, 3] = shape[:, 0], shape[:, 1]
    same, cos, ratio = compare_snippets(matched, 0, events(8, other), 0, 0, whitener, local, p)
    assert not same and cos < p.fragment_similarity


def test_means_differing_by_a_scale_and_a_fraction_of_a_sample_are_one_unit():
    # Means of 50 events each (noise variance 2/50 per dimension of the difference):
    # the same waveform 1.15x larger and 0.3 sample later is one unit; a waveform
    # with a second trough, or 3 samples later, is not.
    p = RefineParameters()
    n_t, n = 40, 50
    t = np.arange(n_t)[:, None]

    def waveform(shift=0.0, scale=1.0, second=0.0):
        trough = -6 * np.exp(-0.5 * ((t - 15 - shift) / 1.5) ** 2)
        return (scale * trough * np.array([1.0, 0.5, 0.2])
                + second * np.exp(-0.5 * ((t - 28) / 1.5) ** 2) * np.array([0, 1.0, 0]))

    rng = np.random.default_rng(2)
    noise = 2.0 / n

    def verdict(b):
        a = waveform().reshape(-1) + rng.standard_normal(n_t * 3) * np.sqrt(1 / n)
        b = b.reshape(-1) + rng.standard_normal(n_t * 3) * np.sqrt(1 / n)
        dims = np.argsort(-np.maximum(np.abs(a), np.abs(b)))[:30]
        stat, bar = beyond_scale_and_shift(a, b, n_t, dims, noise, p)
        return stat < bar

    assert verdict(waveform())
    assert verdict(waveform(shift=0.3, scale=1.15))
    assert not verdict(waveform(second=-3.0))
    assert not verdict(waveform(shift=3.0))
    assert not verdict(waveform(scale=2.0))


def test_means_one_sample_apart_are_one_unit_with_a_whole_shift():
    # The pursuit dates a spike to a whole sample: a unit whose trough falls between two
    # samples has parts one sample apart, which only the whole shift calls one unit; a
    # second trough stays a second unit.
    p = RefineParameters()
    n_t, n = 40, 200
    t = np.arange(n_t)[:, None]

    def waveform(shift=0.0, second=0.0):
        trough = -6 * np.exp(-0.5 * ((t - 15 - shift) / 1.5) ** 2)
        return (trough * np.array([1.0, 0.5, 0.2])
                + second * np.exp(-0.5 * ((t - 28) / 1.5) ** 2) * np.array([0, 1.0, 0]))

    rng = np.random.default_rng(3)

    def verdict(b, whole_shift):
        a = waveform().reshape(-1) + rng.standard_normal(n_t * 3) * np.sqrt(1 / n)
        b = b.reshape(-1) + rng.standard_normal(n_t * 3) * np.sqrt(1 / n)
        dims = np.argsort(-np.maximum(np.abs(a), np.abs(b)))[:30]
        stat, bar = beyond_scale_and_shift(a, b, n_t, dims, 2.0 / n, p, whole_shift)
        return stat < bar

    for shift in (1.0, -1.0, 1.3):
        assert not verdict(waveform(shift=shift), 0)
        assert verdict(waveform(shift=shift), 1)
    assert verdict(waveform(), 1)
    assert not verdict(waveform(shift=1.0, second=-3.0), 1)
    assert not verdict(waveform(shift=3.0), 1)


def _group(samples, home, parent=-1, residual=False):
    """A refinement group with what `duplicates` reads (n, home, samples, parent, residual)."""
    return Group(mean=None, n_spikes=len(samples), cluster_id=None, home=home,
                 samples=np.asarray(samples), parent=parent, n_averaged=len(samples),
                 spread=1.0, rows=np.arange(0), snippet_home=home, residual=residual)


def test_a_group_of_another_templates_spikes_seen_again_is_dropped():
    # Two templates of independent units (homes 0 and 1, 20 um apart), and groups of
    # residual events: at template 0's spikes (a misfit: dropped), independent of every
    # spike (a unit: kept), at template 0's spikes but 200 um away (another unit: kept).
    rng = np.random.default_rng(4)
    duration, same = 600_000, 6
    t0 = np.sort(rng.choice(duration, 200, replace=False))
    t1 = np.sort(rng.choice(duration, 150, replace=False))
    positions = np.array([[0.0, 0.0], [0.0, 20.0], [0.0, 200.0]])
    homes = np.array([0, 1, 2])
    # Only every other spike of template 0 among the events (a sample, as the workers
    # keep), standing for two.
    samples = np.concatenate([t0[::2], t1])
    labels = np.concatenate([np.zeros(100, np.int64), np.ones(150, np.int64)])
    counts = np.array([200, 150, 0])
    p = RefineParameters(drop_duplicates=True)
    misfit = t0[:60] + rng.integers(-3, 4, 60)
    independent = np.sort(rng.choice(duration, 60, replace=False))
    groups = [_group(t0[::2], 0), _group(t1, 1), _group(misfit, 1, residual=True),
              _group(independent, 1, residual=True), _group(misfit, 2, residual=True)]
    owners = [{0}, {1}, set(), set(), set()]
    assert duplicates(groups, owners, samples, labels, counts, homes, positions, same,
                      p) == [2]
    # The matched spikes of a group's own template are not another template's.
    assert duplicates([groups[2]], [{0}], samples, labels, counts, homes, positions, same,
                      p) == []
    # Two templates of the same spikes: the smaller is dropped, and no longer counts
    # against the larger.
    samples2 = np.concatenate([t0, t0[:150]])
    labels2 = np.concatenate([np.zeros(200, np.int64), np.ones(150, np.int64)])
    copies = [_group(t0, 0), _group(t0[:150], 1)]
    assert duplicates(copies, [{0}, {1}], samples2, labels2, np.array([200, 150, 0]), homes,
                      positions, same, p) == [1]


def test_refractory_conflict_counts_pairs_but_not_one_spike_seen_twice():
    rate = 30000
    a = np.arange(100) * rate // 10  # 10 Hz
    assert not refractory_conflict(a, a + 3, 45, 6, 100 * rate)  # the same spikes
    assert not refractory_conflict(a, a + rate // 20, 45, 6, 100 * rate)  # interleaved
    assert refractory_conflict(a, a + 20, 45, 6, 100 * rate)  # 0.7 ms apart: two units
