"""The ``plugins`` and ``describe`` commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from phy_core.descriptors import Command, Services
from phy_core.errors import PhyError


def _add_plugins_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_plugins(args: argparse.Namespace, services: Services) -> int:
    infos = services.plugin_manager.plugin_infos()
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return 0
    if not infos:
        print("No plugins found (is phy installed with `pip install`?).")
    for info in infos:
        origin = f"{info.distribution} {info.version}" if info.distribution else "(not installed)"
        print(f"{info.name:<16} {info.status:<9} {origin}")
        print(f"    module: {info.module}")
        if info.hooks:
            print(f"    hooks:  {', '.join(info.hooks)}")
        if info.error:
            print(f"    error:  {info.error}")
    return 0


plugins_command = Command(
    name="plugins",
    help="list the plugins found, their distribution, hooks and load errors",
    run=_run_plugins,
    add_arguments=_add_plugins_arguments,
)


def _add_describe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the dataset to describe (file, directory or pseudo-path)")
    parser.add_argument("--channel-group", type=int, default=None, help="channel group (shank)")
    parser.add_argument("--clustering", default=None, help="clustering name (default: main)")


def open_model(services: Services, path: str, **options):
    """Open a dataset with whichever plugin reads it; a clear error if none does."""
    pm = services.plugin_manager
    options = {key: value for key, value in options.items() if value is not None}
    model = pm.hook.phy_open_model(path=Path(path), options=options)
    if model is None:
        readers = [
            pm.get_name(impl.plugin) for impl in pm.hook.phy_open_model.get_hookimpls()
        ]
        if not Path(path).exists() and ":" not in path:
            raise PhyError(f"{path}: no such file or directory.")
        raise PhyError(
            f"{path}: no plugin reads this dataset (readers tried: "
            f"{', '.join(readers) or 'none are loaded'}). See `phy plugins`."
        )
    return model


def _run_describe(args: argparse.Namespace, services: Services) -> int:
    model = open_model(
        services, args.path, channel_group=args.channel_group, clustering=args.clustering
    )
    try:
        print(model.describe())
    finally:
        model.close()
    return 0


describe_command = Command(
    name="describe",
    help="print a summary of a dataset (spikes, clusters, channels, duration)",
    run=_run_describe,
    add_arguments=_add_describe_arguments,
)
