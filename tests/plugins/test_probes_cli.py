"""The ``phy probes`` command and the plugin's hooks."""

import subprocess
import sys

import phy_probes
from phy_core.cli import main
from phy_probes.prb import read_prb


def _run(capsys, *args):
    code = main(["--plugins", "probes", "probes", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_builtin_probes(capsys, phy_user_dir):
    code, out, _ = _run(capsys)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert list(lines) == ["linear32", "buzsaki32", "neuropixels1", "dense1024"]
    assert "384 channels" in lines["neuropixels1"]
    assert "4 groups" in lines["buzsaki32"]
    assert "1024 channels" in lines["dense1024"]


def test_describe_builtin(capsys, phy_user_dir):
    code, out, _ = _run(capsys, "buzsaki32")
    assert code == 0
    assert out.startswith("Probe buzsaki32: 4 channel group(s), 32 channels")
    assert out.count("13 edges") == 4


def test_write_prb(capsys, phy_user_dir, tmp_path):
    out_path = tmp_path / "np1.prb"
    code, out, _ = _run(capsys, "neuropixels1", "--write", str(out_path))
    assert code == 0 and f"Wrote {out_path}" in out
    groups = read_prb(out_path)
    assert groups[0]["channels"] == list(range(384))
    assert groups[0]["geometry"][2] == (59.0, 40.0)
    assert (99, 100) in groups[0]["graph"]
    # The written file describes the same probe.
    code, again, _ = _run(capsys, str(out_path))
    assert code == 0 and "384 channels" in again and "from the probe file" in again


def test_write_refuses_other_suffix(capsys, phy_user_dir, tmp_path):
    target = tmp_path / "traces.dat"
    target.write_bytes(b"precious")
    code, _, err = _run(capsys, "linear32", "--write", str(target))
    assert code == 1 and "ending in .prb" in err
    assert target.read_bytes() == b"precious"


def test_errors_are_clean(capsys, phy_user_dir, tmp_path):
    code, _, err = _run(capsys, "nonexistent")
    assert code == 1 and "not a built-in probe" in err and "Traceback" not in err
    evil = tmp_path / "evil.prb"
    evil.write_text("import os\n")
    code, _, err = _run(capsys, str(evil))
    assert code == 1 and "evil.prb, line 1" in err
    code, _, err = _run(capsys, "--write", str(tmp_path / "x.prb"))
    assert code == 1 and "--write needs a probe" in err


def test_hooks_only_in_init(phy_plugin_manager):
    phy_plugin_manager.register_plugin(phy_probes, "probes")
    commands = phy_plugin_manager.collect("phy_commands")
    assert [c.name for c in commands] == ["probes"]


def test_loading_the_plugin_imports_no_scipy():
    code = "import phy_probes, sys; print('scipy' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]
