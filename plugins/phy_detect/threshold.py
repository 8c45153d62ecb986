"""Detection thresholds: robust noise estimate, excerpts, and threshold crossings.

The noise standard deviation of filtered traces is estimated robustly as
``median(|x|) / 0.6745`` (for Gaussian noise, the median absolute value is
0.6745 sigma; spikes, being rare, barely move the median). The weak and strong
thresholds are that std times `std_factor` (2.0 and 4.5 by default, as in
SpikeDetekt). `compute_threshold_from_traces` estimates them from excerpts
spread through a (memory-mapped or lazy) recording, each filtered with the
`Filter`'s margins so that it sees exactly the whole-recording filtered values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from numba import njit

from phy_core.descriptors import Stage
from phy_core.errors import PhyError

__all__ = [
    "DEFAULT_STD_FACTOR",
    "ThresholdError",
    "Thresholder",
    "compute_threshold",
    "compute_threshold_from_traces",
    "excerpts",
    "median_bracket",
    "medians_from_parts",
    "merge_brackets",
    "values_in_bracket",
    "STAGES",
]

logger = logging.getLogger("phy")

DEFAULT_STD_FACTOR = (2.0, 4.5)
_MAD_TO_STD = 0.6745  # median(|N(0, 1)|)


class ThresholdError(PhyError, ValueError):
    """Invalid threshold parameters or input."""


def _std_factors(std_factor) -> np.ndarray:
    if std_factor is None:
        std_factor = DEFAULT_STD_FACTOR
    if np.isscalar(std_factor):
        std_factor = (std_factor, std_factor)
    try:
        f = np.asarray(std_factor, dtype=float)
    except (TypeError, ValueError):
        f = np.array([np.nan])
    if f.shape != (2,) or not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise ThresholdError(
            f"std_factor must be a positive number or a (weak, strong) pair, got {std_factor!r}."
        )
    return f


def compute_threshold(
    arr: np.ndarray, single_threshold: bool = True, std_factor=None
) -> np.ndarray:
    """Compute the threshold(s) of filtered traces.

    Parameters
    ----------
    arr : ndarray
        Filtered traces, shape ``(n_samples, n_channels)``.
    single_threshold : bool
        Whether there should be a unique threshold for all channels, or one
        threshold per channel.
    std_factor : float or 2-tuple
        The threshold in unit of signal std. Two values can be specified for
        multiple thresholds (weak and strong). Default ``(2.0, 4.5)``.

    Returns
    -------
    thresholds : ndarray
        A ``(2,)`` or ``(2, n_channels)`` array with the (weak, strong) thresholds.
    """
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ThresholdError(
            f"compute_threshold: expected a non-empty (n_samples, n_channels) array, "
            f"got shape {arr.shape}."
        )
    factors = _std_factors(std_factor)
    a = np.abs(np.asarray(arr, dtype=np.float64) if arr.dtype.kind != "f" else arr)
    if single_threshold:
        median = np.median(a)
    else:
        # Per channel: partition contiguous rows (channels-first), 1.5x faster
        # than np.median(axis=0) on the (n_samples, n_channels) layout.
        median = np.median(np.ascontiguousarray(a.T), axis=1)
    std = np.asarray(median, dtype=np.float64) / _MAD_TO_STD
    if single_threshold:
        return factors * std
    return factors[:, None] * std[None, :]


def excerpts(n_samples: int, n_excerpts: int, excerpt_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges (end excluded) spread evenly through a recording.

    The first excerpt starts at 0 and the last ends at `n_samples` (when they
    fit); excerpts do not overlap. If the recording is shorter than
    ``n_excerpts * excerpt_size``, the excerpts tile it (fewer of them), and a
    recording shorter than one excerpt gives one range: the whole recording.
    """
    n_samples, n_excerpts, excerpt_size = int(n_samples), int(n_excerpts), int(excerpt_size)
    if n_samples < 1 or n_excerpts < 1 or excerpt_size < 1:
        raise ThresholdError(
            f"excerpts: n_samples, n_excerpts and excerpt_size must be >= 1, got "
            f"{n_samples}, {n_excerpts}, {excerpt_size}."
        )
    if excerpt_size >= n_samples:
        return [(0, n_samples)]
    if n_excerpts == 1:
        start = (n_samples - excerpt_size) // 2
        return [(start, start + excerpt_size)]
    step = max((n_samples - excerpt_size) // (n_excerpts - 1), excerpt_size)
    out = []
    for i in range(n_excerpts):
        start = i * step
        if start >= n_samples:
            break
        out.append((start, min(start + excerpt_size, n_samples)))
    return out


def compute_threshold_from_traces(
    traces,
    filter,
    n_excerpts: int = 50,
    excerpt_size_samples: int | None = None,
    single_threshold: bool = True,
    std_factor=None,
    channels=None,
    max_values: int = 2**26,
) -> np.ndarray:
    """Thresholds estimated from filtered excerpts of a recording.

    Parameters
    ----------
    traces : array-like
        ``(n_samples, n_channels)`` raw traces, any dtype; may be a memmap or a
        lazy array: only the excerpts (and their margins) are read.
    filter : Filter
        The filter used for detection (its ``margin_samples`` is used so that
        each excerpt is filtered as in the whole recording).
    n_excerpts : int
        Number of excerpts (default 50).
    excerpt_size_samples : int or None
        Samples per excerpt (default: one second, ``int(filter.rate)``).
    single_threshold, std_factor
        As in `compute_threshold`.
    channels : array-like or None
        Only these channels (e.g. the probe's channels in a .dat with extra ones).
    max_values : int
        Bound on the number of values kept for the median (default 2**26:
        256 MB of float32). When ``n_excerpts * excerpt_size * n_channels``
        exceeds it, the excerpts are shortened (not made fewer: they stay
        spread through the recording). At 1024 channels and 50 excerpts that
        is 1310 samples per excerpt, 65536 per channel: the median's relative
        standard error is then ~0.5%.

    Returns
    -------
    thresholds : ndarray
        ``(2,)`` or ``(2, n_channels)`` (weak, strong).
    """
    shape = getattr(traces, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ThresholdError(
            f"compute_threshold_from_traces: expected (n_samples, n_channels) traces, "
            f"got shape {shape}."
        )
    n_samples = int(shape[0])
    size = int(filter.rate) if excerpt_size_samples is None else int(excerpt_size_samples)
    n_kept = len(channels) if channels is not None else int(shape[1])
    budget = max(1, int(max_values) // max(1, int(n_excerpts) * n_kept))
    if size > budget:
        logger.debug("Threshold excerpts shortened from %d to %d samples.", size, budget)
        size = budget
    # An excerpt must be long enough to be filtered on its own.
    size = max(size, getattr(filter, "padlen", 0) + 1)
    parts = []
    for start, end in excerpts(n_samples, n_excerpts, size):
        if hasattr(filter, "filter_chunk"):
            # Only the kept channels are filtered (channels are independent).
            chunk = filter.filter_chunk(traces, start, end, channels=channels)
        else:
            chunk = np.asarray(traces[start:end])
            chunk = filter(chunk if channels is None else chunk[:, channels])
        parts.append(chunk)
    return compute_threshold(np.concatenate(parts, axis=0), single_threshold, std_factor)


# -- Exact medians of values held by several workers ----------------------------------
#
# The runner's workers each filter a few excerpts (the "parts"); the medians of |filtered|
# over all of them are found without gathering every value in one place. A value's *bin*
# is the top bits of the float32 |x| (exponent and a few mantissa bits: bins of 1/16 or
# 1/128 of an octave), which orders like |x|. Each part reports, per row (channel, or one
# row of all values for a single threshold), the bins of its lower and upper middle
# values. At least half of every part, hence of their union, is at most its upper middle
# and at least half is at least its lower middle; so the union's middle values lie
# between the smallest lower bin and the largest upper bin. A second look at each part
# returns only how many of its values fall below that bracket and the values inside it
# (a few percent of them), from which the exact middle values follow.

_FLOAT32_MANTISSA_BITS = 23
#: Bins below 2**-20 and above 2**30 are merged with their neighbours (still ordered).
_MIN_EXPONENT, _MAX_EXPONENT = -20, 30


def _bins(single: bool) -> tuple[int, int, int]:
    """``(shift, first_key, n_bins)``: 1/128 octave for one row of all values, 1/16 per
    channel (whose counts are a ``(n_bins, n_channels)`` array)."""
    mantissa_bits = 7 if single else 4
    first = (127 + _MIN_EXPONENT) << mantissa_bits
    n_bins = ((_MAX_EXPONENT - _MIN_EXPONENT) << mantissa_bits) + 1
    return _FLOAT32_MANTISSA_BITS - mantissa_bits, first, n_bins


@njit(cache=True)
def _middle_bins_kernel(bits, single, shift, first, n_bins, out):
    """out[0/1, row] = the bins of the lower/upper middle |x| of each row (bits: float32)."""
    n, nc = bits.shape
    n_rows = 1 if single else nc
    counts = np.zeros((n_bins, n_rows), np.int64)
    for t in range(n):
        for c in range(nc):
            k = np.int64((bits[t, c] & 0x7FFFFFFF) >> shift) - first
            k = min(max(k, 0), n_bins - 1)
            counts[k, 0 if single else c] += 1
    n_values = n * nc if single else n
    lo, hi = (n_values - 1) // 2, n_values // 2
    for r in range(n_rows):
        seen = 0
        out[0, r] = -1
        for k in range(n_bins):
            seen += counts[k, r]
            if out[0, r] < 0 and seen > lo:
                out[0, r] = k
            if seen > hi:
                out[1, r] = k
                break


@njit(cache=True)
def _bracket_kernel(bits, single, shift, first, n_bins, low, high, below, values, rows):
    """Per row: the count of bins < low (in `below`); |x| and row of those in low..high.

    Counted without a branch: about half the values fall below the bracket, in
    no predictable order, and a branch on it was mispredicted half the time
    (~7 -> ~1.5 ns a value here). Only the few values inside the bracket branch, on one
    unsigned comparison (``lo <= k <= hi``), whose outcome is nearly always
    the same.
    """
    n, nc = bits.shape
    m = 0
    if single:
        lo = low[0]
        width = np.uint64(high[0] - lo)
        n_below = 0
        for t in range(n):
            for c in range(nc):
                b = bits[t, c] & 0x7FFFFFFF
                k = min(max(np.int64(b >> shift) - first, 0), n_bins - 1)
                n_below += np.int64(k < lo)
                if np.uint64(k - lo) <= width:
                    values[m] = b
                    rows[m] = 0
                    m += 1
        below[0] += n_below
        return m
    for t in range(n):
        for c in range(nc):
            b = bits[t, c] & 0x7FFFFFFF
            k = min(max(np.int64(b >> shift) - first, 0), n_bins - 1)
            lo = low[c]
            below[c] += np.int64(k < lo)
            if np.uint64(k - lo) <= np.uint64(high[c] - lo):
                values[m] = b
                rows[m] = c
                m += 1
    return m


def _float32_bits(filtered: np.ndarray) -> np.ndarray:
    filtered = np.ascontiguousarray(filtered, dtype=np.float32)
    if filtered.ndim != 2 or filtered.size == 0:
        raise ThresholdError(f"Threshold excerpts must be non-empty (n_samples, n_channels) "
                             f"arrays, got shape {filtered.shape}.")
    return filtered.view(np.uint32)


def median_bracket(filtered: np.ndarray, single: bool) -> np.ndarray:
    """The bins ``(2, rows)`` of the lower and upper middle |x| of a part's rows.

    `filtered` is ``(n_samples, n_channels)``; rows are its channels, or one
    row of all its values when `single`.
    """
    bits = _float32_bits(filtered)
    out = np.zeros((2, 1 if single else bits.shape[1]), dtype=np.int64)
    _middle_bins_kernel(bits, bool(single), *_bins(single), out)
    return out


def merge_brackets(brackets) -> np.ndarray:
    """The bracket ``(2, rows)`` of the union of parts, from each part's `median_bracket`."""
    brackets = np.asarray(list(brackets))
    return np.stack([brackets[:, 0].min(axis=0), brackets[:, 1].max(axis=0)])


def values_in_bracket(filtered: np.ndarray, single: bool, bracket: np.ndarray):
    """What a part says about its |x| relative to a bracket of bins ``(2, rows)``.

    Returns ``(below, values, rows)``: per row, how many values fall in bins
    below the bracket (int64); the |x| (float32) within it and their rows
    (int32), in the part's order.
    """
    bits = _float32_bits(filtered)
    bracket = np.asarray(bracket, dtype=np.int64)
    below = np.zeros(bracket.shape[1], dtype=np.int64)
    values = np.empty(bits.size, dtype=np.uint32)
    rows = np.empty(bits.size, dtype=np.int32)
    m = _bracket_kernel(bits, bool(single), *_bins(single), bracket[0], bracket[1], below,
                        values, rows)
    return below, values[:m].view(np.float32).copy(), rows[:m].copy()


@njit(cache=True)
def _group_by_row(values, rows, starts):
    """`values` reordered row by row (a counting sort: `starts` from the row counts)."""
    out = np.empty_like(values)
    position = starts[:-1].copy()
    for i in range(len(values)):
        r = rows[i]
        out[position[r]] = values[i]
        position[r] += 1
    return out


def medians_from_parts(n_values: int, parts) -> np.ndarray:
    """Per-row medians of the union of parts, equal to ``np.median`` of their |x|.

    `n_values` is the number of values per row in all parts together;
    `parts` are the `values_in_bracket` of each part for the bracket that
    `merge_brackets` gave. For an even count, the mean of the two middle
    values is taken in float32, as `np.median` does.
    """
    parts = list(parts)
    below = sum(p[0] for p in parts)
    values = np.concatenate([p[1] for p in parts])
    rows = np.concatenate([p[2] for p in parts])
    starts = np.zeros(len(below) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(below)), out=starts[1:])
    if len(below) > 1:
        values = _group_by_row(values, rows, starts)
    lo, hi = (n_values - 1) // 2, n_values // 2  # the middle order statistics
    medians = np.empty(len(below), dtype=np.float32)
    for r in range(len(below)):
        segment = values[starts[r]:starts[r + 1]]
        k = np.array([lo, hi]) - below[r]
        if k[0] < 0 or k[1] >= len(segment):
            raise ThresholdError("medians_from_parts: the bracket does not hold the median "
                                 "(parts inconsistent with their brackets).")
        middle = np.partition(segment, k)[k]
        medians[r] = np.mean(middle, dtype=np.float32) if lo != hi else middle[0]
    return medians


def warm_up_medians() -> None:
    """Load the kernel of `medians_from_parts` (per-channel medians) in this process."""
    medians_from_parts(1, [(np.zeros(2, np.int64), np.ones(2, np.float32),
                            np.arange(2, dtype=np.int32))])


class Thresholder:
    """Threshold traces to detect spikes.

    Parameters
    ----------
    mode : str
        ``'positive'``, ``'negative'`` (default), or ``'both'``.
    thresholds : dict, number, array or 2-sequence
        A ``{name: threshold}`` mapping (each a number, or an array per
        channel broadcasting against the traces' last axis). A number or a
        per-channel array is named ``'default'``; a 2-sequence or the ``(2,)``
        / ``(2, n_channels)`` output of `compute_threshold` becomes
        ``{'weak': ..., 'strong': ...}``.

    Example
    -------
    >>> thres = Thresholder('positive', thresholds=(.1, .2))
    >>> crossings = thres(traces)   # {'weak': bool array, 'strong': bool array}
    """

    def __init__(self, mode: str = "negative", thresholds=None) -> None:
        if mode not in ("positive", "negative", "both"):
            raise ThresholdError(
                f"Thresholder: mode must be 'positive', 'negative' or 'both', got {mode!r}."
            )
        self.mode = mode
        self.thresholds = self._normalize(thresholds)

    @staticmethod
    def _normalize(thresholds) -> dict:
        if thresholds is None:
            return {}
        if isinstance(thresholds, Mapping):
            return {str(k): np.asarray(v) for k, v in thresholds.items()}
        if isinstance(thresholds, (tuple, list)):
            if len(thresholds) != 2:
                raise ThresholdError(
                    f"Thresholder: a sequence of thresholds must be (weak, strong), "
                    f"got {len(thresholds)} values."
                )
            return {"weak": np.asarray(thresholds[0]), "strong": np.asarray(thresholds[1])}
        t = np.asarray(thresholds)
        if not np.issubdtype(t.dtype, np.number):
            raise ThresholdError(f"Thresholder: invalid thresholds {thresholds!r}.")
        if t.ndim == 2 or (t.ndim == 1 and t.shape == (2,)):
            if t.shape[0] != 2:
                raise ThresholdError(
                    f"Thresholder: a 2D threshold array must have shape (2, n_channels), "
                    f"got {t.shape}."
                )
            return {"weak": t[0], "strong": t[1]}
        return {"default": t}

    def transform(self, data: np.ndarray) -> np.ndarray:
        """Return `data`, `-data`, or `abs(data)` depending on the mode."""
        if self.mode == "positive":
            return data
        if self.mode == "negative":
            return -data
        return np.abs(data)

    def _value(self, threshold):
        if threshold is None:
            if len(self.thresholds) != 1:
                raise ThresholdError(
                    f"Thresholder: name the threshold to use among {sorted(self.thresholds)}."
                )
            threshold = next(iter(self.thresholds))
        if isinstance(threshold, str):
            if threshold not in self.thresholds:
                raise ThresholdError(
                    f"Thresholder: unknown threshold {threshold!r}, "
                    f"known: {sorted(self.thresholds)}."
                )
            return self.thresholds[threshold]
        return np.asarray(threshold)

    def detect(self, data_t: np.ndarray, threshold=None):
        """Perform the thresholding operation on transformed data: ``data_t > threshold``.

        `threshold` is a name, a value, None (the only threshold), or a
        list/tuple of names (then a ``{name: crossings}`` dict is returned).
        """
        if isinstance(threshold, (list, tuple)):
            return {name: self.detect(data_t, name) for name in threshold}
        return data_t > _as_data_type(self._value(threshold), data_t)

    def transform_detect(self, data: np.ndarray, out: tuple | None = None):
        """``(data_t, weak, strong)`` = ``transform(data)`` and its two crossings, fused.

        The same values as `transform` and ``detect(data_t, 'weak' / 'strong')``
        (needs thresholds named ``weak`` and ``strong``), from one numba pass
        over 2D float32 `data`. `out` is an optional ``(data_t, weak, strong)``
        of preallocated C-contiguous arrays (float32, bool, bool) to fill.
        """
        data = np.asarray(data)
        if data.ndim != 2 or data.dtype != np.float32 or not data.flags.c_contiguous:
            data_t = self.transform(data)
            return data_t, self.detect(data_t, "weak"), self.detect(data_t, "strong")
        n_channels = data.shape[1]
        weak, strong = (_channel_thresholds(self._value(name), data, n_channels)
                        for name in ("weak", "strong"))
        if out is None:
            out = (np.empty_like(data), np.empty(data.shape, np.bool_),
                   np.empty(data.shape, np.bool_))
        data_t, weak_out, strong_out = out
        _crossings_kernel(data, _MODES[self.mode], weak, strong, data_t, weak_out, strong_out)
        return data_t, weak_out, strong_out

    def transform_bits(self, data: np.ndarray, out: tuple | None = None):
        """``(data_t, weak_bits, strong_bits)``: `transform_detect` with the crossings as
        time-major bitmaps (`phy_detect.floodfill.pack_crossings`'s layout).

        Bit ``t & 7`` of ``weak_bits[t >> 3, c]`` is ``data_t[t, c] > weak[c]``
        (the comparisons of `detect`); the bits past the last sample are 0.
        1 bit per point instead of a bool byte: the flood fill
        (`FloodFillDetector.detect_bits`) takes them as they are. `data` must
        be 2D C-contiguous float32; `out` an optional ``(data_t, weak_bits,
        strong_bits)`` of preallocated C-contiguous arrays (float32, uint8,
        uint8; the bitmaps ``(ceil(n_samples / 8), n_channels)``) to fill.
        """
        data = np.asarray(data)
        if data.ndim != 2 or data.dtype != np.float32 or not data.flags.c_contiguous:
            raise ThresholdError(f"Thresholder.transform_bits: expected C-contiguous float32 "
                                 f"(n_samples, n_channels) traces, got {data.dtype} "
                                 f"{data.shape}.")
        n_samples, n_channels = data.shape
        weak, strong = (_channel_thresholds(self._value(name), data, n_channels)
                        for name in ("weak", "strong"))
        if out is None:
            shape = ((n_samples + 7) // 8, n_channels)
            out = (np.empty_like(data), np.empty(shape, np.uint8), np.empty(shape, np.uint8))
        data_t, weak_bits, strong_bits = out
        _crossing_bits_kernel(data, _MODES[self.mode], weak, strong, data_t, weak_bits,
                              strong_bits)
        return data_t, weak_bits, strong_bits

    def __call__(self, data: np.ndarray, threshold=None):
        """Crossings of the (mode-transformed) data.

        With ``threshold=None`` returns ``{name: bool array}`` for every
        threshold; with a name or value, the bool array for that one.
        The mode transform is folded into the comparison (``-x > t`` is
        ``x < -t``), so no transformed copy of the data is made.
        """
        if threshold is None:
            return {name: self._cross(data, value) for name, value in self.thresholds.items()}
        if isinstance(threshold, (list, tuple)):
            return {name: self(data, name) for name in threshold}
        return self._cross(data, self._value(threshold))

    def _cross(self, data, value):
        value = _as_data_type(value, data)
        if self.mode == "positive":
            return data > value
        if self.mode == "negative":
            return data < -value
        return (data > value) | (data < -value)


_MODES = {"positive": 0, "negative": 1, "both": 2}


@njit(cache=True, fastmath=True)
def _transformed(x, mode):
    """The mode transform of one value (`_MODES`: as is, negated, absolute)."""
    if mode == 1:
        return -x
    if mode == 2:
        return abs(x)
    return x


@njit(cache=True, fastmath=True)
def _crossings_kernel(data, mode, weak, strong, data_t, weak_out, strong_out):
    """`data_t` (the mode transform) and its weak/strong crossings, in one pass.

    One read of `data` instead of four (transform, two comparisons, and the
    page faults of three fresh arrays): at 1024 channels, ~25 -> ~8 ms per
    second of data. The comparisons are those of `Thresholder.detect`.
    """
    n, nc = data.shape
    for t in range(n):
        row, row_t, w_row, s_row = data[t], data_t[t], weak_out[t], strong_out[t]
        for c in range(nc):
            x = _transformed(row[c], mode)
            row_t[c] = x
            w_row[c] = x > weak[c]
            s_row[c] = x > strong[c]


@njit(cache=True, fastmath=True)
def _crossing_bits_kernel(data, mode, weak, strong, data_t, weak_bits, strong_bits):
    """`_crossings_kernel` with the crossings written as time-major bitmaps.

    Row `t` sets bit ``t & 7`` of the bytes ``[t >> 3, :]``, one per channel:
    the channel loop stays one SIMD stream, and a row writes as many bytes
    as the bool crossings did (measured at 1024 channels: 8.8 ms per 1 s
    chunk, against 10.7 for bools and 23 for 64-bit words, whose whole row
    of words is read and written back for every sample). The first row of
    a byte assigns it (no zeroing pass).
    """
    n, nc = data.shape
    for t in range(n):
        shift = np.uint8(t & 7)
        row, row_t = data[t], data_t[t]
        w_words, s_words = weak_bits[t >> 3], strong_bits[t >> 3]
        if shift == 0:
            for c in range(nc):
                x = _transformed(row[c], mode)
                row_t[c] = x
                w_words[c] = np.uint8(x > weak[c])
                s_words[c] = np.uint8(x > strong[c])
        else:
            for c in range(nc):
                x = _transformed(row[c], mode)
                row_t[c] = x
                w_words[c] |= np.uint8(x > weak[c]) << shift
                s_words[c] |= np.uint8(x > strong[c]) << shift


def _channel_thresholds(value, data: np.ndarray, n_channels: int) -> np.ndarray:
    """One threshold per channel, in the data's float type: a new writable array.

    Always a copy, so the kernels see one array type whether the thresholds
    are one value or an array per channel (numba compiles, or loads from its
    cache, one version per type, read-only arrays included: a worker warmed
    up with one kind would load another on its first real chunk).
    """
    return np.array(np.broadcast_to(_as_data_type(value, data), (n_channels,)), order="C")


def _as_data_type(value, data):
    """The threshold in the data's float type.

    A float64 threshold against float32 traces makes numpy cast every sample
    (2.5x slower at 1024 channels); rounding the threshold to float32 instead
    changes only crossings within float32 epsilon of it.
    """
    value = np.asarray(value)
    if isinstance(data, np.ndarray) and data.dtype.kind == "f" and value.dtype != data.dtype:
        value = value.astype(data.dtype)
    return value


def _make_thresholder(mode: str = "negative", thresholds=None) -> Thresholder:
    return Thresholder(mode=mode, thresholds=thresholds)


STAGES = [
    Stage(
        name="mad",
        kind="threshold",
        description="Weak/strong thresholds from the median absolute deviation; crossings.",
        factory=_make_thresholder,
        parameters={"mode": "negative", "thresholds": None},
        requires=("filter",),
    )
]
