"""Splitting components at tall peaks, on planted spikes (the brute-force reference of the
whole rule is in test_detect_floodfill.py)."""

import numpy as np

from phy_detect.floodfill import FloodFillDetector
from phy_detect.waveform import WaveformExtractor

THRESHOLDS = {"weak": 1.0, "strong": 4.0}  # normalised value n = (x - 1) / 3


def _planted(amp_a, amp_b, n_c=12):
    """Spike A on channel 3 at sample 30, spike B 4 channels and 2 samples away (Gaussian in
    time and space, on a line of channels): their footprints overlap, so the flood fill
    makes one component of them, and B rises a little above the saddle between them."""
    n_s = 80
    t, c = np.meshgrid(np.arange(n_s), np.arange(n_c), indexing="ij")
    data_t = np.zeros((n_s, n_c))
    for (t0, c0), a in zip([(30.0, 3.0), (32.0, 7.0)], (amp_a, amp_b), strict=True):
        data_t += a * np.exp(-0.5 * ((t - t0) / 2.0) ** 2 - 0.5 * ((c - c0) / 1.5) ** 2)
    adjacency = {i: [i + 1] for i in range(n_c - 1)}
    return data_t.astype(np.float32), adjacency


def _normalised(x):
    return (x - THRESHOLDS["weak"]) / (THRESHOLDS["strong"] - THRESHOLDS["weak"])


def _parts(data_t, adjacency, **kwargs):
    det = FloodFillDetector(adjacency, 1, thresholds=THRESHOLDS, **kwargs)
    return det, det(data_t > 1.0, data_t > 4.0, data_t)


def test_tall_peaks_split_at_a_shallow_dip():
    data_t, adjacency = _planted(12.0, 8.0)
    # The planted geometry: B's peak is tall (n >= 1.3), and the saddle on channel 5 (the
    # lowest channel maximum between the peaks) leaves it a rise of ~0.3, under 1.
    peak_b = _normalised(data_t[:, 7].max())
    saddle = _normalised(data_t[:, 3:8].max(axis=0).min())
    assert peak_b > 1.3 and 0.3 <= peak_b - saddle < 0.5
    _, parts = _parts(data_t, adjacency, split_tall_peak=None)
    assert len(parts) == 1  # prominence 1 alone: one spike
    det, parts = _parts(data_t, adjacency)  # the defaults: tall 1.3, rise 0.3
    assert len(parts) == 2
    assert sum(map(len, parts)) == int((data_t > 1.0).sum())  # a partition of the component
    assert abs(np.median(parts[0][:, 1]) - 3) <= 1 and abs(np.median(parts[1][:, 1]) - 7) <= 1
    extracted = WaveformExtractor(10, 10, thresholds=THRESHOLDS).extract_all(
        det.detect_flat(data_t > 1.0, data_t > 4.0, data_t), -data_t, data_t)
    np.testing.assert_allclose(np.sort(extracted.spike_samples), [30.0, 32.0], atol=0.2)
    # A tall rise requirement above B's rise keeps one spike.
    assert len(_parts(data_t, adjacency, split_tall_prominence=0.6)[1]) == 1


def test_strong_but_not_tall_peaks_need_the_full_prominence():
    data_t, adjacency = _planted(5.5, 4.7)
    peak_b = _normalised(data_t[:, 7].max())
    saddle = _normalised(data_t[:, 3:8].max(axis=0).min())
    assert 1.0 < peak_b < 1.3 and 0.3 <= peak_b - saddle < 1.0  # strong, not tall
    assert len(_parts(data_t, adjacency)[1]) == 1
    # Lower the bar of tallness under B's peak: it splits off.
    assert len(_parts(data_t, adjacency, split_tall_peak=1.2)[1]) == 2
