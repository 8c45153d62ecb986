"""Every hook specification is documented in docs/hooks.md with its exact signature."""

import inspect
from pathlib import Path

import pytest

import phy_core.hookspecs
import phy_qt.hookspecs

DOC = (Path(__file__).resolve().parents[1] / "docs" / "hooks.md").read_text()


def _hookspecs():
    for module in (phy_core.hookspecs, phy_qt.hookspecs):
        for name, func in vars(module).items():
            if name.startswith("phy_") and callable(func):
                yield func


@pytest.mark.parametrize("func", list(_hookspecs()), ids=lambda f: f.__name__)
def test_hookspec_documented_with_signature(func):
    params = ", ".join(inspect.signature(func).parameters)
    assert f"### `{func.__name__}({params})`" in DOC
    assert func.__doc__ and len(func.__doc__.strip()) > 40, "the docstring is the contract"


def test_hook_count():
    # A hook added without documentation would fail above; this catches a hook lost silently.
    assert len(list(_hookspecs())) == 12


def test_readme_python_example_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("In Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # our own documentation, not data
    clustering = namespace["clustering"]
    assert clustering.cluster_ids.tolist() == [0, 1, 2]
    assert clustering.redo().added == [3]
