"""Descriptors for the GUI hooks (imports no Qt)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phy_core.descriptors import Services, _check_name


@dataclass(frozen=True)
class ViewSpec:
    """A view of the manual-clustering GUI.

    ``factory(services) -> widget``: called when the view is shown; imports
    Qt/VisPy inside. `services` holds the model, clustering, wizard, settings.
    """

    name: str
    title: str
    factory: Callable[[Services], Any]

    def __post_init__(self) -> None:
        _check_name("view", self.name)


@dataclass(frozen=True)
class ActionSpec:
    """A GUI action: a menu entry with an optional shortcut and snippet alias.

    ``callback(services, *args)`` runs the action.
    """

    name: str
    callback: Callable[..., Any]
    shortcut: str | None = None
    menu: str = "Actions"
    alias: str | None = None

    def __post_init__(self) -> None:
        _check_name("action", self.name)
