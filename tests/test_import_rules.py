"""The layering rules of DESIGN.md, enforced.

- phy_core imports only the standard library, numpy, pluggy and appdirs
  (and tomli on Python 3.10): never Qt, VisPy, h5py, or a plugin.
- phy_qt/hookspecs.py imports no Qt, so headless runs can validate GUI plugins.
- Importing a plugin (what discovery does) is cheap: no heavy library.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE_ALLOWED = {"numpy", "pluggy", "appdirs", "tomli", "phy_core"}
# Loaded by pytest only, as the fixtures' pytest plugin.
CORE_PYTEST_ONLY = {"testing.py": {"pytest"}}
FORBIDDEN = ("PyQt5", "vispy", "h5py", "numba", "scipy", "phy_qt", "phy_commands", "phy_stats",
             "phy_synthetic")


def _imported_top_level_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(str(node.args[0].value).split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "phy_core").glob("*.py")), ids=lambda p: p.name)
def test_core_imports_only_allowed_modules(path):
    allowed = CORE_ALLOWED | CORE_PYTEST_ONLY.get(path.name, set())
    outside = {
        name for name in _imported_top_level_modules(path)
        if name not in allowed and name not in sys.stdlib_module_names
    }
    assert not outside, f"phy_core/{path.name} imports {sorted(outside)}"


def _modules_loaded_by(code: str) -> set[str]:
    script = code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_importing_all_of_phy_core_loads_nothing_forbidden():
    modules = [p.stem for p in (ROOT / "phy_core").glob("*.py")
               if p.stem not in ("__init__", "testing")]
    code = "\n".join(f"import phy_core.{name}" for name in modules)
    loaded = _modules_loaded_by(code)
    assert "phy_core" in loaded
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_gui_hookspecs_import_no_qt():
    loaded = _modules_loaded_by("import phy_qt.hookspecs, phy_qt.descriptors")
    assert not loaded & {"PyQt5", "vispy"}


def test_plugin_discovery_is_cheap():
    code = ("from phy_core.plugins import create_plugin_manager\n"
            "pm = create_plugin_manager(enabled=None, disabled=[], autoload=True)\n"
            "assert pm.get_plugin('stats') is not None")
    loaded = _modules_loaded_by(code)
    assert not loaded & {"PyQt5", "vispy", "h5py", "numba", "scipy"}, loaded
