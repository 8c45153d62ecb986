"""Tests of `phy_core.settings.Settings`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from phy_core import settings as settings_module
from phy_core.settings import Settings


@pytest.fixture
def user_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "user"
    monkeypatch.setenv("PHY_USER_DIR", str(path))
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    path = tmp_path / "dataset"
    path.mkdir()
    (path / "traces.dat").write_bytes(b"\0" * 16)
    return path / "traces.dat"


def _phy_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("phy")
    ]


# Paths
# -----------------------------------------------------------------------------


def test_user_dir_from_env(user_dir):
    s = Settings()
    assert s.user_dir == user_dir
    assert s.user_path == user_dir / "settings.json"
    assert s.experiment_path is None


def test_user_dir_argument_wins_over_env(user_dir, tmp_path):
    s = Settings(user_dir=tmp_path / "other")
    assert s.user_path == tmp_path / "other" / "settings.json"


def test_user_dir_appdirs_fallback(monkeypatch, tmp_path):
    monkeypatch.delenv("PHY_USER_DIR", raising=False)
    monkeypatch.setattr(
        settings_module.appdirs, "user_config_dir", lambda name: str(tmp_path / "appdirs" / name)
    )
    assert Settings().user_dir == tmp_path / "appdirs" / "phy"


def test_experiment_path_file_or_dir(user_dir, dataset):
    s = Settings()
    s.on_open(dataset)
    assert s.experiment_path == dataset.parent / ".phy" / "settings.json"
    s.on_open(dataset.parent)
    assert s.experiment_path == dataset.parent / ".phy" / "settings.json"


# Reading and precedence
# -----------------------------------------------------------------------------


def test_precedence(user_dir, dataset):
    user_dir.mkdir()
    (user_dir / "settings.json").write_text(json.dumps({"a": "user", "b": "user"}))
    exp = dataset.parent / ".phy"
    exp.mkdir()
    (exp / "settings.json").write_text(json.dumps({"a": "experiment"}))

    s = Settings({"a": "default", "b": "default", "c": "default"})
    assert (s["a"], s["b"], s["c"]) == ("user", "user", "default")
    s.on_open(dataset)
    assert (s["a"], s["b"], s["c"]) == ("experiment", "user", "default")
    assert s.keys() == ["a", "b", "c"]


def test_get_getitem_contains(user_dir):
    s = Settings({"plugins": {"disabled": ["x"]}, "n_channels": 32})
    assert s.get("plugins.disabled") == ["x"]
    assert s.get("missing") is None
    assert s.get("missing", 3) == 3
    assert "n_channels" in s
    assert "missing" not in s
    with pytest.raises(KeyError, match="Unknown setting 'n_channel'.*'n_channels'"):
        s["n_channel"]


def test_toml_and_json(user_dir):
    user_dir.mkdir()
    (user_dir / "settings.toml").write_text(
        '[plugins]\ndisabled = ["a"]\nextra = 1\n[view.waveform]\nscale = 2.5\n'
    )
    (user_dir / "settings.json").write_text(json.dumps({"plugins": {"extra": 2}}))
    s = Settings()
    assert s["plugins.disabled"] == ["a"]
    assert s["plugins.extra"] == 2  # JSON wins.
    assert s["view.waveform.scale"] == 2.5
    assert s.keys() == ["plugins.disabled", "plugins.extra", "view.waveform.scale"]


def test_flattening(user_dir, dataset):
    exp = dataset.parent / ".phy"
    exp.mkdir()
    (exp / "settings.json").write_text(json.dumps({"a": {"b": {"c": 1}, "d": [1, {"e": 2}]}}))
    s = Settings()
    s.on_open(dataset)
    assert s["a.b.c"] == 1
    assert s["a.d"] == [1, {"e": 2}]  # Only mappings are flattened, not lists.
    assert "a" not in s


def test_add_defaults_never_overrides(user_dir):
    s = Settings({"x": 1})
    s["y"] = "user"
    s.add_defaults({"y": "default", "z": {"w": True}})
    assert s["y"] == "user"
    assert s["z.w"] is True
    assert s["x"] == 1
    with pytest.raises(TypeError, match="mapping"):
        s.add_defaults([("a", 1)])


# Writing
# -----------------------------------------------------------------------------


def test_set_default_level(user_dir, dataset):
    s = Settings()
    s["a"] = 1
    s.on_open(dataset)
    s["b"] = 2
    s.set("c", 3, level="user")
    s.save()
    assert json.loads(s.user_path.read_text()) == {"a": 1, "c": 3}
    assert json.loads(s.experiment_path.read_text()) == {"b": 2}


def test_set_errors(user_dir):
    s = Settings()
    with pytest.raises(ValueError, match="on_open"):
        s.set("a", 1, level="experiment")
    with pytest.raises(ValueError, match="level"):
        s.set("a", 1, level="global")
    with pytest.raises(TypeError, match="key"):
        s.set("", 1)
    with pytest.raises(TypeError, match="'my.key'.*JSON"):
        s["my.key"] = object()
    with pytest.raises(TypeError, match="'d.x'"):
        s["d"] = {"ok": 1, "x": {1, 2}}
    # Nothing was stored by the failed calls.
    assert s.keys() == []


def test_set_mapping_and_tuple_values(user_dir):
    s = Settings()
    s["view"] = {"scale": 2, "colors": ("r", "g")}
    assert s["view.scale"] == 2
    assert s["view.colors"] == ["r", "g"]  # Stored as it will read back.
    s.save()
    assert Settings()["view.colors"] == ["r", "g"]


def test_persistence_across_instances(user_dir, dataset):
    s = Settings({"a": 0})
    s["a"] = 1
    s["unicode"] = "µV"
    s.on_open(dataset)
    s["a"] = 2
    s.save()

    s2 = Settings({"a": 0})
    assert s2["a"] == 1
    assert s2["unicode"] == "µV"
    s2.on_open(dataset)
    assert s2["a"] == 2


def test_save_only_changed_levels(user_dir, dataset):
    s = Settings()
    s.on_open(dataset)
    s.save()  # Nothing changed: nothing written.
    assert not user_dir.exists()
    assert not (dataset.parent / ".phy").exists()
    s["a"] = 1
    s.save()
    assert s.experiment_path.exists()
    assert not s.user_path.exists()
    # Setting an unchanged value does not dirty the level.
    mtime = s.experiment_path.stat().st_mtime_ns
    os.utime(s.experiment_path, ns=(0, 0))
    s["a"] = 1
    s.save()
    assert s.experiment_path.stat().st_mtime_ns == 0 != mtime


def test_save_is_atomic(user_dir, monkeypatch):
    s = Settings()
    s["a"] = "old"
    s.save()
    before = s.user_path.read_text()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    s["a"] = "new"
    with pytest.raises(OSError, match="disk full"):
        s.save()
    assert s.user_path.read_text() == before
    assert sorted(p.name for p in user_dir.iterdir()) == ["settings.json"]  # No temp file.

    monkeypatch.undo()
    s.save()  # Still dirty: the failed save is retried.
    assert json.loads(s.user_path.read_text()) == {"a": "new"}
    assert sorted(p.name for p in user_dir.iterdir()) == ["settings.json"]


def test_save_uses_fsync(user_dir, monkeypatch):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    s = Settings()
    s["a"] = 1
    s.save()
    assert calls


# Corrupt files
# -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("settings.json", "{not json", "not valid JSON"),
        ("settings.json", "[1, 2]", "mapping of settings, found list"),
        ("settings.json", b"\xff\xfe\x00", "UTF-8"),
        ("settings.toml", "a = = 1", "not valid TOML"),
    ],
)
def test_corrupt_user_file(user_dir, caplog, name, content, problem):
    user_dir.mkdir()
    path = user_dir / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    s = Settings({"a": "default"})
    assert s["a"] == "default"  # The level is treated as empty.
    warnings = _phy_warnings(caplog)
    assert len(warnings) == 1
    assert str(path) in warnings[0]
    assert problem in warnings[0]


def test_unreadable_file_is_a_warning(user_dir, caplog):
    # A directory where the file should be: reading fails with an OSError.
    (user_dir / "settings.json").mkdir(parents=True)
    s = Settings({"a": 1})
    assert s["a"] == 1
    assert "cannot be read" in _phy_warnings(caplog)[0]


def test_corrupt_experiment_file(user_dir, dataset, caplog):
    exp = dataset.parent / ".phy"
    exp.mkdir()
    (exp / "settings.json").write_text('"just a string"')
    s = Settings({"a": 1})
    s.on_open(dataset)
    assert s["a"] == 1
    (warning,) = _phy_warnings(caplog)
    assert str(exp / "settings.json") in warning
    assert "found str" in warning


def test_save_moves_corrupt_file_aside(user_dir, caplog):
    user_dir.mkdir()
    (user_dir / "settings.json").write_text("{broken")
    s = Settings()
    s["a"] = 1
    caplog.clear()
    s.save()
    assert json.loads(s.user_path.read_text()) == {"a": 1}
    (aside,) = user_dir.glob("settings.json.corrupt-*")
    assert aside.read_text() == "{broken"  # The user's text is kept.
    (warning,) = _phy_warnings(caplog)
    assert str(aside) in warning

    # Saving again: the file is fine now, nothing else is moved aside.
    s["a"] = 2
    s.save()
    assert len(list(user_dir.glob("settings.json.corrupt-*"))) == 1


def test_save_moves_aside_file_corrupted_after_load(user_dir):
    s = Settings()
    s["a"] = 1
    s.save()
    s.user_path.write_text("{corrupted meanwhile")
    s["a"] = 2
    s.save()
    (aside,) = user_dir.glob("settings.json.corrupt-*")
    assert aside.read_text() == "{corrupted meanwhile"


def test_corrupt_aside_names_are_unique(user_dir, monkeypatch):
    monkeypatch.setattr(settings_module.time, "strftime", lambda fmt: "20260101T000000")
    for i in range(3):
        user_dir.mkdir(exist_ok=True)
        (user_dir / "settings.json").write_text(f"{{broken {i}")
        s = Settings()
        s["a"] = i
        s.save()
    asides = sorted(p.read_text() for p in user_dir.glob("settings.json.corrupt-*"))
    assert asides == ["{broken 0", "{broken 1", "{broken 2"]


def test_files_are_never_executed(user_dir, tmp_path):
    marker = tmp_path / "pwned"
    user_dir.mkdir()
    (user_dir / "settings.json").write_text(f"__import__('pathlib').Path({str(marker)!r}).touch()")
    s = Settings()
    assert s.keys() == []
    assert not marker.exists()


def test_save_keeps_file_permissions(user_dir):
    s = Settings()
    s["a"] = 1
    s.save()
    os.chmod(s.user_path, 0o644)
    s["a"] = 2
    s.save()
    assert s.user_path.stat().st_mode & 0o777 == 0o644
