"""Mean waveforms of a few spikes on any channels, read from the band-passed recording.

The refinement (`phy_tmatch.refine`) sees each event on the `L` channels nearest
to its home only (`phy_tmatch.residual`: a snippet of the residual), so a
template it makes from events has those channels and no others. A strong unit
still stands out of the noise farther away (13 times the noise 80-100 um from a
unit of SNR 20 at 1024 channels): the pursuit leaves that part of its spikes
in the residual, where smaller templates nearby match it again. `WindowMeans`
gives such a template the rest of its channels: the mean of some of its
events' windows, read and band-passed again in this process, on the channels
it asks for.

The windows are of the residual the pass left, like the snippets (`set_matched`):
the spikes the pass matched in a window are subtracted, all but the window's own
(a matched spike's, or a misfit's, which its snippet shows whole). Otherwise the
windows of residual events left where a template explained a larger unit's spike
only in part hold that unit's whole spike: their mean would be its waveform on
the channels the snippets did not see, joined to the remainder on theirs.

Each window is filtered on its own with `margin` samples on either side
(rather than the chunks' exact margin, `phy_detect.filtering.Filter.margin_samples`,
hundreds of milliseconds): the band-pass's response to the window's edges has
died out by then to a small fraction of the noise, below the noise of a mean of
a few hundred spikes. All the windows of one mean are filtered as the columns
of one array (the filter works on each column alone).
"""

from __future__ import annotations

import numpy as np


def _evenly(n: int, n_max: int) -> np.ndarray:
    """At most `n_max` indices of ``range(n)``, spread evenly."""
    if n <= n_max:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, n_max).round().astype(np.int64))


class WindowMeans:
    """Means of windows of the band-passed recording (see the module docstring).

    Parameters
    ----------
    traces : array-like ``(n_samples, n_file_channels)``
        The recording (`phy_tmatch.worker.traces`).
    channels : (C,) int
        The file's columns of the channel group (the channels' order of the means).
    filter_ : callable
        The band-pass: ``(n, m)`` float32 -> ``(n, m)`` float32 (`phy_detect.filtering.Filter`).
    n_t : int
        Samples of a window.
    before : int
        Samples of a window before the trough of a residual event (`phy_tmatch.residual`).
    margin : int
        Samples read and filtered on either side of a window (200 at 30 kHz: 0.01 % of
        the signal's spread differs from the whole recording's filtering).
    max_spikes : int
        Windows averaged at most per mean (evenly spread among those asked for).
    n_channels : int
        Channels of a widened mean (`widen`): the nearest to its peak channel.
    significance : float
        A widened mean's new channel is kept if its peak is above this many times
        the noise of the mean (as `phy_tmatch.templates.build_templates`).
    channel_fraction : float
        A mean is widened only if it reaches this fraction of its peak on the
        farthest quarter of its known channels (`widen`).
    """

    def __init__(self, traces, channels: np.ndarray, filter_, n_t: int, before: int,
                 margin: int = 200, max_spikes: int = 100, n_channels: int = 64,
                 significance: float = 4.0, channel_fraction: float = 0.1) -> None:
        self.traces, self.channels = traces, np.asarray(channels, dtype=np.int64)
        self.filter, self.n_t, self.before = filter_, int(n_t), int(before)
        self.margin, self.max_spikes = int(margin), int(max_spikes)
        self.n_channels, self.significance = int(n_channels), float(significance)
        self.channel_fraction = float(channel_fraction)
        self.n_samples = int(traces.shape[0])
        self._matched = None  # `set_matched`

    def set_matched(self, starts: np.ndarray, templates: np.ndarray, amplitudes: np.ndarray,
                    waveforms: np.ndarray | None) -> None:
        """The spikes a matching pass found, taken out of the windows (`windows`).

        `starts` (first samples), `templates` (indices into `waveforms`, ``(K, n_t, C)``,
        the templates as the pursuit subtracted them) and `amplitudes` (as subtracted)
        of every matched spike; ``waveforms=None`` forgets them.
        """
        if waveforms is None:
            self._matched = None
            return
        order = np.argsort(starts, kind="stable")
        self._matched = (np.asarray(starts, dtype=np.int64)[order],
                         np.asarray(templates, dtype=np.int64)[order],
                         np.asarray(amplitudes, dtype=np.float32)[order], waveforms)

    def __call__(self, starts: np.ndarray, channels: np.ndarray,
                 own: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """The mean of the windows ``[start, start + n_t)`` on `channels` (indices of the group).

        Returns the mean ``(n_t, len(channels))`` float64 and the number of windows
        averaged (windows too close to the recording's edges are left out).
        """
        windows = self.windows(starts, channels, own)
        if windows.shape[1] == 0:
            return np.zeros((self.n_t, len(channels))), 0
        return windows.mean(axis=1, dtype=np.float64), windows.shape[1]

    def windows(self, starts: np.ndarray, channels: np.ndarray,
                own: np.ndarray | None = None) -> np.ndarray:
        """The band-passed windows ``(n_t, n, len(channels))`` float32 (see `__call__`).

        Given the pass's matched spikes (`set_matched`), each window is the residual
        the pass left there: the spikes matched in it are subtracted, except the
        window's own (`own`: the template whose matched spike starts at the window's
        start, -1 for none), as the snippets of `phy_tmatch.residual` are made.
        """
        starts = np.asarray(starts, dtype=np.int64)
        own = np.full(len(starts), -1, np.int64) if own is None else np.asarray(own, np.int64)
        channels = np.asarray(channels, dtype=np.int64)
        m, n_t = self.margin, self.n_t
        inside = np.flatnonzero((starts - m >= 0) & (starts + n_t + m <= self.n_samples))
        chosen = inside[_evenly(len(inside), self.max_spikes)]
        chosen = chosen[np.argsort(starts[chosen], kind="stable")]
        starts, own = starts[chosen], own[chosen]
        if len(starts) == 0 or len(channels) == 0:
            return np.zeros((n_t, 0, len(channels)), dtype=np.float32)
        file_channels = self.channels[channels]
        width = n_t + 2 * m
        # The windows side by side as columns: (width, n_windows * n_channels).
        block = np.empty((width, len(starts), len(channels)), dtype=np.float32)
        for i, s in enumerate(starts):
            raw = np.asarray(self.traces[s - m:s + n_t + m])
            np.copyto(block[:, i], raw[:, file_channels], casting="unsafe")
        filtered = np.asarray(self.filter(block.reshape(width, -1)), dtype=np.float32)
        windows = filtered.reshape(width, len(starts), len(channels))[m:m + n_t]
        if self._matched is not None:
            self._subtract_matched(windows, starts, own, channels)
        return windows

    def _subtract_matched(self, windows: np.ndarray, starts: np.ndarray, own: np.ndarray,
                          channels: np.ndarray) -> None:
        """Take the matched spikes (`set_matched`) out of `windows`, in place."""
        spike_starts, spike_templates, amplitudes, waveforms = self._matched
        n_t = self.n_t
        lo = np.searchsorted(spike_starts, starts - n_t + 1, side="left")
        hi = np.searchsorted(spike_starts, starts + n_t, side="left")
        # Only the templates of the spikes in the windows, on these channels.
        involved = np.unique(np.concatenate([spike_templates[a:b] for a, b in zip(lo, hi)]
                                            + [np.zeros(0, np.int64)]))
        if len(involved) == 0:
            return
        local = np.asarray(waveforms[involved][:, :, channels], dtype=np.float32)
        row = np.full(int(waveforms.shape[0]), -1, np.int64)
        row[involved] = np.arange(len(involved))
        for i in range(len(starts)):
            for j in range(lo[i], hi[i]):
                k, d = int(spike_templates[j]), int(spike_starts[j] - starts[i])
                if d == 0 and k == own[i]:
                    continue  # the window's own spike
                # Window rows [a, b) are the template's rows [a - d, b - d).
                a, b = max(0, d), min(n_t, n_t + d)
                windows[a:b, i] -= amplitudes[j] * local[row[k], a - d:b - d]

    def widen(self, mean: np.ndarray, starts: np.ndarray, known: np.ndarray,
              sigma: np.ndarray, positions: np.ndarray,
              own: np.ndarray | None = None) -> np.ndarray:
        """`mean` ``(n_t, C)``, known on the channels `known`, on its other channels too.

        `known` are in order of distance from the snippets' home (`local_channels`).
        Only a mean that stands out on the farthest quarter of them (above
        `channel_fraction` of its peak and `significance` times the noise of a mean
        of ``len(starts)`` spikes) is widened: otherwise a template
        (`phy_tmatch.templates.build_templates`) would keep no farther channel
        but noise (on the 1024-channel recording, widening every mean made a weak
        unit's template 54 channels wide, and it matched fewer of its spikes).

        The channels added are among the `n_channels` nearest to the peak channel of
        ``mean / sigma``; each gets the mean of the windows at `starts` (those of the
        events averaged in `mean`), if its peak stands out of that mean's noise: by
        `significance` times both the channel's noise and the spread of its windows
        (divided by the square root of their number). Without the pass's matched
        spikes (`set_matched`) the windows hold the other units' spikes too: where
        they fall at random they average out, but a few large ones can make a mean
        of a weak unit's windows stand out of the noise alone on a channel it does
        not reach.
        """
        known = np.asarray(known, dtype=np.int64)
        rim = known[len(known) - max(1, len(known) // 4):]
        rim_peak = np.abs(mean[:, rim]).max(axis=0)
        reach = np.maximum(self.channel_fraction * np.abs(mean).max(),
                           self.significance * sigma[rim] / np.sqrt(max(len(starts), 1)))
        if not (rim_peak >= reach).any():
            return mean
        peak = int(np.abs(mean / sigma).max(axis=0).argmax())
        d = np.linalg.norm(positions - positions[peak], axis=1)
        near = np.argsort(d, kind="stable")[:self.n_channels]
        new = np.setdiff1d(near, known)
        if len(new) == 0:
            return mean
        windows = self.windows(starts, new, own)
        n = windows.shape[1]
        if n < 2:
            return mean
        far = windows.mean(axis=1, dtype=np.float64)
        spread = windows.std(axis=1, dtype=np.float64)  # (n_t, channels)
        floor = self.significance * np.maximum(spread, sigma[new]) / np.sqrt(n)
        keep = (np.abs(far) >= floor).any(axis=0)
        out = mean.copy()
        out[:, new[keep]] = far[:, keep]
        return out
