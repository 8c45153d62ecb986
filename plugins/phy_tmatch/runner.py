"""``template_match``: a sorted dataset's clusters in, a template directory of matched spikes out.

Three passes over the recording, each in parallel over chunks (the
executors of `phy_detect.executors`), none holding more than a few chunks:

1. *Templates* (`phy_tmatch.templates`): the chunks holding the chosen spikes
   of each cluster are filtered; each returns the sums of its spikes' windows.
   A few chunks spread through the recording also give their channels' median
   ``|x|`` (the noise level, for choosing each template's significant
   channels) and the sums of the noise covariance, from which the projection
   templates are made (`phy_tmatch.whitening`); that noise needs no cluster,
   and may have been measured before the stage (`phy_tmatch.noise`: a sort
   does it while its masked EM runs).
2. *Noise of the projections*: a few excerpts spread through the recording are
   projected on the templates; the median ``|B|`` over them gives each
   template's ``sigma`` (the spread of its projection on noise, whatever the
   noise's spectrum and correlations across channels), the unit of the
   eligibility threshold.
3. *Matching* (`phy_tmatch.matching`): the whole recording in overlapping
   chunks; the spikes of all chunks are concatenated in order.

With ``refine_rounds`` > 0, passes 2 and 3 repeat: every pass but the last
also collects, in the workers, snippets of a sample of each template's matched
spikes and of the residual's events (`phy_tmatch.residual`); the parent keeps a
uniform sample of them as they arrive, at most ``max_snippets_per_template`` per
template and ``max_residual_per_channel`` per home channel, whatever the
recording's length (`phy_tmatch.event_sample`), refines the templates from them
(`phy_tmatch.refine`: splits, new templates, merges, drops; a template made from
snippets, which have the ``snippet_channels`` nearest channels only, gets its other
channels from the recording with ``full_means``: `phy_tmatch.means`), and the next pass
matches the refined set. A refinement that changes
nothing ends the rounds early. The noise levels and covariance of pass 1 serve
every round. The templates a refinement left alone are kept as they were
(`_keep_unchanged`), so pass 2 measures the noise of the others only
(`_projection_noise`: a template's spread is measured once). Templates that
match fewer than the refinement's ``min_spikes`` spikes in the last pass are
left out of the result, and the last pass's spikes are consolidated
(`phy_tmatch.consolidate`: spikes a smaller template matched again removed,
two templates of one unit merged; the ``consolidate`` option).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from phy_core.bunch import Bunch
from phy_core.progress import ProgressReporter

from .event_sample import EventSample
from .matching import MatchParameters, margin_samples, template_cross_correlations
from .noise import (
    TEMPLATE_CHUNK_S,  # noqa: F401 - part of this module's interface
    TEMPLATE_CHUNKS_PER_JOB,
    NoiseStatistics,
    filter_arguments,
    noise_chunk_indices,
    noise_key,
    template_chunks,
    template_window,
)
from .templates import (
    TemplateMatchingError,
    build_templates,
    noise_std_from_medians,
    select_spikes,
)
from .worker import Setup, run_job

logger = logging.getLogger("phy")

#: Defaults of the keyword options of `template_match` / `match_spikes`.
DEFAULTS = dict(
    # The pursuit's margin (~2000 samples per side at 30 kHz) is a smaller share of 2 s.
    chunk_size_s=2.0,
    max_spikes_per_template=200,
    min_spikes=3,
    before_ms=0.8,
    after_ms=1.4,
    channel_fraction=0.1,
    significance=4.0,
    max_channels=64,
    rank=3,
    z_threshold=MatchParameters.z_threshold,
    amplitude_range=(MatchParameters.amplitude_min, MatchParameters.amplitude_max),
    amplitude_tolerance=MatchParameters.amplitude_tolerance,
    amplitude_prior_std=MatchParameters.amplitude_prior_std,
    # The amplitude prior of the templates an amplitude split made (the refinement's
    # `amplitude_split`: two units of one shape, whose spikes tie on both copies without
    # it), when `amplitude_prior_std` (every template's) is None. None: none.
    amplitude_copy_prior_std=0.3,
    refractory_ms=1.0,
    max_rounds=MatchParameters.max_rounds,
    n_noise_excerpts=5,
    noise_excerpt_s=1.0,
    whiten=True,
    whitening_radius_um=100.0,
    n_noise_chunks=5,
    # Template refinement (`phy_tmatch.refine`): matching passes followed by splits,
    # new templates from the residual, merges; then the final pass.
    refine_rounds=0,
    residual_threshold=5.0,
    snippet_channels=16,
    pool_channels=16,
    pool_width_um=25.0,
    max_snippets_per_template=300,
    max_residual_per_channel=300,
    refine={},
    # A template the refinement makes from its events' snippets (`snippet_channels` only)
    # and nothing beyond them gets its other channels from the pass's residual, read from
    # the recording (`phy_tmatch.means`). Off: the same on the 384-channel recordings,
    # better on the 1024-channel 20 s one (99 -> 101/106 at >= 5x, 140 -> 142/152), but on
    # the 200 s one 106 -> 105/106, 151 -> 149/152, false clusters 10/178 -> 11/180 (unit
    # 54, SNR 7.2, at 0.805 without: its template took 7 more spikes of a neighbour).
    full_means=False,
    # After the last pass of a refinement (`phy_tmatch.consolidate`): spikes matched again
    # by a smaller template removed, templates of one unit merged.
    consolidate={},
)


def _options(options: dict) -> Bunch:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TemplateMatchingError(f"Unknown template-matching option(s) {unknown}; "
                                    f"known: {', '.join(sorted(DEFAULTS))}.")
    o = Bunch(DEFAULTS, **options)
    amin, amax = (float(v) for v in o.amplitude_range)
    checks = [
        (o.chunk_size_s > 0, "chunk_size_s must be > 0"),
        (int(o.max_spikes_per_template) >= 1, "max_spikes_per_template must be >= 1"),
        (o.before_ms > 0 and o.after_ms > 0, "before_ms and after_ms must be > 0"),
        (0 <= o.channel_fraction <= 1, "channel_fraction must be in [0, 1]"),
        (int(o.max_channels) >= 1 and int(o.rank) >= 1, "max_channels and rank must be >= 1"),
        (o.z_threshold > 0, "z_threshold must be > 0"),
        (0 < amin <= 1 <= amax, "amplitude_range must be (min, max) with 0 < min <= 1 <= max"),
        (o.amplitude_tolerance >= 0, "amplitude_tolerance must be >= 0"),
        (o.amplitude_prior_std is None or o.amplitude_prior_std > 0,
         "amplitude_prior_std must be None or > 0"),
        (o.amplitude_copy_prior_std is None or o.amplitude_copy_prior_std > 0,
         "amplitude_copy_prior_std must be None or > 0"),
        (o.refractory_ms >= 0, "refractory_ms must be >= 0"),
        (int(o.max_rounds) >= 1, "max_rounds must be >= 1"),
        (int(o.n_noise_excerpts) >= 1 and o.noise_excerpt_s > 0,
         "n_noise_excerpts must be >= 1 and noise_excerpt_s > 0"),
        (int(o.n_noise_chunks) >= 1, "n_noise_chunks must be >= 1"),
        (int(o.refine_rounds) >= 0, "refine_rounds must be >= 0"),
        (o.residual_threshold > 0, "residual_threshold must be > 0"),
        (int(o.snippet_channels) >= 1 and int(o.pool_channels) >= 1,
         "snippet_channels and pool_channels must be >= 1"),
        (int(o.max_snippets_per_template) >= 1 and int(o.max_residual_per_channel) >= 1,
         "max_snippets_per_template and max_residual_per_channel must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise TemplateMatchingError(f"Template matching: {message}.")
    o.amplitude_range = (amin, amax)
    from .consolidate import ConsolidateParameters
    from .refine import RefineParameters

    o.refine_parameters = _parameters(RefineParameters, o.refine, "refine")
    o.consolidate_parameters = _parameters(ConsolidateParameters, o.consolidate, "consolidate")
    return o


def _parameters(cls, values: dict | None, option: str):
    """``cls(**values)``, a parameters dataclass, or a clear error naming its fields."""
    try:
        return cls(**dict(values or {}))
    except TypeError as exc:
        raise TemplateMatchingError(f"Template matching: {option}: {exc}; known: "
                                    f"{', '.join(cls.__dataclass_fields__)}.") from None


def _group_channels(prm, channel_group: int | None) -> tuple[np.ndarray, np.ndarray]:
    """File columns and positions of a channel group of the PRM's probe."""
    from phy_probes.builtin import load_probe

    if prm.prb_file is None:
        raise TemplateMatchingError(f"{prm.path}: template matching needs a probe (prb_file).")
    probe = load_probe(prm.prb_file)
    if channel_group is not None:
        if channel_group not in probe.channel_groups:
            raise TemplateMatchingError(f"{prm.prb_file}: no channel group {channel_group!r} "
                                        f"(groups: {list(probe.channel_groups)}).")
        probe.change_channel_group(channel_group)
    return (np.asarray(probe.channels, dtype=np.int64),
            np.asarray(probe.positions, dtype=np.float64))


def template_match(prm_path: str | os.PathLike, kwik_path: str | os.PathLike,
                   output_dir: str | os.PathLike, channel_group: int | None = None,
                   clustering: str | None = None, include_mua: bool = False,
                   include_noise: bool = False, executor=None, overwrite: bool = False,
                   reporter: ProgressReporter | None = None,
                   noise_statistics: NoiseStatistics | None = None,
                   on_idle: Callable[[], Any] | None = None, **options: Any) -> Path:
    """Re-detect the spikes of a sorted Kwik dataset against its clusters' templates.

    Parameters
    ----------
    prm_path : path
        The recording's parameter file (its raw data, probe, filter).
    kwik_path : path
        The sorted dataset: one template per cluster of its clustering
        (`clustering`, default ``main``), except, unless `include_noise` /
        `include_mua`, the clusters of the noise and MUA groups (masked EM's
        clusters 0 and 1; without groups, the clusters 0 and 1).
    output_dir : path
        The template directory to write (`phy_tmatch.output`).
    channel_group : int or None
        The channel group (shank); default: the Kwik file's first.
    executor : executor or None
        From `phy_detect.executors.make_executor` (default: local processes).
    overwrite : bool
        Replace a template directory in `output_dir`.
    reporter : ProgressReporter or None
        One step per chunk of each pass.
    noise_statistics : NoiseStatistics or None
        The channels' noise measured beforehand (`phy_tmatch.noise.measure_noise`,
        e.g. while the clusters were made); used if measured for this run (its
        `key`), else measured here.
    on_idle : callable or None
        Called once (no argument) when the workers are about to wait for this
        process: when it starts its first refinement of the templates (at the
        start without refinement rounds). A caller's chance to give them other
        work meanwhile (`phy_spikesort.pipeline`: the Kwik file's labels).
    **options
        See `DEFAULTS` (thresholds, template shape and sparsity, chunk size).

    Returns
    -------
    output_dir : Path
    """
    from phy_kwik.model import KwikModel

    with KwikModel(kwik_path, channel_group=channel_group, clustering=clustering) as model:
        samples = np.asarray(model.spike_samples, dtype=np.int64)
        clusters = np.asarray(model.spike_clusters, dtype=np.int64)
        channels = np.asarray(model.channel_order, dtype=np.int64)
        positions = np.asarray(model.channel_positions, dtype=np.float64)
        groups = {int(c): int(g) for c, g in (model.cluster_groups or {}).items()}
    excluded = {group for group, included in ((0, include_noise), (1, include_mua))
                if not included}
    ids = np.unique(clusters)
    if groups:
        cluster_ids = np.array([c for c in ids if groups.get(int(c), 3) not in excluded])
    else:
        cluster_ids = ids[~np.isin(ids, list(excluded))]
    return match_spikes(prm_path, samples, clusters, output_dir, cluster_ids=cluster_ids,
                        channels=channels, channel_positions=positions, cluster_groups=groups,
                        executor=executor, overwrite=overwrite, reporter=reporter,
                        source=str(kwik_path), noise_statistics=noise_statistics,
                        on_idle=on_idle, **options)


def match_spikes(prm_path: str | os.PathLike, spike_samples, spike_clusters,
                 output_dir: str | os.PathLike, cluster_ids=None, channels=None,
                 channel_positions=None, channel_group: int | None = None,
                 cluster_groups: dict | None = None, executor=None, overwrite: bool = False,
                 reporter: ProgressReporter | None = None, source: str = "",
                 noise_statistics: NoiseStatistics | None = None,
                 on_idle: Callable[[], Any] | None = None, **options: Any) -> Path:
    """`template_match` from spikes given as arrays (any sorting, or a ground truth).

    `channels` (file columns) and `channel_positions` default to the PRM probe's
    channel group `channel_group`; `cluster_ids` to every cluster.
    """
    from phy_rawdata.prm import read_prm

    from .output import check_output_dir, write_template_directory

    o = _options(options)
    prm = read_prm(prm_path)
    out_dir = Path(output_dir).absolute()
    check_output_dir(out_dir, overwrite)
    if channels is None:
        channels, probe_positions = _group_channels(prm, channel_group)
        channel_positions = probe_positions if channel_positions is None else channel_positions
    channels = np.asarray(channels, dtype=np.int64)
    if channel_positions is None:
        channel_positions = np.c_[np.zeros(len(channels)), 20.0 * np.arange(len(channels))]
    if len(channels) == 0 or channels.max() >= prm.traces.n_channels:
        raise TemplateMatchingError(f"{prm.path}: the channels {channels.tolist()[:8]} ... do "
                                    f"not fit the {prm.traces.n_channels} channels of the data.")
    spike_samples = np.asarray(spike_samples, dtype=np.int64)
    spike_clusters = np.asarray(spike_clusters, dtype=np.int64)
    if spike_samples.shape != spike_clusters.shape or spike_samples.ndim != 1:
        raise TemplateMatchingError(f"{len(spike_samples)} spike samples but "
                                    f"{len(spike_clusters)} spike clusters.")
    if cluster_ids is None:
        cluster_ids = np.unique(spike_clusters)
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    counts = np.array([(spike_clusters == c).sum() for c in cluster_ids], dtype=np.int64)
    cluster_ids = cluster_ids[counts >= int(o.min_spikes)]
    if len(cluster_ids) == 0:
        raise TemplateMatchingError(f"No cluster with at least {o.min_spikes} spikes to make "
                                    "a template from.")

    own_executor = executor is None
    if own_executor:
        from phy_detect.executors import make_executor

        executor = make_executor("processes")
    reporter = reporter or ProgressReporter()
    from phy_detect.executors import single_blas_thread

    from .worker import release_scratch

    # The parent's LAPACK calls (templates, refinement) are small: OpenBLAS threads
    # gain nothing there, and their spinning cost more CPU than the calls (2-3x).
    limit = contextlib.nullcontext() \
        if getattr(executor, "runs_jobs_in_threads", False) else single_blas_thread()
    try:
        with limit:
            result, templates, info = _run(prm, spike_samples, spike_clusters, cluster_ids,
                                           channels, channel_positions, executor, reporter, o,
                                           noise_statistics, on_idle)
    finally:
        release_scratch()  # a serial executor's jobs ran here
        if own_executor:
            executor.close()
    info.update(source=source, prm=str(prm.path))
    path = write_template_directory(out_dir, prm, templates, result, channels,
                                    channel_positions, cluster_groups=cluster_groups,
                                    info=info, overwrite=overwrite)
    reporter.set_complete()
    return path


def _match_parameters(o: Bunch, rate: float) -> MatchParameters:
    """The pursuit's parameters from the options, at sample rate `rate`."""
    return MatchParameters(
        z_threshold=float(o.z_threshold), amplitude_min=o.amplitude_range[0],
        amplitude_max=o.amplitude_range[1],
        amplitude_tolerance=float(o.amplitude_tolerance),
        amplitude_prior_std=(None if o.amplitude_prior_std is None
                             else float(o.amplitude_prior_std)),
        refractory=int(round(o.refractory_ms * 1e-3 * rate)), max_rounds=int(o.max_rounds))


def _match_chunks(n_samples: int, chunk_size: int, n_t: int, filter_margin: int,
                  parameters: MatchParameters) -> list:
    """The matching passes' chunks, overlapping by the pursuit's dependency radius."""
    from phy_detect.chunks import plan_chunks

    return plan_chunks(n_samples, chunk_size, margin_samples(n_t, parameters, filter_margin))


def _longest(chunks: list) -> int:
    """The most rows a chunk of `chunks` loads (its margins included)."""
    return max((c.load_stop - c.load_start for c in chunks), default=0)


def worker_scratch(prm, channel_group: int | None = None, **options: Any) -> dict:
    """The chunk-sized scratch arrays of the matching jobs on `prm`'s recording and the
    probe's `channel_group` (`worker.match_scratch_shapes`), to make them ahead
    (`worker.reserve_scratch`).

    `options`: the template matching's (`DEFAULTS`; others are ignored). They do not
    depend on the clusters: a sort makes them while its masked EM runs.
    """
    from phy_detect.filtering import Filter

    from .worker import match_scratch_shapes, traces

    o = _options({name: value for name, value in options.items() if name in DEFAULTS})
    n_channels = len(_group_channels(prm, channel_group)[0])
    rate = float(prm.traces.sample_rate)
    margin = Filter(**filter_arguments(prm)).margin_samples
    _, n_t = template_window(float(o.before_ms), float(o.after_ms), rate)
    chunks = _match_chunks(int(traces(str(prm.path)).shape[0]),
                           max(1, int(round(o.chunk_size_s * rate))), n_t, margin,
                           _match_parameters(o, rate))
    return match_scratch_shapes(_longest(chunks), n_channels,
                                collect=int(o.refine_rounds) > 0)


def _excerpt_chunks(n_samples: int, n_excerpts: int, size: int, margin: int) -> list:
    """`n_excerpts` chunks of `size` samples evenly spread (the whole recording if short)."""
    from phy_detect.chunks import Chunk

    size = min(size, n_samples)
    n = max(1, min(n_excerpts, n_samples // max(size, 1)))
    starts = np.linspace(0, n_samples - size, n).round().astype(np.int64)
    return [Chunk(i, int(s), int(s) + size, max(0, int(s) - margin),
                  min(n_samples, int(s) + size + margin)) for i, s in enumerate(starts)]


def _copy_prior(parameters, templates, copy_ids: set[int], o: Bunch):
    """The pass's pursuit parameters: with the amplitude prior on the amplitude copies.

    The templates of `copy_ids` (scaled copies of one shape made by the refinement's
    amplitude split, `phy_tmatch.refine`) get the prior ``amplitude_copy_prior_std``
    unless every template has one (``amplitude_prior_std``); the others match without
    (the prior on every template lost a weak unit of the 1024 channels next to a strong
    one: 6 of its spikes more went to the weak one's template).
    """
    if parameters.amplitude_prior_std is not None or o.amplitude_copy_prior_std is None:
        return parameters
    chosen = np.flatnonzero(np.isin(templates.cluster_ids, sorted(copy_ids)))
    if not len(chosen):
        return parameters
    return replace(parameters, amplitude_prior_std=float(o.amplitude_copy_prior_std),
                   amplitude_prior_templates=tuple(int(k) for k in chosen))


def _make_templates(means, n_spikes, cluster_ids, noise_std, covariance, channel_positions,
                    o: Bunch):
    """Sparse low-rank templates, with their projection templates when `covariance` is known."""
    templates = build_templates(means, n_spikes, cluster_ids, noise_std,
                                channel_fraction=float(o.channel_fraction),
                                significance=float(o.significance),
                                max_channels=int(o.max_channels), rank=int(o.rank))
    if covariance is None:
        return templates
    from .whitening import projection_templates

    return projection_templates(templates, covariance, channel_positions,
                                radius_um=float(o.whitening_radius_um))


def _projection_noise(prm_path, channels, filter_, before, n_t, templates, token, executor,
                      reporter, n_samples, rate, o: Bunch, known: dict | None = None,
                      timeline: list | None = None) -> tuple[np.ndarray, float]:
    """The spread of each template's projection on noise, from excerpts (float32); CPU s.

    `known` maps template digests (`TemplateSet.digests`) to the spreads already
    measured (the same excerpts, so the same values): only the other templates are
    projected, and `known` is updated with them. A refinement round changes a few
    templates; the others keep their spread. `timeline` gets the jobs' spans (`_span`).
    """
    known = {} if known is None else known
    digests = templates.digests()
    todo = [k for k, d in enumerate(digests) if d not in known]
    excerpts = _excerpt_chunks(n_samples, int(o.n_noise_excerpts),
                               int(round(o.noise_excerpt_s * rate)), filter_.margin_samples)
    cpu_s = 0.0
    if todo:
        subset = templates if len(todo) == templates.n_templates else templates.subset(todo)
        setup = Setup(prm_path, channels, filter_, "noise", before=before, n_t=n_t,
                      templates=subset, token=token)
        medians_b = []
        for part in executor.imap(run_job, [(setup, c, None) for c in excerpts]):
            cpu_s += part.cpu_s
            _span(timeline, part, "noise")
            if part.n_samples:
                medians_b.append(part.median_abs)
            reporter.increment()
        if not medians_b:
            raise TemplateMatchingError(f"The recording ({n_samples} samples) is shorter "
                                        f"than a template ({n_t} samples).")
        sigma = np.median(np.stack(medians_b), axis=0) / 0.6744897501960817
        for k, value in zip(todo, sigma):
            known[digests[k]] = np.float32(max(float(value), 1e-12))
    else:
        reporter.value = reporter.value + len(excerpts)
    return np.array([known[d] for d in digests], dtype=np.float32), cpu_s


def _span(timeline: list | None, part: Bunch, what: str) -> None:
    """Add a worker job's span (`worker.run_job`: wall-clock start, end, process) to `timeline`."""
    if timeline is not None and "span" in part:
        start, end, pid = part.span
        timeline.append((f"worker {pid}", what, start, end))


def _collect_options(o: Bunch, positions, noise_std, covariance, n_t, before, n_samples,
                     chunk_size) -> Bunch:
    """What the workers collect for the refinement (`phy_tmatch.residual.collect_events`)."""
    from .residual import local_channels, pooling_weights

    local = local_channels(positions, int(o.snippet_channels))
    n_pool = min(int(o.pool_channels), local.shape[1])
    n_chunks = max(1, int(np.ceil(n_samples / max(chunk_size, 1))))
    return Bunch(
        local=local, pool_channels=np.ascontiguousarray(local[:, :n_pool]),
        pool_weights=pooling_weights(positions, local, n_pool, float(o.pool_width_um),
                                     noise_std, covariance),
        sigma_channels=np.asarray(noise_std, dtype=np.float32), before=before,
        residual_threshold=float(o.residual_threshold),
        max_per_template=max(1, int(np.ceil(int(o.max_snippets_per_template) / n_chunks))),
        max_residual_per_channel=max(1, int(np.ceil(int(o.max_residual_per_channel)
                                                    / n_chunks))),
        max_residual=100_000, template_home=None,
        # Misfits: spikes matched at the amplitude's upper bound (`phy_tmatch.residual`).
        misfits=bool(o.refine_parameters.misfits), amplitude_max=float(o.amplitude_range[1]))


def _release_freed_memory() -> None:
    """Give the free pages of the heap back to the system (glibc's ``malloc_trim``), if any.

    The events of a pass arrive from the workers as arrays of a few MB each, which glibc
    serves from its heap once its mmap threshold has risen past their size: freed after
    the refinement, their pages would stay resident through the refinement and the next
    pass (about 250 MB at 200 s, 1024 channels). Elsewhere than glibc, nothing.
    """
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _call(on_idle: Callable[[], Any] | None) -> None:
    """``on_idle()`` if given; its failure is the caller's loss, not the stage's."""
    if on_idle is None:
        return
    try:
        on_idle()
    except Exception as exc:  # noqa: BLE001 - extra work, not the stage's own
        logger.debug("Template matching: on_idle failed (%s: %s).", type(exc).__name__, exc)


def _keep_unchanged(old, refined: Bunch, new):
    """`new` (the refined templates), with the templates the refinement left alone as in `old`.

    A template the refinement kept as it was comes back as its own waveform
    (`refined.means`), which `_make_templates` decomposes again: the same
    template up to rounding, unless fewer matched spikes dropped channels. When
    the channels are the same, the template of `old` is kept as it is, so that
    its arrays are identical and the spread of its projection on noise is known
    (`_projection_noise`) rather than measured again.
    """
    from .templates import gather_templates

    previous = {int(c): k for k, c in enumerate(old.cluster_ids)}
    dense = None
    sources = []
    for i, cluster in enumerate(new.cluster_ids):
        k = previous.get(int(cluster))
        j = int(np.flatnonzero(refined.cluster_ids == cluster)[0])
        if k is not None and np.array_equal(old.channels(k), new.channels(i)):
            dense = old.dense() if dense is None else dense
            if np.array_equal(np.asarray(refined.means[j], dtype=np.float32), dense[k]):
                sources.append((old, k))
                continue
        sources.append((new, i))
    out = gather_templates(sources, new.n_channels, new.rank, new.n_samples)
    out.n_spikes = new.n_spikes.copy()  # what the refinement counted
    return out


def _drop_small(result: Bunch, templates, min_spikes: int) -> Bunch:
    """The spikes of the templates that matched at least `min_spikes` spikes."""
    counts = np.bincount(result.spike_templates, minlength=templates.n_templates)
    for k in np.flatnonzero(counts < min_spikes):
        logger.debug("Template matching: drop c%d (n=%d): fewer than %d spikes in the last "
                     "pass.", templates.cluster_ids[k], counts[k], min_spikes)
    keep = counts[result.spike_templates] >= min_spikes
    return Bunch({key: value[keep] for key, value in result.items()})


def _run(prm, spike_samples, spike_clusters, cluster_ids, channels, channel_positions,
         executor, reporter, o: Bunch,
         noise_statistics: NoiseStatistics | None = None,
         on_idle: Callable[[], Any] | None = None) -> tuple[Bunch, Any, dict]:
    from phy_detect.filtering import Filter

    from .worker import traces

    t0, wall0 = time.perf_counter(), time.time()
    if int(o.refine_rounds) == 0:
        _call(on_idle)  # no refinement: the workers never wait for this process
    # Who was busy when (the parent's steps, the workers' jobs): where the stage waits.
    timeline: list = []
    rate = float(prm.traces.sample_rate)
    # The detection's band-pass (same parameters, same precision).
    filter_args = filter_arguments(prm)
    if hasattr(executor, "warm_up"):
        # The workers start (imports, numba caches, the recording) while this process
        # chooses the spikes.
        from .worker import warm_up

        executor.warm_up(warm_up, str(prm.path), filter_args)
    filter_ = Filter(**filter_args)
    n_samples = int(traces(str(prm.path)).shape[0])
    before, n_t = template_window(float(o.before_ms), float(o.after_ms), rate)
    chunk_size = max(1, int(round(o.chunk_size_s * rate)))
    parameters = _match_parameters(o, rate)
    prm_path = str(prm.path)

    # 1. Templates: sums of the chosen spikes' windows, per chunk.
    chosen, chosen_k = select_spikes(spike_samples, spike_clusters, cluster_ids,
                                     int(o.max_spikes_per_template), n_samples, before,
                                     n_t - before)
    # Chunks of a fixed size: the noise statistics come from some of them, and must
    # not depend on the matching's chunk size.
    plan = template_chunks(n_samples, rate, filter_.margin_samples, n_t)
    bounds = np.searchsorted(chosen, [c.keep_start for c in plan] + [n_samples])
    setup = Setup(prm_path, channels, filter_, "templates", before=before, n_t=n_t)
    # The noise (channel levels, covariance) from a few of these chunks, spread out
    # (`phy_tmatch.noise`): measured here unless it was beforehand, for this run.
    with_noise = set(noise_chunk_indices(len(plan), int(o.n_noise_chunks)))
    key = noise_key(prm_path, channels, n_t, filter_args, [plan[i] for i in sorted(with_noise)])
    measured = noise_statistics is not None and noise_statistics.key == key
    noise = noise_statistics if measured else NoiseStatistics(key)
    # Noise chunks are filtered whole either way (the same sums as when measured here).
    parts = [(plan[i], chosen[bounds[i]:bounds[i + 1]], chosen_k[bounds[i]:bounds[i + 1]],
              i in with_noise and not measured, i in with_noise) for i in range(len(plan))
             if bounds[i + 1] > bounds[i] or (i in with_noise and not measured)]
    jobs = [(setup, None, parts[i:i + TEMPLATE_CHUNKS_PER_JOB])
            for i in range(0, len(parts), TEMPLATE_CHUNKS_PER_JOB)]
    match_chunks = _match_chunks(n_samples, chunk_size, n_t, filter_.margin_samples, parameters)
    n_excerpts = len(_excerpt_chunks(n_samples, int(o.n_noise_excerpts),
                                     int(round(o.noise_excerpt_s * rate)), 0))
    reporter.value_max = len(jobs) + (int(o.refine_rounds) + 1) * (n_excerpts
                                                                   + len(match_chunks))
    sums = np.zeros((len(cluster_ids), n_t, len(channels)))
    n_used = np.zeros(len(cluster_ids), dtype=np.int64)
    cpu = Bunch(templates=0.0, noise=0.0, matching=0.0, refine=0.0)
    for part in executor.imap(run_job, jobs):
        cpu.templates += part.cpu_s
        _span(timeline, part, "templates")
        sums[part.templates] += part.sums
        n_used[part.templates] += part.counts
        if not measured:
            noise.add(part)
        reporter.increment()
    if hasattr(executor, "warm_up"):
        # The workers make the matching's scratch arrays while this process makes the
        # templates (a sort has made the chunk-sized ones during its masked EM:
        # `worker_scratch`); a quarter more templates than clusters, as refinements add some.
        from .worker import match_scratch_shapes, reserve_scratch

        executor.warm_up(reserve_scratch, match_scratch_shapes(
            _longest(match_chunks), len(channels), len(cluster_ids) + len(cluster_ids) // 4 + 8,
            collect=int(o.refine_rounds) > 0))
    if not noise.medians or not n_used.any():
        raise TemplateMatchingError("No spike of the chosen clusters lies inside the recording.")
    noise_std = noise_std_from_medians(noise.medians)
    xtx, n_rows = noise.xtx, noise.n_rows
    means = sums / np.maximum(n_used, 1)[:, None, None]
    covariance = None
    if o.whiten:
        if n_rows < 10 * len(channels):
            logger.warning("Template matching: only %d quiet samples to estimate the noise "
                           "covariance of %d channels; not whitening.", n_rows, len(channels))
        else:
            covariance = xtx / n_rows
    templates = _make_templates(means, n_used, cluster_ids, noise_std, covariance,
                                channel_positions, o)
    del sums, means  # (K, n_t, C) float64 each: not held through the passes
    t_templates = time.perf_counter()

    # 2-3. Matching passes: each but the last collects events, from which the templates
    # are refined (`phy_tmatch.refine`); the last one's spikes are the result.
    n_rounds = int(o.refine_rounds)
    collect = _collect_options(o, channel_positions, noise_std, covariance, n_t, before,
                               n_samples, chunk_size) if n_rounds else None
    window_means = None
    if n_rounds and o.full_means:
        from .means import WindowMeans

        window_means = WindowMeans(traces(prm_path), channels, filter_, n_t, before,
                                   n_channels=int(o.max_channels),
                                   significance=float(o.significance),
                                   channel_fraction=float(o.channel_fraction))
    refinements, t_noise, t_matching = [], 0.0, 0.0
    known_sigma: dict = {}  # digest of a template -> its projection's noise
    next_id = int(max(np.max(spike_clusters, initial=0), np.max(cluster_ids, initial=0))) + 1
    copy_ids: set[int] = set()  # the amplitude splits' copies so far (`_copy_prior`)
    kept_apart = np.zeros((0, 2), dtype=np.int64)
    for round_ in range(n_rounds + 1):
        last = round_ == n_rounds
        t_round = time.perf_counter()
        token = uuid.uuid4().hex
        # The pursuit's cross-correlations of the templates, made here while the workers
        # measure the noise (rather than by every worker at its first chunk of the pass).
        with ThreadPoolExecutor(1, thread_name_prefix="phy-cc") as pool:
            cc = pool.submit(template_cross_correlations, templates)
            sigma, cpu_s = _projection_noise(prm_path, channels, filter_, before, n_t,
                                             templates, token, executor, reporter, n_samples,
                                             rate, o, known=known_sigma, timeline=timeline)
            cc = cc.result()
        cpu.noise += cpu_s
        t_noise += time.perf_counter() - t_round
        t_round = time.perf_counter()
        if collect is not None and not last:
            from .residual import home_channels

            collect.template_home = home_channels(templates)
        setup = Setup(prm_path, channels, filter_, "match", before=before, n_t=n_t,
                      templates=templates,
                      parameters=_copy_prior(parameters, templates, copy_ids, o),
                      sigma=sigma, token=token,
                      collect=None if last else collect, cross_correlations=cc)
        parts, rounds, capped = [], [], 0
        # The refinement's events, capped per template and home channel as they arrive
        # (`phy_tmatch.event_sample`): the parent's memory does not grow with the recording.
        sample = None if last else EventSample(int(o.max_snippets_per_template),
                                               int(o.max_residual_per_channel), seed=round_)
        for i, part in enumerate(executor.imap(run_job, [(setup, c, None)
                                                         for c in match_chunks])):
            events = part.pop("events", None)
            if sample is not None and events is not None:
                sample.add(events, i)
            del events
            parts.append(part)
            rounds.append(part.n_rounds)
            capped += part.capped
            cpu.matching += part.cpu_s
            _span(timeline, part, f"match {round_}")
            reporter.increment()
        if capped:
            logger.warning("Template matching: the pursuit reached max_rounds=%d in %d of %d "
                           "chunks; some spikes may be missed (raise max_rounds).",
                           parameters.max_rounds, capped, len(match_chunks))
        result = Bunch(
            spike_samples=np.concatenate([p.spike_samples for p in parts]),
            spike_templates=np.concatenate([p.spike_templates for p in parts]),
            amplitudes=np.concatenate([p.amplitudes for p in parts]))
        if not last:
            from .refine import refine

            if round_ == 0:
                _call(on_idle)  # the workers wait for the refinement
            cpu_parent, wall_parent = time.process_time(), time.time()
            # float64: what `refine` computes in (handed float32, it would hold both).
            events = sample.result(snippet_dtype=np.float64)
            sample = None
            _release_freed_memory()  # the chunks' events, copied into `events`
            counts = np.bincount(result.spike_templates, minlength=templates.n_templates)
            if window_means is not None:
                # The windows are read as the pass left them (the snippets are of its residual).
                window_means.set_matched(
                    result.spike_samples - templates.trough[result.spike_templates],
                    result.spike_templates, np.clip(result.amplitudes, *o.amplitude_range),
                    templates.dense())
            refined = refine(templates, events, counts, noise_std, collect.local,
                             channel_positions, n_samples, rate, next_id,
                             o.refine_parameters, covariance=covariance,
                             window_means=window_means, before=before)
            events = None  # not through the next pass
            if window_means is not None:
                window_means.set_matched(None, None, None, None)
            next_id = int(max(next_id, np.max(refined.cluster_ids, initial=0) + 1))
            copy_ids.update(int(c) for c in refined.amplitude_copies)
            kept_apart = refined.kept_apart  # the last refinement's (`consolidate`)
            refinements.append({key: int(refined[key]) for key in
                                ("n_split", "n_new", "n_merged", "n_dropped", "n_rescaled")}
                               | dict(n_templates=len(refined.cluster_ids)))
            if refined.changed and len(refined.cluster_ids):
                templates = _keep_unchanged(
                    templates, refined, _make_templates(refined.means, refined.n_spikes,
                                                        refined.cluster_ids, noise_std,
                                                        covariance, channel_positions, o))
            changed = bool(refined.changed)
            refined = None  # its (K, n_t, C) means: not held through the next pass
            _release_freed_memory()
            cpu.refine += time.process_time() - cpu_parent
            # While the workers wait (but for `on_idle`'s job): the stage's critical path.
            logger.debug("Template matching: refinement %d took %.2f s (%.2f s of CPU).",
                         round_, time.time() - wall_parent, time.process_time() - cpu_parent)
            timeline.append(("parent", f"refine {round_}", wall_parent, time.time()))
            t_matching += time.perf_counter() - t_round
            if not changed:
                reporter.value = reporter.value + n_excerpts + len(match_chunks)  # skipped
                n_rounds = round_ + 1
                break
        else:
            t_matching += time.perf_counter() - t_round
    if len(result.spike_samples) and n_rounds > 0 and int(o.refine_parameters.min_spikes) > 1:
        result = _drop_small(result, templates, int(o.refine_parameters.min_spikes))
    consolidated = {}
    if len(result.spike_samples) and n_rounds > 0:
        from .consolidate import consolidate

        index = {int(c): k for k, c in enumerate(templates.cluster_ids)}
        apart = [(index[int(a)], index[int(b)]) for a, b in kept_apart
                 if int(a) in index and int(b) in index]
        result, consolidated = consolidate(result, templates, noise_std, channel_positions,
                                           n_samples, rate, o.consolidate_parameters,
                                           amplitude_min=float(o.amplitude_range[0]),
                                           amplitude_max=float(o.amplitude_range[1]),
                                           apart=apart)
    t_end = time.perf_counter()
    duration = n_samples / rate
    logger.info("Template matching: %d spikes from %d templates in %.1f s of recording in "
                "%.1f s (%.1fx real time; templates %.1f s, noise %.1f s, matching %.1f s).",
                len(result.spike_samples), templates.n_templates, duration, t_end - t0,
                duration / max(t_end - t0, 1e-9), t_templates - t0, t_noise, t_matching)
    info = dict(
        options={k: (list(v) if isinstance(v, tuple) else v) for k, v in o.items()},
        parameters=asdict(parameters), n_t=n_t, template_before=before,
        n_templates=templates.n_templates, cluster_ids=templates.cluster_ids,
        template_trough=templates.trough, template_n_channels=np.diff(templates.ptr),
        template_explained=np.round(templates.explained, 4), projection_sigma=sigma,
        n_spikes=int(len(result.spike_samples)), max_rounds_used=int(max(rounds or [0])),
        chunks_capped=int(capped), refinements=refinements, consolidation=consolidated,
        elapsed_s=round(t_end - t0, 3),
        elapsed_templates_s=round(t_templates - t0, 3),
        elapsed_noise_s=round(t_noise, 3), elapsed_matching_s=round(t_matching, 3),
        # CPU seconds of the jobs of each pass (all workers; not their start-up), and of
        # the parent's refinement (`refine` and the new templates).
        **{f"cpu_{key}_s": round(value, 3) for key, value in cpu.items()},
        # The channels' noise measured before the stage (`phy_tmatch.noise`), and the CPU
        # seconds of its jobs (otherwise in cpu_templates_s).
        noise_measured_before=bool(measured),
        cpu_noise_before_s=round(noise.cpu_s, 3) if measured else 0.0,
        # [who, what, start s, end s] from the stage's start (wall clock).
        timeline=[[who, what, round(a - wall0, 3), round(b - wall0, 3)]
                  for who, what, a, b in timeline])
    return result, templates, info
