"""A throwaway plugin package, really installed, is discovered through its entry point."""

import json
import os
import subprocess
import sys
import textwrap

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "phy-lab-example"
version = "1.2.3"

[project.entry-points."phy.plugins"]
lab = "phy_lab_example"
lab-broken = "phy_lab_example.does_not_exist"

[tool.setuptools]
packages = ["phy_lab_example"]
"""

PLUGIN = '''
"""A lab's own phy plugin: a command and a metric."""
from phy_core import hookimpl
from phy_core.descriptors import ClusterMetric, Command


def _run(args, services):
    metrics = services.plugin_manager.collect("phy_register_metrics")
    print("hello from the lab;", "metrics:", ",".join(sorted(m.name for m in metrics)))
    return 0


@hookimpl
def phy_commands():
    return [Command("lab-hello", "say hello from the lab plugin", _run)]


@hookimpl
def phy_register_metrics():
    return [ClusterMetric("lab_metric", "a lab metric", lambda services: len)]
'''


def test_external_plugin_package_is_discovered(tmp_path, run_phy):
    source = tmp_path / "src"
    (source / "phy_lab_example").mkdir(parents=True)
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "phy_lab_example" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    env = {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}

    infos = {i["name"]: i for i in json.loads(run_phy("plugins", "--json", env=env).stdout)}
    assert infos["lab"]["status"] == "loaded"
    assert infos["lab"]["distribution"] == "phy-lab-example"
    assert infos["lab"]["version"] == "1.2.3"
    assert infos["lab"]["hooks"] == ["phy_commands", "phy_register_metrics"]
    # A broken entry point is reported with its error; the rest still loads.
    assert infos["lab-broken"]["status"] == "error"
    assert "ModuleNotFoundError" in infos["lab-broken"]["error"]
    assert infos["commands"]["status"] == "loaded"

    # Its hooks are called: its command runs and sees its metric next to the built-in one.
    result = run_phy("lab-hello", env=env)
    assert "hello from the lab; metrics: lab_metric,n_spikes" in result.stdout
    # And it can be disabled like any plugin.
    assert "lab-hello" not in run_phy("--disable", "lab", "--help", env=env).stdout
