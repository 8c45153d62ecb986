"""Split connected components at their distinct peaks: one spike per prominent peak.

Why: on a dense probe, a spike crosses the weak threshold over tens to hundreds
of channels, and two spikes of different units a few samples and ~100 um apart
fall into one flood-fill component: SpikeDetekt would report one spike for
both. On the 1024-channel benchmark recording (``benchmarks/detect.py``,
dense1024, 20 s) that is 5% of the spikes of the units with SNR >= 5; with
the split (prominence 1) the recall of those units goes from 0.932 to 0.970,
for 4% more detections of which 62 (0.4%) match no true spike.

How: the values are the normalised traces ``n = (data_t - weak) / (strong -
weak)`` (per channel; a point is strong when ``n > 1``). Inside a component,
a *watershed by flooding*: the points are visited from the highest value
down; a point with no higher neighbour starts a basin (its peak), a point with
higher neighbours joins the basin of the highest one (steepest ascent). When
a point touches two basins, it is their saddle: the basin with the lower
peak is merged into the other unless its peak is *distinct*: strong, and
rising at least `prominence` above the saddle (persistence-based merging, as
in ToMATo), or, for a *tall* peak (at least `tall_peak` above the weak
threshold), at least `tall_prominence`. What is left are the component's
distinct strong peaks; each basin becomes a component, i.e. a spike with its
own mask and centroid time.

Why tall peaks need less: a second local maximum of *one* spike is a noise
ripple on its footprint, and noise rarely makes one that both rises well
above the strong threshold and stands apart from the main peak, while a
second spike a few noise units high does (the two units' footprints add up
between them, so their saddle is high). On dense1024 (20 s), a peak at least
1.3 (5.25 noise std) high that rises 0.2 (0.5 std) above its saddle is
another spike about as often as not, where a lower peak with the same rise is
mostly noise. The tall rule (1.3, 0.3) finds 29 more spikes of the units with
SNR >= 5 (pooled recall 0.9757 -> 0.9784, with the extractor's peak
centroid) for 70 more detections that match no true spike (798 -> 868,
+9%); at 384 channels 1 more spike for 13 more false ones, at 32 channels
nothing changes.

Where the peaks are (`tall_apart`, `far_peak`, `lead`). A peak is *apart*
from the higher peak it meets at its saddle when its channel is neither that
peak's channel nor adjacent to it (in the flood fill's adjacency). A spike's
footprint falls off smoothly around its peak channel and lags it away from
there (the spike propagates), so its own noise ripples lie on the peak
channel or next to it (a broad trough's wiggle 2-3 samples from its top is
the commonest), or on the far, *later* flanks. Three rules follow:

- the tall rule applies only to apart peaks (`tall_apart`): on dense1024
  (20 s) the 19 tall peaks it split on the higher peak's channel or a
  neighbour were all noise (867 -> 848 false detections, no spike lost);
- an apart peak at least `far_peak` (2.0, 7 noise std) high is a spike of
  its own whatever its saddle: the footprint of a spike is steep where it is
  that high, so noise does not make it a second local maximum two channels
  away (11 more spikes of the units with SNR >= 5, 10 more false ones);
- an apart strong peak at least `lead` (3) samples *before* the higher peak
  is a spike of its own whatever its saddle: it cannot be the higher
  spike's lagging footprint (7 more spikes, 36 more false ones).

The misses these rules target are overlaps: a spike whose peak is a local
maximum of a component shared with a larger spike, below the saddle rules.
Together, on dense1024 (20 s) the pooled recall of the units with SNR >= 5
goes 0.9784 -> 0.9800 (238 -> 220 missed of 10995) for 867 -> 894 false
detections; on another recording (seed 1) 0.9776 -> 0.9788 (829 -> 864
false), on 200 s 0.9749 -> 0.9759 (8468 -> 8754 false); at 384 channels
one spike more for 8 fewer false detections (524 -> 516), at 32 channels the
same recall for one more (43 -> 44). Of the 220 misses left, 184 never cross the
strong threshold near their unit's peak channel, 21 are the top of a
component whose one detection went to another spike as close in time (two
spikes, one peak), 10 have a low peak of their own (1.0-1.3 high, or on the
larger spike's channel or a neighbour) that the rules leave merged: a peak
that low, apart and with a rise under 1 is noise ten to twenty times out of
every real spike, and 5 have no peak of their own.

Neighbours are those of the flood fill (same or adjacent channel, at most
`join_size` samples apart), so a basin is always connected and the split
components partition the original one. A component with fewer than two
strong local maxima cannot split; finding them takes a look at each strong
point's neighbourhood in `data_t`, and only the (few, large) components with
several are flooded (at 1024 channels, ~12 ms per 1 s chunk on one core, ~1/6
of its components).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["split_components"]


@njit(cache=True, inline="always")
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True, inline="always")
def _neighbours(c1, c2, indptr, indices):
    """Whether channels `c1` and `c2` are the same or adjacent."""
    if c1 == c2:
        return True
    for k in range(indptr[c1], indptr[c1 + 1]):  # noqa: SIM110 (a loop that numba compiles)
        if indices[k] == c2:
            return True
    return False


@njit(cache=True, inline="always")
def _distinct(peak, saddle, lead, c_low, c_high, prominence, tall_peak, tall_prominence,
              tall_apart, far_peak, min_lead, indptr, indices):
    """Whether a strong peak (on channel `c_low`, `lead` samples before the higher peak it
    meets at `saddle`, on channel `c_high`) stays a spike of its own."""
    if peak <= 1.0:
        return False
    rise = peak - saddle
    if rise >= prominence:
        return True
    tall = peak >= tall_peak and rise >= tall_prominence
    if not (tall or peak >= far_peak or lead >= min_lead):
        return False
    apart = not _neighbours(c_low, c_high, indptr, indices)
    return apart or (tall and not tall_apart)


@njit(cache=True)
def _n_strong_maxima(points, a, b, data_t, weak, scale, indptr, indices, join):
    """How many strong points of ``points[a:b]`` have no higher neighbour (0, 1, or 2: more)."""
    n_s = data_t.shape[0]
    count = 0
    for p in range(a, b):
        s = points[p, 0]
        c = points[p, 1]
        v = (data_t[s, c] - weak[c]) * scale[c]
        if v <= 1.0:
            continue
        peak = True
        for k in range(indptr[c] - 1, indptr[c + 1]):
            ch = c if k < indptr[c] else indices[k]
            for ss in range(max(s - join, 0), min(s + join + 1, n_s)):
                # Points outside the component are below the weak threshold: lower.
                if (ss != s or ch != c) and (data_t[ss, ch] - weak[ch]) * scale[ch] > v:
                    peak = False
                    break
            if not peak:
                break
        if peak:
            count += 1
            if count >= 2:
                return count
    return count


@njit(cache=True)
def _flood(points, a, b, data_t, weak, scale, rules, tall_apart, min_lead, indptr, indices, join,
           loc, label):
    """Watershed of ``points[a:b]``: ``label[p - a]`` = local index of p's basin peak.

    `rules` is ``(prominence, tall_peak, tall_prominence, far_peak)`` (see `_distinct`).
    `loc` is an all -1 scratch array of n_channels (restored on return).
    Returns the number of basins. The strong points are flooded first; if they
    form one basin, or once the strong basins have merged into one, the
    component does not split and the rest is not flooded.
    """
    prominence, tall_peak, tall_prominence, far_peak = rules
    m = b - a
    # Local grid over the component's samples and channels, filled as points are visited.
    s0 = points[a, 0]
    s1 = points[a, 0]
    n_loc = 0
    max_degree = 0
    for p in range(a, b):
        s0 = min(s0, points[p, 0])
        s1 = max(s1, points[p, 0])
        c = points[p, 1]
        max_degree = max(max_degree, indptr[c + 1] - indptr[c])
        if loc[c] < 0:
            loc[c] = n_loc
            n_loc += 1
    grid = np.full((n_loc, s1 - s0 + 1), -1, dtype=np.int32)
    values = np.empty(m, dtype=np.float64)
    for k in range(m):
        s = points[a + k, 0]
        c = points[a + k, 1]
        values[k] = (data_t[s, c] - weak[c]) * scale[c]
    parent = np.arange(m)
    # The distinct basins around a point: at most one per neighbour.
    roots = np.empty((max_degree + 1) * (2 * join + 1), dtype=np.int64)
    n_strong_basins = 0
    split = True
    for phase in range(2):
        # Phase 0: the strong points (value > 1), phase 1: the others; each from the top.
        chosen = np.flatnonzero((values > 1.0) == (phase == 0))
        if phase == 1 and n_strong_basins <= 1:
            split = False
            break
        order = chosen[np.argsort(-values[chosen])]
        for k in order:
            s = points[a + k, 0]
            c = points[a + k, 1]
            v = values[k]
            best = -1
            n_roots = 0
            for kk in range(indptr[c] - 1, indptr[c + 1]):
                ch = c if kk < indptr[c] else indices[kk]
                lc = loc[ch]
                if lc < 0:
                    continue
                for ss in range(max(s - join, s0), min(s + join, s1) + 1):
                    q = grid[lc, ss - s0]
                    if q < 0:
                        continue  # not in the component, or lower (not visited yet)
                    if best < 0 or values[q] > values[best]:
                        best = q
                    r = _find(parent, q)
                    seen = False
                    for j in range(n_roots):
                        if roots[j] == r:
                            seen = True
                            break
                    if not seen:
                        roots[n_roots] = r
                        n_roots += 1
            grid[loc[c], s - s0] = k
            if best < 0:
                # A new basin, k its peak (parent[k] == k).
                if v > 1.0:
                    n_strong_basins += 1
                continue
            parent[k] = _find(parent, best)
            # k is a saddle between the basins it touches: merge the non-prominent ones.
            for j in range(n_roots):
                r1 = _find(parent, roots[j])
                r2 = _find(parent, k)
                if r1 == r2:
                    continue
                low, high = (r1, r2) if values[r1] < values[r2] else (r2, r1)
                if not _distinct(values[low], v, points[a + high, 0] - points[a + low, 0],
                                 points[a + low, 1], points[a + high, 1], prominence,
                                 tall_peak, tall_prominence, tall_apart, far_peak, min_lead,
                                 indptr, indices):
                    parent[low] = high
                    if values[low] > 1.0:
                        n_strong_basins -= 1
            if phase == 1 and n_strong_basins <= 1:
                split = False
                break
        if not split:
            break
    for p in range(a, b):
        loc[points[p, 1]] = -1
    if not split:
        label[:] = 0
        return 1
    n_basins = 0
    for k in range(m):
        label[k] = _find(parent, k)
        if label[k] == k:
            n_basins += 1
    return n_basins


@njit(cache=True)
def _split_kernel(points, offsets, data_t, weak, scale, rules, tall_apart, min_lead, indptr,
                  indices, join):
    n = points.shape[0]
    n_comp = offsets.shape[0] - 1
    loc = np.full(data_t.shape[1], -1, dtype=np.int64)
    label = np.empty(n, dtype=np.int64)  # basin peak of each point, local to its component
    n_parts = np.ones(n_comp, dtype=np.int64)
    for i in range(n_comp):
        a = offsets[i]
        b = offsets[i + 1]
        if _n_strong_maxima(points, a, b, data_t, weak, scale, indptr, indices, join) < 2:
            label[a:b] = 0
            continue
        n_parts[i] = _flood(points, a, b, data_t, weak, scale, rules, tall_apart, min_lead,
                            indptr, indices, join, loc, label[a:b])
    total = 0
    for i in range(n_comp):
        total += n_parts[i]
    if total == n_comp:
        return points, offsets
    # Each component's basins in order of their first point (scan order), then all of
    # them sorted by their first point, as the flood fill orders its components.
    n_channels = data_t.shape[1]
    part_start = np.empty(total, dtype=np.int64)  # first point of each part, in scan order
    part_size = np.zeros(total, dtype=np.int64)
    part_of = np.empty(n, dtype=np.int64)
    slot = np.full(n, -1, dtype=np.int64)  # part index of a basin peak (by global point)
    j = 0
    for i in range(n_comp):
        a = offsets[i]
        for p in range(a, offsets[i + 1]):
            peak = a + label[p]
            if slot[peak] < 0:
                slot[peak] = j
                part_start[j] = points[p, 0] * n_channels + points[p, 1]
                j += 1
            part_of[p] = slot[peak]
            part_size[slot[peak]] += 1
    rank = np.empty(total, dtype=np.int64)
    rank[np.argsort(part_start)] = np.arange(total)  # distinct: parts share no point
    new_offsets = np.zeros(total + 1, dtype=np.int64)
    for j in range(total):
        new_offsets[rank[j] + 1] = part_size[j]
    for j in range(total):
        new_offsets[j + 1] += new_offsets[j]
    fill = new_offsets[:-1].copy()
    new_points = np.empty_like(points)
    for p in range(n):
        r = rank[part_of[p]]
        new_points[fill[r], 0] = points[p, 0]
        new_points[fill[r], 1] = points[p, 1]
        fill[r] += 1
    return new_points, new_offsets


def split_components(points: np.ndarray, offsets: np.ndarray, data_t: np.ndarray,
                     weak: np.ndarray, strong: np.ndarray, prominence: float,
                     indptr: np.ndarray, indices: np.ndarray, join_size: int,
                     tall_peak: float | None = None, tall_prominence: float = 0.0,
                     tall_apart: bool = False, far_peak: float | None = None,
                     lead: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split each component at its prominent strong peaks.

    Parameters
    ----------
    points, offsets : arrays
        Components as from `FloodFillDetector.detect_flat` (points in scan
        order within a component).
    data_t : (n_samples, n_channels) array
        The thresholder-transformed traces the crossings come from.
    weak, strong : (n_channels,) float arrays
        The thresholds (strong > weak).
    prominence : float
        How far (in units of ``strong - weak``) the lower of two peaks must
        rise above their saddle to stay a spike of its own.
    indptr, indices : arrays
        The symmetric channel adjacency (CSR, no self-loops).
    join_size : int
        The flood fill's time tolerance.
    tall_peak, tall_prominence : float or None, float
        A *tall* peak, at least `tall_peak` above the weak threshold (in the
        same units), stays a spike of its own when it rises only
        `tall_prominence` above its saddle. ``None``: no such rule.
    tall_apart : bool
        Apply the tall rule only to a peak *apart* from the higher one: on a
        channel that is neither the higher peak's nor adjacent to it.
    far_peak : float or None
        A strong peak at least `far_peak` above the weak threshold (same
        units) and apart from the higher one is a spike of its own, whatever
        its saddle. ``None``: no such rule.
    lead : int or None
        A strong peak apart from the higher one and at least `lead` samples
        before it is a spike of its own, whatever its saddle. ``None``: no
        such rule.

    Returns
    -------
    (points, offsets)
        The same points, regrouped: components sorted by their first point,
        points in scan order within each (as the flood fill's). The inputs
        themselves when nothing splits.
    """
    scale = 1.0 / (np.asarray(strong, dtype=np.float64) - np.asarray(weak, dtype=np.float64))
    rules = (float(prominence), np.inf if tall_peak is None else float(tall_peak),
             float(tall_prominence), np.inf if far_peak is None else float(far_peak))
    # No lead reaches the chunk's length: a lead rule that never applies.
    min_lead = int(data_t.shape[0]) + 1 if lead is None else int(lead)
    return _split_kernel(np.ascontiguousarray(points, dtype=np.int64),
                         np.ascontiguousarray(offsets, dtype=np.int64),
                         np.ascontiguousarray(data_t),
                         np.ascontiguousarray(weak, dtype=np.float64), scale, rules,
                         bool(tall_apart), min_lead, indptr, indices, int(join_size))
