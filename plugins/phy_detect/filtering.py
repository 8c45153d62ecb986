"""Zero-phase Butterworth band-pass filter, in numba, vectorised across channels.

The filter is the one `scipy.signal.sosfiltfilt` applies with its defaults
(a cascade of second-order sections, run forward then backward, after an odd
extension of ``padlen`` samples at each end), so that on a whole array the
result matches scipy to float32 precision. It is written for
``(n_samples, n_channels)`` float32 traces with channels contiguous: the
innermost loop runs over channels, whose recursions are independent, so the
compiler turns it into SIMD instructions; the recursion along time cannot be
vectorised. Each pass streams through whole rows (see `DEFAULT_BLOCK_CHANNELS`
for why not narrow channel blocks); with `n_threads` > 1 the channels are split
into one block per thread (numba ``prange``). No padded copy of the data is
made: the odd extensions are computed on the fly.

Numerics: data in and out are float32; by default the filter state and
arithmetic are float64: float32 recursions (``precision='float32'``, ~1.7x
faster at 1024 channels) deviate from scipy by ~1e-5 of the signal scale,
float64 by ~2e-7. The intermediate (forward-pass) output is stored as float32,
which costs one float32 rounding.

Speed (benchmarks/filter.py, 1 s of 30 kHz data, one core of an AMD EPYC with
AVX-512): 1024 channels ~10-12x real time (float64 state), ~18x (float32),
scipy's sosfiltfilt 1.4x. At float64 the kernel is bound by arithmetic and
state loads/stores (32 channels run at the same channels x real time product).

Chunked processing: `Filter.margin_samples` is the overlap a chunked runner
adds on each side of a chunk so that the filtered interior equals filtering the
whole recording (to float32 precision). See its docstring.
"""

from __future__ import annotations

import math
from functools import cached_property

import numba
import numpy as np
from numba import njit, prange
from scipy import signal

from phy_core.descriptors import Stage
from phy_core.errors import PhyError

__all__ = ["Filter", "FilterError", "STAGES", "DEFAULT_BLOCK_CHANNELS"]

# Channels per block. Small blocks keep the state in L1 but read each row in
# short pieces 4 KiB apart (1024 float32 channels), which defeats the hardware
# prefetcher (it follows streams within a page): measured at 1024 channels,
# 30 kHz, one core: block 64 -> 4.3x real time, whole rows -> 11.8x. So by
# default a block is a whole row (48 KiB of float64 state at 1024 channels,
# in L2), split only to give each thread its share.
DEFAULT_BLOCK_CHANNELS = 4096

MAX_ORDER = 20

# Relative level below which the impulse response counts as gone (margin_samples).
MARGIN_TOLERANCE = 1e-7


class FilterError(PhyError, ValueError):
    """Invalid filter parameters or input."""


# -- numba kernels -------------------------------------------------------------


@njit(cache=True, fastmath=True, inline="always")
def _sections(buf, sos, z, nc):
    """Push one row (``buf[:nc]``, in place) through all sections (TDF-II)."""
    for s in range(sos.shape[0]):
        b0 = sos[s, 0]
        b1 = sos[s, 1]
        b2 = sos[s, 2]
        a1 = sos[s, 4]
        a2 = sos[s, 5]
        for c in range(nc):  # independent channels: vectorised
            xi = buf[c]
            yi = b0 * xi + z[s, 0, c]
            z[s, 0, c] = b1 * xi - a1 * yi + z[s, 1, c]
            z[s, 1, c] = b2 * xi - a2 * yi
            buf[c] = yi


@njit(cache=True, fastmath=True, inline="always")
def _load(buf, row, nc):
    for c in range(nc):
        buf[c] = row[c]


@njit(cache=True, fastmath=True, inline="always")
def _load_odd(buf, pivot, row, nc):
    # Odd extension about `pivot`: 2 * pivot - row.
    for c in range(nc):
        buf[c] = 2.0 * np.float64(pivot[c]) - row[c]


@njit(cache=True, fastmath=True, inline="always")
def _store(row, buf, nc):
    for c in range(nc):
        row[c] = buf[c]


@njit(cache=True, fastmath=True, inline="always")
def _init_state(z, zi, first, nc):
    # Steady state of a step of height `first` (as sosfilt_zi * x0 in sosfiltfilt).
    for s in range(zi.shape[0]):
        for c in range(nc):
            z[s, 0, c] = zi[s, 0] * first[c]
            z[s, 1, c] = zi[s, 1] * first[c]


@njit(cache=True, fastmath=True)
def _filtfilt_block(x, y, c0, c1, sos, zi, edge):
    """Forward-backward filter channels ``c0:c1`` of `x` into `y` (scipy's default).

    The odd extension is computed on the fly, so no padded copy of the data
    is made; only the forward output over the right extension is kept
    (the backward pass starts there). Rows are sliced before the inner loops
    so that those index from 0 with a loop counter: no negative-index
    handling, hence contiguous SIMD loads instead of gathers.
    """
    n = x.shape[0]
    nc = c1 - c0
    ns = sos.shape[0]
    z = np.empty((ns, 2, nc), zi.dtype)
    buf = np.empty(nc, zi.dtype)
    right = np.empty((max(edge, 1), nc), np.float32)
    # Copies of the rows the extensions are made of: `y` may be `x` (in place).
    head = x[0 : edge + 1, c0:c1].copy()
    tail = x[n - 1 - edge : n, c0:c1].copy()  # tail[edge] is x[n - 1]
    x_first = head[0]
    x_last = tail[edge]

    # Forward pass over ext = [left extension, data, right extension], with
    # ext[i] = 2 x[0] - x[edge - i] on the left, 2 x[n-1] - x[n-2-j] on the
    # right. One loop, one call site of the (inlined, vectorised) sections:
    # this halves the compilation time; the branches are per row, not per value.
    if edge > 0:
        _load_odd(buf, x_first, head[edge], nc)
    else:
        _load(buf, x_first, nc)
    _init_state(z, zi, buf, nc)
    for t in range(-edge, n + edge):
        if t < 0:
            _load_odd(buf, x_first, head[-t], nc)
        elif t < n:
            _load(buf, x[t, c0:c1], nc)
        else:
            _load_odd(buf, x_last, tail[n + edge - 1 - t], nc)
        _sections(buf, sos, z, nc)
        if t < 0:
            continue
        if t < n:
            _store(y[t, c0:c1], buf, nc)
        else:
            _store(right[t - n], buf, nc)

    # Backward pass from the end of the right extension; initial state from
    # the last forward output. Outputs over the extensions are discarded (and
    # the left extension is not needed: nothing comes after it).
    if edge > 0:
        _load(buf, right[edge - 1], nc)
    else:
        _load(buf, y[n - 1, c0:c1], nc)
    _init_state(z, zi, buf, nc)
    for t in range(n + edge - 1, -1, -1):
        if t >= n:
            _load(buf, right[t - n], nc)
        else:
            _load(buf, y[t, c0:c1], nc)
        _sections(buf, sos, z, nc)
        if t < n:
            _store(y[t, c0:c1], buf, nc)


@njit(cache=True)
def _filtfilt_serial(x, y, sos, zi, edge, block):
    n_channels = x.shape[1]
    n_blocks = (n_channels + block - 1) // block
    for b in range(n_blocks):
        c0 = b * block
        _filtfilt_block(x, y, c0, min(c0 + block, n_channels), sos, zi, edge)


@njit(cache=True, parallel=True)
def _filtfilt_parallel(x, y, sos, zi, edge, block):
    n_channels = x.shape[1]
    n_blocks = (n_channels + block - 1) // block
    for b in prange(n_blocks):
        c0 = b * block
        _filtfilt_block(x, y, c0, min(c0 + block, n_channels), sos, zi, edge)


# -- public API ----------------------------------------------------------------


def _int_parameter(name: str, value, low: int, high: int) -> int:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        ok = math.isfinite(value) and int(value) == value and low <= value <= high
    if not ok:
        raise FilterError(f"Filter: {name} must be an integer in [{low}, {high}], got {value!r}.")
    return int(value)


class Filter:
    """Multichannel zero-phase Butterworth band-pass filter.

    The filter is applied on every column of a 2D ``(n_samples, n_channels)``
    array, forward then backward (zero phase, squared magnitude response),
    exactly as ``scipy.signal.sosfiltfilt(butter(order, (low, high),
    'bandpass', fs=rate, output='sos'), x, axis=0)``.

    Parameters
    ----------
    rate : float
        Sample rate in Hz.
    low : float
        Low cut-off frequency in Hz (default 500).
    high : float or None
        High cut-off frequency in Hz (default ``0.475 * rate``).
    order : int
        Butterworth order of each pass (default 3; the band-pass has
        ``order`` second-order sections).
    n_threads : int
        Threads per call (channel blocks in parallel, numba ``prange``).
        1 (the default) runs serially and never starts numba's thread pool,
        which is what a runner that parallelises chunks across processes wants.
    block_channels : int
        Channels per block (cache tiling).
    precision : {'float64', 'float32'}
        Type of the filter state and arithmetic. 'float64' (default) matches
        scipy to ~1e-7 of the signal scale; 'float32' is ~1.6x faster at 1024
        channels (twice the SIMD width) with errors ~3e-6 of the signal
        scale, far below the noise of any recording.

    Example
    -------
    >>> fil = Filter(rate=20000., low=500., high=9000., order=3)
    >>> traces_f = fil(traces)   # float32, same shape
    """

    def __init__(
        self,
        rate: float,
        low: float = 500.0,
        high: float | None = None,
        order: int = 3,
        n_threads: int = 1,
        block_channels: int = DEFAULT_BLOCK_CHANNELS,
        precision: str = "float64",
    ) -> None:
        try:
            rate = float(rate)
            low = float(low)
            high = 0.475 * rate if high is None else float(high)
        except (TypeError, ValueError) as e:
            raise FilterError(f"Filter: rate, low and high must be numbers ({e}).") from None
        if not math.isfinite(rate) or rate <= 0:
            raise FilterError(f"Filter: the sample rate must be > 0 Hz, got {rate}.")
        nyquist = rate / 2.0
        if not (0.0 < low < high < nyquist):
            raise FilterError(
                f"Filter: need 0 < low < high < rate / 2, got low={low} Hz, high={high} Hz, "
                f"rate / 2 = {nyquist} Hz."
            )
        order = _int_parameter("order", order, 1, MAX_ORDER)
        n_threads = _int_parameter("n_threads", n_threads, 1, 1024)
        block_channels = _int_parameter("block_channels", block_channels, 1, 2**31)
        if precision not in ("float64", "float32"):
            raise FilterError(
                f"Filter: precision must be 'float64' or 'float32', got {precision!r}."
            )
        self.precision = precision
        self.rate, self.low, self.high, self.order = rate, low, high, int(order)
        self.n_threads = int(n_threads)
        self.block_channels = int(block_channels)
        try:
            self.sos = signal.butter(
                self.order, (low, high), btype="bandpass", fs=rate, output="sos"
            ).astype(np.float64)
            self._zi = np.ascontiguousarray(signal.sosfilt_zi(self.sos), dtype=np.float64)
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError) as e:
            raise FilterError(
                f"Filter: cannot design an order-{self.order} band-pass {low}-{high} Hz at "
                f"{rate} Hz ({e})."
            ) from None
        poles = np.concatenate([np.roots(np.r_[1.0, sec[4:]]) for sec in self.sos])
        if not (np.all(np.isfinite(self.sos)) and np.all(np.isfinite(self._zi))) or (
            np.abs(poles).max() >= 1.0
        ):
            raise FilterError(
                f"Filter: the order-{self.order} band-pass {low}-{high} Hz at {rate} Hz is "
                "numerically unstable (cut-offs too close to 0 or to each other)."
            )
        # The kernels compute in the dtype of the coefficients they are given.
        self._sos_k = np.ascontiguousarray(self.sos, dtype=precision)
        self._zi_k = np.ascontiguousarray(self._zi, dtype=precision)
        # sosfiltfilt's default pad length (see scipy.signal.sosfiltfilt).
        ntaps = 2 * len(self.sos) + 1
        ntaps -= min(int((self.sos[:, 2] == 0).sum()), int((self.sos[:, 5] == 0).sum()))
        self.padlen = 3 * ntaps

    def __repr__(self) -> str:
        return (
            f"Filter(rate={self.rate:g}, low={self.low:g}, high={self.high:g}, "
            f"order={self.order}, n_threads={self.n_threads})"
        )

    @cached_property
    def margin_samples(self) -> int:
        """Overlap (samples) to add on each side of a chunk for exact chunked filtering.

        Filtering ``x[start - m:end + m]`` and keeping the samples ``m:-m``
        gives the same values as filtering the whole recording and keeping
        ``start:end``, to float32 precision (unless the chunk touches the
        recording's edge, where no margin is needed because the recording's
        own edge handling applies on both sides).

        Why: a chunk differs from the whole recording only by the state of
        the recursions at its edges (the padding, the initial conditions).
        That difference decays like the free response of the filter, i.e.
        like its impulse response. So `m` is the number of samples after
        which the causal impulse response stays below ``MARGIN_TOLERANCE``
        (1e-7) of its peak, plus the pad length. The error at the chunk
        interior is then about 1e-7 times the signal scale (the float32 epsilon).
        """
        n = 1024
        while True:
            impulse = np.zeros(n)
            impulse[0] = 1.0
            h = np.abs(signal.sosfilt(self.sos, impulse))
            above = np.nonzero(h >= MARGIN_TOLERANCE * h.max())[0]
            last = int(above[-1]) + 1
            if last < n // 2 or n >= 2**24:
                return last + self.padlen
            n *= 2

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Filter `x`, an ``(n_samples, n_channels)`` (or 1D) array; returns float32.

        `out`, if given, is a C-contiguous float32 array of the same shape that
        receives the result (reusing it spares the page faults of a fresh
        allocation, ~10-20 ms per 100 MB). It may be `x` itself (in place).
        """
        x = np.asarray(x)
        if x.ndim == 1:
            o = None if out is None else out[:, None]
            return self(x[:, None], out=o)[:, 0]
        if x.ndim != 2:
            raise FilterError(
                f"Filter: expected an (n_samples, n_channels) array, got shape {x.shape}."
            )
        if not (np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x)):
            raise FilterError(f"Filter: expected real numeric traces, got dtype {x.dtype}.")
        n_samples, n_channels = x.shape
        if n_samples <= self.padlen:
            raise FilterError(
                f"Filter: need more than {self.padlen} samples (the edge padding of the "
                f"order-{self.order} filter), got {n_samples}."
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        if out is None:
            y = np.empty_like(x)
        else:
            if not (
                isinstance(out, np.ndarray)
                and out.shape == x.shape
                and out.dtype == np.float32
                and out.flags.c_contiguous
            ):
                raise FilterError(
                    f"Filter: `out` must be a C-contiguous float32 array of shape {x.shape}."
                )
            y = out
        if n_channels == 0:
            return y
        block = min(self.block_channels, n_channels)
        if self.n_threads == 1:
            _filtfilt_serial(x, y, self._sos_k, self._zi_k, self.padlen, block)
        else:
            # One block per thread (a multiple of 16 channels: whole SIMD vectors).
            share = -(-n_channels // self.n_threads)
            block = min(block, max(16, -(-share // 16) * 16))
            previous = numba.get_num_threads()
            numba.set_num_threads(min(self.n_threads, numba.config.NUMBA_NUM_THREADS))
            try:
                _filtfilt_parallel(x, y, self._sos_k, self._zi_k, self.padlen, block)
            finally:
                numba.set_num_threads(previous)
        return y

    def filter_chunk(
        self, traces, start: int, end: int, margin: int | None = None, channels=None
    ) -> np.ndarray:
        """Read ``traces[start:end]`` with margins, filter, and return the interior.

        `traces` is any array-like indexable by sample slices (memmap, lazy
        concatenation). The result equals filtering the whole of `traces`
        and keeping ``start:end``, to float32 precision. `channels`, if
        given, selects columns before filtering.
        """
        n = traces.shape[0]
        if not 0 <= start < end <= n:
            raise FilterError(f"Filter: bad chunk {start}:{end} of a recording of {n} samples.")
        m = self.margin_samples if margin is None else int(margin)
        a, b = max(0, start - m), min(n, end + m)
        # A chunk shorter than the padding cannot be filtered on its own: widen it.
        while b - a <= self.padlen and (a > 0 or b < n):
            a, b = max(0, a - self.padlen), min(n, b + self.padlen)
        data = np.asarray(traces[a:b])
        if channels is not None:
            data = data[:, channels]
        return self(data)[start - a : end - a]


def _make_filter(**parameters) -> Filter:
    return Filter(**parameters)


STAGES = [
    Stage(
        name="butterworth",
        kind="filter",
        description="Zero-phase Butterworth band-pass (numba, sosfiltfilt-exact).",
        factory=_make_filter,
        parameters={
            "rate": None,
            "low": 500.0,
            "high": None,
            "order": 3,
            "n_threads": 1,
            "precision": "float64",
        },
        requires=(),
    )
]
