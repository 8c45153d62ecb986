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
def _distinct(peak, saddle, prominence, tall_peak, tall_prominence):
    """Whether a strong peak stays a spike of its own at its saddle with a higher peak."""
    if peak <= 1.0:
        return False
    rise = peak - saddle
    return rise >= prominence or (peak >= tall_peak and rise >= tall_prominence)


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
def _flood(points, a, b, data_t, weak, scale, prominence, tall_peak, tall_prominence, indptr,
           indices, join, loc, label):
    """Watershed of ``points[a:b]``: ``label[p - a]`` = local index of p's basin peak.

    `loc` is an all -1 scratch array of n_channels (restored on return).
    Returns the number of basins. The strong points are flooded first; if they
    form one basin, or once the strong basins have merged into one, the
    component does not split and the rest is not flooded.
    """
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
                if not _distinct(values[low], v, prominence, tall_peak, tall_prominence):
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
def _split_kernel(points, offsets, data_t, weak, scale, prominence, tall_peak, tall_prominence,
                  indptr, indices, join):
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
        n_parts[i] = _flood(points, a, b, data_t, weak, scale, prominence, tall_peak,
                            tall_prominence, indptr, indices, join, loc, label[a:b])
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
                     tall_peak: float | None = None,
                     tall_prominence: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
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

    Returns
    -------
    (points, offsets)
        The same points, regrouped: components sorted by their first point,
        points in scan order within each (as the flood fill's). The inputs
        themselves when nothing splits.
    """
    scale = 1.0 / (np.asarray(strong, dtype=np.float64) - np.asarray(weak, dtype=np.float64))
    return _split_kernel(np.ascontiguousarray(points, dtype=np.int64),
                         np.ascontiguousarray(offsets, dtype=np.int64),
                         np.ascontiguousarray(data_t),
                         np.ascontiguousarray(weak, dtype=np.float64), scale,
                         float(prominence), np.inf if tall_peak is None else float(tall_peak),
                         float(tall_prominence), indptr, indices, int(join_size))
