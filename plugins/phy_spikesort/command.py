"""``phy spikesort PARAMS.prm``: the whole sort from the command line, with a summary."""

from __future__ import annotations

import argparse

from phy_core.descriptors import Command, Services


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prm", help="klusta-style parameter file (.prm)")
    parser.add_argument("--output-dir", default=None,
                        help="where to write the .kwik/.kwx files (default: next to the PRM)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing Kwik files and sort from scratch (without it, "
                        "an interrupted sort of the same recording is resumed)")
    parser.add_argument("--channel-group", type=int, default=None,
                        help="cluster only this channel group (detection covers them all)")
    parser.add_argument("--n-workers", type=int, default=None,
                        help="local detection worker processes (default: one per core)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run the detection chunks on a Dask cluster (tcp://host:8786); "
                        "needs `pip install phy[dask]`")
    parser.add_argument("--chunk-size", type=float, default=None, metavar="SECONDS",
                        help="detection chunk duration (default: the PRM's chunk_size_seconds)")
    parser.add_argument("--template-matching", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="after the clustering, refine its clusters into templates and match "
                        "them (phy template-match); default: as the PRM's template_matching "
                        "dict says (off without one)")
    parser.add_argument("--auto-label", action=argparse.BooleanOptionalAction, default=True,
                        help="at the end, label the clear single units good (phy label-auto; "
                        "labels set by hand are kept); default: on")


def summary_lines(result) -> list[str]:
    """The summary printed at the end of a sort (`pipeline.sort_recording`'s result)."""
    speed = result.duration_s / result.total_s if result.total_s > 0 else float("inf")
    lines = [f"Sorted {result.duration_s:.1f} s of recording: {result.n_spikes} spikes in "
             f"{result.n_clusters} clusters (noise and MUA included)."]
    if len(result.groups) > 1:
        lines += [f"  channel group {g}: {n} spikes, {k} clusters"
                  for g, (n, k) in sorted(result.groups.items())]
    detection = "resumed, not redone" if result.resumed else f"{result.detect_s:.1f} s"
    matching = f"template matching {result.tmatch_s:.1f} s, " if result.get(
        "template_dirs") else ""
    lines.append(f"Detection {detection}, clustering {result.cluster_s:.1f} s, {matching}total "
                 f"{result.total_s:.1f} s ({speed:.2f}x real time).")
    if result.get("n_good") is not None:
        lines.append(f"Labelled {result.n_good} clusters good automatically ({result.label_s:.1f} "
                     "s; phy label-auto shows why the others are not).")
    lines.append(f"Wrote {result.kwik_path} and {result.kwik_path.with_suffix('.kwx').name}.")
    lines += [f"Wrote the template directory {path}." for _, path in
              sorted(result.get("template_dirs", {}).items())]
    return lines


def _run(args: argparse.Namespace, services: Services) -> int:
    from phy_core.progress import ProgressReporter, show_progress

    from .pipeline import sort_recording

    detect_reporter = ProgressReporter()
    detect_reporter.set_progress_message("Detecting spikes ({progress:.0f}%)")
    detect_reporter.set_complete_message("Detection done.")
    cluster_reporter = ProgressReporter()
    tmatch_reporter = ProgressReporter()
    with show_progress(detect_reporter), show_progress(cluster_reporter), \
            show_progress(tmatch_reporter):
        result = sort_recording(args.prm, output_dir=args.output_dir, overwrite=args.overwrite,
                                plugin_manager=services.plugin_manager,
                                channel_group=args.channel_group, chunk_size_s=args.chunk_size,
                                n_workers=args.n_workers, scheduler=args.scheduler,
                                detect_reporter=detect_reporter,
                                cluster_reporter=cluster_reporter,
                                template_matching=args.template_matching,
                                tmatch_reporter=tmatch_reporter,
                                auto_label=args.auto_label)
    print("\n".join(summary_lines(result)))
    return 0


spikesort_command = Command(
    name="spikesort",
    help="detect and cluster the spikes of a recording (phy detect, then phy cluster-auto on "
    "every channel group, then optionally phy template-match); resumes an interrupted sort",
    run=_run,
    add_arguments=_add_arguments,
)
