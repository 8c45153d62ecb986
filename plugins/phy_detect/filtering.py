"""Zero-phase Butterworth band-pass filter, in numba, vectorised across channels.

The filter is the one `scipy.signal.sosfiltfilt` applies with its defaults
(a cascade of second-order sections, run forward then backward, after an odd
extension of ``padlen`` samples at each end), so that on a whole array the
result matches scipy to float32 precision. It is written for
``(n_samples, n_channels)`` float32 traces with channels contiguous: the
recursion along time cannot be vectorised, the channels can. The kernels
(`phy_detect.filter_kernels`) keep the filter state of 16 channels in SIMD
registers for a tile of rows, and prefetch the next tile; with `n_threads` > 1
the channel blocks are split between threads (numba ``prange``). No padded copy
of the data is made: the odd extensions are computed on the fly.

Design (`_kernel_design`): scipy's product of the b0 coefficients is one gain
on the input. Up to order 3 every section gets the numerator 1 - z^-2 (the
band-pass has N zeros at z = 1 and N at z = -1, so this is the same filter):
2 multiplications per section and sample instead of 5. Above order 3 that
pairing loses precision, and scipy's sections are kept (4 multiplications).

Numerics: data in and out are float32; the filter state and arithmetic are
float64 by default, float32 with ``precision='float32'``. Against
sosfiltfilt, order 3, the largest error is ~1e-5 of the signal's standard
deviation in float32, ~7e-7 in float64; most of the latter is the float32
rounding of the forward-pass output, which is stored as float32 (above order
3, also of each group of 3 sections: ~1e-6 at order 7, 5e-6 at order 20).

Speed (benchmarks/filter.py: 1 s of 30 kHz data, one core of an AMD EPYC
with AVX-512, CPU time, filtered in place): at 1024 channels ~18 ms float32
(57x real time) and ~22 ms float64 (47x), against 46 and 71 ms for the
previous kernel (whole rows, state in memory) and 660 ms for scipy's
sosfiltfilt. At 384 channels 3.8 and 7.4 ms: there the kernel runs at the
arithmetic limit (one AVX-512 FMA per cycle; 7 per row and 16 channels in the
fast form). 1024 channels are slower per channel: rows 4 KiB apart fall in
the same L1 set (see `filter_kernels._tile_rows`); 1008 or 1040 channels run
at ~10 ms.

Chunked processing: `Filter.margin_samples` is the overlap a chunked runner
adds on each side of a chunk so that the filtered interior equals filtering the
whole recording (to float32 precision). See its docstring.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np

from phy_core.descriptors import Stage
from phy_core.errors import PhyError

from .filter_kernels import FAST_MAX_ORDER, GROUP, filtfilt

__all__ = ["Filter", "FilterError", "STAGES"]

MAX_ORDER = 20

# Relative level below which the impulse response counts as gone (margin_samples).
MARGIN_TOLERANCE = 1e-7


class FilterError(PhyError, ValueError):
    """Invalid filter parameters or input."""


# -- public API ----------------------------------------------------------------


def _int_parameter(name: str, value, low: int, high: int) -> int:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        ok = math.isfinite(value) and int(value) == value and low <= value <= high
    if not ok:
        raise FilterError(f"Filter: {name} must be an integer in [{low}, {high}], got {value!r}.")
    return int(value)


def _kernel_design(sos: np.ndarray, precision: str):
    """Coefficients of the kernels: ``(coefficients, zi, gains, general)``.

    `coefficients` (n_groups, GROUP, 4) holds (b1, b2, a1, a2) per section
    with b0 = 1, `zi` (n_groups, GROUP, 2) the steady state for a unit input
    (as sosfilt_zi), ``gains[0]`` the factor on the input of the forward
    pass (scipy's product of b0, squared: the signal goes through twice),
    ``gains[1]`` that of the backward pass. Sections are padded to whole
    GROUPs with pass-through ones (zero coefficients, or a1 = 0, a2 = -1 in
    the fast form; zero state: y = u exactly).

    Up to FAST_MAX_ORDER, every section gets the numerator 1 - z^-2: a
    Butterworth band-pass of order N has N zeros at z = 1 and N at z = -1,
    so ``gain * prod_s (1 - z^-2) / (1 + a1_s z^-1 + a2_s z^-2)`` with
    scipy's denominators is the same filter, with cheaper sections.
    """
    from . import butterworth as signal

    gain = float(np.prod(sos[:, 0]))
    n = len(sos)
    general = n > FAST_MAX_ORDER
    cascade = np.zeros((n, 6))
    cascade[:, 3:] = sos[:, 3:]
    if general:
        cascade[:, :3] = sos[:, :3] / sos[:, :1]
    else:
        cascade[:, :3] = (1.0, 0.0, -1.0)
        _, h_ref = signal.sosfreqz(sos, worN=512)
        _, h = signal.sosfreqz(cascade, worN=512)
        if not np.allclose(gain * h, h_ref, rtol=0, atol=1e-9 * np.abs(h_ref).max()):
            raise FilterError("Filter: the band-pass does not have its zeros at z = 1 and z = -1.")
    n_groups = -(-n // GROUP)
    coefficients = np.zeros((n_groups * GROUP, 4))
    if not general:
        coefficients[:, 3] = -1.0
    coefficients[:n] = cascade[:, [1, 2, 4, 5]]
    zi = np.zeros((n_groups * GROUP, 2))
    zi[:n] = signal.sosfilt_zi(cascade)
    gains = np.ones((2, n_groups))
    gains[0, 0] = gain * gain
    kernel = [
        np.ascontiguousarray(a, dtype=precision)
        for a in (coefficients.reshape(n_groups, GROUP, 4), zi.reshape(n_groups, GROUP, 2), gains)
    ]
    return (*kernel, general)


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
    precision : {'float64', 'float32'}
        Type of the filter state and arithmetic. 'float64' (default) matches
        scipy to ~7e-7 of the signal scale; 'float32' is 1.2x (1024 channels)
        to 2x (384) faster, with errors ~1e-5 of the signal scale, far below
        the noise of any recording.

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
        if precision not in ("float64", "float32"):
            raise FilterError(
                f"Filter: precision must be 'float64' or 'float32', got {precision!r}."
            )
        self.precision = precision
        self.rate, self.low, self.high, self.order = rate, low, high, int(order)
        self.n_threads = int(n_threads)
        # The design is ours, in numpy (`butterworth`): the same sections as
        # scipy.signal, bit for bit, without importing scipy.signal (0.7 s).
        from . import butterworth as signal

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
        self._kernel = _kernel_design(self.sos, precision)
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
        from . import butterworth as signal

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

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None,
                 transposed: np.ndarray | None = None) -> np.ndarray:
        """Filter `x`, an ``(n_samples, n_channels)`` (or 1D) array; returns float32.

        `out`, if given, is a C-contiguous float32 array of the same shape that
        receives the result (reusing it spares the page faults of a fresh
        allocation, ~10-20 ms per 100 MB). It may be `x` itself (in place).
        int16 `x` is filtered without a float32 copy (converted on the fly).

        `transposed`, if given, a C-contiguous float32 ``(n_channels,
        n_samples)`` array, also receives the result, channel-major (bit for
        bit the transpose): the backward pass writes it while the rows are in
        cache, for about a third of what a transpose afterwards costs (384
        channels: +8 ms per 2 s chunk instead of +25 ms; 1024: +27 instead of
        +190 ms). The template matching's projections want that layout.
        """
        x = np.asarray(x)
        if x.ndim == 1:
            o = None if out is None else out[:, None]
            t = None if transposed is None else transposed.reshape(1, -1)
            return self(x[:, None], out=o, transposed=t)[:, 0]
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
        # int16 traces (most raw recordings) are read as they are: the kernels convert
        # them while copying into `out`, which spares a float32 copy (a pass over
        # ~126 MB per 1 s chunk at 1024 channels). The values are the same.
        x = np.ascontiguousarray(x, dtype=np.int16 if x.dtype == np.int16 else np.float32)
        if out is None:
            y = np.empty(x.shape, dtype=np.float32)
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
        if transposed is not None and not (
            isinstance(transposed, np.ndarray)
            and transposed.shape == x.shape[::-1]
            and transposed.dtype == np.float32
            and transposed.flags.c_contiguous
        ):
            raise FilterError(
                "Filter: `transposed` must be a C-contiguous float32 array of shape "
                f"{x.shape[::-1]}."
            )
        filtfilt(x, y, self._kernel, self.padlen, self.n_threads, xt=transposed)
        return y

    def load_range(self, n: int, start: int, end: int,
                   margin: int | None = None) -> tuple[int, int]:
        """The samples ``(a, b)`` `filter_chunk` reads to filter ``start:end`` of `n`."""
        if not 0 <= start < end <= n:
            raise FilterError(f"Filter: bad chunk {start}:{end} of a recording of {n} samples.")
        m = self.margin_samples if margin is None else int(margin)
        a, b = max(0, start - m), min(n, end + m)
        # A chunk shorter than the padding cannot be filtered on its own: widen it.
        while b - a <= self.padlen and (a > 0 or b < n):
            a, b = max(0, a - self.padlen), min(n, b + self.padlen)
        return a, b

    def filter_chunk(
        self, traces, start: int, end: int, margin: int | None = None, channels=None
    ) -> np.ndarray:
        """Read ``traces[start:end]`` with margins, filter, and return the interior.

        `traces` is any array-like indexable by sample slices (memmap, lazy
        concatenation). The result equals filtering the whole of `traces`
        and keeping ``start:end``, to float32 precision. `channels`, if
        given, selects columns before filtering.
        """
        a, b = self.load_range(traces.shape[0], start, end, margin)
        data = np.asarray(traces[a:b])
        if channels is not None:
            data = data[:, channels]
        return self(data)[start - a : end - a]


def warm_up(precision: str = "float64", transposed: bool = False) -> None:
    """Load (or compile) the kernels for `precision` without designing a filter.

    A detection worker calls this at start-up instead of building a `Filter`,
    whose design needs scipy.signal (most of a worker's start-up time); the
    filters it is then sent arrive designed. Any stable sections do: these
    are pass-through ones in the fast form (numerator 1 - z^-2, no poles).
    With `transposed`, also the kernels of the ``transposed`` output (of
    float32 traces filtered in place: the template matching's use).
    """
    coefficients = np.zeros((1, GROUP, 4), dtype=precision)
    coefficients[..., 1] = -1.0
    kernel = (coefficients, np.zeros((1, GROUP, 2), dtype=precision),
              np.ones((2, 1), dtype=precision), False)
    x = np.zeros((64, 17), dtype=np.float32)  # a whole block of channels and a partial one
    filtfilt(x, x, kernel, padlen=9)
    filtfilt(np.zeros(x.shape, np.int16), x, kernel, padlen=9)  # int16 traces
    # And read-only ones (a memory-mapped recording): numba types them apart.
    raw = np.zeros(x.shape, np.int16)
    raw.flags.writeable = False
    filtfilt(raw, x, kernel, padlen=9)
    if transposed:
        filtfilt(x, x, kernel, padlen=9, xt=np.empty(x.shape[::-1], np.float32))


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
