"""Helpers shared by the benchmark scripts: the machine, cached recordings, process-tree memory.

- `machine()`: one comment line describing the machine and library versions.
- `recording(data_dir, probe, duration)`: the PRM of a synthetic recording
  (`phy_synthetic.recording.synthesize_recording`, seed `SEED`), written once
  into ``<data_dir>/<probe>-<duration>s-seed0/`` and reused.
- `TreeMemory`: the peak ``VmHWM`` of every descendant process (detection
  workers), sampled by a thread.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from pathlib import Path

#: The built-in probe used for each channel count.
PROBES = {32: "linear32", 384: "neuropixels1", 1024: "dense1024"}
SEED = 0


# -- Machine ------------------------------------------------------------------------


def machine() -> str:
    import numba
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    try:
        n_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        n_usable = os.cpu_count()
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        mem = f", {kb / 2**20:.1f} GB RAM"
    except (OSError, StopIteration):
        pass
    return (f"# {cpu}, {os.cpu_count()} logical CPUs ({n_usable} usable){mem}, "
            f"Python {platform.python_version()}, numpy {np.__version__}, "
            f"numba {numba.__version__}, load average {os.getloadavg()[0]:.2f}")


# -- Data ---------------------------------------------------------------------------


def recording(data_dir: Path, probe: str, duration: float, seed: int = SEED) -> Path:
    """The PRM of a cached synthetic recording (written if missing)."""
    folder = data_dir / f"{probe}-{duration:g}s-seed{seed}"
    prm = folder / "rec.prm"
    if all((folder / f"rec.{ext}").exists() for ext in ("prm", "dat", "prb", "groundtruth.npz")):
        return prm
    from phy_synthetic.recording import synthesize_recording

    print(f"# writing {folder} ...", file=sys.stderr, flush=True)
    synthesize_recording(folder, "rec", probe, float(duration), seed=seed, overwrite=True)
    return prm


# -- Memory of a process tree ---------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        pass
    except Exception:  # psutil.NoSuchProcess etc.
        return []
    # Without psutil: walk /proc/<pid>/task/*/children.
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


class TreeMemory:
    """Peak VmHWM (KB) of each descendant of this process, sampled by a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self.anon: dict[int, int] = {}  # sampled maximum of RssAnon (not a true peak)
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
            self._cmdline = f.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for pid in _descendants(os.getpid()):
            # A child forked but not yet exec'd ('spawn' forks then execs) shows this
            # process's high-water mark: skip it until its command line changes.
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read() == self._cmdline:
                        continue
            except OSError:
                continue
            hwm = _status_kb(pid, "VmHWM:")
            if hwm > self.peaks.get(pid, 0):
                self.peaks[pid] = hwm
            anon = _status_kb(pid, "RssAnon:")
            if anon > self.anon.get(pid, 0):
                self.anon[pid] = anon

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def max_kb(self) -> int:
        return max(self.peaks.values(), default=0)

    @property
    def max_anon_kb(self) -> int:
        return max(self.anon.values(), default=0)


# -- Command line -------------------------------------------------------------------


def add_recording_arguments(parser, channels: str = "32,384,1024") -> None:
    """``--channels``, ``--duration`` and ``--data-dir``, as every benchmark takes them."""
    parser.add_argument("--channels", default=channels,
                        help="comma-separated channel counts among " + ",".join(map(str, PROBES)))
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of recording")
    parser.add_argument("--data-dir", default="/tmp/phy-bench",
                        help="cache of the synthetic recordings (shared by the benchmarks)")


def channel_counts(parser, args) -> list[int]:
    """The ``--channels`` as ints; an unknown count is a usage error."""
    channels = [int(c) for c in args.channels.split(",") if c.strip()]
    unknown = [c for c in channels if c not in PROBES]
    if unknown:
        parser.error(f"no built-in probe with {unknown} channels; use {sorted(PROBES)}")
    return channels


def tree_cpu_seconds() -> float:
    """User + system CPU time of this process and of all its descendants, alive or reaped.

    Not ``getrusage(RUSAGE_CHILDREN)`` alone: it counts only children that have
    exited and been waited for, and the workers are forked by the forkserver (a
    child that outlives the run), which reaps them. So each live descendant
    (the forkserver) counts with its own reaped children (``/proc/<pid>/stat``:
    utime, stime, cutime, cstime).
    """
    import resource

    tick = os.sysconf("SC_CLK_TCK")
    cpu = sum(getattr(resource.getrusage(who), field)
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for field in ("ru_utime", "ru_stime"))
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile: counted by its parent's cutime
            continue
        cpu += sum(int(v) for v in fields[11:15]) / tick
    return cpu
