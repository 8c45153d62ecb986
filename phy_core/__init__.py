"""phy's microkernel: events, settings, clustering with undo/redo, the wizard,
the data-model protocol, the hook specifications and the plugin manager.

It imports only the standard library, numpy, pluggy and appdirs, and never a
plugin, Qt, VisPy or h5py (a test enforces it). Heavy names are imported
lazily so that ``import phy_core`` stays cheap for the CLI.
"""

from .bunch import Bunch
from .events import EventEmitter
from .hookspecs import hookimpl, hookspec

__all__ = [
    "Bunch",
    "ClusterMetadata",
    "Clustering",
    "DataModel",
    "EventEmitter",
    "PhyError",
    "ProgressReporter",
    "Settings",
    "UpdateInfo",
    "Wizard",
    "hookimpl",
    "hookspec",
]

_LAZY = {
    "Clustering": "clustering",
    "UpdateInfo": "clustering",
    "ClusterMetadata": "metadata",
    "DataModel": "model",
    "PhyError": "errors",
    "ProgressReporter": "progress",
    "Settings": "settings",
    "Wizard": "wizard",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'phy_core' has no attribute {name!r}")
