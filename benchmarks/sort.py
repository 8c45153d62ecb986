"""Benchmark the whole sort: ``.dat`` in, detection, masked EM clustering (``.kwik`` out), then
template matching with refinement (a template directory out).

Usage::

    python benchmarks/sort.py [--channels 32,384] [--duration 20] [--seed 0]
                              [--data-dir /tmp/phy-bench] [--out-dir DIR]
                              [--no-template-matching] [--refine-rounds 2] [--timeline]

For each channel count (built-in probes ``linear32``, ``neuropixels1`` and
``dense1024``), the cached synthetic recording of ``--data-dir`` (written
once, as by ``benchmarks/detect.py``) is sorted with
`phy_spikesort.pipeline.sort_recording` (local worker processes for the
detection, the masked EM in the parent process) in a fresh interpreter, so
that the peak memory is that run's. The output goes to ``--out-dir``. Columns:

- ``detect s``, ``cluster s``, ``tmatch s``, ``total s``: wall-clock times of
  the phases and of the whole call (reading the PRM, worker start-up and
  Kwik writes included; not the interpreter start-up and imports).
- ``x RT``: recording seconds per wall-clock second of the whole sort;
  ``CPU s``: CPU seconds of the sort, its worker processes included (on a
  shared machine the wall-clock times vary with the load, CPU times less).
- ``RSS MB parent/worker``: peak RSS of the sorting process (which runs the
  clustering) and of the largest detection worker (``VmHWM``, sampled; see
  ``benchmarks/detect.py``).
- ``snr>=5``, ``snr>=3``: true units with that SNR sorted at accuracy >= 0.8
  (`phy_evaluate.metrics.evaluate`: spikes matched within 0.4 ms, Hungarian
  assignment of units to clusters), as ``k/n``; ``EM`` for the masked EM
  clustering (the Kwik file), ``TM`` for the final sorting (the template
  matching's directory: `phy_spikesort.pipeline.template_dir`).
- ``cluster CPU``: CPU time of the clustering phase (the masked EM, in the sorting
  process: opening the Kwik file, reading the features, the algorithm, saving).
- ``label s``: wall-clock time of the automatic "good" labels after the
  template matching (`phy_autolabel.label_clusters`: quality metrics of every
  cluster, then a conservative rule); included in ``total s``. With template
  matching, a worker decides the Kwik file's labels during the template
  matching (saved in this step), and the workers compute the template
  directory's metrics in shares in this step. ``label CPU``: their CPU time,
  as ``sorting process + workers`` (on a loaded machine the wall-clock time
  is several times more).
- ``false good``: clusters labelled good by `phy_autolabel` that match no
  true unit (best accuracy < 0.5), over the clusters labelled good: ``EM``
  for the masked EM's Kwik file, ``TM`` for the template directory.
- The line after a row lists the units at >= 3x that the final sorting
  misses (accuracy < 0.8), with their SNR and number of spikes.
- ``false clusters``: the same over all the clusters the final sorting
  proposes as units (the masked EM's: not its noise and MUA clusters 0 and
  1; the template matching's: all its templates).

With ``--timeline``, ``OUT_DIR/<recording>.timeline.txt`` shows where the sort's
time went (`_common.CpuTimeline`): each phase's wall-clock and CPU seconds per
thread of the sorting process and per worker process, then each one's share of a
core per 0.25 s with the log's messages. On a quiet machine, a phase whose CPU is
well under twice its wall-clock time (two cores) leaves a core idle.

A warm-up sort of a short recording runs first (untimed) so that the numba
kernels are compiled into their on-disk cache.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    PROBES,
    SEED,
    CpuTimeline,
    TreeMemory,
    add_recording_arguments,
    channel_counts,
    machine,
    recording,
    tree_cpu_seconds,
)

FALSE_UNIT_ACCURACY = 0.5


def evaluate_kwik(kwik: Path, gt_path: Path) -> dict:
    """Accuracy of the ``main`` clustering of every channel group against the ground truth."""
    import numpy as np

    from phy_evaluate.metrics import FALSE_UNIT_THRESHOLD, evaluate
    from phy_kwik.model import KwikModel

    samples, clusters, groups = [], [], {}
    with KwikModel(kwik) as model:
        channel_groups, rate = list(model.channel_groups), float(model.sample_rate)
    for g, group in enumerate(channel_groups):
        with KwikModel(kwik, channel_group=group) as model:
            # Cluster ids made unique across channel groups.
            offset = g * 10 ** 7
            samples.append(np.asarray(model.spike_samples, dtype=np.int64))
            clusters.append(np.asarray(model.spike_clusters, dtype=np.int64) + offset)
            groups.update({int(c) + offset: v for c, v in model.cluster_groups.items()})
    samples, clusters = np.concatenate(samples), np.concatenate(clusters)
    gt = np.load(gt_path)
    result = evaluate(gt["spike_samples"], gt["spike_clusters"], samples, clusters, rate,
                      unit_snr=gt["unit_snr"], cluster_groups=groups)
    s = result.summary
    units = np.isin(result.clusters, [c for c, v in groups.items() if v not in (0, 1)])
    false = units & (result.cluster_best_accuracy < FALSE_UNIT_THRESHOLD)
    return dict(n_units_5=s.n_units_snr_5, n_accurate_5=s.n_accurate_snr_5,
                n_units_3=s.n_units_snr_3, n_accurate_3=s.n_accurate_snr_3,
                n_good=s.n_good, n_false_good=s.n_false_good,
                n_unit_clusters=int(units.sum()), n_false_clusters=int(false.sum()))


def evaluate_template_dir(path: Path, gt_path: Path) -> dict:
    """Accuracy of a template directory's sorting against the ground truth."""
    import numpy as np

    from phy_evaluate.metrics import FALSE_UNIT_THRESHOLD, evaluate
    from phy_template.model import TemplateModel

    model = TemplateModel(path)
    gt = np.load(gt_path)
    result = evaluate(gt["spike_samples"], gt["spike_clusters"], model.spike_samples,
                      model.spike_clusters, float(gt["sample_rate"]), unit_snr=gt["unit_snr"],
                      cluster_groups=model.cluster_groups)
    s = result.summary
    # The units at >= 3x missed, with their spike counts: on a short recording, a unit with a
    # handful of spikes cannot make a template of its own.
    missed = np.flatnonzero((result.snr >= 3) & (result.accuracy < s.accuracy_threshold))
    return dict(tm_accurate_5=s.n_accurate_snr_5, tm_accurate_3=s.n_accurate_snr_3,
                tm_good=s.n_good, tm_false_good=s.n_false_good,
                tm_clusters=int(len(result.clusters)),
                tm_false=int((result.cluster_best_accuracy < FALSE_UNIT_THRESHOLD).sum()),
                tm_missed=[[int(result.units[k]), float(result.snr[k]),
                            int(result.n_spikes[k]), float(result.accuracy[k])]
                           for k in missed])


def child_run(prm: str, out_dir: str, evaluate: bool, refine_rounds: int | None,
              timeline: str | None = None) -> dict:
    import contextlib
    import logging

    from phy_core.progress import ProgressReporter
    from phy_spikesort.pipeline import sort_recording

    matching = False if refine_rounds is None else dict(refine_rounds=refine_rounds)
    cpu0 = tree_cpu_seconds()
    cpu_timeline = CpuTimeline() if timeline else None
    with TreeMemory() as tree, (cpu_timeline or contextlib.nullcontext()):
        if cpu_timeline is not None:
            logger = logging.getLogger("phy")
            logger.addHandler(cpu_timeline.handler)
            logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
        detect_reporter = ProgressReporter()
        # The workers' final high-water marks, read before they exit.
        detect_reporter.connect(tree.sample, event="complete")
        result = sort_recording(prm, output_dir=out_dir, overwrite=True,
                                detect_reporter=detect_reporter, template_matching=matching)
    if cpu_timeline is not None:
        logging.getLogger("phy").removeHandler(cpu_timeline.handler)
        ends = dict(detect=result.detect_s)
        ends.update(cluster=ends["detect"] + result.cluster_s)
        ends.update(tmatch=ends["cluster"] + result.tmatch_s)
        ends.update(label=result.total_s)
        Path(timeline).write_text(f"# {prm}\n{cpu_timeline.phases(ends)}\n"
                                  f"{cpu_timeline.table()}\n", encoding="utf-8")
    out = dict(channels=0, spikes=result.n_spikes, clusters=result.n_clusters,
               duration=result.duration_s, detect=result.detect_s, cluster=result.cluster_s,
               tmatch=result.tmatch_s, label=result.label_s, label_cpu=result.label_cpu_s,
               label_worker_cpu=result.get("label_worker_cpu_s", 0.0),
               cluster_cpu=result.cluster_cpu_s,
               total=result.total_s,
               cpu=tree_cpu_seconds() - cpu0,
               rss_parent=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               rss_worker=tree.max_kb / 1024)
    from phy_kwik.model import KwikModel

    with KwikModel(result.kwik_path) as model:
        out["channels"] = int(model.n_channels)
    if evaluate:
        gt_path = Path(prm).with_name("rec.groundtruth.npz")
        out.update(evaluate_kwik(result.kwik_path, gt_path))
        for path in result.template_dirs.values():  # one channel group on the built-in probes
            out.update(evaluate_template_dir(path, gt_path))
    return out


def run(prm: Path, out_dir: Path, evaluate: bool = True, refine_rounds: int | None = 2,
        timeline: Path | None = None) -> dict:
    rounds = [] if refine_rounds is None else ["--child-refine-rounds", str(refine_rounds)]
    where = [] if timeline is None else ["--child-timeline", str(timeline)]
    proc = subprocess.run([sys.executable, __file__, "--child", str(prm), str(out_dir)]
                          + ([] if evaluate else ["--no-eval"]) + rounds + where,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"the sort failed on {prm} (exit code {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


HEADER = (f"{'channels':>8} {'duration s':>10} {'spikes':>7} {'clusters':>8} {'detect s':>8} "
          f"{'cluster s':>9} {'cluster CPU':>11} {'tmatch s':>8} {'total s':>7} {'label s':>7} "
          f"{'label CPU':>10} "
          f"{'x RT':>5} "
          f"{'CPU s':>6} "
          f"{'RSS MB parent/worker':>20} {'EM snr>=5':>9} {'EM snr>=3':>9} {'TM snr>=5':>9} "
          f"{'TM snr>=3':>9} {'false good EM, TM':>17} {'false clusters':>14}")


def row(r: dict) -> str:
    def ratio(k, n):
        return f"{r[k]}/{r[n]}" if k in r and n in r else "-"

    rss = f"{r['rss_parent']:.0f}/{r['rss_worker']:.0f}"
    workers = r.get("label_worker_cpu", 0.0)
    label_cpu = f"{r.get('label_cpu', float('nan')) - workers:.2f}+{workers:.2f}"
    good = ratio("n_false_good", "n_good") + (
        ", " + ratio("tm_false_good", "tm_good") if "tm_good" in r else "")
    false = ratio("tm_false", "tm_clusters") if "tm_false" in r else \
        ratio("n_false_clusters", "n_unit_clusters")
    return (f"{r['channels']:>8} {r['duration']:>10g} {r['spikes']:>7} {r['clusters']:>8} "
            f"{r['detect']:>8.1f} {r['cluster']:>9.1f} {r.get('cluster_cpu', float('nan')):>11.2f} "
            f"{r['tmatch']:>8.1f} {r['total']:>7.1f} "
            f"{r['label']:>7.1f} {label_cpu:>10} "
            f"{r['duration'] / r['total']:>5.2f} {r['cpu']:>6.1f} {rss:>20} "
            f"{ratio('n_accurate_5', 'n_units_5'):>9} {ratio('n_accurate_3', 'n_units_3'):>9} "
            f"{ratio('tm_accurate_5', 'n_units_5'):>9} {ratio('tm_accurate_3', 'n_units_3'):>9} "
            f"{good:>17} {false:>14}")


def missed_line(r: dict) -> str:
    """The units at >= 3x below 0.8 after template matching, weakest first."""
    missed = sorted(r.get("tm_missed", []), key=lambda m: m[1])
    return "#   TM units >= 3x below 0.8 (unit: SNR, spikes, accuracy): " + (
        "; ".join(f"{u}: {snr:.1f}, {n}, {acc:.2f}" for u, snr, n, acc in missed)
        or "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_recording_arguments(parser, "32,384")
    parser.add_argument("--out-dir", default=None,
                        help="where the Kwik files are written (default: DATA_DIR/sort)")
    parser.add_argument("--seed", type=int, default=SEED,
                        help=f"seed of the synthetic recordings (default {SEED})")
    parser.add_argument("--no-template-matching", action="store_true",
                        help="detection and masked EM only")
    parser.add_argument("--refine-rounds", type=int, default=2,
                        help="template refinement rounds before the final matching (default 2)")
    parser.add_argument("--timeline", action="store_true",
                        help="write OUT_DIR/<recording>.timeline.txt: each process's and "
                             "thread's CPU use per 0.25 s, the log's messages, and the CPU "
                             "seconds of each phase (where a quiet machine's cores idle)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-timeline", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-refine-rounds", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-eval", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child_run(*args.child, evaluate=not args.no_eval,
                                   refine_rounds=args.child_refine_rounds,
                                   timeline=args.child_timeline)))
        return
    refine_rounds = None if args.no_template_matching else args.refine_rounds

    data_dir = Path(args.data_dir)
    out_root = Path(args.out_dir) if args.out_dir else data_dir / "sort"
    channels = channel_counts(parser, args)
    print(machine(), flush=True)

    # Warm-up: the numba kernels of every stage compiled into their cache.
    t0 = time.perf_counter()
    run(recording(data_dir, "linear32", 2.0), out_root / "warmup", evaluate=False,
        refine_rounds=refine_rounds)
    matching = "no template matching" if refine_rounds is None else \
        f"template matching with {refine_rounds} refinement round(s) on local worker processes"
    print(f"# warm-up {time.perf_counter() - t0:.1f} s; sort_recording(prm, overwrite=True): "
          f"detection on local worker processes, masked EM in the parent, {matching}; default "
          f"PRM parameters, seed {args.seed}", flush=True)
    print(HEADER, flush=True)
    for c in channels:
        probe = PROBES[c]
        prm = recording(data_dir, probe, args.duration, args.seed)
        name = f"{probe}-{args.duration:g}s-seed{args.seed}"
        result = run(prm, out_root / name, refine_rounds=refine_rounds,
                     timeline=out_root / f"{name}.timeline.txt" if args.timeline else None)
        print(row(result), flush=True)
        if "tm_missed" in result:
            print(missed_line(result), flush=True)


if __name__ == "__main__":
    main()
