"""The GUI hooks: what plugins contribute to the manual-clustering GUI.

This module imports no Qt and no VisPy, so a headless run (the CLI, the
pipeline, the tests of the core) can load it and validate GUI plugins
without a display. It is found by phy_core through the ``phy.hookspecs``
entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from phy_core.hookspecs import hookspec

if TYPE_CHECKING:  # pragma: no cover
    from .descriptors import ActionSpec, ViewSpec


@hookspec
def phy_register_views() -> list[ViewSpec]:
    """Return the `ViewSpec` descriptors of the views this plugin provides.

    Collected when the GUI is assembled. A view's factory is called only
    when the GUI shows that view, so the plugin imports Qt/VisPy inside the
    factory, never at module level.
    """


@hookspec
def phy_register_actions() -> list[ActionSpec]:
    """Return the `ActionSpec` descriptors (menu entries, shortcuts, snippets).

    Collected when the GUI is assembled.
    """


@hookspec(historic=True)
def phy_gui_ready(gui: Any) -> None:
    """Called once the GUI window exists and its views are created.

    Historic: a plugin registered later is called too. Use the GUI's public
    services (``gui.services``), connect to its events (``select``,
    ``cluster``, ``request_save``). Return value ignored.
    """
