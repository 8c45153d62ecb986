"""``phy demo``: curate a synthetic over-split dataset with what phy has today.

Until spike detection and automatic clustering land, the demo starts from a
synthetic clustering in which every true unit is split in parts. It goes
through the whole curation path a user takes in the GUI, in the terminal:
the reader plugin opens the dataset, the wizard (with the quality and
similarity functions of the plugins) proposes the best cluster and its
closest match, close matches are merged, each finished unit is labelled
good, one merge is undone and redone, the result is saved through the model
and compared with the ground truth.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from phy_core.descriptors import Command, Services


def unit_accuracies(true_units: np.ndarray, spike_clusters: np.ndarray) -> np.ndarray:
    """Accuracy of each true unit after matching units to clusters (Hungarian).

    The accuracy of a unit is ``matches / (matches + misses + false positives)``
    with its assigned cluster; 0 for a unit with no cluster. Spikes are the
    same in both (no timing tolerance is needed at the feature level).
    """
    from scipy.optimize import linear_sum_assignment

    units, unit_index = np.unique(true_units, return_inverse=True)
    clusters, cluster_index = np.unique(spike_clusters, return_inverse=True)
    overlap = np.zeros((len(units), len(clusters)), dtype=np.int64)
    np.add.at(overlap, (unit_index, cluster_index), 1)
    unit_sizes = overlap.sum(axis=1)
    cluster_sizes = overlap.sum(axis=0)
    union = unit_sizes[:, None] + cluster_sizes[None, :] - overlap
    accuracy = overlap / np.maximum(union, 1)
    rows, cols = linear_sum_assignment(-accuracy)
    result = np.zeros(len(units))
    result[rows] = accuracy[rows, cols]
    return result


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-units", type=int, default=10, help="true units (default 10)")
    parser.add_argument("--n-channels", type=int, default=32, help="channels (default 32)")
    parser.add_argument("--n-spikes", type=int, default=20_000, help="spikes (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--max-distance", type=float, default=2.0,
        help="merge the proposed match when the similarity is above minus this (default 2.0)",
    )


def _run(args: argparse.Namespace, services: Services) -> int:
    from phy_commands.commands import open_model
    from phy_core.progress import ProgressReporter, show_progress
    from phy_core.session import Session

    print(__doc__.split("\n\n")[1].replace("\n", " ").strip(), "\n")
    path = (f"synthetic:n_units={args.n_units},n_channels={args.n_channels},"
            f"n_spikes={args.n_spikes},seed={args.seed}")
    model = open_model(services, path)
    print(model.describe(), "\n")
    session = Session(model, services.plugin_manager, services.settings)
    clustering, wizard = session.clustering, session.wizard
    similarity = session.similarity_function
    print(f"quality: {session.quality.name}, similarity: {session.similarity.name}\n")

    t0 = time.perf_counter()
    wizard.start()
    reporter = ProgressReporter()
    reporter.value_max = clustering.n_clusters
    reporter.set_progress_message("curating clusters ({progress:.0f}%)")
    reporter.set_complete_message("Curation done.")
    merges = []
    with show_progress(reporter):
        while wizard.best is not None:
            wizard.pin()
            # Merge the closest match while it is close enough: the same unit, split.
            while (wizard.match is not None
                   and similarity(wizard.best, wizard.match) >= -args.max_distance):
                pair = list(wizard.selection)
                up = clustering.merge(pair)
                merges.append((pair, up.added[0]))
                reporter.increment()
            best = wizard.best  # after the merges
            clustering.set_group([best], "good")
            reporter.increment()
            wizard.unpin()
            wizard.next_best()
            if wizard.best == best:  # the end of the best list
                break
        reporter.set_complete()
    elapsed = time.perf_counter() - t0

    for pair, new in merges:
        print(f"  merged {pair[0]:>4} + {pair[1]:>4} -> {new}")
    print(f"\n{len(merges)} merges, {clustering.n_clusters} clusters left, "
          f"{wizard.n_processed} labelled, in {elapsed * 1000:.0f} ms")
    if merges:
        # Undo back to the last merge (through the labels set after it), then redo it all.
        undone = [clustering.undo()]
        while undone[-1].description != "merge":
            undone.append(clustering.undo())
        print(f"undo x{len(undone)}: the last merge is undone, clusters "
              f"{undone[-1].added} are back and {undone[-1].deleted} is gone")
        redone = [clustering.redo() for _ in undone]
        print(f"redo x{len(redone)}: cluster {redone[0].added} is back, "
              f"{clustering.n_clusters} clusters")
    session.save()
    accuracy = unit_accuracies(model.spike_units, model.saved["spike_clusters"])
    print("\nGround truth: accuracy per unit (matches / (matches + misses + false positives))")
    print("  " + " ".join(f"{a:.2f}" for a in accuracy))
    n_good = int(np.sum(accuracy >= 0.8))
    print(f"  {n_good} of {len(accuracy)} units at accuracy >= 0.8")
    print("\nDetection and automatic clustering are not built yet; this demo ran the "
          "curation engine (clustering, undo/redo, wizard, plugin statistics) on a "
          "synthetic over-split clustering.")
    return 0 if n_good == len(accuracy) else 1


demo_command = Command(
    name="demo",
    help="curate a synthetic dataset with the wizard and undo/redo; check it against ground truth",
    run=_run,
    add_arguments=_add_arguments,
)
