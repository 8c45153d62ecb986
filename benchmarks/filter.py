"""Benchmark the zero-phase band-pass filter: scipy's sosfiltfilt vs phy's numba kernel.

Prints, for 1 s of 30 kHz data at 32, 384 and 1024 channels, the seconds per
second of data and the speed in multiples of real time. Each timing is the
best of several runs (the machine may be shared); numba compilation is done
before timing.

    python benchmarks/filter.py [--repeat 5] [--channels 32 384 1024]

Columns: ``out reused`` passes a preallocated output array (what a chunked
runner does with a buffer per worker); ``fresh out`` allocates the output on
every call (page faults of ~120 MB at 1024 channels included).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import signal

from phy_detect.filtering import Filter

RATE = 30000.0


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up (numba compilation, caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 384, 1024])
    args = parser.parse_args()

    import numba
    import scipy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    print(
        f"# {cpu}, {os.cpu_count()} logical CPUs, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, numba {numba.__version__}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print("# 1 s of 30 kHz float32 data, order-3 Butterworth 500 Hz - 14.25 kHz, forward-backward")
    header = (
        f"{'channels':>8}  {'implementation':<31} {'s per 1 s':>10} {'x real time':>12} "
        f"{'x rt (fresh out)':>17}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for n_channels in args.channels:
        x = rng.normal(0, 50, (int(RATE), n_channels)).astype(np.float32)
        out = np.empty_like(x)
        sos = signal.butter(3, (500.0, 0.475 * RATE), "bandpass", fs=RATE, output="sos")
        rows = [
            ("scipy sosfiltfilt", lambda x=x, sos=sos: signal.sosfiltfilt(sos, x, axis=0), None),
        ]
        for label, kwargs in [
            ("ours, 1 thread", dict(n_threads=1)),
            ("ours, 2 threads", dict(n_threads=2)),
            ("ours, 1 thread, float32 state", dict(n_threads=1, precision="float32")),
            ("ours, 2 threads, float32 state", dict(n_threads=2, precision="float32")),
        ]:
            fil = Filter(RATE, **kwargs)
            rows.append((label, lambda f=fil, x=x, o=out: f(x, out=o), lambda f=fil, x=x: f(x)))
        for label, fn, fresh in rows:
            # scipy is slow at 1024 channels: fewer repeats.
            repeat = max(1, args.repeat // 2) if label.startswith("scipy") else args.repeat
            t = best_time(fn, repeat)
            t_fresh = best_time(fresh, repeat) if fresh is not None else t
            print(f"{n_channels:>8}  {label:<31} {t:>10.4f} {1 / t:>12.1f} {1 / t_fresh:>17.1f}")


if __name__ == "__main__":
    main()
