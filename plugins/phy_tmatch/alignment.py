"""Where a waveform is aligned in its window, and shifting it (with its events) there.

Detection dates a spike on its trough (the most negative value over the
noise, in its default ``negative`` mode) and puts it at the window's
alignment sample (``before``); the residual events of the template matching
are dated on troughs too (`phy_tmatch.residual`). Most templates so have their
trough there. Some do not: a masked EM cluster of one strong unit's spikes
detected a second time 8-23 samples off their trough (384 channels, 20 s: 5-14
such clusters per recording), or a new template made from events aligned on
another feature. Such a template is the same unit as its centred twin but alike
to it only at a lag beyond the merges' (``merge_max_lag_ms``), and the pursuit
shares the unit's spikes between the two (384 channels seed 2, unit 41: 81 and
38 spikes on two templates 13 samples apart). `alignment_delay` measures how far
a waveform's trough is from the alignment sample; `shift_events` delays a
group's events (snippets ``(n, n_t, L)``) by as much as its waveform.
"""

from __future__ import annotations

import numpy as np


def alignment_sample(waveform: np.ndarray, sigma: np.ndarray, sign: int = -1,
                     min_fraction: float = 0.5) -> int | None:
    """The sample of a waveform ``(n_t, C)``'s extremum of `sign`, on ``waveform / sigma``.

    ``sign`` -1: its most negative value (detection's ``negative`` mode), +1 its
    most positive, 0 its largest ``|value|`` (``both``). None when that extremum is
    less than `min_fraction` of the largest ``|value|``: a unit whose trough is
    small next to its positive peak is dated by detection on whatever crossed the
    threshold, and is left as it is.
    """
    z = np.asarray(waveform, dtype=np.float64) / np.asarray(sigma, dtype=np.float64)
    largest = float(np.abs(z).max()) if z.size else 0.0
    if largest == 0.0:
        return None
    signed = np.abs(z) if sign == 0 else sign * z
    t, _ = np.unravel_index(int(np.argmax(signed)), z.shape)
    if signed.max() < min_fraction * largest:
        return None
    return int(t)


def alignment_delay(waveform: np.ndarray, sigma: np.ndarray, before: int, tolerance: int,
                    sign: int = -1, min_fraction: float = 0.5) -> int:
    """The delay (samples) that puts a waveform's extremum at `before`; 0 within `tolerance`.

    ``shift(waveform, delay)`` (`phy_tmatch.comparison.shift`) is the aligned
    waveform. See `alignment_sample` for `sign` and `min_fraction`.
    """
    t = alignment_sample(waveform, sigma, sign, min_fraction)
    if t is None or abs(before - t) <= tolerance:
        return 0
    return int(before - t)


def shift_events(x: np.ndarray, delay: int) -> np.ndarray:
    """Events ``(n, n_t, ...)`` delayed by `delay` samples along axis 1 (zeros shifted in)."""
    out = np.zeros_like(x)
    n_t = x.shape[1]
    if abs(delay) >= n_t:
        return out
    if delay >= 0:
        out[:, delay:] = x[:, :n_t - delay]
    else:
        out[:, :delay] = x[:, -delay:]
    return out
