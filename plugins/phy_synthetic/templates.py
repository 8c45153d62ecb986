"""Units of a synthetic recording: where they are, what their spikes look like, when they fire.

Choices, and why:

- Position: a unit belongs to a channel group (shank), chosen with a
  probability proportional to its channel count; x/y are uniform within the
  group's bounding box widened by `MARGIN_UM` (cells beside a linear probe are
  recorded too), and the soma is `Z_RANGE_UM` off the probe plane, so even the
  nearest channel is a few um away.
- Shape: the extracellular spike on the nearest channel is a sum of Gaussians
  in time: a sharp trough at t = 0, a slower positive repolarisation after it
  and, for half the units, a small positive bump before it (triphasic). 30% of
  the units are narrow-spiking (trough sigma 0.05-0.075 ms, repolarisation
  peak 0.25-0.4 ms after the trough, like fast-spiking interneurons), the rest
  broad (0.09-0.13 ms, peak 0.45-0.7 ms after, like pyramidal cells). The
  template window is 0.5 ms before to 1.5 ms after the trough, with 0.2 ms
  cosine tapers at both ends so that nothing is cut abruptly.
- Space: the amplitude decays as ``1 / (1 + (d / d0)^2)`` with the 3-D distance
  ``d``, ``d0`` drawn per unit in 20-40 um (a point-source-like falloff, with
  unit-to-unit variety of size and orientation). Farther channels see a wider
  (x (1 + 0.25 per 100 um)) and later (propagation at 0.5 m/s) waveform: tissue
  and dendrites filter and delay the signal. The footprint is cut where it falls
  under `FOOTPRINT_CUTOFF` of the peak, by subtracting the cutoff level and
  rescaling (continuous, no step), so that adding a spike touches tens to a few
  hundred channels, not all 1024.
- Amplitude: the peak amplitude, measured as detection sees it (the largest
  ``|value|`` on the nearest channel after the detection band-pass, see
  `bandpassed_peak`), is ``snr * noise_std`` with ``snr`` log-uniform in
  `SNR_RANGE` (2.5-20): equally
  many units per octave, so about a third of them sit below ~5 sigma, near the
  noise floor where detection starts to miss, and a few are large.
- Firing: a Poisson process with a dead time of `REFRACTORY_MS` (2 ms), mean
  rate log-uniform in `RATE_RANGE_HZ` (0.5-20 Hz, cortical rates span orders of
  magnitude). The dead time is at least the template length, so two spikes of
  a unit never overlap (the injection relies on it). Only spikes whose whole
  window lies inside the recording are kept. Every spike's amplitude is scaled
  by ``1 + 0.1 N(0, 1)`` (clipped to 0.5-1.5): spike-to-spike variability.
"""

from __future__ import annotations

import math

import numpy as np

MARGIN_UM = 15.0
Z_RANGE_UM = (5.0, 20.0)
D0_RANGE_UM = (20.0, 40.0)
NARROW_FRACTION = 0.3
WINDOW_MS = (0.5, 1.5)
TAPER_MS = 0.2
BROADENING_PER_UM = 0.25 / 100.0
VELOCITY_UM_PER_MS = 500.0
FOOTPRINT_CUTOFF = 0.05
SNR_RANGE = (2.5, 20.0)
RATE_RANGE_HZ = (0.5, 20.0)
REFRACTORY_MS = 2.0
AMPLITUDE_JITTER = 0.1

STREAM_UNITS, STREAM_TRAIN = 10, 11


def window(sample_rate: float) -> tuple[int, int]:
    """Samples (before, after) the trough in a template."""
    return (int(round(WINDOW_MS[0] * 1e-3 * sample_rate)),
            int(round(WINDOW_MS[1] * 1e-3 * sample_rate)))


def refractory_samples(sample_rate: float) -> int:
    """The dead time in samples, never shorter than a template."""
    n_before, n_after = window(sample_rate)
    return max(n_before + n_after, int(math.ceil(REFRACTORY_MS * 1e-3 * sample_rate)))


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), n))


def _shape(t_ms: np.ndarray, p: dict) -> np.ndarray:
    """The spike waveform at times `t_ms` (trough at 0, trough value -1)."""
    def bumps(t):
        return (-np.exp(-t ** 2 / (2 * p["sigma_trough"] ** 2))
                + p["a_repol"] * np.exp(-(t - p["t_repol"]) ** 2 / (2 * p["sigma_repol"] ** 2))
                + p["a_pre"] * np.exp(-(t + p["t_pre"]) ** 2 / (2 * p["sigma_trough"] ** 2)))
    return bumps(t_ms) / -bumps(np.zeros(1))[0]


def bandpassed_peak(waveform: np.ndarray, sample_rate: float) -> float:
    """Largest ``|value|`` of a waveform after the detection band-pass.

    The band-pass is SpikeDetekt's default (Butterworth, order 3, 500 Hz to
    0.475 x the sample rate, forward and backward): the noise standard
    deviation is measured after it, so a unit's SNR compares like with like.
    The band-pass lowers the raw trough by 0-25% depending on the shape.
    """
    from scipy.signal import butter, sosfiltfilt

    sos = butter(3, [500.0, 0.475 * sample_rate], btype="band", fs=sample_rate, output="sos")
    padded = np.pad(np.asarray(waveform, dtype=np.float64), 2 * len(waveform))
    return float(np.abs(sosfiltfilt(sos, padded)).max())


def _taper(t_ms: np.ndarray) -> np.ndarray:
    lo, hi = -WINDOW_MS[0], WINDOW_MS[1]
    ramp_in = np.clip((t_ms - lo) / TAPER_MS, 0, 1)
    ramp_out = np.clip((hi - t_ms) / TAPER_MS, 0, 1)
    return np.sin(np.pi / 2 * ramp_in) ** 2 * np.sin(np.pi / 2 * ramp_out) ** 2


def _shape_parameters(rng: np.random.Generator) -> dict:
    narrow = rng.random() < NARROW_FRACTION
    if narrow:
        p = dict(sigma_trough=rng.uniform(0.05, 0.075), t_repol=rng.uniform(0.25, 0.4),
                 sigma_repol=rng.uniform(0.1, 0.16), a_repol=rng.uniform(0.3, 0.6))
    else:
        p = dict(sigma_trough=rng.uniform(0.09, 0.13), t_repol=rng.uniform(0.45, 0.7),
                 sigma_repol=rng.uniform(0.18, 0.28), a_repol=rng.uniform(0.15, 0.35))
    triphasic = rng.random() < 0.5
    p.update(narrow=narrow, a_pre=rng.uniform(0.05, 0.2) if triphasic else 0.0,
             t_pre=2.5 * p["sigma_trough"])
    return p


def make_units(positions: np.ndarray, groups: list[np.ndarray], n_units: int,
               sample_rate: float, noise_std_bp: np.ndarray, seed: int) -> dict:
    """Place `n_units` units and compute their templates (uV).

    Parameters
    ----------
    positions : array (n_channels, 2)
        um; NaN for channels not on the probe.
    groups : list of int arrays
        The channels of each channel group.
    noise_std_bp : array (n_channels,)
        Spike-band noise standard deviation (uV): amplitudes are SNRs times it.

    Returns
    -------
    dict with ``templates_uv`` (n_units, n_samples, n_channels) float32,
    ``positions`` (n_units, 3), ``snr``, ``rates_hz``, ``narrow``, ``d0_um``.
    """
    rng = np.random.default_rng([seed, STREAM_UNITS])
    n_before, n_after = window(sample_rate)
    t_ms = (np.arange(-n_before, n_after) / sample_rate) * 1e3
    taper = _taper(t_ms)
    n_channels = len(positions)
    sizes = np.array([len(g) for g in groups], dtype=float)
    templates = np.zeros((n_units, len(t_ms), n_channels), dtype=np.float32)
    unit_positions = np.zeros((n_units, 3))
    snr = _log_uniform(rng, SNR_RANGE, n_units)
    rates = _log_uniform(rng, RATE_RANGE_HZ, n_units)
    d0 = rng.uniform(*D0_RANGE_UM, n_units)
    narrow = np.zeros(n_units, dtype=bool)
    for unit in range(n_units):
        channels = groups[rng.choice(len(groups), p=sizes / sizes.sum())]
        pos = positions[channels]
        lo, hi = pos.min(axis=0) - MARGIN_UM, pos.max(axis=0) + MARGIN_UM
        xyz = np.r_[rng.uniform(lo, hi), rng.uniform(*Z_RANGE_UM)]
        unit_positions[unit] = xyz
        p = _shape_parameters(rng)
        narrow[unit] = p["narrow"]
        on_probe = np.flatnonzero(~np.isnan(positions).any(axis=1))
        d = np.sqrt(((positions[on_probe] - xyz[:2]) ** 2).sum(axis=1) + xyz[2] ** 2)
        falloff = 1.0 / (1.0 + (d / d0[unit]) ** 2)
        falloff = np.clip((falloff / falloff.max() - FOOTPRINT_CUTOFF)
                          / (1 - FOOTPRINT_CUTOFF), 0, None)
        near = falloff > 0
        extra = d[near] - d.min()
        delay = extra / VELOCITY_UM_PER_MS
        stretch = 1.0 + BROADENING_PER_UM * extra
        waves = _shape((t_ms[:, None] - delay[None, :]) / stretch[None, :], p)
        peak_channel = on_probe[np.argmin(d)]
        amplitude = snr[unit] * noise_std_bp[peak_channel]
        templates[unit][:, on_probe[near]] = falloff[near] * taper[:, None] * waves
        # Scale so that the band-passed peak, what detection sees, is snr x noise.
        peak = bandpassed_peak(templates[unit][:, peak_channel], sample_rate)
        templates[unit] *= amplitude / peak
    return dict(templates_uv=templates, positions=unit_positions, snr=snr, rates_hz=rates,
                narrow=narrow, d0_um=d0, n_before=n_before)


def spike_trains(rates_hz: np.ndarray, n_samples: int, sample_rate: float, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All spikes, sorted: ``(samples (trough), units, amplitude scales)``.

    Each unit's train is drawn from its own generator (seeded by the seed and
    the unit), Poisson with a dead time; troughs stay where the whole template
    window fits in the recording.
    """
    n_before, n_after = window(sample_rate)
    dead = refractory_samples(sample_rate)
    samples, units, scales = [], [], []
    for unit, rate in enumerate(rates_hz):
        rng = np.random.default_rng([seed, STREAM_TRAIN, unit])
        # Exponential gaps after the dead time, with the mean rate preserved.
        scale = max(sample_rate / rate - dead, 1.0)
        n_expected = int(n_samples / (scale + dead) * 1.2) + 20
        train = np.empty(0, dtype=np.int64)
        last = 0
        while last < n_samples:
            gaps = dead + np.floor(rng.exponential(scale, n_expected)).astype(np.int64)
            more = last + np.cumsum(gaps)
            train = np.r_[train, more]
            last = int(more[-1])
        train = train[(train >= n_before) & (train < n_samples - n_after)]
        jitter = np.clip(1.0 + AMPLITUDE_JITTER * rng.standard_normal(len(train)), 0.5, 1.5)
        samples.append(train)
        units.append(np.full(len(train), unit, dtype=np.int64))
        scales.append(jitter.astype(np.float32))
    samples_all = np.concatenate(samples) if samples else np.empty(0, np.int64)
    order = np.argsort(samples_all, kind="stable")
    return (samples_all[order], np.concatenate(units)[order] if units else samples_all,
            np.concatenate(scales)[order] if scales else np.empty(0, np.float32))
