"""Interrupted saves, inconsistent files, and random corruption of Kwik datasets."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phy_core.errors import PhyError
from phy_core.model import check_model
from phy_kwik.clusterings import ClusteringsMixin
from phy_kwik.creator import KwikCreator
from phy_kwik.errors import KwikError
from phy_kwik.model import KwikModel

N = 50


def _make(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    creator = KwikCreator(folder / "d")
    creator.create_empty()
    creator.set_probe({0: {"channels": [0, 1, 2]}})
    creator.add_recording(0, sample_rate=10000.0)
    creator.add_spikes(0, np.sort(rng.integers(0, 10000, N)).astype(float),
                       features=rng.standard_normal((N, 9)), masks=rng.random((N, 3)))
    creator.add_clustering(0, "main", np.arange(N) % 5, {1: 2})
    return folder / "d.kwik"


class Boom(Exception):
    pass


@pytest.mark.parametrize("step", ["_make_backup", "_swap_in", "move", "delete"])
def test_interrupted_save_leaves_old_clustering(tmp_path, monkeypatch, step):
    path = _make(tmp_path)
    old = np.arange(N) % 5
    model = KwikModel(path)
    model.save(old + 5, {5: 0})  # a first save: main_backup exists now
    if step in ("move", "delete"):
        # Fail in the middle of the swap: after the old dataset is deleted.
        from phy_kwik.h5 import File

        real = getattr(File, step)
        calls = []

        def failing(self, *args):
            calls.append(args)
            if len(calls) == (3 if step == "move" else 5):
                raise Boom()
            return real(self, *args)

        monkeypatch.setattr(File, step, failing)
    else:
        def failing(self, *args):
            raise Boom()

        monkeypatch.setattr(ClusteringsMixin, step, failing)
    with pytest.raises(Boom):
        model.save(old + 10, {10: 2})
    monkeypatch.undo()
    reopened = KwikModel(path)
    # Either main is intact (old + 5) or its backup is read (old + 5 too: the
    # backup made by this save), never a half-written clustering.
    np.testing.assert_array_equal(reopened.spike_clusters, old + 5)
    assert reopened.cluster_groups[5] == 0
    assert check_model(reopened) == []
    # The next save repairs the file.
    reopened.save(old + 20, {})
    again = KwikModel(path)
    assert again.clustering == "main"
    np.testing.assert_array_equal(again.spike_clusters, old + 20)


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


@pytest.mark.parametrize("edit, message", [
    (lambda f: (f["/channel_groups/0/spikes"].__delitem__("recording"),
                f["/channel_groups/0/spikes"].create_dataset("recording", data=np.zeros(3))),
     "recording"),
    (lambda f: (f["/channel_groups/0/spikes/clusters"].__delitem__("main"),
                f["/channel_groups/0/spikes/clusters"].create_dataset(
                    "main", data=np.zeros(N + 1, np.int32))), "one per spike"),
    (lambda f: f["/channel_groups/0/spikes/clusters/main"].__setitem__(3, -1), "negative"),
    (lambda f: f["/channel_groups/0/spikes/time_samples"].__setitem__(0, 10 ** 6),
     "not sorted"),
    (lambda f: f.attrs.__setitem__("kwik_version", 1), "kwik_version"),
    (lambda f: f.__delitem__("channel_groups"), "no channel group"),
    (lambda f: f["/application_data/spikedetekt"].attrs.__setitem__("sample_rate", -1.0),
     "sample_rate"),
])
def test_inconsistent_files(tmp_path, edit, message):
    path = _make(tmp_path)
    KwikCreator(path).set_metadata("/application_data/spikedetekt", sample_rate=10000.0)
    _edit(path, edit)
    with pytest.raises(KwikError, match=message) as info:
        KwikModel(path)
    assert str(path.name) in str(info.value)


def test_features_rows_disagree(tmp_path):
    path = _make(tmp_path)
    with h5py.File(tmp_path / "d.kwx", "r+") as f:
        del f["/channel_groups/0/features_masks"]
        f.create_dataset("/channel_groups/0/features_masks", data=np.zeros((N - 1, 9, 2)))
    with pytest.raises(KwikError, match=r"d\.kwx.*expected \(50,"):
        KwikModel(path)


def test_small_inversions_fixed_with_warning(tmp_path, caplog):
    path = _make(tmp_path)
    with h5py.File(path, "r+") as f:
        ts = f["/channel_groups/0/spikes/time_samples"]
        values = ts[:]
        values[10] = values[11] + 1  # one sample too late, as klusta sometimes wrote
        ts[:] = values
    with caplog.at_level(logging.WARNING, logger="phy"):
        model = KwikModel(path)
    assert "known klusta glitch" in caplog.text
    assert np.all(np.diff(model.spike_samples) >= 0)


def test_not_hdf5_and_truncated(tmp_path):
    path = _make(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(KwikError, match="d.kwik"):
        KwikModel(path)
    path.write_text("hello")
    with pytest.raises(KwikError, match="not a readable HDF5 file"):
        KwikModel(path)


# -- Random corruption ---------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A valid dataset, copied and then damaged by every example."""
    return _make(tmp_path_factory.mktemp("kwik-template"))


def _exercise(path: Path) -> None:
    """Open and read everything; only KwikError may come out."""
    try:
        model = KwikModel(path)
    except KwikError:
        return
    try:
        assert check_model(model) == []
        n = model.n_spikes
        model.features[:]
        model.masks[: min(n, 5)]
        model.waveforms[: min(n, 2)]
        assert len(model.spike_clusters) == n
        assert all(g >= 0 for g in model.cluster_groups.values())
        model.describe()
    except KwikError:
        pass
    finally:
        model.close()


_PATHS = ["/channel_groups/0/spikes/time_samples", "/channel_groups/0/spikes/recording",
          "/channel_groups/0/spikes/time_fractional", "/channel_groups/0/spikes/clusters/main",
          "/channel_groups/0/clusters/main", "/channel_groups/0/cluster_groups/main",
          "/channel_groups/0/channels", "/channel_groups/0/channels/1", "/recordings",
          "/application_data", "/channel_groups/0"]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(target=st.sampled_from(["kwik", "kwx"]), kind=st.sampled_from(["truncate", "flip"]),
       where=st.floats(0, 1, exclude_max=True), count=st.integers(1, 40),
       seed=st.integers(0, 2 ** 16))
def test_random_byte_corruption(template, target, kind, where, count, seed):
    folder = Path(tempfile.mkdtemp(prefix="phy-kwik-"))
    try:
        for suffix in (".kwik", ".kwx"):
            shutil.copy(template.with_suffix(suffix), folder / f"d{suffix}")
        victim = folder / f"d.{target}"
        data = bytearray(victim.read_bytes())
        if kind == "truncate":
            data = data[: int(where * len(data))]
        else:
            rng = np.random.default_rng(seed)
            for pos in rng.integers(0, len(data), count):
                data[pos] ^= int(rng.integers(1, 256))
        victim.write_bytes(bytes(data))
        _exercise(folder / "d.kwik")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(paths=st.lists(st.sampled_from(_PATHS), min_size=1, max_size=3, unique=True))
def test_random_deletions(template, paths):
    folder = Path(tempfile.mkdtemp(prefix="phy-kwik-"))
    try:
        for suffix in (".kwik", ".kwx"):
            shutil.copy(template.with_suffix(suffix), folder / f"d{suffix}")
        with h5py.File(folder / "d.kwik", "r+") as f:
            for p in paths:
                if p in f:
                    del f[p]
        _exercise(folder / "d.kwik")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_kwik_error_is_phy_error():
    assert issubclass(KwikError, PhyError) and issubclass(KwikError, ValueError)
