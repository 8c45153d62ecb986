"""The SpikeDetekt-style runner: a recording (PRM) in, ``.kwik`` + ``.kwx`` out.

For each channel group of the probe:

1. *Thresholds* from filtered excerpts spread through the recording: the
   workers filter the excerpts (those of `compute_threshold_from_traces`,
   shortened to its memory bound) and send back what the exact medians of
   ``|filtered|`` need (two rounds: each excerpt's middle values, then its
   values inside the merged bracket). Same values, same thresholds.
2. *PCA*: spikes detected in excerpts spread through the recording give the
   waveforms the principal components are fitted on. The workers send only
   the waveforms of the unmasked (spike, channel) pairs, which is all the
   per-channel PCA uses; the parent picks the same spikes as `PCA.fit` would
   and fits from their additive `PCAStatistics` (`PCA.fit_statistics`). The
   parent never holds ``(n, n_samples, n_channels)`` waveforms.
3. *One pass over the recording* in overlapping chunks, in parallel: filter,
   threshold, flood fill, extract and align, project on the PCs. Each job
   returns the spike samples, masks and features of the spikes whose sample
   falls in its chunk (the overlap makes them independent of the chunk
   size); their features and masks are written, in the ``.kwx`` layout, straight
   into the ``.kwx`` as results arrive (`phy_kwik.kwx_rows`: no copy at the
   end), so memory does not grow with the recording. With local workers the
   rows come through shared memory, already in the ``.kwx`` layout
   (`shared_rows`), not pickled through a pipe.
   The PCA excerpts are chunks of this pass (`plan_chunks_with` cuts the
   chunks around them), so a chunk that was a PCA excerpt keeps the spikes
   and masks found then: its job only computes the features.
   Workers read a chunk once, as float32 (columns selected on the raw data
   only when the group is not all the file's columns in order), filter it in
   place, and drop the memory-mapped file pages they read (`release_pages`),
   so their RSS does not grow with the recording.
4. The Kwik files are written under temporary names and renamed only when
   complete: an interrupted run leaves no file that claims to be complete.

The workers start first, in the background (`ProcessExecutor.warm_up`: forked
from a forkserver that has loaded the modules and numba kernels once, then
`phy_detect.worker.warm_up` opens the recording), while this process loads
the plugins and the probe and designs the filter; the Kwik files are created
in a thread while the workers compute the thresholds, and this process loads
its own numba kernels (the PCA fit's) in another (`_warm_up_parent`). The PCA fit sums the
excerpts' pair moments batch by batch on one thread
(`pca.statistics_from_pair_batches`), without concatenating them.

Everywhere the workers filter (threshold excerpts, PCA excerpts, main pass), the
``reference`` stage then applies to the filtered data (`worker.apply_reference`):
``'local'`` subtracts a local common reference (`phy_detect.reference`, built
from the group's site positions); ``'auto'``, the default, does so for every
group that has a geometry with sites far enough apart; ``'none'`` applies nothing.

Stages come from plugins (hook `phy_register_stages`), one per kind, chosen
by name with ``spikedetekt['stages']`` in the PRM (defaults below). A
stage's factory receives the arguments listed in `STAGE_ARGUMENTS` for its
kind; those in `worker.OPTIONAL_STAGE_ARGUMENTS` only if its signature names them
(or takes ``**kwargs``), so that a lab's stage written before they existed
keeps working.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from phy_core.atomic import fsync_directory, fsync_file
from phy_core.errors import PhyError
from phy_core.progress import ProgressReporter

from .chunks import Chunk, plan_chunks_with
from .worker import GroupSetup, clear_buffers, make_stage, run_job

logger = logging.getLogger("phy")

DEFAULT_STAGES = {"filter": "butterworth", "reference": "auto", "threshold": "mad",
                  "detector": "floodfill", "extractor": "centroid", "features": "pca"}
#: The keyword arguments the runner gives each kind of stage factory.
STAGE_ARGUMENTS = {
    "filter": ("rate", "low", "high", "order"),
    "reference": ("channel_positions", "inner_um", "outer_um", "cell_um"),
    "threshold": ("mode", "thresholds"),
    "detector": ("probe_adjacency_list", "join_size"),
    "extractor": ("extract_before", "extract_after", "weight_power", "thresholds"),
    "features": ("n_pcs", "pca_n_waveforms_max"),
}


class DetectionError(PhyError, ValueError):
    """The detection cannot run with these parameters."""


def choose_stages(plugin_manager, names: dict | None = None) -> dict[str, Any]:
    """The `Stage` descriptor for each kind, by name (defaults: `DEFAULT_STAGES`)."""
    wanted = dict(DEFAULT_STAGES, **(names or {}))
    by_kind: dict[str, dict[str, Any]] = {}
    for stage in plugin_manager.collect("phy_register_stages"):
        by_kind.setdefault(stage.kind, {})[stage.name] = stage
    chosen = {}
    for kind, name in wanted.items():
        available = by_kind.get(kind, {})
        if name not in available:
            raise DetectionError(
                f"No {kind} stage named {name!r}; available: "
                f"{', '.join(sorted(available)) or 'none (is the detect plugin enabled?)'}."
            )
        chosen[kind] = available[name]
    return chosen


# -- The runner -------------------------------------------------------------------


def _adjacency_in_columns(probe, channels: np.ndarray) -> dict[int, list[int]]:
    """The probe's adjacency in the group's column indices 0..C-1."""
    column = {int(c): i for i, c in enumerate(channels)}
    return {column[c]: [column[n] for n in neighbours if n in column]
            for c, neighbours in probe.adjacency.items() if c in column}


def _make(stage, **arguments):
    return make_stage(stage.factory, stage.kind, arguments)


def detect(
    prm_path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    plugin_manager=None,
    executor=None,
    chunk_size_s: float | None = None,
    overwrite: bool = False,
    reporter: ProgressReporter | None = None,
    timings: dict | None = None,
) -> Path:
    """Detect spikes in the recording of a PRM file; write ``<experiment_name>.kwik/.kwx``.

    Parameters
    ----------
    prm_path : path
        A klusta-style parameter file (see `phy_rawdata.prm.read_prm`).
    output_dir : path or None
        Where to write the Kwik files (default: the PRM's folder).
    plugin_manager : PhyPluginManager or None
        Where stages come from (default: all installed plugins).
    executor : executor or None
        From `phy_detect.executors.make_executor` (default: local processes).
    chunk_size_s : float or None
        Overrides ``spikedetekt['chunk_size_seconds']``.
    overwrite : bool
        Replace existing Kwik files.
    reporter : ProgressReporter or None
        Receives the progress (one step per chunk and channel group).
    timings : dict or None
        If given, filled with where the wall-clock time went, in seconds:
        ``setup`` (plugins, probe, filter; the workers start meanwhile, and
        the Kwik files are created during the thresholds),
        ``thresholds``, ``pca`` (the excerpt passes; summed over channel
        groups), ``chunks`` (the pass over the recording), ``kwik`` (features
        copied into the ``.kwx``), ``total``; ``n_spikes``; and with local workers
        ``workers_ready``, when the last one had started and warmed up (from
        the start, like the phases: the thresholds' jobs wait for it).

    Returns
    -------
    kwik_path : Path
    """
    from phy_rawdata.prm import read_prm

    from .executors import make_executor

    prm = read_prm(prm_path)
    sd = prm.spikedetekt
    out_dir = Path(output_dir) if output_dir is not None else prm.path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    kwik_path = out_dir / f"{prm.experiment_name}.kwik"
    kwx_path = kwik_path.with_suffix(".kwx")
    if not overwrite and (kwik_path.exists() or kwx_path.exists()):
        raise DetectionError(f"{kwik_path} already exists: use --overwrite to replace it.")
    if prm.prb_file is None:
        raise DetectionError(f"{prm.path}: spike detection needs a probe (prb_file).")
    rate = float(prm.traces.sample_rate)
    high = float(sd["filter_high_factor"]) * rate
    filter_arguments = dict(rate=rate, low=float(sd["filter_low"]), high=high,
                            order=int(sd["filter_butter_order"]),
                            precision=str(sd["filter_precision"]))
    own_executor = executor is None
    executor = executor or make_executor("processes")
    t0 = time.perf_counter()
    tmp_dir = warm = None
    background = ThreadPoolExecutor(1, thread_name_prefix="phy-kwik")
    try:
        # The workers start (in the background) while this process loads the plugins,
        # opens the recording and the probe and designs the filter.
        names = dict(DEFAULT_STAGES, **(sd.get("stages") or {}))
        # By name, before the stages' modules (scipy, numba) are imported here: the
        # workers look the stages up in the installed plugins (best effort: a stage
        # known only to `plugin_manager` is not warmed up).
        ready = _watch_workers(_warm_up(executor, prm, sd, names, filter_arguments))
        if plugin_manager is None:
            from phy_core.plugins import create_plugin_manager

            plugin_manager = create_plugin_manager()
        stages = choose_stages(plugin_manager, names)
        from phy_kwik.creator import KwikCreator
        from phy_probes.builtin import load_probe
        from phy_rawdata.model import open_traces

        traces = open_traces(prm)
        probe = load_probe(prm.prb_file)
        if probe is None:
            raise DetectionError(f"{prm.path}: spike detection needs a probe (prb_file).")
        n_samples, n_file_channels = traces.shape
        filter_ = _make(stages["filter"], **filter_arguments)
        chunk_size = int(round((chunk_size_s or float(sd["chunk_size_seconds"])) * rate))
        join = int(sd["connected_component_join_size"])
        before, after = int(sd["extract_s_before"]), int(sd["extract_s_after"])
        # Wide enough for the filter's edge effects, a component and its waveform.
        margin = int(filter_.margin_samples) + before + after + 2 * join + 8
        margin = max(margin, int(round(float(sd["chunk_overlap_seconds"]) * rate)))
        # The PCA excerpts are chunks of the main pass, which reuses their detections.
        excerpt_ranges = _pca_excerpts(n_samples, sd, rate)
        chunks = plan_chunks_with(n_samples, chunk_size, margin, excerpt_ranges)
        groups = list(probe.channel_groups)
        # Built for every group now: a group without geometry fails before any work.
        references = {group: _reference(stages["reference"], probe, group, sd)
                      for group in groups}

        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{prm.experiment_name}.", dir=out_dir))
        partial = tmp_dir / prm.experiment_name
        reporter = reporter or ProgressReporter()
        reporter.value_max = len(chunks) * len(groups)
        creator = KwikCreator(partial)
        starts = _file_starts(traces)
        # The Kwik files are created (~0.5 s of attributes at 1024 channels) while the
        # workers compute the thresholds; the main pass waits for them. The thread gets
        # the probe's groups, not the probe, whose current group the loop below changes.
        channel_groups = probe.to_channel_groups() if hasattr(probe, "to_channel_groups") \
            else probe
        kwik_files = background.submit(_create_kwik_files, creator, channel_groups, prm, sd,
                                       starts, n_file_channels)
        # This process's own kernels load meanwhile too, while it waits for the workers.
        warm = threading.Thread(target=_warm_up_parent, name="phy-warm-up", daemon=True,
                                args=(stages, bool(sd["use_single_threshold"])))
        warm.start()
        n_total = 0
        phases = dict(setup=time.perf_counter() - t0, thresholds=0.0, pca=0.0, chunks=0.0,
                      kwik=0.0)
        for group in groups:
            probe.change_channel_group(group)
            channels = np.asarray(probe.channels, dtype=np.int64)
            if channels.max() >= n_file_channels:
                raise DetectionError(f"{prm.prb_file}: channel {channels.max()} does not exist "
                                     f"in data with {n_file_channels} channels.")
            n_total += _detect_group(prm, sd, stages, filter_, traces, probe, group, channels,
                                     chunks, excerpt_ranges, executor, creator, reporter,
                                     starts, phases, kwik_files, references[group])
        reporter.set_complete()
        # Complete: on disk, then moved into place (the .kwx first, the .kwik last).
        for path in (partial.with_suffix(".kwx"), partial.with_suffix(".kwik")):
            fsync_file(path)
        os.replace(partial.with_suffix(".kwx"), kwx_path)
        os.replace(partial.with_suffix(".kwik"), kwik_path)
        fsync_directory(out_dir)
    finally:
        if warm is not None:
            warm.join()
        background.shutdown(wait=True)  # the Kwik files are written before removed
        if own_executor:
            executor.close()
        clear_buffers()  # a serial executor ran the chunks in this thread
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    if timings is not None:
        timings.update(phases, total=elapsed, n_spikes=n_total)
        if ready:  # when the last worker was ready (its warm-up done), from the start
            timings["workers_ready"] = max(ready) - t0
    logger.info("%d spikes detected in %.1f s of recording in %.1f s (%.1fx real time).",
                n_total, n_samples / rate, elapsed, n_samples / rate / max(elapsed, 1e-9))
    return kwik_path


#: The local reference's PRM keys (``spikedetekt``) and the factory argument each gives.
REFERENCE_KEYS = {"reference_inner_um": "inner_um", "reference_outer_um": "outer_um",
                  "reference_cell_um": "cell_um"}


def _reference(stage, probe, group: int, sd: dict):
    """The reference stage of channel `group` (None for ``'none'``).

    Its factory gets the group's site positions (None if the probe gives the
    group no geometry) and the PRM's ``reference_*_um`` keys (missing ones take
    `phy_detect.reference`'s defaults).
    """
    from . import reference

    defaults = {"reference_inner_um": reference.DEFAULT_INNER_UM,
                "reference_outer_um": reference.DEFAULT_OUTER_UM,
                "reference_cell_um": reference.DEFAULT_CELL_UM}
    spec = probe.channel_groups[group]
    positions = None
    if spec.get("geometry"):
        probe.change_channel_group(group)
        positions = probe.positions
    arguments = {argument: float(sd.get(key, defaults[key]))
                 for key, argument in REFERENCE_KEYS.items()}
    try:
        return _make(stage, channel_positions=positions, **arguments)
    except PhyError as e:
        raise DetectionError(f"Channel group {group}: {e}") from None


def _watch_workers(futures) -> list[float]:
    """When each of the warm-up `futures` completed (`time.perf_counter`), once all have;
    empty until then (or without futures)."""
    done: list[float] = []
    futures = list(futures or [])
    lock = threading.Lock()
    times: list[float] = []

    def finished(_future) -> None:
        with lock:
            times.append(time.perf_counter())
            if len(times) == len(futures):
                done.extend(times)

    for future in futures:
        future.add_done_callback(finished)
    return done


def _warm_up(executor, prm, sd: dict, stages: dict, filter_arguments: dict) -> list:
    """Ask the executor's workers to get ready (`phy_detect.worker.warm_up`); the futures
    of their warm-ups (if the executor gives them).

    `stages` maps each kind to its factory, or to its name in the installed plugins.
    """
    from .worker import warm_up

    if not hasattr(executor, "warm_up"):
        return []
    arguments = {
        "filter": filter_arguments,
        "threshold": {"mode": sd["detect_spikes"]},
        "detector": {"join_size": int(sd["connected_component_join_size"])},
        "extractor": {"extract_before": int(sd["extract_s_before"]),
                      "extract_after": int(sd["extract_s_after"]),
                      "weight_power": float(sd["weight_power"])},
    }
    return executor.warm_up(warm_up, str(prm.path),
                            {kind: (stages[kind], arguments[kind]) for kind in arguments})


def _warm_up_parent(stages: dict, single_threshold: bool) -> None:
    """Load the numba kernels this process runs with the built-in stages (best effort).

    The PCA fit's moments (`pca.warm_up_fit`) and the per-channel medians'
    grouping: the first numba kernel loaded here also loads numba's
    registries (~0.4 s of CPU, scipy.linalg's import included), which the
    fit used to pay while the workers waited for its PCs. Run in a thread while the workers
    start and compute the thresholds, when this process only waits.
    """
    from . import pca, threshold

    with contextlib.suppress(Exception):
        if stages["features"].factory is pca._make_pca:
            pca.warm_up_fit()
        if not single_threshold:
            threshold.warm_up_medians()


def _create_kwik_files(creator, channel_groups, prm, sd: dict, starts: np.ndarray,
                       n_file_channels: int) -> None:
    """Create the (partial) Kwik files: the probe, the recordings, the parameters."""
    rate = float(prm.traces.sample_rate)
    creator.create_empty()
    creator.set_probe(channel_groups)
    # One Kwik recording per raw data file, as klusta wrote them.
    for r, (raw_path, start) in enumerate(zip(prm.traces.raw_data_files, starts, strict=False)):
        creator.add_recording(r, raw_path=raw_path, start_sample=int(start), sample_rate=rate)
    creator.set_metadata("/application_data/spikedetekt", prb_file=str(prm.prb_file),
                         dtype=str(prm.traces.dtype), n_channels=int(n_file_channels),
                         sample_rate=rate,
                         **{k: v for k, v in sd.items() if v is not None and k != "stages"})


def _file_starts(traces) -> np.ndarray:
    """First sample of each raw data file in the concatenated recording."""
    offsets = getattr(traces, "offsets", None)
    return np.asarray(offsets[:-1] if offsets is not None else [0], dtype=np.int64)


#: `compute_threshold_from_traces`'s default bound on the values kept for the median.
THRESHOLD_MAX_VALUES = 2**26
#: Jobs of the threshold excerpts (each round), a few excerpts each.
THRESHOLD_JOBS = 16


def _threshold_excerpts(n_samples: int, n_excerpts: int, size: int, n_channels: int,
                        filter_) -> list[tuple[int, int]]:
    """The excerpts `compute_threshold_from_traces` filters (same shortening rule)."""
    from .threshold import excerpts

    budget = max(1, THRESHOLD_MAX_VALUES // max(1, n_excerpts * n_channels))
    size = max(min(size, budget), getattr(filter_, "padlen", 0) + 1)
    return excerpts(n_samples, n_excerpts, size)


def compute_thresholds(executor, setup: GroupSetup, n_samples: int, sd: dict,
                       rate: float) -> np.ndarray:
    """Thresholds as `compute_threshold_from_traces`, the excerpts filtered in the workers.

    The same excerpts and the same medians of ``|filtered|`` (bit for bit),
    without sending every value to this process (at 1024 channels, 256 MB
    pickled, then a median over 2**26 values here): each excerpt first
    reports its lower and upper middle values (`threshold.median_bracket`),
    then only how many of its values fall below the merged bracket and those
    inside it (`threshold.values_in_bracket`), from the filtered excerpt its
    worker kept (filtered again only if no worker kept it); the exact medians
    follow (`threshold.medians_from_parts`).
    """
    from .threshold import _MAD_TO_STD, _std_factors, medians_from_parts, merge_brackets

    ranges = _threshold_excerpts(n_samples, int(sd["n_excerpts"]),
                                 int(round(float(sd["excerpt_size_seconds"]) * rate)),
                                 len(setup.channels), setup.filter)
    single = bool(sd["use_single_threshold"])
    chunks = [Chunk(i, a, b, a, b) for i, (a, b) in enumerate(ranges)]
    # A few excerpts per job (small jobs: fewer round trips), each job's in a list.
    batches = [chunks[i::THRESHOLD_JOBS] for i in range(min(THRESHOLD_JOBS, len(chunks)))]
    # The run's name lets a worker keep the excerpts it filtered for the second round.
    setup = replace(setup, task="threshold", single_threshold=single,
                    threshold_run=uuid.uuid4().hex)
    bracket = merge_brackets(part for results in executor.imap(
        run_job, [(setup, *batch) for batch in batches]) for part in results)
    # Second round: each worker reports the excerpts it kept (each once, whichever job it
    # runs), then the excerpts no worker had (a worker that ran no such job, or a full
    # cache) are filtered again. The parts' order does not change the medians.
    setup = replace(setup, task="threshold_kept", threshold_bracket=bracket)
    parts = {}
    n_spans = len(set(ranges))
    kept = executor.imap(run_job, [(setup,)] * len(batches))
    for results in kept:
        parts.update(results)
        if len(parts) == n_spans:
            # Every excerpt is back (usually after one job per worker): the PCA excerpts
            # need not wait for the other jobs, which would only report nothing. Those
            # not submitted yet never are; those queued run empty behind the next jobs.
            break
    if hasattr(kept, "close"):
        kept.close()
    missing = [c for c in chunks if (c.keep_start, c.keep_stop) not in parts]
    if missing:
        setup = replace(setup, task="threshold_values")
        batches = [missing[i::THRESHOLD_JOBS] for i in range(min(THRESHOLD_JOBS, len(missing)))]
        for batch, results in zip(batches, executor.imap(
                run_job, [(setup, *batch) for batch in batches]), strict=True):
            parts.update(((c.keep_start, c.keep_stop), part)
                         for c, part in zip(batch, results, strict=True))
    n_values = sum(b - a for a, b in ranges) * (len(setup.channels) if single else 1)
    median = medians_from_parts(n_values, (parts[a, b] for a, b in ranges))
    factors = _std_factors((float(sd["threshold_weak_std_factor"]),
                            float(sd["threshold_strong_std_factor"])))
    if single:
        return factors * (np.float64(median[0]) / _MAD_TO_STD)
    std = np.asarray(median, dtype=np.float64) / _MAD_TO_STD
    return factors[:, None] * std[None, :]


def _fit_pca(pca, executor, setup: GroupSetup, excerpt_chunks: list[Chunk], n_pca: int,
             n_channels: int, chunks: list[Chunk]) -> tuple[int, dict]:
    """Fit the features stage on the spikes of the excerpts.

    As before: the excerpts' spikes in order until `n_pca` are found, then
    `pca.subsample` of them. The workers send only the waveforms of the
    unmasked (spike, channel) pairs (a spike is seen on a few channels), so
    the parent never holds ``(n, n_samples, n_channels)`` waveforms; a stage
    without `fit_statistics` gets the full waveforms (the former path).

    Returns the number of spikes found and, with the built-in extractor, the
    detections of the excerpts that are also chunks of the main pass
    (`chunks`), ``{(keep_start, keep_stop, load_start, load_stop): result}``
    (pair waveforms dropped), for the main pass to reuse: those the fit used
    and those still in flight when it had its spikes (their jobs run anyway).
    """
    from .executors import single_blas_thread
    from .pca import PairBatchMoments
    from .worker import _is_builtin_extractor

    by_pairs = hasattr(pca, "fit_statistics") and hasattr(pca, "subsample")
    # A copy: jobs may still be pickled (or, on threads, running) after the break.
    setup = replace(setup, task="pca" if by_pairs else "detect")
    parts, n_fit, enough = [], 0, False

    def jobs():  # submitted lazily: none after the fit has its spikes
        for chunk in excerpt_chunks:
            if enough:
                return
            yield setup, chunk

    # While the fit will take every spike found so far (`pca.subsample` None), the pair
    # moments are summed as the parts arrive, while the workers detect the next ones:
    # the same sums in the same order, no longer between the last excerpt and the main pass.
    moments = PairBatchMoments(n_channels) if by_pairs else None
    results = executor.imap(run_job, jobs())
    for result in results:
        parts.append(result)
        n_fit += len(result.spike_samples)
        if moments is not None and pca.subsample(n_fit) is None:
            moments.add(*_pair_batch(result))
        else:
            moments = None
        if n_fit >= n_pca:
            enough = True
            break
    main_keys = {_chunk_key(c) for c in chunks}
    reusable = by_pairs and _is_builtin_extractor(setup.extractor)
    in_flight = excerpt_chunks[len(parts):]
    if not (reusable and in_flight and _chunk_key(in_flight[0]) in main_keys) \
            and hasattr(results, "close"):
        results.close()  # now: cancels the excerpt jobs not started yet
    if n_fit > 0:
        # The jobs still in flight run meanwhile.
        limit = contextlib.nullcontext() \
            if getattr(executor, "runs_jobs_in_threads", False) else single_blas_thread()
        with limit:
            if moments is not None:
                pca.fit_statistics([moments.statistics()])
            else:
                _fit(pca, parts, n_fit, n_channels, by_pairs)
    parts += list(results)  # those in flight, if not cancelled
    if n_fit == 0 or not reusable:
        return n_fit, {}
    detections = {}
    for chunk, part in zip(excerpt_chunks, parts, strict=False):
        if _chunk_key(chunk) in main_keys:
            del part["pair_waveforms"]
            detections[_chunk_key(chunk)] = part
    return n_fit, detections


def _chunk_key(chunk: Chunk) -> tuple[int, int, int, int]:
    return chunk.keep_start, chunk.keep_stop, chunk.load_start, chunk.load_stop


def _main_pass(executor, setup: GroupSetup, chunks: list[Chunk], detections: dict,
               n_channels: int, n_pcs: int, writer, with_features: bool = True,
               traces=None):
    """Run the pass over `chunks`: their ``.kwx`` rows appended to `writer`, in order.

    Yields each chunk's spike samples once its rows are written. A chunk that
    is also a PCA excerpt (`plan_chunks_with`) keeps the spikes and masks
    found then; its job only computes their features (`features_at_times`):
    no thresholds, flood fill or masks twice. With local workers the rows come
    through shared memory (`shared_rows`), else inline. Without
    `with_features` (no PCA fitted) the features are zeros. With the recording
    (`traces`), the kernel reads it ahead of the jobs (`readahead`).
    """
    from .readahead import ReadAhead

    row_bytes = n_channels * n_pcs * 2 * 4
    readahead = ReadAhead(traces, chunks)
    slots = _row_slots(executor, chunks, detections, row_bytes) if with_features else None
    features_setup = replace(setup, task="features")
    parts = [detections.get(_chunk_key(chunk)) for chunk in chunks]

    def jobs():  # lazily: a slot is taken when its job is submitted
        for j, (chunk, part) in enumerate(zip(chunks, parts, strict=True)):
            slot = slots.take(j) if slots is not None else None
            readahead.submitted(j)
            if part is None:
                yield setup, chunk, slot
                continue
            pairs = (part.pair_spikes, part.pair_channels, part.pair_masks) \
                if slot is not None else None
            yield features_setup, chunk, part.spike_times, pairs, slot

    try:
        results = executor.imap(run_job, jobs())
        for j, (part, result) in enumerate(zip(parts, results, strict=True)):
            samples = result.spike_samples if part is None else part.spike_samples
            n = len(samples)
            if "n_rows" in result:
                if result.n_rows != n:
                    raise DetectionError(f"Chunk {j} returned {result.n_rows} feature rows for "
                                         f"{n} spikes.")
                writer.append(slots.rows(j, result.slot, n * row_bytes))
                slots.release(j)
            elif "rows" in result:
                rows = np.asarray(result.rows)
                if rows.shape != (n, n_channels * n_pcs, 2):
                    raise DetectionError(f"Chunk {j} returned feature rows {rows.shape}, "
                                         f"expected ({n}, {n_channels * n_pcs}, 2).")
                writer.append(rows)
                if slots is not None:
                    slots.release(j, needed=rows.nbytes)  # grows the slot: it did not fit
            else:
                if slots is not None:
                    slots.release(j)
                if n:
                    masks = result.masks if part is None else _dense_masks(part, n_channels)
                    features = result.features if with_features \
                        else np.zeros((n, n_channels * n_pcs), np.float32)
                    writer.append(_kwx_rows(features, masks, n_channels, n_pcs))
            readahead.done(j)
            yield samples
    finally:
        readahead.close()
        if slots is not None:
            slots.close()


def _dense_masks(part, n_channels: int) -> np.ndarray:
    masks = np.zeros((len(part.spike_samples), n_channels), dtype=np.float32)
    masks[part.pair_spikes, part.pair_channels] = part.pair_masks
    return masks


def _row_slots(executor, chunks: list[Chunk], detections: dict, row_bytes: int):
    """Shared-memory slots for the chunks' rows (`shared_rows.RowSlots`), or None.

    Sized for the densest PCA excerpt's spikes in the longest chunk, with
    room to spare; a chunk with more spikes sends its rows inline once, and
    its slot grows.
    """
    from .shared_rows import RowSlots, shared_memory_available

    if not getattr(executor, "local_workers", False) or not shared_memory_available():
        return None
    longest = max(c.keep_stop - c.keep_start for c in chunks)
    density = max((len(p.spike_samples) / max(key[1] - key[0], 1)
                   for key, p in detections.items()), default=0.0)
    size = int(1.5 * density * longest + 64) * row_bytes
    try:
        return RowSlots(int(getattr(executor, "max_in_flight", 1)), size)
    except OSError as e:  # no room in /dev/shm: inline, as elsewhere
        logger.debug("No shared memory for the feature rows (%s): sent inline.", e)
        return None


def _fit(pca, parts: list, n_fit: int, n_channels: int, by_pairs: bool) -> None:
    from .pca import statistics_from_pair_batches

    if not by_pairs:
        pca.fit(np.concatenate([p.waveforms for p in parts]),
                np.concatenate([p.masks for p in parts]))
        return
    # Part by part: no copy of the ~100 MB of pair waveforms (1024 channels), and no
    # numba thread pool started here (its start cost more than it saved while the
    # workers hold the cores). Here the fit takes a subsample, known only now that all
    # its parts are in (otherwise `_fit_pca` summed them as they arrived): the workers
    # soon wait for its PCs, so a thread per core sums a range of channels each (the
    # same sums, bit for bit).
    batches = (_pair_batch(p) for p in parts)
    n_threads = min(os.cpu_count() or 1, 4)
    pca.fit_statistics([statistics_from_pair_batches(batches, n_channels, n_fit,
                                                     pca.subsample(n_fit),
                                                     n_threads=n_threads)])


def _pair_batch(part) -> tuple:
    """A PCA excerpt's pairs as `pca.statistics_from_pair_batches` takes them."""
    return part.pair_waveforms, part.pair_channels, part.pair_spikes, len(part.spike_samples)


def _pca_excerpts(n_samples: int, sd: dict, rate: float) -> list[tuple[int, int]]:
    """The PCA excerpts: spread through the recording, independent of the chunk size."""
    from .threshold import excerpts

    size = int(round(float(sd["excerpt_size_seconds"]) * rate))
    return excerpts(n_samples, int(sd["n_excerpts"]), size)


def _detect_group(prm, sd, stages, filter_, traces, probe, group, channels, chunks,
                  excerpt_ranges, executor, creator, reporter, starts, phases: dict,
                  kwik_files, reference=None) -> int:
    rate = float(prm.traces.sample_rate)
    mode = sd["detect_spikes"]
    n_samples = int(traces.shape[0])
    t0 = time.perf_counter()
    # Thresholds from excerpts filtered in the workers.
    setup = GroupSetup(str(prm.path), channels, filter_, None, None, None, None,
                       task="threshold", reference=reference)
    thresholds = compute_thresholds(executor, setup, n_samples, sd, rate)
    weak, strong = thresholds[0], thresholds[1]
    t_thresholds = time.perf_counter()
    thresholder = _make(stages["threshold"], mode=mode,
                        thresholds={"weak": weak, "strong": strong})
    detector = _make(stages["detector"],
                     probe_adjacency_list=_adjacency_in_columns(probe, channels), join_size=int(
                         sd["connected_component_join_size"]),
                     thresholds={"weak": weak, "strong": strong},
                     split_prominence=sd["split_prominence"],
                     split_tall_peak=sd["split_tall_peak"],
                     split_tall_prominence=float(sd["split_tall_prominence"]),
                     split_tall_apart=bool(sd["split_tall_apart"]),
                     split_far_peak=sd["split_far_peak"], split_lead=sd["split_lead"])
    extractor = _make(stages["extractor"], extract_before=int(sd["extract_s_before"]),
                      extract_after=int(sd["extract_s_after"]),
                      weight_power=float(sd["weight_power"]),
                      thresholds={"weak": weak, "strong": strong},
                      centroid_fraction=sd["centroid_fraction"])
    setup = GroupSetup(str(prm.path), channels, filter_, thresholder, detector, extractor, None,
                       reference=reference)

    # PCA on the spikes of excerpts spread through the recording.
    n_pca = int(sd["pca_n_waveforms_max"])
    pca = _make(stages["features"], n_pcs=int(sd["n_features_per_channel"]),
                pca_n_waveforms_max=n_pca)
    # Excerpts spread through the recording (the fit does not depend on the chunk size),
    # each a chunk of the main pass (`plan_chunks_with`): the main pass reuses their spikes.
    by_range = {(c.keep_start, c.keep_stop): c for c in chunks}
    excerpt_chunks = [by_range[r] for r in excerpt_ranges]
    n_channels = len(channels)
    n_fit, detections = _fit_pca(pca, executor, setup, excerpt_chunks, n_pca, n_channels,
                                 chunks)
    if n_fit == 0:
        logger.warning("Channel group %d: no spike found in the excerpts.", group)
    setup.pcs = pca
    n_features = int(sd["n_features_per_channel"]) * n_channels
    t_pca = time.perf_counter()

    # The pass over the whole recording: features and masks appended, in the .kwx
    # layout, to the .kwx itself; they become the dataset at the end (no copy).
    samples = []
    n_pcs = int(sd["n_features_per_channel"])
    kwik_files.result()  # created meanwhile (raises what creating them raised)
    writer = creator.kwx_row_writer(n_features)
    try:
        for chunk_samples in _main_pass(executor, setup, chunks, detections, n_channels,
                                        n_pcs, writer, with_features=n_fit > 0,
                                        traces=traces):
            samples.append(chunk_samples)
            reporter.increment()
    finally:
        writer.close()
    spike_samples = np.concatenate(samples) if samples else np.zeros(0)
    n_spikes = len(spike_samples)
    t_chunks = time.perf_counter()

    # Kwik stores spike samples relative to their recording (raw data file).
    recordings = np.searchsorted(starts, np.floor(spike_samples), side="right") - 1
    relative = spike_samples - starts[recordings]
    if n_spikes:
        creator.add_spikes(group, relative, spike_recordings=recordings,
                           features_masks=writer, n_channels=n_channels, n_features=n_pcs)
    else:
        creator.add_spikes(group, relative, spike_recordings=recordings)
    creator.add_clustering(group, "main", np.zeros(len(spike_samples), dtype=np.int64))
    t_end = time.perf_counter()
    logger.info("Channel group %d: %d spikes.", group, len(spike_samples))
    # Where the time went (`phy -v detect ...`): the excerpt passes do not grow with the
    # recording, the main pass does.
    logger.debug("Channel group %d: thresholds %.1f s, PCA fit %.1f s (%d spikes), main pass "
                 "%.1f s (chunks %.1f s, Kwik files %.1f s).", group, t_thresholds - t0,
                 t_pca - t_thresholds, n_fit, t_end - t_pca, t_chunks - t_pca,
                 t_end - t_chunks)
    for name, seconds in (("thresholds", t_thresholds - t0), ("pca", t_pca - t_thresholds),
                          ("chunks", t_chunks - t_pca), ("kwik", t_end - t_chunks)):
        phases[name] += seconds
    return len(spike_samples)


def _kwx_rows(features, masks, n_channels: int, n_pcs: int) -> memoryview:
    """A chunk's features and masks as ``.kwx`` rows: ``(n, n_channels * n_pcs, 2)`` float32.

    Features in ``[..., 0]``; each channel's mask, repeated for its `n_pcs`
    features, in ``[..., 1]``.
    """
    features, masks = np.asarray(features), np.asarray(masks)
    n = len(features)
    if features.shape != (n, n_channels * n_pcs) or masks.shape != (n, n_channels):
        raise DetectionError(f"A chunk returned features {features.shape} and masks "
                             f"{masks.shape}, expected ({n}, {n_channels * n_pcs}) and "
                             f"({n}, {n_channels}).")
    rows = np.empty((n, n_channels * n_pcs, 2), dtype=np.float32)
    rows[..., 0] = features
    repeated = rows[..., 1]
    repeated.shape = (n, n_channels, n_pcs)  # a view (raises rather than copy)
    repeated[...] = masks[:, :, None]
    return memoryview(rows).cast("B")
