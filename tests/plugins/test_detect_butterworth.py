"""The numpy Butterworth band-pass design against scipy.signal's."""

import itertools

import numpy as np
import pytest
from scipy import signal

from phy_detect import butterworth


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 8])
def test_sections_equal_scipy_butter(order):
    # Rates and cut-offs of real recordings, band edges near 0 and near Nyquist: the same
    # sections, in the same order, to float64 rounding (so far bit for bit).
    for rate, low, high_factor in itertools.product([20000.0, 25000.0, 30000.0, 32556.0],
                                                    [100.0, 300.0, 500.0, 1000.0],
                                                    [0.2, 0.4, 0.475, 0.49]):
        expected = signal.butter(order, (low, high_factor * rate), btype="bandpass",
                                 fs=rate, output="sos")
        sos = butterworth.butter(order, (low, high_factor * rate), btype="bandpass",
                                 fs=rate, output="sos")
        np.testing.assert_allclose(sos, expected, rtol=0, atol=1e-13 * np.abs(expected).max())
        zi = butterworth.sosfilt_zi(sos)
        np.testing.assert_allclose(zi, signal.sosfilt_zi(sos), rtol=1e-12,
                                   atol=1e-14 * np.abs(zi).max())


def test_impulse_and_frequency_responses_equal_scipy():
    sos = signal.butter(3, (500.0, 14250.0), btype="bandpass", fs=30000.0, output="sos")
    impulse = np.zeros(2000)
    impulse[0] = 1.0
    np.testing.assert_allclose(butterworth.sosfilt(sos, impulse), signal.sosfilt(sos, impulse),
                               rtol=0, atol=1e-15)
    w, h = butterworth.sosfreqz(sos, worN=512)
    w_ref, h_ref = signal.sosfreqz(sos, worN=512)
    np.testing.assert_allclose(w, w_ref, rtol=1e-15)
    np.testing.assert_allclose(h, h_ref, rtol=0, atol=1e-12)


def test_only_band_pass_designs():
    with pytest.raises(ValueError, match="band-pass"):
        butterworth.butter(3, 500.0, btype="highpass", fs=30000.0)
    with pytest.raises(ValueError, match="low < high"):
        butterworth.butter(3, (500.0, 16000.0), fs=30000.0)
