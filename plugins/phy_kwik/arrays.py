"""Lazy array views used by the Kwik model: features, masks, raw HDF5 traces.

Each view has ``shape``, ``dtype``, ``ndim``, ``len()`` and indexing along
the first axis (int, slice, integer array, or a tuple whose first element is
one of these); only the requested rows are read, and a failed read raises a
`KwikError` naming the file. Channel subsets and spike windows are the core's
`phy_core.arrays.ChannelSubset` and `SpikeWindows`.
"""

from __future__ import annotations

import math

import numpy as np

from phy_core.arrays import normalize_rows

from .errors import KwikError


def read_rows(source, item, n: int, where: str = "") -> tuple[np.ndarray, tuple, bool]:
    """Read rows of `source` (array, memmap or h5py dataset) in the order asked.

    Returns ``(rows, rest of the index, scalar?)``. h5py needs increasing
    indices: integer and boolean indices are read as sorted unique rows, once,
    then put back in the asked order (flattened).
    """
    rows, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
    inverse, scalar = None, False
    if not isinstance(rows, slice):
        index = normalize_rows(rows, n)
        if np.ndim(index) == 0:
            rows, scalar = slice(index, index + 1), True
        else:
            rows, inverse = np.unique(index.ravel(), return_inverse=True)
    try:
        if isinstance(rows, np.ndarray) and not isinstance(source, np.ndarray):
            # h5py refuses an empty list of rows.
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


def h5_view(dataset, where: str) -> LazyView:
    """An HDF5 dataset indexed like a numpy array, read errors raised as `KwikError`."""
    return LazyView(dataset, dataset.shape, dataset.dtype, _identity, where)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def make_bandpass(sample_rate: float, low: float, high_factor: float, order: int):
    """Butterworth band-pass ``[low, high_factor * sample_rate]`` as SOS, and its margin.

    The margin (samples read on each side of a waveform) is two periods of
    the low cutoff, at least ``3 * order``.
    """
    # scipy's design (the same sections, tested) without the import of scipy.signal.
    from phy_detect.butterworth import butter

    high = high_factor * sample_rate
    nyquist = sample_rate / 2
    if not 0 < low < high < nyquist:
        raise KwikError(f"invalid filter: {low} Hz to {high} Hz at {sample_rate} Hz "
                        f"(need 0 < low < high < {nyquist}).")
    sos = butter(int(order), [low, high], btype="bandpass", fs=sample_rate, output="sos")
    margin = max(3 * int(order), int(math.ceil(2 * sample_rate / low)))
    return sos, margin
