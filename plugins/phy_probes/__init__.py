"""Probes: .prb files (parsed as literals), probeinterface .json files, built-in probes, MEA.

Import `phy_probes.mea.MEA` and `phy_probes.builtin.load_probe` directly; this
module holds only the hook implementations, so loading the plugin is cheap.
"""

from phy_core import hookimpl


@hookimpl(trylast=True)
def phy_commands():
    from .commands import probes_command

    return [probes_command]
