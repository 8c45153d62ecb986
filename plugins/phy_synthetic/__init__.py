"""Synthetic datasets with ground truth: the ``synthetic:`` reader and ``phy demo``."""

from phy_core import hookimpl


@hookimpl(trylast=True)
def phy_open_model(path, options):
    text = str(path)
    if not text.startswith("synthetic:"):
        return None
    from .features import open_synthetic

    return open_synthetic(text, options)


@hookimpl(trylast=True)
def phy_commands():
    from .demo import demo_command
    from .synth_command import synth_command

    return [demo_command, synth_command]
