"""``phy detect PARAMS.prm``: spike detection from the command line."""

from __future__ import annotations

import argparse

from phy_core.descriptors import Command, Services


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prm", help="klusta-style parameter file (.prm)")
    parser.add_argument("--output-dir", default=None,
                        help="where to write the .kwik/.kwx files (default: next to the PRM)")
    parser.add_argument("--n-workers", type=int, default=None,
                        help="local worker processes (default: one per core)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run the chunks on a Dask cluster (tcp://host:8786); needs "
                        "`pip install phy[dask]`")
    parser.add_argument("--chunk-size", type=float, default=None, metavar="SECONDS",
                        help="chunk duration (default: the PRM's chunk_size_seconds)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing Kwik files")


def _run(args: argparse.Namespace, services: Services) -> int:
    from phy_core.progress import ProgressReporter, show_progress

    from .executors import make_executor
    from .runner import detect

    reporter = ProgressReporter()
    reporter.set_progress_message("detecting spikes ({progress:.0f}%)")
    reporter.set_complete_message("Detection done.")
    executor = make_executor("processes", n_workers=args.n_workers, scheduler=args.scheduler)
    try:
        with show_progress(reporter):
            kwik = detect(args.prm, output_dir=args.output_dir,
                          plugin_manager=services.plugin_manager, executor=executor,
                          chunk_size_s=args.chunk_size, overwrite=args.overwrite,
                          reporter=reporter)
    finally:
        executor.close()
    print(f"Wrote {kwik} and {kwik.with_suffix('.kwx')}.")
    return 0


detect_command = Command(
    name="detect",
    help="detect spikes in a recording (SpikeDetekt-style) and write .kwik/.kwx files",
    run=_run,
    add_arguments=_add_arguments,
)
