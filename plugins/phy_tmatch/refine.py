"""Template refinement: split, find, merge and drop templates from a matching pass's events.

A matching pass with collection (`phy_tmatch.residual`) gives, for a sample of
each template's matched spikes and for the residual events, snippets on the
channels near their home channel. From them, in the parent process:

- **Re-centre** (``recentre``, on) a template, and the new groups below, whose
  trough is off the window's alignment sample (where detection dates a
  spike), with its events (`phy_tmatch.alignment`): masked EM makes clusters of
  a strong unit's spikes detected a second time 8-23 samples off their trough,
  whose templates are the unit again, alike to its template only at a lag
  beyond the merges' (384 channels seed 2: unit 41's spikes on two templates 13
  samples apart). Re-centred, they merge. The samples a shift empties are
  zeros, left out of the comparisons of snippets; a pair whose lag as the pass
  dated them (their lag plus the difference of their shifts) is more than a
  sample is not compared beyond a scale (a copy's spikes are those detected off
  their trough, not another unit's).
- **Split** a template whose spikes are bimodal: the snippets, whitened
  (`SnippetWhitener`) and restricted to where they stand out of the noise, are
  reduced to their first `n_features` principal components, and a
  two-component Gaussian mixture (full covariances) is fitted. The template is
  split when the mixture beats one Gaussian by the BIC, both parts have at
  least `min_spikes` spikes, their means differ by more than noise could make
  them (``|m_a - m_b|^2 / (1/n_a + 1/n_b)``, in noise units, above
  ``D + split_significance * sqrt(2 D)``, ``D`` the dimensions kept), and not
  merely in amplitude (parts the merge would join again, unless each spike tells
  them apart beyond a scale: ``distinct_beyond_scale``), nor merely by a scale
  and a fraction of a sample (`beyond_scale_and_shift`: a unit's spikes vary in
  amplitude and alignment; without this check a second round split clean
  units). The parts are split
  again, up to `max_split_depth` times. A single Gaussian with data-chosen axes
  still fits noise, which is why the mixture is tested against it rather than
  2-means against nothing.
- **Find** new units among the residual events: those of each home channel are
  split the same way, and every part with at least `min_spikes` events whose
  mean stands out of the noise (its peak over its channel's noise at least
  `new_min_snr`) is a new template. The same for the *misfits* of each home
  channel (``misfits``, on): the spikes a template matched at the amplitude's
  upper bound, whole (`phy_tmatch.residual`): a unit without a template of its
  own whose spikes a smaller neighbour's template took leaves no residual
  event, and its few spikes among the template's hundreds cannot split it. A
  group of misfits is not merged into the template(s) it was taken from, nor
  dropped as a duplicate of the spikes it re-explains.
- **Merge** two templates that explain the same unit: alike after alignment
  (cosine similarity of their noise-divided waveforms at the best lag within
  `merge_max_lag_ms` at least `merge_similarity`, amplitudes within a factor
  `merge_amplitude_ratio`; or means that differ by less than the split test's
  bar, for the small groups whose means are noisy; or, from `merge_min_similarity`
  up, groups whose *snippets* (matched spikes or residual events, on the channels
  both have) differ by no more than their spread, a scale and a fraction of a
  sample allow (`compare_snippets`; a weak unit's template keeps few channels,
  so its waveform differs from its events' mean); or a group of residual events
  alike in shape (cosine >= `fragment_similarity` where the means stand out) and
  amplitude to another group's events: residual events are chosen by their
  troughs, so their mean is biased and a test of means would keep a weak unit's
  fragments apart; never the two parts of a split of this round, nor a group of
  residual events most of whose events fall on other templates' spikes into a
  group that does not own them: those are another unit's remainders), unless
  their spike trains are not refractory with each other (units have a dead
  time, so a unit split in two has almost no pair of spikes closer than
  `refractory_ms`).
- **Drop** the templates that matched fewer than `min_spikes` spikes, and, after
  the merges, the groups most of whose spikes are other templates' spikes seen
  again (`duplicates`, ``drop_duplicates``): a spike matched by a template of
  another unit's shape leaves a residual, the difference of the two, that would
  become a template of the same spikes (most false clusters of the 1024
  channels).
- **Split by amplitude** (``amplitude_split``, on): two co-located
  units of one shape (amplitude ratio 1.42: units 24 and 39 of the 384-channel
  seed 0) share a template, and the split above sees one unit whose amplitude
  varies. A template kept whole whose spikes' amplitudes on it form two modes
  (`amplitude_modes`: one unit's amplitudes have a known spread, its jitter
  and the estimate's noise; the jitter is measured on the recording's templates,
  `recording_jitter`, and two modes must also beat one unit of any jitter) that
  do not depend on time or on the interval since the previous spike
  (`modes_independent`: a unit that drifts or bursts) becomes two scaled
  copies; the next pass assigns
  the spikes, which needs the pursuit's amplitude prior (without it the two
  copies tie on every spike): `refine` names the copies (``amplitude_copies``)
  and `phy_tmatch.runner` gives them, and them only, the prior
  (``amplitude_copy_prior_std``; on every template, ``amplitude_prior_std``, it
  lost a weak unit of the 1024 channels to its strong neighbour). Two
  groups alike in shape whose amplitudes form two modes are not merged (the
  copies of the previous round), and are named copies too.
- **Rescale** a template that is neither split nor merged to the mean amplitude
  of its matched spikes (`mean_amplitude`) when that is off 1 by more than its
  standard error allows and by `rescale_min_change` to `rescale_max_change`: a
  weak unit's masked EM cluster holds the spikes that crossed the detection
  threshold, so its mean is too large (by 10-20 %), and a template too large
  matches only the unit's larger spikes. After the merges, which compare the
  waveforms the pass matched with.
- **Rebuild** (``rebuild``, off by default) a template kept whole (rather than rescale it) whose
  waveform is the mean of far fewer spikes than the pass's snippets of its
  matched spikes (a template made from a few dozen residual events or misfits):
  their mean, without the spikes of other amplitudes (`_rebuilt`), on its home's
  local channels, so that `phy_tmatch.templates.build_templates` chooses its
  channels by the noise of that mean, as for the masked EM's clusters, and the
  template reaches its unit's whole footprint. Also after the merges. A template
  made by the last refinement is not rebuilt (no later pass collects its spikes).

A template that is neither split nor merged keeps its waveform (rescaled); a new, split
or merged one gets a new cluster id (ids are never reused) and the mean of its
snippets (on its home channel's local channels) as waveform, and, given a
`phy_tmatch.means.WindowMeans`, the mean of those events' windows of the pass's
residual, read from the recording, on its other channels (a unit stands out
beyond the local channels; its template would leave that part of its spikes to
be matched again by others), unless it has its template's far field already
(a split part, `with_far_field`). The result is a set of mean waveforms from
which `phy_tmatch.runner` rebuilds the templates and matches again.

This module holds the parameters and the driver (`refine`); the work is in
`phy_tmatch.groups` (a candidate unit, `Group`, and the events' snippets),
`phy_tmatch.snippet_whitener` (the noise whitening of the snippets),
`phy_tmatch.split` (the split test), `phy_tmatch.comparison` (waveforms,
snippets and spike trains compared; shared with `phy_tmatch.consolidate`),
`phy_tmatch.amplitude` (the rescaling and the amplitude modes) and
`phy_tmatch.merging` (the merges).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from phy_core.bunch import Bunch

from .alignment import alignment_delay, shift_events
from .amplitude import (
    amplitude_modes,
    amplitudes,
    mean_amplitude,
    modes_independent,
    recording_jitter,
)
from .comparison import duplicates, shift, spread
from .groups import EventSnippets, Group
from .merging import alike_pairs, coincident_matches, merge_groups
from .residual import MISFIT
from .snippet_whitener import SnippetWhitener
from .split import split_units, with_far_field

logger = logging.getLogger("phy")


@dataclass(frozen=True)
class RefineParameters:
    """Parameters of the refinement (the ``refine`` option of `phy_tmatch.runner`).

    ``min_spikes``: the fewest spikes of a unit (a part, a new template, a kept
    template); ``n_features``: principal components the mixture sees;
    ``max_split_depth``: splits of splits; ``split_significance``: the chi-square
    bar, in its standard deviations; ``signal_floor``: the RMS (noise units) above
    the noise of a kept dimension; ``max_dims``: at most this many dimensions;
    ``new_min_snr``: a new template's peak over its channel's noise;
    ``merge_similarity``, ``merge_amplitude_ratio``, ``merge_max_lag_ms``,
    ``merge_radius_um`` (between the peak channels), ``merge_min_similarity`` (the
    waveform similarity from which the snippets are compared),
    ``fragment_similarity``: what is alike;
    ``refractory_ms``: the window of the refractory test;
    ``distinct_beyond_scale`` (on): two groups of matched spikes whose means
    differ beyond a scale and a shift of up to 1.5 samples
    (`beyond_scale_and_shift` with ``whole_shift``) by at least
    ``min_separation`` standard deviations of one spike's noise are two units,
    however alike their waveforms (a split also needs that difference to be
    ``min_relative_separation`` of the parts' norm: a strong unit's spikes vary
    by more than 2 noise sigmas beyond a scale and a shift; unit 70 of the 200 s
    1024-channel recording, SNR 15.7, split at 0.103, units 89 and 130 at 0.159
    and 0.135-0.155 for the other splits there): a split is not
    vetoed by the similarity of its parts, nor are they merged by it when alike
    at a lag of at most one
    sample (units 89 and 130 of the 1024 channels, 8 um apart, cosine 0.98,
    amplitude ratio 1.14: one template, split with it). Alone it was not better
    on the whole: the parts' means, on their home's local channels only, left
    the rest of each spike to a neighbouring template, and strong units'
    fragments dated 8-9 samples off were no longer merged; with
    ``split_far_field`` and the lag bar, better or equal on the benchmark
    recordings;
    ``drop_duplicates``, ``duplicate_fraction``: a group (a template, a part, a
    group of residual events) more than this fraction of whose spikes fall on
    the spikes another nearby template matched is dropped (`duplicates`);
    ``rescale_significance``, ``rescale_min_change``, ``rescale_max_change``: a
    kept template is rescaled to its spikes' mean amplitude when that differs
    from 1 by this many standard errors and by a fraction in ``(min, max]``
    (`mean_amplitude`; smaller errors are within the pursuit's amplitude range;
    the means of groups of residual events, 0.5-0.7, are also off in shape, and
    rescaling them let them take their neighbours' spikes);
    ``amplitude_split`` (on), ``amplitude_split_ratio``,
    ``amplitude_split_margin``, ``amplitude_split_free_margin``,
    ``amplitude_split_min_fraction``, ``amplitude_jitter`` (one unit's amplitude
    spread over its mean; None: measured on the recording, `recording_jitter`,
    from the templates with at least ``amplitude_jitter_min_spikes`` matched
    spikes, when there are ``amplitude_jitter_min_templates`` of them; else no
    split by amplitude: the median of 6 templates' spreads, 8 s of 32 channels,
    was 0.069 for units of 10 %, and a single unit was split; over 44-126
    templates, 0.094-0.102), ``amplitude_split_independence``
    (a bar in standard deviations of a correlation): a template the shape test
    left whole is split in two scaled copies when its spikes' amplitudes form
    two modes (`amplitude_modes`: two co-located units of one shape; the copies
    get the pursuit's amplitude prior, `phy_tmatch.runner`) that are independent
    of time and of the interval since the previous spike (`modes_independent`: a unit that drifts
    or bursts is one unit). ``split_far_field`` (on): the parts of a split alike
    to their template keep its waveform beyond their home's local channels
    (`with_far_field`). ``misfits``: new templates also from the spikes matched
    at the amplitude's upper bound (the "find" step). ``rebuild`` (off),
    ``rebuild_ratio``, ``rebuild_min_spikes``, ``rebuild_trim``: a template kept
    whole whose matched spikes' snippets are at least ``rebuild_ratio`` times the
    spikes its waveform was averaged from, and at least ``rebuild_min_spikes``
    (the median and spread of fewer amplitudes tell a neighbour's few spikes
    from the unit's badly; 12 instead of 50 gave the same accuracy), gets the
    mean of those snippets as waveform on its home's local channels
    (`_rebuilt`), without the spikes whose amplitude on it is more
    than ``rebuild_trim`` robust standard deviations off their median (another
    unit's spikes it took). ``recentre`` (on),
    ``align_tolerance_ms``, ``align_sign``, ``align_min_fraction``: a template or
    a new group whose waveform's extremum of ``align_sign`` (-1: its trough, as
    detection's ``negative`` mode and the residual events; +1: its positive peak;
    0: its largest ``|value|``), on the noise-divided waveform, is more than
    ``align_tolerance_ms`` from the window's alignment sample is shifted there,
    with its events (`phy_tmatch.alignment`); not when that extremum is under
    ``align_min_fraction`` of the largest ``|value|``. The defaults were chosen
    on the synthetic recordings (2 ms dead time, 10 % amplitude jitter).
    """

    min_spikes: int = 6
    n_features: int = 3
    max_split_depth: int = 3
    split_significance: float = 6.0
    signal_floor: float = 1.0
    max_dims: int = 300
    new_min_snr: float = 2.5
    merge_similarity: float = 0.95
    merge_amplitude_ratio: float = 1.3
    merge_max_lag_ms: float = 0.4
    merge_radius_um: float = 60.0
    merge_min_similarity: float = 0.2
    fragment_similarity: float = 0.6
    refractory_ms: float = 1.5
    rescale_significance: float = 3.0
    rescale_min_change: float = 0.1
    rescale_max_change: float = 0.25
    distinct_beyond_scale: bool = True
    min_separation: float = 2.0
    min_relative_separation: float = 0.125
    drop_duplicates: bool = True
    duplicate_fraction: float = 0.5
    split_far_field: bool = True
    amplitude_split: bool = True
    amplitude_split_ratio: float = 1.3
    amplitude_split_margin: float = 4.0
    amplitude_split_min_fraction: float = 0.2
    amplitude_jitter: float | None = None
    amplitude_jitter_min_spikes: int = 30
    amplitude_jitter_min_templates: int = 10
    amplitude_split_independence: float = 3.0
    amplitude_split_free_margin: float = 0.0
    misfits: bool = True
    rebuild: bool = False
    rebuild_ratio: float = 3.0
    rebuild_min_spikes: int = 50
    rebuild_trim: float = 4.0
    recentre: bool = True
    align_tolerance_ms: float = 0.1
    align_sign: int = -1
    align_min_fraction: float = 0.5



# -- The refinement ---------------------------------------------------------------------------


def _amplitude_jitter(templates, labels: np.ndarray, template_homes: np.ndarray,
                      dense: np.ndarray, events: EventSnippets,
                      p: RefineParameters) -> float | None:
    """One unit's amplitude jitter (``amplitude_split``): given, or measured on the templates."""
    jitter = p.amplitude_jitter
    if p.amplitude_split and jitter is None:
        sets = []
        for k in range(templates.n_templates):
            rows = np.flatnonzero(labels == k)
            if len(rows) >= max(p.amplitude_jitter_min_spikes, p.min_spikes):
                home = int(template_homes[k])
                sets.append(amplitudes(events.whitened(rows, home),
                                       *events.on_waveform(dense[k], home)))
        jitter = recording_jitter(sets, p.amplitude_jitter_min_spikes)
        if len(sets) < p.amplitude_jitter_min_templates:
            jitter = None  # too few templates for a median to be one unit's jitter
        logger.debug("Refinement: amplitude jitter measured on %d templates: %s.", len(sets),
                     "none" if jitter is None else f"{jitter:.3f}")
    return jitter


def _template_groups(templates, dense: np.ndarray, counts: np.ndarray, labels: np.ndarray,
                     samples: np.ndarray, template_homes: np.ndarray, sigma: np.ndarray,
                     events: EventSnippets, jitter: float | None,
                     p: RefineParameters) -> tuple[list[Group], int, int]:
    """Each template's group(s); (groups, templates split, templates dropped).

    A template with fewer than ``min_spikes`` spikes is dropped; one whose
    spikes `split_units` splits gives its parts (`with_far_field`); one whose
    amplitudes form two modes (``amplitude_split``) two scaled copies; any other
    is kept whole, with the scale its spikes' mean amplitude asks for (applied
    after the merges).
    """
    n_t, local = templates.n_samples, events.local
    groups: list[Group] = []
    n_split = n_dropped = 0
    for k in range(templates.n_templates):
        rows = np.flatnonzero(labels == k)
        name = f"c{int(templates.cluster_ids[k])}"
        if counts[k] < p.min_spikes:
            n_dropped += 1
            logger.debug("Refinement: drop %s (n=%d): fewer than %d spikes matched.", name,
                         counts[k], p.min_spikes)
            continue
        home = int(template_homes[k])
        x = events.whitened(rows, home)
        parts = split_units(x, p, n_t=n_t) if len(rows) else [np.arange(0)]
        if len(parts) == 1:
            scale = 1.0
            if len(rows) >= p.min_spikes:
                template_w, slope_w = events.on_waveform(dense[k], home)
                modes = None
                if p.amplitude_split and jitter is not None:
                    amps, noise_var = amplitudes(x, template_w, slope_w)
                    modes = amplitude_modes(amps, noise_var, p, jitter)
                    if modes is not None and not modes_independent(modes, samples[rows], p):
                        logger.debug("Refinement: %s: amplitude modes that depend on "
                                     "time or on the interval since the previous spike: one "
                                     "unit.", name)
                        modes = None
                if modes is not None:
                    # Two units of one shape: each a scaled copy of the template (the mean
                    # of a mode's few spikes is noisier); the next pass assigns the spikes.
                    n_split += 1
                    logger.debug("Refinement: split %s (n=%d, %d sampled) by amplitude "
                                 "(noise %.3f): %s.%s (n=%d, amplitude %.2f), %s.%s (n=%d, "
                                 "amplitude %.2f).", name, counts[k], len(rows),
                                 np.sqrt(noise_var),
                                 *[v for j in (0, 1) for v in (
                                     name, f"a{j}", int((modes == j).sum()),
                                     float(amps[modes == j].mean()))])
                    for j in (0, 1):
                        part = np.flatnonzero(modes == j)
                        r = rows[part]
                        scale = float(amps[part].mean())
                        # A copy scaled by c is as noisy, relative to its size, as the
                        # template: the mean of n / c^2 spikes. Counted so, both copies keep
                        # the template's channels (`build_templates` drops those below the
                        # noise of a mean); a copy on fewer channels explains less of any
                        # spike, and the pursuit gave it none.
                        n_equal = max(int(round(int(templates.n_spikes[k]) / scale ** 2)),
                                      len(r))
                        groups.append(Group(
                            mean=dense[k] * scale, n_spikes=n_equal, cluster_id=None,
                            home=home, samples=samples[r], parent=k, n_averaged=n_equal,
                            spread=spread(x[part], p), rows=r, snippet_home=home,
                            residual=False, scale=1.0, snippet_mean=False,
                            amplitude_copy=True, origin=f"{name}.a{j}"))
                    continue
                mean, error = mean_amplitude(x, template_w, slope_w)
                change = abs(mean - 1.0)
                if (max(p.rescale_significance * error, p.rescale_min_change) < change
                        <= p.rescale_max_change):
                    scale = mean
            groups.append(Group(
                mean=dense[k], n_spikes=int(counts[k]), cluster_id=int(templates.cluster_ids[k]),
                home=home, samples=samples[rows], parent=-1,
                n_averaged=int(templates.n_spikes[k]), spread=spread(x, p), rows=rows,
                snippet_home=home, residual=False, scale=scale, snippet_mean=False,
                origin=name))
            continue
        n_split += 1
        logger.debug("Refinement: split %s (n=%d, %d sampled) by shape: %s.", name, counts[k],
                     len(rows), ", ".join(f"{name}.s{j} (n={len(part)})"
                                          for j, part in enumerate(parts)))
        for j, part in enumerate(parts):
            r = rows[part]
            mean = events.embed(r, home)
            if p.split_far_field:
                mean = with_far_field(mean, dense[k], local[home], p)
            # A part may be another unit, centred elsewhere.
            peak = int(np.abs(mean / sigma).max(axis=0).argmax())
            groups.append(Group(
                mean=mean, n_spikes=len(r), cluster_id=None, home=peak, samples=samples[r],
                parent=k, n_averaged=len(r), spread=spread(x[part], p), rows=r,
                snippet_home=home, residual=False, scale=1.0, snippet_mean=True,
                origin=f"{name}.s{j}"))
    return groups, n_split, n_dropped


def _event_groups(labels: np.ndarray, homes: np.ndarray, samples: np.ndarray, n_t: int,
                  sigma: np.ndarray, events: EventSnippets,
                  p: RefineParameters) -> list[Group]:
    """New groups from the residual events and the misfits (the "find" step).

    Each kind grouped by its home channel (a misfit may also have left a residual
    event), split like a template's spikes; a part is kept if it has
    ``min_spikes`` events and its mean's peak is ``new_min_snr`` over the noise.
    """
    groups: list[Group] = []
    for kind in (labels == -1, labels <= MISFIT) if p.misfits else (labels == -1,):
        residual = np.flatnonzero(kind)
        for home in np.unique(homes[residual]):
            rows = residual[homes[residual] == home]
            if len(rows) < p.min_spikes:
                continue
            x = events.whitened(rows, home)
            for j, part in enumerate(split_units(x, p, n_t=n_t)):
                r = rows[part]
                # Misfits are whole spikes aligned by their template, not events chosen
                # by their troughs (the merges' rule for those does not apply).
                misfits = bool(labels[r[0]] <= MISFIT) if len(r) else False
                origin = f"{'m' if misfits else 'r'}{int(home)}.{j}"
                if len(r) < p.min_spikes:
                    continue
                mean = events.embed(r, home)
                snr = np.abs(mean[:, home]).max() / sigma[home]
                if snr < p.new_min_snr:
                    continue
                logger.debug("Refinement: new group %s (n=%d, peak %.1f sigma).", origin, len(r),
                             snr)
                groups.append(Group(
                    mean=mean, n_spikes=len(r), cluster_id=None, home=int(home),
                    samples=samples[r], parent=-1, n_averaged=len(r),
                    spread=spread(x[part], p), rows=r, snippet_home=int(home),
                    residual=not misfits, scale=1.0, snippet_mean=True, origin=origin))
    return groups


def _rebuilt(g: Group, k: int, averaged: int, dense: np.ndarray, events: EventSnippets,
             p: RefineParameters) -> tuple[np.ndarray, np.ndarray] | None:
    """A kept template's waveform made again from its matched spikes, or None.

    A template the refinement made from a few dozen residual events or misfits
    keeps the channels that stood out of the noise of a mean of that few
    (`phy_tmatch.templates.build_templates`: 4 sigma / sqrt(n)) after it has
    matched thousands of its unit's spikes (200 s, 384 channels, seed 0: unit
    59's template had 4 of its 6 channels, and unit 32's template took 85 of its
    spikes). When the pass's snippets of its matched spikes (each the residual
    plus the spike's own part, `phy_tmatch.residual`: neighbours' matched spikes
    taken out) are at least ``rebuild_ratio`` times the `averaged` spikes its
    waveform is the mean of, their mean replaces it on its home's local channels
    (`g.snippet_home`); the rest of the waveform stays. Spikes whose amplitude on
    the template (`amplitudes`: with its time derivative) is more than
    ``rebuild_trim`` robust standard deviations (1.4826 MAD) off the median are
    left out: a larger or smaller unit's spikes the template took at the
    amplitude's bounds. Returns the waveform and the rows averaged.
    """
    rows, home = g.rows, int(g.snippet_home)
    if len(rows) < max(p.rebuild_ratio * max(int(averaged), 1), p.rebuild_min_spikes):
        return None
    x = events.whitened(rows, home)
    amps, _ = amplitudes(x, *events.on_waveform(dense[k], home))
    centre = float(np.median(amps))
    mad = 1.4826 * float(np.median(np.abs(amps - centre)))
    used = rows[np.abs(amps - centre) <= p.rebuild_trim * max(mad, 1e-12)]
    if len(used) < max(p.rebuild_ratio * max(int(averaged), 1), p.rebuild_min_spikes):
        return None
    mean = dense[k].copy()
    chans = events.local[home]
    mean[:, chans] = events.snippets[used].mean(axis=0)
    return mean, used


def _owners_and_parents(groups: list[Group], labels: np.ndarray,
                        n_templates: int) -> tuple[list[set[int]], list[set[int]]]:
    """Per group, the templates whose matched spikes it holds, and those it was taken from.

    The owners are what `phy_tmatch.comparison.duplicates` discounts. A group of
    misfits (`phy_tmatch.residual`) is, by its making, at spikes other templates
    matched: it is their better explanation, not a copy of them (it owns them
    all); its parents are the templates it was taken from: its spikes were too
    large for them (that is why they were collected), so the two are not merged.
    """
    of_misfits = [g.cluster_id is None and g.parent < 0 and len(g.rows) > 0
                  and labels[g.rows[0]] <= MISFIT for g in groups]
    owners = [set(range(n_templates)) if misfit else {g.parent} if g.parent >= 0
              else ({int(labels[g.rows[0]])} if not g.residual and len(g.rows) else set())
              for g, misfit in zip(groups, of_misfits)]
    parents = [set((MISFIT - labels[g.rows]).tolist()) if misfit else set()
               for g, misfit in zip(groups, of_misfits)]
    return owners, parents


def _template_delays(dense: np.ndarray, sigma: np.ndarray, before: int, tolerance: int,
                     p: RefineParameters) -> np.ndarray:
    """``(K,)``: the delay that puts each template's trough at `before` (0 if it is)."""
    return np.array([alignment_delay(w, sigma, before, tolerance, p.align_sign,
                                     p.align_min_fraction) for w in dense], dtype=np.int64)


def _group_delays(groups: list[Group], sigma: np.ndarray, before: int, tolerance: int,
                  p: RefineParameters) -> list[int]:
    """Per group, the delay that puts its trough at `before`: 0 for a template kept whole
    (aligned before) or a scaled copy of one; the new groups' (split parts, groups of
    events) otherwise.
    """
    return [0 if g.cluster_id is not None or g.amplitude_copy else
            alignment_delay(g.mean, sigma, before, tolerance, p.align_sign,
                            p.align_min_fraction) for g in groups]


def refine(templates, events: Bunch, counts: np.ndarray, sigma_channels: np.ndarray,
           local: np.ndarray, positions: np.ndarray, n_samples: int, sample_rate: float,
           next_id: int, p: RefineParameters = RefineParameters(),
           covariance: np.ndarray | None = None, window_means=None,
           before: int | None = None) -> Bunch:
    """New mean waveforms from a matching pass's events (see the module docstring).

    Parameters
    ----------
    templates : TemplateSet
        The templates of the pass.
    events : Bunch
        ``samples``, ``labels`` (template or -1), ``homes``, ``snippets`` (n, n_t, L).
    counts : (K,) int
        Spikes each template matched in the whole pass.
    sigma_channels : (C,) noise standard deviation per channel.
    local : (C, L) each channel's nearest channels.
    covariance : (C, C) or None
        The noise covariance of the channels (None: independent channels).
    next_id : int
        The first unused cluster id.
    window_means : phy_tmatch.means.WindowMeans or None
        If given, a template made from the events' snippets (which have the `L`
        local channels only) and nothing beyond them gets its other channels from
        the recording (`WindowMeans.widen`, on the windows of the pass's residual:
        the caller gives it the pass's spikes, `WindowMeans.set_matched`);
        otherwise it keeps the local channels alone.
    before : int or None
        The window's alignment sample (where detection puts a spike's trough;
        ``recentre``). None: the templates' most common trough.

    Returns
    -------
    Bunch
        ``means`` (K', n_t, C) float64, ``n_spikes`` (K',), ``cluster_ids`` (K',),
        ``changed`` (bool), ``amplitude_copies`` (the cluster ids of the templates
        that are scaled copies of one shape: an amplitude split's, or two kept apart
        by their amplitudes; `phy_tmatch.runner` gives them the pursuit's amplitude
        prior), ``kept_apart`` (n, 2): the cluster ids of the pairs alike in waveform
        (``merge_similarity``, ``merge_amplitude_ratio``) that their spikes told
        apart (beyond a scale and a shift, or by their amplitudes; the consolidation
        leaves them apart), and the counts ``n_split``, ``n_new``, ``n_merged``,
        ``n_dropped``.
    """
    n_t, n_channels = templates.n_samples, templates.n_channels
    n_t, n_channels = templates.n_samples, templates.n_channels
    dense = templates.dense().astype(np.float64)
    sigma = np.maximum(np.asarray(sigma_channels, dtype=np.float64), 1e-12)
    labels, homes = np.asarray(events.labels), np.asarray(events.homes)
    snippets = np.asarray(events.snippets, dtype=np.float64)
    samples = np.asarray(events.samples)

    # Templates, and their events, aligned on their troughs (`phy_tmatch.alignment`): a
    # unit's copy dated elsewhere is then alike to its template at no lag, and merges.
    delay = np.zeros(len(labels), dtype=np.int64)  # each snippet's shift
    # Where each snippet holds data: [lo, hi) (a shift brings zeros in).
    held = np.stack([np.zeros(len(labels), np.int64), np.full(len(labels), n_t, np.int64)])
    n_recentred = 0
    recentre = p.recentre and templates.n_templates > 0
    if recentre:
        if before is None:
            before = int(np.bincount(np.asarray(templates.trough)).argmax())
        tolerance = int(round(p.align_tolerance_ms * 1e-3 * sample_rate))
        delays = _template_delays(dense, sigma, before, tolerance, p)
        if delays.any() and snippets is events.snippets:
            snippets = snippets.copy()  # shifted here, not in the caller's events
        for k in np.flatnonzero(delays):
            d = int(delays[k])
            logger.debug("Refinement: template %d re-centred by %d samples.", k, d)
            dense[k] = shift(dense[k], d)
            # Its matched spikes' and misfits' snippets are windows of the template's.
            rows = np.flatnonzero((labels == k) | (labels == MISFIT - k))
            snippets[rows] = shift_events(snippets[rows], d)
            delay[rows] = d
            held[:, rows] = np.clip(held[:, rows] + d, 0, n_t)
            n_recentred += 1
    template_homes = np.abs(dense).max(axis=1).argmax(axis=1)
    whitener = SnippetWhitener(covariance, sigma, local)
    whitener.fit_temporal([(snippets[labels == k], int(template_homes[k]))
                           for k in range(templates.n_templates)])
    snippet_events = EventSnippets(snippets, whitener, local, n_t, n_channels)
    jitter = _amplitude_jitter(templates, labels, template_homes, dense, snippet_events, p)

    groups, n_split, n_dropped = _template_groups(templates, dense, counts, labels, samples,
                                                  template_homes, sigma, snippet_events,
                                                  jitter, p)
    new_groups = _event_groups(labels, homes, samples, n_t, sigma, snippet_events, p)
    groups += new_groups
    n_new = len(new_groups)
    if recentre:
        # The new groups too, with their events (no two groups share one).
        group_delays = _group_delays(groups, sigma, before, tolerance, p)
        if any(group_delays) and snippets is events.snippets:
            snippets = snippet_events.snippets = snippets.copy()
        for g, d in zip(groups, group_delays):
            if d:
                logger.debug("Refinement: a new group (n=%d, home %d) re-centred by %d "
                             "samples.", g.n_spikes, g.home, d)
                g.mean = shift(g.mean, d)
                snippets[g.rows] = shift_events(snippets[g.rows], d)
                delay[g.rows] += d
                held[:, g.rows] = np.clip(held[:, g.rows] + d, 0, n_t)
    n_rescaled = n_rebuilt = 0

    # Merges, most similar pairs first.
    refractory = int(round(p.refractory_ms * 1e-3 * sample_rate))
    same = int(round(0.2e-3 * sample_rate))
    owners, parents = _owners_and_parents(groups, labels, templates.n_templates)
    max_lag = int(round(p.merge_max_lag_ms * 1e-3 * sample_rate))
    positions = np.asarray(positions, dtype=np.float64)
    # `copies`: the templates found to be copies of one shape at two amplitudes.
    # `apart`: the pairs alike in waveform that their spikes told apart (`kept_apart`).
    valid = [(int(held[0, g.rows].max()), int(held[1, g.rows].min())) if len(g.rows)
             else (0, n_t) for g in groups]
    delays = [int(np.median(delay[g.rows])) if len(g.rows) else 0 for g in groups]
    coincident = coincident_matches(groups, samples, labels, counts, template_homes, positions,
                                    same, p) if p.drop_duplicates else None
    pairs, copies, apart = alike_pairs(groups, owners, parents, snippet_events, sigma,
                                       positions, max_lag, samples, jitter, p, valid, delays,
                                       coincident)
    alive, n_merged = merge_groups(groups, pairs, owners, snippet_events, refractory, same,
                                   n_samples)
    kept = [g for g, a in zip(groups, alive) if a]
    if p.drop_duplicates and kept:
        # After the merges: a residual group of a template's own misfits (at its spikes)
        # joined that template, and made its waveform better.
        kept_owners = [o for o, a in zip(owners, alive) if a]
        drop = set(duplicates(kept, kept_owners, samples, labels, counts, template_homes,
                              positions, same, p, cluster_ids=templates.cluster_ids))
        for i in drop:
            if kept[i].residual and kept[i].cluster_id is None:
                n_new -= 1
            else:
                n_dropped += 1
        kept = [g for i, g in enumerate(kept) if i not in drop]
    if p.rebuild:
        index = {int(c): k for k, c in enumerate(templates.cluster_ids)}
        for g in kept:
            # A kept template (not merged, not a copy of an amplitude split: the copies
            # are scaled from their parent's mean on purpose) after the merges, which
            # compare the waveforms the pass matched with.
            if g.cluster_id is None or g.cluster_id in copies or g.parent >= 0:
                continue
            k = index[int(g.cluster_id)]
            rebuilt = _rebuilt(g, k, int(templates.n_spikes[k]), dense, snippet_events, p)
            if rebuilt is None:
                continue
            logger.debug("Refinement: template %d (cluster %d, %d channels) rebuilt from %d "
                         "of its matched spikes (its waveform averaged %d).", k, g.cluster_id,
                         len(templates.channels(k)), len(rebuilt[1]),
                         int(templates.n_spikes[k]))
            g.mean, g.rows = rebuilt
            # Its channels are chosen by the noise of this mean (`build_templates`), and the
            # next refinement knows how many spikes it averaged.
            g.n_spikes = g.n_averaged = len(g.rows)
            g.scale = 1.0  # the spikes' own mean amplitude
            n_rebuilt += 1
    if window_means is not None:
        # The snippets' means get the channels beyond the snippets' (see `phy_tmatch.means`):
        # each event's window starts where its snippet did (a misfit of template k, like
        # its matched spikes, at k's trough; a residual event at `before`).
        troughs = np.asarray(templates.trough)
        kinds = np.where(labels >= 0, labels, np.where(labels <= MISFIT, MISFIT - labels, -1))
        starts = samples - np.where(kinds >= 0, troughs[np.maximum(kinds, 0)],
                                    window_means.before) - delay
        outside = np.ones(n_channels, dtype=bool)
        for g in kept:
            outside[:] = True
            outside[local[g.snippet_home]] = False
            # A split part alike to its template has that template's far field
            # (`with_far_field`): the mean of its few windows there was worse (units 89
            # and 130 of the 200 s, 1024-channel recording, co-located, took each other's
            # spikes).
            if g.snippet_mean and len(g.rows) and not g.mean[:, outside].any():
                g.mean = window_means.widen(g.mean, starts[g.rows], local[g.snippet_home],
                                            sigma, positions, own=kinds[g.rows])
    # Rescaled after the merges, which compare the waveforms as the pass matched them:
    # rescaling first moved neighbouring weak units within the merge's amplitude ratio
    # (1024 channels: 5 units lost).
    for g in kept:
        if g.cluster_id is not None and g.scale != 1.0:
            g.mean = g.mean * g.scale
            n_rescaled += 1
            logger.debug("Refinement: rescale %s by %.3f.", g.label(), g.scale)
    ids = []
    # Two units of one shape, each a template scaled from the other's (split now, or kept
    # apart by their amplitudes): the pursuit's amplitude prior tells their spikes apart.
    is_copy = [g.amplitude_copy or g.cluster_id in copies for g in kept]
    position = {id(g): n for n, g in enumerate(kept)}
    kept_apart = [(position[id(groups[i])], position[id(groups[j])]) for i, j in apart
                  if id(groups[i]) in position and id(groups[j]) in position]
    for g in kept:
        if g.cluster_id is None:
            g.cluster_id = next_id
            next_id += 1
            logger.debug("Refinement: %s -> template c%d.", g.label(), g.cluster_id)
        ids.append(g.cluster_id)
    changed = bool(n_split or n_new or n_merged or n_dropped or n_rescaled or n_rebuilt
                   or n_recentred)
    logger.info("Template refinement: %d split, %d new, %d merged, %d dropped, %d rescaled, "
                "%d rebuilt, %d re-centred: %d -> %d templates.", n_split, n_new, n_merged,
                n_dropped, n_rescaled, n_rebuilt, n_recentred, templates.n_templates, len(kept))
    return Bunch(
        means=np.stack([g.mean for g in kept]) if kept else np.zeros((0, n_t, n_channels)),
        n_spikes=np.array([g.counted(copies) for g in kept], dtype=np.int64),
        cluster_ids=np.array(ids, dtype=np.int64), changed=changed, n_split=n_split,
        amplitude_copies=np.array([i for i, c in zip(ids, is_copy) if c], dtype=np.int64),
        kept_apart=np.array([(ids[a], ids[b]) for a, b in kept_apart],
                            dtype=np.int64).reshape(-1, 2),
        n_new=n_new, n_merged=n_merged, n_dropped=n_dropped, n_rescaled=n_rescaled,
        n_rebuilt=n_rebuilt, n_recentred=n_recentred)
