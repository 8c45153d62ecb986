"""Benchmark of `phy_synthetic.recording.synthesize_recording` (``phy synth``).

Usage::

    python benchmarks/synth.py [--out /tmp/phy-synth-bench] [--duration-scale 1.0]

For 32, 384 and 1024 channels (the built-in probes ``linear32``,
``neuropixels1`` and ``dense1024``), each in its own process (so that the peak
resident memory is that run's), writes a recording and prints a table:
channels, duration, wall-clock seconds, times real time, CPU seconds
(all threads: on a shared or virtual machine, wall time varies with the
neighbours, CPU time much less), peak RSS. Each process first
writes a 0.1 s recording, so that the numba kernels are loaded from their
cache (or compiled) before the timed run; the timed run includes everything
else (probe, templates, spike trains, the .dat with its fsync, the ground
truth, .prb and .prm).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

CASES = [("linear32", 60.0), ("neuropixels1", 30.0), ("dense1024", 20.0)]

_CHILD = """
import json, resource, sys, time
from phy_synthetic.recording import synthesize_recording
probe, duration, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
synthesize_recording(out + "/warmup", probe=probe, duration_s=0.1, overwrite=True)
t0, c0 = time.perf_counter(), time.process_time()
r = synthesize_recording(out, probe=probe, duration_s=duration, overwrite=True)
elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(channels=r.n_channels, units=r.n_units, spikes=r.n_spikes,
                      duration=r.duration_s, seconds=elapsed, cpu=cpu, rss_mb=rss)))
"""


def run_case(probe: str, duration: float, out: str) -> dict:
    """Run one case in a fresh interpreter; returns its measurements."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, probe, str(duration), out],
                          check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--duration-scale", type=float, default=1.0,
                        help="multiply the default durations (60/30/20 s)")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"{'probe':<13} {'channels':>8} {'units':>6} {'spikes':>7} {'duration s':>10} "
          f"{'seconds':>8} {'x real time':>11} {'CPU s':>6} {'peak RSS MB':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        for probe, duration in CASES:
            r = run_case(probe, duration * args.duration_scale, os.path.join(out, probe))
            print(f"{probe:<13} {r['channels']:>8} {r['units']:>6} {r['spikes']:>7} "
                  f"{r['duration']:>10.1f} {r['seconds']:>8.2f} "
                  f"{r['duration'] / r['seconds']:>11.1f} {r['cpu']:>6.2f} "
                  f"{r['rss_mb']:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
