"""Synthetic spikes for the template refinement's tests (shared by its test modules).

A unit's waveform on 16 channels, in noise units; its spikes with a 10 %
amplitude jitter and up to half a sample of misalignment, in white noise; and
spike times at least 3 ms apart.
"""

import numpy as np

N_T, N_CHANNELS, HOME = 40, 16, 8


def spike(shift: float = 0.0) -> np.ndarray:
    """A unit's waveform ``(N_T, N_CHANNELS)`` in noise units, delayed by `shift` samples."""
    t = np.arange(N_T)[:, None] - 15.0 - shift
    shape = -np.exp(-0.5 * (t / 2.0) ** 2) + 0.4 * np.exp(-0.5 * ((t - 6.0) / 4.0) ** 2)
    footprint = np.exp(-0.5 * ((np.arange(N_CHANNELS) - HOME) / 2.0) ** 2)
    return 8.0 * shape * footprint[None, :]


def spikes(rng, n: int, amplitude: float) -> np.ndarray:
    """`n` spikes of amplitudes ``amplitude * (1 +- 10 %)``, misaligned by up to half a
    sample, in white noise of unit variance: ``(n, N_T, N_CHANNELS)``."""
    shifts = rng.uniform(-0.5, 0.5, n)
    amplitudes = amplitude * (1.0 + 0.1 * rng.standard_normal(n))
    return np.stack([a * spike(d) for a, d in zip(amplitudes, shifts)]) + \
        rng.standard_normal((n, N_T, N_CHANNELS))


def interleaved(rng, n: int) -> np.ndarray:
    """`n` spike samples at random times over 20 s, at least 3 ms apart."""
    return np.sort(rng.choice(20 * 30000 // 90, n, replace=False)) * 90
