"""Lazy waveform loading from (memory-mapped) traces, for the manual-clustering GUI.

`WaveformLoader` reads, for each requested spike, a window of
`n_samples_waveforms` samples around its sample (plus `filter_margin` samples
on each side for the filter to settle), optionally filters it, and crops the
margins. Windows that run past the recording's edges are zero-padded (the
padding happens on the raw window, before filtering). Only the rows of the
requested windows are read, so a memmap of any size is fine.

`SpikeLoader` turns a selection of spike ids into a selection of sample times
for any loader indexed by times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from phy_core.errors import PhyError

__all__ = ["WaveformLoader", "SpikeLoader", "LoaderError"]

logger = logging.getLogger("phy")


class LoaderError(PhyError, ValueError):
    """Invalid parameters or selection for a waveform loader."""


def _before_after(n, what: str) -> tuple[int, int]:
    """``n`` -> ``(n // 2, n - n // 2)``; a ``(before, after)`` pair is kept."""
    if isinstance(n, (tuple, list)):
        if len(n) != 2:
            raise LoaderError(f"WaveformLoader: {what} must be an int or a (before, after) "
                              f"pair, got {n!r}.")
        before, after = n
    else:
        if n is None:
            raise LoaderError(f"WaveformLoader: {what} must be specified.")
        before = int(n) // 2
        after = int(n) - before
    if int(before) != before or int(after) != after or before < 0 or after < 0:
        raise LoaderError(f"WaveformLoader: {what} must be >= 0 integers, got {n!r}.")
    return int(before), int(after)


def _selection(item, n: int, what: str) -> np.ndarray:
    """An int array of indices in ``0..n-1`` from an int, a slice, a list or an array."""
    if isinstance(item, slice):
        return np.arange(n)[item]
    arr = np.asarray(item)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise LoaderError(f"{what}: boolean selection of shape {arr.shape}, expected ({n},).")
        return np.flatnonzero(arr)
    if arr.ndim > 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise LoaderError(f"{what}: expected integer ids, a slice or a boolean mask, got {item!r}.")
    arr = np.atleast_1d(arr).astype(np.int64)
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise LoaderError(f"{what}: ids out of range for {n} spikes.")
    return np.where(arr < 0, arr + n, arr)


class WaveformLoader:
    """Load waveforms from filtered or unfiltered traces.

    Parameters
    ----------
    traces : array-like
        ``(n_samples, n_channels)``, e.g. a memmap; only sliced by sample ranges.
    n_samples_waveforms : int or (before, after)
        Samples per waveform; an int `n` means ``(n // 2, n - n // 2)`` around
        the spike sample (the window is ``[t - before, t + after)``).
    filter : callable or None
        Applied to each raw window, an ``(n_extract, n_channels)`` float32
        array, returning an array of the same shape.
    filter_margin : int or (before, after)
        Extra samples read before and after the window for the filter to
        settle, cropped afterwards (an int is used on each side).
    channels : sequence of int or None
        Columns to keep (all by default).
    scale_factor : float or None
        Multiplies the waveforms (e.g. to microvolts).
    dc_offset : float or None
        Subtracted from the raw window before filtering.
    spike_samples : array or None
        When given, the loader is indexed by spike ids (ints, slices, boolean
        masks) and reads around ``spike_samples[ids]``; otherwise it is indexed
        by sample times directly.
    offset : int
        Sample time of the first row of `traces`.

    ``loader[item]`` returns ``(n, n_samples_waveforms, n_channels_waveforms)``
    float32.
    """

    def __init__(
        self,
        traces=None,
        n_samples_waveforms=None,
        filter: Callable[[np.ndarray], np.ndarray] | None = None,
        filter_margin=0,
        channels: Sequence[int] | None = None,
        scale_factor: float | None = None,
        dc_offset: float | None = None,
        spike_samples=None,
        offset: int = 0,
    ) -> None:
        self._traces = None
        self.n_samples_trace, self.n_channels_traces = 0, 0
        if traces is not None:
            self.traces = traces
        self.n_samples_before_after = _before_after(n_samples_waveforms, "n_samples_waveforms")
        self.n_samples_waveforms = sum(self.n_samples_before_after)
        self._filter = filter
        # Unlike n_samples_waveforms, an int margin is read on *each* side.
        if not isinstance(filter_margin, (tuple, list)):
            filter_margin = (filter_margin, filter_margin)
        self._filter_margin = _before_after(filter_margin, "filter_margin")
        self._n_samples_extract = self.n_samples_waveforms + sum(self._filter_margin)
        self._channels = None
        self.channels = channels
        self._scale_factor = scale_factor
        self._dc_offset = dc_offset
        self._offset = int(offset)
        self._spike_samples = None if spike_samples is None else np.asarray(spike_samples)
        self.dtype = np.dtype(np.float32)

    @property
    def traces(self):
        """Raw traces."""
        return self._traces

    @traces.setter
    def traces(self, value) -> None:
        if len(getattr(value, "shape", ())) != 2:
            raise LoaderError(f"WaveformLoader: traces must be (n_samples, n_channels), got "
                              f"shape {getattr(value, 'shape', None)}.")
        self.n_samples_trace, self.n_channels_traces = (int(x) for x in value.shape)
        self._traces = value

    @property
    def channels(self):
        """List of channels."""
        return self._channels

    @channels.setter
    def channels(self, value) -> None:
        if value is not None:
            value = np.asarray(value, dtype=np.int64)
            if value.ndim != 1 or (value.size and self._traces is not None and (
                    value.min() < 0 or value.max() >= self.n_channels_traces)):
                raise LoaderError(f"WaveformLoader: channels {value.tolist()} out of range "
                                  f"for traces with {self.n_channels_traces} channels.")
        self._channels = value

    @property
    def n_channels_waveforms(self) -> int:
        """Number of channels kept for the waveforms."""
        return len(self._channels) if self._channels is not None else self.n_channels_traces

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def shape(self) -> tuple[int, ...]:
        n = len(self._spike_samples) if self._spike_samples is not None else self.n_samples_trace
        return (n, self.n_samples_waveforms, self.n_channels_waveforms)

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def _load_at(self, time: int) -> np.ndarray:
        """Raw window (with filter margins, zero-padded) at a time, selected channels."""
        before, after = self.n_samples_before_after
        mb, ma = self._filter_margin
        t = int(time) - self._offset
        start, stop = t - before - mb, t + after + ma
        out = np.zeros((self._n_samples_extract, self.n_channels_waveforms), dtype=np.float32)
        a, b = max(start, 0), min(stop, self.n_samples_trace)
        if a < b:
            block = np.asarray(self._traces[a:b])
            if self._channels is not None:
                block = block[:, self._channels]
            out[a - start:b - start] = block
        return out

    def _load_times(self, times: np.ndarray) -> np.ndarray:
        n = len(times)
        ns = self.n_samples_trace
        bad = (times < self._offset) | (times >= self._offset + ns)
        if np.any(bad):
            raise LoaderError(f"WaveformLoader: spike samples {times[bad][:5].tolist()} are "
                              f"outside the traces (samples {self._offset}.."
                              f"{self._offset + ns - 1}).")
        mb, ma = self._filter_margin
        out = np.zeros((n, self.n_samples_waveforms, self.n_channels_waveforms),
                       dtype=np.float32)
        for i, t in enumerate(times):
            w = self._load_at(int(t))
            if self._dc_offset:
                w -= np.float32(self._dc_offset)
            if self._filter is not None:
                w = np.asarray(self._filter(w), dtype=np.float32)
                if w.shape != (self._n_samples_extract, self.n_channels_waveforms):
                    raise LoaderError(f"WaveformLoader: the filter changed the window shape "
                                      f"to {w.shape}.")
            out[i] = w[mb:mb + self.n_samples_waveforms]
        if self._scale_factor:
            out *= np.float32(self._scale_factor)
        return out

    def __getitem__(self, item) -> np.ndarray:
        """Load waveforms: by spike ids if `spike_samples` was given, else by sample times."""
        if self._traces is None:
            raise LoaderError("WaveformLoader: no traces.")
        if self._spike_samples is not None:
            ids = _selection(item, len(self._spike_samples), "WaveformLoader")
            times = np.asarray(self._spike_samples[ids])
        else:
            if isinstance(item, slice):
                raise LoaderError("WaveformLoader: slices need spike_samples (indexing is by "
                                  "sample times otherwise).")
            times = np.atleast_1d(np.asarray(item))
            if times.ndim != 1:
                raise LoaderError(f"WaveformLoader: expected sample times, got {item!r}.")
        return self._load_times(np.round(times).astype(np.int64))


class SpikeLoader:
    """Translate selection with spike ids into selection with absolute times.

    Parameters
    ----------
    waveforms : WaveformLoader or array-like
        Indexed by sample times.
    spike_samples : array
        ``(n_spikes,)`` sample of each spike.
    """

    def __init__(self, waveforms, spike_samples) -> None:
        self._waveforms = waveforms
        self._spike_samples = np.asarray(spike_samples)
        if self._spike_samples.ndim != 1:
            raise LoaderError(f"SpikeLoader: spike_samples must be 1D, got shape "
                              f"{self._spike_samples.shape}.")
        self.dtype = getattr(waveforms, "dtype", None)
        n = len(self._spike_samples)
        if hasattr(waveforms, "n_samples_waveforms"):
            self.shape = (n, waveforms.n_samples_waveforms, waveforms.n_channels_waveforms)
        else:
            self.shape = (n,) + tuple(np.shape(waveforms)[1:])
        self.ndim = len(self.shape)

    @property
    def spike_samples(self) -> np.ndarray:
        return self._spike_samples

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item):
        ids = _selection(item, len(self._spike_samples), "SpikeLoader")
        return self._waveforms[self._spike_samples[ids]]
