"""A small wrapper around h5py with klusta's conventions for attributes.

Conventions (those of klusta's ``kwik/h5.py``, so files stay interchangeable):

- a ``str`` attribute is written as a one-element fixed-length byte-string
  array (``np.array([value], dtype='S')``), and read back as ``str``;
- a list of ``str`` becomes a fixed-length byte-string array;
- ``bool`` becomes ``int``, ``None`` becomes ``''``;
- writing an attribute at a path that does not exist creates the group.

`File` is a context manager; `open_h5` opens it. Errors about the file itself
(missing, truncated, not HDF5) are raised as `H5Error`, a `KwikError` (a `PhyError`) naming
the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import KwikError


class H5Error(KwikError):
    """An HDF5 file cannot be opened or does not contain what was asked (a `KwikError`)."""


def _split_hdf5_path(path: str) -> tuple[str, str]:
    """Return ``(parent_group_path, name)`` of an absolute HDF5 path."""
    if not path.startswith("/"):
        raise ValueError(f"The HDF5 path {path!r} should start with '/'.")
    if "//" in path:
        raise ValueError(f"The HDF5 path {path!r} contains a double slash.")
    if path == "/":
        return "/", ""
    parts = path[1:].rstrip("/").split("/")
    return "/" + "/".join(parts[:-1]), parts[-1]


def _decode(value: Any) -> Any:
    """Turn HDF5 byte strings back into Python strings."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO" and value.ndim == 1 \
            and len(value) == 1:
        return _decode(value[0])
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        return [v.decode("utf-8", errors="replace") for v in value]
    return value


def _encode(value: Any) -> Any:
    """klusta's attribute encoding (see the module docstring)."""
    if value is None:
        value = ""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        return np.array([v.encode("utf-8") for v in value], dtype="S")
    if isinstance(value, (list, tuple)) and not value:
        return np.zeros(0, dtype=np.int64)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        # Fixed-length strings, not variable-length ones: what klusta wrote
        # (vlen strings crashed some h5py builds), and what it reads.
        return np.array([value.encode("utf-8")], dtype="S")
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    return value


class File:
    """An HDF5 file, opened lazily; use as a context manager.

    Parameters
    ----------
    filename : path
        The HDF5 file.
    mode : str
        h5py mode: ``'r'`` (default), ``'r+'``, ``'a'``, ``'w'``.
    """

    def __init__(self, filename: str | os.PathLike, mode: str | None = None) -> None:
        self.filename = str(filename)
        self.mode = mode or "r"
        self._h5py_file: h5py.File | None = None

    # Open and close -------------------------------------------------------

    @property
    def h5py_file(self) -> h5py.File | None:
        """Native h5py file handle (None when closed)."""
        return self._h5py_file

    def is_open(self) -> bool:
        return self._h5py_file is not None

    def open(self, mode: str | None = None) -> None:
        """Open the file (no-op if it is already open)."""
        if mode is not None:
            self.mode = mode
        if self.is_open():
            return
        if self.mode in ("r", "r+") and not os.path.exists(self.filename):
            raise H5Error(f"{self.filename}: no such file or directory.")
        try:
            self._h5py_file = h5py.File(self.filename, self.mode)
        except (OSError, ValueError, RuntimeError) as exc:
            raise H5Error(f"{self.filename}: not a readable HDF5 file "
                          f"(truncated or corrupted?): {exc}") from None

    def close(self) -> None:
        if self.is_open():
            try:
                self._h5py_file.close()
            finally:
                self._h5py_file = None

    def flush(self) -> None:
        """Flush the file's buffers to disk."""
        if self.is_open():
            self._h5py_file.flush()

    def __enter__(self) -> File:
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _file(self) -> h5py.File:
        if self._h5py_file is None:
            raise H5Error(f"{self.filename}: the file is not open.")
        return self._h5py_file

    # Datasets -------------------------------------------------------------

    def read(self, path: str) -> h5py.Dataset:
        """Return the h5py dataset at `path` (lazy: index it to read)."""
        f = self._file()
        if path not in f:
            raise H5Error(f"{self.filename}: {path} does not exist.")
        node = f[path]
        if not isinstance(node, h5py.Dataset):
            raise H5Error(f"{self.filename}: {path} is a {type(node).__name__}, not a dataset.")
        return node

    def write(self, path: str, array=None, dtype=None, shape=None, overwrite: bool = False,
              **kwargs) -> h5py.Dataset:
        """Write a NumPy array (or create an empty dataset) in the file.

        Parameters
        ----------
        path : str
            Full HDF5 path of the dataset to create (parents are created).
        array : ndarray
            Array to write.
        dtype, shape :
            If `array` is None, the dtype and shape of the new dataset.
        overwrite : bool
            If False, raise `H5Error` when the dataset already exists.
        kwargs :
            Passed to h5py's ``create_dataset`` (e.g. ``maxshape``, ``chunks``).
        """
        f = self._file()
        group_path, name = _split_hdf5_path(path)
        group = f.require_group(group_path)
        if path in f:
            if not overwrite:
                raise H5Error(f"{self.filename}: the dataset {path} already exists.")
            del f[path]
        if array is not None:
            return group.create_dataset(name, data=array, **kwargs)
        if dtype is None or shape is None:
            raise ValueError("Give `array`, or `dtype` and `shape`.")
        return group.create_dataset(name, dtype=dtype, shape=shape, **kwargs)

    # Copy, move, delete ---------------------------------------------------

    def _check_move_copy(self, path: str, new_path: str) -> None:
        if not self.exists(path):
            raise H5Error(f"{self.filename}: {path} does not exist.")
        if self.exists(new_path):
            raise H5Error(f"{self.filename}: {new_path} already exists.")

    def move(self, path: str, new_path: str) -> None:
        """Move (rename) a group or dataset."""
        self._check_move_copy(path, new_path)
        self._file().require_group(_split_hdf5_path(new_path)[0])
        self._file().move(path, new_path)

    def copy(self, path: str, new_path: str) -> None:
        """Copy a group or dataset, with its attributes and children."""
        self._check_move_copy(path, new_path)
        self._file().require_group(_split_hdf5_path(new_path)[0])
        self._file().copy(path, new_path)

    def delete(self, path: str) -> None:
        """Delete a group or dataset."""
        if not path.startswith("/"):
            path = "/" + path
        if not self.exists(path):
            raise H5Error(f"{self.filename}: {path} does not exist.")
        del self._file()[path]

    # Attributes -----------------------------------------------------------

    def read_attr(self, path: str, attr_name: str, default: Any = KeyError) -> Any:
        """Read an attribute; strings come back as ``str``.

        Raises `H5Error` if it is missing, unless `default` is given.
        """
        # One lookup of the object and of the attribute (KeyError when either is missing):
        # a Kwik file's probe is read one channel attribute at a time, and checking first
        # doubled the cost of opening a 384-channel file.
        try:
            value = self._file()[path].attrs[attr_name]
        except KeyError:
            if default is not KeyError:
                return default
            raise H5Error(f"{self.filename}: no attribute {attr_name!r} at {path}.") from None
        return _decode(value)

    def write_attr(self, path: str, attr_name: str, value: Any) -> None:
        """Write an attribute (klusta's encoding), creating the group if needed."""
        f = self._file()
        if path not in f:
            f.require_group(path)
        f[path].attrs[attr_name] = _encode(value)

    def attrs(self, path: str = "/") -> list[str]:
        """Sorted attribute names at `path` (empty if it does not exist)."""
        f = self._file()
        return sorted(f[path].attrs) if path in f else []

    def has_attr(self, path: str, attr_name: str) -> bool:
        f = self._file()
        return path in f and attr_name in f[path].attrs

    # Children -------------------------------------------------------------

    def children(self, path: str = "/") -> list[str]:
        """Sorted names of the children of the group at `path` ([] if absent)."""
        f = self._file()
        if path not in f or not isinstance(f[path], h5py.Group):
            return []
        return sorted(f[path].keys())

    def groups(self, path: str = "/") -> list[str]:
        f = self._file()
        return [k for k in self.children(path) if isinstance(f[path].get(k), h5py.Group)]

    def datasets(self, path: str = "/") -> list[str]:
        f = self._file()
        return [k for k in self.children(path) if isinstance(f[path].get(k), h5py.Dataset)]

    def exists(self, path: str) -> bool:
        return path in self._file()

    def __contains__(self, path: str) -> bool:
        return self.exists(path)

    def describe(self) -> str:
        """The list of all groups and datasets in the file (returned and printed)."""
        lines: list[str] = []

        def visit(name, node):
            info = ("/" + name).ljust(50)
            if isinstance(node, h5py.Dataset):
                info += str(node.shape).ljust(20) + str(node.dtype)
            lines.append(info.rstrip())

        self._file().visititems(visit)
        text = "\n".join(lines)
        print(text)
        return text


def open_h5(filename: str | os.PathLike, mode: str | None = None) -> File:
    """Open an HDF5 file and return an open `File` (also a context manager)."""
    file = File(filename, mode=mode)
    file.open()
    return file
