"""Waveform extractor: masks, centroid, sub-sample alignment, chunk edges."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.interpolate import interp1d

from phy_detect.floodfill import FloodFillDetector
from phy_detect.waveform import STAGES, ExtractionError, WaveformExtractor

WEAK, STRONG = 2.0, 5.0


def _gauss_spike(n_s, n_c, t0, amp=10.0, sigma=2.5, channels=None):
    """Negative Gaussian spikes at (float) time t0 on `channels` (amplitude per channel)."""
    data = np.zeros((n_s, n_c), dtype=np.float32)
    t = np.arange(n_s)
    for c, a in (channels or {0: 1.0}).items():
        data[:, c] -= amp * a * np.exp(-0.5 * ((t - t0) / sigma) ** 2)
    return data


def test_masks_hand_made():
    n_s, n_c = 60, 4
    data_t = np.zeros((n_s, n_c), dtype=np.float32)
    data_t[30, 0], data_t[31, 0] = 3.0, 6.0  # peak 6 > strong: mask 1
    data_t[30, 1] = 3.5  # (3.5 - 2) / 3 = 0.5
    data_t[40, 3] = 4.0  # not in the component: mask 0
    comp = np.array([[30, 0], [30, 1], [31, 0]])
    ext = WaveformExtractor(5, 5, thresholds={"weak": WEAK, "strong": STRONG})
    mask, _, _ = ext(comp, -data_t, data_t)
    np.testing.assert_allclose(mask, [1.0, 0.5, 0.0, 0.0], atol=1e-6)
    # Per-channel thresholds.
    ext.set_thresholds(weak=np.array([2.0, 1.0, 2.0, 2.0]), strong=np.array([8.0, 6.0, 5, 5]))
    mask, _, _ = ext(comp, -data_t, data_t)
    np.testing.assert_allclose(mask, [4 / 6, 2.5 / 5, 0, 0], atol=1e-6)
    res = ext.extract_all([comp], -data_t, data_t)
    np.testing.assert_allclose(res.masks[0], mask, atol=1e-6)


@pytest.mark.parametrize("power", [2.0, 0.0])
@pytest.mark.parametrize("fraction", [None, 0.0, 0.5, 0.7, 0.99])
def test_centroid_matches_numpy(fraction, power):
    """SpikeDetekt's centroid (None: every point weighted by the clipped normalised value
    ** power), or the peak centroid: the points above `fraction` of the component's top
    normalised value x (unclipped), weighted by their height above it ** power."""
    rng = np.random.default_rng(1)
    n_s, n_c = 200, 6
    data_t = rng.uniform(0, 8, (n_s, n_c)).astype(np.float32)
    comps = [
        np.array([[50, 1], [51, 1], [51, 2], [52, 3], [53, 2]]),
        np.array([[100, 0], [100, 5], [102, 4]]),
    ]
    weak = np.array([1.0, 2.0, 1.5, 2.0, 1.0, 3.0])
    strong = weak + np.array([4.0, 3.0, 5.0, 2.0, 6.0, 2.5])
    ext = WaveformExtractor(8, 12, weight_power=power, thresholds={"weak": weak, "strong": strong},
                            centroid_fraction=fraction)
    res = ext.extract_all(comps, -data_t, data_t)
    for i, comp in enumerate(comps):
        s, c = comp[:, 0], comp[:, 1]
        x = (data_t[s, c] - weak[c]) / (strong[c] - weak[c])
        if fraction is None:
            w = np.clip(x, 0, 1) ** power
        else:
            above = x - fraction * x.max()
            w = np.where(above > 0, np.abs(above) ** power, 0.0)
        expected = (w * s).sum() / w.sum()
        assert abs(res.spike_samples[i] - expected) < 1e-9
        _, s_aligned, _ = ext(comp, -data_t, data_t)
        assert abs(s_aligned - expected) < 1e-9


@pytest.mark.parametrize("t0", [100.0, 100.25, 100.37, 100.5, 100.81])
def test_alignment_recovers_subsample_offset(t0):
    n_s, n_c = 260, 3
    before, after = 10, 15
    ext = WaveformExtractor(before, after, 2, thresholds={"weak": WEAK, "strong": STRONG})
    channels = {0: 1.0, 1: 0.6, 2: 0.3}
    # Reference spike at an integer time, the same spike shifted by a fraction.
    ref = _gauss_spike(n_s, n_c, 200.0, channels=channels)
    data = ref + _gauss_spike(n_s, n_c, t0, channels=channels)
    data_t = -data
    det = FloodFillDetector({0: [1], 1: [2]}, join_size=1)
    comps = det(data_t > WEAK, data_t > STRONG)
    assert len(comps) == 2
    res = ext.extract_all(comps, data, data_t)
    times = res.spike_samples
    assert abs(times[0] - t0) < 0.1
    assert abs(times[1] - 200.0) < 0.1
    assert abs((times[1] - times[0]) - (200.0 - t0)) < 0.1
    # Both aligned waveforms are the same spike sampled on its own grid.
    w0, w1 = res.waveforms
    assert np.abs(w0 - w1).max() < 0.02 * 10
    # And that is the spike sampled at the recovered time: the trough at `before`.
    expected = _gauss_spike(before + after, n_c, before + (t0 - times[0]), channels=channels)
    assert np.abs(w0 - expected).max() < 0.03 * 10
    assert np.argmin(w0[:, 0]) == before


def test_peak_centroid_stays_on_the_trough_of_a_merged_component():
    """A tall spike (trough at 100.3) and, in the same component, the weak points of a
    weaker spike 6 samples later on far channels (chained to it at the weak threshold):
    SpikeDetekt's centroid, where every point weighs up to 1, moves towards the weak one;
    the peak centroid (points above half the peak) stays on the tall spike's trough."""
    n_s, n_c, t0 = 200, 8, 100.3
    data = _gauss_spike(n_s, n_c, t0, amp=20.0, channels={0: 1.0, 1: 0.7, 2: 0.3})
    data += _gauss_spike(n_s, n_c, t0 + 6, amp=4.5, channels={c: 1.0 for c in range(2, 8)})
    data_t = -data
    det = FloodFillDetector({c: [c + 1] for c in range(n_c - 1)}, join_size=1)
    comps = det(data_t > WEAK, data_t > STRONG)
    assert len(comps) == 1 and len(np.unique(comps[0][:, 1])) == n_c
    thresholds = {"weak": WEAK, "strong": STRONG}
    spikedetekt = WaveformExtractor(10, 10, thresholds=thresholds, centroid_fraction=None)
    peak = WaveformExtractor(10, 10, thresholds=thresholds)
    assert spikedetekt.extract_all(comps, data, data_t).spike_samples[0] > t0 + 1.0
    assert abs(peak.extract_all(comps, data, data_t).spike_samples[0] - t0) < 0.05
    # The same spike alone: the peak centroid is as precise as SpikeDetekt's.
    alone = _gauss_spike(n_s, n_c, t0, amp=20.0, channels={0: 1.0, 1: 0.7, 2: 0.3})
    comps = det(-alone > WEAK, -alone > STRONG)
    for ext in (spikedetekt, peak):
        assert abs(ext.extract_all(comps, alone, -alone).spike_samples[0] - t0) < 0.05


def test_align_close_to_scipy_cubic_spline():
    ext = WaveformExtractor(10, 10, thresholds={"weak": WEAK, "strong": STRONG})
    t = np.arange(23)
    window = np.stack(
        [-10 * np.exp(-0.5 * ((t - 11.3) / 2.5) ** 2), 5 * np.sin(t / 3.0)], axis=1
    ).astype(np.float32)
    s_aligned = 50.4
    out = ext.align(window, s_aligned)
    s = int(s_aligned)
    old = np.arange(s - 11, s + 12)
    new = np.arange(s - 10, s + 10) + (s_aligned - s)
    expected = interp1d(old, window, kind="cubic", axis=0)(new)
    assert out.shape == (20, 2)
    assert np.abs(out - expected).max() < 0.15
    # At a zero fraction, alignment is the identity on the window's interior.
    np.testing.assert_allclose(ext.align(window, 50.0), window[1:21], atol=1e-6)


def test_edge_components_deferred():
    n_s, n_c = 100, 2
    ext = WaveformExtractor(10, 10, thresholds={"weak": WEAK, "strong": STRONG})
    data = _gauss_spike(n_s, n_c, 5.0) + _gauss_spike(n_s, n_c, 50.0) + _gauss_spike(n_s, n_c, 93.0)
    data_t = -data
    comps = FloodFillDetector({0: [1]}, 1)(data_t > WEAK, data_t > STRONG)
    assert len(comps) == 3
    res = ext.extract_all(comps, data, data_t)
    assert res.deferred.tolist() == [0, 2]
    assert res.kept.tolist() == [1]
    assert res.waveforms.shape == (1, 20, 2) and res.masks.shape == (1, 2)
    assert abs(res.spike_samples[0] - 50.0) < 0.1
    # The single-component path pads with zeros instead of deferring.
    mask, s_aligned, waveform = ext(comps[0], data, data_t)
    assert waveform.shape == (20, 2) and abs(s_aligned - 5.0) < 0.1
    # Flat (points, offsets) input gives the same result.
    flat = FloodFillDetector({0: [1]}, 1).detect_flat(data_t > WEAK, data_t > STRONG)
    res2 = ext.extract_all(flat, data, data_t)
    np.testing.assert_array_equal(res2.waveforms, res.waveforms)


def test_extract_all_matches_per_component_path():
    rng = np.random.default_rng(3)
    n_s, n_c = 400, 8
    data = rng.normal(0, 1, (n_s, n_c)).astype(np.float32)
    for t0, c in [(60.3, 1), (150.7, 4), (151.2, 6), (300.5, 2)]:
        data += _gauss_spike(n_s, n_c, t0, channels={c: 1.0, min(c + 1, 7): 0.5})
    data_t = -data
    adjacency = {c: [c + 1] for c in range(n_c - 1)}
    comps = FloodFillDetector(adjacency, 1)(data_t > WEAK + 1, data_t > STRONG)
    ext = WaveformExtractor(10, 10, 2, thresholds={"weak": WEAK + 1, "strong": STRONG})
    res = ext.extract_all(comps, data, data_t)
    assert len(res.kept) == len(comps) >= 3  # the spikes at 150.7 and 151.2 join
    for row, i in enumerate(res.kept):
        mask, s_aligned, waveform = ext(comps[i], data, data_t)
        np.testing.assert_allclose(res.masks[row], mask, atol=1e-6)
        assert abs(res.spike_samples[row] - s_aligned) < 1e-9
        np.testing.assert_allclose(res.waveforms[row], waveform, atol=1e-5)


def test_extractor_errors():
    data = np.zeros((50, 2), np.float32)
    comp = [np.array([[20, 0]])]
    with pytest.raises(ExtractionError, match="must be set"):
        WaveformExtractor().extract_all(comp, data, data)
    with pytest.raises(ExtractionError, match="above"):
        WaveformExtractor(thresholds={"weak": 3, "strong": 2}).extract_all(comp, data, data)
    ext = WaveformExtractor(thresholds={"weak": 1, "strong": 2})
    with pytest.raises(ExtractionError, match="shape"):
        ext.set_thresholds(weak=np.ones(3))
        ext.extract_all(comp, data, data)
    ext = WaveformExtractor(thresholds={"weak": 1, "strong": 2})
    with pytest.raises(ExtractionError, match="out of the chunk"):
        ext.extract_all([np.array([[60, 0]])], data, data)
    with pytest.raises(ExtractionError, match="same"):
        ext.extract_all(comp, data, data[:10])
    with pytest.raises(ExtractionError, match="extract_before"):
        WaveformExtractor(extract_before=-1)
    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(ExtractionError, match=r"centroid_fraction must be a number in \["):
            WaveformExtractor(centroid_fraction=bad)


def test_extractor_stage_and_groups():
    (stage,) = STAGES
    assert (stage.name, stage.kind) == ("centroid", "extractor")
    ext = stage.factory(**{**stage.parameters, "channels_per_group": {0: [0, 1], 1: [2, 3]}})
    assert ext.n_samples_waveforms == 20
    assert ext.component_group(np.array([0.1, 0.0, 0.2, 0.9])) == 1
    assert ext.component_group(np.array([0.8, 0.0, 0.2, 0.1])) == 0


def _spikes_on_noise(rng, n_s, n_c, spikes, neighbour):
    """Unit noise with Gaussian spikes at (time, channel), `neighbour` of their height on
    the channel below; the negated traces, their components (a chain of channels) and an
    8 + 12 sample extractor."""
    data = rng.normal(0, 1, (n_s, n_c)).astype(np.float32)
    for t0, c in spikes:
        data += _gauss_spike(n_s, n_c, t0, channels={c: 1.0, max(c - 1, 0): neighbour})
    data_t = -data
    comps = FloodFillDetector({c: [c + 1] for c in range(n_c - 1)}, 1)(
        data_t > WEAK, data_t > STRONG)
    ext = WaveformExtractor(8, 12, 2, thresholds={"weak": WEAK, "strong": STRONG})
    return data, data_t, comps, ext


def test_masks_only_and_projection_without_stored_waveforms():
    # extract_all(waveforms=False) gives the same times and masks; aligning and projecting
    # each spike in cache (`align_project_kwx_rows`) gives the bits of projecting the
    # stored waveforms (`project_kwx_rows`), which match a float64 projection.
    from phy_detect.shared_rows import align_project_kwx_rows, project_kwx_rows

    rng = np.random.default_rng(5)
    n_c = 7
    data, data_t, comps, ext = _spikes_on_noise(
        rng, 500, n_c, [(5.0, 0), (80.3, 1), (200.7, 4), (330.2, 6), (496.0, 3)], 0.6)
    full = ext.extract_all(comps, data, data_t)
    light = ext.extract_all(comps, data, data_t, waveforms=False)
    assert light.waveforms is None and len(full.deferred) == 2  # the spikes at 5 and 496
    np.testing.assert_array_equal(light.spike_samples, full.spike_samples)
    np.testing.assert_array_equal(light.masks, full.masks)
    np.testing.assert_array_equal(light.kept, full.kept)
    pcs = rng.normal(size=(3, 20, n_c)).astype(np.float32)
    index = np.array([2, 0, 1], dtype=np.int64)  # rows in any order
    expected = np.empty((3, n_c * 3, 2), np.float32)
    project_kwx_rows(full.waveforms, index, pcs, full.masks[index], expected)
    got = np.full_like(expected, np.nan)
    align_project_kwx_rows(data, full.spike_samples, index, 8, 12, pcs, full.masks[index], got)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    features = np.einsum("nsc,fsc->ncf", full.waveforms[index].astype(np.float64), pcs)
    np.testing.assert_allclose(got[..., 0], features.reshape(3, -1), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got[..., 1], np.repeat(full.masks[index], 3, axis=1))


def test_pair_waveforms_are_the_pairs_of_extract_all():
    # The PCA excerpts send the unmasked (spike, channel) pairs' waveforms: taken one
    # channel at a time they are the bits of extract_all's waveforms on those channels,
    # and at a whole-sample time the window itself (an independent reference).
    rng = np.random.default_rng(7)
    data, data_t, comps, ext = _spikes_on_noise(
        rng, 400, 9, [(60.3, 0), (140.0, 2), (210.7, 5), (300.45, 8)], 0.7)
    full = ext.extract_all(comps, data, data_t)
    spikes, channels = np.nonzero(full.masks > 0)
    assert len(full.spike_samples) == 4 and len(np.unique(channels)) > 4
    got = ext.pair_waveforms(full.spike_samples[spikes], channels, data)
    np.testing.assert_array_equal(got.view(np.uint32),
                                  full.waveforms[spikes, :, channels].view(np.uint32))
    whole = ext.pair_waveforms(np.array([100.0, 50.0]), np.array([3, 0]), data)
    np.testing.assert_array_equal(whole, [data[92:112, 3], data[42:62, 0]])
    assert ext.pair_waveforms(np.zeros(0), np.zeros(0, np.int64), data).shape == (0, 20)
    with pytest.raises(ExtractionError, match="pair_waveforms"):
        ext.pair_waveforms(np.zeros(2), np.zeros(3, np.int64), data)


def test_extract_all_output_buffer():
    n_s, n_c = 100, 2
    ext = WaveformExtractor(10, 10, thresholds={"weak": WEAK, "strong": STRONG})
    data = _gauss_spike(n_s, n_c, 30.0) + _gauss_spike(n_s, n_c, 60.0)
    comps = FloodFillDetector({0: [1]}, 1)(-data > WEAK, -data > STRONG)
    expected = ext.extract_all(comps, data, -data).waveforms
    buf = np.full((5, 20, 2), np.nan, dtype=np.float32)
    res = ext.extract_all(comps, data, -data, out=buf)
    assert res.waveforms.base is buf
    np.testing.assert_array_equal(res.waveforms, expected)
    np.testing.assert_array_equal(buf[:2], expected)
    with pytest.raises(ExtractionError, match="output buffer"):
        ext.extract_all(comps, data, -data, out=np.zeros((1, 20, 2), np.float32))
    with pytest.raises(ExtractionError, match="output buffer"):
        ext.extract_all(comps, data, -data, out=np.zeros((5, 20, 2)))


@settings(max_examples=80, deadline=None)
@given(comps=st.lists(st.lists(st.lists(st.integers(-5, 70), min_size=0, max_size=3),
                               max_size=4), max_size=3))
def test_extract_all_bad_components_clean_error(comps):
    data = -_gauss_spike(60, 3, 30.0)
    ext = WaveformExtractor(5, 5, thresholds={"weak": WEAK, "strong": STRONG})
    try:
        arrays = [np.array(c, dtype=np.int64) for c in comps]
    except ValueError:  # ragged: not even an array
        return
    try:
        res = ext.extract_all(arrays, -data, data)
    except ExtractionError:
        return
    assert len(res.kept) + len(res.deferred) == len(arrays)
    assert np.all(res.masks >= 0) and np.all(res.masks <= 1)
