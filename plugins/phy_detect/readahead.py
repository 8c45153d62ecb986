"""The runner asks the kernel to read the recording ahead of the workers.

A worker reads its chunk through the memory map. When the pages are in the
page cache this is the cheapest read there is (a few minor faults), but when
they come from disk the worker stops on every missing page: at 1024 channels
a 200 s recording took 22-24 s from disk against 16-17 s from the page cache,
with both cores idle while they waited.

So the runner, which knows the order of the chunks, advises the kernel
(``posix_fadvise``) to read the chunk `ahead` places beyond the last job
submitted (``POSIX_FADV_WILLNEED``: the read starts in the background), and
that a chunk's pages are no longer needed once its result is in
(``POSIX_FADV_DONTNEED``, except the margin the next chunk shares), unless
they were already cached before the read-ahead (``mincore``): a recording
read again stays cached. Otherwise the page cache recycles a few hundred MB
instead of filling with a recording that does not fit in it anyway, keeps
what the sort reads next (the ``.kwx``), and the kernel is spared growing
it: on this machine (a VM) filling the cache with 12 GB of freshly used
memory cost more CPU than the detection's filter. The advice does not drop
pages another process has mapped (the GUI's trace view). Without
``os.posix_fadvise`` (macOS, Windows), or for a recording of several files or
a ``.raw.kwd``, it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os

import numpy as np

from .chunks import Chunk

_ADVISE = getattr(os, "posix_fadvise", None)


def _libc_mincore():
    with contextlib.suppress(OSError, AttributeError, TypeError):
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).mincore
    return None


_MINCORE = _libc_mincore() if _ADVISE is not None else None
#: Chunks read ahead of the last job submitted.
AHEAD = 2


class ReadAhead:
    """Read-ahead and release of the chunks of one pass over a flat binary recording.

    Parameters
    ----------
    traces : array
        The recording; advice is given only for a single `np.memmap` file.
    chunks : list of Chunk
        The pass's chunks, in the order their jobs are submitted.
    ahead : int
        How many chunks beyond the last submitted one to read ahead.
    """

    def __init__(self, traces, chunks: list[Chunk], ahead: int = AHEAD) -> None:
        self.chunks, self.ahead = chunks, int(ahead)
        self._fd: int | None = None
        self._next = 0  # the first chunk not yet read ahead
        self._was_cached: dict[int, bool] = {}
        self._map: mmap.mmap | None = None
        if _ADVISE is None or not isinstance(traces, np.memmap) or traces.filename is None \
                or traces.ndim != 2 or not traces.flags.c_contiguous:
            return
        self._offset = int(traces.offset)
        self._row_bytes = int(traces.shape[1]) * traces.dtype.itemsize
        with contextlib.suppress(OSError):
            self._fd = os.open(traces.filename, os.O_RDONLY)
        if self._fd is None or _MINCORE is None:
            return
        with contextlib.suppress(OSError, ValueError):
            # A mapping of the file (nothing is read) to ask `mincore` which pages are
            # cached: those are left in the cache after use.
            self._map = mmap.mmap(self._fd, 0, prot=mmap.PROT_READ)
            view = np.frombuffer(self._map, np.uint8)
            self._address = view.ctypes.data
            del view  # no export left: the map can be closed

    def submitted(self, j: int) -> None:
        """Job `j` is submitted: read ahead the chunks up to ``j + ahead``."""
        while self._next <= min(j + self.ahead, len(self.chunks) - 1):
            chunk = self.chunks[self._next]
            self._was_cached[self._next] = self._resident(chunk.load_start,
                                                          chunk.load_stop) >= 0.5
            self._advise(chunk.load_start, chunk.load_stop, "POSIX_FADV_WILLNEED")
            self._next += 1

    def done(self, j: int) -> None:
        """Chunk `j`'s result is in: drop its pages, but those chunk ``j + 1`` reads."""
        chunk = self.chunks[j]
        stop = chunk.load_stop
        if j + 1 < len(self.chunks):
            stop = min(stop, self.chunks[j + 1].load_start)
        if not self._was_cached.pop(j, False):
            self._advise(chunk.load_start, stop, "POSIX_FADV_DONTNEED")

    def _advise(self, start: int, stop: int, advice: str) -> None:
        if self._fd is None or stop <= start:
            return
        with contextlib.suppress(OSError):  # advice only: never an error
            _ADVISE(self._fd, self._offset + start * self._row_bytes,
                    (stop - start) * self._row_bytes, getattr(os, advice))

    def _resident(self, start: int, stop: int) -> float:
        """The fraction of the rows' pages in the page cache (`mincore`); 0 if unknown."""
        if self._map is None or _MINCORE is None or stop <= start:
            return 0.0
        first = self._offset + start * self._row_bytes
        last = min(self._offset + stop * self._row_bytes, len(self._map))
        first -= first % mmap.PAGESIZE
        n_pages = -(-(last - first) // mmap.PAGESIZE)
        if n_pages <= 0:
            return 0.0
        pages = np.zeros(n_pages, np.uint8)
        if _MINCORE(ctypes.c_void_p(self._address + first), ctypes.c_size_t(last - first),
                    pages.ctypes.data_as(ctypes.POINTER(ctypes.c_ubyte))) != 0:
            return 0.0
        return float(np.count_nonzero(pages & 1)) / n_pages

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
