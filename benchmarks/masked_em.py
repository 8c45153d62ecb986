"""Benchmark the masked EM clustering alone, on the detected spikes of synthetic recordings.

Usage::

    python benchmarks/masked_em.py [--channels 32,384,1024] [--duration 20] [--seed 0]
                                   [--data-dir /tmp/phy-bench] [--cache-dir DIR]

For each channel count (built-in probes ``linear32``, ``neuropixels1`` and
``dense1024``), the cached synthetic recording of ``--data-dir`` (written once,
as by ``benchmarks/detect.py``; a ``--seed`` other than 0 writes and uses
``<probe>-<duration>s-seed<seed>``, to check that a change does not fit one
recording only) is detected into ``--cache-dir`` if its Kwik files are not there
yet; then, in a fresh interpreter (so that the peak memory is that run's),
`phy_masked_em.loop.masked_em` clusters its spikes with the default parameters,
reading the ``.kwx`` lazily (`phy_masked_em.command.kwx_views`),
and the result is compared with the ground truth. Columns:

- ``spikes``, ``clusters``: detected spikes, clusters found (noise and MUA included).
- ``wall s``, ``CPU s``: wall-clock and CPU time (all threads, `time.process_time`)
  of the `masked_em` call; the machine may be shared, the CPU time is the steadier.
- ``x RT``: recording seconds per wall-clock second of clustering.
- ``RSS MB``: peak resident memory of the clustering process (imports included, and
  the pages of the memory-mapped ``.kwx`` it read); ``anon MB``: the peak of its
  anonymous memory (``RssAnon``, sampled every 10 ms during the call).
- ``snr>=5``, ``snr>=3``: true units with that SNR sorted at accuracy >= 0.8
  (`phy_evaluate.metrics.evaluate`: spikes matched within 0.4 ms, Hungarian
  assignment), as ``k/n``; ``detected`` the same for a perfect clustering of the
  detected spikes (each labelled with its matched true unit): the ceiling that
  detection leaves to clustering.

The numba kernels are compiled (or loaded from their cache) by a small untimed
call in each child before the timed one.
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
    PeriodicSampler,
    add_recording_arguments,
    channel_counts,
    machine,
    recording,
)


def _counts(result) -> dict:
    s = result.summary
    return dict(n5=s.n_units_snr_5, k5=s.n_accurate_snr_5, n3=s.n_units_snr_3,
                k3=s.n_accurate_snr_3)


class AnonPeak(PeriodicSampler):
    """The largest ``RssAnon`` of this process seen by a sampling thread (MB)."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(interval, "anon-peak")
        self.peak = 0.0

    def sample(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) / 1024)



def child_run(kwik: str, groundtruth: str) -> dict:
    import numpy as np

    from phy_detect.evaluation import match_spikes
    from phy_evaluate.metrics import evaluate
    from phy_kwik.model import KwikModel
    from phy_masked_em.command import kwik_parameters, kwx_views
    from phy_masked_em.loop import masked_em

    with KwikModel(kwik) as model:
        features, masks = kwx_views(model)
        parameters = kwik_parameters(model)
        samples, rate = np.asarray(model.spike_samples), float(model.sample_rate)
        channels = int(model.n_channels)
        masked_em(features[:200], masks[:200], parameters)  # compile / load the kernels
        with AnonPeak() as anon:
            t0, c0 = time.perf_counter(), time.process_time()
            labels = masked_em(features, masks, parameters)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gt = np.load(groundtruth)
    result = evaluate(gt["spike_samples"], gt["spike_clusters"], samples, labels, rate,
                      unit_snr=gt["unit_snr"])
    # The ceiling: every detected spike labelled with the true unit it matches.
    match = match_spikes(gt["spike_samples"], samples, 0.4e-3 * rate)
    perfect = np.where(match >= 0, gt["spike_clusters"][np.maximum(match, 0)] + 2, 1)
    ceiling = evaluate(gt["spike_samples"], gt["spike_clusters"], samples, perfect, rate,
                       unit_snr=gt["unit_snr"])
    return dict(channels=channels, spikes=len(labels), clusters=len(np.unique(labels)),
                duration=float(gt["n_samples"]) / rate, wall=wall, cpu=cpu,
                rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, anon=anon.peak,
                sorted=_counts(result), detected=_counts(ceiling))


def run(kwik: Path, groundtruth: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(kwik), str(groundtruth)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"the clustering failed on {kwik} (exit code {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def detected_kwik(prm: Path, cache: Path) -> Path:
    """The Kwik file of the recording's detected spikes, detected into `cache` if missing."""
    kwik = cache / "rec.kwik"
    if not (kwik.exists() and kwik.with_suffix(".kwx").exists()):
        from phy_detect.runner import detect

        print(f"# detecting {prm} into {cache} ...", file=sys.stderr, flush=True)
        detect(prm, output_dir=cache, overwrite=True)
    return kwik


HEADER = (f"{'channels':>8} {'spikes':>7} {'clusters':>8} {'wall s':>7} {'CPU s':>7} "
          f"{'x RT':>6} {'RSS MB':>7} {'anon MB':>7} {'snr>=5':>7} {'snr>=3':>7} "
          f"{'detected 5/3':>14}")


def row(r: dict) -> str:
    s, d = r["sorted"], r["detected"]
    ceiling = f"{d['k5']}/{d['n5']} {d['k3']}/{d['n3']}"
    return (f"{r['channels']:>8} {r['spikes']:>7} {r['clusters']:>8} {r['wall']:>7.2f} "
            f"{r['cpu']:>7.2f} {r['duration'] / r['wall']:>6.1f} {r['rss']:>7.0f} "
            f"{r['anon']:>7.0f} {s['k5']:>3}/{s['n5']:<3} {s['k3']:>3}/{s['n3']:<3} "
            f"{ceiling:>14}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_recording_arguments(parser)
    parser.add_argument("--cache-dir", default=None,
                        help="where the detected Kwik files are kept (default: "
                        "DATA_DIR/masked-em-kwik)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the synthetic recordings (default: 0, the shared ones)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child_run(*args.child)))
        return

    data_dir = Path(args.data_dir)
    cache_root = Path(args.cache_dir) if args.cache_dir else data_dir / "masked-em-kwik"
    channels = channel_counts(parser, args)
    print(machine(), flush=True)
    print("# masked_em(kwx_views(model), kwik_parameters(model)): default parameters, "
          f"{args.duration:g} s recordings, seed {args.seed}", flush=True)
    print(HEADER, flush=True)
    suffix = f"-seed{args.seed}" if args.seed else ""
    for c in channels:
        probe = PROBES[c]
        prm = recording(data_dir, probe, args.duration, args.seed)
        kwik = detected_kwik(prm, cache_root / f"{probe}-{args.duration:g}s{suffix}")
        print(row(run(kwik, prm.with_name("rec.groundtruth.npz"))), flush=True)


if __name__ == "__main__":
    main()
