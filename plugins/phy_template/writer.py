"""Write any phy `DataModel` as a template directory (Kilosort / phy 2 layout).

What each file holds
--------------------
- ``spike_times.npy`` (uint64 samples), ``spike_clusters.npy`` (int64).
- ``spike_templates.npy`` (uint32): template ``i`` is the ``i``-th smallest
  cluster id, so templates are contiguous ``0 .. n_clusters - 1`` and
  ``spike_templates = searchsorted(unique(spike_clusters), spike_clusters)``.
- ``amplitudes.npy``: ones (float32). phy's models have no per-spike
  template scaling; the templates below are already in data units.
- ``templates.npy`` (float32, (n_clusters, n_samples, n_channels)): the mean
  of ``model.waveforms`` over at most `max_spikes_per_template` spikes per
  cluster, evenly spaced in time (deterministic).
- ``pc_feature_ind.npy`` (uint32, (n_clusters, k)): for each template its
  `k` channels of highest mean mask (ties by channel order); ``k`` is the
  largest number of channels with a non-zero mean mask in any cluster,
  capped at `max_channels_loc` (default: 32, or the source's own width
  when it is a template directory).
- ``pc_features.npy`` (float32, (n_spikes, n_features_per_channel, k)): each
  spike's features on its template's channels (streamed, never all in RAM).
  Not written when the model has no features.
- ``channel_map.npy`` (the model's ``channel_map`` if it has one, else
  ``0 .. n_channels - 1``), ``channel_positions.npy``.
- ``params.py`` (literals): ``dat_path`` points at the model's raw data when
  it has some (attributes ``params.dat_path`` / ``dat_path`` /
  ``raw_data_files``, with ``n_channels_dat``, ``dtype``, ``offset`` from
  ``params`` or the model, else the traces' width and dtype) and the files
  match those numbers; otherwise ``dat_path = []`` with a comment saying that
  traces are unavailable, and the reader falls back to the templates.
- ``cluster_group.tsv`` from ``model.cluster_groups``, ``cluster_<field>.tsv``
  from ``model.labels`` when the model has labels.

Every file is written atomically; ``params.py`` last.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from phy_core.arrays import flat_binary_source
from phy_core.atomic import atomic_write, atomic_writer
from phy_core.errors import PhyError

from .tsv import GROUP_NAMES, TemplateFormatError, check_field_name, format_cluster_tsv

logger = logging.getLogger("phy")

__all__ = ["write_template_directory"]

_WRITTEN = (
    "spike_times.npy", "spike_clusters.npy", "spike_templates.npy", "amplitudes.npy",
    "templates.npy", "channel_map.npy", "channel_positions.npy", "pc_features.npy",
    "pc_feature_ind.npy", "params.py", "cluster_group.tsv",
)
# Files of a template directory that would be stale after an overwrite.
_STALE = (
    "similar_templates.npy", "whitening_mat.npy", "whitening_mat_inv.npy", "template_ind.npy",
    "template_features.npy", "template_feature_ind.npy", "spike_clusters.backup.npy",
    "pc_features.npy", "cluster_info.tsv",
)
_CHUNK_VALUES = 1 << 23  # values per chunk when streaming features and masks


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_writer(path, "wb") as f:
        np.save(f, arr)


def _chunks(n: int, width: int):
    step = max(1, _CHUNK_VALUES // max(width, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _raw_data(model: Any, channel_map: np.ndarray) -> tuple[dict, str]:
    """The params.py raw-data entries, and why traces are unavailable ('' if they are)."""
    params = getattr(model, "params", None)
    params = params if isinstance(params, Mapping) else {}

    def get(name: str, default: Any = None) -> Any:
        value = params.get(name, getattr(model, name, None))
        return default if value is None else value

    files = get("dat_path") or getattr(model, "raw_data_files", None) or []
    files = [files] if isinstance(files, (str, Path)) else list(files)
    traces = getattr(model, "traces", None)
    # Any model whose traces are views of memory-mapped flat files (raw recordings, Kwik
    # files with a .dat) can point the template directory at the same files.
    source = flat_binary_source(traces) if not files and traces is not None else None
    if source is not None:
        files = source["files"]
        params = dict(params, dtype=source["dtype"], offset=source["offset"],
                      n_channels_dat=source["n_channels"])
    dtype = get("dtype", getattr(traces, "dtype", None))
    n_channels_dat = get("n_channels_dat", traces.shape[1] if traces is not None else None)
    entries = dict(
        dat_path=[], n_channels_dat=int(n_channels_dat or len(channel_map)),
        dtype=str(np.dtype(dtype)) if dtype is not None else "int16",
        offset=int(get("offset", 0)), sample_rate=float(model.sample_rate),
        hp_filtered=bool(get("hp_filtered", False)),
    )
    if not files:
        return entries, "the source model has no raw data file"
    files = [Path(f).absolute() for f in files]
    if dtype is None or n_channels_dat is None:
        return entries, "the data type or channel count of the raw data is unknown"
    from phy_rawdata.dat import RawDataError, read_dat

    try:
        read_dat(files, dtype=dtype, offset=entries["offset"], n_channels=n_channels_dat)
    except RawDataError as exc:
        return entries, f"the raw data cannot be read ({exc})"
    if channel_map.max() >= entries["n_channels_dat"]:
        return entries, "the channel map does not fit the raw data's channels"
    entries["dat_path"] = [str(f) for f in files]
    return entries, ""


def _params_text(entries: dict, reason: str) -> str:
    lines = ["# Written by phy (phy_template.writer): literal assignments, never executed."]
    if reason:
        lines.append(f"# Traces unavailable: {reason}.".replace("\n", " "))
    for key, value in entries.items():
        if key == "dat_path" and len(value) == 1:
            value = value[0]
        lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


def _check_output(model: Any, out_dir: Path, overwrite: bool) -> None:
    source = getattr(model, "path", None)
    if source is not None and Path(source).is_dir() and Path(source).resolve() == out_dir:
        raise TemplateFormatError(
            f"{out_dir}: cannot write a dataset onto its own directory; choose another one."
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise TemplateFormatError(f"{out_dir}: exists and is not a directory.")
    existing = [name for name in _WRITTEN if (out_dir / name).exists()]
    if existing and not overwrite:
        raise TemplateFormatError(
            f"{out_dir}: already holds a template directory ({', '.join(existing[:3])}, ...); "
            "pass overwrite=True (--overwrite) to replace it."
        )


def _mean_masks(model: Any, spike_templates: np.ndarray, n_templates: int, reporter) -> np.ndarray:
    n, nc = model.n_spikes, model.n_channels
    sums = np.zeros((n_templates, nc))
    for chunk in _chunks(n, nc):
        # Sum the masks of each template's spikes in one pass: sort, then reduce runs.
        order = np.argsort(spike_templates[chunk], kind="stable")
        templates = spike_templates[chunk][order]
        if len(templates):
            starts = np.flatnonzero(np.r_[True, templates[1:] != templates[:-1]])
            masks = np.asarray(model.masks[chunk], dtype=np.float64)[order]
            sums[templates[starts]] += np.add.reduceat(masks, starts, axis=0)
        if reporter is not None:
            reporter.increment()
    counts = np.bincount(spike_templates, minlength=n_templates)
    return sums / np.maximum(counts, 1)[:, None]


def _mean_waveforms(model: Any, spike_templates: np.ndarray, n_templates: int,
                    max_spikes: int, reporter) -> np.ndarray:
    shape = tuple(model.waveforms.shape)
    out = np.zeros((n_templates, shape[1], shape[2]), dtype=np.float32)
    order = np.argsort(spike_templates, kind="stable")
    bounds = np.searchsorted(spike_templates[order], np.arange(n_templates + 1))
    for t in range(n_templates):
        spikes = order[bounds[t]:bounds[t + 1]]  # sorted: the sort is stable
        if len(spikes) > max_spikes:
            spikes = spikes[np.linspace(0, len(spikes) - 1, max_spikes).round().astype(int)]
        if len(spikes):
            out[t] = np.asarray(model.waveforms[spikes], dtype=np.float64).mean(axis=0)
        if reporter is not None:
            reporter.increment()
    return out


def _write_pc_features(path: Path, model: Any, spike_templates: np.ndarray,
                       pc_feature_ind: np.ndarray, reporter) -> None:
    n, nc, n_pcs = model.n_spikes, model.n_channels, int(model.n_features_per_channel)
    k = pc_feature_ind.shape[1]
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
              "fortran_order": False, "shape": (n, n_pcs, k)}
    with atomic_writer(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        for chunk in _chunks(n, nc * n_pcs):
            features = np.asarray(model.features[chunk], dtype=np.float32)
            features = features.reshape(len(features), nc, n_pcs)
            channels = pc_feature_ind[spike_templates[chunk]]
            rows = np.arange(len(features))[:, None]
            f.write(np.ascontiguousarray(features[rows, channels].transpose(0, 2, 1)).tobytes())
            if reporter is not None:
                reporter.increment()


def write_template_directory(
    model: Any,
    out_dir: str | Path,
    overwrite: bool = False,
    max_spikes_per_template: int = 100,
    max_channels_loc: int | None = None,
    reporter: Any = None,
) -> Path:
    """Write `model` (any `DataModel`) as a template directory.

    Parameters
    ----------
    model : DataModel
        The source dataset.
    out_dir : path
        The directory to create (or fill).
    overwrite : bool
        Replace an existing template directory there (its stale optional files
        such as ``similar_templates.npy`` and other ``cluster_*.tsv`` are removed).
    max_spikes_per_template : int
        Spikes averaged per template (bounded so the cost does not grow with
        the recording).
    max_channels_loc : int or None
        Cap on the channels per template in ``pc_features.npy``.
    reporter : ProgressReporter or None
        Progress of the slow steps.

    Returns
    -------
    out_dir : Path

    Raises
    ------
    TemplateFormatError
        If `out_dir` holds a template directory and `overwrite` is False, is
        the source itself, or the model's clusters or groups cannot be written.
    """
    out_dir = Path(out_dir).resolve()
    _check_output(model, out_dir, overwrite)
    if max_spikes_per_template < 1:
        raise PhyError("max_spikes_per_template must be at least 1.")
    n, nc = int(model.n_spikes), int(model.n_channels)
    spike_samples = np.asarray(model.spike_samples, dtype=np.int64)
    spike_clusters = np.asarray(model.spike_clusters, dtype=np.int64)
    if n and (spike_clusters.min() < 0 or spike_samples.min() < 0):
        raise TemplateFormatError("cluster ids and spike samples must be non-negative.")
    cluster_ids = np.unique(spike_clusters)
    spike_templates = np.searchsorted(cluster_ids, spike_clusters)
    n_templates = len(cluster_ids)
    n_pcs = int(model.n_features_per_channel)
    channel_map = getattr(model, "channel_map", None)
    if channel_map is None and getattr(model, "traces", None) is not None:
        source = flat_binary_source(model.traces)
        channel_map = None if source is None else source["channels"]
    channel_map = np.arange(nc) if channel_map is None or np.shape(channel_map) != (nc,) \
        else np.asarray(channel_map, dtype=np.int64)
    entries, reason = _raw_data(model, channel_map)
    texts = {"cluster_group.tsv": format_cluster_tsv("group", {
        int(c): GROUP_NAMES[int(g)] for c, g in (model.cluster_groups or {}).items()
        if 0 <= int(g) < len(GROUP_NAMES)
    })}
    for field, values in (getattr(model, "labels", None) or {}).items():
        try:
            if field in ("group", "info"):
                raise TemplateFormatError(f"{field!r} is a reserved name")
            texts[f"cluster_{check_field_name(field)}.tsv"] = format_cluster_tsv(field, values)
        except TemplateFormatError as exc:
            logger.warning("Label %r not exported: %s", field, exc)

    n_chunks = len(list(_chunks(n, nc))) + (len(list(_chunks(n, nc * n_pcs))) if n_pcs else 0)
    if reporter is not None:
        reporter.value_max = n_chunks + n_templates
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for path in [*(out_dir / name for name in _STALE), *out_dir.glob("cluster_*.tsv")]:
            if path.name not in texts and path.exists():
                path.unlink()

    mean_masks = _mean_masks(model, spike_templates, n_templates, reporter)
    needed = int((mean_masks > 0).sum(axis=1).max()) if n_templates else 1
    cap = max_channels_loc or max(32, int(getattr(model, "n_channels_loc", 0) or 0))
    k = max(1, min(needed, cap, nc))
    order = np.argsort(-mean_masks, axis=1, kind="stable")[:, :k]
    pc_feature_ind = order.astype(np.uint32).reshape(n_templates, k)

    _save_npy(out_dir / "spike_times.npy", spike_samples.astype(np.uint64))
    _save_npy(out_dir / "spike_templates.npy", spike_templates.astype(np.uint32))
    _save_npy(out_dir / "spike_clusters.npy", spike_clusters)
    _save_npy(out_dir / "amplitudes.npy", np.ones(n, dtype=np.float32))
    _save_npy(out_dir / "channel_map.npy", channel_map.astype(np.int32))
    _save_npy(out_dir / "channel_positions.npy",
              np.asarray(model.channel_positions, dtype=np.float64))
    _save_npy(out_dir / "pc_feature_ind.npy", pc_feature_ind)
    if n_pcs:
        _write_pc_features(out_dir / "pc_features.npy", model, spike_templates,
                           pc_feature_ind.astype(np.int64), reporter)
    _save_npy(out_dir / "templates.npy", _mean_waveforms(
        model, spike_templates, n_templates, max_spikes_per_template, reporter))
    for name, text in texts.items():
        atomic_write(out_dir / name, text)
    # params.py last: with spike_times.npy it marks the directory as complete.
    atomic_write(out_dir / "params.py", _params_text(entries, reason))
    if reporter is not None:
        reporter.set_complete()
    logger.info("Wrote %d spikes in %d templates to %s.", n, n_templates, out_dir)
    return out_dir
