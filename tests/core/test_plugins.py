"""Tests of plugin discovery, validation, plugin sets and collection."""

import pytest

from phy_core import hookimpl
from phy_core.descriptors import ClusterMetric, Command, Stage
from phy_core.errors import PluginError
from phy_core.plugins import AUTOLOAD_ENV, create_plugin_manager
from phy_core.settings import Settings

BUILT_INS = {"commands", "stats", "synthetic"}


def _metric(name):
    return ClusterMetric(name, "test metric", lambda services: (lambda cluster: 0.0))


class Metrics:
    def __init__(self, *names):
        self.names = names

    @hookimpl
    def phy_register_metrics(self):
        return [_metric(name) for name in self.names]


def test_fixture_sees_only_registered_plugins(phy_plugin_manager):
    assert phy_plugin_manager.collect("phy_commands") == []
    assert phy_plugin_manager.plugin_infos() == []
    info = phy_plugin_manager.register_plugin(Metrics("a"), "mine")
    assert info.status == "loaded" and info.hooks == ["phy_register_metrics"]
    assert [m.name for m in phy_plugin_manager.collect("phy_register_metrics")] == ["a"]


def test_built_in_plugins_come_through_entry_points(phy_user_dir, monkeypatch):
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    pm = create_plugin_manager()
    infos = {info.name: info for info in pm.plugin_infos()}
    assert set(infos) >= BUILT_INS
    for name in BUILT_INS:
        assert infos[name].status == "loaded", infos[name].error
        assert infos[name].distribution == "phy"
        assert infos[name].version
    assert "phy_open_model" in infos["synthetic"].hooks
    assert {c.name for c in pm.collect("phy_commands")} >= {"plugins", "describe", "demo"}


def test_gui_hookspecs_come_through_their_entry_point(phy_plugin_manager):
    # phy_qt's hooks are known without phy_core naming phy_qt.
    assert hasattr(phy_plugin_manager.hook, "phy_register_views")

    class View:
        def phy_register_views(self):
            return []

    assert phy_plugin_manager.register_plugin(View(), "view").status == "loaded"


def test_misspelled_hook_is_an_error_and_plugin_is_skipped(phy_plugin_manager, caplog):
    class Misspelled:
        def phy_regster_stages(self):  # no decorator needed: phy_* names are hooks
            return []

        @hookimpl
        def phy_register_metrics(self):
            return [_metric("never")]

    info = phy_plugin_manager.register_plugin(Misspelled(), "typo")
    assert info.status == "error"
    assert "phy_regster_stages" in info.error and "misspelled" in info.error
    assert phy_plugin_manager.get_plugin("typo") is None
    assert phy_plugin_manager.collect("phy_register_metrics") == []
    assert "typo" in caplog.text


def test_wrong_hook_arguments_are_an_error(phy_plugin_manager):
    class WrongArgs:
        @hookimpl
        def phy_open_model(self, filename):
            return None

    info = phy_plugin_manager.register_plugin(WrongArgs(), "wrong")
    assert info.status == "error" and "filename" in info.error


def test_failing_hook_is_reported_and_others_still_collected(phy_plugin_manager):
    class Broken:
        @hookimpl
        def phy_register_metrics(self):
            raise RuntimeError("boom")

    phy_plugin_manager.register_plugin(Broken(), "broken")
    phy_plugin_manager.register_plugin(Metrics("ok"), "fine")
    assert [m.name for m in phy_plugin_manager.collect("phy_register_metrics")] == ["ok"]
    info = {i.name: i for i in phy_plugin_manager.plugin_infos()}["broken"]
    assert "RuntimeError: boom" in info.error


def test_duplicate_names_name_both_plugins(phy_plugin_manager):
    phy_plugin_manager.register_plugin(Metrics("same"), "first")
    phy_plugin_manager.register_plugin(Metrics("same"), "second")
    with pytest.raises(PluginError, match="'first'.*'second'|'second'.*'first'"):
        phy_plugin_manager.collect("phy_register_metrics")


def test_same_plugin_name_twice_is_refused(phy_plugin_manager):
    phy_plugin_manager.register_plugin(Metrics("a"), "name")
    info = phy_plugin_manager.register_plugin(Metrics("b"), "name")
    assert info.status == "error" and "already registered" in info.error
    assert [m.name for m in phy_plugin_manager.collect("phy_register_metrics")] == ["a"]


def test_lab_reader_wins_over_built_in(phy_user_dir):
    pm = create_plugin_manager(enabled=["synthetic"])
    sentinel = object()

    class LabReader:
        @hookimpl
        def phy_open_model(self, path, options):
            return sentinel if str(path).startswith("synthetic:") else None

    pm.register_plugin(LabReader(), "lab")
    assert pm.hook.phy_open_model(path="synthetic:", options={}) is sentinel
    pm.unregister(name="lab")
    assert pm.hook.phy_open_model(path="synthetic:n_spikes=10", options={}).n_spikes == 10


@pytest.mark.parametrize(
    "enabled, disabled, expected",
    [
        (None, [], BUILT_INS),
        (["commands"], [], {"commands"}),
        (None, ["stats"], BUILT_INS - {"stats"}),
        (["commands", "stats"], ["stats"], {"commands"}),
    ],
)
def test_plugin_sets(phy_user_dir, monkeypatch, enabled, disabled, expected):
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    pm = create_plugin_manager(enabled=enabled, disabled=disabled)
    loaded = {i.name for i in pm.plugin_infos() if i.status == "loaded"}
    assert loaded & BUILT_INS == expected
    assert {i.name for i in pm.plugin_infos() if i.status == "disabled"} >= BUILT_INS - expected


def test_environment_variable_turns_autoload_off(phy_user_dir, monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    pm = create_plugin_manager()
    assert not [i for i in pm.plugin_infos() if i.status == "loaded"]
    pm = create_plugin_manager(enabled=["stats"])
    assert [i.name for i in pm.plugin_infos() if i.status == "loaded"] == ["stats"]


def test_settings_choose_the_plugin_set(phy_user_dir, monkeypatch):
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    settings = Settings()
    settings.set("plugins.disabled", ["synthetic"], level="user")
    pm = create_plugin_manager(settings)
    loaded = {i.name for i in pm.plugin_infos() if i.status == "loaded"}
    assert "synthetic" not in loaded and "commands" in loaded
    # The command line's --plugins replaces the setting's enabled list.
    settings.set("plugins.enabled", ["commands"], level="user")
    assert {i.name for i in create_plugin_manager(settings).plugin_infos()
            if i.status == "loaded"} == {"commands"}
    pm = create_plugin_manager(settings, enabled=["stats"])
    assert {i.name for i in pm.plugin_infos() if i.status == "loaded"} == {"stats"}


def test_unknown_plugin_name_warns(phy_user_dir, caplog):
    create_plugin_manager(enabled=["no-such-plugin"])
    assert "no-such-plugin" in caplog.text and "commands" in caplog.text


def test_configure_is_historic(phy_user_dir):
    settings = Settings(defaults={"x": 1})
    pm = create_plugin_manager(settings, enabled=[])
    seen = []

    class Late:
        @hookimpl
        def phy_configure(self, settings):
            seen.append(settings.get("x"))

    pm.register_plugin(Late(), "late")
    assert seen == [1]


def test_descriptors_validate_names():
    with pytest.raises(ValueError, match="Invalid command name"):
        Command("Bad Name", "help", run=lambda args, services: 0)
    stage = Stage("butterworth", "filter", "band-pass", factory=dict, parameters={"order": 3})
    with pytest.raises(AttributeError):
        stage.name = "other"  # frozen
