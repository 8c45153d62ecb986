"""`phy_synthetic.noise`: the Gaussian generator and the segment streams."""

from __future__ import annotations

import numpy as np
from scipy import stats

from phy_synthetic import noise


def test_gaussian_distribution():
    x = noise.gaussian_rows(7, 0, 0, 4096, 256).astype(np.float64).ravel()  # 1M samples
    assert np.isfinite(x).all()
    assert abs(x.mean()) < 0.005 and abs(x.std() - 1) < 0.005
    assert abs(stats.skew(x)) < 0.01 and abs(stats.kurtosis(x)) < 0.02
    assert stats.kstest(x, "norm").pvalue > 1e-3
    # The tails are exact, beyond the ziggurat's base layer (R = 3.65) too.
    for threshold in (2.0, 3.0, 3.7, 4.0):
        expected = 2 * stats.norm.sf(threshold) * len(x)
        observed = np.sum(np.abs(x) > threshold)
        assert abs(observed - expected) < 5 * np.sqrt(expected) + 2


def test_streams_are_keyed_by_sample():
    seg = noise.SEGMENT_ROWS
    whole = noise.gaussian_rows(1, 0, -2, 3 * seg, 5)
    np.testing.assert_array_equal(whole[seg + 2:], noise.gaussian_rows(1, 0, seg, 2 * seg - 2, 5))
    # Any row range, across segment boundaries, gives the same rows.
    np.testing.assert_array_equal(whole[500:1800], noise.gaussian_rows(1, 0, 498, 1300, 5))
    other = noise.gaussian_rows(1, 1, -2, 3 * seg, 5)
    assert np.abs(np.corrcoef(whole.ravel(), other.ravel())[0, 1]) < 5 / np.sqrt(whole.size)
    shifted = noise.gaussian_rows(1, 0, -1, 3 * seg, 5)
    np.testing.assert_array_equal(whole[1:], shifted[:-1])
    # Consecutive rows are independent (no shifted copies of one sequence).
    assert np.abs(np.corrcoef(whole[2:].ravel(), shifted[:-2].ravel())[0, 1]) < 0.05


def test_render_matches_a_direct_computation():
    """The fused kernel equals gains * fir(white) + sources @ mixing + spikes, rounded."""
    positions = np.c_[np.zeros(6), 20.0 * np.arange(6)]
    n_rows = 5000
    model = noise.NoiseModel(positions, 30000.0, 4, 10.0, 40.0, 0.195)
    footprints = np.zeros((1, 10, 2), np.float32)
    footprints[0, :, 0] = -np.arange(10) * 30
    footprints[0, :, 1] = 200.0
    channels = np.array([[2, 5]])
    starts = np.array([-5, 100, 4995])  # straddling the start, inside, straddling the end
    spikes = (starts, np.zeros(3, np.int64), np.array([1.0, 0.5, 2.0], np.float32),
              footprints, channels, np.array([2]))
    out = np.empty((n_rows, 6), np.int16)
    model.render(out, 0, spikes, 0.195)

    white = noise.gaussian_rows(4, noise.STREAM_WHITE, -2, n_rows + 2, 6).astype(float)
    fir = 0.25 * white[:-2] + 0.5 * white[1:-1] + 0.25 * white[2:]
    fresh = noise.NoiseModel(positions, 30000.0, 4, 10.0, 40.0, 0.195)
    expected = model.gains * fir + fresh.sources(0, n_rows).astype(float) @ model.mixing
    for start, scale in zip(starts, [1.0, 0.5, 2.0]):
        for t in range(10):
            if 0 <= start + t < n_rows:
                expected[start + t, [2, 5]] += scale * footprints[0, t]
    assert np.abs(out * 0.195 - expected).max() < 0.195 / 2 + 1e-3


def test_render_rounds_and_clips():
    positions = np.c_[np.zeros(2), [0.0, 20.0]]
    model = noise.NoiseModel(positions, 30000.0, 0, 0.0, 0.0, 0.5)
    model.gains[:] = 0
    model.mixing[:] = 0
    footprints = np.array([[[0.3, -0.3], [0.8, -0.8], [1e9, -1e9], [2.0, 0.0]]], np.float32)
    spikes = (np.array([0]), np.array([0]), np.ones(1, np.float32), footprints,
              np.array([[0, 1]]), np.array([2]))
    out = np.empty((5, 2), np.int16)
    clipped = model.render(out, 0, spikes, 0.5)
    np.testing.assert_array_equal(out, [[1, -1], [2, -2], [32767, -32768], [4, 0], [0, 0]])
    assert clipped == 2
