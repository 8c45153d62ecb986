"""Fixtures shared by the plugin tests."""

import numpy as np
import pytest

# The hand-made template directory written by `make_template_dir`. test_template_model.py
# keeps its own copy of these values as the expectations it checks the model against.
N_DAT, CHANNEL_MAP = 6, np.array([0, 2, 3, 5])
N_SAMPLES_DAT, N_SAMPLES_T, N_PCS = 200, 8, 2
SPIKES = np.array([2, 10, 30, 31, 50, 77, 100, 120, 150, 180, 196, 199])
TEMPLATES = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 1])
IND = np.array([[0, 1], [3, 2], [1, 3]])


def _make_template_dir(path, with_clusters=False, dat=True):
    rng = np.random.default_rng(0)
    path.mkdir(exist_ok=True)
    raw = rng.integers(-1000, 1000, (N_SAMPLES_DAT, N_DAT)).astype(np.int16)
    if dat:
        raw.tofile(path / "raw.dat")
    (path / "params.py").write_text(
        "dat_path = 'raw.dat'\nn_channels_dat = 6\ndtype = 'int16'\noffset = 0\n"
        "sample_rate = 1000.\nhp_filtered = False\n"
    )
    n = len(SPIKES)
    np.save(path / "spike_times.npy", SPIKES.astype(np.uint64)[:, None])  # MATLAB column
    np.save(path / "spike_templates.npy", TEMPLATES.astype(np.uint32))
    np.save(path / "amplitudes.npy", np.linspace(1, 2, n))
    np.save(path / "templates.npy", rng.normal(size=(3, N_SAMPLES_T, 4)).astype(np.float32))
    np.save(path / "channel_map.npy", CHANNEL_MAP.astype(np.int32))
    np.save(path / "channel_positions.npy", np.c_[np.arange(4) * 10.0, np.arange(4) * 20.0])
    np.save(path / "pc_features.npy", rng.normal(size=(n, N_PCS, 2)).astype(np.float32))
    np.save(path / "pc_feature_ind.npy", IND.astype(np.uint32))
    np.save(path / "similar_templates.npy", np.eye(3, dtype=np.float32))
    (path / "cluster_group.tsv").write_text("cluster_id\tgroup\n0\tgood\n2\tnoise\n")
    (path / "cluster_KSLabel.tsv").write_text("cluster_id\tKSLabel\n0\tgood\n1\tmua\n")
    (path / "cluster_ContamPct.tsv").write_text("cluster_id\tContamPct\n0\t1.5\n1\t\n")
    if with_clusters:
        np.save(path / "spike_clusters.npy", TEMPLATES.astype(np.int64) + 10)
    return raw


@pytest.fixture
def make_template_dir():
    """``make(path, with_clusters=False, dat=True) -> raw``: write a small template directory.

    12 spikes, 3 templates, 4 of the 6 ``.dat`` channels, 2 PCs on 2 channels per template;
    returns the raw ``(200, 6)`` int16 data (written to ``raw.dat`` when `dat`).
    """
    return _make_template_dir


@pytest.fixture(scope="session")
def linear32_seed1_8s(tmp_path_factory):
    """A synthetic linear32 recording, seed 1, 8 s (read only: shared by test modules).

    Units 2 (channel 9, SNR 5.0) and 4 (channel 12, SNR 7.1) are neighbours; unit 6
    (channel 25, SNR 14.8) has 39 spikes.
    """
    from phy_synthetic.recording import synthesize_recording

    folder = tmp_path_factory.mktemp("linear32_seed1_8s")
    synthesize_recording(folder, name="rec", probe="linear32", duration_s=8.0, seed=1)
    return folder

