"""Flood-fill spike detection: connected components of threshold crossings.

A *crossing point* is a ``(sample, channel)`` pair where the transformed
traces exceed the weak threshold. Two crossing points are connected when
they are at most `join_size` samples apart and on the same or on adjacent
channels (the probe adjacency graph, made symmetric). A connected component
is a candidate spike; it is kept only if one of its points also crosses the
strong threshold (SpikeDetekt's double threshold).

Algorithm (why it scales to 1000+ channels): only the components with a
strong crossing are kept, and those hold a fraction of the crossings (at
1024 channels, ~200k of ~750k weak crossings per second: noise crossings of
the weak threshold are everywhere). So the components are grown from the
strong crossings, in numba: the strong crossings are found by scanning the
crossing mask 8 bytes at a time, and each not yet reached one starts a
breadth-first search over its weak neighbours (looked up directly in the
mask; a bitmap of the chunk, 1 bit per point, records what is reached). The
cost is ``O(n_kept_points * (degree + 1) * (2 * join_size + 1))``; weak
crossings of dropped components are never visited. Each component's points
are then sorted (scan order), and the components by their first point.

Then, optionally (`split_prominence`, `split_tall_peak`,
`split_tall_prominence`), each component is split at its distinct peaks
(`phy_detect.splitting`): on a dense probe, spikes of different units often
share one component.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from numba import njit

from phy_core.descriptors import Stage
from phy_core.errors import PhyError

__all__ = ["FloodFillDetector", "DetectionError", "adjacency_csr", "STAGES"]


class DetectionError(PhyError, ValueError):
    """Invalid input to the spike detector (shapes, adjacency, parameters)."""


# -- numba kernels -------------------------------------------------------------


@njit(cache=True)
def _grow_components(weak, strong, n_samples, n_channels, indptr, indices, join, n_weak):
    """Components of the flat uint8 crossing masks that hold a strong crossing.

    Returns ``(points, offsets)`` as `FloodFillDetector.detect_flat`.
    """
    n_total = n_samples * n_channels
    reached = np.zeros((n_total + 63) // 64, dtype=np.uint64)
    # Flat indices ``sample * n_channels + channel`` (their order is the scan order),
    # component after component; each component's part is its breadth-first queue.
    flat = np.empty(n_weak, dtype=np.int64)
    starts = np.empty(n_weak + 1, dtype=np.int64)
    n = 0
    n_comp = 0
    n_words = n_total // 8
    words = strong[:n_words * 8].view(np.uint64)
    for w in range(n_words + 1):
        if w < n_words and words[w] == 0:
            continue  # strong crossings are rare: skip 8 at a time
        for j in range(8 * w, min(8 * w + 8, n_total)):
            if not (strong[j] and weak[j]):
                continue
            bit = np.uint64(1) << np.uint64(j & 63)
            if reached[j >> 6] & bit:
                continue
            reached[j >> 6] |= bit
            starts[n_comp] = n
            n_comp += 1
            flat[n] = j
            n += 1
            head = n - 1
            while head < n:
                idx = flat[head]
                head += 1
                s = idx // n_channels
                c = idx - s * n_channels
                # The channel itself, then its neighbours.
                for k in range(indptr[c] - 1, indptr[c + 1]):
                    ch = c if k < indptr[c] else indices[k]
                    for ss in range(max(s - join, 0), min(s + join, n_samples - 1) + 1):
                        q = ss * n_channels + ch
                        if weak[q]:
                            bit = np.uint64(1) << np.uint64(q & 63)
                            if not (reached[q >> 6] & bit):
                                reached[q >> 6] |= bit
                                flat[n] = q
                                n += 1
    starts[n_comp] = n
    firsts = np.empty(n_comp, dtype=np.int64)
    for i in range(n_comp):
        flat[starts[i]:starts[i + 1]].sort()
        firsts[i] = flat[starts[i]]
    # Components never share a point: their first points are distinct.
    order = np.argsort(firsts)
    points = np.empty((n, 2), dtype=np.int64)
    offsets = np.zeros(n_comp + 1, dtype=np.int64)
    k = 0
    for r in range(n_comp):
        i = order[r]
        for p in range(starts[i], starts[i + 1]):
            s = flat[p] // n_channels
            points[k, 0] = s
            points[k, 1] = flat[p] - s * n_channels
            k += 1
        offsets[r + 1] = k
    return points, offsets


# -- adjacency -------------------------------------------------------------------


def adjacency_csr(
    probe_adjacency_list: Mapping[int, Iterable[int]] | None, n_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric channel adjacency as CSR arrays ``(indptr, indices)``.

    Self-loops are dropped (a channel is always connected to itself in the
    detector). Channels are column indices ``0..n_channels-1``; an index out
    of that range raises `DetectionError`.
    """
    neighbours: list[set[int]] = [set() for _ in range(n_channels)]
    if not isinstance(probe_adjacency_list or {}, Mapping):
        raise DetectionError(f"Probe adjacency: expected a dict {{channel: [neighbours]}}, "
                             f"got {type(probe_adjacency_list).__name__}.")
    for c, nbrs in (probe_adjacency_list or {}).items():
        if isinstance(nbrs, (str, bytes)) or not isinstance(nbrs, Iterable):
            raise DetectionError(f"Probe adjacency: the neighbours of channel {c!r} must be "
                                 f"a list or set of channels, got {nbrs!r}.")
        for ch in (c, *nbrs):
            if isinstance(ch, bool) or not isinstance(ch, (int, np.integer)):
                raise DetectionError(
                    f"Probe adjacency: channels must be integers, found {ch!r}."
                )
            if not 0 <= ch < n_channels:
                raise DetectionError(
                    f"Probe adjacency: channel {ch} is out of range for data with "
                    f"{n_channels} channels (expected 0..{n_channels - 1})."
                )
        for ch in nbrs:
            if ch != c:
                neighbours[int(c)].add(int(ch))
                neighbours[int(ch)].add(int(c))
    counts = np.array([len(n) for n in neighbours], dtype=np.int64)
    indptr = np.zeros(n_channels + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.fromiter(
        (ch for n in neighbours for ch in sorted(n)), dtype=np.int64, count=int(indptr[-1])
    )
    return indptr, indices


# -- detector --------------------------------------------------------------------


#: Default `split_prominence`, in units of ``strong - weak`` (2.5 noise std with the
#: default 2.0 / 4.5 thresholds): on the 1024-channel benchmark it recovers most
#: spikes merged with another unit's (see `phy_detect.splitting`) for few extra
#: detections; ``None`` keeps SpikeDetekt's one spike per component.
DEFAULT_SPLIT_PROMINENCE = 1.0

#: Default `split_tall_peak` and `split_tall_prominence` (same units): a peak at least
#: 1.3 above the weak threshold (5.25 noise std with the default thresholds) stays a
#: spike of its own when it rises 0.3 (0.75 std) above its saddle with a higher peak
#: (see `phy_detect.splitting`: on the 1024-channel benchmark, 29 more spikes of the
#: units with SNR >= 5 found for 9% more false detections).
DEFAULT_SPLIT_TALL_PEAK = 1.3
DEFAULT_SPLIT_TALL_PROMINENCE = 0.3


class FloodFillDetector:
    """Detect spikes in weak and strong threshold crossings.

    Parameters
    ----------
    probe_adjacency_list : dict
        A dict ``{channel: [neighbours]}`` over the data columns
        ``0..n_channels-1``. It is made symmetric; a channel absent from it
        has no neighbours (its crossings still join in time).
    join_size : int
        Tolerance in samples: two crossings with ``|dt| <= join_size`` on the
        same or adjacent channels are connected.
    thresholds : dict or None
        ``{'weak': ..., 'strong': ...}``, scalars or ``(n_channels,)`` arrays
        in the units of the transformed traces (as the extractor's). Needed
        to split components.
    split_prominence : float or None
        Split a component at each strong peak that rises at least this much
        above its saddle with a higher peak, in units of ``strong - weak``
        (`phy_detect.splitting`). Needs `thresholds`, and `data_t` in
        `detect_flat`. ``None``: one component is one spike (SpikeDetekt).
    split_tall_peak : float or None
        A peak at least this high above the weak threshold (units of
        ``strong - weak``) is *tall*: it splits off when it rises
        `split_tall_prominence` above its saddle (instead of
        `split_prominence`). ``None``: no tall rule.
    split_tall_prominence : float
        The rise above the saddle that a tall peak needs (>= 0).

    Example
    -------
    >>> det = FloodFillDetector(probe_adjacency_list={0: [1], 1: [0]}, join_size=1)
    >>> components = det(weak_crossings, strong_crossings)

    `components` is a list of ``(k, 2)`` int64 arrays of ``(sample, channel)``
    rows (in sample, then channel order), one per component, sorted by
    their first sample. A strong crossing counts only where the weak
    crossing is also True.
    """

    def __init__(
        self,
        probe_adjacency_list: Mapping[int, Iterable[int]] | None = None,
        join_size: int = 1,
        thresholds: Mapping | None = None,
        split_prominence: float | None = DEFAULT_SPLIT_PROMINENCE,
        split_tall_peak: float | None = DEFAULT_SPLIT_TALL_PEAK,
        split_tall_prominence: float = DEFAULT_SPLIT_TALL_PROMINENCE,
    ) -> None:
        if isinstance(join_size, bool) or int(join_size) != join_size or join_size < 0:
            raise DetectionError(f"FloodFillDetector: join_size must be an integer >= 0, "
                                 f"got {join_size!r}.")
        if split_prominence is not None and (
                isinstance(split_prominence, bool)
                or not isinstance(split_prominence, (int, float, np.number))
                or not split_prominence >= 0):
            raise DetectionError(f"FloodFillDetector: split_prominence must be a number >= 0 "
                                 f"or None, got {split_prominence!r}.")
        for name, value, optional in (("split_tall_peak", split_tall_peak, True),
                                      ("split_tall_prominence", split_tall_prominence, False)):
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                    or not value >= 0:
                raise DetectionError(f"FloodFillDetector: {name} must be a number >= 0"
                                     f"{' or None' if optional else ''}, got {value!r}.")
        if thresholds is not None and (not isinstance(thresholds, Mapping)
                                       or set(thresholds) != {"weak", "strong"}):
            raise DetectionError(f"FloodFillDetector: thresholds must be a dict with 'weak' and "
                                 f"'strong', got {thresholds!r}.")
        # Validated (against the number of channels) when the data arrive.
        self._adjacency_list = probe_adjacency_list or {}
        self._join_size = int(join_size)
        self._thresholds = None if thresholds is None else {
            k: np.asarray(v, dtype=np.float64) for k, v in thresholds.items()}
        self._split_prominence = None if split_prominence is None else float(split_prominence)
        self._split_tall = (None if split_tall_peak is None else float(split_tall_peak),
                            float(split_tall_prominence))
        self._csr: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def join_size(self) -> int:
        return self._join_size

    @property
    def splits(self) -> bool:
        """Whether components are split at their peaks (then `detect_flat` needs `data_t`)."""
        return self._split_prominence is not None and self._thresholds is not None

    def _adjacency(self, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
        if n_channels not in self._csr:
            self._csr[n_channels] = adjacency_csr(self._adjacency_list, n_channels)
        return self._csr[n_channels]

    def _threshold_arrays(self, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
        weak, strong = (np.broadcast_to(self._thresholds[k], (n_channels,))
                        if self._thresholds[k].ndim == 0 else self._thresholds[k]
                        for k in ("weak", "strong"))
        if weak.shape != (n_channels,) or strong.shape != (n_channels,):
            raise DetectionError(f"FloodFillDetector: thresholds of shapes {weak.shape} and "
                                 f"{strong.shape}, expected scalars or ({n_channels},).")
        if not np.all(strong > weak):
            raise DetectionError("FloodFillDetector: the strong threshold must be above the "
                                 "weak threshold on every channel.")
        return np.ascontiguousarray(weak), np.ascontiguousarray(strong)

    def detect_flat(
        self, weak_crossings: np.ndarray, strong_crossings: np.ndarray | None = None,
        data_t: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Components as flat arrays: ``(points, offsets)``.

        `points` is ``(n_points, 2)`` int64 (sample, channel), component `i`
        is ``points[offsets[i]:offsets[i + 1]]``. This is the form that
        `WaveformExtractor.extract_all` consumes without any Python loop.
        `data_t`, the transformed traces the crossings come from, is needed
        (and only used) to split components (see `splits`).
        """
        weak = np.asarray(weak_crossings)
        strong = weak if strong_crossings is None else np.asarray(strong_crossings)
        if weak.ndim != 2:
            raise DetectionError(f"FloodFillDetector: expected (n_samples, n_channels) "
                                 f"crossings, got shape {weak.shape}.")
        if strong.shape != weak.shape:
            raise DetectionError(f"FloodFillDetector: weak crossings {weak.shape} and strong "
                                 f"crossings {strong.shape} differ in shape.")
        if self.splits and (data_t is None or np.shape(data_t) != weak.shape):
            raise DetectionError(
                f"FloodFillDetector: splitting components (split_prominence="
                f"{self._split_prominence}) needs the transformed traces data_t of the "
                f"crossings' shape {weak.shape}, got "
                f"{None if data_t is None else np.shape(data_t)}.")
        weak = np.ascontiguousarray(weak, dtype=np.bool_)
        strong = np.ascontiguousarray(strong, dtype=np.bool_)
        n_samples, n_channels = weak.shape
        indptr, indices = self._adjacency(n_channels)
        points, offsets = _grow_components(
            weak.reshape(-1).view(np.uint8), strong.reshape(-1).view(np.uint8), n_samples,
            n_channels, indptr, indices, self._join_size, int(np.count_nonzero(weak)))
        if self.splits and len(offsets) > 1:
            from .splitting import split_components

            weak_t, strong_t = self._threshold_arrays(n_channels)
            points, offsets = split_components(points, offsets, data_t, weak_t, strong_t,
                                               self._split_prominence, indptr, indices,
                                               self._join_size, *self._split_tall)
        return points, offsets

    def __call__(
        self, weak_crossings: np.ndarray, strong_crossings: np.ndarray | None = None,
        data_t: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        points, offsets = self.detect_flat(weak_crossings, strong_crossings, data_t)
        return np.split(points, offsets[1:-1]) if len(offsets) > 1 else []


def _make_detector(**parameters) -> FloodFillDetector:
    return FloodFillDetector(**parameters)


STAGES = [
    Stage(
        name="floodfill",
        kind="detector",
        description="Connected components of weak crossings with a strong crossing, grown "
        "from the strong ones (numba), optionally split at their distinct peaks.",
        factory=_make_detector,
        parameters={"probe_adjacency_list": None, "join_size": 1, "thresholds": None,
                    "split_prominence": DEFAULT_SPLIT_PROMINENCE,
                    "split_tall_peak": DEFAULT_SPLIT_TALL_PEAK,
                    "split_tall_prominence": DEFAULT_SPLIT_TALL_PROMINENCE},
        requires=("threshold",),
    )
]
