"""Plugin discovery and plugin sets.

Every capability of phy, built-in or not, comes from a plugin found through
the ``phy.plugins`` entry-point group. Hook specification modules beyond the
core's own (the GUI's) come through the ``phy.hookspecs`` group, so this
module never names another layer.

Loading is isolated: a plugin that fails to import or to register, or that
implements a hook that does not exist (a misspelling), is recorded with its
error in `PhyPluginManager.infos` and skipped; the others load.
"""

from __future__ import annotations

import importlib
import inspect
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .log import logger

ENTRY_POINT_GROUP = "phy.plugins"
HOOKSPEC_GROUP = "phy.hookspecs"
#: Set this environment variable to a non-empty value (other than ``0``) to
#: stop phy from loading plugins automatically; only those named with
#: ``--plugins`` (or `enabled`) are then loaded.
AUTOLOAD_ENV = "PHY_DISABLE_PLUGIN_AUTOLOAD"
HOOK_PREFIX = "phy_"


@dataclass
class PluginInfo:
    """What `phy plugins` reports about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    status: str = "loaded"  # 'loaded', 'disabled' or 'error'
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def autoload_disabled() -> bool:
    """Whether automatic plugin loading is turned off by the environment."""
    return os.environ.get(AUTOLOAD_ENV, "") not in ("", "0")


def _format_error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


class PhyPluginManager(pluggy.PluginManager):
    """A pluggy plugin manager that knows phy's hooks and reports on its plugins.

    Parameters
    ----------
    load_hookspecs : bool
        Also add the hook specifications found through the ``phy.hookspecs``
        entry-point group (the GUI's). True by default.
    """

    def __init__(self, load_hookspecs: bool = True) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        if load_hookspecs:
            for ep in entry_points(group=HOOKSPEC_GROUP):
                try:
                    self.add_hookspecs(ep.load())
                except Exception as exc:  # a broken spec module must not stop phy
                    logger.warning("Cannot load hook specifications %s: %s", ep.value, exc)

    # pluggy calls this for every attribute of a registered plugin. Like pytest, we
    # also accept undecorated functions named phy_*, so that a misspelled hook name
    # is caught instead of silently ignored.
    def parse_hookimpl_opts(self, plugin, name):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(HOOK_PREFIX):
            method = getattr(plugin, name, None)
            if inspect.isroutine(method):
                opts = {}
        return opts

    # -- Registration -----------------------------------------------------------

    def register_plugin(
        self,
        plugin: Any,
        name: str,
        module: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
    ) -> PluginInfo:
        """Register `plugin` under `name`, validating its hooks.

        Never raises for a faulty plugin: the returned `PluginInfo` has
        ``status == 'error'`` and the error message, and the plugin is not
        registered.
        """
        info = PluginInfo(
            name=name,
            module=module or getattr(plugin, "__name__", type(plugin).__name__),
            distribution=distribution,
            version=version,
        )
        if self.get_plugin(name) is not None:
            info.status, info.error = "error", f"a plugin named {name!r} is already registered"
            logger.warning("Plugin %r skipped: %s", name, info.error)
            return info
        self.infos[name] = info
        try:
            self.register(plugin, name=name)
        except Exception as exc:
            info.status, info.error = "error", _format_error(exc)
            logger.warning("Plugin %r skipped: %s", name, info.error)
            return info
        callers = self.get_hookcallers(plugin) or []
        unknown = sorted(hc.name for hc in callers if not hc.has_spec())
        if unknown:
            self.unregister(plugin)
            known = sorted(self.hook.__dict__)
            info.status = "error"
            info.error = (
                f"implements unknown hook(s) {', '.join(unknown)} (misspelled?); "
                f"known hooks: {', '.join(known)}"
            )
            logger.warning("Plugin %r skipped: %s", name, info.error)
            return info
        info.hooks = sorted(hc.name for hc in callers)
        return info

    def load_entry_point_plugins(
        self,
        enabled: Iterable[str] | None = None,
        disabled: Iterable[str] = (),
        autoload: bool | None = None,
    ) -> list[PluginInfo]:
        """Load the plugins of the ``phy.plugins`` entry-point group.

        Parameters
        ----------
        enabled : iterable of str or None
            If given, load only these plugins (by entry-point name), even
            when automatic loading is off.
        disabled : iterable of str
            Do not load these plugins (reported as ``disabled``).
        autoload : bool or None
            Load every plugin not disabled. Default: True unless the
            ``PHY_DISABLE_PLUGIN_AUTOLOAD`` environment variable is set.

        Returns
        -------
        infos : list of PluginInfo
            One per entry point found, in load order.
        """
        autoload = (not autoload_disabled()) if autoload is None else autoload
        enabled = None if enabled is None else set(enabled)
        disabled = set(disabled)
        found: list[PluginInfo] = []
        seen: set[str] = set()
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            seen.add(ep.name)
            if ep.name in disabled or (enabled is None and not autoload) or (
                enabled is not None and ep.name not in enabled
            ):
                info = self._info_from_entry_point(ep, status="disabled")
                self.infos.setdefault(ep.name, info)
                found.append(self.infos[ep.name])
                continue
            found.append(self._load_entry_point(ep))
        for name in sorted((enabled or set()) | disabled):
            if name not in seen:
                logger.warning(
                    "No plugin named %r is installed; installed plugins: %s",
                    name,
                    ", ".join(sorted(seen)) or "none",
                )
        return found

    def _info_from_entry_point(self, ep: EntryPoint, status: str) -> PluginInfo:
        dist = getattr(ep, "dist", None)
        return PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
            status=status,
        )

    def _load_entry_point(self, ep: EntryPoint) -> PluginInfo:
        base = self._info_from_entry_point(ep, status="loaded")
        if self.get_plugin(ep.name) is not None or (
            ep.name in self.infos and self.infos[ep.name].status == "loaded"
        ):
            prior = self.infos[ep.name]
            base.status = "error"
            base.error = (
                f"the plugin name {ep.name!r} is already used by "
                f"{prior.distribution or prior.module}"
            )
            logger.warning("Plugin %r skipped: %s", ep.name, base.error)
            return base
        try:
            plugin = ep.load()
        except Exception as exc:
            base.status, base.error = "error", _format_error(exc)
            self.infos[ep.name] = base
            logger.warning("Plugin %r could not be imported: %s", ep.name, base.error)
            return base
        return self.register_plugin(
            plugin, ep.name, module=ep.value, distribution=base.distribution, version=base.version
        )

    def load_module_plugin(self, module_name: str, name: str | None = None) -> PluginInfo:
        """Import a module by name and register it as a plugin (for scripts and tests)."""
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            info = PluginInfo(name=name or module_name, module=module_name, status="error",
                              error=_format_error(exc))
            self.infos[info.name] = info
            return info
        return self.register_plugin(module, name or module_name, module=module_name)

    # -- Collection -------------------------------------------------------------

    def plugin_infos(self) -> list[PluginInfo]:
        """Every plugin seen: loaded, disabled or failed, sorted by name."""
        return [self.infos[name] for name in sorted(self.infos)]

    def collect(self, hook_name: str, **kwargs: Any) -> list:
        """Call a ``phy_register_*``-style hook and flatten the descriptor lists.

        A plugin whose hook raises is reported and skipped. Descriptors must
        have a unique ``name`` per hook; a duplicate raises `PluginError`
        naming both plugins.

        Returns
        -------
        descriptors : list
            In hook call order: plugins registered later, and ``tryfirst``
            ones, come first; built-ins are ``trylast``.
        """
        caller = getattr(self.hook, hook_name)
        by_name: dict[str, str] = {}
        collected = []
        # Call each implementation separately so one failing plugin is isolated.
        for impl in reversed(caller.get_hookimpls()):
            plugin_name = self.get_name(impl.plugin) or "?"
            try:
                result = impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception as exc:
                error = f"{hook_name} failed: {_format_error(exc)}"
                logger.warning("Plugin %r: %s (its contribution is skipped)", plugin_name, error)
                if plugin_name in self.infos:  # so that `phy plugins` shows it
                    self.infos[plugin_name].error = error
                continue
            for descriptor in result or ():
                name = getattr(descriptor, "name", None)
                if name in by_name:
                    raise PluginError(
                        f"{hook_name}: the name {name!r} is given by both plugin "
                        f"{by_name[name]!r} and plugin {plugin_name!r}; disable one of them "
                        "(--disable NAME)"
                    )
                by_name[name] = plugin_name
                collected.append(descriptor)
        return collected

    def collect_by_name(self, hook_name: str, **kwargs: Any) -> dict[str, Any]:
        """Like `collect`, as a dictionary keyed by descriptor name."""
        return {d.name: d for d in self.collect(hook_name, **kwargs)}


def create_plugin_manager(
    settings=None,
    enabled: Iterable[str] | None = None,
    disabled: Iterable[str] = (),
    autoload: bool | None = None,
) -> PhyPluginManager:
    """Create a plugin manager with the plugin set chosen by settings and arguments.

    Parameters
    ----------
    settings : Settings or None
        Read for ``plugins.enabled`` (list of names, or absent for all) and
        ``plugins.disabled`` (list of names); each plugin's `phy_configure`
        hook receives it.
    enabled, disabled : iterables of str
        From the command line (``--plugins a,b``, ``--disable c``).
        `enabled` replaces the setting; `disabled` adds to it.
    autoload : bool or None
        See `PhyPluginManager.load_entry_point_plugins`.
    """
    pm = PhyPluginManager()
    if settings is not None:
        if enabled is None:
            enabled = settings.get("plugins.enabled", None)
        disabled = list(disabled) + list(settings.get("plugins.disabled", None) or [])
    pm.load_entry_point_plugins(enabled=enabled, disabled=disabled, autoload=autoload)
    if settings is not None:
        pm.hook.phy_configure.call_historic(kwargs=dict(settings=settings))
    return pm
