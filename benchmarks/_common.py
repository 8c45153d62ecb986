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


def _status_values(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """The values (KB) of `keys` in ``/proc/<pid>/status``, read once; those found."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(keys):
                    values[line.split(":", 1)[0] + ":"] = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return values


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


class PeriodicSampler:
    """A context manager whose thread calls `sample` every `interval` s until it exits.

    Subclasses define `sample`; with ``final_sample``, it is called once more on exit.
    """

    final_sample = True

    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.final_sample:
            self.sample()


class TreeMemory(PeriodicSampler):
    """Peak VmHWM (KB) of each descendant of this process, sampled by a thread."""

    final_sample = False

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(interval, "tree-memory")
        self.peaks: dict[int, int] = {}
        self.anon: dict[int, int] = {}  # sampled maximum of RssAnon (not a true peak)
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
            self._cmdline = f.read()
        self._execd: set[int] = set()  # descendants whose command line is their own

    def sample(self) -> None:
        for pid in _descendants(os.getpid()):
            # A child forked but not yet exec'd ('spawn' forks then execs) shows this
            # process's high-water mark: skip it until its command line changes (checked
            # until it has: this thread shares the sort's process and its GIL, so each
            # sample reads as few files as it can).
            if pid not in self._execd:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if f.read() == self._cmdline:
                            continue
                except OSError:
                    continue
                self._execd.add(pid)
            status = _status_values(pid, ("VmHWM:", "RssAnon:"))
            if status.get("VmHWM:", 0) > self.peaks.get(pid, 0):
                self.peaks[pid] = status["VmHWM:"]
            if status.get("RssAnon:", 0) > self.anon.get(pid, 0):
                self.anon[pid] = status["RssAnon:"]

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


# -- Timeline of a process tree ---------------------------------------------------------


class CpuTimeline(PeriodicSampler):
    """Who used the CPU when: this process's threads and its descendants, sampled by a thread.

    Every `interval` s, the CPU time (user + system, ``/proc/<pid>/task/<tid>/stat``)
    of each thread of this process and of each descendant (worker processes, the
    forkserver), and the ``phy`` logger's messages with their times (`handler`, to
    add to the logger). `table` gives, per `bin_s`, each one's share of a core and
    the messages logged then; `phases` the CPU seconds of each between marks. On a
    quiet machine, a bin whose shares add up to less than the cores is idle capacity
    (on a loaded one, the shares are the run's share of the cores).
    """

    def __init__(self, interval: float = 0.05) -> None:
        import logging
        import time

        super().__init__(interval, "cpu-timeline")
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.messages: list[tuple[float, str, str]] = []
        self.start = time.time()
        self._tick = os.sysconf("SC_CLK_TCK")
        timeline = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                timeline.messages.append((record.created, record.threadName,
                                          record.getMessage()[:120]))

        self.handler = _Handler(logging.INFO)

    def _cpu(self, path: str) -> float | None:
        try:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / self._tick

    def sample(self) -> None:
        import time

        me, now, cpu = os.getpid(), time.time(), {}
        names = {t.native_id: t.name for t in threading.enumerate()}
        for tid in os.listdir(f"/proc/{me}/task"):
            if int(tid) != threading.get_native_id():  # not this sampler
                value = self._cpu(f"/proc/{me}/task/{tid}/stat")
                if value is not None:
                    # Python's threads by name (numba's, BLAS's by id).
                    cpu["main" if int(tid) == me else
                        f"thread {names.get(int(tid), tid)}"] = value
        for pid in _descendants(me):
            value = self._cpu(f"/proc/{pid}/stat")
            if value is not None:
                cpu[f"process {pid}"] = value
        self.samples.append((now, cpu))

    def _bins(self, bin_s: float) -> tuple[list[str], list[list[float]]]:
        if not self.samples:
            return [], []
        n = int((self.samples[-1][0] - self.start) / bin_s) + 1
        previous: dict[str, float] = {}
        usage: dict[str, list[float]] = {}
        for t, cpu in self.samples:
            b = min(n - 1, int((t - self.start) / bin_s))
            for who, value in cpu.items():
                if who in previous:
                    usage.setdefault(who, [0.0] * n)[b] += value - previous[who]
                previous[who] = value
        who = [w for w in sorted(usage, key=lambda w: (w != "main", w))
               if sum(usage[w]) >= 0.05]  # threads and processes that did something
        return who, [[usage[w][b] for w in who] for b in range(n)]

    def table(self, bin_s: float = 0.25) -> str:
        """Per `bin_s` (rows), each thread's or process's share of a core (%)."""
        who, rows = self._bins(bin_s)
        lines = [f"# columns: {', '.join(f'{i}={w}' for i, w in enumerate(who))}",
                 "#   s  " + " ".join(f"{i:>4d}" for i in range(len(who)))]
        messages = sorted(self.messages)
        for b, row in enumerate(rows):
            said = [f"[{thread}] {text}" for t, thread, text in messages
                    if b * bin_s <= t - self.start < (b + 1) * bin_s]
            lines.append(f"{b * bin_s:6.2f} " + " ".join(f"{100 * v / bin_s:4.0f}" for v in row)
                         + ("  " + " | ".join(said) if said else ""))
        return "\n".join(lines)

    def phases(self, marks: dict[str, float]) -> str:
        """CPU seconds of each thread and process between consecutive `marks` (name: seconds
        from the start), and the phase's wall-clock time."""
        who, rows = self._bins(0.05)
        names, ends = list(marks), [marks[m] for m in marks]
        lines = []
        for i, (name, end) in enumerate(zip(names, ends)):
            start = ends[i - 1] if i else 0.0
            cpu = [sum(r[j] for b, r in enumerate(rows) if start <= b * 0.05 < end)
                   for j in range(len(who))]
            lines.append(f"# {name}: {end - start:.2f} s wall, {sum(cpu):.2f} s CPU ("
                         + ", ".join(f"{w} {c:.2f}" for w, c in zip(who, cpu) if c >= 0.01)
                         + ")")
        return "\n".join(lines)
