"""``phy template-match PARAMS.prm FILE.kwik --output-dir DIR``."""

from __future__ import annotations

import argparse

from phy_core.descriptors import Command, Services


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prm", help="the recording's parameter file (.prm)")
    parser.add_argument("kwik", help="the sorted dataset (.kwik): one template per cluster")
    parser.add_argument("--output-dir", required=True,
                        help="the template directory to write (Kilosort / phy 2 layout)")
    parser.add_argument("--channel-group", type=int, default=None,
                        help="channel group (shank); default: the first")
    parser.add_argument("--clustering", default=None, help="clustering name (default: main)")
    parser.add_argument("--include-mua", action="store_true",
                        help="also make templates of the clusters of the MUA group")
    parser.add_argument("--include-noise", action="store_true",
                        help="also make templates of the clusters of the noise group")
    parser.add_argument("--refine-rounds", type=int, default=None,
                        help="rounds of template refinement (split, new templates from the "
                        "residual, merge) before the final matching (default 0)")
    parser.add_argument("--z-threshold", type=float, default=None,
                        help="eligibility: projection / its noise spread (default 5)")
    parser.add_argument("--chunk-size", type=float, default=None, metavar="SECONDS",
                        help="chunk duration (default 2 s); the result does not depend on it")
    parser.add_argument("--n-workers", type=int, default=None,
                        help="local worker processes (default: one per core)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run the chunks on a Dask cluster (tcp://host:8786)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a template directory already in --output-dir")


def _run(args: argparse.Namespace, services: Services) -> int:
    from phy_core.progress import ProgressReporter, show_progress
    from phy_detect.executors import make_executor

    from .runner import template_match

    options = {}
    if args.z_threshold is not None:
        options["z_threshold"] = args.z_threshold
    if args.chunk_size is not None:
        options["chunk_size_s"] = args.chunk_size
    if args.refine_rounds is not None:
        options["refine_rounds"] = args.refine_rounds
    reporter = ProgressReporter()
    reporter.set_progress_message("template matching ({progress:.0f}%)")
    reporter.set_complete_message("Template matching done.")
    executor = make_executor("processes", n_workers=args.n_workers, scheduler=args.scheduler)
    try:
        with show_progress(reporter):
            out = template_match(args.prm, args.kwik, args.output_dir,
                                 channel_group=args.channel_group, clustering=args.clustering,
                                 include_mua=args.include_mua,
                                 include_noise=args.include_noise, executor=executor,
                                 overwrite=args.overwrite, reporter=reporter, **options)
    finally:
        executor.close()
    print(f"Wrote {out}.")
    return 0


template_match_command = Command(
    name="template-match",
    help="re-detect a sorting's spikes against its clusters' templates (matching pursuit); "
    "writes a template directory",
    run=_run,
    add_arguments=_add_arguments,
)
