"""``.raw.kwd`` files: the HDF5 raw-data files of the Kwik format.

Layout: ``/recordings/<r>/data``, an ``(n_samples, n_channels)`` dataset per
recording, recordings numbered ``0, 1, ...``. The recordings of one file are
one continuous recording for phy (concatenated in recording order, with no
gap), as in the Kwik model.

Contiguous, uncompressed datasets are memory-mapped straight from the file
(``dataset.id.get_offset()``): reading a window is then a plain page-cache
read, an order of magnitude faster than going through h5py. Chunked or
compressed datasets are sliced lazily through h5py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from phy_core.arrays import ConcatenatedArrays, normalize_rows

from .dat import RawDataError


class KwdError(RawDataError):
    """A ``.raw.kwd`` file is missing, not HDF5, or not laid out as expected."""


class H5Traces:
    """An ``(n_samples, n_channels)`` HDF5 dataset, read lazily and indexed like numpy.

    Keeps a reference to its open file, so the file stays open as long as the
    array is used. h5py refuses unsorted or repeated fancy indices: they are
    sorted and de-duplicated here, and put back in the asked order.
    """

    def __init__(self, dataset: Any, file: Any = None, owns_file: bool = False) -> None:
        self.dataset = dataset
        self.file = file
        self.owns_file = owns_file
        self.shape = tuple(int(n) for n in dataset.shape)
        self.dtype = np.dtype(dataset.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, selection) -> np.ndarray:
        try:
            return np.asarray(self.dataset[selection])
        except Exception as exc:  # a corrupted chunk: h5py raises OSError and others
            raise KwdError(f"{self.file.filename if self.file else ''}: "
                           f"{self.dataset.name}: cannot be read "
                           f"({type(exc).__name__}: {exc}).") from None

    def __getitem__(self, item):
        rows, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
        if isinstance(rows, slice) and (rows.step is None or rows.step == 1):
            start, stop, _ = rows.indices(self.shape[0])
            out = self._read(slice(start, max(start, stop)))
            return out[(slice(None), *rest)] if rest else out
        index = normalize_rows(rows, self.shape[0])
        if np.ndim(index) == 0:
            return self._read(slice(index, index + 1))[(0, *rest)]
        unique, inverse = np.unique(index.ravel(), return_inverse=True)
        if len(unique) == 0:
            block = np.zeros((0, *self.shape[1:]), dtype=self.dtype)
        elif unique[-1] - unique[0] < 4 * len(unique) + 4096:
            # Close rows: one contiguous read is faster than a scattered selection.
            block = self._read(slice(unique[0], unique[-1] + 1))[unique - unique[0]]
        else:
            block = self._read(unique)  # h5py needs increasing indices
        return block[(inverse.reshape(index.shape), *rest)]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        """Close the HDF5 file if `read_kwd` opened it (a file given open is left open)."""
        if self.owns_file and self.file is not None and self.file.id.valid:
            self.file.close()


def memmap_h5_dataset(path: str | os.PathLike | None, dataset: Any) -> np.memmap | None:
    """Memory-map an HDF5 dataset straight from its file, or None if that is not possible.

    Only a contiguous, uncompressed, non-external, non-empty dataset of
    integers or floats stored in `path` can be mapped (``dataset.id.get_offset()``);
    a mapped read is a plain page-cache read, much faster than going through h5py.

    Parameters
    ----------
    path : path or None
        The file on disk that holds `dataset` (None: not on disk, never mapped).
    dataset : h5py.Dataset

    Raises
    ------
    KwdError
        If the file is too short for the dataset (truncated file).
    """
    if path is None or dataset.chunks is not None or dataset.compression is not None:
        return None
    dtype = dataset.dtype
    if dataset.external or dataset.size == 0 or dtype.hasobject or dtype.kind not in "iuf":
        return None
    try:
        offset = dataset.id.get_offset()
    except Exception:  # h5py raises various errors for unallocated storage
        return None
    if offset is None:
        return None
    path = Path(path)
    nbytes = int(dataset.size) * dtype.itemsize
    if offset + nbytes > path.stat().st_size:
        raise KwdError(
            f"{path}: {dataset.name} needs {nbytes} bytes at offset {offset}, but the file "
            f"has only {path.stat().st_size} bytes (truncated file?)."
        )
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=dataset.shape)


def _open(kwd) -> tuple[Any, Path | None, str]:
    """Return ``(h5py.File, path, name for messages)``."""
    if isinstance(kwd, h5py.File):
        if not kwd.id.valid:
            raise KwdError("read_kwd: the given HDF5 file is closed.")
        # Memory-map only what is on disk, as the disk has it: not an in-memory
        # ('core') file, and flush a file open for writing first.
        path = Path(kwd.filename) if kwd.driver == "sec2" and kwd.filename else None
        if path is not None and kwd.mode != "r":
            kwd.flush()
        return kwd, path, str(kwd.filename)
    if not isinstance(kwd, (str, os.PathLike)):
        raise KwdError(f"read_kwd: expected a path or an open h5py.File, got {type(kwd)}.")
    path = Path(kwd)
    if not path.exists():
        raise KwdError(f"{path}: no such file.")
    if path.is_dir():
        raise KwdError(f"{path}: is a directory, not a .raw.kwd file.")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except Exception:
        is_hdf5 = False
    if not is_hdf5:
        raise KwdError(f"{path}: not an HDF5 file (a .raw.kwd file is HDF5).")
    try:
        return h5py.File(path, "r"), path, str(path)
    except Exception as exc:  # corrupted HDF5: h5py raises OSError and others
        raise KwdError(f"{path}: cannot be opened as HDF5 ({exc}).") from None


def read_kwd_recordings(kwd) -> list:
    """The traces of every recording of a ``.raw.kwd`` file, in recording order.

    Parameters
    ----------
    kwd : path or h5py.File
        The file; an open file stays open (and must stay open while the arrays
        are used, unless they are memory-mapped).

    Returns
    -------
    recordings : list of arrays
        ``(n_samples_r, n_channels)`` each: ``np.memmap`` for contiguous
        uncompressed datasets, else a lazy `H5Traces`.

    Raises
    ------
    KwdError
        If the file is missing, not HDF5, has no ``/recordings``, a recording
        has no 2-D numeric ``data``, or recordings differ in channel count.
    """
    f, path, name = _open(kwd)
    opened_here = f is not kwd
    try:
        arrays = _read_recordings(f, path, name)
    except Exception as exc:
        if opened_here:
            f.close()
        if isinstance(exc, KwdError):
            raise
        # A corrupted file can make h5py raise almost anything.
        raise KwdError(f"{name}: cannot be read ({type(exc).__name__}: {exc}).") from None
    if opened_here and all(isinstance(a, np.memmap) for a in arrays):
        f.close()  # the memmaps do not need the HDF5 handle
    for array in arrays:
        if isinstance(array, H5Traces):
            array.owns_file = opened_here
    return arrays


def _read_recordings(f, path: Path | None, name: str) -> list:
    recordings = f.get("recordings")
    if not isinstance(recordings, h5py.Group):
        raise KwdError(f"{name}: no /recordings group (is this a .raw.kwd file?).")
    keys = list(recordings.keys())
    if not keys:
        raise KwdError(f"{name}: /recordings is empty.")
    bad = [k for k in keys if not k.isdigit()]
    if bad:
        raise KwdError(f"{name}: recordings must be numbered 0, 1, ..., found {bad[0]!r}.")
    arrays = []
    for key in sorted(keys, key=int):
        where = f"{name}: /recordings/{key}/data"
        dataset = recordings[key].get("data") if isinstance(recordings[key], h5py.Group) \
            else None
        if not isinstance(dataset, h5py.Dataset):
            raise KwdError(f"{where}: missing (each recording needs a data dataset).")
        if dataset.ndim != 2:
            raise KwdError(f"{where}: expected a 2-D (n_samples, n_channels) array, "
                           f"found shape {dataset.shape}.")
        if dataset.dtype.kind not in "iuf":
            raise KwdError(f"{where}: expected integer or float samples, found {dataset.dtype}.")
        array = memmap_h5_dataset(path, dataset)
        arrays.append(array if array is not None else H5Traces(dataset, f))
    channels = {a.shape[1] for a in arrays}
    if len(channels) > 1:
        counts = ", ".join(f"recording {k}: {a.shape[1]}" for k, a in
                           zip(sorted(keys, key=int), arrays))
        raise KwdError(f"{name}: the recordings have different channel counts ({counts}).")
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise KwdError(f"{name}: the recordings have different dtypes "
                       f"({', '.join(sorted(map(str, dtypes)))}).")
    return arrays


def read_kwd(kwd):
    """All the traces of a ``.raw.kwd`` file, recordings concatenated in order.

    Returns
    -------
    traces : np.memmap, H5Traces or ConcatenatedArrays
        ``(n_samples, n_channels)``, lazy: nothing is loaded until indexed.

    Raises
    ------
    KwdError
        See `read_kwd_recordings`.
    """
    arrays = read_kwd_recordings(kwd)
    return arrays[0] if len(arrays) == 1 else ConcatenatedArrays(arrays)
