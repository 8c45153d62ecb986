"""WaveformLoader and SpikeLoader."""

import numpy as np
import pytest
from scipy import signal

from phy_detect.loader import LoaderError, SpikeLoader, WaveformLoader


def _traces(tmp_path, n_samples=1000, n_channels=6):
    rng = np.random.default_rng(0)
    arr = rng.integers(-500, 500, (n_samples, n_channels)).astype(np.int16)
    path = tmp_path / "traces.dat"
    arr.tofile(path)
    return np.memmap(path, dtype=np.int16, mode="r", shape=arr.shape), arr


def test_waveform_loader_equals_slice_of_filtered(tmp_path):
    traces, arr = _traces(tmp_path)
    b, a = signal.butter(3, 0.2, "high")
    margin = 40

    def filt(x):
        return signal.filtfilt(b, a, x, axis=0).astype(np.float32)

    loader = WaveformLoader(
        traces,
        n_samples_waveforms=(10, 14),
        filter=filt,
        filter_margin=margin,
        channels=[1, 3, 4],
        scale_factor=0.5,
        dc_offset=3.0,
    )
    assert loader.n_channels_waveforms == 3 and loader.channels.tolist() == [1, 3, 4]
    assert loader.traces is traces
    times = [100, 500, 777]
    out = loader[times]
    assert out.shape == (3, 24, 3) and out.dtype == np.float32
    for i, t in enumerate(times):
        raw = arr[t - 10 - margin : t + 14 + margin][:, [1, 3, 4]].astype(np.float32) - 3.0
        expected = 0.5 * filt(raw)[margin : margin + 24]
        np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=1e-3)


def test_waveform_loader_edges_zero_padded(tmp_path):
    traces, arr = _traces(tmp_path, n_samples=100)
    loader = WaveformLoader(traces, n_samples_waveforms=20)
    out = loader[[3, 95]]
    assert out.shape == (2, 20, 6)
    # [3 - 10, 3 + 10): 7 zero rows, then rows 0..12.
    np.testing.assert_array_equal(out[0, :7], 0)
    np.testing.assert_array_equal(out[0, 7:], arr[:13])
    # [85, 105): rows 85..99 then 5 zero rows.
    np.testing.assert_array_equal(out[1, :15], arr[85:])
    np.testing.assert_array_equal(out[1, 15:], 0)
    with pytest.raises(LoaderError, match="outside the traces"):
        loader[[100]]
    with pytest.raises(LoaderError, match="slices"):
        loader[0:3]


def test_waveform_loader_by_spike_ids(tmp_path):
    traces, arr = _traces(tmp_path)
    spike_samples = np.array([50, 120, 400, 800])
    loader = WaveformLoader(traces, 8, spike_samples=spike_samples)
    assert loader.shape == (4, 8, 6) and len(loader) == 4
    out = loader[1:3]
    np.testing.assert_array_equal(out[0], arr[116:124])
    np.testing.assert_array_equal(out[1], arr[396:404])
    np.testing.assert_array_equal(loader[[3]][0], arr[796:804])
    np.testing.assert_array_equal(loader[np.array([False, True, False, False])], out[:1])
    with pytest.raises(LoaderError, match="out of range"):
        loader[[4]]


def test_spike_loader_selection(tmp_path):
    traces, arr = _traces(tmp_path)
    spike_samples = np.array([30, 200, 450, 700, 900])
    wl = WaveformLoader(traces, (5, 7))
    sl = SpikeLoader(wl, spike_samples)
    assert sl.shape == (5, 12, 6) and sl.ndim == 3 and sl.dtype == np.float32
    out = sl[[0, 3]]
    np.testing.assert_array_equal(out[0], arr[25:37])
    np.testing.assert_array_equal(out[1], arr[695:707])
    np.testing.assert_array_equal(sl[::2], wl[spike_samples[::2]])
    np.testing.assert_array_equal(sl[-1], wl[[900]])
    with pytest.raises(LoaderError, match="out of range"):
        sl[[5]]
    with pytest.raises(LoaderError, match="integer ids"):
        sl[[0.5]]


def test_loader_parameter_errors(tmp_path):
    traces, _ = _traces(tmp_path)
    with pytest.raises(LoaderError, match="must be specified"):
        WaveformLoader(traces)
    with pytest.raises(LoaderError, match="out of range"):
        WaveformLoader(traces, 10, channels=[0, 6])
    with pytest.raises(LoaderError, match=r"\(n_samples, n_channels\)"):
        WaveformLoader(np.zeros(10), 10)
    with pytest.raises(LoaderError, match="changed the window shape"):
        WaveformLoader(traces, 10, filter=lambda x: x[1:])[[100]]
