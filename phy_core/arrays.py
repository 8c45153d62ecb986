"""Lazy arrays that readers use to fulfil the data-model protocol without loading data.

Every reader needs the same few views on (memory-mapped) recordings: several
files seen as one, a subset of channels, windows around spikes. They live
here, once, so that each reader stays small and all behave like numpy arrays
along their first axis (integers, slices, integer and boolean arrays).
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


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
            raise ValueError(
                f"Arrays to concatenate differ in channels or dtype: {sorted(n_channels)}, "
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


class ChannelSubset:
    """A lazy view of some columns of a ``(n_samples, n_channels_total)`` array.

    ``view[rows]`` reads only those rows, then keeps `channels` (in that
    order): how a reader exposes the probe's channels of a file with more.
    """

    def __init__(self, array: Any, channels: Sequence[int]) -> None:
        self.array = array
        self.channels = np.asarray(channels, dtype=np.int64)
        n_total = array.shape[1]
        if self.channels.size and (self.channels.min() < 0 or self.channels.max() >= n_total):
            raise ValueError(f"Channels {self.channels.tolist()} out of range for an array "
                             f"with {n_total} channels.")
        self.shape = (array.shape[0], len(self.channels))
        self.dtype = np.dtype(array.dtype)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item):
        rows, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
        block = np.asarray(self.array[rows])
        out = block[..., self.channels]
        return out[(Ellipsis, *rest)] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class SpikeWindows:
    """Windows of traces around spikes, read (and optionally filtered) on indexing.

    ``windows[spike_ids]`` is ``(n, n_before + n_after, n_channels)``: for a
    spike at sample ``s``, samples ``s - n_before .. s + n_after - 1`` of the
    chosen channels, zero-padded where the window leaves the recording.

    Parameters
    ----------
    traces : array-like, (n_samples, n_channels_total)
    spike_samples : array, (n_spikes,), integer
    n_before, n_after : int
        Samples before and after the spike sample.
    channels : sequence of int or None
        Columns to keep (all by default).
    filter : callable or None
        ``filter(windows) -> windows`` for float64 `windows` of shape
        ``(..., n_samples, n_channels)``, filtering along axis -2 (time)
        independently for each leading index (so a single ``(n_samples,
        n_channels)`` chunk is valid too). Called once per indexing, on the
        stacked ``(k, n_before + n_after + 2 * margin, n_channels)`` windows of
        the k requested spikes: a vectorised filter such as
        ``lambda x: sosfiltfilt(sos, x, axis=-2)`` handles them all in one call.
        The `margin` samples on each side are then cropped, so the filter's
        edge effects stay out of the windows.
    margin : int
        Extra samples read on each side for the filter.
    """

    def __init__(self, traces: Any, spike_samples: np.ndarray, n_before: int, n_after: int,
                 channels: Sequence[int] | None = None,
                 filter: Callable[[np.ndarray], np.ndarray] | None = None,
                 margin: int = 0) -> None:
        self.traces = traces
        self.spike_samples = np.asarray(spike_samples, dtype=np.int64)
        n_total = traces.shape[1]
        self.channels = (np.arange(n_total) if channels is None
                         else np.asarray(channels, dtype=np.int64))
        self.n_before, self.n_after = int(n_before), int(n_after)
        self.filter = filter
        self.margin = int(margin) if filter is not None else 0
        self.shape = (len(self.spike_samples), self.n_before + self.n_after, len(self.channels))
        self.dtype = np.dtype(np.float32)
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, samples: np.ndarray) -> np.ndarray:
        """The windows around `samples`, filtered, ``(len(samples), *shape[1:])``."""
        n_samples = self.traces.shape[0]
        length = self.shape[1] + 2 * self.margin
        dtype = np.float32 if self.filter is None else np.float64
        block = np.zeros((len(samples), length, len(self.channels)), dtype=dtype)
        for i, sample in enumerate(samples):
            start = int(sample) - self.n_before - self.margin
            lo, hi = max(start, 0), min(start + length, n_samples)
            if lo < hi:
                block[i, lo - start:hi - start] = np.asarray(self.traces[lo:hi])[:, self.channels]
        if self.filter is not None and len(samples):
            # One call for all the windows: much faster than one call per window.
            block = self.filter(block)
        return np.asarray(block[:, self.margin:self.margin + self.shape[1]], dtype=np.float32)

    def __getitem__(self, item):
        spikes, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
        index = normalize_rows(spikes, self.shape[0])
        if np.ndim(index) == 0:
            out = self._read(self.spike_samples[[index]])[0]
            return out[rest] if rest else out
        out = self._read(self.spike_samples[index.ravel()])
        out = out.reshape(*index.shape, *self.shape[1:])
        return out[(Ellipsis, *rest)] if rest else out


def flat_binary_source(traces: Any) -> dict | None:
    """The flat binary files behind a traces array, when it is a view of memory maps.

    Looks through `ChannelSubset` and `ConcatenatedArrays` down to `np.memmap`
    objects, so a writer can point another tool at the same raw data.

    Returns
    -------
    source : dict or None
        ``files`` (list of paths), ``dtype``, ``offset``, ``n_channels``
        (columns in the files) and ``channels`` (the columns `traces` shows),
        or None if the traces are not (only) memory-mapped flat files.
    """
    channels = None
    if isinstance(traces, ChannelSubset):
        channels, traces = traces.channels, traces.array
    arrays = traces.arrays if isinstance(traces, ConcatenatedArrays) else [traces]
    if not arrays or not all(isinstance(a, np.memmap) and a.ndim == 2 and a.filename
                             for a in arrays):
        return None
    if len({(a.offset, a.dtype.str, a.shape[1]) for a in arrays}) != 1:
        return None
    first = arrays[0]
    n_channels = int(first.shape[1])
    return dict(files=[str(a.filename) for a in arrays], dtype=first.dtype.str,
                offset=int(first.offset), n_channels=n_channels,
                channels=np.arange(n_channels) if channels is None else channels)


def _memmaps(traces) -> list[np.memmap]:
    """The `np.memmap` objects behind traces (through ChannelSubset / ConcatenatedArrays)."""
    if isinstance(traces, ChannelSubset):
        traces = traces.array
    arrays = traces.arrays if isinstance(traces, ConcatenatedArrays) else [traces]
    return [a for a in arrays if isinstance(a, np.memmap)]


def release_pages(traces) -> None:
    """Unmap the file pages this process has read, so its RSS does not grow with the recording.

    ``madvise(MADV_DONTNEED)`` on a shared file mapping only drops this
    process's page-table entries: the data stay in the page cache (a later read
    refaults them, no disk access) and nothing is lost (the maps are
    read-only). Linux only; elsewhere, and for non-memmap traces, a no-op.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return
    for array in _memmaps(traces):
        mapping = getattr(array, "_mmap", None)
        if mapping is None or not hasattr(mapping, "madvise"):
            continue
        with contextlib.suppress(OSError, ValueError):
            mapping.madvise(advice)
