"""Automatic clustering with the masked EM algorithm (Kadir, Goodman & Harris, 2014).

Hooks only: the algorithm lives in the submodules, imported when it runs:
`data` (sparse masked data read in row blocks), `starts` (mask-based starting
clusters), `model` (M-step), `em` (E-step, deletion, score), `splits`, `merge`,
`kernels` (numba) and `loop` (the driver, `masked_em`); `command` is
``phy cluster-auto``.
"""

from __future__ import annotations

from phy_core import hookimpl
from phy_core.descriptors import ClusteringAlgorithm, Command

DESCRIPTION = "Masked classification EM (KlustaKwik 2): Gaussian mixture on masked features."


def _run(features, masks, parameters, reporter=None):
    from .loop import masked_em

    return masked_em(features, masks, parameters, reporter)


@hookimpl(trylast=True)
def phy_register_clustering_algorithms():
    from .loop import DEFAULT_PARAMETERS

    return [ClusteringAlgorithm("masked_em", DESCRIPTION, _run, dict(DEFAULT_PARAMETERS))]


def _add_arguments(parser) -> None:
    from .command import add_arguments

    add_arguments(parser)


def _run_command(args, services):
    from .command import run

    return run(args, services)


@hookimpl(trylast=True)
def phy_commands():
    return [Command("cluster-auto", "Cluster the spikes of a .kwik file with the masked EM.",
                    _run_command, _add_arguments)]
