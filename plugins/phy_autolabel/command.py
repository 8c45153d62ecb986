"""``phy label-auto SORTING``: quality metrics, then "good" labels for the clear single units."""

from __future__ import annotations

import argparse
from dataclasses import fields

from phy_core.descriptors import Command, Services

from .quality import MetricParameters
from .rule import GoodRule


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sorting", help="a .kwik file (its main clustering) or a template "
                        "directory")
    parser.add_argument("--channel-group", type=int, default=None,
                        help="Kwik only: label this channel group (default: all)")
    parser.add_argument("--overwrite-labels", action="store_true",
                        help="decide every cluster again, also those labelled by hand")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the metrics and the decisions, save nothing")
    rule = parser.add_argument_group("rule thresholds (see phy_autolabel.rule)")
    for f in fields(GoodRule):
        rule.add_argument(_option(f.name), type=type(f.default), default=None,
                          metavar=f.name.split("_")[0].upper(),
                          help=f"default {f.default:g}")
    metrics = parser.add_argument_group("metrics")
    for name in ("refractory_period_ms", "censored_period_ms", "n_isolation_channels"):
        default = MetricParameters.__dataclass_fields__[name].default
        metrics.add_argument(_option(name), type=type(default), default=None,
                             help=f"default {default:g}")


def _run(args: argparse.Namespace, services: Services) -> int:
    from phy_core.progress import ProgressReporter, show_progress

    from .label import label_clusters

    rule = GoodRule(**{f.name: getattr(args, f.name) for f in fields(GoodRule)
                       if getattr(args, f.name) is not None})
    parameters = MetricParameters(**{
        name: getattr(args, name) for name in ("refractory_period_ms", "censored_period_ms",
                                               "n_isolation_channels")
        if getattr(args, name) is not None})
    reporter = ProgressReporter()
    reporter.set_progress_message("Quality metrics: {progress:.0f}%")
    reporter.set_complete_message("Quality metrics done.")
    with show_progress(reporter):
        results = label_clusters(args.sorting, rule=rule, parameters=parameters,
                                 channel_group=args.channel_group,
                                 overwrite_labels=args.overwrite_labels, dry_run=args.dry_run,
                                 reporter=reporter)
    for result in results:
        where = "" if result.channel_group is None else f" (channel group {result.channel_group})"
        print(f"{result.path}{where}")
        print(result.table())
        verb = "would label" if args.dry_run else "labelled"
        print(f"{len(result.good)} good clusters of {len(result.quality)}; {verb} "
              f"{len(result.changed)} changed.")
    return 0


label_auto_command = Command(
    name="label-auto",
    help="quality metrics of every cluster; label the clear single units good",
    run=_run,
    add_arguments=_add_arguments,
)
