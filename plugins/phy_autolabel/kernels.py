"""Numba kernels of the quality metrics: the reads that cost most, done in place.

- `add_cluster_sums`, `fill_channel_spikes`: passes over a Kwik ``.kwx`` array
  ``(n_spikes, n_channels * n_features_per_channel, 2)`` float32 (features in
  ``[..., 0]``, masks in ``[..., 1]``, the mask repeated for each feature of a
  channel), block by block. Through numpy it is copied to float64 in blocks and
  each block sorted by cluster; here the memory map is read in place and summed
  in float64.
- `filtered_windows`, `sosfiltfilt_columns`: band-passed spike windows and
  noise excerpts. They do scipy's ``sosfiltfilt`` arithmetic in scipy's order,
  so the numbers are the same to the last bit (the tests check it); they read
  only the rows and channels asked and filter many short columns at once, in
  a scratch array that stays in the CPU cache (fresh memory costs page faults).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def add_cluster_sums(fm, cluster_rows, mask_sums, feature_sums, channel_counts):
    """Add a block of spikes' masks and features to per-cluster sums, in place.

    Parameters
    ----------
    fm : float32 array (n_spikes, n_channels * nfpc, 2)
        A block of consecutive spikes (e.g. a slice of the ``.kwx`` memory map).
    cluster_rows : int64 array (n_spikes,)
        Row of each spike's cluster in the sums.
    mask_sums : float64 (n_clusters, n_channels)
    feature_sums : float64 (n_clusters, n_channels * nfpc)
    channel_counts : int64 (n_channels,)
        Spikes whose mask is > 0 on each channel.

    The sums are added spike by spike in order: summing a file block by block
    gives the numbers of one pass over it, to the last bit.
    """
    n_spikes, n_columns = fm.shape[0], fm.shape[1]
    n_channels = mask_sums.shape[1]
    nfpc = n_columns // n_channels
    for i in range(n_spikes):
        k = cluster_rows[i]
        for c in range(n_channels):
            m = fm[i, c * nfpc, 1]
            if m != 0.0:
                mask_sums[k, c] += m
                if m > 0.0:
                    channel_counts[c] += 1
            for j in range(c * nfpc, (c + 1) * nfpc):
                feature_sums[k, j] += fm[i, j, 0]


@njit(cache=True)
def fill_channel_spikes(fm, n_features_per_channel, first_spike, fill, spikes):
    """Append a block's spikes to each channel's list of unmasked spikes, in place.

    The lists are CSR: channel ``c``'s spikes go to ``spikes[fill[c]:]`` (``fill``
    starts at the offsets from the channels' counts, `add_cluster_sums`) and
    `fill` advances; the block's spikes are ``first_spike + i``. Blocks given in
    order leave each channel's spikes sorted.
    """
    nfpc = n_features_per_channel
    n_channels = fm.shape[1] // nfpc
    for i in range(fm.shape[0]):
        for c in range(n_channels):
            if fm[i, c * nfpc, 1] > 0.0:
                spikes[fill[c]] = first_spike + i
                fill[c] += 1


#: Windows filtered together by `filtered_windows` (their scratch stays in the CPU cache).
WINDOW_BATCH = 64


@njit(cache=True)
def filtered_windows(traces, starts, columns, length, margin, sos, zi, edge):
    """Band-passed windows of a (memory-mapped) ``(n_samples, n_channels)`` array.

    For window i, samples ``starts[i] - margin .. starts[i] + length + margin - 1``
    of `columns` (0 outside the array) are filtered forward and backward as
    scipy's ``sosfiltfilt(sos, x, axis=0)`` does (odd padding of `edge`
    samples, the same numbers), and the middle `length` samples are kept.
    Only these rows and columns are read; the windows go through a small
    scratch array `WINDOW_BATCH` at a time.

    Returns
    -------
    out : float32 (len(starts), length, len(columns))
    """
    n_samples = traces.shape[0]
    n_windows, n_columns = len(starts), len(columns)
    total = length + 2 * margin
    out = np.empty((n_windows, length, n_columns), np.float32)
    width = WINDOW_BATCH * n_columns
    scratch = np.empty((total + 2 * edge, width))
    state0 = np.empty((sos.shape[0], width))
    state1 = np.empty((sos.shape[0], width))
    for first in range(0, n_windows, WINDOW_BATCH):
        batch = min(WINDOW_BATCH, n_windows - first)
        m = batch * n_columns
        x = scratch[:, :m]
        for b in range(batch):
            start = starts[first + b] - margin
            for t in range(total):
                row = start + t
                for j in range(n_columns):
                    x[edge + t, b * n_columns + j] = \
                        traces[row, columns[j]] if 0 <= row < n_samples else 0.0
        _filtfilt_padded(sos, zi, x, edge, total, state0[:, :m], state1[:, :m])
        for b in range(batch):
            for t in range(length):
                for j in range(n_columns):
                    out[first + b, t, j] = x[edge + margin + t, b * n_columns + j]
    return out


@njit(cache=True)
def _filtfilt_padded(sos, zi, x, edge, length, state0, state1):
    """sosfiltfilt of the columns of ``x[edge:edge + length]`` in place, ``x`` having
    `edge` free rows at each end for the odd padding."""
    m = x.shape[1]
    n_sections = sos.shape[0]
    for k in range(edge):
        for j in range(m):
            x[edge - 1 - k, j] = 2.0 * x[edge, j] - x[edge + 1 + k, j]
            x[edge + length + k, j] = 2.0 * x[edge + length - 1, j] - x[edge + length - 2 - k, j]
    n_rows = length + 2 * edge
    for s in range(n_sections):
        for j in range(m):
            state0[s, j] = zi[s, 0] * x[0, j]
            state1[s, j] = zi[s, 1] * x[0, j]
    _sosfilt_rows(sos, x, state0, state1, 0, n_rows, 1)
    for s in range(n_sections):
        for j in range(m):
            state0[s, j] = zi[s, 0] * x[n_rows - 1, j]
            state1[s, j] = zi[s, 1] * x[n_rows - 1, j]
    _sosfilt_rows(sos, x, state0, state1, n_rows - 1, -1, -1)


@njit(cache=True)
def _sosfilt_rows(sos, x, state0, state1, first, stop, step):
    """One direct-form II transposed pass of `sos` over rows ``first, first + step, ...``
    (before `stop`) of every column of ``x``, in place.

    The operations are those of scipy's ``sosfilt`` for each column; a cascade
    section only needs the previous one's output, so the sections run one after
    the other over the whole signal, columns innermost (the same numbers).
    """
    m = x.shape[1]
    for s in range(sos.shape[0]):
        b0, b1, b2, a1, a2 = sos[s, 0], sos[s, 1], sos[s, 2], sos[s, 4], sos[s, 5]
        z0, z1 = state0[s], state1[s]
        for n in range(first, stop, step):
            row = x[n]
            for j in range(m):
                x_cur = row[j]
                x_new = b0 * x_cur + z0[j]
                z0[j] = b1 * x_cur - a1 * x_new + z1[j]
                z1[j] = b2 * x_cur - a2 * x_new
                row[j] = x_new


@njit(cache=True)
def sosfiltfilt_columns(sos, zi, x, edge):
    """scipy's ``sosfiltfilt(sos, x, axis=0)`` (odd padding of `edge` samples) of every
    column of ``x`` (length, m): the same numbers, faster on many columns.

    Parameters
    ----------
    sos : (n_sections, 6)
    zi : (n_sections, 2)
        ``scipy.signal.sosfilt_zi(sos)``.
    x : float64 (length, m), length > edge
    edge : int
        scipy's padding length: ``3 * (2 * n_sections + 1)`` minus the sections
        of order one.
    """
    length, m = x.shape
    padded = np.empty((length + 2 * edge, m))
    padded[edge:edge + length] = x
    state0 = np.empty((sos.shape[0], m))
    state1 = np.empty((sos.shape[0], m))
    _filtfilt_padded(sos, zi, padded, edge, length, state0, state1)
    return padded[edge:edge + length].copy()
