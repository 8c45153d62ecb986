"""``phy demo``: the whole path phy has today, on built-in synthetic data with ground truth.

1. Synthesize a raw recording (``.dat`` + ``.prb`` + ``.prm`` + ground truth),
   as ``phy synth`` does.
2. Detect its spikes (``phy detect``): filter, thresholds, flood fill,
   alignment, PCA features, written to ``.kwik``/``.kwx``; compare the
   detected spikes with the true ones.
3. Open the Kwik file through the reader plugins, as ``phy describe`` does.
4. Cluster it automatically (``phy cluster-auto``, masked EM) and compare
   the clusters with the true units (``phy evaluate``).
5. Curate: the GUI is not built yet, so the demo curates a synthetic
   over-split clustering at the level of features: the
   wizard (with the plugins' quality and similarity functions) proposes the
   best cluster and its closest match, close matches are merged, finished
   units are labelled good, one merge is undone and redone, the result is
   saved through the model and compared with the ground truth.
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
    parser.add_argument("--output-dir", default=None,
                        help="keep the recording and Kwik files here (default: a temporary "
                        "folder, deleted at the end)")
    parser.add_argument("--probe", default="linear32", help="built-in probe (default linear32)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="recording duration in seconds (default 30)")
    parser.add_argument("--n-units", type=int, default=10, help="true units (default 10)")
    parser.add_argument("--n-channels", type=int, default=32, help="channels (default 32)")
    parser.add_argument("--n-spikes", type=int, default=20_000, help="spikes (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--max-distance", type=float, default=2.0,
        help="merge the proposed match when the similarity is above minus this (default 2.0)",
    )


def _detection_demo(args: argparse.Namespace, services: Services, folder) -> None:
    """Steps 1-4: synthesize, detect, describe, cluster; each compared with the ground truth."""
    from phy_commands.commands import open_model
    from phy_core.progress import ProgressReporter, show_progress
    from phy_detect.evaluation import detection_report
    from phy_detect.executors import make_executor
    from phy_detect.runner import detect

    from .recording import synthesize_recording

    print(f"1. Synthesizing {args.duration:g} s on the {args.probe} probe in {folder}")
    rec = synthesize_recording(folder, name="demo", probe=args.probe, duration_s=args.duration,
                               seed=args.seed, overwrite=True)
    print(f"   {rec.n_units} units, {rec.n_spikes} spikes, {rec.n_channels} channels\n")
    print("2. Detecting spikes")
    reporter = ProgressReporter()
    reporter.set_progress_message("detecting ({progress:.0f}%)")
    executor = make_executor("processes")
    t0 = time.perf_counter()
    try:
        with show_progress(reporter):
            kwik = detect(rec.prm_path, plugin_manager=services.plugin_manager,
                          executor=executor, overwrite=True, reporter=reporter)
    finally:
        executor.close()
    elapsed = time.perf_counter() - t0
    model = open_model(services, str(kwik))
    gt = np.load(rec.groundtruth_path)
    report = detection_report(model.spike_samples_fractional, gt["spike_samples"],
                              gt["spike_clusters"], model.sample_rate)
    print(f"   {model.n_spikes} spikes detected in {elapsed:.1f} s "
          f"({args.duration / elapsed:.1f}x real time); {report.n_false} match no true spike")
    print("   unit   SNR  spikes  recall (within 0.4 ms)")
    for unit, recall, n in zip(report.units, report.recall, report.n_true, strict=True):
        print(f"   {unit:>4} {gt['unit_snr'][unit]:>5.1f} {n:>7} {recall:>7.2f}")
    print("\n3. The Kwik file, opened through the reader plugins:")
    print("   " + model.describe().replace("\n", "\n   ") + "\n")
    model.close()

    from phy_evaluate.command import summary_lines
    from phy_evaluate.metrics import evaluate
    from phy_masked_em.command import cluster_kwik

    print("4. Automatic clustering (masked EM), compared with the ground truth")
    t0 = time.perf_counter()
    info = cluster_kwik(kwik)
    model = open_model(services, str(kwik))
    result = evaluate(gt["spike_samples"], gt["spike_clusters"], model.spike_samples,
                      model.spike_clusters, model.sample_rate, unit_snr=gt["unit_snr"])
    model.close()
    print(f"   {info['n_clusters']} clusters in {time.perf_counter() - t0:.1f} s")
    for line in summary_lines(result):
        print("   " + line)
    print()


def _run(args: argparse.Namespace, services: Services) -> int:
    import tempfile
    from pathlib import Path

    if args.output_dir is not None:
        _detection_demo(args, services, Path(args.output_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="phy-demo-") as folder:
            _detection_demo(args, services, Path(folder))
    print("5. Curating a synthetic over-split clustering with the wizard (the GUI is not built "
          "yet)\n")
    return _curation_demo(args, services)


def _curation_demo(args: argparse.Namespace, services: Services) -> int:
    from phy_commands.commands import open_model
    from phy_core.progress import ProgressReporter, show_progress
    from phy_core.session import Session

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
    print("\nThe GUI is not built yet: step 5 ran the curation engine (clustering, undo/redo, "
          "wizard, plugin statistics) on a synthetic over-split clustering.")
    return 0 if n_good == len(accuracy) else 1


demo_command = Command(
    name="demo",
    help="synthesize a recording, detect, cluster, curate; check each step against ground truth",
    run=_run,
    add_arguments=_add_arguments,
)
