"""phy's own commands (``phy plugins``, ``phy describe``), contributed as a plugin.

They come through the same `phy_commands` hook and entry-point group as any
lab's commands.
"""

from phy_core import hookimpl

from .commands import describe_command, plugins_command


@hookimpl(trylast=True)
def phy_commands():
    return [plugins_command, describe_command]
