"""klusta-style ``.prm`` parameter files: parsed as literals, validated, defaults filled in.

A PRM file describes a recording and the parameters of spike detection and
automatic clustering::

    experiment_name = 'rat3'
    prb_file = 'buzsaki32.prb'
    traces = dict(raw_data_files=[experiment_name + '.dat'], voltage_gain=10.,
                  sample_rate=20000, n_channels=32, dtype='int16')
    spikedetekt = dict(threshold_strong_std_factor=5.)
    klustakwik2 = dict(num_starting_clusters=50)

The file is parsed with `phy_core.literals.read_literal_file` (never
executed). Missing keys take klusta's defaults (same names, same values);
unknown keys are reported with a warning on the ``phy`` logger (with the
closest known name, for typos); values of the wrong type raise `PrmError`
naming the file and the key.

Unknown *top-level* names are common and legitimate in PRM files (helper
variables such as ``data_1 = 'session1'`` used in later expressions): they
warn only when they look like a misspelled known name, and are otherwise
logged at debug level.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from phy_core.bunch import Bunch
from phy_core.errors import PhyError
from phy_core.literals import read_literal_file

logger = logging.getLogger("phy")


class PrmError(PhyError, ValueError):
    """A PRM parameter file has a missing, ill-typed or invalid value."""


# klusta's defaults (klusta/default.prm and the spikedetekt/klustakwik2 defaults).
SPIKEDETEKT_DEFAULTS: dict[str, Any] = dict(
    filter_low=500.,  # Hz
    filter_high_factor=0.95 * .5,  # times the sample rate
    filter_butter_order=3,
    # phy: the filter's state and arithmetic; 'float32' is ~1.5x faster than 'float64'
    # and differs from scipy's sosfiltfilt by ~2e-6 of the signal scale (float64: ~6e-8).
    filter_precision='float32',
    filter_lfp_low=0,
    filter_lfp_high=300,
    chunk_size_seconds=1,
    chunk_overlap_seconds=.015,
    n_excerpts=50,
    excerpt_size_seconds=1,
    use_single_threshold=True,
    threshold_strong_std_factor=4.5,
    threshold_weak_std_factor=2.,
    detect_spikes='negative',
    connected_component_join_size=1,
    # phy: split a flood-fill component at each strong peak that rises this much (in units of
    # strong - weak threshold) above its saddle with a higher peak; None: one spike per
    # component, as SpikeDetekt (see phy_detect.splitting).
    split_prominence=1.0,
    # phy: a peak at least split_tall_peak above the weak threshold (same units; None: no
    # such rule) splits off when it rises split_tall_prominence above its saddle.
    split_tall_peak=1.3,
    split_tall_prominence=0.3,
    # phy: rules for a peak on a channel neither the higher peak's nor adjacent to it
    # (apart): the tall rule applies only to such peaks (split_tall_apart); one at least
    # split_far_peak high (same units), or at least split_lead samples before the higher
    # peak, splits off whatever its saddle (None: no such rule).
    split_tall_apart=True,
    split_far_peak=2.0,
    split_lead=3,
    extract_s_before=10,
    extract_s_after=10,
    weight_power=2,
    # phy: the spike time is the centroid of the component's points above this fraction
    # of its peak (weighted by their height above it ** weight_power); None: SpikeDetekt's
    # centroid of every point (see phy_detect.waveform).
    centroid_fraction=0.5,
    n_features_per_channel=3,
    pca_n_waveforms_max=10000,
    # phy: choose a stage plugin per kind by name, e.g. dict(filter='butterworth').
    # phy: the local common reference (phy_detect.reference; the default stage 'auto' applies
    # it to every channel group with a geometry, stages=dict(reference='none') turns it off):
    # each site minus the mean of the sites in a square ring of cells of reference_cell_um,
    # reference_inner_um to reference_outer_um away (rounded to whole cells).
    reference_inner_um=60.,
    reference_outer_um=200.,
    reference_cell_um=40.,
    stages=None,
)

KLUSTAKWIK2_DEFAULTS: dict[str, Any] = dict(
    prior_point=1,
    mua_point=2,
    noise_point=1,
    # KlustaKwik 2: 100 (the threshold of a covariance block); phy's masked EM estimates a
    # cluster's mean on the features where its masks sum to this (plugins/phy_masked_em/model.py).
    points_for_cluster_mask=3,
    penalty_k=0.,
    penalty_k_log_n=1.,
    max_iterations=1000,
    num_starting_clusters=100,
    use_noise_cluster=True,
    use_mua_cluster=True,
    num_changed_threshold=.05,
    full_step_every=1,
    split_first=20,
    split_every=40,
    max_possible_clusters=1000,
    dist_thresh=math.log(10000.),
    max_quick_step_candidates=100000000,
    max_quick_step_candidates_fraction=.4,
    always_split_bimodal=False,
    subset_break_fraction=.01,
    break_fraction=0.,
    fast_split=False,
    max_split_iterations=None,
    consider_cluster_deletion=True,
    num_cpus=None,
    # phy: merge clusters whose mean waveforms are at least this similar on their common
    # features (plugins/phy_masked_em/merge.py); above 1: never.
    merge_similarity=0.9,
    # phy: fit the model on at most this many spikes, spread through the recording, then
    # assign every spike by one E-step (plugins/phy_masked_em/loop.py); 0: all of them.
    max_spikes=50000,
    # phy: a cluster's unmasked features need masks summing to this fraction of its spikes
    # as well as to points_for_cluster_mask (plugins/phy_masked_em/model.py); 0: off.
    fraction_for_cluster_mask=0.,
)

# Keys whose value must be an integer (the others of numeric default accept any number).
_INTEGER_KEYS = {
    "filter_butter_order", "n_excerpts", "connected_component_join_size", "extract_s_before",
    "extract_s_after", "n_features_per_channel", "pca_n_waveforms_max", "prior_point",
    "mua_point", "noise_point", "points_for_cluster_mask", "max_iterations",
    "num_starting_clusters", "full_step_every", "split_first", "split_every",
    "max_possible_clusters", "max_quick_step_candidates", "max_split_iterations", "num_cpus",
    "max_spikes",
}
# Keys of numeric default that also accept None.
_OPTIONAL_NUMBER_KEYS = {"split_prominence", "split_tall_peak", "split_far_peak",
                         "split_lead", "centroid_fraction", "merge_similarity"}
_DETECT_SPIKES = ("negative", "positive", "both")
_FILTER_PRECISIONS = ("float32", "float64")
TRACES_KEYS = ("raw_data_files", "voltage_gain", "sample_rate", "n_channels", "dtype", "offset")
# ``template_matching`` is read by phy_spikesort (its optional stage).
TOP_LEVEL_KEYS = ("experiment_name", "prb_file", "traces", "spikedetekt", "klustakwik2",
                  "template_matching")
TRACES_DEFAULTS: dict[str, Any] = dict(voltage_gain=10., dtype="int16", offset=0)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _warn_unknown(path: Path, where: str, key: Any, known, level: int = logging.WARNING) -> None:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if close:
        level = logging.WARNING
    logger.log(level, "%s: unknown parameter %r in %s, ignored%s.", path, key, where, hint)


def _check_section(path: Path, name: str, given: Any, defaults: dict[str, Any]) -> dict:
    """Merge `given` into a copy of `defaults`, checking types against the defaults."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise PrmError(f"{path}: {name} must be a dict, got {type(given).__name__}.")
    out = dict(defaults)
    for key, value in given.items():
        where = f"{path}: {name}[{key!r}]"
        if key not in defaults:
            _warn_unknown(path, name, key, defaults)
            out[key] = value
            continue
        default = defaults[key]
        if key in _INTEGER_KEYS:
            ok = _is_int(value) or (default is None and value is None)
            expected = "an integer" + (" or None" if default is None else "")
        elif isinstance(default, bool):
            ok, expected = isinstance(value, bool), "True or False"
        elif isinstance(default, (int, float)):
            ok = _is_number(value) or (key in _OPTIONAL_NUMBER_KEYS and value is None)
            expected = "a number" + (" or None" if key in _OPTIONAL_NUMBER_KEYS else "")
        elif isinstance(default, str):
            ok, expected = isinstance(value, str), "a string"
        else:
            ok, expected = True, ""
        if not ok:
            raise PrmError(f"{where} must be {expected}, got {value!r}.")
        if key in _INTEGER_KEYS and value is not None and value < 0:
            raise PrmError(f"{where} must be >= 0, got {value!r}.")
        out[key] = value
    if name == "spikedetekt" and out["detect_spikes"] not in _DETECT_SPIKES:
        raise PrmError(f"{path}: spikedetekt['detect_spikes'] must be one of "
                       f"{', '.join(map(repr, _DETECT_SPIKES))}, got {out['detect_spikes']!r}.")
    if name == "spikedetekt" and out["filter_precision"] not in _FILTER_PRECISIONS:
        raise PrmError(f"{path}: spikedetekt['filter_precision'] must be one of "
                       f"{', '.join(map(repr, _FILTER_PRECISIONS))}, "
                       f"got {out['filter_precision']!r}.")
    return out


def _resolve(path: Path, value: str) -> Path:
    """An absolute path; relative ones are relative to the PRM's folder."""
    try:
        p = Path(os.path.expanduser(value))
        return (p if p.is_absolute() else path.parent / p).resolve()
    except (ValueError, OSError) as exc:  # e.g. an embedded null byte
        raise PrmError(f"{path}: {value!r} is not a valid file name ({exc}).") from None


def _check_traces(path: Path, traces: Any) -> Bunch:
    if traces is None:
        raise PrmError(f"{path}: no traces = dict(raw_data_files=..., sample_rate=..., "
                       "n_channels=..., dtype=...) (needed to read the recording).")
    if not isinstance(traces, dict):
        raise PrmError(f"{path}: traces must be a dict, got {type(traces).__name__}.")
    for key in traces:
        if key not in TRACES_KEYS:
            _warn_unknown(path, "traces", key, TRACES_KEYS)
    values = {**TRACES_DEFAULTS, **{k: v for k, v in traces.items() if k in TRACES_KEYS}}
    for key in ("raw_data_files", "sample_rate", "n_channels"):
        if key not in values or values[key] is None:
            raise PrmError(f"{path}: traces[{key!r}] is missing.")
    files = values["raw_data_files"]
    if isinstance(files, str):  # klusta accepted a single file name
        files = [files]
    if not isinstance(files, (list, tuple)) or not files or \
            not all(isinstance(f, str) and f for f in files):
        raise PrmError(f"{path}: traces['raw_data_files'] must be a non-empty list of file "
                       f"names, got {values['raw_data_files']!r}.")
    sample_rate = values["sample_rate"]
    if not _is_number(sample_rate) or sample_rate <= 0:
        raise PrmError(f"{path}: traces['sample_rate'] must be a positive number (Hz), "
                       f"got {sample_rate!r}.")
    n_channels = values["n_channels"]
    if not _is_int(n_channels) or n_channels < 1:
        raise PrmError(f"{path}: traces['n_channels'] must be a positive integer, "
                       f"got {n_channels!r}.")
    gain = values["voltage_gain"]
    if not _is_number(gain):
        raise PrmError(f"{path}: traces['voltage_gain'] must be a number, got {gain!r}.")
    offset = values["offset"]
    if not _is_int(offset) or offset < 0:
        raise PrmError(f"{path}: traces['offset'] must be a non-negative integer (header "
                       f"bytes), got {offset!r}.")
    dtype = values["dtype"]
    try:
        if not isinstance(dtype, str):
            raise TypeError
        np_dtype = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError):
        raise PrmError(f"{path}: traces['dtype'] must be a numeric data type name such as "
                       f"'int16', got {dtype!r}.") from None
    if np_dtype.kind not in "iuf" or np_dtype.itemsize > 8:
        raise PrmError(f"{path}: traces['dtype'] must be an integer or float type, "
                       f"got {dtype!r}.")
    raw_files = [_resolve(path, f) for f in files]
    missing = [str(f) for f in raw_files if not f.is_file()]
    if missing:
        raise PrmError(f"{path}: traces['raw_data_files']: no such file(s): "
                       f"{', '.join(missing)}.")
    return Bunch(raw_data_files=raw_files, voltage_gain=float(gain),
                 sample_rate=float(sample_rate), n_channels=int(n_channels),
                 # Keep a non-native byte order ('>i2'), which the name alone loses.
                 dtype=np_dtype.name if np_dtype.isnative else np_dtype.str,
                 offset=int(offset))


def read_prm(path: str | os.PathLike) -> Bunch:
    """Read and validate a klusta-style ``.prm`` parameter file.

    Parameters
    ----------
    path : path
        The ``.prm`` file.

    Returns
    -------
    prm : Bunch
        ``path`` (absolute Path), ``experiment_name`` (str, default: the file's
        stem), ``prb_file`` (absolute Path or None), ``traces`` (Bunch with
        ``raw_data_files`` list of absolute Paths, ``voltage_gain``,
        ``sample_rate``, ``n_channels``, ``dtype`` (name), ``offset``),
        ``spikedetekt`` and ``klustakwik2`` (dicts, klusta's defaults filled in).

    Raises
    ------
    phy_core.literals.LiteralFileError
        If the file is missing or is not made of literal assignments.
    PrmError
        If a value is missing, of the wrong type or invalid, or a raw data
        file does not exist (all missing files are listed).
    """
    path = Path(path).absolute()
    values = read_literal_file(path, allowed_calls=("dict",))
    for key in values:
        if key not in TOP_LEVEL_KEYS:
            _warn_unknown(path, "the file", key, TOP_LEVEL_KEYS, level=logging.DEBUG)
    name = values.get("experiment_name")
    if name is None:
        name = path.name[:-len(".prm")] if path.name.endswith(".prm") else path.stem
    if not isinstance(name, str) or not name:
        raise PrmError(f"{path}: experiment_name must be a non-empty string, got {name!r}.")
    prb = values.get("prb_file")
    if prb is not None and (not isinstance(prb, str) or not prb):
        raise PrmError(f"{path}: prb_file must be a file name (string), got {prb!r}.")
    return Bunch(
        path=path,
        experiment_name=name,
        prb_file=_resolve(path, prb) if prb is not None else None,
        traces=_check_traces(path, values.get("traces")),
        spikedetekt=_check_section(path, "spikedetekt", values.get("spikedetekt"),
                                   SPIKEDETEKT_DEFAULTS),
        klustakwik2=_check_section(path, "klustakwik2", values.get("klustakwik2"),
                                   KLUSTAKWIK2_DEFAULTS),
    )
