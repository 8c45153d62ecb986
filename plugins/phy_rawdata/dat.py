"""Flat binary traces (``.dat``, ``.bin``): memory-mapped ``(n_samples, n_channels)`` arrays."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from phy_core.errors import PhyError


class RawDataError(PhyError, ValueError):
    """A raw data file does not match what its parameters say."""


def _check_dtype(dtype, filename) -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError):
        raise RawDataError(f"{filename}: {dtype!r} is not a data type (e.g. 'int16').") from None
    if dtype.kind not in "iuf" or dtype.itemsize > 8:
        raise RawDataError(f"{filename}: the data type must be an integer or float, got {dtype}.")
    return dtype


def read_dat(
    filename: str | os.PathLike | Sequence[str | os.PathLike],
    dtype=None,
    shape: tuple[int, int] | None = None,
    offset: int = 0,
    n_channels: int | None = None,
):
    """Memory-map raw traces from a flat binary file (or several, concatenated in time).

    Parameters
    ----------
    filename : path or list of paths
        The ``.dat`` file(s). Several files are one recording, in the given
        order (same dtype, channel count and offset).
    dtype : dtype
        The sample type, e.g. ``'int16'``.
    shape : (n_samples, n_channels) or None
        Computed from the file size when `n_channels` is given.
    offset : int
        Header size in bytes.
    n_channels : int or None
        Number of channels interleaved in the file.

    Returns
    -------
    traces : np.memmap or ConcatenatedArrays
        ``(n_samples, n_channels)``, read-only.

    Raises
    ------
    RawDataError
        If a file is missing, or its size after the offset is not a multiple
        of ``n_channels * itemsize`` (the message gives the numbers).
    """
    if shape is not None:
        if not isinstance(shape, (tuple, list)) or len(shape) != 2 or not all(
            isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0
            for n in shape
        ):
            raise RawDataError(f"read_dat: shape must be (n_samples, n_channels), got {shape!r}.")
        if n_channels is not None and n_channels != shape[1]:
            raise RawDataError(
                f"read_dat: n_channels={n_channels!r} disagrees with shape={tuple(shape)}."
            )
        n_channels = shape[1]
    if not isinstance(filename, (str, os.PathLike)):
        files = list(filename)
        if not files:
            raise RawDataError("read_dat: no file given.")
        if len(files) > 1:
            arrays = ConcatenatedArrays(
                [read_dat(f, dtype=dtype, offset=offset, n_channels=n_channels) for f in files]
            )
            if shape is not None and tuple(shape) != arrays.shape:
                raise RawDataError(
                    f"{', '.join(map(str, files))}: the shape {tuple(shape)} disagrees with "
                    f"the file sizes, which give {arrays.shape}."
                )
            return arrays
        filename = files[0]
    path = Path(filename)
    if dtype is None:
        raise RawDataError(f"{path}: give the data type of the samples (dtype=...).")
    dtype = _check_dtype(dtype, path)
    if n_channels is None:
        raise RawDataError(f"{path}: give n_channels (or the shape) of the data.")
    if not isinstance(n_channels, (int, np.integer)) or isinstance(n_channels, bool) \
            or n_channels < 1:
        raise RawDataError(f"{path}: n_channels must be a positive integer, got {n_channels!r}.")
    if not isinstance(offset, (int, np.integer)) or isinstance(offset, bool) or offset < 0:
        raise RawDataError(f"{path}: offset must be a non-negative integer, got {offset!r}.")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise RawDataError(f"{path}: no such file.") from None
    except OSError as exc:
        raise RawDataError(f"{path}: cannot be read ({exc.strerror}).") from None
    if path.is_dir():
        raise RawDataError(f"{path}: is a directory, not a raw data file.")
    data_bytes = size - offset
    frame = int(n_channels) * dtype.itemsize
    if data_bytes < 0:
        raise RawDataError(f"{path}: the file has {size} bytes, less than the offset {offset}.")
    if data_bytes % frame:
        raise RawDataError(
            f"{path}: {data_bytes} bytes after the offset of {offset} is not a multiple of "
            f"n_channels * itemsize = {n_channels} * {dtype.itemsize} = {frame} bytes "
            f"({data_bytes // frame} full samples and {data_bytes % frame} bytes left over): "
            "check n_channels, dtype and offset."
        )
    n_samples = data_bytes // frame
    if shape is not None and tuple(shape) != (n_samples, n_channels):
        raise RawDataError(
            f"{path}: the shape {tuple(shape)} disagrees with the file size, which gives "
            f"({n_samples}, {n_channels})."
        )
    if n_samples == 0:
        return np.zeros((0, int(n_channels)), dtype=dtype)
    try:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset,
                         shape=(n_samples, int(n_channels)))
    except OSError as exc:
        raise RawDataError(f"{path}: cannot be memory-mapped ({exc}).") from None


def normalize_rows(rows, n: int):
    """Row indices selected by `rows` in an axis of length `n`, as numpy would select them.

    Returns an int or an int64 array of non-negative indices; raises IndexError
    like numpy for out-of-bounds indices. Never allocates ``arange(n)``, so
    indexing a long recording costs memory in the number of rows asked for.
    """
    if isinstance(rows, slice):
        return np.arange(*rows.indices(n), dtype=np.int64)
    if isinstance(rows, (int, np.integer)) and not isinstance(rows, (bool, np.bool_)):
        if not -n <= rows < n:
            raise IndexError(f"index {rows} is out of bounds for axis 0 with size {n}")
        return int(rows) % n
    index = np.asarray(rows)
    if index.dtype == bool:
        if index.shape != (n,):
            raise IndexError(f"boolean index of shape {index.shape} does not match "
                             f"axis 0 with size {n}")
        return np.flatnonzero(index)
    if index.size == 0:
        return np.zeros(index.shape, dtype=np.int64)
    if index.dtype.kind not in "iu":
        raise IndexError("only integers, slices and integer or boolean arrays are valid "
                         f"indices, got {index.dtype}")
    index = index.astype(np.int64)
    if index.min() < -n or index.max() >= n:
        bad = index[(index < -n) | (index >= n)][0]
        raise IndexError(f"index {bad} is out of bounds for axis 0 with size {n}")
    return np.where(index < 0, index + n, index)


class ConcatenatedArrays:
    """Several ``(n_i, n_channels)`` arrays seen as one, sliced lazily along time.

    Only the requested rows are read: ``traces[a:b]`` touches the files that
    overlap ``[a, b)``.
    """

    def __init__(self, arrays: Sequence) -> None:
        if not arrays:
            raise ValueError("ConcatenatedArrays needs at least one array.")
        n_channels = {a.shape[1:] for a in arrays}
        dtypes = {np.dtype(a.dtype) for a in arrays}
        if len(n_channels) != 1 or len(dtypes) != 1:
            raise RawDataError(
                f"Files to concatenate differ in channels or dtype: {sorted(n_channels)}, "
                f"{sorted(map(str, dtypes))}."
            )
        self.arrays = list(arrays)
        self.offsets = np.cumsum([0] + [a.shape[0] for a in arrays])
        self.shape = (int(self.offsets[-1]), *self.arrays[0].shape[1:])
        self.dtype = dtypes.pop()
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, start: int, stop: int) -> np.ndarray:
        parts = []
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for i in range(max(first, 0), len(self.arrays)):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            if lo >= stop:
                break
            parts.append(np.asarray(self.arrays[i][max(start, lo) - lo:min(stop, hi) - lo]))
        if not parts:
            return np.zeros((0, *self.shape[1:]), dtype=self.dtype)
        return np.concatenate(parts, axis=0)

    def _take(self, index: np.ndarray) -> np.ndarray:
        """Rows at arbitrary (non-negative, in-range) indices, in the given order."""
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        which = np.searchsorted(self.offsets, index, side="right") - 1
        for i in np.unique(which):
            sel = which == i
            local = index[sel] - self.offsets[i]
            # Contiguous reads are much faster on disk than scattered ones: read the
            # span once when the requested rows are close together.
            lo, hi = int(local.min()), int(local.max()) + 1
            if hi - lo <= max(4 * len(local), 4096):
                out[sel] = np.asarray(self.arrays[i][lo:hi])[local - lo]
            else:
                out[sel] = np.asarray(self.arrays[i][local])
        return out

    def __getitem__(self, item):
        rows, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
        if isinstance(rows, slice) and (rows.step is None or rows.step == 1):
            start, stop, _ = rows.indices(self.shape[0])
            out = self._rows(start, max(start, stop))
            return out[(slice(None), *rest)] if rest else out
        # Integers, arrays, boolean masks, strided slices: read each asked row once,
        # then let numpy apply the index (with the rest of the tuple) to that block,
        # so the semantics are numpy's own, broadcasting of advanced indices included.
        index = normalize_rows(rows, self.shape[0])
        if np.ndim(index) == 0:
            return self._rows(index, index + 1)[(0, *rest)]
        unique, inverse = np.unique(index.ravel(), return_inverse=True)
        block = self._take(unique)
        return block[(inverse.reshape(index.shape), *rest)]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)
