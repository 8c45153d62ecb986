"""Matching detections to true spikes: ties go to the spike the detection saw better, then
to the larger one (the brute-force reference of the matching is in test_detect_recall.py)."""

import numpy as np
import pytest

from phy_detect.evaluation import detection_report, match_spikes


def test_equally_close_spikes_go_to_the_better_seen_one():
    # Two true spikes at the same sample (the ground truth is in whole samples), units on
    # channels 0 and 1; one detection, which saw channel 1 better than channel 0.
    masks = np.array([[0.3, 1.0]], dtype=np.float32)
    for order in ([0, 1], [1, 0]):  # whichever is listed first
        got = match_spikes([100.4], [100.0, 100.0], 12.0, true_channels=order,
                           detected_masks=masks)
        assert got.tolist() == [-1 if c == 0 else 0 for c in order]
    # Time comes first: a closer spike wins even if seen less.
    got = match_spikes([100.4], [100.0, 99.0], 12.0, true_channels=[0, 1],
                       detected_masks=masks)
    assert got.tolist() == [0, -1]
    # Without masks: the earlier-listed one, as before.
    assert match_spikes([100.4], [100.0, 100.0], 12.0).tolist() == [0, -1]


def test_report_credits_the_better_seen_unit():
    # Unit 0 (channel 0) and unit 1 (channel 1) fire at the same sample; the detection's
    # mask is 1 on channel 1: unit 1's spike is found. A second detection sees only unit 0.
    report = detection_report([100.2, 300.0], [100, 100, 300], [0, 1, 0], 30000.0,
                              detected_masks=np.array([[0.2, 1.0], [1.0, 0.0]]),
                              unit_channels=np.array([0, 1]))
    np.testing.assert_allclose(report.recall, [0.5, 1.0])
    assert report.matches.tolist() == [-1, 0, 1] and report.n_false == 0


def test_spikes_equally_close_and_seen_go_to_the_larger_one():
    # Two true spikes at the same sample, both seen at full strength (mask 1): without
    # amplitudes the first listed one is credited; with them, the larger, whatever the order.
    masks = np.array([[1.0, 1.0]], dtype=np.float32)
    for order, amplitudes in (([0, 1], [3.0, 9.0]), ([1, 0], [9.0, 3.0])):
        assert match_spikes([100.3], [100.0, 100.0], 12.0, order, masks).tolist() == [0, -1]
        got = match_spikes([100.3], [100.0, 100.0], 12.0, order, masks,
                           true_amplitudes=amplitudes)
        assert got.tolist() == [-1 if a < 5 else 0 for a in amplitudes]
    # Time, then the mask, come first: a closer, or better seen, smaller spike wins.
    assert match_spikes([100.3], [100.0, 99.0], 12.0, [0, 1], masks,
                        true_amplitudes=[3.0, 9.0]).tolist() == [0, -1]
    assert match_spikes([100.3], [100.0, 100.0], 12.0, [0, 1], np.array([[1.0, 0.5]]),
                        true_amplitudes=[3.0, 9.0]).tolist() == [0, -1]
    # The report passes them on: the larger unit's spike is found.
    report = detection_report([100.3], [100, 100], [0, 1], 30000.0, detected_masks=masks,
                              unit_channels=np.array([0, 1]), true_amplitudes=[3.0, 9.0])
    np.testing.assert_allclose(report.recall, [0.0, 1.0])
    with pytest.raises(ValueError, match="true amplitudes"):
        match_spikes([100.3], [100.0, 100.0], 12.0, true_amplitudes=[1.0])
