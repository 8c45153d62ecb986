"""After the last matching pass: spikes matched twice, and units matched by two templates.

The refinement (`phy_tmatch.refine`) works on a sample of each pass's spikes and
its last changes are never checked by a later round; this step looks at the
final spike trains, whole, and changes only the labels of the spikes:

- **Spikes matched again.** A unit's spike stands out of the noise further
  than its template reaches (a template keeps at most ``max_channels``
  channels, those above a fraction of its peak: a unit of 100 times the noise
  still has 10 times the noise 100 um away). The pursuit removes the template
  and what is left on the farther channels is matched again by smaller
  templates there, at the bottom of their amplitude range; a weak unit's
  template next to a strong unit also takes what the strong one's template
  left of its spikes. On the 1024-channel, 200 s recording a unit of SNR 20
  had its 3,000 spikes matched again by eight other templates (most of the
  false clusters), and a unit of SNR 5 had 1,500 spikes of its neighbour of
  SNR 16 in its cluster. Independent units rarely fire within ``same_ms`` of
  each other, so a pair of templates (one larger in peak over the noise,
  within ``duplicate_radius_um``) with many more such coincidences than chance
  (``duplicate_excess`` times the expected count, plus
  ``duplicate_min_count``) is one unit's spikes seen twice: the smaller
  template's spikes at the larger one's are removed. A template that loses
  more than ``drop_fraction`` of its spikes that way, and whose remaining
  spikes sit at the bottom of the pursuit's amplitude range (median less than
  ``drop_amplitude_margin`` above its minimum: fragments of other spikes, not
  a unit, whose amplitudes are clipped there), is dropped whole; so is one
  left with fewer than ``min_spikes``.
- **One unit, two templates.** A unit whose trough falls between two samples
  can be split by the refinement's last round into two templates one sample
  apart, which no later round merges. Two templates whose peak channels lie
  within ``merge_radius_um``, alike after alignment (cosine similarity of the
  noise-divided waveforms at the best lag within ``merge_max_lag_ms`` at least
  ``merge_similarity``), of one amplitude (their norms times their spikes'
  median amplitudes within ``merge_amplitude_ratio``) and whose trains are
  refractory with each other (`comparison.refractory_conflict`) are one unit: the
  smaller one's spikes go to the larger template, their times and amplitudes
  converted to it. Not two that the last refinement compared and kept apart
  (`apart`: alike in waveform, two units by their spikes; a pair of co-located
  units with few spikes has no refractory conflict to show). Less alike
  (cosine from ``merge_refractory_similarity``) suffices when their trains
  show they are one unit beyond doubt: chance gives at least
  ``merge_refractory_expected`` pairs within the refractory period and they
  have at most ``merge_refractory_fraction`` of them. A weak unit's two
  templates differ most on its far channels, which one template keeps and the
  other does not or has wrong (the 384-channel, 200 s recording: a unit of
  SNR 4 at the probe's edge over two templates of 1,552 and 682 spikes, one on
  4 channels, the other on 9; cosine 0.89, amplitude ratio 0.89, 1 pair in the
  refractory period where chance gives 14). The refinement had kept them apart
  by their snippets (cosine 0.98 but beyond its bar), not by their spike trains.
- **Remainders.** What the pursuit leaves of a strong unit's spike where its
  template differs from it is matched by a smaller template nearby, dated up to
  a template's half-length away rather than within ``same_ms`` (the 384-channel,
  200 s recordings: 420 and 236 spikes of one unit of SNR 18.5, every one
  within 1 ms of that unit's template's spikes, 21-29 % within 0.2 ms). So is
  what its waveform leaves after its template's window ends (the band-passed
  spike of a unit of SNR 16-19 is still 13 % of its peak 1.4 ms after its
  trough: on seed 2 at 200 s, five templates of 133-773 spikes, each one 41-45
  samples after a spike of one of two such units). A template more than
  ``drop_fraction`` of whose spikes lie within ``remainder_ms`` of the spikes
  of one larger template within ``duplicate_radius_um``, and more than
  ``duplicate_excess`` times the coincidences chance gives plus
  ``duplicate_min_count``, is dropped whole; with ``drop_tails``, so is one
  that passes the same test within a template's length (the two windows
  overlap; a 2.2 ms window: an independent unit has that many only if the
  larger one fires at over ``drop_fraction`` / 4.4 ms, 110 Hz).
- **Another unit's spikes at the bottom of the range.** The pursuit clips a
  spike's amplitude at ``amplitude_min``; a template's own unit reaches it only
  in the tail of its amplitudes (10 % jitter: 1-6 % of a unit's spikes on the
  synthetic recordings). A template with many more spikes there than the
  Gaussian of its own amplitudes predicts (its median and the spread of its
  upper half, which the clipped spikes leave alone) has taken a smaller unit's
  spikes there: on the 384-channel, 200 s recording, 85 of the 90 spikes a
  unit's template matched at the bound (14.5 expected) were a weaker
  co-located unit's, whose own template lacked two of its channels, and they
  cost the stronger unit its accuracy (0.74). More than ``foreign_excess``
  times the expected count plus ``foreign_min_count``: those spikes go (the
  few of the template's own unit among them with them).
- **Rare fragments.** A template left with fewer spikes than ``min_rate_hz``
  times the recording's duration, most of them at the bottom of the amplitude
  range (median less than ``drop_amplitude_margin`` above it), is dropped: the
  remainders of other units' spikes, which the refinement made a template of
  from a handful of events (at 200 s, 6-18 spikes each: most false clusters);
  a unit so rare that the pursuit fits it only at its smallest amplitude is
  not one a sorting can show. At 20 s the bound is ``min_spikes``. So is one
  whose median is as near the top of the range (``amplitude_max``): events
  larger than the template, clipped (a unit's own spikes reach 1.35 at 3.5
  times its 10 % jitter); on seed 2 at 200 s, 6-8 spikes of units of SNR 16-19
  at 1.27-1.35 on smaller templates nearby.
- **Rare composites.** Two units firing together make one event that neither
  template can match alone when the sum is beyond the pursuit's amplitude
  ceiling; the refinement makes a template of a handful of such events, and
  of a strong unit's spikes over another's. Such a template, with fewer spikes
  than ``min_rate_hz`` times the duration, has no waveform of its own: one or
  two of the common templates within ``duplicate_radius_um`` (positive
  scales, lags up to half a window, fitted by least squares) make up
  ``composite_explained`` of its energy (squared norm over the noise). It is
  dropped (its spikes with it: they were lost to the units already). On the
  384-channel recordings at 200 s, 0.88-0.94 for templates of 7-16 spikes of
  two co-located units firing together or of one unit's spikes taken by a
  smaller copy. The shape alone does not tell them from units (two units'
  templates make up to 0.95 of a third's): the rate does, as for the rare
  fragments; the shape keeps a rare template of a waveform of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from phy_core.bunch import Bunch

from .comparison import coincidences, refractory_conflict, shift, similarity

logger = logging.getLogger("phy")


@dataclass(frozen=True)
class ConsolidateParameters:
    """Parameters of `consolidate` (the ``consolidate`` option of `phy_tmatch.runner`).

    See the module docstring. The defaults were chosen on the synthetic
    recordings (a 2 ms dead time, Poisson trains; the pursuit's amplitudes in
    0.75-1.35: a 1024-channel unit's far-field matches had a median amplitude of
    0.75, units left with their own spikes 0.88-0.98).
    """

    remove_duplicates: bool = True
    same_ms: float = 0.2
    duplicate_radius_um: float = 200.0
    duplicate_excess: float = 5.0
    duplicate_min_count: int = 5
    drop_fraction: float = 0.5
    drop_amplitude_margin: float = 0.1
    min_spikes: int = 6
    merge: bool = True
    merge_similarity: float = 0.95
    merge_amplitude_ratio: float = 1.3
    merge_max_lag_ms: float = 0.4
    merge_radius_um: float = 60.0
    merge_refractory_similarity: float = 0.85
    merge_refractory_expected: float = 8.0
    merge_refractory_fraction: float = 0.2
    refractory_ms: float = 1.5
    drop_remainders: bool = True
    remainder_ms: float = 1.0
    drop_tails: bool = True
    remove_foreign: bool = True
    foreign_excess: float = 3.0
    foreign_min_count: int = 5
    foreign_min_spikes: int = 10
    min_rate_hz: float = 0.1
    drop_composites: bool = True
    composite_explained: float = 0.85


def _name(names, k) -> str:
    """Template `k` in the debug log: its cluster id (``c71``) if `names` are given."""
    return names[k] if names is not None else f"template {k}"


def coincident_pairs(samples: np.ndarray, kinds: np.ndarray, window: int) -> tuple:
    """Every pair of spikes of different templates within `window` samples.

    `samples` sorted. Returns ``(i, j)`` index arrays, each unordered pair twice
    (as ``(i, j)`` and ``(j, i)``).
    """
    lo = np.searchsorted(samples, samples - window, side="left")
    hi = np.searchsorted(samples, samples + window, side="right")
    width = hi - lo
    i = np.repeat(np.arange(len(samples)), width)
    j = np.repeat(lo - np.cumsum(width) + width, width) + np.arange(width.sum())
    other = kinds[i] != kinds[j]
    return i[other], j[other]


def duplicate_spikes(samples: np.ndarray, kinds: np.ndarray, peaks: np.ndarray,
                     homes: np.ndarray, positions: np.ndarray, n_samples: int, window: int,
                     p: ConsolidateParameters) -> tuple[np.ndarray, list]:
    """The spikes a larger template also matched (see the module docstring).

    Parameters
    ----------
    samples : (n,) sorted spike samples; kinds : (n,) their templates.
    peaks : (K,) each template's peak over the noise; homes : (K,) its peak channel.
    positions : (C, 2) the channels' positions (um).
    window : int
        Spikes within this many samples are one spike seen twice.

    Returns
    -------
    (remove, pairs)
        A boolean mask of the spikes to remove, and the pairs of templates found
        to share spikes, ``(larger, smaller, coincidences, expected)``.
    """
    n_templates = len(peaks)
    counts = np.bincount(kinds, minlength=n_templates)
    i, j = coincident_pairs(samples, kinds, window)
    # j's template is the larger (ties: the lower index), i the spike that may go.
    larger = (peaks[kinds[j]] > peaks[kinds[i]]) | (
        (peaks[kinds[j]] == peaks[kinds[i]]) & (kinds[j] < kinds[i]))
    i, j = i[larger], j[larger]
    big, small = kinds[j], kinds[i]
    key = big.astype(np.int64) * n_templates + small
    # Coincidences per pair: the smaller template's spikes with one of the larger's near.
    first = np.unique(np.stack([key, i]), axis=1)
    pair_keys, observed = np.unique(first[0], return_counts=True)
    a, b = pair_keys // n_templates, pair_keys % n_templates
    expected = counts[a].astype(np.float64) * counts[b] * (2 * window + 1) / max(n_samples, 1)
    distance = np.linalg.norm(positions[homes[a]] - positions[homes[b]], axis=1)
    significant = (observed > p.duplicate_excess * expected + p.duplicate_min_count) & (
        distance <= p.duplicate_radius_um)
    remove = np.zeros(len(samples), dtype=bool)
    remove[i[np.isin(key, pair_keys[significant])]] = True
    pairs = [(int(x), int(y), int(o), float(e)) for x, y, o, e in
             zip(a[significant], b[significant], observed[significant], expected[significant])]
    return remove, pairs


def _refractory_evidence(s1: np.ndarray, s2: np.ndarray, window: int, same: int,
                         duration: int, p: ConsolidateParameters) -> bool:
    """Whether two trains are refractory with each other beyond doubt: one unit's.

    Chance gives at least ``merge_refractory_expected`` pairs within `window`
    (beyond `same`: one spike dated twice) and the trains have at most
    ``merge_refractory_fraction`` of them (two independent units: Poisson, at
    most 1 of 8 expected with probability 0.3 %).
    """
    expected = len(s1) * len(s2) * 2 * (window - same) / max(duration, 1)
    if expected < p.merge_refractory_expected:
        return False
    return coincidences(s1, s2, window, same) <= p.merge_refractory_fraction * expected


def _merge_pairs(dense: np.ndarray, sigma: np.ndarray, kinds: np.ndarray, samples: np.ndarray,
                 amplitudes: np.ndarray, homes: np.ndarray, positions: np.ndarray,
                 n_samples: int, sample_rate: float, p: ConsolidateParameters,
                 apart: frozenset = frozenset(), names=None) -> list:
    """Pairs of templates of one unit, ``(cosine, larger, smaller, lag)``, most alike first.

    Not the pairs of `apart` (sets of two template indices). `names`: the
    templates' names in the debug log.
    """
    n_templates = len(dense)
    counts = np.bincount(kinds, minlength=n_templates)
    alive = np.flatnonzero(counts >= p.min_spikes)
    scaled = dense / sigma
    norms = np.linalg.norm(scaled.reshape(n_templates, -1), axis=1)
    median_amplitude = _medians(amplitudes, kinds, n_templates)
    size = norms * median_amplitude
    max_lag = int(round(p.merge_max_lag_ms * 1e-3 * sample_rate))
    refractory = int(round(p.refractory_ms * 1e-3 * sample_rate))
    same = int(round(p.same_ms * 1e-3 * sample_rate))
    out = []
    for x, k in enumerate(alive):
        for m in alive[x + 1:]:
            if np.linalg.norm(positions[homes[k]] - positions[homes[m]]) > p.merge_radius_um:
                continue
            ratio = size[k] / max(size[m], 1e-12)
            if not 1 / p.merge_amplitude_ratio <= ratio <= p.merge_amplitude_ratio:
                continue
            cos, _, lag = similarity(scaled[k], scaled[m], max_lag)
            if cos < p.merge_similarity and not (
                    cos >= p.merge_refractory_similarity and _refractory_evidence(
                        samples[kinds == k], samples[kinds == m],
                        max(refractory, same + abs(lag) + 1), same + abs(lag), n_samples, p)):
                continue
            if frozenset((int(k), int(m))) in apart:
                logger.debug("Consolidation: %s and %s are alike (%.3f) but the refinement "
                             "told their spikes apart.", _name(names, k), _name(names, m), cos)
                continue
            # The two date one spike differently (by their lag): closer pairs are one spike.
            if refractory_conflict(samples[kinds == k], samples[kinds == m],
                                   max(refractory, same + abs(lag) + 1), same + abs(lag),
                                   n_samples):
                logger.debug("Consolidation: %s and %s are alike (%.3f) but not refractory.",
                             _name(names, k), _name(names, m), cos)
                continue
            big, small, lag = (k, m, lag) if counts[k] >= counts[m] else (m, k, -lag)
            out.append((cos, int(big), int(small), int(lag)))
    return sorted(out, reverse=True)


def remainders(samples: np.ndarray, kinds: np.ndarray, peaks: np.ndarray, homes: np.ndarray,
               positions: np.ndarray, n_samples: int, window: int,
               p: ConsolidateParameters, names=None) -> np.ndarray:
    """``(K,)`` bool: the templates most of whose spikes follow a larger one's (docstring).

    `samples` sorted, `kinds` their templates; `peaks`, `homes` as in `duplicate_spikes`;
    `names`: the templates' names in the debug log.
    """
    n_templates = len(peaks)
    counts = np.bincount(kinds, minlength=n_templates)
    i, j = coincident_pairs(samples, kinds, window)
    larger = (peaks[kinds[j]] > peaks[kinds[i]]) | (
        (peaks[kinds[j]] == peaks[kinds[i]]) & (kinds[j] < kinds[i]))
    i, j = i[larger], j[larger]
    key = kinds[j].astype(np.int64) * n_templates + kinds[i]
    # Per pair of templates: the smaller one's spikes with one of the larger's near.
    pair_keys, observed = np.unique(np.unique(np.stack([key, i]), axis=1)[0],
                                    return_counts=True)
    big, small = pair_keys // n_templates, pair_keys % n_templates
    expected = counts[small] * np.minimum(
        1.0, counts[big].astype(np.float64) * (2 * window + 1) / max(n_samples, 1))
    distance = np.linalg.norm(positions[homes[big]] - positions[homes[small]], axis=1)
    found = ((observed > p.drop_fraction * counts[small])
             & (observed > p.duplicate_excess * expected + p.duplicate_min_count)
             & (distance <= p.duplicate_radius_um))
    for b, k, o, e in zip(big[found], small[found], observed[found], expected[found]):
        logger.debug("Consolidation: drop %s (n=%d): %d of its spikes follow %s's (%.1f "
                     "expected): a remainder.", _name(names, k), counts[k], o, _name(names, b), e)
    out = np.zeros(n_templates, dtype=bool)
    out[small[found]] = True
    return out


def foreign_spikes(amplitudes: np.ndarray, kinds: np.ndarray, n_templates: int,
                   amplitude_min: float, p: ConsolidateParameters, names=None) -> np.ndarray:
    """The spikes at the bottom of the amplitude range of templates with an excess there.

    A template's spikes at ``amplitude_min`` (clipped) are expected to number
    ``n * Phi((amplitude_min - median) / s)``, ``s`` the spread of its upper half
    (``(q75 - median) / 0.6745``); a template with more than ``foreign_excess``
    times that plus ``foreign_min_count`` has taken another unit's spikes there,
    and those go (module docstring). Returns a boolean mask of the spikes. `names`:
    the templates' names in the debug log.
    """
    bound = amplitudes <= np.float32(amplitude_min) * np.float32(1 + 1e-6)
    order = np.argsort(kinds, kind="stable")
    limits = np.searchsorted(kinds[order], np.arange(n_templates + 1))
    out = np.zeros(len(amplitudes), dtype=bool)
    for k in range(n_templates):
        rows = order[limits[k]:limits[k + 1]]
        if len(rows) < p.foreign_min_spikes:
            continue
        at_bound = int(bound[rows].sum())
        median, q75 = np.quantile(amplitudes[rows].astype(np.float64), [0.5, 0.75])
        if median <= amplitude_min or at_bound == 0:
            continue  # its own unit sits at the bound (the rare fragments' test)
        spread = max((q75 - median) / 0.6744897501960817, 1e-6)
        expected = len(rows) * float(ndtr((amplitude_min - median) / spread))
        if at_bound > p.foreign_excess * expected + p.foreign_min_count:
            logger.debug("Consolidation: %s has %d of %d spikes at the amplitude's lower "
                         "bound, %.1f expected (median %.2f): those removed.", _name(names, k),
                         at_bound, len(rows), expected, median)
            out[rows[bound[rows]]] = True
    return out


def _best_fit(target: np.ndarray, waveforms: np.ndarray, candidates, max_lag: int) -> tuple:
    """The candidate waveform, lag and positive scale closest to `target` (least squares).

    `target` ``(n_t, C)``; `waveforms` ``(K, n_t, C)``; a candidate at lag ``l`` is
    ``waveforms[j]`` delayed by ``l`` samples. Returns ``(gain, j, lag, scale)``, ``gain``
    the squared norm it removes from `target` (0 and ``j = -1`` when none fits).
    """
    n_t = len(target)
    best = (0.0, -1, 0, 0.0)
    on = np.any(target != 0, axis=0)
    for j in candidates:
        # Only the channels either one has (the others add nothing to either sum).
        channels = np.flatnonzero(on | np.any(waveforms[j] != 0, axis=0))
        w, x = waveforms[j][:, channels], target[:, channels]
        for lag in range(-max_lag, max_lag + 1):
            if lag >= 0:
                dot, energy = float((x[lag:] * w[:n_t - lag]).sum()), float(
                    (w[:n_t - lag] ** 2).sum())
            else:
                dot, energy = float((x[:n_t + lag] * w[-lag:]).sum()), float(
                    (w[-lag:] ** 2).sum())
            if dot > 0 and energy > 0 and dot * dot / energy > best[0]:
                best = (dot * dot / energy, int(j), lag, dot / energy)
    return best


def composites(scaled: np.ndarray, rest: np.ndarray, bound: float, homes: np.ndarray,
               positions: np.ndarray, p: ConsolidateParameters) -> np.ndarray:
    """``(K,)`` bool: the rare templates whose waveform one or two common ones make up.

    `scaled` ``(K, n_t, C)`` the templates over the noise; `rest` ``(K,)`` their spikes;
    rare: fewer than `bound` (``min_rate_hz`` times the duration), common: the others.
    A rare template is fitted (least squares, positive scales, lags up to half a
    window) by the common template within ``duplicate_radius_um`` that removes most
    of its energy, then its remainder by a second one; if the two leave less than
    ``1 - composite_explained`` of it, it is dropped (module docstring).
    """
    n_t = scaled.shape[1]
    max_lag = n_t // 2
    out = np.zeros(len(scaled), dtype=bool)
    common = rest >= bound
    for k in np.flatnonzero((rest > 0) & ~common):
        near = np.linalg.norm(positions[homes] - positions[homes[k]], axis=1) <= \
            p.duplicate_radius_um
        candidates = np.flatnonzero(common & near)
        target = scaled[k]
        total = float((target ** 2).sum())
        if not len(candidates) or total <= 0:
            continue
        _, j1, lag1, a1 = _best_fit(target, scaled, candidates, max_lag)
        if j1 < 0:
            continue
        residual = target - a1 * shift(scaled[j1], lag1)
        _, j2, lag2, _ = _best_fit(residual, scaled, candidates[candidates != j1], max_lag)
        if j2 >= 0:
            # The two scales fitted together (the first alone took some of the second's).
            basis = np.stack([shift(scaled[j1], lag1).ravel(),
                              shift(scaled[j2], lag2).ravel()], axis=1)
            scales = np.linalg.lstsq(basis, target.ravel(), rcond=None)[0]
            if (scales > 0).all():
                residual = target - (basis @ scales).reshape(target.shape)
        explained = 1 - float((residual ** 2).sum()) / total
        logger.debug("Consolidation: rare template %d, %d spikes: template %d (lag %d) and "
                     "template %d (lag %d) make %.2f of it: %s.", k, rest[k], j1, lag1, j2,
                     lag2, explained, "dropped" if explained >= p.composite_explained
                     else "kept")
        out[k] = explained >= p.composite_explained
    return out


def _medians(values: np.ndarray, kinds: np.ndarray, n_templates: int) -> np.ndarray:
    """The median of `values` per template (1 for a template without spikes)."""
    order = np.argsort(kinds, kind="stable")
    bounds = np.searchsorted(kinds[order], np.arange(n_templates + 1))
    out = np.ones(n_templates)
    for k in np.flatnonzero(np.diff(bounds)):
        out[k] = float(np.median(values[order[bounds[k]:bounds[k + 1]]]))
    return out


def consolidate(result: Bunch, templates, noise_std: np.ndarray, positions: np.ndarray,
                n_samples: int, sample_rate: float,
                p: ConsolidateParameters = ConsolidateParameters(),
                amplitude_min: float = 0.75, apart=(),
                amplitude_max: float = 1.35) -> tuple[Bunch, dict]:
    """The last pass's spikes without duplicates, over-split units merged (module docstring).

    Parameters
    ----------
    result : Bunch
        ``spike_samples`` (sorted), ``spike_templates``, ``amplitudes``.
    templates : TemplateSet
        The templates of the last pass.
    noise_std : (C,) each channel's noise standard deviation.
    positions : (C, 2) channel positions (um).
    amplitude_min : float
        The pursuit's smallest amplitude (`MatchParameters.amplitude_min`).
    amplitude_max : float
        Its largest (`MatchParameters.amplitude_max`).
    apart : iterable of (int, int)
        Pairs of templates (indices) not to merge: the last refinement compared
        their spikes and found two units (`phy_tmatch.refine`'s ``kept_apart``:
        co-located units of one shape, 1024 channels' units 89 and 130 at 20 s).

    Returns
    -------
    (result, info)
        The spikes kept (still sorted), some with another template (merged), and
        counts: ``n_duplicate_spikes``, ``n_dropped``, ``n_merged``.
    """
    samples = np.asarray(result.spike_samples, dtype=np.int64)
    kinds = np.asarray(result.spike_templates, dtype=np.int64)
    amplitudes = np.asarray(result.amplitudes)
    info = dict(n_duplicate_spikes=0, n_dropped=0, n_merged=0)
    n_templates = templates.n_templates
    if not len(samples) or n_templates == 0:
        return result, info
    dense = templates.dense().astype(np.float64)
    sigma = np.maximum(np.asarray(noise_std, dtype=np.float64), 1e-12)
    peak_channels = np.abs(dense / sigma).max(axis=1)
    homes, peaks = peak_channels.argmax(axis=1), peak_channels.max(axis=1)
    positions = np.asarray(positions, dtype=np.float64)
    keep = np.ones(len(samples), dtype=bool)
    window = int(round(p.same_ms * 1e-3 * sample_rate))
    names = [f"c{int(c)}" for c in templates.cluster_ids]
    if p.remove_duplicates:
        remove, pairs = duplicate_spikes(samples, kinds, peaks, homes, positions, n_samples,
                                         window, p)
        for big, small, observed, expected in pairs:
            logger.debug("Consolidation: %s (peak %.1f) matched %d spikes of %s (peak %.1f) "
                         "again (%.1f expected by chance): those removed.", names[small],
                         peaks[small], observed, names[big], peaks[big], expected)
        counts = np.bincount(kinds, minlength=n_templates)
        lost = np.bincount(kinds[remove], minlength=n_templates)
        rest = np.bincount(kinds[~remove], minlength=n_templates)
        drop = rest < p.min_spikes
        medians = _medians(amplitudes[~remove], kinds[~remove], n_templates)
        for k in np.flatnonzero((lost > p.drop_fraction * counts) & ~drop):
            median = medians[k]
            if median < amplitude_min + p.drop_amplitude_margin:
                drop[k] = True
            logger.debug("Consolidation: %s %s (n=%d): lost %d spikes matched again; the "
                         "rest's median amplitude %.2f.", "drop" if drop[k] else "keep",
                         names[k], counts[k], lost[k], median)
        drop &= counts > 0
        for k in np.flatnonzero(drop & (rest < p.min_spikes)):
            logger.debug("Consolidation: drop %s (n=%d): %d spikes left after those matched "
                         "again.", names[k], counts[k], rest[k])
        keep = ~remove & ~drop[kinds]
        info["n_duplicate_spikes"] = int(remove.sum())
        info["n_dropped"] = int(drop.sum())
    if p.remove_duplicates and p.drop_remainders:
        # A remainder is a duplicate dated a little apart: off with the duplicates.
        rows = np.flatnonzero(keep)
        remainder = remainders(samples[rows], kinds[rows], peaks, homes, positions, n_samples,
                               int(round(p.remainder_ms * 1e-3 * sample_rate)), p, names)
        if p.drop_tails:
            # Also at any lag where the two windows overlap (a strong unit's waveform
            # outlasts its template's window: its tail is matched 1.4-1.5 ms on); chance
            # grows with the window, so the 1 ms test above stays for the closer ones.
            remainder |= remainders(samples[rows], kinds[rows], peaks, homes, positions,
                                    n_samples, dense.shape[1] - 1, p, names)
        keep &= ~remainder[kinds]
        info["n_dropped"] += int(remainder.sum())
    n_foreign = 0
    if p.remove_foreign:
        rows = np.flatnonzero(keep)
        foreign = rows[foreign_spikes(amplitudes[rows], kinds[rows], n_templates,
                                      amplitude_min, p, names)]
        keep[foreign] = False
        n_foreign = len(foreign)
    if p.min_rate_hz > 0:
        rest = np.bincount(kinds[keep], minlength=n_templates)
        medians = _medians(amplitudes[keep], kinds[keep], n_templates)
        # At either end of the pursuit's range: clipped, another unit's spikes (or two).
        rare = (rest > 0) & (rest < p.min_rate_hz * n_samples / sample_rate) & (
            (medians < amplitude_min + p.drop_amplitude_margin)
            | (medians > amplitude_max - p.drop_amplitude_margin))
        for k in np.flatnonzero(rare):
            logger.debug("Consolidation: drop %s (n=%d): median amplitude %.2f (rare, "
                         "clipped).", names[k], rest[k], medians[k])
        keep &= ~rare[kinds]
        info["n_dropped"] += int(rare.sum())
        if p.drop_composites:
            rest = np.bincount(kinds[keep], minlength=n_templates)
            composite = composites(dense / sigma, rest, p.min_rate_hz * n_samples / sample_rate,
                                   homes, positions, p)
            keep &= ~composite[kinds]
            info["n_dropped"] += int(composite.sum())
    if p.merge:
        k_kinds = kinds[keep]
        pairs = _merge_pairs(dense, sigma, k_kinds, samples[keep], amplitudes[keep], homes,
                             positions, n_samples, sample_rate, p,
                             frozenset(frozenset((int(a), int(b))) for a, b in apart), names)
        kinds = kinds.copy()
        samples = samples.copy()
        amplitudes = amplitudes.copy()
        merged_into = np.arange(n_templates)
        trough = np.asarray(templates.trough, dtype=np.int64)
        for cos, big, small, lag in pairs:
            if merged_into[big] != big or merged_into[small] != small:
                continue
            rows = np.flatnonzero(keep & (kinds == small))
            # ``dense[big]`` at t + lag is ``dense[small]`` at t: the same spike starts
            # `lag` samples earlier on the larger template (times are start + trough).
            samples[rows] += trough[big] - trough[small] - lag
            # Its amplitude on the larger template: the projection of the smaller
            # template (aligned) on it, over the larger's norm.
            b = dense[big] / sigma
            s = dense[small] / sigma
            n_t = len(b)
            if lag >= 0:
                dot = float((b[lag:] * s[:n_t - lag]).sum())
            else:
                dot = float((b[:n_t + lag] * s[-lag:]).sum())
            amplitudes[rows] = amplitudes[rows] * dot / max(float((b * b).sum()), 1e-12)
            kinds[rows] = big
            merged_into[small] = big
            info["n_merged"] += 1
            logger.debug("Consolidation: merge %s (n=%d) into %s (cosine %.3f, lag %d).",
                         names[small], len(rows), names[big], cos, lag)
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(samples[kept], kind="stable")]
    out = Bunch(result)
    out.spike_samples = samples[order].astype(np.asarray(result.spike_samples).dtype)
    out.spike_templates = kinds[order].astype(np.asarray(result.spike_templates).dtype)
    out.amplitudes = amplitudes[order].astype(np.asarray(result.amplitudes).dtype)
    logger.info("Consolidation: %d spikes matched again removed, %d of another unit at the "
                "bottom of a template's range, %d templates dropped, %d merged.",
                info["n_duplicate_spikes"], n_foreign, info["n_dropped"], info["n_merged"])
    return out, info
