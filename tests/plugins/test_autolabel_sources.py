"""The quality metrics' reading of a sorting: the fast paths give the numbers of the plain ones.

`phy_autolabel.kernels` filters windows and reads the ``.kwx`` with numba; each
is checked here against scipy / numpy on the same data, to the last bit where
the arithmetic is the same (the labels must not change with the speed-ups).
"""

from pathlib import Path

import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt

from phy_autolabel import sources
from phy_autolabel.kernels import WINDOW_BATCH, filtered_windows, sosfiltfilt_columns
from phy_autolabel.sources import (
    NoiseCache,
    SortingSource,
    _bandpass,
    _filtfilt_constants,
    recording_noise,
)
from phy_core.arrays import SpikeWindows
from phy_kwik.model import KwikModel

RATE = 30000.0


@pytest.fixture(scope="module")
def kwik(tmp_path_factory):
    """A real detection of a short synthetic 32-channel recording."""
    from phy_detect.executors import SerialExecutor
    from phy_detect.runner import detect
    from phy_synthetic.recording import synthesize_recording

    folder = tmp_path_factory.mktemp("autolabel_sources")
    rec = synthesize_recording(folder / "rec", name="rec", probe="linear32", duration_s=3,
                               seed=3, n_units=6)
    kwik = detect(rec.prm_path, output_dir=folder / "out", executor=SerialExecutor())
    # Some clusters, so that the per-cluster sums mean something.
    with KwikModel(kwik) as model:
        clusters = (np.arange(model.n_spikes) * 7919) % 5 + 2
        model.save(clusters, {int(c): 3 for c in np.unique(clusters)})
    return kwik


def test_sosfiltfilt_columns_is_scipy_to_the_bit():
    sos, _ = _bandpass(RATE)
    zi, padding = _filtfilt_constants(RATE)
    x = np.random.default_rng(0).normal(size=(400, 37)) * 30
    np.testing.assert_array_equal(sosfiltfilt_columns(sos, zi, x, padding),
                                  sosfiltfilt(sos, x, axis=0))
    # Another filter (its padding from the same rule): the kernel is not tied to ours.
    other = butter(2, [300, 6000], btype="bandpass", fs=RATE, output="sos")
    from scipy.signal import sosfilt_zi

    np.testing.assert_array_equal(sosfiltfilt_columns(other, sosfilt_zi(other), x, 15),
                                  sosfiltfilt(other, x, axis=0))


@pytest.mark.parametrize("rate", [20000.0, 25000.0, 30000.0, 32000.0, 44100.0])
def test_bandpass_design_is_scipy_to_the_bit(rate):
    """The labels design their band-pass without scipy.signal (its import costs the sort
    ~0.4 s): the same sections and steady states as scipy's."""
    from scipy.signal import sosfilt_zi

    sos, margin = _bandpass(rate)
    expected = butter(3, [500.0, 0.475 * rate], btype="bandpass", fs=rate, output="sos")
    np.testing.assert_array_equal(sos, expected)
    zi, padding = _filtfilt_constants(rate)
    np.testing.assert_array_equal(zi, sosfilt_zi(expected))
    assert padding == 21 and margin == int(np.ceil(2 * rate / 500.0))


def test_filtered_windows_are_spike_windows_to_the_bit():
    rng = np.random.default_rng(1)
    traces = (rng.normal(size=(5000, 9)) * 200).astype(np.int16)
    # Spikes near both ends (zero-padded windows) and more than one batch of them.
    samples = np.sort(np.concatenate([[3, 40, 4990, 4999],
                                      rng.integers(0, 5000, 2 * WINDOW_BATCH + 5)]))
    columns = np.array([7, 2, 3])
    n_before, n_after = 30, 45
    sos, margin = _bandpass(RATE)
    zi, padding = _filtfilt_constants(RATE)
    fast = filtered_windows(traces, samples - n_before, columns, n_before + n_after, margin,
                            sos, zi, padding)
    plain = SpikeWindows(traces, samples, n_before, n_after, channels=columns,
                         filter=lambda x: sosfiltfilt(sos, x, axis=-2), margin=margin)
    expected = plain[np.arange(len(samples))]
    assert fast.dtype == np.float32 and fast.shape == expected.shape
    np.testing.assert_array_equal(fast, expected)


@pytest.mark.parametrize("block", [4096, 7])
def test_kwx_scan_matches_numpy(kwik, block, monkeypatch):
    # In blocks (7 spikes: many, the last one partial) or in one: the same numbers.
    monkeypatch.setattr(sources, "KWX_BLOCK_SPIKES", block)
    monkeypatch.setattr(sources, "KWX_GATHER_SPIKES", block)
    monkeypatch.setattr(sources, "KWX_RESIDENT_BYTES", 1 if block < 100 else 2 ** 40)
    with KwikModel(kwik) as model:
        source = SortingSource(model)
        assert block > model.n_spikes or block * 3 < model.n_spikes
        monkeypatch.setattr(sources, "KWX_BLOCK_SPIKES", 10 ** 9)
        whole = SortingSource(model)  # one block: the sums are the same to the last bit
        np.testing.assert_array_equal(source.mean_features, whole.mean_features)
        np.testing.assert_array_equal(source.mean_masks, whole.mean_masks)
        # Features gathered block by block (the pages released between blocks).
        ids = np.arange(0, model.n_spikes, 3)
        nfpc = source.n_features_per_channel
        columns = (np.array([4, 1])[:, None] * nfpc + np.arange(nfpc)).ravel()
        np.testing.assert_array_equal(source.features(ids, [4, 1]),
                                      np.asarray(model.features[:], np.float64)[ids][:, columns])
        assert isinstance(model.features_masks, np.ndarray)  # the numba path ran
        masks = np.asarray(model.masks[:], dtype=np.float64)
        features = np.asarray(model.features[:], dtype=np.float64)
        clusters = np.asarray(model.spike_clusters)
    for i, c in enumerate(source.cluster_ids):
        mine = clusters == c
        np.testing.assert_allclose(source.mean_masks[i], masks[mine].mean(axis=0),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(source.mean_features[i], features[mine].mean(axis=0),
                                   rtol=1e-9, atol=1e-9)
    for channel in range(masks.shape[1]):
        np.testing.assert_array_equal(source._channel_spikes[channel],
                                      np.nonzero(masks[:, channel] > 0)[0])
    # spikes_near: the union over channels.
    near = source.spikes_near([0, 5, 6])
    np.testing.assert_array_equal(near, np.nonzero((masks[:, [0, 5, 6]] > 0).any(axis=1))[0])


def test_features_of_several_requests_in_one_pass(kwik, monkeypatch):
    """`gather_features` reads the .kwx once for many requests (blocks of 7 spikes, the
    pages released after each): the numbers of the plain read, in each request's order."""
    monkeypatch.setattr(sources, "KWX_BLOCK_SPIKES", 7)
    monkeypatch.setattr(sources, "KWX_RESIDENT_BYTES", 1)
    with KwikModel(kwik) as model:
        source = SortingSource(model)
        assert source.gathers_in_one_pass
        features = np.asarray(model.features[:], np.float64)
        nfpc = source.n_features_per_channel
        n = model.n_spikes
        rng = np.random.default_rng(0)
        requests = [(np.arange(0, n, 3), [4, 1]), (np.zeros(0, np.int64), [2]),
                    (rng.permutation(n)[:40], [7, 8, 9]), (np.array([n - 1, 0, 5]), [0])]
        gathered = source.gather_features(requests)
        releases = source._kwx_pages.n_releases
    assert releases > 0
    for (ids, channels), out in zip(requests, gathered):
        columns = (np.asarray(channels)[:, None] * nfpc + np.arange(nfpc)).ravel()
        assert out.shape == (len(ids), len(columns)) and out.dtype == np.float64
        np.testing.assert_array_equal(out, features[ids][:, columns])


def test_waveforms_of_several_requests_in_one_pass(kwik, monkeypatch):
    """`gather_waveforms` reads the recording once for many requests (blocks of 500
    samples, the pages released after each): the numbers of `waveforms`, request by
    request, in each request's order."""
    monkeypatch.setattr(sources, "WAVEFORM_BLOCK_SAMPLES", 500)
    with KwikModel(kwik) as model:
        source = SortingSource(model)
        n = model.n_spikes
        rng = np.random.default_rng(1)
        requests = [(np.arange(0, n, 4), [4, 1]), (np.zeros(0, np.int64), [2]),
                    (rng.permutation(n)[:30], [7, 8, 9, 31]), (np.array([n - 1, 0]), [0])]
        gathered = source.gather_waveforms(requests)
        for (ids, channels), out in zip(requests, gathered):
            expected = source.waveforms(ids, channels)
            assert out.shape == expected.shape and out.dtype == np.float64
            np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("features", [True, False])
def test_metrics_read_together_are_those_of_each_cluster_alone(kwik, monkeypatch, features):
    """`compute_quality` reads the features and windows of several clusters together
    (two at a time here): each cluster's metrics as `cluster_quality` reads them alone,
    with the .kwx's features and without (waveforms' principal components)."""
    from phy_autolabel import quality

    monkeypatch.setattr(quality, "GATHER_CLUSTERS", 2)
    monkeypatch.setattr(sources, "WAVEFORM_BLOCK_SAMPLES", 5000)
    with KwikModel(kwik) as model:
        source = SortingSource(model)
        if not features:  # as a template directory: the metrics read waveforms
            source.n_features_per_channel = 0
        together = quality.compute_quality(source)
        alone = {int(c): quality.cluster_quality(source, int(c)) for c in source.cluster_ids}
    assert list(together) == list(alone) and len(alone) >= 3
    assert all(np.isfinite(q.snr) for q in alone.values())
    np.testing.assert_equal({c: q.as_dict() for c, q in together.items()},
                            {c: q.as_dict() for c, q in alone.items()})


def test_noise_of_the_whole_recording_fills_the_cache(kwik, monkeypatch):
    """`phy spikesort` estimates the noise of every channel from the PRM file (in a worker,
    during the masked EM): the labels then find the numbers they would have computed."""
    prm = Path(kwik).parent.parent / "rec" / "rec.prm"  # the fixture's recording
    with KwikModel(kwik) as model:
        every = SortingSource(model).noise_std()
        recording, file_columns, values = recording_noise(prm)
        assert len(values) == len(file_columns) >= model.n_channels
        cache = NoiseCache()
        cache.put(recording, file_columns, values)

        def no_estimate(self, channels):
            raise AssertionError(f"channels {channels} estimated again")

        monkeypatch.setattr(SortingSource, "_estimate_noise", no_estimate)
        np.testing.assert_array_equal(SortingSource(model, noise_cache=cache).noise_std(),
                                      every)


def test_noise_of_some_channels_and_shared_between_sortings(kwik, monkeypatch):
    with KwikModel(kwik) as model:
        every = SortingSource(model).noise_std()
        some = SortingSource(model).noise_std([4, 1, 4])
        np.testing.assert_array_equal(some, every[[4, 1, 4]])
        assert np.all(every > 0)

        cache = NoiseCache()
        first = SortingSource(model, noise_cache=cache)
        np.testing.assert_array_equal(first.noise_std([3, 8]), every[[3, 8]])
        # A second sorting of the same recording estimates nothing already known...
        second = SortingSource(model, noise_cache=cache)

        def no_estimate(self, channels):
            raise AssertionError(f"channels {channels} estimated again")

        monkeypatch.setattr(SortingSource, "_estimate_noise", no_estimate)
        np.testing.assert_array_equal(second.noise_std([8, 3]), every[[8, 3]])
        monkeypatch.undo()
        # ... and only what is new otherwise.
        asked = []
        estimate = SortingSource._estimate_noise

        def counting(self, channels):
            asked.append(list(channels))
            return estimate(self, channels)

        monkeypatch.setattr(SortingSource, "_estimate_noise", counting)
        np.testing.assert_array_equal(second.noise_std([3, 9]), every[[3, 9]])
        assert asked == [[9]]


def test_waveforms_match_spike_windows(kwik):
    with KwikModel(kwik) as model:
        source = SortingSource(model)
        ids = np.arange(0, model.n_spikes, 3)
        channels = [5, 4, 6]
        sos, margin = _bandpass(source.sample_rate)
        plain = SpikeWindows(model.traces, source.spike_samples, source.n_before,
                             source.n_after, channels=channels,
                             filter=lambda x: sosfiltfilt(sos, x, axis=-2), margin=margin)
        np.testing.assert_array_equal(source.waveforms(ids, channels),
                                      np.asarray(plain[ids], dtype=np.float64))


def _mapped_kb(array) -> int:
    """Resident kB of the mapping holding `array`'s data (Linux /proc/self/smaps)."""
    address = array.ctypes.data
    rss, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()[0]
        if "-" in first and ":" not in first:
            lo, hi = (int(x, 16) for x in first.split("-"))
            inside = lo <= address < hi
        elif inside and first == "Rss:":
            rss = int(line.split()[1])
    return rss


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_waveforms_leave_no_pages_of_the_recording_resident(kwik):
    """Reading every cluster's waveforms touches the whole recording; its pages are
    released after each read, so the resident memory does not grow with the recording."""
    with KwikModel(kwik) as model:
        source = SortingSource(model)
        traces = getattr(model.traces, "array", model.traces)  # the group's file columns
        assert isinstance(traces, np.memmap)
        np.asarray(traces[:]).sum()  # every page mapped
        assert _mapped_kb(traces) > 0.8 * traces.nbytes / 1024
        spikes = np.arange(model.n_spikes)
        windows = source.waveforms(spikes, np.arange(32))
        assert windows.shape[0] == model.n_spikes and np.isfinite(windows).all()
        assert _mapped_kb(traces) < 0.05 * traces.nbytes / 1024
        source.noise_std()
        assert _mapped_kb(traces) < 0.05 * traces.nbytes / 1024
