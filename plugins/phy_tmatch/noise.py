"""The noise of the channels, as the template stage measures it: free of any clustering.

The template pass (`phy_tmatch.runner`) needs each channel's noise level (the
median ``|x|`` of a few band-passed chunks: which channels of a template
stand out of the noise) and the noise covariance of the channels (the
projection templates, `phy_tmatch.whitening`). Both come from
`n_noise_chunks` chunks of the template pass's plan, spread evenly through
the recording, and depend on the recording, the channels, the filter and the
template's length only, never on the spikes or their clusters.

So they can be measured before the clusters exist: a sort measures them
while its masked EM runs (`phy_spikesort.pipeline`, when a worker is idle)
and hands them to the template matching, whose template pass then only sums
spike windows. `NoiseStatistics.key` says what they were measured for; the
template matching measures them itself when it is not what it needs. The
values are the same either way (the same chunks, filtered whole, the sums
added in chunk order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Duration of the chunks of the template pass (s), and chunks per job (each job
#: sends back one partial sum of the templates).
TEMPLATE_CHUNK_S = 1.0
TEMPLATE_CHUNKS_PER_JOB = 4


@dataclass
class NoiseStatistics:
    """The channels' noise: per-chunk median ``|x|`` and the covariance sums (`measure_noise`).

    Attributes
    ----------
    key : tuple
        What they were measured for (`noise_key`).
    medians : list of (C,) arrays
        Median ``|x|`` of each noise chunk's channels, in chunk order.
    xtx : (C, C) float64
        Sum over the noise chunks, in chunk order, of ``X^T X`` of their quiet rows
        (`phy_tmatch.whitening.covariance_sums`).
    n_rows : int
        The quiet rows summed.
    cpu_s : float
        CPU seconds of the jobs that measured them.
    """

    key: tuple
    medians: list = field(default_factory=list)
    xtx: Any = None
    n_rows: int = 0
    cpu_s: float = 0.0

    def add(self, part) -> None:
        """Add a template job's noise (`phy_tmatch.worker.template_job`), chunk by chunk."""
        self.medians.extend(part.noise)
        for xtx in part.xtx:
            self.xtx = np.array(xtx, dtype=np.float64) if self.xtx is None else self.xtx + xtx
        self.n_rows += int(sum(part.n_rows))
        self.cpu_s += float(part.get("cpu_s", 0.0))


def filter_arguments(prm) -> dict:
    """The detection's band-pass for a PRM (same parameters, same precision)."""
    rate = float(prm.traces.sample_rate)
    sd = prm.spikedetekt
    return dict(rate=rate, low=float(sd["filter_low"]),
                high=float(sd["filter_high_factor"]) * rate,
                order=int(sd["filter_butter_order"]),
                precision=str(sd.get("filter_precision", "float64")))


def template_window(before_ms: float, after_ms: float, rate: float) -> tuple[int, int]:
    """``(before, n_t)``: samples before a spike's time, and the template's length."""
    before = int(round(before_ms * 1e-3 * rate))
    return before, before + int(round(after_ms * 1e-3 * rate))


def template_chunks(n_samples: int, rate: float, filter_margin: int, n_t: int) -> list:
    """The template pass's chunks: of a fixed size, so that the noise measured on some of
    them does not depend on the matching's chunk size."""
    from phy_detect.chunks import plan_chunks

    return plan_chunks(n_samples, int(round(TEMPLATE_CHUNK_S * rate)), int(filter_margin) + n_t)


def noise_chunk_indices(n_chunks: int, n_noise: int) -> list[int]:
    """The `n_noise` chunks (of `n_chunks`) the noise is measured on, evenly spread."""
    n = min(int(n_chunks), int(n_noise))
    if n <= 0:
        return []
    return sorted(set(np.linspace(0, n_chunks - 1, n).round().astype(int).tolist()))


def noise_key(prm_path: str, channels: np.ndarray, n_t: int, filter_args: dict,
              chunks: list) -> tuple:
    """What the noise statistics depend on (`NoiseStatistics.key`)."""
    return (os.path.abspath(str(prm_path)), tuple(int(c) for c in channels), int(n_t),
            tuple(sorted(filter_args.items())),
            tuple((c.load_start, c.keep_start, c.keep_stop, c.load_stop) for c in chunks))


def measure_noise(prm_path: str | os.PathLike, executor, channel_group: int | None = None,
                  channels=None, **options: Any) -> NoiseStatistics:
    """The channels' noise as `phy_tmatch.runner.template_match` would measure it.

    Parameters
    ----------
    prm_path : path
        The recording's parameter file.
    executor : executor
        From `phy_detect.executors.make_executor`: one job per noise chunk.
    channel_group : int or None
        The probe's channel group whose channels are measured (default: the first).
    channels : array or None
        The columns of the file to measure instead (in the template matching's order).
    **options
        The template matching's options (`phy_tmatch.runner.DEFAULTS`; others are
        ignored). Those that matter here are ``before_ms`` and ``after_ms`` (the
        template's length sets the chunks' margins and the quiet rows' guard) and
        ``n_noise_chunks``.
    """
    from phy_detect.filtering import Filter
    from phy_rawdata.prm import read_prm

    from .runner import DEFAULTS, _group_channels, _options
    from .worker import Setup, run_job, traces

    o = _options({name: value for name, value in options.items() if name in DEFAULTS})
    prm = read_prm(prm_path)
    if channels is None:
        channels, _ = _group_channels(prm, channel_group)
    channels = np.asarray(channels, dtype=np.int64)
    args = filter_arguments(prm)
    filter_ = Filter(**args)
    rate = float(prm.traces.sample_rate)
    before, n_t = template_window(float(o.before_ms), float(o.after_ms), rate)
    n_samples = int(traces(str(prm.path)).shape[0])
    plan = template_chunks(n_samples, rate, filter_.margin_samples, n_t)
    chunks = [plan[i] for i in noise_chunk_indices(len(plan), int(o.n_noise_chunks))]
    stats = NoiseStatistics(noise_key(str(prm.path), channels, n_t, args, chunks))
    setup = Setup(str(prm.path), channels, filter_, "templates", before=before, n_t=n_t)
    none = np.zeros(0, dtype=np.int64)
    # One chunk per job: the parts come back in chunk order, whichever worker ran them.
    for part in executor.imap(run_job, [(setup, None, [(c, none, none, True)])
                                        for c in chunks]):
        stats.add(part)
    return stats
