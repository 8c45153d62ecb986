"""`TemplateModel`: a template directory (Kilosort / phy 2 output) as a phy `DataModel`.

The directory holds ``params.py`` (literal assignments: ``dat_path``,
``n_channels_dat``, ``dtype``, ``offset``, ``sample_rate``, ``hp_filtered``)
and ``.npy`` arrays:

=========================  =======================================  ========
file                       shape                                    required
=========================  =======================================  ========
spike_times.npy            (n_spikes,) integer samples, sorted      yes
spike_templates.npy        (n_spikes,) template of each spike       one of
spike_clusters.npy         (n_spikes,) cluster (curation result)    the two
amplitudes.npy             (n_spikes,) template scaling             no
templates.npy              (n_templates, n_samples, n_channels)     no
channel_map.npy            (n_channels,) column in the .dat file    no
channel_positions.npy      (n_channels, 2) micrometres              no
pc_features.npy            (n_spikes, n_pcs, n_channels_loc)        no
pc_feature_ind.npy         (n_templates, n_channels_loc)            with pcs
similar_templates.npy      (n_templates, n_templates)               no
whitening_mat_inv.npy      (n_channels, n_channels)                 no
cluster_<field>.tsv        cluster_id + field (tab-separated)       no
=========================  =======================================  ========

(n, 1) column arrays, as MATLAB writes them, are accepted. Big arrays are
memory-mapped; every file is checked against the others, and anything wrong
raises `TemplateFormatError` naming the file, expected vs found.

How the files map to the protocol
---------------------------------
- ``n_channels = len(channel_map)``; channel ``i`` of phy is column
  ``channel_map[i]`` of the ``.dat`` file.
- ``traces`` is a lazy view of the raw ``.dat`` file(s) (``n_channels_dat``
  interleaved columns) restricted to ``channel_map``: indexing reads only
  the requested rows. None when ``dat_path`` is empty or the files are
  missing (a warning says so).
- ``features[spike_ids]`` is built on indexing: a spike's ``pc_features``
  go on the channels ``pc_feature_ind[spike_template]``, zeros elsewhere,
  channel-major (feature ``j`` belongs to channel ``j // n_pcs``).
  ``masks`` is 1 on those channels and 0 elsewhere. Without
  ``pc_features.npy``, ``n_features_per_channel`` is 0 and the masks are
  1 on the channels where the spike's template is at least 10 % of its peak
  (or everywhere without templates).
- ``waveforms[spike_ids]`` are raw (unfiltered, unless ``hp_filtered``)
  windows of ``n_samples`` (the templates' width, 61 without templates)
  samples of ``traces``, centred on each spike (sample ``n_samples // 2``
  is the spike time), zero-padded at the ends of the recording. Without
  raw data they are the spike's template times its amplitude, unwhitened
  with ``whitening_mat_inv`` when that file exists.
- ``cluster_groups`` come from ``cluster_group.tsv`` (noise, mua, good,
  unsorted -> 0..3); the other ``cluster_*.tsv`` files (except phy's derived
  ``cluster_info.tsv``) become ``labels`` ``{field: {cluster_id: value}}``.
- ``spike_clusters`` equals ``spike_templates`` when
  ``spike_clusters.npy`` is absent; nothing is written until `save`.

Sparse templates (``template_ind.npy``) are not supported yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from phy_core.atomic import atomic_writer
from phy_core.model import summary

from .loading import load_directory, load_params
from .tsv import TemplateFormatError, check_field_name, format_cluster_tsv, group_values

__all__ = ["TemplateFormatError", "TemplateModel", "load_params"]

BACKUP_NAME = "spike_clusters.backup.npy"


class TemplateModel:
    """A template directory (Kilosort / phy 2 output) as a phy `DataModel`.

    Parameters
    ----------
    dir_path : path
        The directory, or its ``params.py``.

    Attributes
    ----------
    Besides the `DataModel` attributes: ``params`` (`load_params`),
    ``dat_path`` (list of Paths), ``channel_map``, ``spike_templates``,
    ``amplitudes``, ``templates`` (or None), ``pc_features`` and
    ``pc_feature_ind`` (or None), ``similar_templates`` and
    ``whitening_mat_inv`` (or None), ``n_templates``, ``n_channels_loc``,
    ``labels`` ``{field: {cluster_id: value}}``.

    Raises
    ------
    TemplateFormatError
        For a missing required file or any inconsistency between the files.
    """

    def __init__(self, dir_path: str | Path) -> None:
        dir_path = Path(dir_path)
        if dir_path.name == "params.py" and not dir_path.is_dir():
            dir_path = dir_path.parent
        if not dir_path.is_dir():
            raise TemplateFormatError(f"{dir_path}: not a directory.")
        self.path = dir_path
        self.probe = None
        load_directory(self)

    # -- protocol ---------------------------------------------------------------

    @property
    def n_spikes(self) -> int:
        return len(self.spike_samples)

    def save(
        self,
        spike_clusters: np.ndarray,
        cluster_groups: Mapping[int, int],
        labels: Mapping[str, Mapping[int, Any]] | None = None,
    ) -> None:
        """Save a clustering into the directory.

        Writes ``spike_clusters.npy``, ``cluster_group.tsv`` and one
        ``cluster_<label>.tsv`` per label. Every file is written to a
        temporary file and fsynced before any of them is renamed over its
        target, so an interrupted save leaves every file either old or new.
        The first time an existing ``spike_clusters.npy`` is replaced, it is
        kept as ``spike_clusters.backup.npy`` (never overwritten afterwards:
        it holds the clustering as it was before phy first saved); without
        a ``spike_clusters.npy``, ``spike_templates.npy`` is the original.

        Raises
        ------
        TemplateFormatError
            For a clustering of the wrong length, negative ids, groups other
            than 0..3 or label names that cannot be file names.
        """
        spike_clusters = np.asarray(spike_clusters)
        if spike_clusters.shape != (self.n_spikes,) or (
            self.n_spikes and spike_clusters.dtype.kind not in "iu"
        ):
            raise TemplateFormatError(
                f"{self.path}: cannot save spike_clusters of shape {spike_clusters.shape} and "
                f"dtype {spike_clusters.dtype}; expected ({self.n_spikes},) integers."
            )
        if self.n_spikes and spike_clusters.min() < 0:
            raise TemplateFormatError(f"{self.path}: cluster ids must be non-negative.")
        spike_clusters = spike_clusters.astype(np.int64)
        texts = {"cluster_group.tsv": format_cluster_tsv("group", group_values(cluster_groups))}
        for field, values in (labels or {}).items():
            if check_field_name(field) in ("group", "info"):
                raise TemplateFormatError(
                    f"the label name {field!r} is reserved (cluster_{field}.tsv)."
                )
            texts[f"cluster_{field}.tsv"] = format_cluster_tsv(field, values)

        clusters_path = self.path / "spike_clusters.npy"
        backup_path = self.path / BACKUP_NAME
        if clusters_path.exists() and not backup_path.exists():
            with atomic_writer(backup_path, "wb") as f:
                f.write(clusters_path.read_bytes())
        # Enter every writer before leaving any: all contents are on disk before
        # the first rename, which narrows the window of a mixed state to renames.
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(atomic_writer(clusters_path, "wb"))
            np.save(f, spike_clusters)
            for name, text in texts.items():
                stack.enter_context(atomic_writer(self.path / name, "w")).write(text)

        self.spike_clusters = spike_clusters
        self.cluster_groups = {int(k): int(v) for k, v in cluster_groups.items()}
        for field, values in (labels or {}).items():
            self.labels[field] = dict(values)

    def describe(self) -> str:
        s = summary(self)
        lines = [
            f"Template directory {self.path}",
            f"  templates         {self.n_templates}",
            f"  clusters          {s.n_clusters}",
            f"  spikes            {s.n_spikes:,}",
            f"  channels          {s.n_channels} (of {self.params.n_channels_dat} in the .dat)",
            f"  features/channel  {s.n_features_per_channel}",
            f"  sample rate       {s.sample_rate:g} Hz",
            f"  duration          {s.duration_s:.1f} s",
            "  raw data          " + (
                ", ".join(str(p) for p in self.dat_path) if self.traces is not None
                else "unavailable"
            ),
        ]
        if self.labels:
            lines.append(f"  labels            {', '.join(sorted(self.labels))}")
        return "\n".join(lines)

    def close(self) -> None:
        """Drop the references to memory-mapped files (unmapped when collected)."""
        self.traces = self.pc_features = self.templates = self.similar_templates = None
        self.features = self.waveforms = None

    def __repr__(self) -> str:
        return f"<TemplateModel {self.path} ({self.n_spikes} spikes)>"
