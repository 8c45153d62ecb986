"""pytest fixtures for phy and for plugin authors (loaded through the ``pytest11`` entry point).

``phy_plugin_manager``: a plugin manager that knows every hook specification
but has no plugin loaded: a test registers exactly the plugins it needs::

    def test_my_reader(phy_plugin_manager):
        import my_lab_plugin
        phy_plugin_manager.register_plugin(my_lab_plugin, "my-lab")
        model = phy_plugin_manager.hook.phy_open_model(path=..., options={})

``phy_user_dir``: a temporary user settings directory (``PHY_USER_DIR``), so
tests never read or write the real user's settings.
"""

from __future__ import annotations

import pytest

from .plugins import PhyPluginManager


@pytest.fixture
def phy_user_dir(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.mktemp("phy-user")
    monkeypatch.setenv("PHY_USER_DIR", str(path))
    return path


@pytest.fixture
def phy_plugin_manager(phy_user_dir):
    return PhyPluginManager()
