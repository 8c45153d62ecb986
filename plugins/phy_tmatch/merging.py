"""The refinement's merges: which groups explain the same unit, and their merging.

`alike_pairs` tests every pair of groups (`phy_tmatch.groups.Group`) within the
merge radius: alike waveforms (cosine and amplitude ratio after alignment)
unless their spikes tell them apart beyond a scale and a shift, or alike
snippets (`phy_tmatch.comparison.compare_snippets`; for groups of residual
events, alike in shape and amplitude), or means within their noise
(`phy_tmatch.comparison.indistinct`); never the parts of one split, misfits and
the template they were too large for, nor a group of residual events at other
templates' spikes and a group of matched spikes (`coincident_matches`), nor
(``amplitude_split``) two groups whose amplitudes form two modes. `merge_groups`
merges the pairs, most alike first, when their spike trains are refractory with
each other (see the module docstring of `phy_tmatch.refine`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .amplitude import amplitude_modes, amplitudes, modes_independent
from .comparison import (
    MatchedSpikes,
    compare_snippets,
    indistinct,
    refractory_conflict,
    shift,
    similarity,
)
from .groups import EventSnippets, Group

if TYPE_CHECKING:
    from .refine import RefineParameters

logger = logging.getLogger("phy")


def _two_amplitude_modes(g: Group, h: Group, events: EventSnippets, samples: np.ndarray,
                         jitter: float, p: RefineParameters) -> bool:
    """Whether two groups' spikes form two amplitude modes of independent units.

    Both groups' snippets (on one home's channels) on the larger group's
    waveform (`phy_tmatch.amplitude.amplitude_modes`, `modes_independent`).
    """
    if g.residual or h.residual or g.snippet_home != h.snippet_home or not (
            len(g.rows) and len(h.rows)):
        return False
    home = g.snippet_home
    big = g if np.abs(g.mean).max() >= np.abs(h.mean).max() else h
    rows = np.concatenate([g.rows, h.rows])
    amps, noise_var = amplitudes(events.whitened(rows, home), *events.on_waveform(big.mean, home))
    modes = amplitude_modes(amps, noise_var, p, jitter)
    return modes is not None and modes_independent(modes, samples[rows], p)


def coincident_matches(groups: list[Group], samples: np.ndarray, labels: np.ndarray,
                       counts: np.ndarray, template_homes: np.ndarray, positions: np.ndarray,
                       same: int, p: RefineParameters) -> list[dict[int, float] | None]:
    """Per group of residual events, the spikes of each template its events fall on.

    ``{template: spikes}``: the matched spikes within `same` samples of its events
    of each template whose peak channel lies within ``p.merge_radius_um`` of its
    home, each sampled spike counting for the spikes it stands for (``counts /
    sampled``, as in `phy_tmatch.comparison.duplicates`); None for the other groups.
    """
    matched = MatchedSpikes(samples, labels, counts)
    weight = matched.weight
    out: list[dict[int, float] | None] = []
    for g in groups:
        spikes = np.asarray(g.samples)
        if not g.residual or not len(spikes):
            out.append(None)
            continue
        kinds = matched.near(spikes, same)
        near = np.linalg.norm(positions[template_homes] - positions[g.home], axis=1) \
            <= p.merge_radius_um
        kinds = kinds[near[kinds]]
        by = np.bincount(kinds, weights=weight[kinds], minlength=len(counts))
        out.append({int(k): float(by[k]) for k in np.flatnonzero(by)})
    return out


def _others_remainder(g: Group, coincident: dict[int, float] | None, owners: set[int],
                      p: RefineParameters) -> bool:
    """Whether a group of residual events is mostly at the spikes of templates not in `owners`.

    What a template leaves of its unit's spikes (their far field, a misfit) is
    collected as residual events at those spikes: fragments of that unit, not of
    a template they resemble nearby. Merged into one (its mean, by the snippets:
    half that template's spikes, half the other unit's remainders), it made a
    template of neither unit, which matched the other unit's spikes again and the
    consolidation dropped (1024 channels, 200 s: unit 51, SNR 4.3, lost with its
    template). Such a group is dropped after the merges (`duplicates`).
    """
    if coincident is None:
        return False
    foreign = sum(w for k, w in coincident.items() if k not in owners)
    return foreign > p.duplicate_fraction * len(g.samples)


def alike_pairs(groups: list[Group], owners: list[set[int]], parents: list[set[int]],
                events: EventSnippets, sigma: np.ndarray, positions: np.ndarray, max_lag: int,
                samples: np.ndarray, jitter: float | None,
                p: RefineParameters, valid: list[tuple[int, int]] | None = None,
                delays: list[int] | None = None, coincident: list | None = None
                ) -> tuple[list, set[int], list]:
    """The pairs of groups that may be one unit, the templates found to be copies, and the
    pairs kept apart.

    Parameters
    ----------
    owners, parents : per group, the templates whose matched spikes it holds
        (`phy_tmatch.comparison.duplicates`), and for a group of misfits the
        templates it was taken from.
    sigma : (C,) the channels' noise; positions : (C, 2) their positions (um).
    max_lag : the largest lag of the waveform comparison, in samples.
    samples : (n,) the pass's events' samples.
    jitter : one unit's amplitude jitter (``amplitude_split``), or None.
    valid : per group, the samples ``[lo, hi)`` where its snippets hold data (a
        re-centred group's hold shifted-in zeros; `compare_snippets`), or None.
    delays : per group, how far it was re-centred (`phy_tmatch.alignment`), or None:
        the lag at which two groups were alike as the pass dated them is their
        lag plus the difference of their delays.
    coincident : per group, `coincident_matches` (or None: not tested). A group of
        residual events mostly at the spikes of templates other than another
        group's owners is not merged with it (`_others_remainder`), unless that
        group is also of residual events (the two, merged, face the duplicate test).

    Returns
    -------
    (pairs, copies, apart)
        ``(cosine, i, j, lag, by_snippets)`` per pair of alike groups ``i < j``
        (`lag` aligns `j` on `i`; `by_snippets`: alike by their events, not by
        their waveforms); the cluster ids of the templates of one shape told
        apart by their amplitudes (`Group.counted`); ``(i, j)`` per pair alike
        in waveform (``merge_similarity``, ``merge_amplitude_ratio``) that their
        spikes told apart (beyond a scale and a shift, or by their amplitudes).
    """
    whitener, local, snippets = events.whitener, events.local, events.snippets
    valid = valid or [None] * len(groups)
    delays = delays or [0] * len(groups)
    copies: set[int] = set()
    pairs = []
    apart = []
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            hi, hj = groups[i].home, groups[j].home
            if groups[i].parent >= 0 and groups[i].parent == groups[j].parent:
                continue  # the parts of a split were just found distinct
            if (parents[i] & owners[j] and not parents[j]) or (parents[j] & owners[i]
                                                                and not parents[i]):
                continue  # misfits and the template they were too large for
            if np.linalg.norm(positions[hi] - positions[hj]) > p.merge_radius_um:
                continue
            a, b = groups[i].mean / sigma, groups[j].mean / sigma
            cos, ratio, lag = similarity(a, b, max_lag)
            alike = cos >= p.merge_similarity and \
                1 / p.merge_amplitude_ratio <= ratio <= p.merge_amplitude_ratio
            by_waveform = alike
            by_snippets = False
            if alike and p.distinct_beyond_scale and not (groups[i].residual
                                                          or groups[j].residual) \
                    and abs(lag) <= 1 and abs(lag + delays[j] - delays[i]) <= 1:
                # Alike waveforms, but their spikes may tell two units apart (a split
                # of a previous round, parts that `split._bisect` found beyond a scale and a
                # shift). Residual events are left to the rules below (their means
                # are biased by their selection), and so are groups alike only at a
                # lag of several samples: co-located units are dated on their own
                # troughs, a copy of one unit dated elsewhere is not (two fragments of
                # strong units, 8-9 samples off, 384 channels seed 1), even re-centred
                # (its spikes are those detected off their trough: 384 channels seed 2,
                # unit 58's copy 12 samples off differed by 2+ sigmas per spike).
                one, cos_s, _, separation = compare_snippets(
                    snippets[groups[i].rows], groups[i].snippet_home, snippets[groups[j].rows],
                    groups[j].snippet_home, lag, whitener, local, p, separation=True,
                    whole_shift=1, valid_a=valid[i], valid_b=valid[j])
                # cos_s 0: too few spikes or channels to test.
                alike = one or cos_s == 0.0 or separation < p.min_separation
            if not alike and cos >= p.merge_min_similarity:
                alike, cos_s, ratio_s = compare_snippets(
                    snippets[groups[i].rows], groups[i].snippet_home, snippets[groups[j].rows],
                    groups[j].snippet_home, lag, whitener, local, p, valid_a=valid[i],
                    valid_b=valid[j])
                # A group of residual events is selected by its troughs (its mean is
                # biased: deeper where they were detected), so next to a template of
                # the same unit it looks distinct by the test: alike in shape suffices.
                residual_pair = groups[i].residual or groups[j].residual
                alike = alike or (residual_pair and cos_s >= p.fragment_similarity
                                  and 1 / p.merge_amplitude_ratio <= ratio_s
                                  <= p.merge_amplitude_ratio)
                by_snippets = alike
            if not alike and cos >= 0.5:
                home = groups[i].home if groups[i].n_spikes >= groups[j].n_spikes \
                    else groups[j].home
                alike = indistinct(groups[i].mean, shift(groups[j].mean, lag),
                                   min(groups[i].n_spikes, groups[i].n_averaged),
                                   min(groups[j].n_spikes, groups[j].n_averaged), home,
                                   whitener, local, p, groups[i].spread, groups[j].spread)
            if alike and coincident is not None:
                for a, b in ((i, j), (j, i)):
                    if alike and not groups[b].residual and _others_remainder(
                            groups[a], coincident[a], owners[b], p):
                        logger.debug("Refinement: %s is at other templates' spikes (%.0f): "
                                     "not merged with %s.", groups[a].label(), sum(
                                         w for k, w in coincident[a].items()
                                         if k not in owners[b]), groups[b].label())
                        alike = False
            if alike and p.amplitude_split and jitter is not None and _two_amplitude_modes(
                    groups[i], groups[j], events, samples, jitter, p):
                # Units of one shape told apart by their amplitudes (a split of a previous
                # round): merged, they would be split again.
                logger.debug("Refinement: %s and %s are alike but their amplitudes form "
                             "two modes.", groups[i].label(), groups[j].label())
                alike = False
                copies.update(g.cluster_id for g in (groups[i], groups[j])
                              if g.cluster_id is not None)
            logger.debug("Refinement: %s home %d and %s home %d: similarity %.3f, amplitude "
                         "ratio %.2f, lag %d: %s.", groups[i].label(), hi, groups[j].label(), hj,
                         cos, ratio, lag, "alike" if alike else "distinct")
            if alike:
                pairs.append((cos, i, j, lag, by_snippets))
            elif by_waveform:
                apart.append((i, j))
    return pairs, copies, apart


def merged_origin(big: str, small: str, max_members: int = 3) -> str:
    """The origin (`Group.origin`) of a merge of two groups, for the debug log.

    Its members joined by ``+`` (the larger group's first); beyond `max_members`,
    the first and their count: ``c71+...(5)``.
    """
    members = []
    count = 0
    for origin in (big, small):
        head, _, more = origin.partition("+...(")
        members += head.split("+")
        count += int(more[:-1]) if more else len(head.split("+"))
    if count <= max_members:
        return "+".join(members)
    return f"{members[0]}+...({count})"


def merge_groups(groups: list[Group], pairs: list, owners: list[set[int]],
                 events: EventSnippets, refractory: int, same: int,
                 n_samples: int) -> tuple[list[bool], int]:
    """Merge the alike `pairs` (of `alike_pairs`), most alike first; (alive, merges).

    A pair is merged when both are still alive and their spike trains are
    refractory with each other (`refractory` samples; closer than `same` plus
    their lag, one spike dated twice). The larger group (by spikes) takes the
    smaller one, aligned on it (its spike times stay), and its `owners`; it
    becomes a new group (no cluster id). Modifies `groups` and `owners`.
    """
    alive = [True] * len(groups)
    n_merged = 0
    for cos, i, j, lag, by_snippets in sorted(pairs, reverse=True):
        if not (alive[i] and alive[j]):
            continue
        # The two may date one spike differently (by their lag).
        if refractory_conflict(groups[i].samples, groups[j].samples,
                               max(refractory, same + abs(lag) + 1), same + abs(lag), n_samples):
            logger.debug("Refinement: %s and %s are alike (%.3f) but not refractory: not "
                         "merged.", groups[i].label(), groups[j].label(), cos)
            continue
        big, small = (i, j) if groups[i].n_spikes >= groups[j].n_spikes else (j, i)
        g, h = groups[big], groups[small]
        logger.debug("Refinement: merge %s into %s (similarity %.3f, lag %d, by %s).", h.label(),
                     g.label(), cos, lag, "snippets" if by_snippets else "waveforms")
        # The smaller one aligned on the bigger one (whose spike times stay).
        if by_snippets:
            # Alike by their events, not by their waveforms: a template's waveform
            # (a seed cluster's mean, perhaps of the noise cluster) may be what differs,
            # so the merged one is the mean of both groups' events.
            n_g, n_h = len(g.rows), len(h.rows)
            g.mean = (events.embed(g.rows, g.snippet_home) * n_g
                      + shift(events.embed(h.rows, h.snippet_home), lag if big == i else -lag)
                      * n_h) / (n_g + n_h)
        else:
            g.mean = (g.mean * g.n_averaged + shift(h.mean, lag if big == i else -lag)
                      * h.n_averaged) / (g.n_averaged + h.n_averaged)
        if g.snippet_home == h.snippet_home:
            g.rows = np.concatenate([g.rows, h.rows])
        g.n_spikes += h.n_spikes
        g.spread = max(g.spread, h.spread)
        g.n_averaged += h.n_averaged
        g.cluster_id = None
        g.snippet_mean = g.snippet_mean or by_snippets
        g.samples = np.concatenate([g.samples, h.samples])
        g.origin = merged_origin(g.origin, h.origin)
        alive[small] = False
        owners[big] |= owners[small]
        n_merged += 1
    return alive, n_merged
