"""What a detection worker does: read, filter and detect one chunk or excerpt.

Everything here runs in worker processes (or on Dask workers): the jobs are
``(GroupSetup, Chunk)`` pairs, pickled, and `run_job` is the function the
executors call. Each worker opens the recording once and keeps it mapped.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from phy_core.arrays import release_pages
from phy_core.bunch import Bunch

from .chunks import Chunk


@dataclass
class GroupSetup:
    """Everything a worker needs for one channel group (pickled to the workers).

    `task` says what a job returns: ``'detect'`` (features once `pcs` is set,
    else full waveforms), ``'pca'`` (the unmasked (spike, channel) pairs' waveforms
    for the PCA fit), ``'features'`` (`features_at_times`: the features of spikes
    found by a ``'pca'`` job), ``'threshold'`` (the `median_bracket` of an excerpt's
    |filtered| values) or ``'threshold_values'`` (its `values_in_bracket` for
    `threshold_bracket`; ``'threshold_kept'``: for the excerpts this process kept from the
    first round). `single_threshold`: one median over all channels. `reference`: see
    `apply_reference`.
    """

    prm_path: str
    channels: np.ndarray  # file columns of the group
    filter: Any
    thresholder: Any
    detector: Any
    extractor: Any
    pcs: Any  # the fitted features stage, or None while fitting
    task: str = "detect"
    single_threshold: bool = True
    threshold_bracket: np.ndarray | None = None  # (2, rows), for 'threshold_values'
    #: Names one `compute_thresholds` call: its workers keep the excerpts they filtered in
    #: the first round under it, for the second (`threshold_job`). Empty: keep nothing.
    threshold_run: str = ""
    #: The reference stage (`phy_detect.reference`), applied in place to the filtered
    #: float32 data everywhere (threshold excerpts, PCA excerpts, main pass); None: none.
    reference: Any = None


#: Tuning arguments a stage factory receives only if its signature names them (or takes
#: ``**kwargs``), so that a lab's stage written before they existed keeps working.
OPTIONAL_STAGE_ARGUMENTS = {"filter": ("precision",),
                            "detector": ("thresholds", "split_prominence", "split_tall_peak",
                                         "split_tall_prominence", "split_tall_apart",
                                         "split_far_peak", "split_lead"),
                            "extractor": ("centroid_fraction",)}


def make_stage(factory, kind: str, arguments: dict):
    """``factory(**arguments)``, without the optional arguments it does not accept."""
    optional = OPTIONAL_STAGE_ARGUMENTS.get(kind, ())
    return factory(**{k: v for k, v in arguments.items()
                      if k not in optional or _accepts(factory, k)})


def _accepts(factory, name: str) -> bool:
    import inspect

    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


_TRACES_CACHE: dict[str, Any] = {}


def _traces(prm_path: str):
    # Each worker opens the recording once (memory maps are cheap to keep).
    if prm_path not in _TRACES_CACHE:
        from phy_rawdata.model import open_traces
        from phy_rawdata.prm import read_prm

        _TRACES_CACHE[prm_path] = open_traces(read_prm(prm_path))
    return _TRACES_CACHE[prm_path]


def _is_all_columns(channels: np.ndarray, n_columns: int) -> bool:
    return len(channels) == n_columns and bool(np.all(channels == np.arange(n_columns)))


_BUFFERS = threading.local()


def _reused(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A C-contiguous ``shape`` view of this thread's buffer `name`, grown when too small.

    Chunks differ in length (those between the PCA excerpts are shorter), so
    the buffer is kept at the largest size seen and viewed at the size asked:
    a fresh buffer per length would cost its page faults again and again.
    """
    size = int(np.prod(shape))
    buffer = getattr(_BUFFERS, name, None)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = np.empty(size, dtype=dtype)
        setattr(_BUFFERS, name, buffer)
    return buffer[:size].reshape(shape)


def _chunk_buffer(shape: tuple[int, int]) -> np.ndarray:
    """This thread's reusable float32 chunk buffer (spares ~10 ms of page faults per
    126 MB chunk at 1024 channels); only `detect_chunk` uses it, whose results
    never refer to it."""
    return _reused("array", shape, np.float32)


def read_float32(traces, start: int, stop: int, channels: np.ndarray,
                 out: np.ndarray | None = None) -> np.ndarray:
    """``traces[start:stop][:, channels]`` as a C-contiguous float32 array (`out` if given).

    One copy: the columns are selected on the raw (int16) data only when they
    are not all the file's columns in order, then converted once.
    """
    raw = traces[start:stop]
    if not _is_all_columns(channels, int(traces.shape[1])):
        raw = np.take(np.asarray(raw), channels, axis=1)
    if out is None:
        out = np.empty((stop - start, len(channels)), dtype=np.float32)
    np.copyto(out, raw, casting="unsafe")
    return out


class _GroupTraces:
    """The group's columns of a recording as float32 (for `Filter.filter_chunk`)."""

    def __init__(self, traces, channels: np.ndarray) -> None:
        self.traces, self.channels = traces, channels
        self.shape = (int(traces.shape[0]), len(channels))
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, item):
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("_GroupTraces: only sample slices are supported.")
        start, stop, _ = item.indices(self.shape[0])
        return read_float32(self.traces, start, max(start, stop), self.channels)


def threshold_excerpt(setup: GroupSetup, chunk: Chunk) -> np.ndarray:
    """One threshold excerpt, filtered: ``(n_samples, n_channels)`` float32.

    The same values as `compute_threshold_from_traces` filters (the filter's
    `filter_chunk`, with its margins). With the built-in filter, a view of
    this thread's excerpt buffer, valid until the next call (`_ExcerptCache`
    keeps a copy): int16 recordings go to the filter as they are, other
    types are filtered in place; no fresh array per excerpt (a float32 read
    and the filtered excerpt with its margins, whose fresh pages cost this VM
    tens of ms of system time per 100 MB).
    """
    traces = _traces(setup.prm_path)
    f = setup.filter
    if _accepts_out(f):
        start, stop, channels = chunk.keep_start, chunk.keep_stop, setup.channels
        a, b = f.load_range(int(traces.shape[0]), start, stop)
        data = _filter_into(f, traces, a, b, channels,
                            _reused("excerpt", (b - a, len(channels)), np.float32))
        release_pages(traces)
        return apply_reference(setup, data[start - a:stop - a])
    if hasattr(f, "filter_chunk"):
        data = f.filter_chunk(_GroupTraces(traces, setup.channels), chunk.keep_start,
                              chunk.keep_stop)
    else:
        data = f(read_float32(traces, chunk.keep_start, chunk.keep_stop, setup.channels))
    release_pages(traces)
    return apply_reference(setup, np.ascontiguousarray(data, dtype=np.float32))


def apply_reference(setup: GroupSetup, data: np.ndarray) -> np.ndarray:
    """`setup.reference` applied to the filtered `data` (in place when it is a writeable
    C-contiguous float32 array, as the built-in filter returns; else to a copy); `data`
    itself without a reference. Each sample is referenced on its own, so the result does
    not depend on the chunking, and the reference (across channels) commutes with the
    filter (in time, per channel)."""
    if setup.reference is None:
        return data
    if not (isinstance(data, np.ndarray) and data.dtype == np.float32 and data.ndim == 2
            and data.flags.c_contiguous and data.flags.writeable):
        data = np.array(data, dtype=np.float32, order="C")
    return setup.reference(data)


def _read_filtered(setup: GroupSetup, chunk: Chunk) -> np.ndarray:
    """The group's columns of the chunk's load range, filtered (float32).

    Into this thread's chunk buffer when the filter takes an `out` (the
    built-in one): int16 recordings go to the filter as they are (it converts
    them as it copies them into the buffer), anything else as float32 first.
    """
    traces = _traces(setup.prm_path)
    start, stop, channels = chunk.load_start, chunk.load_stop, setup.channels
    f = setup.filter
    if not _accepts_out(f):
        data = f(read_float32(traces, start, stop, channels))
    else:
        data = _filter_into(f, traces, start, stop, channels,
                            _chunk_buffer((stop - start, len(channels))))
    release_pages(traces)  # after the filter has read them
    return apply_reference(setup, data)


def _filter_into(f, traces, start: int, stop: int, channels: np.ndarray,
                 out: np.ndarray) -> np.ndarray:
    """Rows ``start:stop`` of the group's columns filtered into `out` (a filter that takes
    one): int16 recordings go to the filter as they are (it converts them as it copies
    them into `out`), anything else as float32 first."""
    raw = traces[start:stop]
    if getattr(raw, "dtype", None) == np.int16:
        raw = np.asarray(raw)
        if not _is_all_columns(channels, int(traces.shape[1])):
            raw = np.take(raw, channels, axis=1)
        return f(raw, out=out)
    return f(read_float32(traces, start, stop, channels, out=out), out=out)


def _rows(keep: np.ndarray, order: np.ndarray):
    """Index of the kept spikes in sample order: a slice (no copy) when contiguous."""
    idx = np.flatnonzero(keep)[order]
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def detect_chunk(setup: GroupSetup, chunk: Chunk, slot=None) -> Bunch:
    """Detect the spikes of one chunk; keep those whose sample is in its keep range.

    Returns
    -------
    Bunch
        ``spike_samples`` (float64, absolute), then with
        ``setup.task == 'pca'``: ``pair_spikes``, ``pair_channels`` (P,)
        and ``pair_waveforms`` (P, S) float32, the waveforms of the unmasked
        (spike, channel) pairs in ``np.nonzero(masks > 0)`` order (all a
        per-channel PCA fit uses); else ``masks`` (n, C) float32 and
        ``waveforms`` (n, S, C) float32 when
        `setup.pcs` is None, or ``features`` (n, C * n_pcs) float32
        (channel-major); or, given a `shared_rows.RowSlot`, the ``.kwx``
        rows (`write_kwx_rows`) instead of masks and features.
    """
    data = _read_filtered(setup, chunk)
    fused = slot is not None and setup.task != "pca" and _aligns_and_projects(setup)
    # The PCA fit needs the unmasked pairs' waveforms only: the built-in extractor gives
    # them without every channel's (`pair_waveforms`: at 1024 channels ~60 MB of waveforms
    # a chunk written, ~9 MB used).
    pairs_only = setup.task == "pca" and _is_builtin_extractor(setup.extractor)
    extracted = _detect(setup, data, waveforms=not (fused or pairs_only))
    samples = extracted.spike_samples + chunk.load_start
    keep = (np.floor(samples) >= chunk.keep_start) & (np.floor(samples) < chunk.keep_stop)
    order = np.argsort(samples[keep], kind="stable")
    rows = _rows(keep, order)
    masks = np.asarray(extracted.masks[rows])
    out = Bunch(spike_samples=samples[keep][order])
    if setup.task == "pca":
        spikes, channels = np.nonzero(masks > 0)
        all_rows = np.arange(len(samples))[rows]
        out.pair_spikes = spikes.astype(np.int32)  # half the bytes of int64 to send
        out.pair_channels = channels.astype(np.int32)
        # With the spikes' times in the chunk, the main pass can reuse this detection
        # (`features_at_times`): the masks are nonzero exactly on the pairs.
        out.pair_masks = masks[spikes, channels].astype(np.float32)
        out.spike_times = np.asarray(extracted.spike_samples[rows], dtype=np.float64)
        if pairs_only:
            out.pair_waveforms = setup.extractor.pair_waveforms(
                extracted.spike_samples[all_rows[spikes]], channels, data)
        else:
            out.pair_waveforms = np.asarray(extracted.waveforms[all_rows[spikes], :, channels],
                                            dtype=np.float32)
        return out
    if fused:
        return _align_project_rows(out, setup, data, extracted.spike_samples, _row_index(rows),
                                   masks, slot)
    if slot is not None and setup.pcs is not None:
        return write_kwx_rows(out, setup.pcs, extracted.waveforms, rows, masks, slot)
    out.masks = np.array(masks, dtype=np.float32)
    if setup.pcs is None:
        out.waveforms = np.array(extracted.waveforms[rows])
    else:
        features = _transform_rows(setup.pcs, extracted.waveforms, rows)  # (n, C, n_pcs)
        out.features = _flat_features(features, len(masks))
    return out


def write_kwx_rows(out: Bunch, pcs, waveforms: np.ndarray, rows, masks: np.ndarray,
                   slot) -> Bunch:
    """Add a chunk's ``.kwx`` rows to its result `out`: in `slot`, else inline.

    The rows are ``(n, C * n_pcs, 2)`` float32: the features of
    ``waveforms[rows]`` in ``[..., 0]``, each channel's mask repeated for its
    features in ``[..., 1]`` (`runner._kwx_rows`'s layout and values). In the
    slot (shared memory, `shared_rows`): ``out.n_rows`` and ``out.slot``; if
    they do not fit: ``out.rows``.
    """
    from .pca import PCA
    from .shared_rows import project_kwx_rows

    n, n_channels = masks.shape
    masks = np.ascontiguousarray(masks, dtype=np.float32)
    if type(pcs) is PCA and pcs.pcs is not None:
        # The built-in PCA's projection (same bits), written straight as .kwx rows.
        pc_array = np.ascontiguousarray(pcs.pcs, dtype=np.float32)
        n_pcs = pc_array.shape[0]
        rows_out, in_slot = _rows_out(slot, (n, n_channels * n_pcs, 2))
        project_kwx_rows(np.ascontiguousarray(waveforms, dtype=np.float32), _row_index(rows),
                         pc_array, masks, rows_out)
    else:
        features = _flat_features(_transform_rows(pcs, waveforms, rows), n)
        n_pcs = features.shape[1] // max(n_channels, 1)
        rows_out, in_slot = _rows_out(slot, (n, n_channels * n_pcs, 2))
        rows_out[..., 0] = features
        repeated = rows_out[..., 1]
        repeated.shape = (n, n_channels, n_pcs)  # a view (raises rather than copy)
        repeated[...] = masks[:, :, None]
    if in_slot:
        out.n_rows, out.slot = n, slot
    else:
        out.rows = rows_out
    return out


def _aligns_and_projects(setup: GroupSetup) -> bool:
    """Whether the .kwx rows can be made by `_align_project_rows` (the built-in
    extractor and a fitted built-in PCA)."""
    from .pca import PCA

    return (_is_builtin_extractor(setup.extractor) and type(setup.pcs) is PCA
            and setup.pcs.pcs is not None)


def _row_index(rows) -> np.ndarray:
    if isinstance(rows, slice):
        return np.arange(rows.start or 0, rows.stop, dtype=np.int64)
    return np.asarray(rows, dtype=np.int64)


def _align_project_rows(out: Bunch, setup: GroupSetup, data: np.ndarray, times: np.ndarray,
                        index: np.ndarray, masks: np.ndarray, slot) -> Bunch:
    """`write_kwx_rows` of the waveforms at ``times[index]`` in the filtered `data`, each
    aligned and projected in cache (`shared_rows.align_project_kwx_rows`): the same
    rows, without writing and reading back every waveform (~90 MB per 1 s chunk at
    1024 channels)."""
    from .shared_rows import align_project_kwx_rows

    pcs = np.ascontiguousarray(setup.pcs.pcs, dtype=np.float32)
    n, n_channels = masks.shape
    rows_out, in_slot = _rows_out(slot, (n, n_channels * pcs.shape[0], 2))
    extractor = setup.extractor
    align_project_kwx_rows(np.ascontiguousarray(data, dtype=np.float32),
                           np.ascontiguousarray(times, dtype=np.float64), index,
                           extractor._extract_before, extractor._extract_after, pcs,
                           np.ascontiguousarray(masks, dtype=np.float32), rows_out)
    if in_slot:
        out.n_rows, out.slot = n, slot
    else:
        out.rows = rows_out
    return out


def _rows_out(slot, shape: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
    """The rows' array: in `slot` if it fits (True), else a new one (False)."""
    from .shared_rows import slot_array

    rows = slot_array(slot, shape) if slot is not None else None
    if rows is None:
        return np.empty(shape, dtype=np.float32), False
    return rows, True


def _transform_rows(pcs, waveforms: np.ndarray, rows):
    """``pcs.transform(waveforms[rows])``, for the built-in PCA without copying waveforms.

    The kept spikes' rows are nearly contiguous, but not in time order, so
    ``waveforms[rows]`` copied ~90 MB per 1024-channel chunk (~128 kB a
    spike). The built-in PCA projects each spike on its own, so the block of
    rows that holds them is projected (a view) and the features are picked:
    the same values, a tenth of the bytes moved.
    """
    from .pca import PCA

    if isinstance(rows, slice) or type(pcs) is not PCA or len(rows) == 0:
        return pcs.transform(waveforms[rows])
    first, stop = int(rows.min()), int(rows.max()) + 1
    if stop - first > 2 * len(rows):  # far apart: copying the few is cheaper
        return pcs.transform(waveforms[rows])
    return pcs.transform(waveforms[first:stop])[rows - first]


def features_at_times(setup: GroupSetup, chunk: Chunk, spike_times: np.ndarray,
                      pairs: tuple | None = None, slot=None) -> Bunch:
    """The features of spikes already detected in a chunk, at their times in the chunk.

    For a chunk whose spikes the PCA excerpt pass found (`spike_times`, as
    `detect_chunk` returned them with ``task='pca'``): read and filter the
    chunk as `detect_chunk` does, then extract the waveforms at those times
    with `WaveformExtractor.waveforms_at` and project them: the same features,
    without thresholds, flood fill and masks again. Returns ``features``
    ``(n, C * n_pcs)`` float32; or, given the masks as ``pairs`` (the
    ``pair_spikes, pair_channels, pair_masks`` of that detection) and a
    `shared_rows.RowSlot`, the ``.kwx`` rows (`write_kwx_rows`).
    """
    data = _read_filtered(setup, chunk)
    extractor = setup.extractor
    n, n_channels = len(spike_times), data.shape[1]
    if pairs is not None and slot is not None and _aligns_and_projects(setup):
        masks = np.zeros((n, n_channels), dtype=np.float32)
        pair_spikes, pair_channels, pair_masks = pairs
        masks[pair_spikes, pair_channels] = pair_masks
        return _align_project_rows(Bunch(), setup, data, spike_times,
                                   np.arange(n, dtype=np.int64), masks, slot)
    waveforms = extractor.waveforms_at(spike_times, data, out=_waveform_buffer(
        (max(n, 1), extractor.n_samples_waveforms, n_channels)))
    if pairs is not None and slot is not None:
        masks = np.zeros((n, n_channels), dtype=np.float32)
        pair_spikes, pair_channels, pair_masks = pairs
        masks[pair_spikes, pair_channels] = pair_masks
        return write_kwx_rows(Bunch(), setup.pcs, waveforms, slice(0, n), masks, slot)
    features = setup.pcs.transform(waveforms)  # (n, C, n_pcs)
    return Bunch(features=_flat_features(features, n))


def _flat_features(features, n: int) -> np.ndarray:
    """``(n, C * n_pcs)`` float32 features (channel-major), also for no spike at all."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    return features.reshape(n, int(np.prod(features.shape[1:])))


def _crossing_buffers(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This thread's reusable ``(data_t, weak, strong)`` buffers (as `_chunk_buffer`)."""
    return (_reused("data_t", shape, np.float32), _reused("weak", shape, np.bool_),
            _reused("strong", shape, np.bool_))


def _crossing_bitmaps(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This thread's reusable ``(data_t, weak_bits, strong_bits)`` buffers for
    `Thresholder.transform_bits` (as `_chunk_buffer`)."""
    words = ((shape[0] + 7) // 8, shape[1])
    return (_reused("data_t", shape, np.float32), _reused("weak_bits", words, np.uint8),
            _reused("strong_bits", words, np.uint8))


def _is_builtin(thresholder, detector) -> bool:
    """Whether both stages are the built-in ones (which exchange crossing bitmaps)."""
    from .floodfill import FloodFillDetector
    from .threshold import Thresholder

    return type(thresholder) is Thresholder and type(detector) is FloodFillDetector \
        and {"weak", "strong"} <= set(thresholder.thresholds)


def _extract(setup: GroupSetup, data: np.ndarray):
    """Filter `data` (in place when the filter allows it), threshold, flood fill, extract.

    The extractor's results must not refer to `data` or to the crossing
    buffers (the next chunk reuses them): `extract_all` returns new arrays.
    """
    data = setup.filter(data, out=data) if _accepts_out(setup.filter) else setup.filter(data)
    return _detect(setup, apply_reference(setup, data))


def _detect(setup: GroupSetup, data: np.ndarray, waveforms: bool = True):
    """Threshold, flood fill and extract the filtered `data` (as `_extract`).

    With `waveforms` False (for `_align_project_rows`), the built-in extractor
    returns times and masks only (``waveforms`` None).
    """
    thresholder, detector = setup.thresholder, setup.detector
    if _is_builtin(thresholder, detector) and data.dtype == np.float32 \
            and data.flags.c_contiguous and data.ndim == 2:
        # The built-in stages pass the crossings as bitmaps (1 bit per point, written
        # in the thresholder's pass): the flood fill scans a channel's crossings 64
        # samples at a time.
        data_t, weak_bits, strong_bits = thresholder.transform_bits(
            data, out=_crossing_bitmaps(data.shape))
        components = detector.detect_bits(weak_bits, strong_bits, data.shape[0], data_t=data_t)
    else:
        if hasattr(thresholder, "transform_detect") and data.dtype == np.float32:
            data_t, weak, strong = thresholder.transform_detect(
                data, out=_crossing_buffers(data.shape))
        else:
            data_t = thresholder.transform(data)
            weak = thresholder.detect(data_t, "weak")
            strong = thresholder.detect(data_t, "strong")
        if _accepts(detector.detect_flat, "data_t"):
            # A detector that looks at the traces (e.g. to split components at their peaks).
            components = detector.detect_flat(weak, strong, data_t=data_t)
        else:
            components = detector.detect_flat(weak, strong)
    extractor = setup.extractor
    if not _is_builtin_extractor(extractor):
        return extractor.extract_all(components, data, data_t)
    if not waveforms:
        return extractor.extract_all(components, data, data_t, waveforms=False)
    # (points, offsets): at most len(offsets) - 1 spikes. A reused buffer spares the
    # kernel zeroing ~100 MB of fresh pages per chunk at 1024 channels.
    n_max = len(components[1]) - 1
    shape = (max(n_max, 1), extractor.n_samples_waveforms, data.shape[1])
    return extractor.extract_all(components, data, data_t, out=_waveform_buffer(shape))


def _waveform_buffer(shape: tuple[int, int, int]) -> np.ndarray:
    """A reusable float32 buffer of at least ``shape[0]`` waveforms (grows by 1/4)."""
    buffer = getattr(_BUFFERS, "waveforms", None)
    if buffer is None or buffer.shape[1:] != shape[1:] or buffer.shape[0] < shape[0]:
        rows = shape[0] if buffer is None or buffer.shape[1:] != shape[1:] \
            else max(shape[0], buffer.shape[0] + buffer.shape[0] // 4)
        _BUFFERS.waveforms = buffer = np.empty((rows,) + tuple(shape[1:]), np.float32)
    return buffer


def _is_builtin_extractor(extractor) -> bool:
    from .waveform import WaveformExtractor

    return type(extractor) is WaveformExtractor


def _accepts_out(filter_) -> bool:
    from .filtering import Filter

    return isinstance(filter_, Filter)


#: Bound on the filtered threshold excerpts a process keeps between the two rounds: the
#: runner's excerpts hold at most 2**26 float32 values in all (`THRESHOLD_MAX_VALUES`).
EXCERPT_CACHE_BYTES = 2**28


class _ExcerptCache:
    """The filtered threshold excerpts this process kept from the first round.

    Keyed by ``(threshold_run, keep_start, keep_stop)``. An excerpt is taken
    out when its second round uses it; the second round of an excerpt may run
    in another process (the pool picks the worker), which then filters it
    again, so entries left behind are dropped when another run starts, by any
    job of another task, or by `clear_buffers`. Thread-safe (Dask threads).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: dict[tuple[str, int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._used()

    def _used(self) -> int:
        return sum(a.nbytes for a in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: tuple[str, int, int], filtered: np.ndarray) -> None:
        """Keep `filtered` under `key` (a copy if it views a larger array), within the
        bound; the entries of other runs are dropped first."""
        with self._lock:
            for other in [k for k in self._entries if k[0] != key[0]]:
                del self._entries[other]
            if self._used() + filtered.nbytes > self.max_bytes:
                return
            if filtered.base is not None:
                filtered = filtered.copy()  # do not hold the margins' array (or a buffer)
            self._entries[key] = filtered

    def take(self, key: tuple[str, int, int]) -> np.ndarray | None:
        with self._lock:
            return self._entries.pop(key, None)

    def take_run(self, run: str) -> list[tuple[tuple[int, int], np.ndarray]]:
        """All of `run`'s entries, taken out: ``[((keep_start, keep_stop), filtered)]``."""
        with self._lock:
            keys = [k for k in self._entries if k[0] == run]
            return [(k[1:], self._entries.pop(k)) for k in keys]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_EXCERPTS = _ExcerptCache(EXCERPT_CACHE_BYTES)


def threshold_job(setup: GroupSetup, chunk: Chunk):
    """An excerpt's part in the exact medians of |filtered| (see `threshold.median_bracket`).

    Rows are the channels, or one row of all the values for a single
    threshold. Small results: two values per row, then the few values inside
    the bracket. With a `threshold_run`, the first round keeps the filtered
    excerpt in this process and the second uses it if it runs here (the same
    values: the filter is deterministic); otherwise the excerpt is filtered
    again (still cheaper than sending every value).
    """
    from .threshold import median_bracket, values_in_bracket

    key = (setup.threshold_run, chunk.keep_start, chunk.keep_stop)
    if setup.task == "threshold":
        filtered = threshold_excerpt(setup, chunk)
        if setup.threshold_run:
            _EXCERPTS.put(key, filtered)
        return median_bracket(filtered, setup.single_threshold)
    filtered = _EXCERPTS.take(key) if setup.threshold_run else None
    if filtered is None:
        filtered = threshold_excerpt(setup, chunk)
    return values_in_bracket(filtered, setup.single_threshold, setup.threshold_bracket)


def kept_threshold_values(setup: GroupSetup) -> list:
    """The second round for the excerpts this process kept from the first (none is
    filtered again): ``[((keep_start, keep_stop), values_in_bracket)]``, each excerpt
    once: they are taken out of the cache."""
    from .threshold import values_in_bracket

    return [(span, values_in_bracket(filtered, setup.single_threshold, setup.threshold_bracket))
            for span, filtered in _EXCERPTS.take_run(setup.threshold_run)]


def run_job(job: tuple):
    """Run one job: ``(setup, chunk[, slot])``; ``(setup, chunk, spike_times[, pairs,
    slot])`` for the ``'features'`` task (`features_at_times`); ``(setup, *excerpts)``
    for the threshold tasks (a list of `threshold_job` results); ``(setup,)`` for
    ``'threshold_kept'`` (`kept_threshold_values`)."""
    setup, *chunks = job
    if setup.task == "threshold_kept":
        return kept_threshold_values(setup)
    if setup.task in ("threshold", "threshold_values"):
        return [threshold_job(setup, c) for c in chunks]
    chunk, *extra = chunks
    if len(_EXCERPTS):  # the thresholds are done: the excerpts left here are not needed
        _EXCERPTS.clear()
    if setup.task == "features":
        return features_at_times(setup, chunk, *extra)
    return detect_chunk(setup, chunk, *extra)


def clear_buffers() -> None:
    """Free this thread's buffers and row slots (after a run on a serial executor)."""
    from .shared_rows import unmap_all

    _BUFFERS.__dict__.clear()
    _EXCERPTS.clear()
    unmap_all()


def warm_up(prm_path: str, stages: dict[str, tuple[Any, dict]]) -> None:
    """Get a fresh worker ready while the parent prepares the run (best effort).

    Opens the recording and runs the stages' code paths once on a few
    synthetic channels (built by the same factories, with the run's filter
    arguments), so the imports (scipy.signal, numba) and the loading of the
    numba on-disk caches happen now rather than in the first real jobs.
    `stages` maps a kind to ``(factory, keyword arguments)``, or to
    ``(stage name, keyword arguments)`` to find the stage in the installed
    plugins; missing arguments get small stand-ins. Any failure is ignored: the real jobs
    will report it.
    """
    with contextlib.suppress(Exception):
        _traces(prm_path)
    if _preloaded(stages):
        return  # forked from a forkserver that loaded these kernels (`phy_detect.preload`)
    with contextlib.suppress(Exception):
        _warm_up_stages(stages)


def _preloaded(stages: dict[str, tuple[Any, dict]]) -> bool:
    """Whether this process was forked from a `phy_detect.preload` that warmed up the same
    stages by name, with the same filter precision (the other arguments do not change the
    kernels' types)."""
    import sys

    warmed = getattr(sys.modules.get(__package__ + ".preload"), "WARMED", None)
    if not warmed or set(stages) != set(warmed):
        return False
    if any(stages[kind][0] != warmed[kind][0] for kind in stages):
        return False
    return stages["filter"][1].get("precision") == warmed["filter"][1].get("precision")


def _warm_up_stages(stages: dict[str, tuple[Any, dict]]) -> None:
    n_channels, n_samples = 4, 4000
    rng = np.random.default_rng(0)
    raw = (rng.standard_normal((n_samples, n_channels)) * 10).astype(np.int16)
    raw[2000:2004, 1:3] = -400  # a spike on two adjacent channels
    columns = np.arange(n_channels)
    thresholds = {"weak": np.full(n_channels, 20.0), "strong": np.full(n_channels, 45.0)}
    defaults = {
        "threshold": {"mode": "negative", "thresholds": thresholds},
        "detector": {"probe_adjacency_list": {i: [j for j in (i - 1, i + 1)
                                                  if 0 <= j < n_channels]
                                              for i in range(n_channels)},
                     "thresholds": thresholds},
        "extractor": {"thresholds": thresholds},
    }
    if any(isinstance(factory, str) for factory, _ in stages.values()):
        from phy_core.plugins import create_plugin_manager

        from .runner import choose_stages

        chosen = choose_stages(create_plugin_manager(),
                               {kind: name for kind, (name, _) in stages.items()})
        stages = {kind: (chosen[kind].factory, kwargs) for kind, (_, kwargs) in stages.items()}
    from . import filtering

    made = {}
    for kind, (factory, kwargs) in stages.items():
        if factory is filtering._make_filter:
            # The built-in filter's kernels, without designing a filter (scipy.signal's
            # import is most of a worker's start-up); the real ones arrive designed.
            filtering.warm_up(kwargs.get("precision", "float64"))
            made[kind] = _identity
            continue
        made[kind] = make_stage(factory, kind, dict(defaults.get(kind, {}), **kwargs))
    filter_ = made["filter"]
    if hasattr(filter_, "filter_chunk"):  # the threshold excerpts' path
        filter_.filter_chunk(_GroupTraces(raw, columns), 1000, 3000)
    from .threshold import median_bracket, values_in_bracket

    for single in (True, False):  # the kernels of the exact medians
        values_in_bracket(raw[:100], single, median_bracket(raw[:100], single))
    setup = GroupSetup("", columns, filter_, made.get("threshold"), made.get("detector"),
                       made.get("extractor"), None)
    if setup.thresholder is not None and setup.detector is not None \
            and setup.extractor is not None:
        data = read_float32(raw, 0, n_samples, columns)
        _extract(setup, data)
        extracted = _detect(setup, data, waveforms=False)  # the extraction without waveforms
        if _is_builtin_extractor(setup.extractor):  # and the PCA excerpts' pair waveforms
            setup.extractor.pair_waveforms(extracted.spike_samples, np.zeros(
                len(extracted.spike_samples), np.int64), data)
    # The kernels of the .kwx rows (`write_kwx_rows`, `_align_project_rows`).
    from .shared_rows import align_project_kwx_rows, project_kwx_rows

    align_project_kwx_rows(np.zeros((40, n_channels), np.float32), np.full(1, 20.0),
                           np.zeros(1, np.int64), 10, 10,
                           np.zeros((3, 20, n_channels), np.float32),
                           np.zeros((1, n_channels), np.float32),
                           np.zeros((1, 3 * n_channels, 2), np.float32))

    project_kwx_rows(np.zeros((1, 8, n_channels), np.float32), np.zeros(1, np.int64),
                     np.zeros((3, 8, n_channels), np.float32),
                     np.zeros((1, n_channels), np.float32),
                     np.zeros((1, 3 * n_channels, 2), np.float32))


def _identity(data: np.ndarray) -> np.ndarray:
    return data
