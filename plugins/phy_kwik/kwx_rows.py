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

The rows are written with direct I/O (``O_DIRECT``) where the file system
takes it: from the runner's shared memory to the disk without a copy into
the page cache. Through the page cache, writing the 3.3 GB of a 200 s,
1024-channel run cost the runner 2.5-8.5 s of system time (copies, and
reclaiming cache), as much as a third of the detection's wall time on two
cores; directly, 0.1 s. Direct writes must start and end on block
boundaries: the writer sends whole `BLOCK`-byte blocks from a block-aligned
file offset and keeps the last partial block (a few KB) until the next
rows complete it, or until `close`, which writes it through the page cache.
Rows from memory that is not aligned for direct I/O, and file systems that
refuse it (tmpfs, some network file systems), go through the page cache:
the bytes in the file are the same either way. The price: the ``.kwx`` is
not left in the page cache for the next reader (the clustering reads it
from disk).
"""

from __future__ import annotations

import contextlib
import errno
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
#: Direct writes are whole blocks of this size at multiples of it in the file (the
#: file system's block: no block is ever partly written directly).
BLOCK = 4096
#: Memory alignment direct I/O needs (the disk's logical block; 512 on most disks: a
#: disk that needs more refuses the first write, and the writer falls back).
MEMORY_ALIGNMENT = 512


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

    def __init__(self, kwx_path: str | os.PathLike, n_columns: int,
                 direct: bool = True) -> None:
        self.path = Path(kwx_path)
        self.n_columns = int(n_columns)
        self.row_bytes = self.n_columns * 2 * 4
        self.start = _aligned(self.path.stat().st_size + HEADER_ROOM)
        self.n_rows = 0
        #: Bytes written with direct I/O (the rest went through the page cache).
        self.direct_bytes = 0
        self._fd: int | None = os.open(self.path, os.O_WRONLY)
        self._direct_fd = _open_direct(self.path) if direct else None
        # The last partial block, after `_n_flushed` bytes (a multiple of BLOCK).
        self._pending = np.zeros(0, np.uint8)
        self._n_flushed = 0
        self._block = _aligned_buffer(BLOCK)
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
        if len(data):
            self._first_row = self._first_row or bytes(data[:self.row_bytes])
            self._last_row = bytes(data[-self.row_bytes:])
        self.n_rows += len(data) // self.row_bytes
        offset = self.start + self._n_flushed
        if len(self._pending):  # complete the partial block first
            n_pending = len(self._pending)
            head = min(BLOCK - n_pending, len(data))
            if n_pending + head < BLOCK:
                self._pending = np.concatenate([self._pending, data])
                return
            self._block[:n_pending] = self._pending
            self._block[n_pending:] = data[:head]
            self._write(self._block, offset)
            offset, data = offset + BLOCK, data[head:]
        whole = len(data) - len(data) % BLOCK
        self._write(data[:whole], offset)
        self._pending = data[whole:].copy()  # less than a block
        self._n_flushed = offset + whole - self.start

    def _write(self, data: np.ndarray, offset: int) -> None:
        """Write whole blocks at a block offset: directly if possible."""
        if not len(data):
            return
        if self._direct_fd is not None and data.ctypes.data % MEMORY_ALIGNMENT == 0:
            try:
                _pwrite_all(self._direct_fd, data, offset)
                self.direct_bytes += len(data)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # Refused (alignment this disk does not take): nothing was written.
                logger.debug("%s: direct writes refused (%s); through the page cache.",
                             self.path, e)
                self._close_direct()
        _pwrite_all(self._fd, data, offset)

    def close(self) -> None:
        """Write the last partial block (through the page cache) and close the file."""
        if self._fd is not None:
            try:
                _pwrite_all(self._fd, self._pending, self.start + self._n_flushed)
                self._pending = self._pending[:0]
            finally:
                self._close_direct()
                os.close(self._fd)
                self._fd = None

    def _close_direct(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None

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


def _open_direct(path: Path) -> int | None:
    """A descriptor of `path` for direct writes, or None where there is no such thing."""
    flag = getattr(os, "O_DIRECT", None)
    if flag is None:  # macOS, Windows
        return None
    with contextlib.suppress(OSError):  # EINVAL: the file system does not do direct I/O
        return os.open(path, os.O_WRONLY | flag)
    return None


def _aligned_buffer(size: int) -> np.ndarray:
    """`size` bytes starting at a multiple of `MEMORY_ALIGNMENT`."""
    raw = np.zeros(size + MEMORY_ALIGNMENT, np.uint8)
    skip = -raw.ctypes.data % MEMORY_ALIGNMENT
    return raw[skip:skip + size]


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


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
