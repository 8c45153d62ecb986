"""Benchmark the zero-phase band-pass filter: scipy's sosfiltfilt vs phy's numba kernel.

Prints, for 1 s of 30 kHz data at 32, 384 and 1024 channels, the milliseconds
per second of data and the speed in multiples of real time. Each timing is the
best of several runs (the machine may be shared); numba compilation is done
before timing. One-thread rows are CPU time of this process
(``time.process_time``: other processes on a shared machine do not inflate
it); two-thread rows are wall-clock time (CPU time would add up the threads).

    python benchmarks/filter.py [--repeat 7] [--channels 32 384 1024] [--order 3]

Columns: ``in place`` filters the array into itself (``out=x``, what the
detection runner does), ``fresh out`` allocates the output on every call
(page faults of ~120 MB at 1024 channels included).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import machine
from scipy import signal

from phy_detect.filtering import Filter

RATE = 30000.0


def best_time(fn, repeat: int, clock) -> float:
    fn()  # warm-up (numba compilation, caches)
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 384, 1024])
    parser.add_argument("--order", type=int, default=3)
    args = parser.parse_args()

    import scipy

    print(f"{machine()}, scipy {scipy.__version__}")
    print(
        f"# 1 s of 30 kHz float32 data, order-{args.order} Butterworth 500 Hz - 14.25 kHz, "
        "forward-backward"
    )
    header = (
        f"{'channels':>8}  {'implementation':<33} {'ms per 1 s':>10} {'x real time':>12} "
        f"{'x rt (fresh out)':>17}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    cpu_time, wall_time = time.process_time, time.perf_counter
    for n_channels in args.channels:
        x = rng.normal(0, 50, (int(RATE), n_channels)).astype(np.float32)
        sos = signal.butter(args.order, (500.0, 0.475 * RATE), "bandpass", fs=RATE, output="sos")
        rows = [
            (
                "scipy sosfiltfilt (float64)",
                lambda x=x, sos=sos: signal.sosfiltfilt(sos, x, axis=0),
                None,
                cpu_time,
            ),
        ]
        for precision in ("float64", "float32"):
            for n_threads in (1, 2):
                fil = Filter(RATE, order=args.order, n_threads=n_threads, precision=precision)
                label = f"phy, {precision} state, {n_threads} thread" + "s" * (n_threads > 1)
                rows.append(
                    (
                        label,
                        lambda f=fil, x=x: f(x, out=x),  # in place: filters x again and again
                        lambda f=fil, x=x: f(x),
                        cpu_time if n_threads == 1 else wall_time,
                    )
                )
        for label, fn, fresh, clock in rows:
            # scipy is slow at 1024 channels: fewer repeats.
            repeat = max(1, args.repeat // 3) if label.startswith("scipy") else args.repeat
            t = best_time(fn, repeat, clock)
            t_fresh = best_time(fresh, repeat, clock) if fresh is not None else t
            print(
                f"{n_channels:>8}  {label:<33} {1e3 * t:>10.1f} {1 / t:>12.1f} {1 / t_fresh:>17.1f}"
            )


if __name__ == "__main__":
    main()
