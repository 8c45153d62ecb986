"""Quality metrics of one cluster, as pure functions of arrays.

Each function takes what a sorting provides (spike times, per-spike
amplitudes, features, a mean waveform and the noise) and returns numbers; the
reading of those arrays from a model is in `phy_autolabel.sources`, the
choice of spikes and channels in `phy_autolabel.quality`.

- `refractory_violations`: inter-spike intervals shorter than the refractory
  period, and the contamination they imply (Hill, Mehta & Kleinfeld 2011,
  J. Neurosci. 31:8699).
- `isolation`: isolation distance (Harris et al. 2001) and L-ratio (Schmitzer-
  Torbert et al. 2005) of a cluster in a feature space, against the spikes of
  the other clusters (which may be a weighted subsample).
- `amplitude_cutoff`: the fraction of a unit's spikes missing below the
  lowest amplitude of its cluster, assuming a symmetric amplitude
  distribution (the assumption of the Allen Institute's ecephys metric).
- `split_separation`: how well the cluster splits in two along its main
  axis (Ashman's D), high for two units merged in one cluster.
- `peak_snr`: the peak of the mean waveform over the noise standard deviation
  of its channel; `noise_std` estimates that from traces (median absolute
  deviation).
"""

from __future__ import annotations

import math

import numpy as np

#: Median absolute deviation of a standard normal distribution.
_MAD_TO_STD = 1.0 / 0.6744897501960817


def refractory_violations(spike_samples, sample_rate: float, duration_s: float,
                          refractory_period_ms: float = 1.5,
                          censored_period_ms: float = 0.0) -> tuple[int, float]:
    """Refractory-period violations of a spike train and the contamination they imply.

    Parameters
    ----------
    spike_samples : array (n,)
        Spike times in samples (any order).
    sample_rate : float
        Hz.
    duration_s : float
        Duration of the recording, seconds.
    refractory_period_ms : float
        Intervals shorter than this violate the refractory period.
    censored_period_ms : float
        Intervals shorter than this cannot be observed (the detector's dead
        time); they are not counted and the window shrinks accordingly.

    Returns
    -------
    n_violations : int
        Consecutive intervals in ``[censored, refractory)``.
    contamination : float
        The fraction ``f`` of spikes from other neurons (firing independently)
        that gives that many violations on average: the root in [0, 0.5] of
        ``n_violations = 2 (t_r - t_c) n^2 f (1 - f) / T`` (Hill et al. 2011);
        1.0 when no such root exists (more violations than a 50 % mix gives).
        0 for fewer than two spikes.
    """
    samples = np.sort(np.asarray(spike_samples, dtype=np.int64))
    n = len(samples)
    if n < 2:
        return 0, 0.0
    intervals_ms = np.diff(samples) * (1000.0 / sample_rate)
    window_ms = refractory_period_ms - censored_period_ms
    if window_ms <= 0:
        raise ValueError(f"refractory_period_ms ({refractory_period_ms}) must exceed "
                         f"censored_period_ms ({censored_period_ms}).")
    n_violations = int(np.count_nonzero((intervals_ms >= censored_period_ms)
                                        & (intervals_ms < refractory_period_ms)))
    a = n_violations * duration_s / (2.0 * window_ms * 1e-3 * n * n)
    contamination = 1.0 if a > 0.25 else 0.5 * (1.0 - math.sqrt(1.0 - 4.0 * a))
    return n_violations, float(contamination)


def chi2_sf(x, df) -> np.ndarray:
    """The chi-square survival function, as ``scipy.stats.chi2.sf(x, df)`` (the same numbers:
    ``scipy.special.chdtrc``, and 1 at and below 0), without importing ``scipy.stats``
    (~0.4 s of CPU with ``scipy.signal``, which the sort's process otherwise never needs)."""
    from scipy.special import chdtrc

    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0, 1.0, chdtrc(df, x))


def isolation(features_in, features_out, weights_out=None, n_in: int | None = None,
              regularization: float = 1e-6) -> tuple[float, float]:
    """Isolation distance and L-ratio of a cluster in a feature space.

    The Mahalanobis distance uses the mean and covariance of the cluster's
    spikes (`features_in`); the other spikes (`features_out`) are measured
    against them.

    Parameters
    ----------
    features_in : array (n_in_sample, n_dims)
        Features of (a sample of) the cluster's spikes.
    features_out : array (n_out_sample, n_dims)
        Features of (a sample of) the other spikes.
    weights_out : array (n_out_sample,) or None
        How many spikes each row of `features_out` stands for (1 by default):
        the inverse of its sampling fraction.
    n_in : int or None
        Number of spikes of the cluster (default: ``len(features_in)``).
    regularization : float
        Added to the covariance diagonal, relative to its mean variance.

    Returns
    -------
    isolation_distance : float
        The squared Mahalanobis distance of the ``n_in``-th closest other
        spike (weights counted); ``inf`` when there are fewer other spikes
        than ``n_in``. Higher is better isolated.
    l_ratio : float
        ``sum(weight * (1 - chi2_cdf(d2, n_dims))) / n_in`` over the other
        spikes. Lower is better isolated.
    """
    x = np.asarray(features_in, dtype=np.float64)
    y = np.asarray(features_out, dtype=np.float64).reshape(-1, x.shape[1])
    n_dims = x.shape[1]
    n_in = len(x) if n_in is None else int(n_in)
    w = np.ones(len(y)) if weights_out is None else np.asarray(weights_out, dtype=np.float64)
    if len(x) <= n_dims:
        return float("nan"), float("nan")
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False).reshape(n_dims, n_dims)
    cov[np.diag_indices(n_dims)] += regularization * max(np.trace(cov) / n_dims, 1e-12)
    if len(y) == 0:
        return float("inf"), 0.0
    # Solve instead of inverting: d2 = |L^-1 (y - mean)|^2 with cov = L L^T.
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (y - mean).T)
    d2 = np.einsum("ij,ij->j", z, z)
    l_ratio = float(np.sum(w * chi2_sf(d2, n_dims)) / n_in)
    order = np.argsort(d2)
    reached = np.searchsorted(np.cumsum(w[order]), n_in - 1e-9)
    distance = float(d2[order[reached]]) if reached < len(order) else float("inf")
    return distance, l_ratio


def amplitude_cutoff(amplitudes, n_bins: int = 50, smoothing_bins: float = 2.0,
                     min_spikes: int = 20) -> float:
    """Estimated fraction of a unit's spikes missing below the lowest amplitude of its cluster.

    A detection threshold cuts the low end of a unit's amplitude distribution.
    Assuming the full distribution is symmetric about its mode, the spikes
    missing below the lowest amplitude ``a_min`` are as many as the spikes
    observed above the mirror image ``2 mode - a_min``; the mode is the peak of
    a smoothed histogram. (The same assumption as the Allen Institute's
    ecephys ``amplitude_cutoff``, counted on spikes rather than on histogram
    densities, which is less biased when the cut is near the mode.)

    Parameters
    ----------
    amplitudes : array (n,)
        Positive per-spike amplitudes (any unit).
    n_bins : int
        Histogram bins between the lowest and the highest amplitude.
    smoothing_bins : float
        Standard deviation of the Gaussian smoothing of the histogram, in bins.
    min_spikes : int
        Below this many spikes, returns NaN.

    Returns
    -------
    fraction : float
        ``missing / (n + missing)``, the estimated fraction of the unit's
        spikes that are missing, in [0, 0.5]; NaN for too few spikes.
        A cut at the mode reads about 0.35 (the mode itself is then biased).
    """
    from scipy.ndimage import gaussian_filter1d

    amplitudes = np.asarray(amplitudes, dtype=np.float64)
    amplitudes = amplitudes[np.isfinite(amplitudes)]
    if len(amplitudes) < min_spikes:
        return float("nan")
    counts, edges = np.histogram(amplitudes, bins=n_bins)
    smooth = gaussian_filter1d(counts.astype(np.float64), smoothing_bins, mode="constant")
    peak = int(np.argmax(smooth))
    mode = 0.5 * (edges[peak] + edges[peak + 1])
    missing = np.count_nonzero(amplitudes > 2.0 * mode - amplitudes.min())
    return min(missing / (len(amplitudes) + missing), 0.5)


def split_separation(features, min_fraction: float = 0.05) -> float:
    """How well a cluster splits in two along its main axis (Ashman's D of the best split).

    The features are projected on their first principal component; the
    projection is cut in two where the within-part sum of squares is
    smallest (1-D two-means), and ``D = sqrt(2) |m1 - m2| / sqrt(v1 + v2)``
    measures how far apart the parts are. One Gaussian cut this way gives
    D of about 2.7 whatever its spread; two units merged in one cluster
    give more (D > 2 is the usual criterion of two separate modes).

    Parameters
    ----------
    features : array (n, n_dims)
    min_fraction : float
        Each part holds at least this fraction of the spikes (and 2 spikes).

    Returns
    -------
    d : float
        NaN for fewer than 8 spikes.
    """
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n < 8:
        return float("nan")
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    p = np.sort(x @ vt[0])
    k = np.arange(max(2, int(min_fraction * n)), n - max(2, int(min_fraction * n)) + 1)
    c1, c2 = np.cumsum(p), np.cumsum(p * p)
    m1, m2 = c1[k - 1] / k, (c1[-1] - c1[k - 1]) / (n - k)
    v1 = c2[k - 1] / k - m1 * m1
    v2 = (c2[-1] - c2[k - 1]) / (n - k) - m2 * m2
    best = int(np.argmin(k * v1 + (n - k) * v2))
    spread = math.sqrt(max(v1[best] + v2[best], 1e-300))
    return float(math.sqrt(2.0) * abs(m2[best] - m1[best]) / spread)


def coincidence(spike_samples, other_samples, other_clusters, window: int) -> tuple[float, int]:
    """The largest fraction of a cluster's spikes that another single cluster also has.

    A spike *coincides* with a cluster when one of that cluster's spikes lies
    within `window` samples of it. Returns ``(fraction, cluster)``: the other
    cluster with the most coinciding spikes and their fraction of the cluster's
    spikes (``(0.0, -1)`` if none). Independent units coincide by chance only
    (a 50 Hz unit and a 1 ms window: 5 %); a cluster that mostly coincides with
    another is the same spikes seen twice (a template matching a neighbour's
    residual, a detection split in two), not a unit of its own.
    """
    samples = np.asarray(spike_samples, dtype=np.int64)
    order = np.argsort(other_samples, kind="stable")
    other = np.asarray(other_samples, dtype=np.int64)[order]
    clusters = np.asarray(other_clusters, dtype=np.int64)[order]
    if not len(samples) or not len(other):
        return 0.0, -1
    lo = np.searchsorted(other, samples - window, side="left")
    hi = np.searchsorted(other, samples + window, side="right")
    counts = hi - lo
    if not counts.any():
        return 0.0, -1
    # Every (spike, other spike) pair within the window, then one count per
    # (spike, cluster): a spike coinciding twice with one cluster counts once.
    spike = np.repeat(np.arange(len(samples)), counts)
    starts = np.repeat(lo - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    pair_clusters = clusters[starts + np.arange(len(spike))]
    pairs = np.unique(np.stack([pair_clusters, spike]), axis=1)
    ids, per_cluster = np.unique(pairs[0], return_counts=True)
    best = int(np.argmax(per_cluster))
    return float(per_cluster[best] / len(samples)), int(ids[best])


def noise_std(traces) -> np.ndarray:
    """Noise standard deviation per channel of (filtered) traces, from the median |x|.

    Spikes are rare and large: the median absolute value ignores them, where
    the standard deviation would not.

    Parameters
    ----------
    traces : array (n_samples, n_channels)
        Zero-mean (band-passed) traces.

    Returns
    -------
    std : array (n_channels,)
    """
    return np.median(np.abs(np.asarray(traces, dtype=np.float64)), axis=0) * _MAD_TO_STD


def peak_snr(mean_waveform, noise) -> tuple[float, int]:
    """The largest |value| of a mean waveform over the noise std of its channel.

    Parameters
    ----------
    mean_waveform : array (n_samples, n_channels)
    noise : array (n_channels,)
        Noise standard deviation of each channel, in the waveform's unit.

    Returns
    -------
    snr : float
        ``max over channels of max|mean_waveform[:, c]| / noise[c]``.
    channel : int
        The column where it is reached.
    """
    peak = np.abs(np.asarray(mean_waveform, dtype=np.float64)).max(axis=0)
    noise = np.asarray(noise, dtype=np.float64)
    ratio = np.where(noise > 0, peak / np.where(noise > 0, noise, 1.0), 0.0)
    channel = int(np.argmax(ratio))
    return float(ratio[channel]), channel
