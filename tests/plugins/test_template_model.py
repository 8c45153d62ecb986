"""TemplateModel: a hand-made template directory read back through the protocol."""

import os

import numpy as np
import pytest

from phy_core.model import check_model
from phy_template import phy_open_model
from phy_template.model import TemplateModel
from phy_template.tsv import TemplateFormatError, read_cluster_tsv

# The layout written by the make_template_dir fixture (conftest.py), as expected values.
N_DAT, CHANNEL_MAP = 6, np.array([0, 2, 3, 5])
N_SAMPLES_DAT, N_SAMPLES_T, N_PCS = 200, 8, 2
SPIKES = np.array([2, 10, 30, 31, 50, 77, 100, 120, 150, 180, 196, 199])
TEMPLATES = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 1])
IND = np.array([[0, 1], [3, 2], [1, 3]])


@pytest.fixture
def tdir(tmp_path, make_template_dir):
    d = tmp_path / "ks"
    raw = make_template_dir(d)
    return d, raw


def test_properties(tdir):
    d, raw = tdir
    model = TemplateModel(d)
    assert check_model(model) == []
    assert model.n_spikes == 12 and model.n_channels == 4 and model.n_templates == 3
    assert model.n_features_per_channel == N_PCS and model.sample_rate == 1000.0
    np.testing.assert_array_equal(model.spike_samples, SPIKES)
    np.testing.assert_allclose(model.spike_times, SPIKES / 1000.0)
    np.testing.assert_array_equal(model.spike_templates, TEMPLATES)
    np.testing.assert_array_equal(model.channel_positions[:, 1], [0, 20, 40, 60])
    np.testing.assert_array_equal(model.traces[:], raw[:, CHANNEL_MAP])
    np.testing.assert_array_equal(model.traces[7], raw[7, CHANNEL_MAP])
    np.testing.assert_array_equal(model.traces[3:9, 1], raw[3:9, 2])
    assert model.cluster_groups == {0: 2, 2: 0}
    assert model.labels == {"KSLabel": {0: "good", 1: "mua"}, "ContamPct": {0: 1.5}}
    assert "templates         3" in model.describe()
    model.close()


def test_features_masks_against_loop(tdir):
    d, _ = tdir
    model = TemplateModel(d)
    pcs = np.load(d / "pc_features.npy")
    expected_f = np.zeros((12, 4 * N_PCS), dtype=np.float32)
    expected_m = np.zeros((12, 4), dtype=np.float32)
    for i in range(12):
        for loc, channel in enumerate(IND[TEMPLATES[i]]):
            expected_m[i, channel] = 1
            for p in range(N_PCS):
                expected_f[i, channel * N_PCS + p] = pcs[i, p, loc]
    np.testing.assert_array_equal(model.features[:], expected_f)
    np.testing.assert_array_equal(model.masks[:], expected_m)
    np.testing.assert_array_equal(model.features[[5, 1]], expected_f[[5, 1]])
    np.testing.assert_array_equal(model.features[3], expected_f[3])
    np.testing.assert_array_equal(model.masks[-1], expected_m[-1])
    assert model.features.shape == (12, 8) and model.masks.shape == (12, 4)


def test_waveforms_are_centred_windows(tdir):
    d, raw = tdir
    model = TemplateModel(d)
    assert model.waveforms.shape == (12, N_SAMPLES_T, 4)
    for i, t in enumerate(SPIKES):
        expected = np.zeros((N_SAMPLES_T, 4), dtype=np.float32)
        for s in range(N_SAMPLES_T):
            sample = t - N_SAMPLES_T // 2 + s
            if 0 <= sample < N_SAMPLES_DAT:
                expected[s] = raw[sample, CHANNEL_MAP]
        np.testing.assert_array_equal(model.waveforms[i], expected)


def test_waveforms_from_templates_without_raw_data(tmp_path, make_template_dir):
    d = tmp_path / "ks"
    make_template_dir(d, dat=False)
    wmi = np.arange(16, dtype=np.float32).reshape(4, 4) / 10
    np.save(d / "whitening_mat_inv.npy", wmi)
    model = TemplateModel(d)
    assert model.traces is None
    templates, amplitudes = np.load(d / "templates.npy"), np.load(d / "amplitudes.npy")
    expected = (templates[TEMPLATES[4]] @ wmi) * amplitudes[4]
    np.testing.assert_allclose(model.waveforms[4], expected, rtol=1e-5)
    assert check_model(model) == []


def test_spike_clusters_from_templates_not_written(tdir):
    d, _ = tdir
    model = TemplateModel(d)
    np.testing.assert_array_equal(model.spike_clusters, TEMPLATES)
    assert not (d / "spike_clusters.npy").exists()


def test_existing_spike_clusters(tmp_path, make_template_dir):
    d = tmp_path / "ks"
    make_template_dir(d, with_clusters=True)
    np.testing.assert_array_equal(TemplateModel(d).spike_clusters, TEMPLATES + 10)


def test_hook_recognises_dir_and_params(tdir, tmp_path):
    d, _ = tdir
    assert isinstance(phy_open_model(d, {}), TemplateModel)
    assert phy_open_model(d / "params.py", {}).path == d
    assert phy_open_model(tmp_path, {}) is None
    assert phy_open_model(d / "raw.dat", {}) is None


@pytest.mark.parametrize("name", ["spike_times.npy", "params.py"])
def test_missing_required_file(tdir, name):
    d, _ = tdir
    (d / name).unlink()
    with pytest.raises(TemplateFormatError, match=name):
        TemplateModel(d)


def test_missing_templates_and_clusters(tdir):
    d, _ = tdir
    (d / "spike_templates.npy").unlink()
    with pytest.raises(TemplateFormatError, match="spike_templates.npy"):
        TemplateModel(d)


def test_missing_optional_files(tdir):
    d, _ = tdir
    for name in ("amplitudes.npy", "templates.npy", "channel_map.npy", "channel_positions.npy",
                 "pc_features.npy", "pc_feature_ind.npy", "similar_templates.npy",
                 "cluster_group.tsv", "raw.dat"):
        (d / name).unlink()
    model = TemplateModel(d)
    assert check_model(model) == []
    assert model.n_channels == N_DAT and model.n_features_per_channel == 0
    assert model.traces is None and model.cluster_groups == {}
    np.testing.assert_array_equal(model.masks[:], np.ones((12, N_DAT)))


def test_pc_features_without_ind(tdir):
    d, _ = tdir
    (d / "pc_feature_ind.npy").unlink()
    with pytest.raises(TemplateFormatError, match="pc_feature_ind.npy"):
        TemplateModel(d)


@pytest.mark.parametrize("name, array, match", [
    ("amplitudes.npy", np.ones(11), "one per spike"),
    ("spike_templates.npy", np.array([0] * 11 + [3]), "template 3"),
    ("templates.npy", np.zeros((3, 8, 5), np.float32), "one column per channel"),
    ("channel_map.npy", np.array([0, 2, 3, 6]), "n_channels_dat"),
    ("channel_positions.npy", np.zeros((4, 3)), "expected"),
    ("pc_feature_ind.npy", np.array([[0, 1], [3, 2], [1, 4]]), "out of range"),
    ("pc_feature_ind.npy", np.array([[0, 0], [3, 2], [1, 3]]), "same channel twice"),
    ("pc_features.npy", np.zeros((12, 2, 3), np.float32), "pc_feature_ind"),
    ("similar_templates.npy", np.zeros((2, 2)), "templates x templates"),
    ("spike_times.npy", SPIKES[::-1].copy(), "sorted"),
    ("spike_times.npy", SPIKES - 5, "non-negative"),
    ("spike_times.npy", np.array(["a"] * 12), "dtype"),
])
def test_inconsistent_arrays(tdir, name, array, match):
    d, _ = tdir
    np.save(d / name, array)
    with pytest.raises(TemplateFormatError, match=match) as info:
        TemplateModel(d)
    assert name in str(info.value)


def test_dat_size_mismatch(tdir):
    d, _ = tdir
    with open(d / "raw.dat", "ab") as f:
        f.write(b"xyz")
    with pytest.raises(TemplateFormatError, match="raw.dat"):
        TemplateModel(d)


# -- cluster_*.tsv ---------------------------------------------------------------


def test_read_cluster_tsv(tmp_path):
    path = tmp_path / "cluster_x.tsv"
    path.write_text("cluster_id\ta\tb\n3\tx y\t2\n1\t\t0.5\n\n")
    assert read_cluster_tsv(path) == {"a": {3: "x y"}, "b": {3: 2, 1: 0.5}}


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("id\tgroup\n1\tgood\n", "cluster_id"),
    ("cluster_id\tgroup\n1\tgood\textra\n", "line 2"),
    ("cluster_id\tgroup\nx\tgood\n", "line 2.*not an integer"),
    ("cluster_id\tgroup\n1\tgood\n1\tmua\n", "line 3.*repeated"),
    ("cluster_id\tgroup\n-1\tgood\n", "negative"),
])
def test_malformed_tsv(tmp_path, text, match):
    path = tmp_path / "cluster_group.tsv"
    path.write_text(text)
    with pytest.raises(TemplateFormatError, match=match):
        read_cluster_tsv(path)


def test_unknown_group(tdir):
    d, _ = tdir
    (d / "cluster_group.tsv").write_text("cluster_id\tgroup\n0\tgreat\n")
    with pytest.raises(TemplateFormatError, match="great"):
        TemplateModel(d)


# -- save ------------------------------------------------------------------------


def test_save_and_reopen(tmp_path, make_template_dir):
    d = tmp_path / "ks"
    make_template_dir(d, with_clusters=True)
    original = (d / "spike_clusters.npy").read_bytes()
    model = TemplateModel(d)
    new = np.arange(12) % 4 + 20
    model.save(new, {20: 2, 21: 1, 22: 3}, labels={"comment": {20: "nice one"}})
    np.testing.assert_array_equal(model.spike_clusters, new)
    assert model.cluster_groups == {20: 2, 21: 1, 22: 3}
    assert (d / "spike_clusters.backup.npy").read_bytes() == original
    assert (d / "cluster_group.tsv").read_text() == \
        "cluster_id\tgroup\n20\tgood\n21\tmua\n22\tunsorted\n"
    reopened = TemplateModel(d)
    np.testing.assert_array_equal(reopened.spike_clusters, new)
    assert reopened.cluster_groups == {20: 2, 21: 1, 22: 3}
    assert reopened.labels["comment"] == {20: "nice one"}
    # A second save keeps the first backup (the state before phy ever saved).
    model.save(np.zeros(12, dtype=np.int64), {})
    assert (d / "spike_clusters.backup.npy").read_bytes() == original


def test_first_save_without_spike_clusters_makes_no_backup(tdir):
    d, _ = tdir
    model = TemplateModel(d)
    model.save(TEMPLATES + 1, {1: 2})
    assert not (d / "spike_clusters.backup.npy").exists()
    np.testing.assert_array_equal(np.load(d / "spike_clusters.npy"), TEMPLATES + 1)


def test_save_is_atomic(tmp_path, monkeypatch, make_template_dir):
    d = tmp_path / "ks"
    make_template_dir(d, with_clusters=True)
    (d / "spike_clusters.backup.npy").write_bytes((d / "spike_clusters.npy").read_bytes())
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    model = TemplateModel(d)

    def failing_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        model.save(np.zeros(12, dtype=np.int64), {0: 0}, labels={"note": {0: "x"}})
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in d.iterdir()}
    assert after == before  # same files (no temporary left), same contents
    np.testing.assert_array_equal(model.spike_clusters, TEMPLATES + 10)


@pytest.mark.parametrize("clusters, groups, labels, match", [
    (np.zeros(11, dtype=np.int64), {}, None, "expected \\(12,\\)"),
    (np.full(12, -1), {}, None, "non-negative"),
    (np.zeros(12, dtype=np.int64), {0: 7}, None, "group 7"),
    (np.zeros(12, dtype=np.int64), {}, {"bad/name": {}}, "label name"),
    (np.zeros(12, dtype=np.int64), {}, {"x": {0: "a\tb"}}, "tab"),
])
def test_save_rejects_bad_input(tdir, clusters, groups, labels, match):
    d, _ = tdir
    model = TemplateModel(d)
    with pytest.raises(TemplateFormatError, match=match):
        model.save(clusters, groups, labels)
    assert not (d / "spike_clusters.npy").exists()
