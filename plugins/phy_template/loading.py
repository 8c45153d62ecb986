"""Loading and checking a template directory: ``params.py`` and the ``.npy`` files.

Every file is checked against the others; anything wrong raises
`TemplateFormatError` naming the file, expected vs found. `load_directory`
fills a `TemplateModel` in place.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from phy_core.arrays import ChannelSubset, SpikeWindows
from phy_core.bunch import Bunch
from phy_core.literals import LiteralFileError, read_literal_file

from .arrays import SparseFeatures, SparseMasks, TemplateWaveforms
from .tsv import TemplateFormatError, groups_from_values, read_cluster_tsv

if TYPE_CHECKING:
    from .model import TemplateModel

logger = logging.getLogger("phy")

__all__ = ["load_directory", "load_params"]

DEFAULT_N_SAMPLES_WAVEFORMS = 61  # Kilosort 2's template width
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


# -- .npy files ------------------------------------------------------------------


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


# -- the directory ------------------------------------------------------------------


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


def load_directory(model: TemplateModel) -> None:
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
        model.waveforms = SpikeWindows(model.traces, model.spike_samples,
                                       n_samples // 2, n_samples - n_samples // 2)
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
