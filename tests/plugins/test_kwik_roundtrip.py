"""KwikCreator -> KwikModel round trips, saving, clustering management, the CLI."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest

from phy_core.model import check_model
from phy_kwik.creator import KwikCreator, create_kwik
from phy_kwik.errors import KwikError
from phy_kwik.model import KwikModel

N_SPIKES, N_CHANNELS, N_FEATURES = 120, 4, 3
PROBE = {
    0: {"channels": [0, 1, 2, 3], "graph": [(0, 1), (1, 2), (2, 3)],
        "geometry": {0: (0.0, 0.0), 1: (0.0, 20.0), 2: (0.0, 40.0), 3: (0.0, 60.0)}},
    1: {"channels": [5, 4], "graph": [(4, 5)], "geometry": {4: (100.0, 0.0), 5: (100.0, 20.0)}},
}


def _arrays(seed=0, n=N_SPIKES, n_channels=N_CHANNELS):
    rng = np.random.default_rng(seed)
    samples = np.sort(rng.integers(100, 50_000, n)).astype(np.float64)
    features = rng.standard_normal((n, n_channels * N_FEATURES)).astype(np.float32)
    masks = rng.random((n, n_channels)).astype(np.float32)
    clusters = rng.integers(0, 6, n)
    return samples, features, masks, clusters


def _make(tmp_path, chunked=False, seed=0):
    samples, features, masks, clusters = _arrays(seed)
    creator = KwikCreator(tmp_path / "data")
    creator.create_empty()
    creator.set_probe(PROBE)
    creator.add_recording(0, sample_rate=20000.0)
    creator.set_metadata("/application_data/spikedetekt", sample_rate=20000.0,
                         n_features_per_channel=N_FEATURES)
    if chunked:
        bounds = [0, 7, 50, 51, N_SPIKES]
        fet = (features[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        msk = (masks[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        creator.add_spikes(0, [samples[:60], samples[60:]], features=fet, masks=msk,
                           n_channels=N_CHANNELS, n_features=N_FEATURES)
    else:
        creator.add_spikes(0, samples, features=features, masks=masks)
    creator.add_clustering(0, "main", clusters, cluster_groups={0: 0, 1: 2})
    creator.add_clustering(0, "original", clusters % 2)
    # A second channel group with a few spikes.
    creator.add_spikes(1, np.arange(5) * 10.0, features=np.ones((5, 6), np.float32),
                       masks=np.ones((5, 2), np.float32))
    creator.add_clustering(1, "main", np.zeros(5, dtype=np.int64))
    return tmp_path / "data.kwik", (samples, features, masks, clusters)


@pytest.mark.parametrize("chunked", [False, True])
def test_roundtrip(tmp_path, chunked):
    path, (samples, features, masks, clusters) = _make(tmp_path, chunked)
    with KwikModel(path) as model:
        assert check_model(model) == []
        assert model.n_spikes == N_SPIKES
        np.testing.assert_array_equal(model.spike_samples, samples.astype(np.int64))
        assert model.spike_samples.dtype == np.int64
        np.testing.assert_allclose(model.spike_times, samples / 20000.0)
        np.testing.assert_array_equal(model.features[:], features)
        np.testing.assert_array_equal(model.masks[:], masks)
        np.testing.assert_array_equal(model.features[[5, 2, 5]], features[[5, 2, 5]])
        np.testing.assert_array_equal(model.masks[3], masks[3])
        np.testing.assert_array_equal(model.spike_clusters, clusters)
        assert isinstance(model.features_masks, np.memmap)
        assert model.clusterings == ["main", "original"]
        assert model.cluster_groups == {c: {0: 0, 1: 2}.get(c, 3) for c in np.unique(clusters)}
        assert model.channel_groups == [0, 1]
        np.testing.assert_array_equal(model.channel_order, [0, 1, 2, 3])
        np.testing.assert_array_equal(model.channel_positions[:, 1], [0, 20, 40, 60])
        assert model.probe.n_channels == 4
        assert model.n_recordings == 1 and model.recordings == [0]
        assert model.traces is None and model.duration == pytest.approx(samples[-1] / 20000)
        assert model.waveforms[:2].shape == (2, 20, 4)
        spc = model.spikes_per_cluster
        for c, ids in spc.items():
            np.testing.assert_array_equal(ids, np.nonzero(clusters == c)[0])
        np.testing.assert_allclose(model.spike_train(1), samples[clusters == 1] / 20000)
        model.clustering = "original"
        np.testing.assert_array_equal(model.spike_clusters, clusters % 2)
        model.channel_group = 1
        assert model.n_spikes == 5 and model.n_channels == 2
        np.testing.assert_array_equal(model.channel_order, [5, 4])
        np.testing.assert_array_equal(model.channel_positions, [[100, 20], [100, 0]])
        assert check_model(model) == []


def test_fractional_samples(tmp_path):
    creator = KwikCreator(tmp_path / "f")
    creator.create_empty()
    creator.set_probe({0: {"channels": [0]}})
    creator.add_recording(0, sample_rate=1000.0)
    creator.add_recording(1, sample_rate=1000.0, start_sample=1000)
    creator.add_spikes(0, [10.5, 20.25, 5.0], spike_recordings=[0, 0, 1])
    model = KwikModel(tmp_path / "f.kwik")
    np.testing.assert_array_equal(model.spike_samples, [10, 20, 1005])
    frac = np.floor(np.array([0.5, 0.25, 0.0]) * 255) / 255
    np.testing.assert_allclose(model.spike_samples_fractional, [10, 20, 1005] + frac)
    np.testing.assert_array_equal(model.spike_recordings, [0, 0, 1])
    # No clustering yet: every spike in cluster 0; no .kwx features: zeros.
    np.testing.assert_array_equal(model.spike_clusters, [0, 0, 0])
    assert not model.has_kwx() and model.features[:].shape == (3, 3)
    assert check_model(model) == []
    model.save(np.array([1, 1, 2]), {2: 2})
    assert KwikModel(tmp_path / "f.kwik").cluster_groups == {1: 3, 2: 2}


def test_save_reopen_and_backup(tmp_path):
    path, (_, _, _, clusters) = _make(tmp_path)
    model = KwikModel(path)
    new = clusters + 10
    model.save(new, {10: 2, 11: 0}, labels={"comment": {10: "nice"}, "score": {11: 0.5}},
               clustering_metadata={"author": "me"})
    model.close()
    model = KwikModel(path)
    assert model.clustering_metadata == {"author": "me"}
    np.testing.assert_array_equal(model.spike_clusters, new)
    assert model.cluster_groups[10] == 2 and model.cluster_groups[11] == 0
    assert model.cluster_groups[12] == 3
    assert model.cluster_labels["comment"] == {10: "nice"}
    assert model.cluster_labels["score"] == {11: 0.5}
    assert "main_backup" in model.clusterings
    model.clustering = "main_backup"
    np.testing.assert_array_equal(model.spike_clusters, clusters)
    # Types on disk are klusta's.
    with h5py.File(path, "r") as f:
        assert f["/channel_groups/0/spikes/clusters/main"].dtype == np.int32
        assert not any(k.startswith("_tmp_") for k in f["/channel_groups/0/spikes/clusters"])


def test_save_bad_input(tmp_path):
    path, _ = _make(tmp_path)
    model = KwikModel(path)
    with pytest.raises(KwikError, match="120"):
        model.save(np.zeros(3, dtype=int), {})
    with pytest.raises(KwikError, match=">= 0"):
        model.save(-np.ones(N_SPIKES, dtype=int), {})
    with pytest.raises(KwikError, match="cluster group"):
        model.save(np.zeros(N_SPIKES, dtype=int), {0: "nonsense"})


def test_clustering_management(tmp_path):
    path, (_, _, _, clusters) = _make(tmp_path)
    model = KwikModel(path)
    model.add_clustering("mine", clusters * 2)
    model.copy_clustering("mine", "mine2")
    model.rename_clustering("mine2", "mine3")
    assert model.clusterings == ["main", "mine", "mine3", "original"]
    model.delete_clustering("mine")
    with pytest.raises(KwikError, match="current"):
        model.delete_clustering("main")
    with pytest.raises(KwikError, match="available"):
        model.delete_clustering("nope")
    with pytest.raises(KwikError, match="already exists"):
        model.add_clustering("main", clusters)
    model.clustering = "mine3"
    np.testing.assert_array_equal(model.spike_clusters, clusters * 2)
    model.add_cluster_group(7, "Weird")
    model.rename_cluster_group(7, "Odd")
    assert model.cluster_group_names[7] == "Odd"
    model.save(model.spike_clusters, {0: 7})
    reopened = KwikModel(path, clustering="mine3")
    assert reopened.cluster_groups[0] == 7 and reopened.cluster_group_names[7] == "Odd"
    reopened.delete_cluster_group(7)
    assert 7 not in KwikModel(path, clustering="mine3").cluster_group_names
    with pytest.raises(KwikError, match="fixed"):
        reopened.add_cluster_group(2, "Good")


def test_unknown_names(tmp_path):
    path, _ = _make(tmp_path)
    with pytest.raises(KwikError, match=r"available: \[0, 1\]"):
        KwikModel(path, channel_group=3)
    with pytest.raises(KwikError, match="available: \\['main', 'original'\\]"):
        KwikModel(path, clustering="foo")
    with pytest.raises(KwikError, match="no such file"):
        KwikModel(tmp_path / "missing.kwik")


def test_missing_kwx_warns(tmp_path, caplog):
    path, _ = _make(tmp_path)
    (tmp_path / "data.kwx").unlink()
    with caplog.at_level(logging.WARNING, logger="phy"):
        model = KwikModel(path)
    assert "features and masks are unavailable" in caplog.text
    assert not model.has_kwx()
    assert check_model(model) == []
    assert np.all(model.features[:4] == 0)


def test_chunk_mismatch(tmp_path):
    creator = KwikCreator(tmp_path / "c")
    creator.create_empty()
    with pytest.raises(KwikError, match="feature rows"):
        creator.add_spikes(0, np.arange(10.0), features=iter([np.zeros((4, 6))]),
                           masks=iter([np.zeros((4, 2))]), n_channels=2, n_features=3)
    with h5py.File(tmp_path / "c.kwx", "r") as f:
        assert "/channel_groups/0/features_masks" not in f


def test_describe_cli(tmp_path, capsys, phy_user_dir):
    from phy_core.cli import main

    path, _ = _make(tmp_path)
    assert main(["describe", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Spikes" in out and "120" in out and "main*" in out


def test_plugin_hook_ignores_other_files(tmp_path):
    import phy_kwik

    assert phy_kwik.phy_open_model(path=tmp_path / "x.dat", options={}) is None
    path, _ = _make(tmp_path)
    model = phy_kwik.phy_open_model(path=path, options={"clustering": "original"})
    assert model.clustering == "original"


def test_create_kwik_from_prm(tmp_path):
    traces = np.arange(300 * 4, dtype=np.int16).reshape(300, 4)
    traces.tofile(tmp_path / "rec.dat")
    (tmp_path / "rec.prb").write_text(
        "channel_groups = {0: {'channels': [0, 1, 2, 3], 'graph': [(0, 1)], "
        "'geometry': {0: (0, 0), 1: (0, 10), 2: (0, 20), 3: (0, 30)}}}\n")
    (tmp_path / "rec.prm").write_text(
        "experiment_name = 'rec'\nprb_file = 'rec.prb'\n"
        "traces = dict(raw_data_files=['rec.dat'], sample_rate=10000, n_channels=4, "
        "dtype='int16')\nspikedetekt = dict(extract_s_before=5)\n")
    path = create_kwik(tmp_path / "rec.prm")
    assert path == (tmp_path / "rec.kwik").resolve()
    with pytest.raises(KwikError, match="already exists"):
        create_kwik(tmp_path / "rec.prm")
    create_kwik(tmp_path / "rec.prm", overwrite=True)
    creator = KwikCreator(path)
    creator.add_spikes(0, [20.0, 100.0], features=np.zeros((2, 12)), masks=np.ones((2, 4)))
    model = KwikModel(path)
    np.testing.assert_array_equal(model.traces[:], traces)
    assert model.metadata["extract_s_before"] == 5 and model.sample_rate == 10000
    assert model.waveforms[0].shape == (15, 4)
    with h5py.File(path, "r") as f:
        assert f["/application_data/spikedetekt"].attrs["dtype"][0] == b"int16"
        assert f["/recordings/0/raw"].attrs["dat_path"][0].endswith(b"rec.dat")


def test_set_probe_from_mea(tmp_path):
    from phy_probes.builtin import load_probe

    probe = load_probe("linear32")
    creator = KwikCreator(tmp_path / "p")
    creator.create_empty()
    creator.set_probe(probe)
    creator.add_recording(0, sample_rate=30000.0)
    creator.add_spikes(0, [1.0, 2.0])
    model = KwikModel(tmp_path / "p.kwik")
    np.testing.assert_array_equal(model.channel_order, probe.channels)
    np.testing.assert_allclose(model.channel_positions, probe.positions)
    assert sorted(model.probe.graph) == sorted(probe.graph)
    with h5py.File(tmp_path / "p.kwik", "r") as f:
        g = f["/channel_groups/0"]
        assert g.attrs["channel_order"].dtype == np.int32
        assert g.attrs["adjacency_graph"].dtype == np.int32
        assert g.attrs["adjacency_graph"].shape == (len(probe.graph), 2)
        assert g["channels/0"].attrs["position"].dtype == np.float32
        assert g["channels/0"].attrs["name"][0] == b"0"


def test_chunked_kwx_is_read_lazily_through_h5py(tmp_path):
    path, (_, features, masks, _) = _make(tmp_path)
    with h5py.File(tmp_path / "data.kwx", "r+") as f:
        fm = f["/channel_groups/0/features_masks"][:]
        del f["/channel_groups/0/features_masks"]
        f.create_dataset("/channel_groups/0/features_masks", data=fm, chunks=(16, 12, 2),
                         compression="gzip")
    model = KwikModel(path)
    assert isinstance(model.features_masks, h5py.Dataset)
    np.testing.assert_array_equal(model.features[[9, 3, 3, 100]], features[[9, 3, 3, 100]])
    np.testing.assert_array_equal(model.masks[10:20], masks[10:20])
    assert check_model(model) == []


def test_two_dat_recordings(tmp_path, caplog):
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((400, 3)) * 100).astype(np.int16)
    b = (rng.standard_normal((300, 3)) * 100).astype(np.int16)
    a.tofile(tmp_path / "a.dat")
    b.tofile(tmp_path / "b.dat")
    (tmp_path / "two.prm").write_text(
        "experiment_name = 'two'\n"
        "traces = dict(raw_data_files=['a.dat', 'b.dat'], sample_rate=10000, n_channels=3, "
        "dtype='int16')\n")
    path = create_kwik(tmp_path / "two.prm", probe={0: {"channels": [2, 0]}})
    KwikCreator(path).add_spikes(0, [50.0, 120.0, 10.0], spike_recordings=[0, 0, 1])
    model = KwikModel(path)
    assert "disagree" not in caplog.text
    np.testing.assert_array_equal(model.spike_samples, [50, 120, 410])
    np.testing.assert_array_equal(model.traces[:], np.concatenate([a, b])[:, [2, 0]])
    assert model.waveforms.sos is not None
    # Unfiltered, the waveform of the spike in b.dat is exactly the samples around 10 of b.
    KwikCreator(path).set_metadata("/application_data/spikedetekt", waveform_filter=False)
    unfiltered = KwikModel(path)
    assert unfiltered.waveforms.sos is None
    before, after = model.metadata["extract_s_before"], model.metadata["extract_s_after"]
    np.testing.assert_array_equal(unfiltered.waveforms[2],
                                  b[10 - before:10 + after][:, [2, 0]])


def test_interleaved_features_masks_equal_the_separate_ones(tmp_path):
    # `features_masks` (the .kwx layout, as the detection runner writes it) and
    # `features` + `masks` give the same dataset; bad chunks are refused and leave no dataset.
    rng = np.random.default_rng(1)
    n, n_channels, n_pcs = 50, 4, 3
    features = rng.normal(size=(n, n_channels * n_pcs)).astype(np.float32)
    masks = rng.random((n, n_channels)).astype(np.float32)
    interleaved = np.stack([features, np.repeat(masks, n_pcs, axis=1)], axis=-1)
    paths = []
    for name, kwargs in [("a", dict(features=features, masks=masks)),
                         ("b", dict(features_masks=[interleaved[:20], interleaved[20:]]))]:
        creator = KwikCreator(tmp_path / name)
        creator.create_empty()
        creator.add_spikes(0, np.arange(n, dtype=float), n_channels=n_channels,
                           n_features=n_pcs, **kwargs)
        paths.append(tmp_path / f"{name}.kwx")
    with h5py.File(paths[0], "r") as a, h5py.File(paths[1], "r") as b:
        path = "/channel_groups/0/features_masks"
        np.testing.assert_array_equal(a[path][...], b[path][...])
    creator = KwikCreator(tmp_path / "c")
    creator.create_empty()
    with pytest.raises(KwikError, match="features_masks chunk"):
        creator.add_spikes(0, np.arange(n, dtype=float), features_masks=[interleaved[:, :6]],
                           n_channels=n_channels, n_features=n_pcs)
    with pytest.raises(KwikError, match="feature rows"):
        creator.add_spikes(1, np.arange(n, dtype=float), features_masks=interleaved[:10])
    with pytest.raises(KwikError, match="or features and masks"):
        creator.add_spikes(2, np.arange(n, dtype=float), features_masks=interleaved,
                           masks=masks)
    with h5py.File(tmp_path / "c.kwx", "r") as f:
        assert not any("features_masks" in f[f"/channel_groups/{g}"] for g in (0, 1)
                       if f"/channel_groups/{g}" in f)
