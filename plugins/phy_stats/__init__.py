"""Cluster statistics, metrics, and the wizard's default quality and similarity."""

from phy_core import hookimpl


@hookimpl(trylast=True)
def phy_register_statistics():
    from .features import STATISTICS

    return STATISTICS


@hookimpl(trylast=True)
def phy_register_metrics():
    from .features import METRICS

    return METRICS


@hookimpl(trylast=True)
def phy_register_quality():
    from .features import QUALITY

    return QUALITY


@hookimpl(trylast=True)
def phy_register_similarity():
    from .features import SIMILARITY

    return SIMILARITY
