"""Memory of the template-matching stage: its parent process and its workers, per recording.

Usage::

    python benchmarks/tmatch_memory.py RECORDING.prm:SORTED.kwik [...]
                                       [--refine-rounds 2] [--out-dir /tmp/phy-bench-tmem]

Each pair runs `phy_tmatch.runner.template_match` (local worker processes) in a
fresh interpreter, its output in ``--out-dir``; a thread of this process samples
every descendant's ``/proc/PID/status`` every 0.2 s (`_common.TreeMemory`).
Columns, in MB:

- ``parent HWM`` / ``parent anon``: the stage's own process (which gathers the
  refinement's events and refines the templates): its peak RSS (``VmHWM``,
  exact), and the largest ``RssAnon`` sampled (anonymous memory: not the file
  pages of the memory maps, which the kernel may reclaim);
- ``worker HWM`` / ``worker anon``: the same for the largest worker.

The stage's memory should not grow with the recording's length: compare a 20 s
and a 200 s recording of one probe (DEVELOPERS.md; docs/architecture.md,
"Memory of the template stage").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import TreeMemory  # noqa: E402


def _child(prm: str, kwik: str, out: str, refine_rounds: int) -> None:
    from phy_tmatch.runner import template_match

    template_match(prm, kwik, out, overwrite=True, refine_rounds=refine_rounds)


def _measure(prm: str, kwik: str, out: Path, refine_rounds: int) -> dict:
    command = [sys.executable, __file__, "--child", f"{prm}:{kwik}", "--out-dir", str(out),
               "--refine-rounds", str(refine_rounds)]
    start = time.perf_counter()
    with TreeMemory(interval=0.2) as tree:
        process = subprocess.Popen(command)
        process.wait()  # the thread has read the processes' high-water marks meanwhile
    if process.returncode:
        raise SystemExit(f"template matching of {prm} failed ({process.returncode}).")
    parent = process.pid
    workers = [pid for pid in tree.peaks if pid != parent]
    mb = 1024.0
    return dict(recording=Path(prm).parent.name, wall=time.perf_counter() - start,
                parent_hwm=tree.peaks.get(parent, 0) / mb,
                parent_anon=tree.anon.get(parent, 0) / mb,
                worker_hwm=max((tree.peaks[p] for p in workers), default=0) / mb,
                worker_anon=max((tree.anon.get(p, 0) for p in workers), default=0) / mb)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", metavar="PRM:KWIK")
    parser.add_argument("--refine-rounds", type=int, default=2)
    parser.add_argument("--out-dir", default="/tmp/phy-bench-tmem")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        prm, kwik = args.pairs[0].split(":")
        _child(prm, kwik, args.out_dir, args.refine_rounds)
        return
    print(f"{'recording':<28} {'wall s':>8} {'parent HWM':>10} {'parent anon':>11} "
          f"{'worker HWM':>10} {'worker anon':>11}")
    for i, pair in enumerate(args.pairs):
        prm, kwik = pair.split(":")
        r = _measure(prm, kwik, Path(args.out_dir) / f"run{i}", args.refine_rounds)
        print(f"{r['recording']:<28} {r['wall']:>8.1f} {r['parent_hwm']:>10.0f} "
              f"{r['parent_anon']:>11.0f} {r['worker_hwm']:>10.0f} {r['worker_anon']:>11.0f}",
              flush=True)


if __name__ == "__main__":
    main()
