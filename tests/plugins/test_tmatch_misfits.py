"""Misfits (phy_tmatch.residual, .refine): spikes matched at the largest amplitude allowed.

A unit without a template of its own whose spikes a smaller neighbour's template
matches leaves no residual event: the pursuit takes its spikes at the
amplitude's upper bound. The workers collect those spikes whole (the residual
plus the ``a T`` of the spike and of the spikes matched with it), and the
refinement's "find" step groups them like residual events, into a new template
that is not merged back into the template they were too large for.
"""

from __future__ import annotations

import numpy as np

from phy_core.bunch import Bunch
from phy_tmatch.refine import RefineParameters, refine
from phy_tmatch.residual import (
    MISFIT,
    add_back_misfits,
    collect_events,
    home_channels,
    local_channels,
    local_templates,
    misfit_partners,
    pooling_weights,
    subtract_spikes,
)
from phy_tmatch.templates import build_templates

N_T, BEFORE, N_CHANNELS = 40, 12, 12


def _positions():
    return np.c_[np.zeros(N_CHANNELS), 20.0 * np.arange(N_CHANNELS)]


def _waveform(centre: float, width_ch: float, amplitude: float) -> np.ndarray:
    """``(n_t, C)``: a biphasic spike with a Gaussian footprint centred on channel `centre`."""
    t = np.arange(N_T) - BEFORE
    shape = -np.exp(-0.5 * (t / 2.0) ** 2) + 0.4 * np.exp(-0.5 * ((t - 6) / 3.0) ** 2)
    footprint = np.exp(-0.5 * ((np.arange(N_CHANNELS) - centre) / width_ch) ** 2)
    return amplitude * shape[:, None] * footprint[None, :]


def _templates(means):
    means = np.stack(means)
    return build_templates(means, np.full(len(means), 1000), np.arange(len(means)),
                           np.full(N_CHANNELS, 1.0), channel_fraction=0.0, significance=0.0,
                           max_channels=N_CHANNELS, rank=N_T)


def test_a_misfits_partners_are_the_spikes_matched_with_it_nearby():
    local = local_channels(_positions(), 3)  # each channel and its two neighbours
    troughs = np.array([100, 103, 104, 120, 300, 302])
    homes = np.array([4, 5, 9, 4, 6, 6])
    sizes = np.array([5.0, 2.0, 9.0, 1.0, 1.0, 2.5])
    kept, partners = misfit_partners(troughs, sizes, np.array([0, 4]), homes, local, 6)
    # Spike 0: spike 1 (3 samples, one channel away) is its partner; spike 2 is too far
    # on the probe, spike 3 too late. Spike 4: its partner 5 is more than twice as large
    # (4 is 5's remainder).
    assert kept.tolist() == [0]
    assert sorted(partners[0].tolist()) == [0, 1]
    kept, _ = misfit_partners(troughs, sizes, np.array([0, 4]), homes, local, 1)
    assert kept.tolist() == [0, 4]  # no partner within one sample
    kept, _ = misfit_partners(troughs, sizes, np.array([0, 4]), homes, local, 6, 3.0)
    assert kept.tolist() == [0, 4]  # 5 is larger than 4, but not 3 times


def test_a_misfits_snippet_is_the_spike_as_recorded():
    rng = np.random.default_rng(0)
    local = local_channels(_positions(), 5)
    # Templates on channels 4 and 6; a spike of a larger unit centred on channel 5.3,
    # matched by both (each takes part of it), and a spike of template 1 far away in time.
    t = _templates([_waveform(4.0, 1.0, 10.0), _waveform(6.0, 1.0, 10.0)])
    homes_k = np.abs(t.dense()).max(axis=1).argmax(axis=1)
    n = 400
    recording = rng.normal(0, 0.3, (N_CHANNELS, n)).astype(np.float32)
    recording[:, 200:200 + N_T] += _waveform(5.3, 1.5, 14.0).T.astype(np.float32)
    recording[:, 300:300 + N_T] += _waveform(6.0, 1.0, 10.0).T.astype(np.float32)
    starts, kinds = np.array([200, 201, 300]), np.array([0, 1, 1])
    amplitudes = np.array([1.35, 0.5, 1.0], np.float32)
    residual = recording.copy()
    subtract_spikes(residual, starts, kinds, amplitudes, t.ptr, t.idx, t.spatial, t.temporal)
    xt = residual.copy()
    homes = homes_k[kinds]
    troughs = starts + t.trough[kinds]
    sizes = amplitudes * np.abs(t.dense()).max(axis=(1, 2))[kinds]
    misfits, partners = misfit_partners(troughs, sizes, np.array([0]), homes, local, 6)
    assert misfits.tolist() == [0] and sorted(partners[0].tolist()) == [0, 1]
    snippets = np.zeros((1, N_T, local.shape[1]), np.float32)
    add_back_misfits(xt, snippets, t, starts, kinds, amplitudes, misfits, partners, homes,
                     local)
    # The recording itself on the misfit's template's window and home's local channels.
    expected = recording[local[homes[0]]][:, 200:200 + N_T].T
    np.testing.assert_allclose(snippets[0], expected, atol=1e-4)
    # The residual is left as it was (to rounding: the spikes were added, then removed).
    np.testing.assert_allclose(xt, residual, atol=1e-5)
    # Without its partner, the snippet would miss the part template 1 took.
    alone = np.zeros_like(snippets)
    add_back_misfits(xt, alone, t, starts, kinds, amplitudes, misfits, [np.array([0])], homes,
                     local)
    assert np.abs(alone[0] - expected).max() > 1.0


def _events(rng, local, home, waveform, n, label):
    """Snippets of `n` spikes of `waveform` on `home`'s local channels, with white noise."""
    snippets = waveform[None][:, :, local[home]] + rng.normal(0, 1.0, (n, N_T, local.shape[1]))
    return Bunch(samples=np.sort(rng.choice(10 ** 6, n, replace=False)),
                 labels=np.full(n, label), homes=np.full(n, home), snippets=snippets)


def test_misfits_of_a_larger_unit_make_a_template_not_merged_into_theirs():
    rng = np.random.default_rng(1)
    local = local_channels(_positions(), 6)
    small = _waveform(5.0, 1.2, 6.0)
    t = _templates([small, _waveform(10.0, 1.0, 8.0)])
    # 8 spikes of a unit of the same shape, twice as large, that template 0 matched at its
    # largest amplitude (too few, among template 0's 150, for a split), and the templates'
    # own spikes.
    large = 2.0 * small
    parts = [_events(rng, local, 5, small, 150, 0), _events(rng, local, 10, t.dense()[1], 80, 1),
             _events(rng, local, 5, large, 8, MISFIT - 0)]
    events = Bunch({key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
    args = (t, events, np.array([158, 80]), np.ones(N_CHANNELS), local, _positions(),
            10 ** 6, 30000.0, 10)
    found = refine(*args, p=RefineParameters())
    assert found.n_new == 1 and found.n_merged == 0 and len(found.cluster_ids) == 3
    new = found.means[found.cluster_ids == 10][0]
    ratio = np.linalg.norm(new) / np.linalg.norm(small)
    assert 1.7 < ratio < 2.3
    # The option off: misfits are ignored.
    off = refine(*args, p=RefineParameters(misfits=False))
    assert off.n_new == 0 and len(off.cluster_ids) == 2


def test_misfits_are_not_merged_into_the_template_they_were_taken_from():
    rng = np.random.default_rng(2)
    local = local_channels(_positions(), 6)
    small = _waveform(5.0, 1.2, 6.0)
    t = _templates([small, _waveform(10.0, 1.0, 8.0)])
    # Misfits alike to their template within the merge's amplitude ratio: as a group of
    # residual events they would be merged into it; as its misfits, they are not.
    parts = [_events(rng, local, 5, small, 150, 0), _events(rng, local, 10, t.dense()[1], 80, 1),
             _events(rng, local, 5, 1.25 * small, 12, MISFIT - 0)]
    events = Bunch({key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
    args = (t, events, np.array([162, 80]), np.ones(N_CHANNELS), local, _positions(),
            10 ** 6, 30000.0, 10)
    kept = refine(*args, p=RefineParameters())
    assert kept.n_new == 1 and kept.n_merged == 0
    events.labels = np.where(events.labels < 0, -1, events.labels)
    merged = refine(*args, p=RefineParameters())
    assert merged.n_new == 1 and merged.n_merged == 1 and len(merged.cluster_ids) == 2


def test_the_spikes_matched_at_the_largest_amplitude_are_collected_as_misfits():
    rng = np.random.default_rng(3)
    positions = _positions()
    local = local_channels(positions, 5)
    t = _templates([_waveform(3.0, 1.0, 10.0), _waveform(8.0, 1.0, 10.0),
                    _waveform(7.0, 1.0, 40.0)])
    homes = home_channels(t)
    n = 1000
    xt = rng.normal(0, 0.3, (N_CHANNELS, n)).astype(np.float32)
    # Template 0 at 1.0 (its unit), at 1.35 (the upper bound: a larger unit); template 1
    # at 1.35 with a partner three times its size 2 samples before (that one's remainder).
    starts = np.array([100, 400, 700, 702])
    kinds = np.array([0, 0, 2, 1])
    amplitudes = np.array([1.0, 1.35, 1.0, 1.35], np.float32)
    sigma = np.full(N_CHANNELS, 0.3, np.float32)
    collect = Bunch(local=local, pool_channels=local, before=BEFORE,
                    pool_weights=pooling_weights(positions, local, 5, 25.0, sigma),
                    sigma_channels=sigma, residual_threshold=5.0, max_per_template=100,
                    max_residual_per_channel=100, max_residual=1000, template_home=homes)
    chunk = Bunch(load_start=5000, keep_start=5000, keep_stop=5000 + n)

    def misfits(**options):
        events = collect_events(Bunch(collect, **options), t, chunk, xt.copy(), starts, kinds,
                                amplitudes, local_templates(t, local, homes))
        return events.labels[events.labels <= MISFIT], events.samples[events.labels <= MISFIT]

    labels, samples = misfits()
    assert labels.tolist() == [MISFIT - 0]
    assert samples.tolist() == [5000 + 400 + t.trough[0]]
    assert len(misfits(misfits=False)[0]) == 0
    assert len(misfits(amplitude_max=1.5)[0]) == 0
