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
strong crossings, in numba, over *runs* (consecutive weak crossings of one
channel: 2.7 samples on average there) rather than points. The crossings are
time-major bitmaps (`pack_crossings`; `Thresholder.transform_bits` writes
them in its pass over the traces): bit ``t % 8`` of byte ``[t // 8, c]``,
so a channel's next crossing after sample `t` is one byte read and a
lowest-set-bit lookup, and a run is taken (its bits cleared, which marks it
reached) as a whole. A run's neighbours are the runs of the same and the
adjacent channels with a crossing within `join_size` samples of it. Each
component's points are marked in a row-major scratch bitmap and read back
in scan order (no sort), and the components are sorted by their first
point. Weak crossings of dropped components are never visited. At 1024
channels this takes ~10 ms per 1 s chunk, against ~37 ms for the previous
kernel (a breadth-first search over points, each looking up its (degree +
1) x (2 join_size + 1) neighbours in a bool mask, then a sort per component).

Then, optionally (`split_prominence`, `split_tall_peak`,
`split_tall_prominence`, `split_tall_apart`, `split_far_peak`, `split_lead`), each
component is split at its distinct peaks
(`phy_detect.splitting`): on a dense probe, spikes of different units often
share one component.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

import numpy as np
from numba import njit

from phy_core.descriptors import Stage
from phy_core.errors import PhyError

__all__ = ["FloodFillDetector", "DetectionError", "adjacency_csr", "STAGES"]


class DetectionError(PhyError, ValueError):
    """Invalid input to the spike detector (shapes, adjacency, parameters)."""


# -- numba kernels -------------------------------------------------------------


#: The index of the lowest set bit of a uint64 ``x`` is
#: ``_DEBRUIJN[((x & -x) * _DEBRUIJN_MULTIPLIER) >> 58]`` (a de Bruijn sequence).
_DEBRUIJN_MULTIPLIER = 0x03F79D71B4CB0A89
_DEBRUIJN = np.array([0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4, 62, 55, 59, 36,
                      53, 51, 43, 22, 45, 39, 33, 30, 24, 18, 12, 5, 63, 47, 56, 27, 60, 41, 37,
                      16, 54, 35, 52, 21, 44, 32, 23, 11, 46, 26, 40, 15, 34, 20, 31, 10, 25, 14,
                      19, 9, 13, 8, 7, 6], dtype=np.int64)


@njit(cache=True, inline="always")
def _lowest_bit(x, debruijn):
    """Index of the lowest set bit of a nonzero uint64."""
    low = x & (~x + np.uint64(1))
    return debruijn[(low * np.uint64(_DEBRUIJN_MULTIPLIER)) >> np.uint64(58)]


@njit(cache=True, inline="always")
def _take(bits, t, c):
    """Clear bit ``(t, c)`` of the time-major bitmap `bits`; whether it was set."""
    bit = np.uint8(1 << (t & 7))
    x = bits[t >> 3, c]
    if x & bit:
        bits[t >> 3, c] = x ^ bit
        return True
    return False


@njit(cache=True)
def pack_crossings(crossings, out):
    """The bool ``(n_samples, n_channels)`` `crossings` as a time-major bitmap `out`.

    Bit ``t & 7`` of ``out[t >> 3, c]`` is ``crossings[t, c]`` (`out` is
    ``(ceil(n_samples / 8), n_channels)`` uint8; the bits past the last
    sample are 0). The layout `Thresholder.transform_bits` writes directly:
    a row updates one byte per channel (a SIMD stream, as bools), and the
    flood fill finds a channel's next crossing 8 samples at a time.
    """
    n, n_channels = crossings.shape
    for t in range(n):
        shift = np.uint8(t & 7)
        row, words = crossings[t], out[t >> 3]
        if shift == 0:
            for c in range(n_channels):
                words[c] = np.uint8(row[c])
        else:
            for c in range(n_channels):
                words[c] |= np.uint8(row[c]) << shift
    if n == 0:
        out[:] = 0


@njit(cache=True, inline="always")
def _run_of(weak, mine, t, ch, n_samples, n_channels, extend):
    """The run of consecutive weak crossings of channel `ch` through sample `t` (whose
    bit is already taken): take its bits, mark its points in `mine`, return its ends."""
    a = t
    b = t
    q = t * n_channels + ch
    mine[q >> 6] |= np.uint64(1) << np.uint64(q & 63)
    if extend:
        while a > 0 and _take(weak, a - 1, ch):
            a -= 1
            q = a * n_channels + ch
            mine[q >> 6] |= np.uint64(1) << np.uint64(q & 63)
        while b < n_samples - 1 and _take(weak, b + 1, ch):
            b += 1
            q = b * n_channels + ch
            mine[q >> 6] |= np.uint64(1) << np.uint64(q & 63)
    return a, b


@njit(cache=True)
def _seed_bytes(strong, weak):
    """Flat indices of the bitmap bytes holding a strong (and weak) crossing, and how
    many bytes of `weak` are nonzero (at most 8 crossings each: a bound for buffers)."""
    strong_flat, weak_flat = strong.reshape(-1), weak.reshape(-1)
    n_weak_bytes = 0
    n_seeds = 0
    for i in range(weak_flat.shape[0]):
        n_weak_bytes += weak_flat[i] != 0
        n_seeds += (strong_flat[i] & weak_flat[i]) != 0
    seeds = np.empty(n_seeds, dtype=np.int64)
    k = 0
    for i in range(weak_flat.shape[0]):
        if strong_flat[i] & weak_flat[i]:
            seeds[k] = i
            k += 1
    return seeds, n_weak_bytes


@njit(cache=True)
def _grow_components(weak, strong, seeds, n_samples, n_channels, indptr, indices, join, mine,
                     debruijn, flat, runs, starts):
    """Components of the time-major crossing bitmaps that hold a strong crossing.

    `weak` and `strong` are `pack_crossings` bitmaps, `seeds` the `_seed_bytes`
    of them; `weak` is consumed (its bits are cleared as they are reached).
    `mine` is a zeroed uint64 scratch bitmap of ``n_samples * n_channels`` bits,
    zeroed again on return. `flat` (int64), `runs` (int64, (., 3)) and `starts`
    (int64) are scratch buffers of at least the number of weak crossings, and
    of strong ones plus one (arrays are never reallocated in here: numba would
    then count references to them in the loops). Returns ``(points,
    offsets)`` as `FloodFillDetector.detect_flat`.
    """
    n_comp = 0
    n = 0
    # With join_size 0 even consecutive samples of a channel are not connected.
    extend = join >= 1
    for i in seeds:
        w = i // n_channels
        c0 = i - w * n_channels
        bits = np.uint64(strong[w, c0])
        while bits:
            t0 = (w << 3) + _lowest_bit(bits, debruijn)
            bits &= bits - np.uint64(1)
            if not _take(weak, t0, c0):
                continue  # reached from an earlier seed, or not a weak crossing
            starts[n_comp] = n
            n_comp += 1
            # Breadth-first over runs (channel, first, last sample): a run's
            # neighbours are the runs of the same and adjacent channels with a
            # crossing within `join` samples of it, found 8 samples at a time.
            a, b = _run_of(weak, mine, t0, c0, n_samples, n_channels, extend)
            runs[0, 0], runs[0, 1], runs[0, 2] = c0, a, b
            n_runs, head = 1, 0
            lo_q = a * n_channels + c0
            hi_q = b * n_channels + c0
            while head < n_runs:
                c = runs[head, 0]
                lo = max(runs[head, 1] - join, 0)
                hi = min(runs[head, 2] + join, n_samples - 1)
                head += 1
                for k in range(indptr[c] - 1, indptr[c + 1]):
                    ch = c if k < indptr[c] else indices[k]
                    t = lo
                    while t <= hi:
                        x = np.uint64(weak[t >> 3, ch] >> (t & 7))
                        if x == 0:
                            t = ((t >> 3) + 1) << 3
                            continue
                        t += _lowest_bit(x, debruijn)
                        if t > hi:
                            break
                        _take(weak, t, ch)
                        a, b = _run_of(weak, mine, t, ch, n_samples, n_channels, extend)
                        runs[n_runs, 0], runs[n_runs, 1], runs[n_runs, 2] = ch, a, b
                        n_runs += 1
                        lo_q = min(lo_q, a * n_channels + ch)
                        hi_q = max(hi_q, b * n_channels + ch)
                        t = b + 2  # b + 1 is no crossing (or the end)
            # The component's points in scan order: the bits set in `mine`.
            for word in range(lo_q >> 6, (hi_q >> 6) + 1):
                x = mine[word]
                if x == 0:
                    continue
                mine[word] = 0
                while x:
                    flat[n] = (word << 6) + _lowest_bit(x, debruijn)
                    n += 1
                    x &= x - np.uint64(1)
    starts[n_comp] = n
    firsts = np.empty(n_comp, dtype=np.int64)
    for i in range(n_comp):
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


def crossing_bitmap(n_samples: int, n_channels: int) -> np.ndarray:
    """An uninitialised time-major crossing bitmap (see `pack_crossings`)."""
    return np.empty(((n_samples + 7) // 8, n_channels), dtype=np.uint8)


_SCRATCH = threading.local()


def _zeroed_scratch(n_bits: int) -> np.ndarray:
    """This thread's all-zero bitmap of at least `n_bits` bits (the kernel leaves it zero)."""
    size = (n_bits + 63) // 64
    scratch = getattr(_SCRATCH, "mine", None)
    if scratch is None or scratch.size < size:
        _SCRATCH.mine = scratch = np.zeros(size, dtype=np.uint64)
    return scratch


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

#: Defaults of the rules for peaks *apart* from the higher one (on a channel neither its
#: nor adjacent to it; see `phy_detect.splitting`): the tall rule only for them
#: (`split_tall_apart`); an apart peak at least `split_far_peak` high (2.0: 7 noise std),
#: or at least `split_lead` samples before the higher peak, splits off whatever its
#: saddle. On the 1024-channel benchmark: 18 more spikes of the units with SNR >= 5,
#: 867 -> 894 false detections.
DEFAULT_SPLIT_TALL_APART = True
DEFAULT_SPLIT_FAR_PEAK = 2.0
DEFAULT_SPLIT_LEAD = 3


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
    split_tall_apart : bool
        Apply the tall rule only to a peak on a channel that is neither the
        higher peak's nor adjacent to it (*apart*).
    split_far_peak : float or None
        An apart strong peak at least this high above the weak threshold
        (units of ``strong - weak``) splits off whatever its saddle.
        ``None``: no such rule.
    split_lead : int or None
        An apart strong peak at least this many samples before the higher
        peak splits off whatever its saddle. ``None``: no such rule.

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
        split_tall_apart: bool = DEFAULT_SPLIT_TALL_APART,
        split_far_peak: float | None = DEFAULT_SPLIT_FAR_PEAK,
        split_lead: int | None = DEFAULT_SPLIT_LEAD,
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
                                      ("split_tall_prominence", split_tall_prominence, False),
                                      ("split_far_peak", split_far_peak, True)):
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                    or not value >= 0:
                raise DetectionError(f"FloodFillDetector: {name} must be a number >= 0"
                                     f"{' or None' if optional else ''}, got {value!r}.")
        if split_lead is not None and (
                isinstance(split_lead, bool)
                or not isinstance(split_lead, (int, float, np.number))
                or not split_lead >= 0 or int(split_lead) != split_lead):
            raise DetectionError(f"FloodFillDetector: split_lead must be a whole number >= 0 "
                                 f"(samples) or None, got {split_lead!r}.")
        if not isinstance(split_tall_apart, (bool, np.bool_)):
            raise DetectionError(f"FloodFillDetector: split_tall_apart must be True or False, "
                                 f"got {split_tall_apart!r}.")
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
        self._split_apart = dict(
            tall_apart=bool(split_tall_apart),
            far_peak=None if split_far_peak is None else float(split_far_peak),
            lead=None if split_lead is None else int(split_lead))
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
        # Copies (writable, whatever the thresholds were): one array type for the kernels.
        return np.array(weak, order="C"), np.array(strong, order="C")

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
        weak_bits = crossing_bitmap(n_samples, n_channels)
        strong_bits = crossing_bitmap(n_samples, n_channels)
        pack_crossings(weak, weak_bits)
        pack_crossings(strong, strong_bits)
        return self.detect_bits(weak_bits, strong_bits, n_samples, data_t)

    def detect_bits(
        self, weak_bits: np.ndarray, strong_bits: np.ndarray, n_samples: int,
        data_t: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`detect_flat` on crossings given as time-major bitmaps (`pack_crossings`).

        The form `Thresholder.transform_bits` produces in the same pass as
        `data_t`: 1 bit per point instead of a bool byte, and a run of
        crossings of a channel is found 8 samples at a time. `weak_bits`
        is consumed (overwritten).
        """
        n_channels = weak_bits.shape[1]
        if weak_bits.dtype != np.uint8 or not weak_bits.flags.c_contiguous \
                or weak_bits.shape != ((n_samples + 7) // 8, n_channels) \
                or strong_bits.shape != weak_bits.shape or strong_bits.dtype != np.uint8:
            raise DetectionError(f"FloodFillDetector: crossing bitmaps of {n_samples} samples "
                                 f"must be C-contiguous uint8 ({(n_samples + 7) // 8}, "
                                 f"n_channels), got {weak_bits.dtype} {weak_bits.shape} and "
                                 f"{strong_bits.dtype} {strong_bits.shape}.")
        if self.splits and (data_t is None or np.shape(data_t) != (n_samples, n_channels)):
            raise DetectionError(
                f"FloodFillDetector: splitting components (split_prominence="
                f"{self._split_prominence}) needs the transformed traces data_t of the "
                f"crossings' shape {(n_samples, n_channels)}, got "
                f"{None if data_t is None else np.shape(data_t)}.")
        indptr, indices = self._adjacency(n_channels)
        seeds, n_weak_bytes = _seed_bytes(strong_bits, weak_bits)
        # Untouched pages of these bounds cost nothing: only the points reached are.
        n_max = 8 * n_weak_bytes
        points, offsets = _grow_components(
            weak_bits, strong_bits, seeds, n_samples, n_channels, indptr, indices,
            self._join_size, _zeroed_scratch(n_samples * n_channels), _DEBRUIJN,
            np.empty(n_max, np.int64), np.empty((n_max, 3), np.int64),
            np.empty(8 * len(seeds) + 1, np.int64))
        if self.splits and len(offsets) > 1:
            from .splitting import split_components

            weak_t, strong_t = self._threshold_arrays(n_channels)
            points, offsets = split_components(points, offsets, data_t, weak_t, strong_t,
                                               self._split_prominence, indptr, indices,
                                               self._join_size, *self._split_tall,
                                               **self._split_apart)
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
                    "split_tall_prominence": DEFAULT_SPLIT_TALL_PROMINENCE,
                    "split_tall_apart": DEFAULT_SPLIT_TALL_APART,
                    "split_far_peak": DEFAULT_SPLIT_FAR_PEAK,
                    "split_lead": DEFAULT_SPLIT_LEAD},
        requires=("threshold",),
    )
]
