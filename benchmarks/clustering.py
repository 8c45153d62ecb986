"""Benchmark of `phy_core.clustering.Clustering` on a large random clustering.

Usage::

    python benchmarks/clustering.py [--n-spikes 10000000] [--n-clusters 500] [--repeats 7]

Prints a table of latencies (median over the repeats, in ms) and the peak
resident memory of the process.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np

from phy_core.clustering import Clustering


def _time_ms(func: Callable[..., object], *args: object) -> float:
    t0 = time.perf_counter()
    func(*args)
    return (time.perf_counter() - t0) * 1000


def run(n_spikes: int, n_clusters: int, repeats: int, seed: int = 0) -> list[tuple[str, float]]:
    """Run the benchmark and return ``[(operation, median latency in ms)]``."""
    rng = np.random.default_rng(seed)
    spike_clusters = rng.integers(0, n_clusters, size=n_spikes, dtype=np.int64)
    times: dict[str, list[float]] = {}

    def record(name: str, func: Callable[..., object], *args: object) -> None:
        times.setdefault(name, []).append(_time_ms(func, *args))

    clustering = None
    for _ in range(max(1, repeats // 3)):
        clustering = None  # free the previous one before building the next
        t0 = time.perf_counter()
        clustering = Clustering(spike_clusters)
        times.setdefault("construction", []).append((time.perf_counter() - t0) * 1000)
    c = clustering

    for _ in range(repeats):
        a, b = rng.choice(c.cluster_ids, size=2, replace=False).tolist()
        record("merge of 2 clusters", c.merge, [a, b])
        record("undo (merge)", c.undo)
        record("redo (merge)", c.redo)
        c.undo()

    for _ in range(repeats):
        # A realistic split: part of one cluster (~n_spikes / n_clusters spikes).
        cluster = int(rng.choice(c.cluster_ids))
        spikes = c.spikes_per_cluster[cluster]
        chosen = rng.choice(spikes, size=min(10_000, len(spikes) - 1), replace=False)
        record(f"split of {len(chosen):,} spikes (1 cluster)", c.split, chosen)
        record("undo (split)", c.undo)
        record("redo (split)", c.redo)
        c.undo()

    for _ in range(repeats):
        clusters = rng.choice(c.cluster_ids, size=3, replace=False)
        record("set_group of 3 clusters", c.set_group, clusters, "good")
        record("undo (set_group)", c.undo)
    record("cluster_ids + n_clusters", lambda: (c.cluster_ids, c.n_clusters))

    # Worst case: random spikes touch every cluster, so every spike changes cluster.
    for _ in range(max(1, repeats // 3)):
        chosen = rng.choice(n_spikes, size=10_000, replace=False)
        record("split of 10,000 random spikes (all clusters)", c.split, chosen)
        record("undo (split, all clusters)", c.undo)
        record("redo (split, all clusters)", c.redo)
        c.undo()

    return [(name, statistics.median(values)) for name, values in times.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-spikes", type=int, default=10_000_000)
    parser.add_argument("--n-clusters", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    results = run(args.n_spikes, args.n_clusters, args.repeats)
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = maxrss / (1024**2 if platform.system() == "Darwin" else 1024)

    print(
        f"Clustering benchmark: {args.n_spikes:,} spikes, {args.n_clusters} clusters, "
        f"median of {args.repeats} repeats (construction and worst case: fewer)"
    )
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, numpy {np.__version__}"
    )
    width = max(len(name) for name, _ in results)
    print(f"{'operation':<{width}}  {'latency (ms)':>12}")
    print(f"{'-' * width}  {'-' * 12}")
    for name, ms in results:
        print(f"{name:<{width}}  {ms:>12.2f}")
    print(f"{'peak memory (MB, maxrss)':<{width}}  {peak_mb:>12.0f}")


if __name__ == "__main__":
    main()
