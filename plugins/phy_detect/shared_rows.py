"""Chunks' ``.kwx`` rows handed from the workers to the runner through shared memory.

A chunk's features and masks are ``n_spikes x n_channels * 3 x 2`` float32
(24 KB per spike at 1024 channels, 3.4 GB for 200 s of the synthetic
``dense1024`` recording). Pickled through a pipe, every byte was copied by
the worker (pickle, pipe write), by the kernel and by the runner (pipe read,
unpickling, interleaving into ``.kwx`` rows) before being written. The
features on masked channels are not zero (every channel's waveform is
projected), so a sparse form would not give the same file.

Instead the runner creates a few files in ``/dev/shm`` (`RowSlots`), one per
job in flight, reused round-robin; a worker writes its chunk's rows, already
in the ``.kwx`` layout, into its job's slot (`slot_array`, mapped once per
worker) and returns only their number; the runner writes them from its own
mapping of the slot into the ``.kwx``. A slot is given to a new job only once
the runner has written the rows of the job that used it before. A result
that does not fit its slot comes back inline (as before), and the slot grows
for the next jobs. Where there is no ``/dev/shm`` (not Linux), or the
workers are on other machines (Dask), the rows come back inline.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numba import njit

from .waveform import _align_kernel

SHM_DIR = "/dev/shm"
#: Slots a worker keeps mapped (a slot that grew is a new file: the old one is dropped).
_MAX_MAPPED = 16
#: Slack on the estimated size of a chunk's rows.
_GROWTH = 1.5


@dataclass(frozen=True)
class RowSlot:
    """Where a job writes its rows: a file in shared memory of `size` bytes."""

    path: str
    size: int


_PREFIX = "phy-kwx-rows-"


def remove_stale_slots(directory: str = SHM_DIR) -> list[str]:
    """Remove the slot folders of runs whose process is gone (killed: SIGKILL leaves them).

    A folder is named after its runner's process id; it is left alone while a
    process of that id exists. Returns the folders removed.
    """
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            pid = name[len(_PREFIX):].split("-", 1)[0]
            if not name.startswith(_PREFIX) or not pid.isdigit() or _alive(int(pid)):
                continue
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def shared_memory_available() -> bool:
    """Whether this machine has a writable ``/dev/shm`` (Linux)."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


class RowSlots:
    """The runner's slots: `n_slots` files in ``/dev/shm``, each mapped here.

    Parameters
    ----------
    n_slots : int
        At least the number of jobs the executor keeps in flight.
    size : int
        Initial size of each slot, bytes (grows as needed, see `grow`).
    """

    def __init__(self, n_slots: int, size: int) -> None:
        remove_stale_slots()
        self.directory = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=SHM_DIR)
        self._generation = 0
        self._slots: list[tuple[RowSlot, mmap.mmap]] = []
        self._busy: list[int | None] = [None] * int(n_slots)  # the job using each slot
        try:
            for _ in range(int(n_slots)):
                self._slots.append(self._create(max(int(size), mmap.PAGESIZE)))
        except BaseException:
            self.close()
            raise

    def _create(self, size: int) -> tuple[RowSlot, mmap.mmap]:
        self._generation += 1
        path = os.path.join(self.directory, f"slot{self._generation}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return RowSlot(path, size), mapping

    def take(self, job: int) -> RowSlot | None:
        """The slot for job number `job`, or None if the job that used it is not done."""
        i = job % len(self._slots)
        if self._busy[i] is not None:
            return None
        self._busy[i] = job
        return self._slots[i][0]

    def rows(self, job: int, slot: RowSlot, nbytes: int) -> memoryview:
        """The first `nbytes` a job wrote into its slot (valid until `release`)."""
        i = job % len(self._slots)
        if self._busy[i] != job or self._slots[i][0] != slot:
            raise RuntimeError(f"Row slot {slot.path} is not job {job}'s.")
        return memoryview(self._slots[i][1])[:nbytes]

    def release(self, job: int, needed: int = 0) -> None:
        """Job `job`'s rows are written: its slot is free (grown if `needed` did not fit)."""
        i = job % len(self._slots)
        if self._busy[i] != job:
            return
        self._busy[i] = None
        slot, mapping = self._slots[i]
        if needed > slot.size:
            self._slots[i] = self._create(int(needed * _GROWTH))
            _close_and_remove(slot.path, mapping)

    def close(self) -> None:
        for slot, mapping in self._slots:
            _close_and_remove(slot.path, mapping)
        self._slots = []
        shutil.rmtree(self.directory, ignore_errors=True)


def _close_and_remove(path: str, mapping: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it
        mapping.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


# -- Worker side ------------------------------------------------------------------

_MAPPED: OrderedDict[str, mmap.mmap] = OrderedDict()


def slot_array(slot: RowSlot, shape: tuple[int, ...]) -> np.ndarray | None:
    """A float32 array of `shape` over the start of `slot`, or None if it does not fit.

    The slot stays mapped in this process (its pages faulted in once), up to
    `_MAX_MAPPED` slots.
    """
    nbytes = int(np.prod(shape)) * 4
    if nbytes > slot.size:
        return None
    mapping = _MAPPED.get(slot.path)
    if mapping is None:
        directory = os.path.dirname(slot.path)
        if any(os.path.dirname(path) != directory for path in _MAPPED):
            unmap_all()  # slots of an earlier run (removed): free their memory
        fd = os.open(slot.path, os.O_RDWR)
        try:
            mapping = mmap.mmap(fd, slot.size, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        _MAPPED[slot.path] = mapping
        while len(_MAPPED) > _MAX_MAPPED:
            _, old = _MAPPED.popitem(last=False)
            with contextlib.suppress(BufferError):
                old.close()
    else:
        _MAPPED.move_to_end(slot.path)
    return np.frombuffer(mapping, dtype=np.float32, count=nbytes // 4).reshape(shape)


def unmap_all() -> None:
    """Unmap every slot this process mapped (a removed slot's memory is then freed)."""
    while _MAPPED:
        _, mapping = _MAPPED.popitem()
        with contextlib.suppress(BufferError):
            mapping.close()


@njit(cache=True)
def project_kwx_rows(waveforms, index, pcs, masks, out):
    """``.kwx`` rows of the spikes ``waveforms[index]`` projected on per-channel `pcs`.

    ``out[i, c * F + f] = (sum_s waveforms[index[i], s, c] * pcs[f, s, c], masks[i, c])``,
    each sum in float32 in the order of `pca._project` (same bits), but each
    waveform read once for all `F` PCs (`_project` reads it once per PC), and
    written straight in the ``.kwx`` layout.
    """
    n_f, n_c = pcs.shape[0], pcs.shape[2]
    acc = np.empty((n_f, n_c), dtype=np.float32)
    for i in range(index.shape[0]):
        _project_row(waveforms[index[i]], pcs, masks[i], acc, out[i])


@njit(cache=True)
def _project_row(w, pcs, mask, acc, row):
    """One spike's ``.kwx`` row: waveform `w` ``(n_s, n_c)`` on `pcs`, with its `mask`.

    Each sum in float32 in the order of `pca._project`; `acc` is scratch ``(F, n_c)``.
    """
    n_f, n_s, n_c = pcs.shape
    acc[:, :] = 0.0
    for s in range(n_s):
        ws = w[s]
        for f in range(n_f):
            p = pcs[f, s]
            a = acc[f]
            for c in range(n_c):
                a[c] += ws[c] * p[c]
    for c in range(n_c):
        m = mask[c]
        for f in range(n_f):
            row[c * n_f + f, 0] = acc[f, c]
            row[c * n_f + f, 1] = m


@njit(cache=True)
def align_project_kwx_rows(data, times, index, before, after, pcs, masks, out):
    """`project_kwx_rows` of the waveforms `WaveformExtractor` would extract at `times`.

    Spike ``i`` is aligned at ``times[index[i]]`` (samples in `data`, the
    filtered chunk) by the extractor's kernel (`waveform._align_kernel`) into
    a scratch waveform, then projected as `project_kwx_rows` does: the same
    bits, without writing every spike's waveform (128 kB at 1024 channels)
    to memory and reading it back. Every window must lie in `data`. (Aligning
    and projecting a block of channels at a time, to stay in L1, measured
    slower: 26 against 19 ms for 711 spikes at 1024 channels.)
    """
    n_f, n_s, n_c = pcs.shape
    acc = np.empty((n_f, n_c), dtype=np.float32)
    w = np.empty((n_s, n_c), dtype=np.float32)
    for i in range(index.shape[0]):
        t = times[index[i]]
        s0 = int(np.floor(t))
        _align_kernel(data[s0 - before - 1:s0 + after + 2], t - s0, n_s, w)
        _project_row(w, pcs, masks[i], acc, out[i])
