"""Flood-fill spike detection: connected components of threshold crossings.

A *crossing point* is a ``(sample, channel)`` pair where the transformed
traces exceed the weak threshold. Two crossing points are connected when
they are at most `join_size` samples apart and on the same or on adjacent
channels (the probe adjacency graph, made symmetric). A connected component
is a candidate spike; it is kept only if one of its points also crosses the
strong threshold (SpikeDetekt's double threshold).

Algorithm (why it scales to 1000+ channels): the crossings are sparse, so we
never build a dense ``(n_samples * n_channels)`` graph. The points are
scanned in (sample, channel) order with a union-find (disjoint sets), and a
point only needs to be joined to the *most recent* earlier point of each
channel in its neighbourhood: all earlier points of that channel within
`join_size` samples are already connected to that most recent one, by
induction (consecutive points of one channel that are within `join_size` of
each other are joined). So the cost is ``O(n_points * (degree + 1))``, with
the adjacency stored as CSR arrays, all in numba.
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
def _crossing_points(weak, strong, n_channels, n_points):
    """The crossing points of flat uint8 `weak`, in row-major order, and their strength.

    Crossings are sparse: 8 bytes are tested at once and all-zero words skipped.
    """
    samples = np.empty(n_points, dtype=np.int64)
    channels = np.empty(n_points, dtype=np.int64)
    strong_pt = np.empty(n_points, dtype=np.bool_)
    n = weak.shape[0]
    n_words = n // 8
    words = weak[:n_words * 8].view(np.uint64)
    k = 0
    for w in range(n_words):
        if words[w] != 0:
            for j in range(8 * w, 8 * w + 8):
                if weak[j]:
                    samples[k] = j // n_channels
                    channels[k] = j % n_channels
                    strong_pt[k] = strong[j] != 0
                    k += 1
    for j in range(n_words * 8, n):
        if weak[j]:
            samples[k] = j // n_channels
            channels[k] = j % n_channels
            strong_pt[k] = strong[j] != 0
            k += 1
    return samples, channels, strong_pt


@njit(cache=True, inline="always")
def _find(parent, i):
    # Path halving: keeps the trees flat without recursion.
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True)
def _label_components(samples, channels, strong_pt, indptr, indices, n_channels, join_size):
    """Union-find over the crossing points.

    Returns ``(order, offsets)``: `order` lists the point indices grouped by
    kept component (components in order of their first point, points in scan
    order within a component), `offsets` the component boundaries in `order`.
    """
    n = samples.shape[0]
    parent = np.arange(n)
    last = np.full(n_channels, -1, dtype=np.int64)
    for i in range(n):
        s = samples[i]
        c = channels[i]
        # The channel itself, then its neighbours.
        for k in range(indptr[c] - 1, indptr[c + 1]):
            ch = c if k < indptr[c] else indices[k]
            j = last[ch]
            if j >= 0 and s - samples[j] <= join_size:
                ri = _find(parent, i)
                rj = _find(parent, j)
                if ri != rj:
                    # The root is the earliest point: components come out in
                    # order of their first sample without a sort.
                    if ri < rj:
                        parent[rj] = ri
                    else:
                        parent[ri] = rj
        last[c] = i

    # Component of each point, and whether its component has a strong point.
    root = np.empty(n, dtype=np.int64)
    strong_root = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        r = _find(parent, i)
        root[i] = r
        if strong_pt[i]:
            strong_root[r] = True

    # Number the kept components in order of their root (= first point).
    label = np.full(n, -1, dtype=np.int64)
    n_comp = 0
    for i in range(n):
        if root[i] == i and strong_root[i]:
            label[i] = n_comp
            n_comp += 1
    counts = np.zeros(n_comp + 1, dtype=np.int64)
    for i in range(n):
        lab = label[root[i]]
        if lab >= 0:
            counts[lab + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    order = np.empty(offsets[-1], dtype=np.int64)
    for i in range(n):  # counting sort, stable: scan order kept inside components
        lab = label[root[i]]
        if lab >= 0:
            order[fill[lab]] = i
            fill[lab] += 1
    return order, offsets


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
    ) -> None:
        if isinstance(join_size, bool) or int(join_size) != join_size or join_size < 0:
            raise DetectionError(f"FloodFillDetector: join_size must be an integer >= 0, "
                                 f"got {join_size!r}.")
        # Validated (against the number of channels) when the data arrive.
        self._adjacency_list = probe_adjacency_list or {}
        self._join_size = int(join_size)
        self._csr: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def join_size(self) -> int:
        return self._join_size

    def _adjacency(self, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
        if n_channels not in self._csr:
            self._csr[n_channels] = adjacency_csr(self._adjacency_list, n_channels)
        return self._csr[n_channels]

    def detect_flat(
        self, weak_crossings: np.ndarray, strong_crossings: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Components as flat arrays: ``(points, offsets)``.

        `points` is ``(n_points, 2)`` int64 (sample, channel), component `i`
        is ``points[offsets[i]:offsets[i + 1]]``. This is the form that
        `WaveformExtractor.extract_all` consumes without any Python loop.
        """
        weak = np.asarray(weak_crossings)
        strong = weak if strong_crossings is None else np.asarray(strong_crossings)
        if weak.ndim != 2:
            raise DetectionError(f"FloodFillDetector: expected (n_samples, n_channels) "
                                 f"crossings, got shape {weak.shape}.")
        if strong.shape != weak.shape:
            raise DetectionError(f"FloodFillDetector: weak crossings {weak.shape} and strong "
                                 f"crossings {strong.shape} differ in shape.")
        weak = np.ascontiguousarray(weak, dtype=np.bool_)
        strong = np.ascontiguousarray(strong, dtype=np.bool_)
        n_channels = weak.shape[1]
        indptr, indices = self._adjacency(n_channels)
        n_points = int(np.count_nonzero(weak))
        samples, channels, strong_pt = _crossing_points(
            weak.reshape(-1).view(np.uint8), strong.reshape(-1).view(np.uint8),
            max(n_channels, 1), n_points)
        order, offsets = _label_components(
            samples, channels, strong_pt, indptr, indices, n_channels, self._join_size
        )
        points = np.empty((len(order), 2), dtype=np.int64)
        points[:, 0] = samples[order]
        points[:, 1] = channels[order]
        return points, offsets

    def __call__(
        self, weak_crossings: np.ndarray, strong_crossings: np.ndarray | None = None
    ) -> list[np.ndarray]:
        points, offsets = self.detect_flat(weak_crossings, strong_crossings)
        return np.split(points, offsets[1:-1]) if len(offsets) > 1 else []


def _make_detector(**parameters) -> FloodFillDetector:
    return FloodFillDetector(**parameters)


STAGES = [
    Stage(
        name="floodfill",
        kind="detector",
        description="Connected components of weak crossings with a strong crossing "
        "(numba union-find over sparse crossings).",
        factory=_make_detector,
        parameters={"probe_adjacency_list": None, "join_size": 1},
        requires=("threshold",),
    )
]
