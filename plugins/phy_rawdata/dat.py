"""Flat binary traces (``.dat``, ``.bin``): memory-mapped ``(n_samples, n_channels)`` arrays."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from phy_core.arrays import ConcatenatedArrays
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
            parts = [read_dat(f, dtype=dtype, offset=offset, n_channels=n_channels)
                     for f in files]
            arrays = ConcatenatedArrays(parts)
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
