"""Small frozen descriptors that plugins return from the ``phy_register_*`` hooks.

A new *kind* of contribution earns a hook; a new algorithm is just one more
descriptor returned by an existing hook. Each descriptor names its
contribution, says what it does in one line, and carries the callable that
does the work. Nothing here computes anything.

Factories receive a `Services` bunch: the public objects of a session (the
data model, the clustering, the settings, the plugin manager), never a
controller's private attributes.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .bunch import Bunch

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"Invalid {kind} name {name!r}: use lower-case letters, digits, '_' or '-', "
            "starting with a letter."
        )


class Services(Bunch):
    """The public services handed to plugin factories.

    Keys (any may be absent when a command does not have them):
    ``model`` (a `DataModel`), ``clustering`` (a `Clustering`), ``settings``
    (a `Settings`), ``plugin_manager`` (a `PhyPluginManager`).
    """


@dataclass(frozen=True)
class Command:
    """A ``phy`` subcommand.

    Attributes
    ----------
    name : str
        The subcommand, as typed: ``phy <name>``.
    help : str
        One line shown by ``phy --help``.
    run : callable
        ``run(args, services) -> int | None``: the exit code (None means 0).
        `services` holds ``settings`` and ``plugin_manager``.
    add_arguments : callable or None
        ``add_arguments(parser)`` adds the command's own arguments to its
        `argparse.ArgumentParser`.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace, Services], int | None]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    def __post_init__(self) -> None:
        _check_name("command", self.name)


@dataclass(frozen=True)
class Stage:
    """A processing stage of a pipeline (detection: filter, threshold, ...).

    Attributes
    ----------
    name : str
        Unique name, used in parameter files to choose this implementation.
    kind : str
        The pipeline slot it fills, e.g. ``'filter'``, ``'detector'``.
    description : str
        One line.
    factory : callable
        ``factory(**parameters) -> stage object``.
    parameters : mapping
        Parameter names and their default values.
    requires : tuple of str
        Stage kinds that must run before this one.
    """

    name: str
    kind: str
    description: str
    factory: Callable[..., Any]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name("stage", self.name)


@dataclass(frozen=True)
class ClusteringAlgorithm:
    """An automatic clustering algorithm.

    ``run(features, masks, parameters, reporter) -> spike_clusters``, where
    `reporter` is a `ProgressReporter` (or None).
    """

    name: str
    description: str
    run: Callable[..., Any]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name("clustering algorithm", self.name)


@dataclass(frozen=True)
class ClusterStatistic:
    """A per-cluster value, cached by cluster id (ids are never reused).

    ``compute(model, spike_ids) -> value`` for the spikes of one cluster,
    e.g. the mean waveform or the mean masked features.
    """

    name: str
    description: str
    compute: Callable[[Any, Any], Any]

    def __post_init__(self) -> None:
        _check_name("statistic", self.name)


@dataclass(frozen=True)
class ClusterMetric:
    """A scalar per cluster: a column of the cluster table, or a wizard quality.

    ``factory(services) -> metric`` where ``metric(cluster_id) -> float``;
    higher means better for a quality.
    """

    name: str
    description: str
    factory: Callable[[Services], Callable[[int], float]]

    def __post_init__(self) -> None:
        _check_name("metric", self.name)


@dataclass(frozen=True)
class ClusterSimilarity:
    """A similarity between two clusters, used by the wizard to propose matches.

    ``factory(services) -> similarity`` where
    ``similarity(cluster_0, cluster_1) -> float``; higher means more similar.
    """

    name: str
    description: str
    factory: Callable[[Services], Callable[[int, int], float]]

    def __post_init__(self) -> None:
        _check_name("similarity", self.name)
