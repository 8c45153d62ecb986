"""The plugin contract of phy's core: every hook a plugin may implement.

Hooks are grouped by the phase in which phy calls them. Implement a hook by
defining a function of the same name, decorated with `phy_core.hookimpl`, in
a module that your package exposes through the ``phy.plugins`` entry-point
group. A hook implementation may accept fewer arguments than the
specification lists (pluggy passes only those it names), never more or
differently spelled ones: phy refuses such a plugin and says why.

The ``phy_register_*`` hooks return lists of small frozen descriptors (see
`phy_core.descriptors`); phy collects the lists of every plugin. Names must
be unique per kind: a duplicate is reported with both plugins named.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .descriptors import (
        ClusteringAlgorithm,
        ClusterMetric,
        ClusterSimilarity,
        ClusterStatistic,
        Command,
        Stage,
    )
    from .model import DataModel
    from .settings import Settings

PROJECT_NAME = "phy"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- Start-up -----------------------------------------------------------------


@hookspec(historic=True)
def phy_configure(settings: Settings) -> None:
    """Configure the plugin with the session's settings.

    Called once when the plugin manager is set up, after the settings are
    loaded. Historic: a plugin registered later is called on registration
    with the same settings. Use it to add defaults (``settings.add_defaults``)
    or read the plugin's own options. Return value ignored.
    """


@hookspec
def phy_commands() -> list[Command]:
    """Return the `Command` descriptors this plugin adds to the ``phy`` CLI.

    Called once when the command line is assembled, before arguments are
    parsed. Each command becomes ``phy <name>``; its ``run(args, services)``
    is called when the user chooses it.
    """


# -- Data ---------------------------------------------------------------------


@hookspec(firstresult=True)
def phy_open_model(path: Path, options: Mapping[str, Any]) -> DataModel | None:
    """Open the dataset at `path` if this plugin reads it, else return None.

    Who reads this path? The first non-None result wins, so a plugin that
    does not recognise the path must return None quickly (look at the
    suffix, or a marker file; no heavy work). Built-in readers are marked
    ``trylast`` so that a lab's own reader takes precedence.

    Parameters
    ----------
    path : Path
        The path the user gave, as given (a file, a directory, or a
        pseudo-path such as ``synthetic:``).
    options : mapping
        Reader options from the command line or the caller
        (e.g. ``channel_group``, ``clustering``). Ignore unknown ones.

    Returns
    -------
    model : DataModel or None
        An object fulfilling the `phy_core.model.DataModel` protocol.
        Raise an exception with a clear message if the path is yours but
        cannot be read; return None if it is not yours.
    """


# -- Processing ---------------------------------------------------------------


@hookspec
def phy_register_stages() -> list[Stage]:
    """Return the pipeline `Stage` descriptors this plugin provides.

    Collected from every plugin when a pipeline (e.g. spike detection) is
    assembled; the parameter file chooses one stage per kind by name.
    """


@hookspec
def phy_register_clustering_algorithms() -> list[ClusteringAlgorithm]:
    """Return the automatic `ClusteringAlgorithm` descriptors of this plugin.

    Collected when ``phy cluster-auto`` or a recluster action runs.
    """


# -- Cluster statistics and the wizard ----------------------------------------


@hookspec
def phy_register_statistics() -> list[ClusterStatistic]:
    """Return per-cluster `ClusterStatistic` descriptors (cached by cluster id).

    Collected when a session opens a dataset; views and metrics read them.
    """


@hookspec
def phy_register_metrics() -> list[ClusterMetric]:
    """Return scalar per-cluster `ClusterMetric` descriptors.

    Collected when a session opens a dataset; each becomes a column of the
    cluster table and can be chosen as the wizard's quality.
    """


@hookspec
def phy_register_quality() -> list[ClusterMetric]:
    """Return `ClusterMetric` descriptors meant to rank clusters in the wizard.

    The wizard uses the one named by the setting ``wizard.quality``, or the
    first one found if the setting is absent. Higher is better.
    """


@hookspec
def phy_register_similarity() -> list[ClusterSimilarity]:
    """Return `ClusterSimilarity` descriptors used to propose closest matches.

    The wizard uses the one named by the setting ``wizard.similarity``, or
    the first one found if the setting is absent. Higher is more similar.
    """
