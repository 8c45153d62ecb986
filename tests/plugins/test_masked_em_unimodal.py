"""The one-mode test of the masked EM's merges and split vetoes (`phy_masked_em.unimodal`)."""

import numpy as np
import pytest

from phy_masked_em.data import prepare_data
from phy_masked_em.loop import masked_em
from phy_masked_em.unimodal import is_bimodal, split_modes, two_gaussians


def _reference_em(x, second, iterations=500):
    """A plain numpy EM of two 1-D Gaussians (an independent implementation)."""
    w = np.array([np.mean(~second), np.mean(second)])
    mean = np.array([x[~second].mean(), x[second].mean()])
    var = np.array([x[~second].var(), x[second].var()])
    for _ in range(iterations):
        dens = w / np.sqrt(2 * np.pi * var) * np.exp(-0.5 * (x[:, None] - mean) ** 2 / var)
        r = dens / dens.sum(axis=1, keepdims=True)
        nk = r.sum(axis=0)
        w, mean = nk / len(x), (r * x[:, None]).sum(axis=0) / nk
        var = (r * (x[:, None] - mean) ** 2).sum(axis=0) / nk
    log_likelihood = np.log(dens.sum(axis=1)).sum()
    one = (-0.5 * (x - x.mean()) ** 2 / x.var() - 0.5 * np.log(2 * np.pi * x.var())).sum()
    return w, mean, var, log_likelihood - one


def test_two_gaussians_match_a_reference_em():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, 300), rng.normal(4, 0.7, 100)]
    second = x > x.mean()
    w, mean, var, gain = two_gaussians(x, second)
    rw, rmean, rvar, rgain = _reference_em(x, second)
    np.testing.assert_allclose(w, rw, atol=1e-3)
    np.testing.assert_allclose(mean, rmean, atol=1e-2)
    np.testing.assert_allclose(var, rvar, atol=1e-2)
    assert gain == pytest.approx(rgain, rel=1e-3)


@pytest.mark.parametrize("draw", [
    lambda rng, n: rng.normal(0, 1, n),
    lambda rng, n: rng.lognormal(0, 0.5, n),  # skewed
    lambda rng, n: rng.standard_t(4, n),  # heavy tails
])
def test_one_mode_is_rarely_called_two(draw):
    rng = np.random.default_rng(1)
    calls = [is_bimodal(x, x > x.mean()) for x in (draw(rng, 200) for _ in range(100))]
    assert sum(calls) <= 3


def test_two_modes_are_found_and_separated():
    rng = np.random.default_rng(2)
    for n_small in (40, 150):
        truth = np.r_[np.zeros(300, bool), np.ones(n_small, bool)]
        x = np.where(truth, rng.normal(6, 1, len(truth)), rng.normal(0, 1.2, len(truth)))
        modes = split_modes(x, x > np.median(x))  # a start that cuts the big mode
        assert modes is not None
        assert np.mean(modes == truth) > 0.98
    assert split_modes(np.arange(7.0), np.arange(7) > 3) is None  # too few to tell


def _two_amplitudes(amplitudes, n=200, seed=3):
    """`n` spikes per amplitude of one waveform on channels 0-3 scaled by the amplitude
    (10% jitter), then `n` spikes of another unit on channels 6-9 (amplitude 0: where
    channels 0-3 are masked, which gives their noise statistics); 10 channels, the
    channels without signal masked."""
    rng = np.random.default_rng(seed)
    n_channels, fpc = 10, 3
    template = rng.uniform(3, 6, (4, fpc)) * rng.choice([-1, 1], (4, fpc))
    scale = np.repeat(amplitudes, n) * rng.normal(1, 0.1, n * len(amplitudes))
    x = rng.normal(0, 1, (len(scale) + n, n_channels, fpc))
    x[:len(scale), :4] += scale[:, None, None] * template
    x[len(scale):, 6:] += template[::-1]
    masks = np.zeros((len(scale) + n, n_channels))
    masks[:len(scale), :4] = 1
    masks[len(scale):, 6:] = 1
    return x.reshape(len(x), -1), masks, np.r_[scale, np.zeros(n)]


def test_merge_keeps_alike_units_of_different_amplitudes():
    from phy_masked_em.merge import WaveformStats, merge_similar

    # Two units, the same shape at amplitudes 1 and 1.5: similarity 0.92, two modes.
    features, masks, _ = _two_amplitudes([1.0, 1.5])
    d = prepare_data(features, masks)
    labels = np.repeat([2, 3, 4], 200)
    assert WaveformStats(d, labels).similarity(2, 3) > 0.9
    merged, n_merged = merge_similar(d, labels, 0.9)
    assert n_merged == 0 and np.array_equal(merged, labels)
    # One unit (amplitude 1.25) cut in two by its amplitude: alike, one mode, merged.
    features, masks, scale = _two_amplitudes([1.25], n=400)
    d = prepare_data(features, masks)
    halves = np.where(scale > np.median(scale[:400]), 3, 2)
    halves[400:] = 4
    assert WaveformStats(d, halves).similarity(2, 3) > 0.9
    merged, n_merged = merge_similar(d, halves, 0.9)
    assert n_merged == 1 and len(np.unique(merged[:400])) == 1 and merged[-1] == 4


def test_masked_em_separates_alike_units_of_different_amplitudes():
    # Similarity 0.92: the split of their cluster used to be vetoed as "halves alike".
    features, masks, _ = _two_amplitudes([1.0, 1.5], n=150, seed=4)
    labels = masked_em(features, masks, {})
    truth = np.repeat([0, 1, 2], 150)
    # Each unit has its own cluster holding at least 95% of its spikes, and little else.
    for unit in (0, 1, 2):
        values, counts = np.unique(labels[truth == unit], return_counts=True)
        cluster = values[np.argmax(counts)]
        assert cluster >= 2 and counts.max() >= 0.95 * 150
        assert np.mean(truth[labels == cluster] == unit) >= 0.95


def test_a_clear_mua_cluster_leaves_it_and_weak_clusters_can_go_there():
    from phy_masked_em.weak import MIN_PEAK_STD, weak_to_mua

    # A unit on channels 0-3 (cluster 1: the MUA cluster), a unit on channels 6-9
    # (cluster 2), and noise crossings: spikes of noise alone on channel 5 (cluster 3).
    features, masks, _ = _two_amplitudes([1.0], n=100, seed=5)
    rng = np.random.default_rng(6)
    noise = rng.normal(0, 1, (60, 10, 3))
    noise_masks = np.zeros((60, 10))
    noise_masks[:, 5] = 1
    features = np.r_[features, noise.reshape(60, -1)]
    masks = np.r_[masks, noise_masks]
    labels = np.repeat([1, 2, 3], [100, 100, 60])
    d = prepare_data(features, masks)
    # Independently: the mean of each cluster on its unmasked features, in noise
    # standard deviations (noise statistics from the masked entries).
    per_feature = np.repeat(masks, 3, axis=1) > 0
    scaled = (features - features.min(0)) / (features.max(0) - features.min(0))
    z = (scaled - d.noise_mean) / np.sqrt(d.noise_variance)
    peaks = [np.abs(z[labels == c][:, per_feature[labels == c].all(0)].mean(0)).max()
             for c in (1, 2, 3)]
    assert peaks[0] > 5 and peaks[1] > 5 and peaks[2] < MIN_PEAK_STD
    new, n_weak = weak_to_mua(d, labels)  # cluster 3 has a mean waveform: it stays
    assert n_weak == 0 and np.all(new[labels == 3] == 3)
    assert len(np.unique(new[labels == 1])) == 1 and new[0] >= 4  # the unit left MUA
    new, n_weak = weak_to_mua(d, labels, MIN_PEAK_STD)
    assert n_weak == 1
    assert np.all(new[labels == 3] == 1)  # the noise crossings are multi-unit activity
    assert len(np.unique(new[labels == 1])) == 1 and new[0] >= 4  # the unit left MUA
    assert np.all(new[labels == 2] == 2)


def test_a_cluster_without_a_mean_waveform_goes_to_mua():
    from phy_masked_em.weak import weak_to_mua

    # Cluster 3: one spike on each channel (no channel unmasked in half its spikes).
    features, masks, _ = _two_amplitudes([1.0], n=100, seed=7)
    rng = np.random.default_rng(8)
    scattered = rng.normal(0, 1, (10, 10, 3))
    scattered_masks = np.eye(10)
    features = np.r_[features, scattered.reshape(10, -1)]
    masks = np.r_[masks, scattered_masks]
    labels = np.repeat([2, 3, 4], [100, 100, 10])
    new, n_weak = weak_to_mua(prepare_data(features, masks), labels)
    assert n_weak == 1 and np.all(new[200:] == 1) and np.array_equal(new[:200], labels[:200])
