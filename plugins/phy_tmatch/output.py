"""The result of the template matching, written as a template directory (Kilosort / phy 2).

Files (read by `phy_template.model.TemplateModel`, hence by ``phy evaluate``
and the GUI):

- ``spike_times.npy`` (uint64, sorted), ``spike_templates.npy`` (uint32),
  ``spike_clusters.npy`` (int64: the cluster each template was made from),
  ``amplitudes.npy`` (float32: each spike's scaling of its template).
- ``templates.npy`` (float32, (n_templates, n_t, n_channels)): the low-rank
  templates in band-passed ``.dat`` units, zero off their channels.
- ``channel_map.npy`` (the group's columns in the ``.dat`` file),
  ``channel_positions.npy``.
- ``cluster_group.tsv`` (the groups of the source clusters, when known).
- ``tmatch.json``: the parameters and a summary of the run.
- ``params.py`` (last; literals): ``dat_path`` (absolute), ``n_channels_dat``,
  ``dtype``, ``offset``, ``sample_rate``, ``hp_filtered = False``.

Every file is written atomically (fsynced before its rename). The directory
is fsynced once after the other files' renames, then again after
``params.py``'s, so that ``params.py`` is durable only after all the others
(a directory fsync per file cost 4-40 ms each on a busy disk). An existing
template directory is replaced only with ``overwrite``; then the optional
files that would be stale (PC features, similar templates, whitening, other
cluster labels) are removed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from phy_core.atomic import atomic_write, atomic_writer, fsync_directory

from .templates import TemplateMatchingError

logger = logging.getLogger("phy")

_WRITTEN = ("spike_times.npy", "spike_templates.npy", "spike_clusters.npy", "amplitudes.npy",
            "templates.npy", "channel_map.npy", "channel_positions.npy", "params.py")
_STALE = ("pc_features.npy", "pc_feature_ind.npy", "similar_templates.npy",
          "whitening_mat.npy", "whitening_mat_inv.npy", "template_ind.npy",
          "template_features.npy", "template_feature_ind.npy", "spike_clusters.backup.npy",
          "cluster_info.tsv")
_GROUP_NAMES = ("noise", "mua", "good", "unsorted")


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a template directory without `overwrite` (before any work)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TemplateMatchingError(f"{out_dir}: exists and is not a directory.")
    existing = [name for name in _WRITTEN if (out_dir / name).exists()]
    if existing and not overwrite:
        raise TemplateMatchingError(
            f"{out_dir}: already holds a template directory ({', '.join(existing[:3])}, ...); "
            "pass overwrite=True (--overwrite) to replace it.")


def _save_npy(path: Path, array: np.ndarray) -> None:
    # The caller fsyncs the directory once, after the last rename.
    with atomic_writer(path, "wb", sync_directory=False) as f:
        np.save(f, array)


def _params_text(prm) -> str:
    t = prm.traces
    files = [str(Path(f).absolute()) for f in t.raw_data_files]
    lines = ["# Written by phy (phy_tmatch): literal assignments, never executed."]
    if any(f.endswith(".raw.kwd") for f in files):
        lines.append("# Traces unavailable: the raw data are .raw.kwd (HDF5) files.")
        files = []
    entries = dict(dat_path=files[0] if len(files) == 1 else files,
                   n_channels_dat=int(t.n_channels), dtype=str(t.dtype),
                   offset=int(t.offset), sample_rate=float(t.sample_rate), hp_filtered=False)
    lines += [f"{key} = {value!r}" for key, value in entries.items()]
    return "\n".join(lines) + "\n"


def _groups_tsv(cluster_groups: dict[int, int], cluster_ids: np.ndarray) -> str:
    lines = ["cluster_id\tgroup"]
    for c in cluster_ids:
        g = cluster_groups.get(int(c))
        if g is not None and 0 <= int(g) < len(_GROUP_NAMES):
            lines.append(f"{int(c)}\t{_GROUP_NAMES[int(g)]}")
    return "\n".join(lines) + "\n"


def write_template_directory(out_dir: str | Path, prm, templates, result, channel_map,
                             channel_positions, cluster_groups: dict | None = None,
                             info: dict | None = None, overwrite: bool = False) -> Path:
    """Write the matched spikes and their templates (see the module docstring).

    `result` has ``spike_samples``, ``spike_templates`` and ``amplitudes``
    (sorted by sample); `templates` is a `TemplateSet`.
    """
    out_dir = Path(out_dir).absolute()
    check_output_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for path in [*(out_dir / name for name in _STALE), *out_dir.glob("cluster_*.tsv")]:
            if path.exists():
                path.unlink()
    spike_templates = np.asarray(result.spike_templates, dtype=np.int64)
    _save_npy(out_dir / "spike_times.npy", np.asarray(result.spike_samples, dtype=np.uint64))
    _save_npy(out_dir / "spike_templates.npy", spike_templates.astype(np.uint32))
    _save_npy(out_dir / "spike_clusters.npy", templates.cluster_ids[spike_templates])
    _save_npy(out_dir / "amplitudes.npy", np.asarray(result.amplitudes, dtype=np.float32))
    _save_npy(out_dir / "templates.npy", templates.dense())
    _save_npy(out_dir / "channel_map.npy", np.asarray(channel_map, dtype=np.int32))
    _save_npy(out_dir / "channel_positions.npy",
              np.asarray(channel_positions, dtype=np.float64))
    if cluster_groups:
        atomic_write(out_dir / "cluster_group.tsv",
                     _groups_tsv(cluster_groups, templates.cluster_ids), sync_directory=False)
    if info is not None:
        atomic_write(out_dir / "tmatch.json", json.dumps(info, indent=2, default=_jsonable)
                     + "\n", sync_directory=False)
    # The renames above are durable before params.py's: with spike_times.npy it marks the
    # directory as complete (atomic_write fsyncs the directory again after it).
    fsync_directory(out_dir)
    atomic_write(out_dir / "params.py", _params_text(prm))
    logger.info("Wrote %d spikes of %d templates to %s.", len(spike_templates),
                templates.n_templates, out_dir)
    return out_dir


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return str(value)
