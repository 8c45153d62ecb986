"""Ground-truth evaluation of a spike sorting: ``phy evaluate SORTING GROUND_TRUTH``.

The matching rules and the reported numbers are defined in `phy_evaluate.metrics`.
"""

from phy_core import hookimpl


@hookimpl(trylast=True)
def phy_commands():
    from .command import evaluate_command

    return [evaluate_command]
