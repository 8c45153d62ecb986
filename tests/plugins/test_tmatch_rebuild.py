"""The refinement rebuilds a template made from few events from its many matched spikes.

`phy_tmatch.refine` (``rebuild``): a template whose waveform is the mean of a few
dozen events keeps the few channels that stood out of that mean's noise; once it
has matched many more spikes, the mean of their snippets gives it its unit's
whole footprint. Checked against the unit's true waveform (`tmatch_spikes.spike`).
"""

from __future__ import annotations

import numpy as np
from tmatch_spikes import HOME, N_CHANNELS
from tmatch_spikes import spike as _spike
from tmatch_spikes import spikes as _spikes

from phy_core.bunch import Bunch
from phy_tmatch.refine import RefineParameters, refine
from phy_tmatch.residual import local_channels
from phy_tmatch.templates import build_templates

N_FEW, N_MATCHED, N_FOREIGN = 20, 300, 5


def _refine_narrow_template(rng, averaged: int, p: RefineParameters | None = None):
    """Refine a template of the unit's waveform on its 5 central channels only (as made
    from `averaged` events), given the snippets of `N_MATCHED` of the unit's spikes and of
    `N_FOREIGN` spikes of a unit three times larger it matched."""
    positions = np.c_[np.zeros(N_CHANNELS), 20.0 * np.arange(N_CHANNELS)]
    narrow = _spike()
    narrow[:, np.abs(np.arange(N_CHANNELS) - HOME) > 2] = 0.0
    templates = build_templates(narrow[None], np.array([averaged]), np.array([7]),
                                np.ones(N_CHANNELS))
    local = local_channels(positions, N_CHANNELS)
    snippets = np.concatenate([_spikes(rng, N_MATCHED, 1.0), _spikes(rng, N_FOREIGN, 3.0)])
    n = len(snippets)
    events = Bunch(samples=rng.permutation(n) * 3000, labels=np.zeros(n, np.int64),
                   homes=np.full(n, HOME),
                   snippets=snippets[:, :, local[HOME]].astype(np.float32))
    out = refine(templates, events, np.array([10 * n]), np.ones(N_CHANNELS), local, positions,
                 n * 3000, 30000.0, next_id=8, p=p or RefineParameters())
    return out, templates, snippets


def test_a_template_from_few_events_gets_its_units_footprint_from_its_matched_spikes():
    rng = np.random.default_rng(3)
    out, templates, snippets = _refine_narrow_template(rng, N_FEW,
                                                       RefineParameters(rebuild=True))
    assert out.n_rebuilt == 1 and out.changed and out.n_split == 0
    assert out.cluster_ids.tolist() == [7]  # the same template, made again
    truth, mean = _spike(), out.means[0]
    # The channels the template lacked (within noise of a mean of 300, 1/sqrt(300)).
    outer = np.abs(np.arange(N_CHANNELS) - HOME) > 2
    assert np.abs(mean[:, outer] - truth[:, outer]).max() < 0.35
    # The larger unit's spikes are left out: with them the mean is 3 % too large.
    def ratio(m):
        return float((m * truth).sum() / (truth * truth).sum())

    assert ratio(snippets.mean(axis=0)) > 1.025
    assert 0.98 < ratio(mean) < 1.02
    # The templates made from it keep the footprint's channels the narrow one lacked, as
    # a template of the unit's true waveform averaged from that many spikes does.
    rebuilt = build_templates(out.means, out.n_spikes, out.cluster_ids, np.ones(N_CHANNELS))
    reference = build_templates(truth[None], np.array([N_MATCHED]), np.array([7]),
                                np.ones(N_CHANNELS))
    assert len(templates.channels(0)) == 5
    assert set(reference.channels(0)) <= set(rebuilt.channels(0))
    assert len(rebuilt.channels(0)) > 5


def test_a_template_is_left_as_it_is_without_many_more_spikes_or_when_off():
    rng = np.random.default_rng(5)
    # 300 snippets are fewer than `rebuild_ratio` (3) times the 150 spikes it averaged.
    out, templates, _ = _refine_narrow_template(rng, 150, RefineParameters(rebuild=True))
    assert out.n_rebuilt == 0
    np.testing.assert_allclose(out.means[0], templates.dense()[0], atol=1e-5)
    # Off by default.
    out, templates, _ = _refine_narrow_template(rng, N_FEW)
    assert out.n_rebuilt == 0
    np.testing.assert_allclose(out.means[0], templates.dense()[0], atol=1e-5)
