"""What a template-matching worker does with one chunk: read, filter, then one task.

Jobs are ``(Setup, Chunk, payload)`` tuples, pickled to the workers (local
processes or Dask); `run_job` is the function the executors call. Each worker
opens the recording once and keeps it mapped, reads a chunk as float32 and
filters it in place (`phy_detect`'s reader and filter; the filter also writes
the chunk channel-major for the tasks that project it: `filtered_chunk`), then:

- ``'templates'``: sums the windows of the chunk's chosen spikes per template
  (`phy_tmatch.templates`) and, for a few chunks, the median ``|x|`` per
  channel and the noise covariance sums (`phy_tmatch.whitening`);
- ``'noise'``: the median ``|B|`` of the projections on every template (the
  spread of a template's projection on noise);
- ``'match'``: the matching pursuit (`phy_tmatch.matching.match_chunk`) and,
  with ``Setup.collect``, the events of the refinement (`phy_tmatch.residual`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from phy_core.bunch import Bunch

_TRACES: dict[str, Any] = {}
_CACHE: dict[str, Any] = {}
#: Scratch arrays reused from job to job (per thread: Dask may run jobs in threads).
_SCRATCH = threading.local()


@dataclass
class Setup:
    """Everything a worker needs (pickled with every job; the templates are small)."""

    prm_path: str
    channels: np.ndarray  # file columns of the channel group
    filter: Any
    task: str
    before: int = 0
    n_t: int = 0
    templates: Any = None  # a TemplateSet
    parameters: Any = None  # a matching.MatchParameters
    sigma: Any = None  # (K,) noise of the projections
    token: str = ""  # identifies the templates, for the per-worker cache
    collect: Any = None  # a Bunch: collect events for the refinement (`phy_tmatch.residual`)
    # The templates' cross-correlations (`matching.template_cross_correlations`), made once
    # by the parent; None: each worker makes them.
    cross_correlations: Any = None


def traces(prm_path: str):
    """The recording of a PRM (opened once per worker)."""
    if prm_path not in _TRACES:
        from phy_rawdata.model import open_traces
        from phy_rawdata.prm import read_prm

        _TRACES[prm_path] = open_traces(read_prm(prm_path))
    return _TRACES[prm_path]


def cached(token: str, make, name: str = ""):
    """``make()`` once per worker, token and name (e.g. the templates' cross-correlations)."""
    if not any(key[0] == token for key in _CACHE):
        _CACHE.clear()  # one template set at a time: drop the previous one's arrays
    if (token, name) not in _CACHE:
        _CACHE[(token, name)] = make()
    return _CACHE[(token, name)]


def scratch(name: str, shape: tuple, dtype=np.float32) -> np.ndarray:
    """A C-contiguous array of `shape` that the next call with the same `name` reuses.

    A chunk's arrays are ~100 MB at 384 channels: allocated afresh, each one's
    pages are faulted in and zeroed by the kernel on first touch, then unmapped
    when freed (about a tenth of the workers' CPU time at 384 channels, most of
    it system time). Reusing them keeps one copy per worker (memory stays flat
    with the recording). The contents are undefined; the array is valid until
    the next call with `name`.
    """
    arrays = getattr(_SCRATCH, "arrays", None)
    if arrays is None:
        arrays = _SCRATCH.arrays = {}
    size = int(np.prod(shape))
    flat = arrays.get(name)
    if flat is None or flat.size < size or flat.dtype != np.dtype(dtype):
        flat = arrays[name] = np.empty(size, dtype=dtype)
    return flat[:size].reshape(shape)


def reserve_scratch(shapes: dict) -> None:
    """Make the scratch arrays `shapes` (``{name: (shape, dtype)}``) now, every page written.

    A fresh array's pages are faulted in when first written, which on a virtual
    machine costs far more wall-clock time than the CPU time it shows (measured on a
    loaded machine: 1.6-3 ms per MB, against 0.1-0.2 ms per MB to write pages already
    there): the first matching job of each worker took 0.6-1.0 s instead of 0.2 s (its
    chunk, its channel-major copy and its pooled residual, ~100 MB each at 384
    channels). Made while the worker would be idle (`phy_spikesort.pipeline`: during
    the masked EM), the jobs find them ready: arrays that fit are not made again. The
    contents stay undefined.
    """
    for name, (shape, dtype) in shapes.items():
        scratch(name, tuple(int(n) for n in shape), np.dtype(dtype)).fill(0)


def match_scratch_shapes(n_load: int, n_channels: int, n_templates: int = 0,
                         collect: bool = True) -> dict:
    """The scratch arrays of a matching job on chunks of up to `n_load` rows (`reserve_scratch`).

    The chunk, its channel-major copy and, with `collect` (a pass that collects the
    refinement's events), the pooled residual; with `n_templates`, the projections and
    the pursuit's work arrays for that many templates. The noise and template passes'
    chunks are shorter: they use the same arrays.
    """
    n_load, n_channels = int(n_load), int(n_channels)
    shapes = {"chunk": ((n_load, n_channels), "float32"),
              "xt": ((n_channels, n_load), "float32")}
    if collect:
        shapes["pooled"] = ((n_channels, n_load), "float32")
    if n_templates:
        shapes.update(b=((int(n_templates), n_load), "float32"),
                      score=((int(n_templates), n_load), "float32"),
                      blocked=((int(n_templates), n_load), "uint8"),
                      search=((n_load // 2 + 1, 2), "int64"))
    return shapes


def release_scratch() -> None:
    """Free this thread's scratch arrays (the parent does, after a serial run)."""
    _SCRATCH.arrays = {}


def filtered_chunk(setup: Setup, chunk, name: str = "chunk", channel_major: bool = False):
    """The chunk's rows ``[load_start, load_stop)`` of the group, band-passed, float32.

    In the scratch array `name` (`scratch`): valid until the next call with that name.
    With `channel_major`, returns ``(data, xt)``: `xt` is the same chunk
    channel-major ``(C, n)``, in the scratch array ``'xt'``, written by the
    filter's backward pass (`phy_detect.filtering.Filter`'s ``transposed``:
    about a third of the cost of transposing `data` afterwards).
    """
    from phy_core.arrays import release_pages
    from phy_detect.filtering import Filter
    from phy_detect.worker import read_float32

    data_traces = traces(setup.prm_path)
    shape = (chunk.load_stop - chunk.load_start, len(setup.channels))
    out = scratch(name, shape)
    data = read_float32(data_traces, chunk.load_start, chunk.load_stop, setup.channels, out=out)
    release_pages(data_traces)
    if not isinstance(setup.filter, Filter):
        data = np.ascontiguousarray(setup.filter(data), dtype=np.float32)
        if not channel_major:
            return data
        from .matching import channel_major as transposed

        return data, transposed(data, scratch=True)
    if not channel_major:
        return setup.filter(data, out=data)
    xt = scratch("xt", shape[::-1])
    return setup.filter(data, out=data, transposed=xt), xt


def warm_up(prm_path: str, filter_arguments: dict | None = None) -> None:
    """Get a fresh worker ready while the parent prepares the run (best effort).

    Opens the recording and runs every kernel once on a tiny input, so that the
    imports and the loading of numba's on-disk caches happen now rather than in
    the first jobs. Any failure is ignored: the real jobs will report it. The
    arguments are plain data: unpickling a filter object would import numba
    before the executor's initializer sets its thread count.
    """
    import contextlib

    with contextlib.suppress(Exception):
        traces(prm_path)
    with contextlib.suppress(Exception):
        from phy_detect.filtering import warm_up as warm_up_filter

        from .kernels import (
            abs_medians,
            cross_correlations,
            project,
            pursue_in,
            transpose,
            transpose_columns,
        )

        rng = np.random.default_rng(0)
        if filter_arguments is not None:
            # The filter's kernels only: designing a Filter imports scipy.signal (~1 s
            # of CPU per worker); the jobs' filters arrive designed.
            warm_up_filter(str(filter_arguments.get("precision", "float64")), transposed=True)
        temporal = rng.standard_normal((1, 1, 4)).astype(np.float32)
        ptr, idx = np.array([0, 1]), np.array([0])
        spatial = np.ones((1, 1), dtype=np.float32)
        b = np.empty((1, 17), dtype=np.float32)
        project(rng.standard_normal((1, 20)).astype(np.float32), ptr, idx, spatial, temporal, b)
        cc = cross_correlations(temporal, ptr, idx, spatial, spatial[None], ptr, idx)
        one = np.ones(1, dtype=np.float32)
        pursue_in(b, one, one, np.float32(1.0), np.float32(0.5), np.float32(1.5), one * 0.4,
                  one * 1.6, 2, ptr, idx, cc, 2, np.empty_like(b), np.empty(b.shape, np.uint8),
                  np.empty((9, 2), np.int64), np.empty(17, np.uint8))
        x = rng.standard_normal((20, 2)).astype(np.float32)
        transpose(x, np.empty((2, 20), np.float32))
        transpose_columns(x, np.array([1]), np.empty((1, 20), np.float32))
        abs_medians(np.ascontiguousarray(x.T), 1)
        from .residual import sampled_pooled_residual, scaled_troughs, subtract_spikes

        xt = rng.standard_normal((1, 20)).astype(np.float32)
        subtract_spikes(xt, np.zeros(1, np.int64), np.zeros(1, np.int64), one, ptr, idx,
                        spatial, temporal)
        pooled = np.empty_like(xt)
        nbr = np.zeros((1, 1), dtype=np.int64)
        sampled_pooled_residual(xt, one, nbr, spatial, pooled, 16,
                                np.empty((1, 2), np.float32))
        scaled_troughs(pooled, one, np.float32(1.0), nbr, 2, 0, 20, 4)


def spike_segments(setup: Setup, chunk, samples: np.ndarray) -> list | None:
    """The chunk's spike windows (with the filter's margins) as merged segments.

    Filtering only these is exact (the margins), and cheaper than the whole
    chunk when the chosen spikes are sparse (long recordings: the template
    pass then costs in proportion to the spikes, not to the recording).
    None when the segments would cover more than half of the chunk.
    """
    from phy_detect.chunks import Chunk

    margin = int(setup.filter.margin_samples) if hasattr(setup.filter, "margin_samples") \
        else chunk.keep_start - chunk.load_start
    n_total = int(traces(setup.prm_path).shape[0])
    starts = np.maximum(samples - setup.before - margin, 0)
    stops = np.minimum(samples - setup.before + setup.n_t + margin, n_total)
    segments, total = [], 0
    for a, b, s in zip(starts, stops, samples):
        if segments and a <= segments[-1][1]:
            segments[-1][1] = max(segments[-1][1], b)
            segments[-1][3] = s + 1
        else:
            segments.append([a, b, s, s + 1])
    total = sum(b - a for a, b, _, _ in segments)
    if total > (chunk.load_stop - chunk.load_start) // 2:
        return None
    # Keep ranges tile [first spike, last spike + 1): each spike is summed once.
    return [Chunk(i, int(s0), int(s1), int(a), int(b))
            for i, (a, b, s0, s1) in enumerate(segments)]


def template_job(setup: Setup, parts: list) -> Bunch:
    """Sums of the chosen spikes' windows over several chunks, and noise statistics.

    `parts` lists ``(chunk, samples, templates, noise)``, or ``(chunk, samples,
    templates, noise, whole)``: each chunk is read and filtered in turn (one
    chunk in memory at a time); `noise` asks for its channels' median ``|x|``
    and covariance sums (`phy_tmatch.noise`), for which the chunk is filtered
    whole; `whole` filters it whole without them (a noise chunk whose noise was
    measured beforehand: its sums are then the same, bit for bit). Otherwise
    only the spikes' windows may be filtered (`spike_segments`). One job covers
    several chunks so that fewer partial sums travel back to the parent.
    """
    from .templates import channel_noise, template_sums

    present = np.unique(np.concatenate([p[2] for p in parts]))
    sums = np.zeros((len(present), setup.n_t, len(setup.channels)))
    counts = np.zeros(len(present), dtype=np.int64)
    out = Bunch(noise=[], xtx=[], n_rows=[])
    for chunk, samples, templates, noise, *whole in parts:
        segments = None if noise or any(whole) else spike_segments(setup, chunk, samples)
        for sub in segments or [chunk]:
            data = filtered_chunk(setup, sub)
            inside = (samples >= sub.keep_start) & (samples < sub.keep_stop)
            part = template_sums(data, sub.load_start, samples[inside], templates[inside],
                                 setup.before, setup.n_t)
            rows = np.searchsorted(present, part.templates)
            sums[rows] += part.sums
            counts[rows] += part.counts
        if noise:
            from .whitening import covariance_sums

            keep = data[chunk.keep_start - chunk.load_start:chunk.keep_stop - chunk.load_start]
            out.noise.append(channel_noise(keep))
            xtx, n_rows = covariance_sums(keep, out.noise[-1], setup.n_t // 2)
            out.xtx.append(xtx)
            out.n_rows.append(n_rows)
    out.update(templates=present, sums=sums.astype(np.float32), counts=counts)
    return out


def run_job(job: tuple) -> Bunch:
    """Run one job; the result's ``cpu_s`` is the CPU time it took (this process), its
    ``span`` the wall-clock start and end and the process id."""
    start, wall = time.process_time(), time.time()
    out = _run_task(*job)
    out.cpu_s = time.process_time() - start
    out.span = (wall, time.time(), os.getpid())  # the stage's timeline (`runner._span`)
    return out


def _run_task(setup: Setup, chunk, payload) -> Bunch:
    if setup.task == "templates":
        return template_job(setup, payload)
    if setup.task == "noise":
        from .kernels import abs_medians
        from .matching import projections, reads_most_channels

        # The filter writes the channel-major chunk the projections read, unless they
        # read a few channels (then only those are transposed: `projections`).
        if reads_most_channels(setup.templates, len(setup.channels)):
            data, xt = filtered_chunk(setup, chunk, channel_major=True)
        else:
            data, xt = filtered_chunk(setup, chunk), None
        b = projections(data, setup.templates, xt, scratch=True)
        median_abs = abs_medians(b, 1)  # np.median(np.abs(b), axis=1)
        return Bunch(median_abs=median_abs, n_samples=b.shape[1])
    if setup.task == "match":
        from .matching import match_chunk

        data, xt = filtered_chunk(setup, chunk, channel_major=True)
        return match_chunk(setup, chunk, data, xt)
    raise ValueError(f"Unknown template-matching task {setup.task!r}.")
