"""Features and masks streamed straight into the ``.kwx``, before their dataset exists.

A detection run learns its number of spikes only at the end, but the
``features_masks`` dataset is contiguous (so that the ``.kwx`` can be memory-
mapped) and must be created with its final size. Writing the rows to a
temporary file and copying them in at the end costs a second write of the
whole ``.kwx`` (3 GB for 200 s at 1024 channels) and an fsync of all of it
after the pass.

`KwxRowWriter` instead appends the rows to the ``.kwx`` file itself, beyond
the end of what HDF5 has allocated, from an address aligned to `ALIGNMENT`.
`KwxRowWriter.adopt` then creates the dataset with its space allocated
early, never filled, and with large allocations aligned to `ALIGNMENT`: HDF5
places it at the first aligned address after its own metadata, which is
where the rows already are (the usual case: nothing is copied). When HDF5
places it elsewhere (the dataset's header crossed an alignment boundary),
the rows are moved into place before the file is closed: HDF5 truncates the
file to its own end of allocation on close. Either way the first and last
rows are read back through HDF5 and compared with what was appended.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .errors import KwikError

logger = logging.getLogger("phy")

#: Alignment of the dataset's data in the file, bytes.
ALIGNMENT = 2**20
#: Room left for the dataset's object header between HDF5's end and the rows.
HEADER_ROOM = 16 * 2**10
#: Allocations at least this large are aligned (the data; not the small headers).
ALIGN_THRESHOLD = 64 * 2**10
_COPY_BLOCK = 64 * 2**20


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


class KwxRowWriter:
    """Append ``(n, n_columns, 2)`` float32 rows to a ``.kwx`` file for one channel group.

    Parameters
    ----------
    kwx_path : path
        An existing, closed ``.kwx`` file, not opened by anything else until
        `adopt` (or `close`).
    n_columns : int
        ``n_channels * n_features_per_channel``.
    """

    def __init__(self, kwx_path: str | os.PathLike, n_columns: int) -> None:
        self.path = Path(kwx_path)
        self.n_columns = int(n_columns)
        self.row_bytes = self.n_columns * 2 * 4
        self.start = _aligned(self.path.stat().st_size + HEADER_ROOM)
        self.n_rows = 0
        self._fd: int | None = os.open(self.path, os.O_WRONLY)
        self._first_row = self._last_row = b""  # to check the adopted dataset

    def append(self, rows) -> None:
        """Write rows (an array, or bytes of whole rows) after those already written."""
        if isinstance(rows, np.ndarray):
            data = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1).view(np.uint8)
        else:
            data = np.frombuffer(rows, dtype=np.uint8)
        if len(data) % self.row_bytes:
            raise KwikError(f"{self.path}: {len(data)} bytes are not whole rows of "
                            f"{self.row_bytes} bytes.")
        if self._fd is None:
            raise KwikError(f"{self.path}: the row writer is closed.")
        offset = self.start + self.n_rows * self.row_bytes
        written = 0
        while written < len(data):
            written += os.pwrite(self._fd, data[written:], offset + written)
        self.n_rows += len(data) // self.row_bytes
        if len(data):
            self._first_row = self._first_row or bytes(data[:self.row_bytes])
            self._last_row = bytes(data[-self.row_bytes:])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def adopt(self, dataset_path: str) -> bool:
        """Create the ``(n_rows, n_columns, 2)`` float32 dataset over the written rows.

        Returns True if the rows were already in place, False if they were
        moved. Closes the writer.
        """
        import h5py

        self.close()
        shape = (self.n_rows, self.n_columns, 2)
        nbytes = self.n_rows * self.row_bytes
        group_path, name = dataset_path.rsplit("/", 1)
        with h5py.File(self.path, "a", alignment_threshold=ALIGN_THRESHOLD,
                       alignment_interval=ALIGNMENT) as f:
            if dataset_path in f:
                raise KwikError(f"{self.path}: {dataset_path} already exists.")
            group = f.require_group(group_path or "/")
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_layout(h5py.h5d.CONTIGUOUS)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
            dataset = h5py.h5d.create(group.id, name.encode(), h5py.h5t.IEEE_F32LE,
                                      h5py.h5s.create_simple(shape), dcpl=dcpl)
            offset = dataset.get_offset() if nbytes else self.start
            if offset is None:
                raise KwikError(f"{self.path}: HDF5 allocated no space for {dataset_path}.")
            in_place = offset == self.start
            if not in_place:
                logger.debug("%s: moving %d bytes of feature rows from %d to %d.", self.path,
                             nbytes, self.start, offset)
                _move(self.path, self.start, offset, nbytes)
            f.flush()
        self._check(dataset_path)
        return in_place

    def _check(self, dataset_path: str) -> None:
        """The first and last rows, read back through HDF5, are those appended."""
        import h5py

        if not self.n_rows:
            return
        with h5py.File(self.path, "r") as f:
            dataset = f[dataset_path]
            for row, expected in ((0, self._first_row), (self.n_rows - 1, self._last_row)):
                if dataset[row].tobytes() != expected:
                    raise KwikError(f"{self.path}: row {row} of {dataset_path} does not read "
                                    "back as written.")


def _move(path: Path, source: int, destination: int, nbytes: int) -> None:
    """Move `nbytes` within a file from `source` to `destination` (overlap-safe)."""
    starts = range(0, nbytes, _COPY_BLOCK)
    # Like memmove: copy from the end first when moving up over the source.
    order = reversed(starts) if destination > source else starts
    fd = os.open(path, os.O_RDWR)
    try:
        for start in order:
            size = min(_COPY_BLOCK, nbytes - start)
            block = os.pread(fd, size, source + start)
            if len(block) != size:
                raise KwikError(f"{path}: truncated while moving the feature rows.")
            view = memoryview(block)
            written = 0
            while written < size:
                written += os.pwrite(fd, view[written:], destination + start + written)
    finally:
        os.close(fd)
