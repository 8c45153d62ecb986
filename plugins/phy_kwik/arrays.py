"""Lazy array views used by the Kwik model: features, masks, traces, waveforms.

Each view has ``shape``, ``dtype``, ``ndim``, ``len()`` and indexing along
the first axis (int, slice, integer array, or a tuple whose first element is
one of these); only the requested rows are read.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from .errors import KwikError

logger = logging.getLogger("phy")


def _normalise_rows(item, n: int):
    """Split an index into (sorted unique rows to read, how to reorder, rest, scalar?)."""
    rows, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
    if isinstance(rows, slice):
        return rows, None, rest, False
    index = np.arange(n)[rows]
    if np.ndim(index) == 0:
        return slice(int(index), int(index) + 1), None, rest, True
    index = np.asarray(index).ravel()
    unique, inverse = np.unique(index, return_inverse=True)
    return unique, inverse, rest, False


def read_rows(source, item, n: int, where: str = "") -> tuple[np.ndarray, tuple, bool]:
    """Read rows of `source` (array, memmap or h5py dataset) in the order asked."""
    rows, inverse, rest, scalar = _normalise_rows(item, n)
    try:
        if isinstance(rows, np.ndarray) and not isinstance(source, np.ndarray):
            # h5py needs increasing indices; read the unique sorted rows once.
            out = np.asarray(source[rows]) if len(rows) else \
                np.zeros((0, *source.shape[1:]), dtype=source.dtype)
        else:
            out = np.asarray(source[rows])
    except (OSError, RuntimeError, KeyError) as exc:
        raise KwikError(f"{where}: cannot read the data ({exc}).") from None
    if inverse is not None:
        out = out[inverse]
    return out, rest, scalar


class LazyView:
    """A lazy transformation of the rows of a source array."""

    def __init__(self, source, shape, dtype, transform, where: str = "") -> None:
        self._source = source
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._transform = transform
        self._where = where

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item) -> np.ndarray:
        data, rest, scalar = read_rows(self._source, item, self.shape[0], self._where)
        out = self._transform(data)
        if rest:
            out = out[(slice(None), *rest)]
        return out[0] if scalar else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def features_view(fm, n_features_per_channel: int, where: str) -> LazyView:
    n, n_cols, _ = fm.shape
    return LazyView(fm, (n, n_cols), np.float32, lambda x: x[..., 0], where)


def masks_view(fm, n_features_per_channel: int, where: str) -> LazyView:
    n, n_cols, _ = fm.shape
    f = n_features_per_channel
    return LazyView(fm, (n, n_cols // f), np.float32, lambda x: x[:, ::f, 1], where)


def constant_view(shape, value: float = 0.0, dtype=np.float32) -> LazyView:
    """A virtual array filled with `value` (for missing features, masks or traces)."""
    shape = tuple(shape)
    dummy = _RowCounter(shape[0])
    return LazyView(dummy, shape, dtype,
                    lambda rows: np.full((len(rows), *shape[1:]), value, dtype=dtype))


class _RowCounter:
    """Stands in for a source when only the row count matters."""

    def __init__(self, n: int) -> None:
        self.shape = (n,)
        self.dtype = np.dtype(np.int64)

    def __getitem__(self, rows):
        return np.arange(self.shape[0])[rows]


def columns_view(traces, columns: np.ndarray, where: str) -> LazyView:
    """Select the columns (channels) `columns` of a ``(n_samples, n_all)`` array."""
    columns = np.asarray(columns, dtype=np.int64)
    return LazyView(traces, (traces.shape[0], len(columns)), traces.dtype,
                    lambda x: x[:, columns], where)


def mmap_h5_dataset(path: str, dset):
    """Memory-map a contiguous, uncompressed HDF5 dataset; None if not possible."""
    try:
        if dset.chunks is not None or dset.compression is not None:
            return None
        offset = dset.id.get_offset()
        dtype = dset.dtype
        if offset is None or dtype.hasobject or dtype.kind not in "iuf":
            return None
        nbytes = int(np.prod(dset.shape)) * dtype.itemsize
        if nbytes == 0 or offset + nbytes > os.path.getsize(path):
            return None
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=dset.shape)
    except (OSError, ValueError, RuntimeError, TypeError):
        return None


class FilteredWaveforms:
    """Waveforms extracted lazily from the traces and band-pass filtered.

    For every requested spike at sample ``t``, the window
    ``[t - n_before - margin, t + n_after + margin)`` of the traces is read
    (zero-padded outside the recording), converted to float64, filtered
    forward and backward along time (``scipy.signal.sosfiltfilt`` with a
    Butterworth band-pass ``sos``), and ``[margin, margin + n_before +
    n_after)`` is kept: shape ``(n_spikes, n_before + n_after, n_channels)``,
    float32. Without traces, waveforms are zeros.

    Parameters
    ----------
    traces : array-like (n_samples, n_channels) or None
    spike_samples : int array (n_spikes,)
    n_before, n_after : int
    sos : array or None
        Second-order sections (None: no filtering).
    margin : int
        Samples read on each side so that the filter's edge effects fall
        outside the kept window.
    """

    def __init__(self, traces, spike_samples, n_before: int, n_after: int, n_channels: int,
                 sos=None, margin: int = 0, where: str = "") -> None:
        self._traces = traces
        self._spike_samples = np.asarray(spike_samples, dtype=np.int64)
        self.n_before, self.n_after = int(n_before), int(n_after)
        self.sos = sos
        self.margin = int(margin) if sos is not None else 0
        self.shape = (len(self._spike_samples), self.n_before + self.n_after, int(n_channels))
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        self._where = where

    def __len__(self) -> int:
        return self.shape[0]

    def _window(self, t: int) -> np.ndarray:
        n_samples = self._traces.shape[0]
        start = t - self.n_before - self.margin
        stop = t + self.n_after + self.margin
        out = np.zeros((stop - start, self.shape[2]), dtype=np.float64)
        a, b = max(start, 0), min(stop, n_samples)
        if a < b:
            out[a - start:b - start] = read_rows(self._traces, slice(a, b), n_samples,
                                                 self._where)[0]
        return out

    def __getitem__(self, item) -> np.ndarray:
        rows, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
        index = np.arange(self.shape[0])[rows]
        scalar = np.ndim(index) == 0
        index = np.atleast_1d(index)
        out = np.zeros((len(index), *self.shape[1:]), dtype=np.float32)
        if self._traces is not None and len(index):
            from scipy.signal import sosfiltfilt

            windows = np.stack([self._window(int(self._spike_samples[spike]))
                                for spike in index])
            if self.sos is not None:
                # One vectorised call for all the requested spikes.
                windows = sosfiltfilt(self.sos, windows, axis=1)
            out[:] = windows[:, self.margin:self.margin + self.shape[1]]
        if rest:
            out = out[(slice(None), *rest)]
        return out[0] if scalar else out


def make_bandpass(sample_rate: float, low: float, high_factor: float, order: int):
    """Butterworth band-pass ``[low, high_factor * sample_rate]`` as SOS, and its margin.

    The margin (samples read on each side of a waveform) is two periods of
    the low cutoff, at least ``3 * order``.
    """
    from scipy.signal import butter

    high = high_factor * sample_rate
    nyquist = sample_rate / 2
    if not 0 < low < high < nyquist:
        raise KwikError(f"invalid filter: {low} Hz to {high} Hz at {sample_rate} Hz "
                        f"(need 0 < low < high < {nyquist}).")
    sos = butter(int(order), [low, high], btype="bandpass", fs=sample_rate, output="sos")
    margin = max(3 * int(order), int(math.ceil(2 * sample_rate / low)))
    return sos, margin
