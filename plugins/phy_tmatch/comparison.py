"""Comparisons of the refinement's groups, shared with `phy_tmatch.consolidate`.

- Waveforms: `similarity` (best cosine over lags, with `shift`), `indistinct`
  (two means within their noise), `beyond_scale_and_shift` (how much two means
  differ beyond a scale and a fraction of a sample).
- Snippets: `spread` (their variance around their mean), `compare_snippets`
  (two groups' events on their common channels).
- Spike trains: `coincidences`, `refractory_conflict` (too many close pairs for
  one unit), `duplicates` (groups made of other templates' spikes seen again).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .groups import Group
    from .refine import RefineParameters
    from .snippet_whitener import SnippetWhitener

logger = logging.getLogger("phy")


# -- Waveforms and snippets -------------------------------------------------------------------


def beyond_scale_and_shift(m_a: np.ndarray, m_b: np.ndarray, n_t: int, dims: np.ndarray,
                           noise: float, p: RefineParameters,
                           whole_shift: int = 0) -> tuple[float, float]:
    """How much two whitened means differ beyond a scale and a fraction of a sample.

    `m_a`, `m_b`: flat ``(n_t * L,)`` means (time-major); `noise`: the variance of
    their difference per dimension. The difference on `dims` less its
    least-squares fit by the mean waveform (an amplitude within the merge's
    ratio) and its time derivative (a shift of at most half a sample: events of
    a weak unit are aligned on a noisy trough); (chi-square statistic, bar).
    With `whole_shift`, `m_b` is first delayed by the number of samples, up to
    that many, that fits best: the pursuit dates a spike to a whole sample, and
    a unit whose trough falls between two samples has its spikes dated on either
    (parts one sample apart, the same unit: 10 false splits of the 1024 channels).
    """
    best = None
    for lag in range(-whole_shift, whole_shift + 1):
        b = m_b if lag == 0 else shift(m_b.reshape(n_t, -1), lag).reshape(-1)
        mean = 0.5 * (m_a + b)
        slope = np.gradient(mean.reshape(n_t, -1), axis=0).reshape(-1)
        delta = m_a[dims] - b[dims]
        basis = np.stack([mean[dims], slope[dims]], axis=1)
        coef = np.linalg.lstsq(basis, delta, rcond=None)[0]
        # m_a / m_b = (1 + c/2) / (1 - c/2) within the ratio.
        r = p.merge_amplitude_ratio
        coef = np.clip(coef, [-2 * (r - 1) / (r + 1), -0.5], [2 * (r - 1) / (r + 1), 0.5])
        stat = float(((delta - basis @ coef) ** 2).sum()) / noise
        best = stat if best is None else min(best, stat)
    n_free = max(len(dims) - 2 - (whole_shift > 0), 1)
    return best, n_free + p.split_significance * np.sqrt(2.0 * n_free)



def similarity(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[float, float, int]:
    """Best cosine similarity of two ``(n_t, C)`` waveforms over lags; (cos, |a|/|b|, lag)."""
    best, best_lag = -1.0, 0
    n_t = a.shape[0]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0, 0.0, 0
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            v = float((a[lag:] * b[:n_t - lag]).sum())
        else:
            v = float((a[:n_t + lag] * b[-lag:]).sum())
        if v > best:
            best, best_lag = v, lag
    return best / (na * nb), na / nb, best_lag


def shift(b: np.ndarray, lag: int) -> np.ndarray:
    """`b` (n_t, C) delayed by `lag` samples (zeros shifted in)."""
    out = np.zeros_like(b)
    if lag >= 0:
        out[lag:] = b[:len(b) - lag]
    else:
        out[:lag] = b[-lag:]
    return out


def spread(x: np.ndarray, p: RefineParameters) -> float:
    """The variance of whitened snippets `x` around their mean where their mean stands out.

    In noise units, so 1 for a unit whose spikes differ only by the noise; more
    when they vary in amplitude or alignment (weak units' events, aligned on a
    noisy trough, jitter), which a test of their mean must allow for.
    """
    if len(x) < 3:
        return 1.0
    mean = x.mean(axis=0)
    n_dims = int(np.clip((np.abs(mean) >= p.signal_floor).sum(), min(20, x.shape[1]),
                         p.max_dims))
    dims = np.argsort(-np.abs(mean), kind="stable")[:n_dims]
    return max(1.0, float(x[:, dims].var(axis=0, ddof=1).mean()))


def indistinct(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int, home: int, whitener,
               local: np.ndarray, p: RefineParameters, spread_a: float = 1.0,
               spread_b: float = 1.0) -> bool:
    """Whether two mean waveforms differ by no more than their noise (the split test's bar).

    `spread_a`, `spread_b`: each group's variance around its mean, in noise units
    (`spread`).
    """
    chans = local[home]
    wa = whitener(a[None, :, chans], home)[0]
    wb = whitener(b[None, :, chans], home)[0]
    signal = np.maximum(np.abs(wa), np.abs(wb))
    n_dims = int(np.clip((signal >= p.signal_floor).sum(), min(20, len(signal)), p.max_dims))
    dims = np.argsort(-signal, kind="stable")[:n_dims]
    stat = float(((wa[dims] - wb[dims]) ** 2).sum()) / (spread_a / max(n_a, 1)
                                                        + spread_b / max(n_b, 1))
    logger.debug("Refinement: indistinct test n=%d/%d: stat %.1f, bar %.1f (%d dims).", n_a, n_b,
                 stat, n_dims + p.split_significance * np.sqrt(2.0 * n_dims), n_dims)
    return stat < n_dims + p.split_significance * np.sqrt(2.0 * n_dims)


def _fill_missing(x_a: np.ndarray, x_b: np.ndarray, lag: int, valid_a, valid_b) -> tuple:
    """`x_a`, `x_b` ``(n, n_t, L)`` with the samples outside each one's `valid` range set to
    the other's mean (aligned by `lag`: ``a[t + lag]`` is ``b[t]``) where it has one.

    A re-centred group's snippets hold zeros where they were shifted (`phy_tmatch.refine`);
    the temporal whitening would spread that difference over the samples both hold.
    """
    n_t = x_a.shape[1]
    out = []
    for x, valid, other, other_valid, offset in ((x_a, valid_a, x_b, valid_b, -lag),
                                                 (x_b, valid_b, x_a, valid_a, lag)):
        if valid is None or (valid[0] <= 0 and valid[1] >= n_t):
            out.append(x)
            continue
        x = x.copy()
        mean = other.mean(axis=0)
        lo, hi = other_valid if other_valid is not None else (0, n_t)
        for t in (*range(0, valid[0]), *range(valid[1], n_t)):
            u = t + offset  # the other's sample
            x[:, t] = mean[u] if lo <= u < hi and 0 <= u < n_t else 0.0
        out.append(x)
    return out[0], out[1]


def compare_snippets(x_a: np.ndarray, home_a: int, x_b: np.ndarray, home_b: int, lag: int,
                     whitener: SnippetWhitener, local: np.ndarray,
                     p: RefineParameters, separation: bool = False,
                     whole_shift: int = 0, valid_a: tuple[int, int] | None = None,
                     valid_b: tuple[int, int] | None = None) -> tuple:
    """Whether two groups of snippets have means that differ by no more than their noise.

    `x_a`, `x_b`: the groups' snippets ``(n, n_t, L)`` on the local channels of
    their homes; compared on the channels both have, `x_b` delayed by `lag`. The
    means of the snippets, not the templates: a weak unit's template keeps only
    its few strongest channels, and its zeros elsewhere differ from a mean over
    its events by more than their noise. The chi-square bar of the split test,
    in units of the groups' own spread (`spread`). `valid_a`, `valid_b`: the
    samples ``[lo, hi)`` where each group's snippets hold data (a re-centred
    group's were shifted, zeros shifted in: `phy_tmatch.refine`); only the
    samples both hold are compared, each group's others set to the other's mean
    before the whitening (which mixes samples).

    Returns
    -------
    (indistinct, cosine, ratio)
        The test's verdict, and the cosine similarity and norm ratio of the two
        means on the dimensions where they stand out of the noise; with
        `separation`, also the difference of the means beyond a scale and a
        shift in standard deviations of one snippet (0 when not tested).
    """
    common = np.intersect1d(local[home_a], local[home_b])
    if len(common) < 4 or min(len(x_a), len(x_b)) < 3:
        return (False, 0.0, 0.0, 0.0) if separation else (False, 0.0, 0.0)
    pos_a = np.searchsorted(local[home_a], common, sorter=np.argsort(local[home_a]))
    pos_a = np.argsort(local[home_a])[pos_a]
    pos_b = np.argsort(local[home_b])[np.searchsorted(local[home_b], common,
                                                      sorter=np.argsort(local[home_b]))]
    x_a, x_b = _fill_missing(x_a[:, :, pos_a], x_b[:, :, pos_b], lag, valid_a, valid_b)
    wa = whitener.on_channels(x_a, common)
    wb = whitener.on_channels(x_b, common)
    n_t = wa.shape[1]
    # The samples both hold (in `b`'s time, `a`'s shifted by the lag).
    lo, hi = max(0, -lag), min(n_t, n_t - lag)
    for valid, offset in ((valid_a, -lag), (valid_b, 0)):
        if valid is not None:
            lo, hi = max(lo, valid[0] + offset), min(hi, valid[1] + offset)
    if hi - lo < 4:
        return (False, 0.0, 0.0, 0.0) if separation else (False, 0.0, 0.0)
    wa, wb = wa[:, lo + lag:hi + lag], wb[:, lo:hi]
    n_t = wa.shape[1]
    wa, wb = wa.reshape(len(wa), -1), wb.reshape(len(wb), -1)
    m_a, m_b = wa.mean(axis=0), wb.mean(axis=0)
    signal = np.maximum(np.abs(m_a), np.abs(m_b))
    n_dims = int(np.clip((signal >= p.signal_floor).sum(), min(20, len(signal)), p.max_dims))
    dims = np.argsort(-signal, kind="stable")[:n_dims]
    v_a = max(1.0, float(wa[:, dims].var(axis=0, ddof=1).mean()))
    v_b = max(1.0, float(wb[:, dims].var(axis=0, ddof=1).mean()))
    n_a2, n_b2 = float(np.linalg.norm(m_a[dims])), float(np.linalg.norm(m_b[dims]))
    cos = float(m_a[dims] @ m_b[dims]) / max(n_a2 * n_b2, 1e-12)
    noise = v_a / len(wa) + v_b / len(wb)
    stat, bar = beyond_scale_and_shift(m_a, m_b, n_t, dims, noise, p, whole_shift)
    logger.debug("Refinement: snippet test n=%d/%d: stat %.1f, bar %.1f (%d dims), cosine "
                 "%.3f.", len(wa), len(wb), stat, bar, n_dims, cos)
    if separation:
        return (stat < bar, cos, n_a2 / max(n_b2, 1e-12),
                float(np.sqrt(stat * noise / (0.5 * (v_a + v_b)))))
    return stat < bar, cos, n_a2 / max(n_b2, 1e-12)


# -- Spike trains --------------------------------------------------------------------------


def coincidences(s1: np.ndarray, s2: np.ndarray, window: int, same: int) -> int:
    """Pairs with ``same < |t1 - t2| <= window``."""
    s2 = np.sort(s2)
    count = 0
    for a, b in ((-window, -same - 1), (same + 1, window)):
        lo = np.searchsorted(s2, s1 + a, side="left")
        hi = np.searchsorted(s2, s1 + b, side="right")
        count += int((hi - lo).sum())
    return count


def refractory_conflict(s1, s2, window: int, same: int, duration: int) -> bool:
    """Whether two spike trains have too many pairs within `window` for one unit.

    Pairs closer than `same` samples are one spike seen twice (a residual event
    where a template matched a spike poorly), not two.
    """
    expected = len(s1) * len(s2) * 2 * (window - same) / max(duration, 1)
    observed = coincidences(s1, s2, window, same)
    return observed > max(2.0, 0.3 * expected)


class MatchedSpikes:
    """A pass's sampled matched spikes in time order, to find those near given events.

    `samples`, `labels`: the pass's events (matched spikes have a template index
    ``>= 0``); `counts`: every template's matched spikes (the events are a sample
    of them). ``weight[k]``: the spikes each sampled spike of template ``k``
    stands for (``counts / sampled``), so that counts of coincidences are unbiased.
    """

    def __init__(self, samples: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> None:
        matched = np.flatnonzero(labels >= 0)
        order = np.argsort(samples[matched], kind="stable")
        self.samples, self.kinds = samples[matched][order], labels[matched][order]
        sampled = np.bincount(self.kinds, minlength=len(counts))
        self.weight = np.asarray(counts, dtype=np.float64) / np.maximum(sampled, 1)

    def near(self, spikes: np.ndarray, same: int) -> np.ndarray:
        """The templates of every matched spike within `same` samples of one of `spikes`."""
        lo = np.searchsorted(self.samples, spikes - same, side="left")
        hi = np.searchsorted(self.samples, spikes + same, side="right")
        width = hi - lo
        index = np.repeat(lo - np.cumsum(width) + width, width) + np.arange(width.sum())
        return self.kinds[index]


def duplicates(groups: list[Group], owners: list[set[int]], samples: np.ndarray, labels: np.ndarray,
               counts: np.ndarray, template_homes: np.ndarray, positions: np.ndarray,
               same: int, p: RefineParameters, cluster_ids=None) -> list[int]:
    """Indices of the groups whose spikes are mostly other templates' spikes, seen again.

    A spike the pursuit matched with a template of another unit's shape leaves
    a residual, the difference of the two, which the residual events collect
    and a later round makes a template of: the same spikes twice, a false
    unit (most false clusters of the 1024 channels). Independent units rarely
    fire within `same` samples of each other (a few % of a unit's spikes,
    whatever their shapes), so a group more than ``p.duplicate_fraction`` of
    whose spikes are within `same` samples of spikes of templates other than
    its own (`owners`: the set of templates whose spikes it holds), whose peak
    channels lie within ``p.merge_radius_um`` of its home, is not a unit (after
    the merges: a group of a template's own misfits joins that template and
    makes its waveform better). The groups are taken from
    the smallest: two copies of one unit's spikes lose the smaller one; a
    template dropped no longer counts. Matched spikes are a sample of each
    template's (`counts`: all of them): each counts for the spikes it stands
    for (``counts / sampled``), so that the count of coincidences is unbiased
    and a sample does not hide a duplicate. `cluster_ids` (of the templates)
    name them in the debug log.
    """
    matched = MatchedSpikes(samples, labels, counts)
    weight = matched.weight
    gone = np.zeros(len(counts), dtype=bool)
    drop = []
    for i in sorted(range(len(groups)), key=lambda i: (groups[i].n_spikes, i)):
        g = groups[i]
        spikes = np.asarray(g.samples)
        if len(spikes) == 0:
            continue
        own = np.array(sorted(owners[i]), dtype=np.int64)
        near = np.linalg.norm(positions[template_homes] - positions[g.home], axis=1) \
            <= p.merge_radius_um
        kinds = matched.near(spikes, same)
        ok = near[kinds] & ~gone[kinds] & ~np.isin(kinds, own)
        covered = float(weight[kinds[ok]].sum())
        if covered > p.duplicate_fraction * len(spikes):
            drop.append(i)
            if logger.isEnabledFor(logging.DEBUG):
                by = np.bincount(kinds[ok], weights=weight[kinds[ok]], minlength=len(counts))
                top = np.argsort(by)[::-1][:3]
                logger.debug("Refinement: drop %s: %.0f of its %d spikes are spikes of %s seen "
                             "again (duplicate).", g.label(), covered, len(spikes), ", ".join(
                                 f"c{int(cluster_ids[k]) if cluster_ids is not None else k}:"
                                 f"{by[k]:.0f}" for k in top if by[k] > 0))
            if g.parent < 0:  # not a part of a split (whose parent's other part stays)
                gone[own] = True
    return sorted(drop)
