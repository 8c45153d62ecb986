"""Benchmark spike detection end to end: ``.dat`` in, ``.kwik``/``.kwx`` out.

Usage::

    python benchmarks/detect.py [--channels 32,384,1024] [--duration 20]
                                [--data-dir /tmp/phy-bench] [--memory-check] [--stages]
                                [--reference default|none|local|both] [--out-dir DIR]

For each channel count (built-in probes ``linear32``, ``neuropixels1`` and
``dense1024``), a synthetic recording is written with
`phy_synthetic.recording.synthesize_recording` (not timed; cached in
``--data-dir`` and reused), then `phy_detect.runner.detect` runs on it with
the local process executor, in a fresh interpreter, so that the peak memory
is that run's. Printed columns:

- ``wall s``: from `make_executor('processes')` to the return of `detect`
  (worker start-up: the forkserver's preload of the modules and numba
  kernels, then the workers' own warm-up; thresholds, PCA,
  the pass over the recording and the Kwik files with their fsync; not the
  interpreter start-up and imports of the parent).
- ``x RT``: recording seconds per wall-clock second.
- ``fixed s``: the part of ``wall s`` that does not grow with the recording
  (`detect`'s ``timings``: setup, thresholds and PCA excerpt passes), then
  ``(setup thr pca)``: those three. Setup ends before the workers are ready:
  the rest of their start-up falls in the thresholds' pass.
- ``ready s``: when the last worker was started and warmed up, from the start
  of `detect` (``timings['workers_ready']``): the forkserver's preload is most
  of it, and the thresholds' jobs wait for it.
- ``pass x RT``: recording seconds per second of the pass over the recording
  (``timings['chunks']``), the throughput a long recording tends to.
- ``kwx s``: copying the features into the ``.kwx`` after the pass.
- ``CPU s``: user + system CPU time of the run, its workers and the
  forkserver they are forked from (`tree_cpu_seconds`; compare runs by it when
  the machine is shared).
- ``RSS parent MB``: peak RSS of the process calling `detect`.
- ``RSS worker MB``: peak RSS of the largest worker process (the max of the
  ``VmHWM`` of the process tree, sampled by a thread and read once more
  before the workers exit; not ``getrusage(RUSAGE_CHILDREN)``, which does not
  see the forkserver's workers, and for fork+exec'd ones includes the parent's
  RSS at the fork). A worker's peak includes the pages it shares with the
  forkserver (the preloaded modules and kernels). It includes
  the pages of the memory-mapped ``.dat`` a worker has read (file-backed,
  reclaimable), so it grows with the recording; ``(anon)`` is the largest
  sampled ``RssAnon`` of a worker (anonymous memory only; sampled every
  50 ms, so a lower bound of its peak).
- ``recall mean/min``: recall of the true units with ``unit_snr >= 5``
  (`phy_detect.evaluation.detection_report`, 0.4 ms tolerance; a detection
  counts for a true spike only if its mask covers the unit's peak channel:
  on a large probe, several spikes a millisecond are far apart);
  ``pooled``: the fraction of all their spikes found.
- ``false``: detections matching no true spike (all units).
- ``(time only: ...)``: the same, matching on time alone.

A warm-up detection on a short recording runs first (untimed) so that the
numba kernels are compiled into their on-disk cache.

``--memory-check`` runs 1024 channels for 20 s and 200 s (a 12 GB ``.dat``;
skipped when less than 30 GB of disk is free) and prints the ratio of the
peak memories: with chunked processing it should be close to 1.

``--stages`` times the stages of `phy_detect.worker.detect_chunk` on one
1 s chunk (one numba thread, as in a worker) for each channel count: the
CPU time of the thread (user + system; unlike wall-clock time, not inflated
when other processes share the cores).

The detection uses the PRM's default reference stage (``'auto'``: the local
common reference, `phy_detect.reference`, on these probes). ``--reference
none`` (or ``local``) asks for another one (PRM ``stages=dict(reference=...)``;
rows labelled ``+none``), ``both`` runs the default then ``none``. Such a PRM
is a copy of the cached recording's, in the output folder (``--out-dir``,
default ``<data-dir>/kwik``). With ``--stages``, the reference's own time is
the ``reference`` row (``read + filter`` includes it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    PROBES,
    SEED,
    TreeMemory,
    add_recording_arguments,
    channel_counts,
    machine,
    recording,
    tree_cpu_seconds,
)

SNR_MIN = 5.0


# -- One run, in a fresh interpreter --------------------------------------------------


def child_run(prm: str, out_dir: str, evaluate: bool) -> dict:
    import resource

    import numpy as np

    from phy_detect.executors import make_executor
    from phy_detect.runner import detect

    with TreeMemory() as tree:
        t0 = time.perf_counter()
        executor = make_executor("processes")
        timings = {}
        try:
            kwik = detect(prm, output_dir=out_dir, executor=executor, overwrite=True,
                          timings=timings)
            wall = time.perf_counter() - t0
            tree.sample()  # the workers' final high-water marks, before they exit
        finally:
            executor.close()
    n_workers = getattr(executor, "n_workers", 1)
    cpu = tree_cpu_seconds()
    rss_parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Not getrusage(RUSAGE_CHILDREN): the workers are not this process's children (the
    # forkserver's), and a fork+exec'd child's ru_maxrss counts this process's memory.
    rss_worker = tree.max_kb / 1024

    from phy_kwik.model import KwikModel

    model = KwikModel(kwik)
    try:
        detected = np.asarray(model.spike_samples_fractional)
        rate = float(model.sample_rate)
        n_channels = int(model.n_channels)
        masks = np.asarray(model.masks[:]) if evaluate else None
        channel_order = np.asarray(model.channel_order)
    finally:
        model.close()
    result = dict(spikes=int(len(detected)), wall=wall, rss_parent=rss_parent,
                  rss_worker=rss_worker, anon_worker=tree.max_anon_kb / 1024,
                  n_workers=n_workers, channels=n_channels, cpu=cpu,
                  fixed=timings["setup"] + timings["thresholds"] + timings["pca"],
                  setup=timings["setup"], thresholds=timings["thresholds"], pca=timings["pca"],
                  chunks=timings["chunks"], kwik_s=timings["kwik"],
                  workers_ready=timings.get("workers_ready"),
                  kwx_mb=Path(kwik).with_suffix(".kwx").stat().st_size / 2**20)
    if evaluate:
        from phy_detect.evaluation import detection_report

        gt = np.load(Path(prm).with_name("rec.groundtruth.npz"))
        # A detection counts for a true spike only if its mask covers the unit's peak channel.
        column = {int(c): i for i, c in enumerate(channel_order)}
        unit_columns = np.array([column.get(int(c), 0) for c in gt["unit_peak_channels"]])
        # Ties (two true spikes at one sample, seen equally well) go to the larger spike.
        sizes = gt["unit_snr"][gt["spike_clusters"]] * gt["spike_amplitudes"]
        report = detection_report(detected, gt["spike_samples"], gt["spike_clusters"], rate,
                                  detected_masks=masks, unit_channels=unit_columns,
                                  true_amplitudes=sizes)
        by_time = detection_report(detected, gt["spike_samples"], gt["spike_clusters"], rate)
        good = gt["unit_snr"][report.units] >= SNR_MIN
        spikes_good = np.isin(gt["spike_clusters"], report.units[good])
        result.update(n_good=int(good.sum()),
                      recall_mean=float(report.recall[good].mean()) if good.any() else None,
                      recall_min=float(report.recall[good].min()) if good.any() else None,
                      recall_pooled=float((report.matches[spikes_good] >= 0).mean())
                      if good.any() else None,
                      n_false=int(report.n_false), n_true=int(len(gt["spike_samples"])),
                      recall_mean_time=float(by_time.recall[good].mean()) if good.any() else None,
                      n_false_time=int(by_time.n_false))
    return result


def with_reference(prm: Path, out_dir: Path, reference: str) -> Path:
    """`prm` for the ``'default'`` reference, else a copy of it in `out_dir` that asks for
    `reference` (paths made absolute; the ground truth linked next to it)."""
    if reference == "default":
        return prm
    out_dir.mkdir(parents=True, exist_ok=True)
    text = prm.read_text().replace("'rec.", f"'{prm.parent}/rec.")
    copy = out_dir / "rec.prm"
    copy.write_text(text.replace("spikedetekt = dict(",
                                 f"spikedetekt = dict(stages=dict(reference={reference!r}), ",
                                 1))
    truth = out_dir / "rec.groundtruth.npz"
    if not truth.exists():
        truth.symlink_to(prm.with_name("rec.groundtruth.npz"))
    return copy


def run(prm: Path, out_dir: Path, evaluate: bool = True) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(prm), str(out_dir)]
                          + ([] if evaluate else ["--no-eval"]),
                          capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"detection failed on {prm} (exit code {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- Stages on one chunk --------------------------------------------------------------


class _Captured(Exception):
    pass


class _CaptureExecutor:
    """Runs the PCA-fitting jobs serially, then captures the main pass's jobs."""

    def __init__(self) -> None:
        self.jobs = None

    def imap(self, func, jobs):
        for job in jobs:
            if job[0].pcs is not None:
                self.jobs = [job, *jobs]
                raise _Captured
            yield func(job)

    def close(self) -> None:
        pass


def child_stages(prm: str, out_dir: str, repeat: int) -> dict:
    import numba
    import numpy as np

    from phy_core.bunch import Bunch
    from phy_detect import runner, worker

    numba.set_num_threads(1)  # as in a worker process
    capture = _CaptureExecutor()
    try:
        runner.detect(prm, output_dir=out_dir, executor=capture, overwrite=True)
    except _Captured:
        pass
    from dataclasses import replace

    # The main pass's setup (its first jobs may only compute features of spikes found by
    # the PCA excerpts: time the whole detection here).
    setup = replace(capture.jobs[0][0], task="detect")
    chunk = capture.jobs[len(capture.jobs) // 2][1]  # a chunk with two neighbours
    times: dict[str, list[float]] = {}

    def timed(name, fn, *args):
        # This thread's CPU time (user + system): on a shared machine, wall-clock times
        # count the other processes' turns on the cores too.
        t0 = time.thread_time()
        out = fn(*args)
        times.setdefault(name, []).append(time.thread_time() - t0)
        return out

    n_spikes = 0
    from phy_detect.shared_rows import RowSlots, shared_memory_available

    # As the runner's local workers: the .kwx rows written into shared memory.
    slots = RowSlots(1, 2**28) if shared_memory_available() else None
    slot = slots.take(0) if slots is not None else None
    for _ in range(repeat + 1):  # the first is a warm-up, dropped below
        # The worker's own path (`worker.detect_chunk`), stage by stage.
        data = timed("read + filter", worker._read_filtered, setup, chunk)
        if setup.reference is not None:  # its own time, on a copy of the referenced chunk
            timed("reference", setup.reference, data.copy())
        data_t, weak_bits, strong_bits = timed(
            "thresholder.transform_bits", setup.thresholder.transform_bits, data,
            worker._crossing_bitmaps(data.shape))
        components = timed("detect_bits (grow + split)", setup.detector.detect_bits,
                           weak_bits, strong_bits, data.shape[0], data_t)
        extracted = timed("extract_all (times, masks)", setup.extractor.extract_all,
                          components, data, data_t, None, False)
        n_spikes = len(extracted.masks)
        if slot is not None:
            timed(".kwx rows (align + project)", worker._align_project_rows, Bunch(), setup,
                  data, extracted.spike_samples, np.arange(n_spikes), extracted.masks, slot)
        timed("detect_chunk (all)", worker.detect_chunk, setup, chunk)
        if slot is not None:
            timed("detect_chunk (all, .kwx rows in shared memory)", worker.detect_chunk,
                  setup, chunk, slot)
    if slots is not None:
        slots.close()
    best = {k: min(v[1:]) for k, v in times.items()}
    return dict(channels=int(len(setup.channels)), samples=int(chunk.load_stop - chunk.load_start),
                spikes=n_spikes, n_components=len(components), stages=best)


def run_stages(prm: Path, out_dir: Path, repeat: int) -> dict:
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "--child-stages", str(prm), str(out_dir),
                           "--repeat", str(repeat)], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"stage timing failed on {prm}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- Tables ----------------------------------------------------------------------------

HEADER = (f"{'probe':<13} {'channels':>8} {'duration s':>10} {'spikes':>7} {'wall s':>7} "
          f"{'x RT':>6} {'fixed s':>7} {'(setup':>6} {'thr':>5} {'pca)':>5} {'ready s':>7} "
          f"{'pass x RT':>9} "
          f"{'kwx s':>5} {'CPU s':>6} "
          f"{'RSS parent MB':>13} {'RSS worker MB':>13} {'(anon)':>6} "
          f"{'units snr>=5':>12} "
          f"{'recall mean':>11} {'recall min':>10} {'pooled':>6} {'false':>6} "
          f"{'(time only: recall mean':>23} {'false)':>6}")


def row(probe: str, duration: float, r: dict) -> str:
    def f(x, spec):
        return format(x, spec) if x is not None else "-"

    return (f"{probe:<13} {r['channels']:>8} {duration:>10g} {r['spikes']:>7} "
            f"{r['wall']:>7.2f} {duration / r['wall']:>6.1f} {r['fixed']:>7.2f} "
            f"{r['setup']:>6.2f} {r['thresholds']:>5.2f} {r['pca']:>5.2f} "
            f"{f(r.get('workers_ready'), '.2f'):>7} "
            f"{duration / r['chunks']:>9.1f} {r['kwik_s']:>5.2f} {r['cpu']:>6.1f} "
            f"{r['rss_parent']:>13.0f} "
            f"{r['rss_worker']:>13.0f} {r['anon_worker']:>6.0f} {r.get('n_good', '-'):>12} "
            f"{f(r.get('recall_mean'), '.3f'):>11} {f(r.get('recall_min'), '.3f'):>10} "
            f"{f(r.get('recall_pooled'), '.3f'):>6} {r.get('n_false', '-'):>6} "
            f"{f(r.get('recall_mean_time'), '.3f'):>23} {r.get('n_false_time', '-'):>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_recording_arguments(parser)
    parser.add_argument("--memory-check", action="store_true",
                        help="1024 channels at 20 s and 200 s: ratio of peak memories")
    parser.add_argument("--stages", action="store_true",
                        help="time the stages of detect_chunk on one 1 s chunk")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of --stages timings")
    parser.add_argument("--no-table", action="store_true", help="skip the main table")
    parser.add_argument("--reference", choices=("default", "none", "local", "both"),
                        default="default",
                        help="the reference stage (default: the PRM's, 'auto'); both: the "
                             "default, then none")
    parser.add_argument("--out-dir", default=None,
                        help="where the Kwik files go (default: <data-dir>/kwik)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-stages", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--no-eval", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child_run(*args.child, evaluate=not args.no_eval)))
        return
    if args.child_stages:
        print(json.dumps(child_stages(*args.child_stages, repeat=args.repeat)))
        return

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    out_root = Path(args.out_dir) if args.out_dir else data_dir / "kwik"
    references = ("default", "none") if args.reference == "both" else (args.reference,)
    channels = channel_counts(parser, args)
    print(machine(), flush=True)

    # Warm-up: compile the numba kernels into their cache (untimed).
    warm = recording(data_dir, "linear32", 2.0)
    run(warm, out_root / "warmup", evaluate=False)

    if not args.no_table:
        print(f"# detect(..., executor=make_executor('processes')), "
              f"default PRM parameters, seed {SEED}")
        print(HEADER, flush=True)
        for c in channels:
            probe = PROBES[c]
            for reference in references:
                name = probe if reference == "default" else f"{probe}+{reference}"
                out = out_root / f"{name}-{args.duration:g}s"
                prm = with_reference(recording(data_dir, probe, args.duration), out, reference)
                r = run(prm, out)
                print(row(name, args.duration, r), flush=True)
        print(f"# {r['n_workers']} worker processes", flush=True)

    if args.stages:
        print()
        print("# detect_chunk stages on one 1 s chunk (plus its overlap margins), "
              f"1 numba thread, best of {args.repeat}, CPU ms")
        results = []
        for c in channels:
            probe = PROBES[c]
            for reference in references:
                name = probe if reference == "default" else f"{probe}+{reference}"
                out = out_root / f"stages-{name}"
                prm = with_reference(recording(data_dir, probe, args.duration), out, reference)
                results.append(run_stages(prm, out, args.repeat))
                suffix = "" if reference == "default" else f" +{reference}"
                results[-1]["label"] = f"{c} ch{suffix}"
        names = list(dict.fromkeys(name for r in results for name in r["stages"]))
        width = max(len(name) for name in names) + 2
        print(f"{'stage':<{width}}" + "".join(f"{r['label']:>13}" for r in results))
        for name in names:
            print(f"{name:<{width}}" + "".join(
                f"{1e3 * r['stages'][name]:>13.1f}" if name in r["stages"] else f"{'-':>13}"
                for r in results))
        for label, key in (("spikes in the chunk", "spikes"), ("samples in the chunk", "samples")):
            print(f"{label:<{width}}" + "".join(f"{r[key]:>13}" for r in results))

    if args.memory_check:
        print()
        print("# memory check: dense1024, 20 s vs 200 s")
        free_gb = shutil.disk_usage(data_dir).free / 1e9
        big = data_dir / "dense1024-200s-seed0" / "rec.dat"
        if not big.exists() and free_gb < 30:
            print(f"# skipped: {free_gb:.0f} GB free in {data_dir}, the check needs 30 GB "
                  "(12 GB of .dat, the .kwx and temporary files)")
            return
        print(HEADER, flush=True)
        runs = {}
        for duration in (20.0, 200.0):
            prm = recording(data_dir, "dense1024", duration)
            runs[duration] = r = run(prm, out_root / f"dense1024-{duration:g}s")
            print(row("dense1024", duration, r), flush=True)
        for key, label in (("rss_parent", "parent"), ("rss_worker", "largest worker"),
                           ("anon_worker", "largest worker, anonymous")):
            print(f"# peak RSS {label}: 200 s / 20 s = "
                  f"{runs[200.0][key] / runs[20.0][key]:.2f}")
        print(f"# .kwx: {runs[20.0]['kwx_mb']:.0f} MB (20 s), {runs[200.0]['kwx_mb']:.0f} MB "
              "(200 s)")


if __name__ == "__main__":
    main()
