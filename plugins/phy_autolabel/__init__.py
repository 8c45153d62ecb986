"""Automatic "good" labels: quality metrics per cluster and a conservative rule.

Hooks only here; the work is in the submodules, imported when it runs:
`metrics` (the metrics as functions of arrays), `sources` (reading what a
sorting has, out of core), `pages` (a bound on the memory-mapped pages those
reads keep), `kernels` (their numba loops), `quality` (the metrics of every
cluster), `rule`
(the thresholds), `label` (deciding and saving), `command` (``phy
label-auto``).
"""

from __future__ import annotations

from phy_core import hookimpl


def label_clusters(path, **kwargs):
    """See `phy_autolabel.label.label_clusters`."""
    from .label import label_clusters as run

    return run(path, **kwargs)


@hookimpl(trylast=True)
def phy_commands():
    from .command import label_auto_command

    return [label_auto_command]
