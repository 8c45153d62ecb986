"""Tests of the ``phy`` command line, run as a real console script."""

import json

from phy_core.cli import main


def test_help_lists_commands_contributed_by_plugins(run_phy):
    out = run_phy("--help").stdout
    for command in ("describe", "plugins", "demo"):
        assert f"    {command} " in out


def test_disable_removes_a_plugin_command(run_phy):
    assert "    demo " not in run_phy("--disable", "synthetic", "--help").stdout
    # The option is also accepted after the subcommand.
    infos = json.loads(run_phy("plugins", "--json", "--disable", "synthetic").stdout)
    assert {i["name"]: i["status"] for i in infos}["synthetic"] == "disabled"


def test_plugins_option_and_environment_variable(run_phy):
    result = run_phy("--plugins", "commands", "plugins", "--json",
                     env={"PHY_DISABLE_PLUGIN_AUTOLOAD": "1"})
    status = {i["name"]: i["status"] for i in json.loads(result.stdout)}
    assert status["commands"] == "loaded" and status["stats"] == "disabled"
    # With autoload off and no --plugins, no command exists at all.
    result = run_phy("plugins", env={"PHY_DISABLE_PLUGIN_AUTOLOAD": "1"}, check=False)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_plugins_lists_distribution_version_and_hooks(run_phy):
    out = run_phy("plugins").stdout
    assert "synthetic" in out and "phy_open_model" in out and "phy 0.3" in out


def test_describe_synthetic(run_phy):
    out = run_phy("describe", "synthetic:n_units=3,n_spikes=500,n_channels=8").stdout
    assert "spikes            500" in out and "channels          8" in out
    assert "units (true)      3" in out


def test_describe_errors_are_clear(run_phy, tmp_path):
    result = run_phy("describe", str(tmp_path / "missing.kwik"), check=False)
    assert result.returncode == 1
    assert "missing.kwik: no such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    unknown = tmp_path / "data.xyz"
    unknown.write_text("")
    result = run_phy("describe", str(unknown), check=False)
    assert result.returncode == 1 and "no plugin reads this dataset" in result.stderr


def test_main_in_process_without_command_prints_help(capsys, phy_user_dir):
    assert main([]) == 0
    assert "commands:" in capsys.readouterr().out


def test_version(run_phy):
    assert run_phy("--version").stdout.startswith("phy 0.3")
