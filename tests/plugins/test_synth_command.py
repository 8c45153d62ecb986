"""``phy synth`` on the command line."""

from __future__ import annotations

import numpy as np

from phy_core.cli import main


def test_phy_synth(tmp_path, capsys):
    assert main(["synth", str(tmp_path), "--duration", "1", "--probe", "linear32"]) == 0
    out = capsys.readouterr().out
    assert "32 channels" in out and "synthetic.dat" in out
    dat = tmp_path / "synthetic.dat"
    assert dat.stat().st_size == 30000 * 32 * 2
    gt = np.load(tmp_path / "synthetic.groundtruth.npz")
    assert gt["templates"].shape[0] == 8  # max(8, 32 // 6)
    # Existing files are not replaced without --overwrite (a clean error, not 0).
    assert main(["synth", str(tmp_path), "--duration", "1", "--probe", "linear32"]) != 0
    assert main(["synth", str(tmp_path), "--duration", "0.5", "--probe", "linear32",
                 "--overwrite", "--name", "other", "--seed", "2", "--n-units", "3"]) == 0
    assert (tmp_path / "other.prm").exists()
    assert np.load(tmp_path / "other.groundtruth.npz")["templates"].shape[0] == 3
