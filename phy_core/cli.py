"""The ``phy`` command line, assembled from plugins.

phy itself defines only the options common to every command (the plugin
set, verbosity). The subcommands, ``describe`` and ``plugins`` included,
come from plugins through the `phy_commands` hook, so the path from an
entry point to running code is the same for built-in and external plugins.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from .descriptors import Command, Services
from .errors import PhyError
from .log import add_console_handler, logger, set_level
from .plugins import AUTOLOAD_ENV, PhyPluginManager, create_plugin_manager
from .settings import Settings


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _common_options(suppress_defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before or after any subcommand."""
    # The full parser suppresses defaults so a subcommand's parser does not
    # overwrite what was given before the subcommand; values come from the pre-parse.
    default = argparse.SUPPRESS if suppress_defaults else None
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("plugin set and output")
    group.add_argument(
        "--plugins", type=_csv, default=default, metavar="A,B",
        help="load only these plugins (by name; see `phy plugins`), even with "
        f"{AUTOLOAD_ENV} set",
    )
    group.add_argument(
        "--disable", type=_csv, action="append", default=default, metavar="C",
        help="do not load these plugins (comma-separated, repeatable)",
    )
    group.add_argument("-v", "--verbose", action="store_true", default=default or False,
                       help="show debug messages")
    group.add_argument("-q", "--quiet", action="store_true", default=default or False,
                       help="show only warnings and errors")
    group.add_argument("--traceback", action="store_true", default=default or False,
                       help="show the full traceback on errors")
    return parser


def _version() -> str:
    try:
        return version("phy")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    """The full parser with one subparser per plugin command."""
    common = _common_options(suppress_defaults=True)
    parser = argparse.ArgumentParser(
        prog="phy",
        description="phy: spike sorting and electrophysiology data analysis. "
        "Every subcommand below is contributed by a plugin (see `phy plugins`).",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"phy {_version()}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for command in sorted(commands, key=lambda c: c.name):
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.help, parents=[common]
        )
        if command.add_arguments is not None:
            command.add_arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``phy`` command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options, _ = _common_options(suppress_defaults=False).parse_known_args(argv)
    add_console_handler()
    set_level("debug" if options.verbose else "warn" if options.quiet else "info")

    settings = Settings()
    disabled = [name for names in (options.disable or []) for name in names]
    pm: PhyPluginManager = create_plugin_manager(
        settings, enabled=options.plugins, disabled=disabled
    )
    try:
        commands = pm.collect("phy_commands")
    except PhyError as exc:
        logger.error("%s", exc)
        return 1
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "_command", None)
    if command is None:
        parser.print_help()
        return 0 if not argv else 2
    services = Services(settings=settings, plugin_manager=pm)
    try:
        code = command.run(args, services)
    except PhyError as exc:
        if options.traceback:
            raise
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.error("Interrupted.")
        return 130
    except BrokenPipeError:
        # The reader went away (`phy describe x | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
