"""The whole sort: spike detection, masked EM clustering of every channel group, then
optionally template matching.

`sort_recording` runs `phy_detect.runner.detect` on a PRM file (which writes
``<experiment_name>.kwik``/``.kwx`` only once complete), then
`phy_masked_em.command.cluster_kwik` on each channel group, with the PRM's
``klustakwik2`` parameters. The result is the ``main`` clustering of each
group (the detection's single-cluster clustering is kept as
``main_previous``).

Template matching (optional)
    With ``template_matching = dict(...)`` in the PRM (or the
    `template_matching` argument, ``--template-matching``), each channel
    group's clusters then seed `phy_tmatch.runner.template_match` (noise and
    MUA clusters included, one refinement round by default:
    `TEMPLATE_MATCHING_DEFAULTS`), which writes the template directory
    ``<experiment_name>.templates.<group>`` beside the Kwik file. With worker
    processes, the channels' noise that the template matching needs (levels and
    covariance: `phy_tmatch.noise`, which needs no cluster) is measured by a
    worker while the masked EM runs here, when it would otherwise wait; the same
    values as the template matching measures.

Labels (``auto_label``)
    At the end, `phy_autolabel` labels the clear single units good in the
    Kwik file and the template directories. With template matching on worker
    processes, the work the workers would otherwise wait through is theirs:
    one estimates the recording's noise while the masked EM runs here; one
    decides the Kwik file's labels while the template matching runs (they
    depend only on the masked EM; saved here once the template matching has
    finished, since it seeds from the Kwik file's groups as they were; the
    job starts when the template matching's first refinement does, as its
    workers would otherwise wait for this process); and
    once it has finished, they compute the template directory's metrics,
    each a share of its clusters, which are decided and saved here. The
    same numbers, labels and files as labelling everything here.

Resuming
    Right after detection, ``<experiment_name>.spikesort.json`` is written
    beside the Kwik file (atomically): what identifies the detection (the
    PRM's ``spikedetekt`` and ``traces`` sections, the probe file) and the
    channel groups clustered (and template-matched) so far; it is deleted
    when every group has been through every stage. If the Kwik file exists
    and is complete, a run without
    ``overwrite`` then *resumes* instead of failing: the detection is not
    redone, the groups already clustered (matched) are not clustered (matched)
    again, and each remaining
    group resumes from its ``cluster-auto`` checkpoint when there is one
    (see `phy_masked_em.command`). A Kwik file left by ``phy detect`` and an
    interrupted ``phy cluster-auto`` (a checkpoint, no state file) resumes
    the checkpointed groups. Otherwise an existing Kwik file is an error
    unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from phy_core.bunch import Bunch
from phy_core.errors import PhyError

logger = logging.getLogger("phy")

STATE_SUFFIX = ".spikesort.json"
_STATE_VERSION = 1


class SpikeSortError(PhyError, ValueError):
    """The sort cannot run (or resume) with these files."""


def state_path(kwik_path: str | os.PathLike) -> Path:
    """The resume state of a sort writing `kwik_path`."""
    kwik_path = Path(kwik_path)
    return kwik_path.with_name(kwik_path.stem + STATE_SUFFIX)


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def detection_identity(prm) -> dict:
    """What the detection's output depends on: PRM sections and the probe file's bytes."""
    probe = Path(prm.prb_file) if prm.prb_file is not None else None
    probe_sha = hashlib.sha256(probe.read_bytes()).hexdigest() if probe and probe.is_file() \
        else None
    identity = dict(version=_STATE_VERSION, spikedetekt=dict(prm.spikedetekt),
                    traces=dict(prm.traces), prb_file=str(probe), prb_sha256=probe_sha)
    return json.loads(json.dumps(identity, sort_keys=True, default=_plain))


def _write_state(path: Path, identity: dict, clustered: list[int],
                 matched: list[int] | None = None) -> None:
    from phy_core.atomic import atomic_write

    atomic_write(path, json.dumps(dict(detection=identity, clustered=sorted(clustered),
                                       matched=sorted(matched or [])),
                                  indent=1, sort_keys=True) + "\n")


def _read_state(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        clustered = [int(g) for g in state["clustered"]]
        matched = [int(g) for g in state.get("matched", [])]
        return dict(detection=state["detection"], clustered=clustered, matched=matched)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: unreadable sort state (%s); ignoring it.", path, exc)
        return None


def _resume_plan(kwik_path: Path, identity: dict,
                 matching: bool = False) -> list[int] | None:
    """Channel groups still to cluster (or, with `matching`, to match) if an interrupted
    sort can resume; None if not.

    Raises `SpikeSortError` when the existing files cannot be resumed.
    """
    from phy_masked_em.command import checkpointed_groups

    kwx_path = kwik_path.with_suffix(".kwx")
    if not kwx_path.exists():
        raise SpikeSortError(f"{kwik_path} exists without its {kwx_path.name}: use --overwrite "
                             "to detect the spikes again.")
    state = _read_state(state_path(kwik_path))
    if state is not None:
        if state["detection"] != identity:
            raise SpikeSortError(
                f"{kwik_path} is an interrupted sort with other detection parameters (or "
                f"another recording or probe) than now (see {state_path(kwik_path).name}): use "
                "--overwrite to sort again.")
        done = set(state["clustered"]) & (set(state["matched"]) if matching else
                                          set(state["clustered"]))
        return [g for g in _channel_groups(kwik_path) if g not in done]
    groups = checkpointed_groups(kwik_path)
    return groups or None


def _channel_groups(kwik_path: Path) -> list[int]:
    """The channel groups of a Kwik file (a light read, without a `KwikModel`)."""
    from phy_kwik.model import kwik_channel_groups

    return kwik_channel_groups(kwik_path)


def _check_channel_group(prm, channel_group: int | None) -> None:
    if channel_group is None or prm.prb_file is None:
        return
    from phy_probes.builtin import load_probe

    probe = load_probe(prm.prb_file)
    groups = list(probe.channel_groups) if probe is not None else []
    if channel_group not in groups:
        raise SpikeSortError(f"{prm.prb_file}: no channel group {channel_group}; the probe has "
                             f"{', '.join(map(str, groups)) or 'none'}.")


def _group_counts(kwik_path: Path, group: int) -> tuple[int, int]:
    """(spikes, clusters) of the ``main`` clustering of a channel group (a light read)."""
    from phy_kwik.model import clustering_counts

    return clustering_counts(kwik_path, group)


def _recording_duration(prm) -> float:
    from phy_rawdata.model import open_traces

    return open_traces(prm).shape[0] / float(prm.traces.sample_rate)


def _detect(prm, out_dir: Path, executor, n_workers: int | None, scheduler: str | None,
            **kwargs: Any) -> Path:
    """`phy_detect.runner.detect` on an executor made here (and closed) unless one is given."""
    from phy_detect.runner import detect

    own_executor = executor is None
    if own_executor:
        from phy_detect.executors import make_executor

        executor = make_executor("processes", n_workers=n_workers, scheduler=scheduler)
    try:
        return Path(detect(prm.path, output_dir=out_dir, executor=executor, **kwargs)).absolute()
    finally:
        if own_executor:  # the workers' memory is free for the clustering
            executor.close()


class _SharedWorkers:
    """One pool of worker processes for detection and template matching, made on first use.

    Starting a pool costs each worker ~1 s of CPU (imports, kernels from the numba
    cache): with template matching on, the detection's pool is kept (idle while the
    masked EM runs) and reused. `close` ends it, if it was made here.
    """

    def __init__(self, executor, n_workers: int | None, scheduler: str | None) -> None:
        self._given = executor
        self._made = None
        self._options = dict(n_workers=n_workers, scheduler=scheduler)

    def get(self):
        if self._given is not None:
            return self._given
        if self._made is None:
            from phy_detect.executors import make_executor

            self._made = make_executor("processes", **self._options)
        return self._made

    def existing(self):
        """The pool if there is one (given, or made by an earlier `get`), else None."""
        return self._given if self._given is not None else self._made

    def close(self) -> None:
        if self._made is not None:
            self._made.close()
            self._made = None


class _NoiseInBackground:
    """The labels' noise estimate of the recording (`phy_autolabel.sources.recording_noise`),
    computed by a worker of the shared pool while this process runs the masked EM.

    The workers wait for the template matching meanwhile, and the EM keeps one core: the
    labels then find the noise estimated (the same numbers: each channel's estimate is its
    own). Reads only the raw data, never the Kwik file being written. A failure costs
    nothing: the labels estimate the noise themselves. With `after` (a background job's
    `wait`), the job is submitted once that one has finished: one worker at a time works
    beside the EM, which keeps its core.
    """

    def __init__(self, executor, prm_path, after=None) -> None:
        import threading

        self._result: list = []
        # The executor's ordered map blocks until the result: a thread waits for it.
        self._thread = threading.Thread(target=self._run,
                                        args=(executor, str(prm_path), after),
                                        name="phy-noise", daemon=True)
        self._thread.start()

    def _run(self, executor, prm_path: str, after=None) -> None:
        from phy_autolabel.sources import recording_noise

        if after is not None:
            after()
        try:
            self._result.extend(executor.imap(recording_noise, [prm_path]))
        except Exception as exc:  # noqa: BLE001 - the labels estimate the noise themselves
            logger.debug("Noise estimate in a worker failed (%s: %s).", type(exc).__name__, exc)

    def into(self, noise_cache) -> None:
        """Wait for the estimate and put it in `noise_cache` (a `NoiseCache`)."""
        self._thread.join()
        if self._result and self._result[0] is not None:
            noise_cache.put(*self._result[0])


def _kwik_labels_job(job: tuple) -> tuple:
    """A worker's share of the labels: decide those of one channel group of a Kwik file
    (`phy_autolabel.label_clusters`, a dry run), with the noise known so far.

    Returns ``(results, noise_cache, cpu_s)``: the noise cache as the labels left it
    (with whatever they estimated), and the CPU time spent here.
    """
    from phy_autolabel import label_clusters

    kwik_path, group, noise = job
    cpu = time.process_time()
    results = label_clusters(kwik_path, channel_group=group, noise_cache=noise, dry_run=True)
    return results, noise, time.process_time() - cpu


class _TemplateNoiseInBackground:
    """The channels' noise of a channel group's template matching
    (`phy_tmatch.noise.measure_noise`), measured by the shared pool's workers while this
    process runs the masked EM.

    It needs no cluster, and a worker is idle during the EM: the template matching's
    first pass then only sums the spikes' windows (its noise chunks as it would have
    measured them: the same values). Its jobs are submitted one at a time: one worker
    works beside the EM, which keeps its core (the labels' noise comes after, on the
    same terms: `_NoiseInBackground`). A failure costs only the time: the template
    matching then measures the noise itself.
    """

    def __init__(self, executor, prm_path, group: int, options: dict, then=None) -> None:
        import threading

        self._result: list = []
        # The executor's ordered map blocks until the results: a thread waits for them.
        self._thread = threading.Thread(target=self._run,
                                        args=(executor, str(prm_path), group, options, then),
                                        name="phy-tmatch-noise", daemon=True)
        self._thread.start()

    def _run(self, executor, prm_path: str, group: int, options: dict, then=None) -> None:
        from phy_tmatch.noise import measure_noise

        try:
            self._result.append(measure_noise(prm_path, _OneJobAtATime(executor),
                                              channel_group=group, **options))
        except Exception as exc:  # noqa: BLE001 - the template matching measures it itself
            logger.debug("Template noise in the workers failed (%s: %s).",
                         type(exc).__name__, exc)
        if then is not None:
            then()  # e.g. the next work beside the EM (`_reserve_template_scratch`)

    def wait(self) -> None:
        self._thread.join()

    def result(self):
        """Wait for the workers; the `NoiseStatistics`, or None if they failed."""
        self._thread.join()
        return self._result[0] if self._result else None


def _warm_up_template_workers(executor, prm) -> None:
    """The workers load the template matching's numba kernels and open the recording
    (`phy_tmatch.worker.warm_up`, ~0.1-0.3 s of CPU each), without waiting.

    Submitted while the masked EM runs here, when a worker is idle: at the template
    matching's start they would compete with this process, which reads the clusters and
    chooses the spikes, and its first jobs would wait behind them. The template matching
    warms them up again, which then costs nothing.
    """
    if not hasattr(executor, "warm_up"):
        return
    from phy_tmatch.noise import filter_arguments
    from phy_tmatch.worker import warm_up

    try:
        executor.warm_up(warm_up, str(prm.path), filter_arguments(prm))
    except Exception as exc:  # noqa: BLE001 - the template matching warms them up itself
        logger.debug("Template warm-up in the workers failed (%s: %s).", type(exc).__name__,
                     exc)


def _reserve_template_scratch(executor, prm, group: int, options: dict) -> None:
    """The workers make the template matching's chunk-sized scratch arrays
    (`phy_tmatch.worker.reserve_scratch`, of `phy_tmatch.runner.worker_scratch`), without
    waiting.

    A worker's first matching job would otherwise fault in their fresh pages (~300 MB
    at 384 channels: 0.4-0.8 s of wall clock on a virtual machine, little of it CPU
    time) while the others wait for its chunk. Submitted during the masked EM, after
    the template matching's noise (`_TemplateNoiseInBackground`'s `then`), which its
    first pass needs sooner.
    """
    if not hasattr(executor, "warm_up"):
        return
    from phy_tmatch.runner import worker_scratch
    from phy_tmatch.worker import reserve_scratch

    try:
        shapes = worker_scratch(prm, group, **options)
        executor.warm_up(reserve_scratch, shapes)
    except Exception as exc:  # noqa: BLE001 - the jobs make their arrays themselves
        logger.debug("Template scratch arrays in the workers failed (%s: %s).",
                     type(exc).__name__, exc)


class _OneJobAtATime:
    """An executor whose `imap` keeps one job in flight: one worker busy at a time."""

    def __init__(self, executor) -> None:
        self._executor = executor
        self.name = getattr(executor, "name", "")

    def imap(self, func, jobs):
        for job in jobs:
            yield from self._executor.imap(func, [job])


class _KwikLabelsInBackground:
    """The labels of a channel group's masked EM clusters, decided by a worker while the
    template matching runs (`_kwik_labels_job`), saved by this process afterwards.

    They depend only on the Kwik file, which the template matching only reads (at its
    start: the labels are saved once it has finished, so that it seeds from the groups it
    always had). The job is submitted by `start`, which the template matching calls when
    its workers would otherwise wait for this process (its first refinement: its
    ``on_idle``), or by `wait`. The same numbers as labelling here: the same code on the
    same inputs and noise. A failure costs only the time: the labels are then decided
    here, as without it.
    """

    def __init__(self, executor, kwik_path: Path, group: int, noise) -> None:
        import threading

        self.group = group
        self._result: list = []
        # The executor's ordered map blocks until the result: a thread waits for it.
        self._thread = threading.Thread(target=self._run,
                                        args=(executor, (str(kwik_path), group, noise)),
                                        name="phy-kwik-labels", daemon=True)
        self._started = False

    def start(self) -> None:
        """Submit the job (once); the noise it gets is what `noise` holds now."""
        if not self._started:
            self._started = True
            self._thread.start()

    def _run(self, executor, job: tuple) -> None:
        try:
            self._result.extend(executor.imap(_kwik_labels_job, [job]))
        except Exception as exc:  # noqa: BLE001 - the labels are then decided in this process
            logger.debug("Kwik labels in a worker failed (%s: %s).", type(exc).__name__, exc)

    def wait(self, noise_cache) -> tuple[list, float] | None:
        """Wait for the worker; ``(results, worker CPU s)``, or None if it failed. The noise
        it estimated goes into `noise_cache`."""
        self.start()
        self._thread.join()
        if not self._result:
            return None
        results, noise, cpu = self._result[0]
        noise_cache.update(noise)
        return results, cpu


#: The template-matching stage's defaults (`phy_tmatch.runner.template_match` options):
#: every cluster is a seed, the refinement cleans the noise and MUA ones.
TEMPLATE_MATCHING_DEFAULTS = dict(include_noise=True, include_mua=True, refine_rounds=2)


def template_dir(kwik_path: str | os.PathLike, group: int) -> Path:
    """The template directory of a channel group's template matching, beside the Kwik file."""
    kwik_path = Path(kwik_path)
    return kwik_path.with_name(f"{kwik_path.stem}.templates.{group}")


def template_matching_options(prm_path: str | os.PathLike,
                              template_matching: bool | dict | None = None) -> dict | None:
    """The options of the template-matching stage, or None when it does not run.

    The PRM may hold ``template_matching = dict(enabled=True, refine_rounds=2, ...)``
    (`phy_tmatch.runner.template_match` options, plus ``enabled``, True by
    default when the dict is there). `template_matching` overrides it: False
    or True (with the PRM's options), or a dict of options.
    """
    from phy_core.literals import read_literal_file

    section = read_literal_file(prm_path, allowed_calls=("dict",)).get("template_matching")
    if section is not None and not isinstance(section, dict):
        raise SpikeSortError(f"{prm_path}: template_matching must be a dict(...) of options, "
                             f"got {section!r}.")
    options = dict(section or {})
    enabled = bool(options.pop("enabled", section is not None))
    if isinstance(template_matching, dict):
        options.update(template_matching)
        enabled = True
    elif template_matching is not None:
        enabled = bool(template_matching)
    return dict(TEMPLATE_MATCHING_DEFAULTS, **options) if enabled else None


def _template_match(prm, kwik_path: Path, group: int, options: dict, executor,
                    reporter, noise_statistics=None, on_idle=None) -> Path:
    from phy_tmatch.runner import template_match

    if reporter is not None:
        reporter.reset()
        reporter.set_progress_message(f"Template matching, channel group {group} "
                                      "({progress:.0f}%)")
        reporter.set_complete_message(f"Template matching of channel group {group} done.")
    # overwrite: a directory left here is an interrupted run of this stage.
    return template_match(prm.path, kwik_path, template_dir(kwik_path, group),
                          channel_group=group, executor=executor, overwrite=True,
                          reporter=reporter, noise_statistics=noise_statistics,
                          on_idle=on_idle, **options)


def sort_recording(prm_path: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                   overwrite: bool = False, executor=None, plugin_manager=None,
                   channel_group: int | None = None, chunk_size_s: float | None = None,
                   n_workers: int | None = None, scheduler: str | None = None,
                   detect_reporter=None, cluster_reporter=None,
                   checkpoint_every_s: float | None = None,
                   template_matching: bool | dict | None = None,
                   tmatch_reporter=None, auto_label: bool = True) -> Bunch:
    """Detect and cluster the spikes of a recording; see the module docstring.

    Parameters
    ----------
    prm_path : path
        A klusta-style parameter file.
    output_dir : path or None
        Where to write the Kwik files (default: the PRM's folder).
    overwrite : bool
        Replace existing Kwik files (sort from scratch) instead of resuming.
    executor : executor or None
        Where detection and template matching run (from
        `phy_detect.executors.make_executor`). By default one is made from
        `n_workers` and `scheduler` when detection runs, and closed before the
        clustering starts; with template matching, it is kept (idle) for it.
    plugin_manager : PhyPluginManager or None
        Where detection stages come from (default: every installed plugin).
    channel_group : int or None
        Cluster only this channel group (detection covers them all).
    chunk_size_s : float or None
        Overrides the PRM's detection chunk size.
    n_workers, scheduler
        Local worker processes, or a Dask scheduler's address, for the
        default executor.
    detect_reporter, cluster_reporter : ProgressReporter or None
        The progress of each phase; the clustering one is reset for each
        channel group, and its messages are set here.
    checkpoint_every_s : float or None
        Minimum time between clustering checkpoints (default: cluster-auto's).
    template_matching : bool, dict or None
        The optional template-matching stage (`template_matching_options`):
        None follows the PRM's ``template_matching`` dict, False skips it,
        True runs it with the PRM's (or the default) options, a dict runs it
        with these options.
    tmatch_reporter : ProgressReporter or None
        The progress of the template matching, reset for each channel group.
    auto_label : bool
        At the end, label the clear single units good (`phy_autolabel`) in
        the Kwik file and the template directories. Only unsorted clusters
        change: labels set by hand are kept. Idempotent, so a resumed sort
        labels again.

    Returns
    -------
    Bunch
        ``kwik_path``, ``duration_s`` (of the recording), ``n_spikes`` and
        ``n_clusters`` (all clustered groups, noise and MUA clusters
        included), ``groups`` (``{group: (n_spikes, n_clusters)}``),
        ``detect_s``, ``cluster_s``, ``tmatch_s``, ``label_s``, ``total_s``
        (this run's wall-clock times; ``detect_s`` is 0 when resuming),
        ``cluster_cpu_s`` and ``label_cpu_s`` (CPU times of the clustering, in
        this process, and of the labels, wherever they ran), ``label_worker_cpu_s``
        (the labels' CPU time in worker processes: with template matching, the
        Kwik file's labels are decided by a worker during it, and the template
        directories' metrics computed by the workers in shares),
        ``resumed`` (bool), ``template_dirs`` (``{group: Path}`` with template
        matching), ``n_good`` (clusters labelled good, Kwik file and template
        directories together; None without `auto_label`), ``labels`` (their
        `phy_autolabel.label.GroupLabels`, metrics included; None without
        `auto_label`).
    """
    from phy_masked_em.command import (
        CHECKPOINT_EVERY_S,
        cluster_kwik,
        find_checkpoints,
        make_reporter,
    )
    from phy_rawdata.prm import read_prm

    t0 = time.perf_counter()
    prm = read_prm(prm_path)
    out_dir = Path(output_dir) if output_dir is not None else prm.path.parent
    kwik_path = (out_dir / f"{prm.experiment_name}.kwik").absolute()
    identity = detection_identity(prm)
    _check_channel_group(prm, channel_group)
    tmatch_options = template_matching_options(prm.path, template_matching)
    todo = None
    if kwik_path.exists() and not overwrite:
        todo = _resume_plan(kwik_path, identity, matching=tmatch_options is not None)
        if todo is None:
            raise SpikeSortError(f"{kwik_path} already exists and has no interrupted sort to "
                                 "resume: use --overwrite to replace it.")
        logger.info("%s: the spikes were detected by an interrupted sort; resuming with the "
                    "clustering of channel group(s) %s.", kwik_path,
                    ", ".join(map(str, todo)) or "(none left)")
    workers = _SharedWorkers(executor, n_workers, scheduler)
    noise, noise_job = _noise_cache() if auto_label else None, None
    try:
        detect_s, resumed = 0.0, todo is not None
        if todo is None:
            # A new detection: earlier checkpoints and states describe files about to go.
            for stale in [state_path(kwik_path), *find_checkpoints(kwik_path)]:
                stale.unlink(missing_ok=True)
            # With template matching to come, the detection's workers are kept for it.
            detect_executor = workers.get() if tmatch_options is not None else executor
            kwik_path = _detect(prm, out_dir, detect_executor,
                                n_workers, scheduler, overwrite=overwrite,
                                plugin_manager=plugin_manager, chunk_size_s=chunk_size_s,
                                reporter=detect_reporter)
            detect_s = time.perf_counter() - t0
            todo = _channel_groups(kwik_path)
            _write_state(state_path(kwik_path), identity, [])
        state = _read_state(state_path(kwik_path))
        clustered = list(state["clustered"]) if state else []
        matched = list(state["matched"]) if state else []
        if channel_group is not None:
            todo = [g for g in todo if g == channel_group]
        cluster_s = tmatch_s = cluster_cpu_s = label_worker_cpu_s = 0.0
        template_dirs, early_labels = {}, {}
        warmed = False
        for group in todo:
            t1, cpu1 = time.perf_counter(), time.process_time()
            tmatch_noise = None
            if (tmatch_options is not None and group not in clustered and group not in matched
                    and getattr(workers.get(), "name", "") != "serial"):
                if not warmed:
                    # Each worker loads the template matching's kernels now, beside the EM,
                    # rather than at its start, beside this process; first, so that each
                    # idle worker takes one (the noise jobs then find them loaded).
                    _warm_up_template_workers(workers.get(), prm)
                    warmed = True
                # The template matching's noise, which needs no cluster, measured by a
                # worker (idle otherwise) while the masked EM runs here; then the workers
                # make the matching's scratch arrays.
                tmatch_noise = _TemplateNoiseInBackground(
                    workers.get(), prm.path, group, tmatch_options,
                    then=lambda group=group: _reserve_template_scratch(
                        workers.get(), prm, group, tmatch_options))
            if (auto_label and tmatch_options is not None and noise_job is None
                    and group not in clustered
                    and getattr(workers.get(), "name", "") != "serial"):
                # The workers are idle until the template matching: one of them estimates
                # the labels' noise while the masked EM runs here (after the template
                # matching's noise, needed first; the labels' is needed at its first
                # refinement).
                noise_job = _NoiseInBackground(workers.get(), prm.path,
                                               after=tmatch_noise.wait if tmatch_noise else None)
            if group not in clustered:
                if cluster_reporter is not None:
                    cluster_reporter.reset()
                    make_reporter(group, cluster_reporter)
                cluster_kwik(kwik_path, group, reporter=cluster_reporter,
                             parameters=dict(prm.klustakwik2),
                             checkpoint_every_s=(CHECKPOINT_EVERY_S if checkpoint_every_s is None
                                                 else checkpoint_every_s))
                clustered.append(group)
                if state is not None:
                    _write_state(state_path(kwik_path), identity, clustered, matched)
            t2 = time.perf_counter()
            cluster_s += t2 - t1
            cluster_cpu_s += time.process_time() - cpu1
            labels_job = start_labels = None
            if (auto_label and tmatch_options is not None and group not in matched
                    and getattr(workers.get(), "name", "") != "serial"):
                # A worker decides this group's Kwik labels while this process refines the
                # templates (the template matching's on_idle), when the workers would wait;
                # with the labels' noise (estimated during the EM).
                labels_job = _KwikLabelsInBackground(workers.get(), kwik_path, group, noise)

                def start_labels(job=labels_job, estimate=noise_job):
                    if estimate is not None:
                        estimate.into(noise)
                    job.start()
            if tmatch_options is not None and group not in matched:
                try:
                    template_dirs[group] = _template_match(
                        prm, kwik_path, group, tmatch_options, workers.get(), tmatch_reporter,
                        noise_statistics=tmatch_noise.result() if tmatch_noise else None,
                        on_idle=start_labels)
                finally:
                    # Before anything writes the Kwik file (the next group's clustering).
                    if labels_job is not None:
                        start_labels()  # if the template matching did not
                        early = labels_job.wait(noise)
                        if early is not None:
                            early_labels[group], cpu = early
                            label_worker_cpu_s += cpu
                matched.append(group)
                if state is not None:
                    _write_state(state_path(kwik_path), identity, clustered, matched)
            tmatch_s += time.perf_counter() - t2
        all_groups = _channel_groups(kwik_path)
        finished = set(clustered) & (set(matched) if tmatch_options is not None
                                     else set(clustered))
        if state is not None and set(all_groups) <= finished:
            state_path(kwik_path).unlink(missing_ok=True)
        labelled = [g for g in all_groups if g in clustered
                    and (channel_group is None or g == channel_group)]
        if tmatch_options is not None:
            template_dirs.update({g: template_dir(kwik_path, g) for g in labelled
                                  if g in matched})
        t3, cpu3 = time.perf_counter(), time.process_time()
        # The workers (kept until here, idle) compute the template directories' metrics.
        n_good = labels = None
        if auto_label:
            if noise_job is not None:
                noise_job.into(noise)
            labels, cpu = _auto_label(kwik_path, labelled, template_dirs, noise, early_labels,
                                      workers.existing())
            label_worker_cpu_s += cpu
            n_good = sum(len(r.good) for r in labels)
    finally:
        workers.close()
    label_s = time.perf_counter() - t3
    label_cpu_s = time.process_time() - cpu3 + label_worker_cpu_s
    groups = {g: _group_counts(kwik_path, g) for g in all_groups
              if channel_group is None or g == channel_group}
    return Bunch(kwik_path=kwik_path, duration_s=_recording_duration(prm),
                 n_spikes=sum(n for n, _ in groups.values()),
                 n_clusters=sum(k for _, k in groups.values()), groups=groups,
                 detect_s=detect_s, cluster_s=cluster_s, tmatch_s=tmatch_s, label_s=label_s,
                 cluster_cpu_s=cluster_cpu_s, label_cpu_s=label_cpu_s,
                 label_worker_cpu_s=label_worker_cpu_s, labels=labels,
                 total_s=time.perf_counter() - t0, resumed=resumed,
                 template_dirs=template_dirs, n_good=n_good)


def _noise_cache():
    from phy_autolabel.sources import NoiseCache

    return NoiseCache()


def _template_quality_job(job: tuple) -> tuple:
    """A worker's share of a template directory's metrics (`phy_autolabel.label.quality_share`):
    ``(quality, cpu_s)``."""
    from phy_autolabel.label import quality_share

    path, part, n_parts, noise = job
    cpu = time.process_time()
    quality = quality_share(path, part, n_parts, noise_cache=noise)
    return quality, time.process_time() - cpu


def _quality_in_workers(executor, path: Path, noise) -> tuple[dict, float] | None:
    """The metrics of every cluster of a sorting, computed in shares by the workers of
    `executor` (``(quality, their CPU s)``); None without usable workers or if one failed."""
    n_parts = int(getattr(executor, "n_workers", 0) or 0)
    if executor is None or n_parts < 2 or getattr(executor, "name", "") == "serial":
        return None
    try:
        shares = list(executor.imap(_template_quality_job,
                                    [(str(path), k, n_parts, noise) for k in range(n_parts)]))
    except Exception as exc:  # noqa: BLE001 - the metrics are then computed here
        logger.debug("Metrics in the workers failed (%s: %s).", type(exc).__name__, exc)
        return None
    quality = {c: q for share, _ in shares for c, q in share.items()}
    # The clusters in id order, as one process computes them.
    return dict(sorted(quality.items())), sum(cpu for _, cpu in shares)


def _auto_label(kwik_path: Path, groups: list[int], template_dirs: dict, noise,
                early: dict | None = None, executor=None) -> tuple[list, float]:
    """Label the clear single units good (`phy_autolabel`).

    The Kwik file and the template directories read the same recording: its noise is
    estimated once, in `noise` (a `NoiseCache`, which may hold it already). `early`
    holds the Kwik labels of some groups decided by a worker during the template
    matching (``{group: [GroupLabels]}``): only saved here. With `executor` (the sort's
    idle worker pool), the template directories' metrics are computed by its workers,
    each a share of the clusters (the same numbers), and decided and saved here.

    Returns
    -------
    (results, worker_cpu_s)
        The `GroupLabels` (Kwik groups, then template directories), and the CPU
        time spent by the workers here.
    """
    import threading

    from phy_autolabel import label_clusters
    from phy_autolabel.label import AutoLabelError

    early = early or {}
    results, worker_cpu_s = [], 0.0
    # The workers start on the template directories' metrics while this process saves
    # (or decides) the Kwik file's labels; they get the noise known now (a copy: the Kwik
    # labels may add to `noise` meanwhile).
    shared: dict = {}
    todo = [g for g in groups if g in template_dirs]
    sharing = threading.Thread(
        target=lambda known: shared.update({g: _quality_in_workers(executor, template_dirs[g],
                                                                   known) for g in todo}),
        args=(noise.copy(),), name="phy-label-shares", daemon=True)
    sharing.start()
    try:
        results += _kwik_labels(kwik_path, groups, noise, early)
    finally:
        sharing.join()
    for g in todo:
        if shared.get(g) is not None:
            quality, cpu = shared[g]
            worker_cpu_s += cpu
            try:
                results += label_clusters(template_dirs[g], noise_cache=noise, quality=quality)
                continue
            except AutoLabelError as exc:
                logger.warning("%s", exc)
        results += label_clusters(template_dirs[g], noise_cache=noise)
    return results, worker_cpu_s


def _kwik_labels(kwik_path: Path, groups: list[int], noise, early: dict) -> list:
    """The Kwik file's labels: those decided `early` saved, the others decided and saved."""
    from phy_autolabel import label_clusters
    from phy_autolabel.label import AutoLabelError, save_labels

    results = []
    for g in groups:
        if g in early:
            try:
                save_labels(early[g])
                results += early[g]
                continue
            except AutoLabelError as exc:  # changed meanwhile: decided again
                logger.warning("%s", exc)
        results += label_clusters(kwik_path, channel_group=g, noise_cache=noise)
    return results
