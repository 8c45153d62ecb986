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
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from phy_core.atomic import atomic_writer
from phy_core.bunch import Bunch
from phy_core.literals import LiteralFileError, read_literal_file
from phy_core.model import summary

from .tsv import (
    TemplateFormatError,
    check_field_name,
    format_cluster_tsv,
    group_values,
    groups_from_values,
    read_cluster_tsv,
)

logger = logging.getLogger("phy")

__all__ = ["TemplateFormatError", "TemplateModel", "load_params"]

DEFAULT_N_SAMPLES_WAVEFORMS = 61  # Kilosort 2's template width
BACKUP_NAME = "spike_clusters.backup.npy"
_CHUNK = 65_536  # spikes per chunk when scanning a memory-mapped array


# -- params.py ----------------------------------------------------------------


def load_params(path: str | Path) -> Bunch:
    """Read and check a template directory's ``params.py`` (parsed, never executed).

    Returns
    -------
    params : Bunch
        ``dat_path`` (list of absolute Paths, relative ones resolved against the
        directory), ``n_channels_dat`` (int), ``dtype`` (np.dtype), ``offset``
        (int), ``sample_rate`` (float), ``hp_filtered`` (bool).
    """
    path = Path(path)
    try:
        values = read_literal_file(path)
    except LiteralFileError as exc:
        raise TemplateFormatError(str(exc)) from None

    def fail(key: str, what: str) -> TemplateFormatError:
        return TemplateFormatError(f"{path}: {key} {what} (found {values.get(key)!r}).")

    for key in ("sample_rate", "n_channels_dat", "dtype"):
        if key not in values:
            raise TemplateFormatError(f"{path}: {key} is missing.")
    sample_rate = values["sample_rate"]
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) \
            or not np.isfinite(sample_rate) or sample_rate <= 0:
        raise fail("sample_rate", "must be a positive number of Hz")
    n_channels_dat = values["n_channels_dat"]
    if isinstance(n_channels_dat, bool) or not isinstance(n_channels_dat, int) \
            or n_channels_dat < 1:
        raise fail("n_channels_dat", "must be a positive integer")
    offset = values.get("offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise fail("offset", "must be a non-negative integer (bytes)")
    try:
        if not isinstance(values["dtype"], str):
            raise TypeError
        dtype = np.dtype(values["dtype"])
    except TypeError:
        raise fail("dtype", "must be a data type name such as 'int16'") from None
    if dtype.kind not in "iuf" or dtype.itemsize > 8:
        raise fail("dtype", "must be an integer or float type")
    hp_filtered = values.get("hp_filtered", False)
    if not isinstance(hp_filtered, bool):
        raise fail("hp_filtered", "must be True or False")
    dat_path = values.get("dat_path", [])
    if isinstance(dat_path, str):
        dat_path = [dat_path]
    if dat_path is None:
        dat_path = []
    if not isinstance(dat_path, (list, tuple)) or not all(isinstance(p, str) for p in dat_path):
        raise fail("dat_path", "must be a file name or a list of file names")
    if any(not p or "\x00" in p for p in dat_path):
        raise fail("dat_path", "contains an empty or invalid file name")
    return Bunch(
        dat_path=[(path.parent / p).absolute() for p in dat_path],
        n_channels_dat=int(n_channels_dat),
        dtype=dtype,
        offset=int(offset),
        sample_rate=float(sample_rate),
        hp_filtered=hp_filtered,
    )


# -- arrays ---------------------------------------------------------------------


def _load_array(path: Path, mmap: bool = True, kinds: str = "iuf") -> np.ndarray:
    """Load a ``.npy`` file (memory-mapped), refusing pickles and odd dtypes."""
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise TemplateFormatError(f"{path}: no such file.") from None
    except Exception as exc:  # numpy raises many types for a corrupt header
        raise TemplateFormatError(f"{path}: not a valid .npy array file ({exc}).") from None
    if not isinstance(arr, np.ndarray):
        raise TemplateFormatError(f"{path}: expected one array, found {type(arr).__name__}.")
    if arr.dtype.kind not in kinds or arr.dtype.fields is not None:
        expected = {"i": "integer", "u": "unsigned integer", "f": "float", "b": "boolean"}
        raise TemplateFormatError(
            f"{path}: dtype {arr.dtype}, expected "
            f"{' or '.join(expected[k] for k in kinds)} values."
        )
    return arr


def _as_vector(path: Path, arr: np.ndarray, n: int | None = None) -> np.ndarray:
    """A (n,) view of a (n,) or (n, 1) array (MATLAB writes columns)."""
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise TemplateFormatError(f"{path}: shape {arr.shape}, expected a vector ({n or 'n'},).")
    if n is not None and arr.shape[0] != n:
        raise TemplateFormatError(
            f"{path}: {arr.shape[0]} values, expected one per spike ({n}, as spike_times.npy)."
        )
    return arr


def _integers(path: Path, arr: np.ndarray, name: str) -> np.ndarray:
    """Check (in chunks) that an integer or whole-float array is non-negative; as int64."""
    out = np.empty(arr.shape, dtype=np.int64)
    for start in range(0, max(len(arr), 1), _CHUNK):
        chunk = np.asarray(arr[start:start + _CHUNK])
        if chunk.size == 0:
            break
        if chunk.dtype.kind == "f" and (
            not np.all(np.isfinite(chunk)) or np.any(chunk != np.round(chunk))
        ):
            raise TemplateFormatError(f"{path}: {name} must be whole numbers.")
        if chunk.min() < 0 or chunk.max() >= 2 ** 62:
            raise TemplateFormatError(
                f"{path}: {name} must be non-negative (found values in "
                f"[{chunk.min()}, {chunk.max()}])."
            )
        out[start:start + len(chunk)] = chunk
    return out


def _spike_index(item: Any, n: int) -> tuple[np.ndarray, bool, tuple]:
    """Spike ids selected by `item` (int, slice, array, bool mask, or a tuple)."""
    rest: tuple = ()
    if isinstance(item, tuple):
        item, rest = (item[0], item[1:]) if item else (slice(None), ())
    if isinstance(item, slice):
        return np.arange(*item.indices(n)), False, rest
    if isinstance(item, (int, np.integer)):
        i = int(item) + (n if item < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"spike {item} out of range for {n} spikes")
        return np.array([i]), True, rest
    ids = np.asarray(item)
    if ids.dtype == bool:
        if ids.shape != (n,):
            raise IndexError(f"boolean index of shape {ids.shape}, expected ({n},)")
        return np.nonzero(ids)[0], False, rest
    ids = ids.astype(np.int64).ravel()
    ids = np.where(ids < 0, ids + n, ids)
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise IndexError(f"spike ids out of range for {n} spikes")
    return ids, False, rest


class _Lazy:
    """Base of the lazy per-spike arrays: computes rows on indexing."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, ids: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, item: Any) -> np.ndarray:
        ids, scalar, rest = _spike_index(item, self.shape[0])
        out = self._rows(ids)
        if rest:
            out = out[(slice(None), *rest)]
        return out[0] if scalar else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class ChannelSubset(_Lazy):
    """Raw traces ``(n_samples, n_channels_dat)`` seen through a channel map."""

    def __init__(self, raw: Any, channel_map: np.ndarray) -> None:
        self.raw = raw
        self.channel_map = channel_map
        self.shape = (int(raw.shape[0]), len(channel_map))
        self.dtype = np.dtype(raw.dtype)

    def __getitem__(self, item: Any) -> np.ndarray:
        rows, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
        out = np.asarray(self.raw[rows])[..., self.channel_map]
        if not rest:
            return out
        return out[rest] if out.ndim == 1 else out[(slice(None), *rest)]


class SparseFeatures(_Lazy):
    """``pc_features`` placed on the channels of ``pc_feature_ind``, zeros elsewhere."""

    def __init__(self, pc_features, pc_feature_ind, spike_templates, n_channels) -> None:
        self.pc_features = pc_features
        self.pc_feature_ind = pc_feature_ind
        self.spike_templates = spike_templates
        self.n_pcs = int(pc_features.shape[1])
        self.n_channels = n_channels
        self.shape = (int(pc_features.shape[0]), n_channels * self.n_pcs)
        self.dtype = np.dtype(np.float32)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        data = np.asarray(self.pc_features[ids], dtype=np.float32)  # (n, n_pcs, n_loc)
        channels = self.pc_feature_ind[self.spike_templates[ids]]  # (n, n_loc)
        out = np.zeros((len(ids), self.n_channels, self.n_pcs), dtype=np.float32)
        out[np.arange(len(ids))[:, None], channels] = data.transpose(0, 2, 1)
        return out.reshape(len(ids), -1)


class SparseMasks(_Lazy):
    """1 on the channels of each spike's template (``channel_sets``), 0 elsewhere."""

    def __init__(self, channel_sets: np.ndarray, spike_templates: np.ndarray,
                 n_channels: int) -> None:
        self.channel_sets = channel_sets  # (n_templates, n_channels) float32
        self.spike_templates = spike_templates
        self.shape = (len(spike_templates), n_channels)
        self.dtype = np.dtype(np.float32)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        return self.channel_sets[self.spike_templates[ids]]


class RawWaveforms(_Lazy):
    """Windows of `traces` around each spike, read on indexing."""

    def __init__(self, traces: Any, spike_samples: np.ndarray, n_samples: int) -> None:
        self.traces = traces
        self.spike_samples = spike_samples
        self.n_samples = n_samples
        self.shape = (len(spike_samples), n_samples, traces.shape[1])
        self.dtype = np.dtype(np.float32)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ids), *self.shape[1:]), dtype=np.float32)
        n_total = self.traces.shape[0]
        for i, spike in enumerate(ids):
            start = int(self.spike_samples[spike]) - self.n_samples // 2
            lo, hi = max(start, 0), min(start + self.n_samples, n_total)
            if hi > lo:
                out[i, lo - start:hi - start] = self.traces[lo:hi]
        return out


class TemplateWaveforms(_Lazy):
    """Each spike's template times its amplitude (when there is no raw data)."""

    def __init__(self, templates, spike_templates, amplitudes, wmi=None) -> None:
        self.templates = templates
        self.spike_templates = spike_templates
        self.amplitudes = amplitudes
        self.wmi = wmi
        self.shape = (len(spike_templates), *templates.shape[1:])
        self.dtype = np.dtype(np.float32)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        templates = np.asarray(self.templates[self.spike_templates[ids]], dtype=np.float32)
        if self.wmi is not None:
            templates = templates @ self.wmi
        amplitudes = np.asarray(self.amplitudes[ids], dtype=np.float32)
        return (templates * amplitudes[:, None, None]).astype(np.float32)


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
        _load_directory(self)

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


# -- loading ------------------------------------------------------------------------


def _optional(dir_path: Path, name: str, **kwargs: Any) -> np.ndarray | None:
    path = dir_path / name
    return _load_array(path, **kwargs) if path.exists() else None


def _check_shape(path: Path, arr: np.ndarray, shape: tuple, what: str) -> None:
    if arr.shape != shape:
        raise TemplateFormatError(f"{path}: shape {arr.shape}, expected {shape} ({what}).")


def _load_spikes(model: TemplateModel, d: Path) -> None:
    path = d / "spike_times.npy"
    times = _as_vector(path, _load_array(path, kinds="iuf"))
    model.spike_samples = _integers(path, times, "spike times (in samples)")
    n = len(model.spike_samples)
    decreasing = np.nonzero(np.diff(model.spike_samples) < 0)[0]
    if len(decreasing):
        i = int(decreasing[0])
        raise TemplateFormatError(
            f"{path}: spike times must be sorted; spike {i + 1} ({model.spike_samples[i + 1]}) "
            f"comes before spike {i} ({model.spike_samples[i]})."
        )
    model.spike_times = model.spike_samples / model.sample_rate

    loaded = {}
    for name in ("spike_templates", "spike_clusters"):
        path = d / f"{name}.npy"
        if path.exists():
            arr = _as_vector(path, _load_array(path, kinds="iuf"), n)
            loaded[name] = _integers(path, arr, f"{name.replace('_', ' ')} ids")
    if not loaded:
        raise TemplateFormatError(
            f"{d}: neither spike_templates.npy nor spike_clusters.npy exists; one of them "
            "is needed to know which template or cluster each spike belongs to."
        )
    model.spike_templates = loaded.get("spike_templates", loaded.get("spike_clusters"))
    # Without a curated clustering, the clusters are the templates (saved only by `save`).
    model.spike_clusters = loaded.get("spike_clusters", model.spike_templates.copy())

    amplitudes = _optional(d, "amplitudes.npy")
    if amplitudes is None:
        model.amplitudes = np.ones(n, dtype=np.float32)
    else:
        model.amplitudes = _as_vector(d / "amplitudes.npy", amplitudes, n)


def _load_channels(model: TemplateModel, d: Path) -> None:
    n_dat = model.params.n_channels_dat
    path = d / "channel_map.npy"
    channel_map = _optional(d, "channel_map.npy", mmap=False, kinds="iuf")
    if channel_map is None:
        channel_map = np.arange(n_dat)
    else:
        channel_map = _integers(path, _as_vector(path, channel_map), "channel numbers")
        if len(channel_map) == 0:
            raise TemplateFormatError(f"{path}: no channels.")
        if channel_map.max() >= n_dat:
            raise TemplateFormatError(
                f"{path}: channel {channel_map.max()} does not exist in the .dat file, which "
                f"has n_channels_dat = {n_dat} channels (0 to {n_dat - 1})."
            )
        if len(np.unique(channel_map)) != len(channel_map):
            raise TemplateFormatError(f"{path}: a channel appears more than once.")
    model.channel_map = channel_map
    model.n_channels = nc = len(channel_map)

    path = d / "channel_positions.npy"
    positions = _optional(d, "channel_positions.npy", mmap=False)
    if positions is None:
        # A linear probe with a 20 um pitch, so that views have something to draw.
        positions = np.c_[np.zeros(nc), 20.0 * np.arange(nc)]
    _check_shape(path, positions, (nc, 2), "one (x, y) per channel of channel_map.npy")
    if not np.all(np.isfinite(positions)):
        raise TemplateFormatError(f"{path}: positions must be finite numbers.")
    model.channel_positions = positions.astype(np.float64)

    path = d / "whitening_mat_inv.npy"
    wmi = _optional(d, "whitening_mat_inv.npy", mmap=False, kinds="f")
    if wmi is not None:
        _check_shape(path, wmi, (nc, nc), "channels x channels")
        wmi = wmi.astype(np.float32)
    model.whitening_mat_inv = wmi


def _load_templates(model: TemplateModel, d: Path) -> None:
    nc = model.n_channels
    path = d / "templates.npy"
    templates = _optional(d, "templates.npy", kinds="iuf")
    if (d / "template_ind.npy").exists():
        raise TemplateFormatError(
            f"{d / 'template_ind.npy'}: sparse templates are not supported yet; "
            "save dense templates (n_templates, n_samples, n_channels)."
        )
    if templates is not None and (templates.ndim != 3 or templates.shape[2] != nc):
        raise TemplateFormatError(
            f"{path}: shape {templates.shape}, expected (n_templates, n_samples, {nc}), "
            f"one column per channel of channel_map.npy."
        )
    if templates is not None and templates.shape[1] < 1:
        raise TemplateFormatError(f"{path}: templates have no samples.")
    model.templates = templates

    path = d / "pc_feature_ind.npy"
    ind = _optional(d, "pc_feature_ind.npy", mmap=False, kinds="iuf")
    pcs = _optional(d, "pc_features.npy", kinds="iuf")
    if pcs is not None and ind is None:
        raise TemplateFormatError(
            f"{d / 'pc_feature_ind.npy'}: no such file; it is needed with pc_features.npy "
            "(the channels of each template's features)."
        )
    if ind is not None:
        if ind.ndim != 2 or ind.shape[1] < 1:
            raise TemplateFormatError(
                f"{path}: shape {ind.shape}, expected (n_templates, n_channels_loc)."
            )
        ind = _integers(path, ind.reshape(-1), "channel indices").reshape(ind.shape)
        if ind.size and ind.max() >= nc:
            raise TemplateFormatError(
                f"{path}: channel index {ind.max()} is out of range; channel_map.npy has "
                f"{nc} channels."
            )
        if ind.shape[1] > 1 and np.any(np.diff(np.sort(ind, axis=1), axis=1) == 0):
            raise TemplateFormatError(f"{path}: a template lists the same channel twice.")
    if pcs is not None:
        p = d / "pc_features.npy"
        if pcs.ndim != 3 or pcs.shape[0] != model.n_spikes or pcs.shape[2] != ind.shape[1]:
            raise TemplateFormatError(
                f"{p}: shape {pcs.shape}, expected ({model.n_spikes}, n_pcs, {ind.shape[1]}) "
                "(spikes as spike_times.npy, channels as pc_feature_ind.npy)."
            )
        if pcs.shape[1] < 1:
            raise TemplateFormatError(f"{p}: no principal components (n_pcs = 0).")
    model.pc_features, model.pc_feature_ind = pcs, ind

    # Template ids: every array indexed by template must cover every spike's template.
    sizes = {name: arr.shape[0] for name, arr in
             (("templates.npy", templates), ("pc_feature_ind.npy", ind)) if arr is not None}
    max_id = int(model.spike_templates.max()) if model.n_spikes else -1
    for name, size in sizes.items():
        if max_id >= size:
            raise TemplateFormatError(
                f"{d / name}: {size} templates, but a spike belongs to template {max_id} "
                "(spike_templates.npy)."
            )
    model.n_templates = templates.shape[0] if templates is not None else \
        ind.shape[0] if ind is not None else max_id + 1
    model.n_channels_loc = ind.shape[1] if ind is not None else nc

    path = d / "similar_templates.npy"
    similar = _optional(d, "similar_templates.npy", kinds="iuf")
    if similar is not None:
        _check_shape(path, similar, (model.n_templates,) * 2, "templates x templates")
    model.similar_templates = similar


def _template_channels(model: TemplateModel) -> np.ndarray:
    """(n_templates, n_channels) float32: 1 on the channels of each template."""
    nt, nc = max(model.n_templates, 1), model.n_channels
    if model.pc_feature_ind is not None:
        out = np.zeros((nt, nc), dtype=np.float32)
        out[np.arange(len(model.pc_feature_ind))[:, None], model.pc_feature_ind] = 1
        return out
    if model.templates is not None:
        peak = np.abs(np.asarray(model.templates, dtype=np.float32)).max(axis=1)
        top = peak.max(axis=1, keepdims=True)
        out = ((peak >= 0.1 * top) & (top > 0)).astype(np.float32)
        return out if len(out) else np.ones((nt, nc), dtype=np.float32)
    return np.ones((nt, nc), dtype=np.float32)


def _load_traces(model: TemplateModel) -> None:
    from phy_rawdata.dat import RawDataError, read_dat

    params = model.params
    model.dat_path = params.dat_path
    missing = [p for p in params.dat_path if not p.is_file()]
    if not params.dat_path or missing:
        if missing:
            logger.warning("%s: raw data file(s) not found: %s; traces unavailable.",
                           model.path / "params.py", ", ".join(map(str, missing)))
        model.traces = None
        return
    try:
        raw = read_dat(params.dat_path, dtype=params.dtype, offset=params.offset,
                       n_channels=params.n_channels_dat)
    except RawDataError as exc:
        raise TemplateFormatError(f"{model.path / 'params.py'}: dat_path: {exc}") from None
    model.traces = ChannelSubset(raw, model.channel_map)


def _load_directory(model: TemplateModel) -> None:
    d = model.path
    model.params = load_params(d / "params.py")
    model.sample_rate = model.params.sample_rate
    _load_spikes(model, d)
    _load_channels(model, d)
    _load_templates(model, d)
    _load_traces(model)

    if model.pc_features is not None:
        model.n_features_per_channel = int(model.pc_features.shape[1])
        model.features = SparseFeatures(model.pc_features, model.pc_feature_ind,
                                        model.spike_templates, model.n_channels)
    else:
        model.n_features_per_channel = 0
        model.features = np.zeros((model.n_spikes, 0), dtype=np.float32)
    model.masks = SparseMasks(_template_channels(model), model.spike_templates,
                              model.n_channels)

    n_samples = model.templates.shape[1] if model.templates is not None \
        else DEFAULT_N_SAMPLES_WAVEFORMS
    if model.traces is not None:
        model.waveforms = RawWaveforms(model.traces, model.spike_samples, n_samples)
    else:
        templates = model.templates
        if templates is None:
            templates = np.broadcast_to(np.zeros((1, n_samples, model.n_channels), np.float32),
                                        (max(model.n_templates, 1), n_samples, model.n_channels))
        model.waveforms = TemplateWaveforms(templates, model.spike_templates,
                                            model.amplitudes, model.whitening_mat_inv)

    model.cluster_groups, model.labels = {}, {}
    for path in sorted(d.glob("cluster_*.tsv")):
        if path.name == "cluster_info.tsv":
            continue  # phy's derived summary table, rewritten from the rest
        fields = read_cluster_tsv(path)
        if path.name == "cluster_group.tsv":
            if len(fields) != 1 and "group" not in fields:
                raise TemplateFormatError(
                    f"{path}: expected the columns cluster_id and group, found "
                    f"{', '.join(['cluster_id', *fields])}."
                )
            values = fields["group"] if "group" in fields else next(iter(fields.values()))
            model.cluster_groups = groups_from_values(path, values)
        else:
            model.labels.update(fields)
