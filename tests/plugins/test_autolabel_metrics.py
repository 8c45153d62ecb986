"""Quality metrics of `phy_autolabel.metrics` against independent computations on planted data."""

import math

import numpy as np
import pytest
from scipy.stats import chi2, norm

from phy_autolabel.metrics import (
    amplitude_cutoff,
    chi2_sf,
    isolation,
    noise_std,
    peak_snr,
    refractory_violations,
    split_separation,
)

RATE = 30000.0


def _train(rng, rate_hz, duration_s, dead_ms=2.0):
    """A Poisson train with a dead time, in samples (as the synthetic units fire)."""
    n = rng.poisson(rate_hz * duration_s * 1.5)
    intervals = rng.exponential(1.0 / rate_hz, n) + dead_ms / 1000
    times = np.cumsum(intervals)
    return np.round(times[times < duration_s] * RATE).astype(np.int64)


def test_refractory_violations_single_unit_and_merge():
    rng = np.random.default_rng(0)
    duration = 200.0
    a, b = _train(rng, 20, duration), _train(rng, 20, duration)
    # One unit with a 2 ms dead time: no interval under 1.5 ms.
    assert refractory_violations(a, RATE, duration, 1.5) == (0, 0.0)
    merged = np.sort(np.concatenate([a, b]))
    n_violations, contamination = refractory_violations(merged, RATE, duration, 1.5)
    # Counted independently: consecutive intervals shorter than 1.5 ms (45 samples).
    assert n_violations == sum(1 for x, y in zip(merged[:-1], merged[1:]) if y - x < 45)
    # Two independent trains at the same rate: half the spikes are "contamination" of the
    # other unit; Hill's model expects n = 2 t n_total^2 f (1 - f) / T with f = 0.5.
    expected = 2 * 1.5e-3 * len(merged) ** 2 * 0.25 / duration
    assert abs(n_violations - expected) < 4 * math.sqrt(expected)
    assert 0.3 < contamination <= 0.5
    # The estimate inverts Hill's formula exactly.
    f = contamination
    assert 2 * 1.5e-3 * len(merged) ** 2 * f * (1 - f) / duration == pytest.approx(n_violations)


def test_refractory_violations_censored_period():
    samples = np.array([0, 10, 1000, 1030, 5000])  # intervals 10, 990, 30, 3970 samples
    # 10 samples = 0.33 ms and 30 samples = 1 ms violate 1.5 ms; 0.5 ms censors the first.
    assert refractory_violations(samples, RATE, 1.0, 1.5)[0] == 2
    assert refractory_violations(samples, RATE, 1.0, 1.5, censored_period_ms=0.5)[0] == 1
    with pytest.raises(ValueError, match="must exceed"):
        refractory_violations(samples, RATE, 1.0, 0.5, censored_period_ms=0.5)


def test_isolation_of_overlapping_and_separate_clusters():
    rng = np.random.default_rng(1)
    d, n = 6, 4000
    cluster = rng.normal(size=(n, d))
    # Others drawn from the same distribution, twice as many: the n-th closest of them sits
    # at the median of a chi-square with d degrees of freedom, and every other spike has a
    # uniform p-value (mean 1/2), so the L-ratio is 2 n / 2 / n = 1.
    same = rng.normal(size=(2 * n, d))
    distance, l_ratio = isolation(cluster, same)
    assert distance == pytest.approx(chi2.median(d), rel=0.1)
    assert l_ratio == pytest.approx(1.0, rel=0.1)
    # Far away: the other spikes' squared distances are about |shift|^2 + d.
    far = rng.normal(size=(2 * n, d)) + np.r_[20.0, np.zeros(d - 1)]
    distance, l_ratio = isolation(cluster, far)
    assert distance > 0.5 * 20 ** 2
    assert l_ratio < 1e-6
    # Fewer other spikes than the cluster has: no n-th closest.
    assert isolation(cluster, far[:10])[0] == math.inf


def test_isolation_weights_stand_for_a_subsample():
    rng = np.random.default_rng(2)
    cluster = rng.normal(size=(3000, 4))
    others = rng.normal(size=(20000, 4)) + np.r_[4.0, 0, 0, 0]
    full = isolation(cluster, others)
    sub = isolation(cluster, others[::4], weights_out=np.full(5000, 4.0))
    assert sub[0] == pytest.approx(full[0], rel=0.05)
    assert sub[1] == pytest.approx(full[1], rel=0.05)


@pytest.mark.parametrize("missing", [0.0, 0.1, 0.25])
def test_amplitude_cutoff_of_truncated_gaussians(missing):
    rng = np.random.default_rng(3)
    amplitudes = rng.normal(10.0, 2.0, 40000)
    if missing:
        amplitudes = amplitudes[amplitudes > 10.0 + 2.0 * norm.ppf(missing)]
    assert amplitude_cutoff(amplitudes) == pytest.approx(missing, abs=0.03)
    assert math.isnan(amplitude_cutoff(amplitudes[:10]))


def test_split_separation_of_one_and_two_units():
    rng = np.random.default_rng(4)
    one = rng.normal(size=(2000, 8)) * np.linspace(3, 1, 8)
    # One Gaussian at its best cut: parts at +-0.80 sigma with sd 0.60 sigma, D = 2.66.
    assert split_separation(one) == pytest.approx(2.66, abs=0.15)
    two = np.concatenate([one[:1000], one[1000:] + np.r_[np.zeros(7), 12.0]])
    assert split_separation(two) > 5
    assert math.isnan(split_separation(one[:5]))


def test_noise_std_and_peak_snr():
    rng = np.random.default_rng(5)
    sigma = np.array([1.0, 2.0, 5.0])
    traces = rng.normal(size=(200000, 3)) * sigma
    traces[::1000, 1] += 200.0  # rare big spikes do not move the estimate
    assert noise_std(traces) == pytest.approx(sigma, rel=0.02)
    mean = np.zeros((40, 3))
    mean[20, 0], mean[18, 2] = 6.0, -40.0
    snr, channel = peak_snr(mean, sigma)
    assert (snr, channel) == (pytest.approx(8.0), 2)


def test_coincidence_against_brute_force_and_for_spikes_seen_twice():
    from phy_autolabel.metrics import coincidence

    rng = np.random.default_rng(5)
    # Independent trains: the fraction equals a brute-force count, and stays near chance.
    samples = np.sort(rng.choice(600_000, 400, replace=False))
    other = rng.choice(600_000, 3000, replace=False)
    other_clusters = rng.integers(10, 13, len(other))
    fraction, cluster = coincidence(samples, other, other_clusters, window=15)
    brute = {c: np.mean([np.any(np.abs(other[other_clusters == c] - s) <= 15)
                         for s in samples]) for c in (10, 11, 12)}
    best = max(brute, key=brute.get)
    assert cluster == best and fraction == pytest.approx(brute[best])
    assert fraction < 0.1  # ~1000 spikes of a cluster in 600k samples, +-15: ~5 %
    # A cluster made of another's spikes, 3 samples later: all of it coincides, and
    # only once per spike even where the other cluster has two spikes in the window.
    ghost = samples[::2] + 3
    doubled = np.concatenate([samples, samples[:20] + 1])
    fraction, cluster = coincidence(ghost, doubled, np.full(len(doubled), 7), window=15)
    assert (fraction, cluster) == (1.0, 7)
    assert coincidence(samples, [], [], 15) == (0.0, -1)


def test_chi2_sf_is_scipy_stats_to_the_bit():
    """The L-ratio's chi-square tail without scipy.stats: the same numbers, edges included."""
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.gamma(2.0, 5.0, 20000), rng.normal(0, 1e-12, 100),
                        [0.0, -0.0, -3.0, np.inf, -np.inf, np.nan, 1e-320, 1e300]])
    for df in (1, 4, 8, 12, 3.0):
        np.testing.assert_array_equal(chi2_sf(x, df), chi2.sf(x, df))
    assert chi2_sf(3.0, 4) == chi2.sf(3.0, 4)


def test_default_coincidence_window_catches_echoes_not_busy_neighbours():
    """Echoes of a large unit's after-phase (detected 1.2 ms after its spikes) coincide
    with it in full at the default window; a 50 Hz independent neighbour stays under
    the good rule's limit."""
    from phy_autolabel.metrics import coincidence
    from phy_autolabel.quality import MetricParameters
    from phy_autolabel.rule import GoodRule

    rate = 30000.0
    window = int(round(MetricParameters().coincidence_window_ms * rate / 1000))
    rng = np.random.default_rng(8)
    big = np.sort(rng.choice(int(60 * rate), 600, replace=False))  # 10 Hz for 60 s
    echoes = big[::3] + int(round(1.2e-3 * rate))
    fraction, cluster = coincidence(echoes, big, np.full(len(big), 4), window)
    assert (fraction, cluster) == (1.0, 4)
    neighbour = np.sort(rng.choice(int(60 * rate), 3000, replace=False))  # 50 Hz
    unit = np.sort(rng.choice(int(60 * rate), 600, replace=False))
    fraction, _ = coincidence(unit, neighbour, np.full(len(neighbour), 9), window)
    assert 0.08 < fraction < GoodRule().max_coincidence  # chance: ~15 %
