"""A dataset written byte-for-byte the way klusta wrote it (plain h5py), read by KwikModel.

klusta's conventions reproduced here: string attributes as one-element
fixed-length byte-string arrays, lists of strings as byte-string arrays,
None as '', booleans as ints; ``channel_order``/``adjacency_graph`` int32;
``position`` float32; spikes uint64/uint8/int32; clusters int32; a colour in
``application_data/klustaviewa`` of every cluster and cluster group; raw data
given by a relative ``dat_path``; 32 channels in the .dat, 8 in the probe.
Also: a ``.raw.kwd`` variant, and a cluster whose group was saved as its name
(an old klusta bug the reference reader tolerates).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt

from phy_core.model import check_model
from phy_kwik.model import KwikModel

SR = 20000.0
N_TOTAL_CHANNELS = 32
CHANNEL_ORDER = [7, 3, 5, 1, 0, 2, 4, 6]
N_SAMPLES = 6000


def _s(text):
    return np.array([text.encode()], dtype="S")


def _root(f):
    f.attrs["kwik_version"] = 2
    f.attrs["name"] = _s("klusta_exp")
    f.attrs["creator_version"] = _s("klusta 3.0.16")


def write_klusta_dataset(folder, raw="dat"):
    rng = np.random.default_rng(42)
    traces = (rng.standard_normal((N_SAMPLES, N_TOTAL_CHANNELS)) * 200).astype(np.int16)
    n = 40
    samples = np.sort(rng.choice(np.arange(3, N_SAMPLES - 3), n, replace=False)).astype(
        np.uint64)
    nc, nfpc = len(CHANNEL_ORDER), 3
    features = rng.standard_normal((n, nc * nfpc)).astype(np.float32)
    masks = rng.random((n, nc)).astype(np.float32)
    clusters = rng.integers(2, 9, n).astype(np.int32)

    with h5py.File(folder / "klusta_exp.kwik", "w") as f:
        _root(f)
        sd = f.create_group("application_data/spikedetekt")
        params = dict(filter_low=500.0, filter_high_factor=0.95 * 0.5, filter_butter_order=3,
                      extract_s_before=16, extract_s_after=16, n_features_per_channel=3,
                      sample_rate=SR, n_channels=N_TOTAL_CHANNELS, voltage_gain=10.0,
                      threshold_strong_std_factor=4.5, chunk_size_seconds=1,
                      use_single_threshold=1, pca_n_waveforms_max=10000)
        for key, value in params.items():
            sd.attrs[key] = value
        sd.attrs["dtype"] = _s("int16")
        sd.attrs["prb_file"] = _s("1x32_buzsaki.prb")
        sd.attrs["experiment_name"] = _s("klusta_exp")
        sd.attrs["detect_spikes"] = _s("negative")
        sd.attrs["raw_data_files"] = np.array([b"klusta_exp.dat"], dtype="S")
        sd.attrs["num_cpus"] = _s("")  # None in the PRM
        kk = f.create_group("application_data/klustakwik2")
        kk.attrs["max_iterations"] = 1000
        kk.attrs["always_split_bimodal"] = 0
        g = f.create_group("channel_groups/0")
        g.attrs["channel_order"] = np.array(CHANNEL_ORDER, dtype=np.int32)
        g.attrs["adjacency_graph"] = np.array([[7, 3], [3, 5], [5, 1]], dtype=np.int32)
        for i, ch in enumerate(CHANNEL_ORDER):
            c = g.create_group(f"channels/{ch}")
            c.attrs["name"] = _s(str(ch))
            c.attrs["position"] = np.array([0, 10 * i], dtype=np.float32)
        g.create_dataset("spikes/time_samples", data=samples)
        g.create_dataset("spikes/time_fractional", data=np.zeros(n, dtype=np.uint8))
        g.create_dataset("spikes/recording", data=np.zeros(n, dtype=np.int32))
        for name, sc in (("main", clusters), ("original", clusters.copy())):
            g.create_dataset(f"spikes/clusters/{name}", data=sc)
            for cluster in np.unique(sc):
                cl = g.create_group(f"clusters/{name}/{cluster}")
                cl.attrs["cluster_group"] = 3 if cluster != 4 else 1
                cl.create_group("application_data/klustaviewa").attrs["color"] = 5
            for gid, gname in ((0, "Noise"), (1, "MUA"), (2, "Good"), (3, "Unsorted")):
                cg = g.create_group(f"cluster_groups/{name}/{gid}")
                cg.attrs["name"] = _s(gname)
                cg.create_group("application_data/klustaviewa").attrs["color"] = 2
        # The old bug: a group saved as its name.
        g[f"clusters/main/{clusters[0]}"].attrs["cluster_group"] = _s("Good")
        rec = f.create_group("recordings/0")
        rec.attrs["name"] = _s("recording_0")
        rec.attrs["start_sample"] = 0
        rec.attrs["sample_rate"] = SR
        rec.attrs["start_time"] = 0.0
        raw_group = rec.create_group("raw")
        if raw == "dat":
            raw_group.attrs["dat_path"] = _s("klusta_exp.dat")
        elif raw == "kwd":
            raw_group.attrs["hdf5_path"] = _s("{file}.raw.kwd/recordings/0")
    with h5py.File(folder / "klusta_exp.kwx", "w") as f:
        _root(f)
        fm = np.empty((n, nc * nfpc, 2), dtype=np.float32)
        fm[..., 0] = features
        fm[..., 1] = np.repeat(masks, nfpc, axis=1)
        f.create_dataset("channel_groups/0/features_masks", data=fm)
    if raw == "dat":
        traces.tofile(folder / "klusta_exp.dat")
    elif raw in ("kwd", "kwd-fallback"):
        with h5py.File(folder / "klusta_exp.raw.kwd", "w") as f:
            f.create_dataset("recordings/0/data", data=traces)
    return dict(traces=traces, samples=samples, features=features, masks=masks,
                clusters=clusters)


def expected_waveforms(traces, samples, before, after):
    """Independent computation: window with margin, zero padding, sosfiltfilt, crop."""
    sos = butter(3, [500.0, 0.475 * SR], btype="bandpass", fs=SR, output="sos")
    margin = max(9, int(np.ceil(2 * SR / 500.0)))
    data = traces[:, CHANNEL_ORDER].astype(np.float64)
    padded = np.concatenate([np.zeros((before + margin, data.shape[1])), data,
                             np.zeros((after + margin, data.shape[1]))])
    out = []
    for t in samples.astype(np.int64):
        window = padded[t:t + before + after + 2 * margin]
        out.append(sosfiltfilt(sos, window, axis=0)[margin:margin + before + after])
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("raw", ["dat", "kwd", "kwd-fallback"])
def test_klusta_dataset_opens(tmp_path, raw):
    truth = write_klusta_dataset(tmp_path, raw)
    model = KwikModel(tmp_path / "klusta_exp.kwik")
    assert check_model(model) == []
    assert model.sample_rate == SR and model.n_channels == 8
    np.testing.assert_array_equal(model.channel_order, CHANNEL_ORDER)
    np.testing.assert_array_equal(model.channels, sorted(CHANNEL_ORDER))
    np.testing.assert_array_equal(model.spike_samples, truth["samples"].astype(np.int64))
    np.testing.assert_array_equal(model.features[:], truth["features"])
    np.testing.assert_array_equal(model.masks[:], truth["masks"])
    np.testing.assert_array_equal(model.spike_clusters, truth["clusters"])
    groups = model.cluster_groups
    assert groups[int(truth["clusters"][0])] == 2  # saved as the name 'Good'
    if 4 in groups and truth["clusters"][0] != 4:
        assert groups[4] == 1
    assert model.metadata["dtype"] == "int16" and model.metadata["extract_s_before"] == 16
    assert model.metadata["num_cpus"] == ""
    assert model.kk2_metadata["max_iterations"] == 1000
    np.testing.assert_array_equal(model.traces[:], truth["traces"][:, CHANNEL_ORDER])
    np.testing.assert_array_equal(model.traces[100:105, 2], truth["traces"][100:105, 5])
    assert model.duration == pytest.approx(N_SAMPLES / SR)
    assert model.clusterings == ["main", "original"]
    assert "klusta_exp.kwik" in model.describe()
    # Waveforms: an independent scipy computation, for spikes anywhere (edges included).
    ids = np.array([0, 1, 17, len(truth["samples"]) - 1])
    expected = expected_waveforms(truth["traces"], truth["samples"][ids], 16, 16)
    np.testing.assert_allclose(model.waveforms[ids], expected, rtol=1e-5, atol=1e-3)
    assert model.waveforms.shape == (len(truth["samples"]), 32, 8)
    model.close()


def test_waveforms_close_to_whole_trace_filtering(tmp_path):
    """Far from the edges, the windowed filter matches filtering the whole recording."""
    truth = write_klusta_dataset(tmp_path, "dat")
    model = KwikModel(tmp_path / "klusta_exp.kwik")
    sos = butter(3, [500.0, 0.475 * SR], btype="bandpass", fs=SR, output="sos")
    full = sosfiltfilt(sos, truth["traces"][:, CHANNEL_ORDER].astype(np.float64), axis=0)
    samples = truth["samples"].astype(np.int64)
    ids = np.nonzero((samples > 200) & (samples < N_SAMPLES - 200))[0][:5]
    waves = model.waveforms[ids]
    for w, t in zip(waves, samples[ids], strict=True):
        ref = full[t - 16:t + 16]
        assert np.abs(w - ref).max() < 0.05 * np.abs(ref).max()


def test_klusta_dataset_save_keeps_klusta_layout(tmp_path):
    truth = write_klusta_dataset(tmp_path, "dat")
    model = KwikModel(tmp_path / "klusta_exp.kwik")
    model.save(truth["clusters"] + 100, {102: 2})
    with h5py.File(tmp_path / "klusta_exp.kwik", "r") as f:
        g = f["channel_groups/0"]
        assert g["spikes/clusters/main"].dtype == np.int32
        assert int(g["clusters/main/102"].attrs["cluster_group"]) == 2
        name = g["cluster_groups/main/2"].attrs["name"]
        assert name.dtype.kind == "S" and name[0] == b"Good"
    assert KwikModel(tmp_path / "klusta_exp.kwik").cluster_groups[102] == 2


def test_missing_raw_data_warns(tmp_path, caplog):
    write_klusta_dataset(tmp_path, "dat")
    (tmp_path / "klusta_exp.dat").unlink()
    model = KwikModel(tmp_path / "klusta_exp.kwik")
    assert model.traces is None and "no raw data" in caplog.text
    assert check_model(model) == []
    assert np.all(model.waveforms[:2] == 0)
