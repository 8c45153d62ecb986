"""Atomic writes leave the old file or the new one, never a mix."""

import os

import numpy as np
import pytest

from phy_core.atomic import atomic_write, atomic_writer


def test_write_and_replace_keeping_permissions(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write(path, "one")
    os.chmod(path, 0o640)
    atomic_write(path, "two")
    assert path.read_text() == "two"
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_failure_in_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "spike_clusters.npy"
    np.save(path, np.arange(3))
    with pytest.raises(RuntimeError), atomic_writer(path) as f:
        f.write(b"partial")
        raise RuntimeError("killed")
    assert np.load(path).tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["spike_clusters.npy"]


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.bin"
    atomic_write(path, b"old")

    def failing_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_fsync_is_called(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    atomic_write(tmp_path / "x", b"1")
    assert len(calls) >= 1


def test_bad_mode():
    with pytest.raises(ValueError), atomic_writer("x", "a"):
        pass


def _record_fsyncs_and_renames(monkeypatch):
    """Log ``("fsync", path)`` and ``("rename", target)`` events in order."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("rename", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_deferred_directory_sync_leaves_the_file_synced_before_its_rename(tmp_path,
                                                                            monkeypatch):
    events = _record_fsyncs_and_renames(monkeypatch)
    atomic_write(tmp_path / "a", b"1", sync_directory=False)
    atomic_write(tmp_path / "b", b"2")
    assert [kind for kind, _ in events] == ["fsync", "rename", "fsync", "rename", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".a."))   # the temporary file
    assert events[1] == ("rename", str(tmp_path / "a"))
    assert events[-1] == ("fsync", str(tmp_path))             # only b's write syncs the directory
    assert (tmp_path / "a").read_bytes() == b"1" and (tmp_path / "b").read_bytes() == b"2"
