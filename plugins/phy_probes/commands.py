"""The ``phy probes`` command: list built-in probes, describe a probe, write it as ``.prb``."""

from __future__ import annotations

import argparse
from pathlib import Path

from phy_core.descriptors import Command, Services

from .builtin import builtin_description, list_probes, load_probe
from .prb import ProbeError, write_prb


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("probe", nargs="?", default=None, metavar="NAME_OR_PATH",
                        help="a built-in probe name, or a .prb / probeinterface .json file "
                        "(without it: list the built-in probes)")
    parser.add_argument("--write", metavar="OUT.prb", default=None,
                        help="write the probe as a .prb file (graphs included)")


def _run(args: argparse.Namespace, services: Services) -> int:
    if args.probe is None:
        if args.write:
            raise ProbeError("--write needs a probe: phy probes NAME_OR_PATH --write OUT.prb")
        print("Built-in probes (phy probes NAME for details):")
        for name in list_probes():
            probe = load_probe(name)
            n_groups = len(probe.channel_groups)
            print(f"  {name:<14} {len(probe.all_channels):>5} channels  {n_groups:>2} "
                  f"group{'s' if n_groups > 1 else ' '}  {builtin_description(name)}")
        return 0
    probe = load_probe(args.probe)
    print(probe.describe())
    if args.write:
        out = Path(args.write)
        if out.suffix.lower() != ".prb":
            raise ProbeError(f"{out}: --write writes a .prb file; give a path ending in .prb.")
        write_prb(out, probe.to_channel_groups())
        print(f"Wrote {out}.")
    return 0


probes_command = Command(
    name="probes",
    help="list the built-in probes, describe a probe file, or convert it to .prb",
    run=_run,
    add_arguments=_add_arguments,
)
