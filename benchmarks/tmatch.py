"""Benchmark the template-matching stage: accuracy and speed, with and without it.

Usage::

    python benchmarks/tmatch.py [--recordings linear32-20s-seed0,neuropixels1-20s-seed0]
                                [--data-dir /tmp/phy-bench] [--out-dir /tmp/phy-bench-tmatch]

For each cached synthetic recording of ``--data-dir`` (``<probe>-<duration>s-seed0/rec.prm``
with its ``rec.groundtruth.npz``, as written by ``benchmarks/detect.py``), three sortings:

- ``a``: detection then masked EM (``phy detect``, then ``phy cluster-auto``);
- ``b``: ``a`` followed by template matching (``phy template-match`` on a's
  clusters, those of the noise and MUA groups left out, the default);
- ``b+``: the same with templates of the noise and MUA clusters too
  (``--include-noise --include-mua``: the masked EM sometimes puts a clean unit
  there);
- ``r``: ``b+`` with ``--refine-rounds`` rounds of template refinement (2 by
  default, as ``phy spikesort --template-matching``: split, new templates from
  the residual, merge, drop; `phy_tmatch.refine`), then the final matching;
- ``c``: template matching from the ground-truth clusters (the templates are the
  true units' mean waveforms: an upper bound of what the matching can do, the
  clustering being perfect).

Each step runs in a fresh interpreter (``--child``) that reports its own wall
time (from the call of the API, after the imports) and CPU time (itself plus
its worker processes, `resource.getrusage`), so the numbers hold on a shared
machine. Columns:

- ``step s`` / ``total s``: wall-clock time of the step / of the whole sorting
  (``b`` = detection + clustering + matching); ``x RT``: recording seconds per
  wall-clock second of the whole sorting; ``CPU s``: CPU seconds of the whole
  sorting (all processes).
- ``snr>=5``, ``snr>=3``, ``all``: true units sorted at accuracy >= 0.8
  (`phy_evaluate.metrics.evaluate`: spikes matched within 0.4 ms, Hungarian
  assignment), as ``k/n``; ``mean acc``: the mean accuracy over all units;
  ``clusters``: clusters in the sorting.

A last line per recording splits the CPU time of the refined run (``r``) by pass
(``cpu_*_s`` of its ``tmatch.json``: the workers' jobs of the template, noise and
matching passes, and the parent's refinement), the rest being the workers'
start-up and the parent's reading and writing, and gives the wall-clock time of
the passes (``elapsed_*_s``: the matching's includes the refinement, whose wall
time, the workers idle, comes from the ``timeline`` of ``tmatch.json``).

A warm-up run on a 2 s recording comes first (untimed) so that the numba kernels
are compiled into their on-disk cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RECORDINGS = ("linear32-20s-seed0", "neuropixels1-20s-seed0")


def machine() -> str:
    import numba
    import numpy as np

    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (f"# {cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
            f"numpy {np.__version__}, numba {numba.__version__}, "
            f"load average {os.getloadavg()[0]:.2f}")


# -- The steps, each in a fresh interpreter ---------------------------------------------------


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _workers_cpu(executor) -> float:
    """CPU seconds of a process executor's live workers (before it is closed).

    Its workers may be forked by a forkserver, not by this process: then their
    time never reaches this process's ``RUSAGE_CHILDREN``; it is read from
    ``/proc`` instead (0 where that is not available).
    """
    pool = getattr(executor, "_pool", None)
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in list(getattr(pool, "_processes", None) or {}):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _forked_by_us(executor) -> bool:
    """Whether the executor's workers are children of this process (their CPU time then
    reaches ``RUSAGE_CHILDREN`` when they exit)."""
    pool = getattr(executor, "_pool", None)
    pids = list(getattr(pool, "_processes", None) or {})
    try:
        with open(f"/proc/{pids[0]}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, IndexError, ValueError):
        return True


def child(step: str, prm: str, kwik: str, out: str, refine_rounds: int = 2) -> dict:
    """Run one step; its wall and CPU seconds (the imports are not timed)."""
    import numpy as np

    from phy_detect.executors import make_executor

    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    workers = 0.0
    if step == "detect":
        from phy_detect.runner import detect

        executor = make_executor("processes")
        try:
            detect(prm, output_dir=out, overwrite=True, executor=executor)
            workers = 0.0 if _forked_by_us(executor) else _workers_cpu(executor)
        finally:
            executor.close()
    elif step == "cluster":
        from phy_masked_em.command import cluster_kwik

        cluster_kwik(kwik)
    elif step in ("tmatch", "tmatch-all", "tmatch-refine", "gt"):
        from phy_tmatch.runner import match_spikes, template_match

        executor = make_executor("processes")
        try:
            if step.startswith("tmatch"):
                every = step != "tmatch"
                template_match(prm, kwik, out, executor=executor, overwrite=True,
                               include_noise=every, include_mua=every,
                               refine_rounds=refine_rounds if step == "tmatch-refine" else 0)
            else:
                gt = np.load(Path(prm).with_suffix(".groundtruth.npz"))
                match_spikes(prm, gt["spike_samples"], gt["spike_clusters"], out,
                             executor=executor, overwrite=True)
            workers = 0.0 if _forked_by_us(executor) else _workers_cpu(executor)
        finally:
            executor.close()
    else:
        raise ValueError(step)
    return dict(wall=time.perf_counter() - t0, cpu=_cpu_seconds() - cpu0 + workers)


def run_child(step: str, prm: Path, kwik: Path, out: Path, refine_rounds: int = 2) -> dict:
    cmd = [sys.executable, __file__, "--child", step, str(prm), str(kwik), str(out),
           "--refine-rounds", str(refine_rounds)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"step {step} failed on {prm}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- Evaluation -----------------------------------------------------------------------------


def evaluate(sorting: Path, prm: Path) -> dict:
    import numpy as np

    from phy_evaluate.metrics import evaluate as evaluate_sorting

    gt = np.load(prm.with_suffix(".groundtruth.npz"))
    if sorting.suffix == ".kwik":
        from phy_kwik.model import KwikModel

        with KwikModel(sorting) as model:
            samples, clusters = model.spike_samples, model.spike_clusters
    else:
        from phy_template.model import TemplateModel

        model = TemplateModel(sorting)
        samples, clusters = model.spike_samples, model.spike_clusters
    r = evaluate_sorting(gt["spike_samples"], gt["spike_clusters"], samples, clusters,
                         float(gt["sample_rate"]), unit_snr=gt["unit_snr"])
    s = r.summary
    return dict(snr5=f"{s.n_accurate_snr_5}/{s.n_units_snr_5}",
                snr3=f"{s.n_accurate_snr_3}/{s.n_units_snr_3}",
                all=f"{s.n_accurate}/{s.n_units}", mean=s.mean_accuracy,
                clusters=s.n_clusters, duration=float(gt["n_samples"]) / float(gt["sample_rate"]))


# -- Main ------------------------------------------------------------------------------------


def warm_up(out_dir: Path) -> None:
    """Compile the numba kernels (detection, clustering, matching) into their caches."""
    from phy_synthetic.recording import synthesize_recording

    folder = out_dir / "warmup"
    rec = synthesize_recording(folder, name="rec", probe="linear32", duration_s=2.0,
                               overwrite=True)
    kwik = folder / "a" / "rec.kwik"
    run_child("detect", rec.prm_path, kwik, folder / "a")
    run_child("cluster", rec.prm_path, kwik, folder / "a")
    run_child("tmatch", rec.prm_path, kwik, folder / "b")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", default=",".join(RECORDINGS))
    parser.add_argument("--data-dir", default="/tmp/phy-bench")
    parser.add_argument("--out-dir", default="/tmp/phy-bench-tmatch")
    parser.add_argument("--refine-rounds", type=int, default=2,
                        help="refinement rounds of the 'r' sorting (default 2)")
    parser.add_argument("--child", nargs=4, metavar=("STEP", "PRM", "KWIK", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, refine_rounds=args.refine_rounds)))
        return 0

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(machine())
    warm_up(out_dir)
    header = (f"{'recording':<24} {'sorting':<22} {'step s':>7} {'total s':>8} {'x RT':>6} "
              f"{'CPU s':>7} {'snr>=5':>7} {'snr>=3':>7} {'all':>7} {'mean acc':>8} "
              f"{'clusters':>8}")
    print(header)
    for name in args.recordings.split(","):
        prm = Path(args.data_dir) / name / "rec.prm"
        if not prm.exists():
            print(f"{name}: no recording at {prm} (write it with benchmarks/detect.py)")
            continue
        work = out_dir / name
        kwik = work / "a" / "rec.kwik"
        detect = run_child("detect", prm, kwik, work / "a")
        cluster = run_child("cluster", prm, kwik, work / "a")
        tmatch = run_child("tmatch", prm, kwik, work / "b")
        tmatch_all = run_child("tmatch-all", prm, kwik, work / "b+")
        refined = run_child("tmatch-refine", prm, kwik, work / "r", args.refine_rounds)
        gt = run_child("gt", prm, kwik, work / "c")
        a_wall, a_cpu = detect["wall"] + cluster["wall"], detect["cpu"] + cluster["cpu"]
        rows = [
            ("a detect + masked EM", kwik, a_wall, a_wall, a_cpu),
            ("b a + template match", work / "b", tmatch["wall"], a_wall + tmatch["wall"],
             a_cpu + tmatch["cpu"]),
            ("b+ with noise/MUA too", work / "b+", tmatch_all["wall"],
             a_wall + tmatch_all["wall"], a_cpu + tmatch_all["cpu"]),
            (f"r b+ refined ({args.refine_rounds} rds)", work / "r", refined["wall"],
             a_wall + refined["wall"], a_cpu + refined["cpu"]),
            ("c GT templates + match", work / "c", gt["wall"], gt["wall"], gt["cpu"]),
        ]
        for label, sorting, step, total, cpu in rows:
            e = evaluate(sorting, prm)
            print(f"{name:<24} {label:<22} {step:>7.1f} {total:>8.1f} "
                  f"{e['duration'] / total:>6.2f} {cpu:>7.1f} {e['snr5']:>7} {e['snr3']:>7} "
                  f"{e['all']:>7} {e['mean']:>8.3f} {e['clusters']:>8}", flush=True)
        print(f"{'':<24} (detect {detect['wall']:.1f} s wall / {detect['cpu']:.1f} s CPU, "
              f"masked EM {cluster['wall']:.1f} / {cluster['cpu']:.1f}, template matching "
              f"{tmatch['wall']:.1f} / {tmatch['cpu']:.1f}, with refinement "
              f"{refined['wall']:.1f} / {refined['cpu']:.1f})")
        print(f"{'':<24} ({cpu_by_pass(work / 'r', refined['cpu'])})", flush=True)
    return 0


def cpu_by_pass(template_dir: Path, total: float) -> str:
    """The CPU seconds of a template-matching run by pass (its ``tmatch.json``)."""
    info = json.loads((template_dir / "tmatch.json").read_text())
    passes = {key: float(info.get(f"cpu_{key}_s", 0.0))
              for key in ("templates", "noise", "matching", "refine")}
    rest = total - sum(passes.values())
    walls = {key: float(info.get(f"elapsed_{key}_s", 0.0))
             for key in ("templates", "noise", "matching")}
    # The parent's refinements, during which the workers wait (the stage's timeline).
    refining = sum(end - start for who, what, start, end in info.get("timeline", [])
                   if who == "parent" and what.startswith("refine"))
    return ("refined run CPU s by pass: " + ", ".join(f"{k} {v:.1f}" for k, v in passes.items())
            + f", other (worker start-up, parent I/O) {rest:.1f}; wall s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in walls.items())
            + f" (of which the parent refining, workers idle, {refining:.1f})")


if __name__ == "__main__":
    sys.exit(main())
