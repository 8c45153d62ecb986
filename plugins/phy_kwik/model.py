"""`KwikModel`: a Kwik dataset (``.kwik`` + ``.kwx`` + raw data) as a phy DataModel.

Reading decisions (see also `phy_kwik.traces` for the raw-data lookup):

- A missing ``.kwik``, a file that is not HDF5 (truncated, corrupted), a
  ``kwik_version`` other than 2, datasets whose lengths disagree, negative
  cluster ids, or an unknown channel group / clustering raise `KwikError`
  (a `PhyError`) naming the file and, for names, the available ones.
- A missing ``.kwx`` (or no ``features_masks`` in it) is not an error: a
  warning is logged, `has_kwx()` is False, and `features` / `masks` are
  virtual arrays of zeros of the right shape, so the rest of phy works.
  A ``.kwx`` that exists but cannot be read raises `KwikError`.
- Missing raw data: `traces` is None (warning); `waveforms` are zeros.
- ``spike_samples`` (int64) are ``time_samples + start_sample`` of each
  spike's recording; klusta's ``time_fractional`` (``uint8``, in 1/255 of a
  sample) is ignored there, as klusta did, and exposed in
  `spike_samples_fractional`.
- Unsorted spike times: klusta files are known to contain inversions of a
  sample or two; those (<= 2 samples) are fixed by a running maximum with a
  warning. Larger inversions raise `KwikError`.
- ``n_channels`` is the number of channels in ``channel_order`` (the
  channels of features, masks, waveforms and traces columns).
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from phy_core.arrays import ChannelSubset, ConcatenatedArrays, SpikeWindows
from phy_core.bunch import Bunch
from phy_core.errors import PhyError
from phy_core.model import summary

from .arrays import constant_view, features_view, h5_view, make_bandpass, masks_view
from .clusterings import ClusteringsMixin, ClusterMetadata
from .errors import KwikError
from .h5 import File, open_h5
from .traces import find_traces

logger = logging.getLogger("phy")

SPIKEDETEKT_DEFAULTS = dict(
    filter_low=500.0, filter_high_factor=0.95 * 0.5, filter_butter_order=3,
    extract_s_before=10, extract_s_after=10, n_features_per_channel=3, waveform_filter=True,
)
# Low-level failures turned into a KwikError naming the file.
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError)
_MAX_FIXABLE_INVERSION = 2


def _int_children(f: File, path: str) -> list[int]:
    return sorted(int(c) for c in f.children(path) if c.isdigit())


def _read_1d(f: File, path: str, n: int | None, kinds: str) -> np.ndarray:
    dset = f.read(path)
    if dset.ndim != 1 or dset.dtype.kind not in kinds:
        raise KwikError(f"{f.filename}: {path} has shape {dset.shape} and dtype {dset.dtype}, "
                        f"expected a 1-D array of kind {kinds!r}.")
    if n is not None and dset.shape[0] != n:
        raise KwikError(f"{f.filename}: {path} has {dset.shape[0]} elements, expected {n} "
                        "(one per spike).")
    return dset[()] if dset.shape[0] else np.zeros(0, dtype=dset.dtype)


def _sosfiltfilt(sos, x, axis=-1):
    """``scipy.signal.sosfiltfilt``, imported on the first waveform read: opening a model
    does not pay the import (~0.4 s of CPU with scipy.stats), which a sort never needs."""
    from scipy.signal import sosfiltfilt

    return sosfiltfilt(sos, x, axis=axis)


class KwikModel(ClusteringsMixin):
    """A Kwik dataset, fulfilling `phy_core.model.DataModel`.

    Parameters
    ----------
    kwik_path : path
        The ``.kwik`` file; the ``.kwx`` has the same basename.
    channel_group : int, optional
        The channel group (shank); default: the first.
    clustering : str, optional
        Default ``main`` (or, after an interrupted save, ``main_backup``).
    """

    def __init__(self, kwik_path: str | os.PathLike, channel_group: int | None = None,
                 clustering: str | None = None) -> None:
        self._opened: list = []
        self._fm_file: File | None = None
        self.open(kwik_path, channel_group=channel_group, clustering=clustering)

    # Opening ----------------------------------------------------------------

    def open(self, kwik_path: str | os.PathLike, channel_group: int | None = None,
             clustering: str | None = None) -> None:
        """Open a Kwik dataset (the ``.kwik`` is read and closed; ``.kwx``/raw stay open)."""
        path = Path(kwik_path)
        if path.suffix != ".kwik":
            raise KwikError(f"{path}: not a .kwik file.")
        if not path.is_file():
            raise KwikError(f"{path}: no such file or directory.")
        self.close()
        self.kwik_path = path.resolve()
        self.path = self.kwik_path
        self.name = path.stem
        self.kwx_path = self.kwik_path.with_suffix(".kwx")
        try:
            with open_h5(self.kwik_path, "r") as f:
                self._load_file(f)
                self._select_group(f, channel_group)
                self._load_group(f, clustering)
        except PhyError:
            self.close()
            raise
        except _READ_ERRORS as exc:
            self.close()
            raise KwikError(f"{self.kwik_path}: cannot be read ({type(exc).__name__}: "
                            f"{exc}).") from None

    def _load_meta(self, f: File, name: str) -> dict:
        path = f"/application_data/{name}"
        return {attr: f.read_attr(path, attr) for attr in f.attrs(path)}

    def _load_file(self, f: File) -> None:
        version = f.read_attr("/", "kwik_version", None)
        if version is None or np.ndim(version) or int(version) != 2:
            raise KwikError(f"{f.filename}: kwik_version is {version!r}, expected 2.")
        self._metadata = dict(SPIKEDETEKT_DEFAULTS)
        self._metadata.update(self._load_meta(f, "spikedetekt"))
        self._kk2_metadata = self._load_meta(f, "klustakwik2")
        self._recordings = _int_children(f, "/recordings")
        self._recording_starts = {}
        rates = []
        for rec in self._recordings:
            rpath = f"/recordings/{rec}"
            self._recording_starts[rec] = int(f.read_attr(rpath, "start_sample", 0))
            rate = f.read_attr(rpath, "sample_rate", None)
            if rate is not None:
                rates.append(float(rate))
        rate = self._metadata.get("sample_rate", None)
        if rate is None or isinstance(rate, str) and not rate:
            rate = rates[0] if rates else None
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            rate = float("nan")
        if not np.isfinite(rate) or rate <= 0:
            raise KwikError(f"{f.filename}: no valid sample_rate (in "
                            "/application_data/spikedetekt or /recordings), found "
                            f"{self._metadata.get('sample_rate')!r}.")
        self._sample_rate = rate
        self._metadata["sample_rate"] = rate
        self._channel_groups = _int_children(f, "/channel_groups")
        if not self._channel_groups:
            raise KwikError(f"{f.filename}: no channel group in /channel_groups.")
        self._probe_groups = {g: self._read_probe_group(f, g) for g in self._channel_groups}
        self._raw, opened = find_traces(f, self.kwik_path, self._metadata)
        self._opened.extend(opened)

    def _read_probe_group(self, f: File, group: int) -> dict:
        gpath = f"/channel_groups/{group}"
        channels = _int_children(f, gpath + "/channels")
        order = f.read_attr(gpath, "channel_order", None)
        order = np.asarray(channels if order is None else order).ravel()
        if order.dtype.kind not in "iu" or (order.size and order.min() < 0):
            raise KwikError(f"{f.filename}: {gpath} channel_order must be channel ids, "
                            f"got {order!r}.")
        order = order.astype(np.int64)
        graph = np.asarray(f.read_attr(gpath, "adjacency_graph", np.zeros((0, 2))))
        graph = graph.astype(np.int64).reshape(-1, 2) if graph.size else \
            np.zeros((0, 2), dtype=np.int64)
        positions = np.zeros((len(order), 2), dtype=np.float64)
        for i, ch in enumerate(order):
            pos = f.read_attr(f"{gpath}/channels/{ch}", "position", None)
            pos = np.asarray(pos if pos is not None else (0.0, float(ch)), dtype=np.float64)
            if pos.shape != (2,):
                raise KwikError(f"{f.filename}: {gpath}/channels/{ch} position has shape "
                                f"{pos.shape}, expected (2,).")
            positions[i] = pos
        return dict(channels=np.asarray(channels, dtype=np.int64), channel_order=order,
                    graph=graph, positions=positions)

    def _select_group(self, f: File, channel_group: int | None) -> None:
        if channel_group is None:
            channel_group = self._channel_groups[0]
        if channel_group not in self._channel_groups:
            raise KwikError(f"{f.filename}: no channel group {channel_group!r}; available: "
                            f"{self._channel_groups}.")
        self._channel_group = int(channel_group)

    def _load_group(self, f: File, clustering: str | None) -> None:
        info = self._probe_groups[self._channel_group]
        self._channels = info["channels"]
        self._channel_order = info["channel_order"]
        self._load_spikes(f)
        self._load_features_masks()
        self._load_clusterings(f, clustering)
        self._make_traces_waveforms()

    @property
    def _group_path(self) -> str:
        return f"/channel_groups/{self._channel_group}"

    def _load_spikes(self, f: File) -> None:
        spath = self._group_path + "/spikes"
        if not f.exists(spath + "/time_samples"):
            logger.debug("%s: no spikes in channel group %d.", f.filename, self._channel_group)
            ts = np.zeros(0, dtype=np.uint64)
        else:
            ts = _read_1d(f, spath + "/time_samples", None, "iu")
        n = len(ts)
        if n and (int(ts.max()) > 2 ** 53 or int(ts.min()) < 0):
            raise KwikError(f"{f.filename}: {spath}/time_samples has values out of range "
                            f"[{ts.min()}, {ts.max()}].")
        frac = _read_1d(f, spath + "/time_fractional", n, "iu") \
            if f.exists(spath + "/time_fractional") else np.zeros(n, dtype=np.uint8)
        recs = _read_1d(f, spath + "/recording", n, "iu") \
            if f.exists(spath + "/recording") else np.zeros(n, dtype=np.int32)
        starts = np.zeros(int(recs.max()) + 1 if n else 1, dtype=np.int64)
        unknown = sorted(set(np.unique(recs).tolist()) - set(self._recording_starts) - {0})
        if unknown:
            raise KwikError(f"{f.filename}: spikes refer to recordings {unknown[:5]} which are "
                            f"not in /recordings (available: {self._recordings}).")
        for rec, start in self._recording_starts.items():
            if rec < len(starts):
                starts[rec] = start
        samples = ts.astype(np.int64) + starts[recs.astype(np.int64)]
        if n > 1:
            diffs = np.diff(samples)
            if np.any(diffs < 0):
                worst = int(-diffs.min())
                bad = int((diffs < 0).sum())
                if worst > _MAX_FIXABLE_INVERSION:
                    raise KwikError(f"{f.filename}: spike times of channel group "
                                    f"{self._channel_group} are not sorted ({bad} inversions, "
                                    f"up to {worst} samples).")
                logger.warning("%s: %d spike times decrease by up to %d samples (a known "
                               "klusta glitch); fixed by a running maximum.", f.filename, bad,
                               worst)
                samples = np.maximum.accumulate(samples)
        self._spike_samples = samples
        self._spike_fractional = frac.astype(np.float64) / 255.0
        self._spike_recordings = recs.astype(np.int64)

    def _load_features_masks(self) -> None:
        n, n_channels = len(self._spike_samples), len(self._channel_order)
        nfpc = self._metadata.get("n_features_per_channel", 3)
        try:
            nfpc = int(nfpc)
        except (TypeError, ValueError):
            raise KwikError(f"{self.kwik_path}: n_features_per_channel is {nfpc!r}.") from None
        self._n_features_per_channel = nfpc
        self._features_masks = None
        h5_path = self._group_path + "/features_masks"
        fm = None
        if not self.kwx_path.exists():
            logger.warning("%s: not found; features and masks are unavailable (zeros).",
                           self.kwx_path)
        else:
            if self._fm_file is None:
                self._fm_file = open_h5(self.kwx_path, "r")
                self._opened.append(self._fm_file)
            if not self._fm_file.exists(h5_path):
                logger.warning("%s: no %s; features and masks are unavailable (zeros).",
                               self.kwx_path, h5_path)
            else:
                fm = self._fm_file.read(h5_path)
        if fm is None:
            self._features = constant_view((n, n_channels * nfpc))
            self._masks = constant_view((n, n_channels))
            return
        shape = fm.shape
        if len(shape) != 3 or shape[0] != n or shape[2] != 2 or fm.dtype.kind != "f":
            raise KwikError(f"{self.kwx_path}: {h5_path} has shape {shape} ({fm.dtype}), "
                            f"expected ({n}, n_channels * n_features, 2) floats for the "
                            f"{n} spikes of the .kwik.")
        if n_channels == 0 or shape[1] % n_channels or shape[1] == 0:
            raise KwikError(f"{self.kwx_path}: {h5_path} has {shape[1]} columns, not a "
                            f"multiple of the {n_channels} channels of channel_order.")
        if shape[1] != n_channels * nfpc:
            logger.warning("%s: %d features per channel in the data, %d in the metadata; "
                           "using the data.", self.kwx_path, shape[1] // n_channels, nfpc)
            self._n_features_per_channel = nfpc = shape[1] // n_channels
        from phy_rawdata.kwd import KwdError, memmap_h5_dataset

        try:
            mapped = memmap_h5_dataset(self.kwx_path, fm)
        except KwdError as exc:  # truncated file
            raise KwikError(str(exc)) from None
        self._features_masks = mapped if mapped is not None else fm
        where = f"{self.kwx_path}:{h5_path}"
        self._features = features_view(self._features_masks, nfpc, where)
        self._masks = masks_view(self._features_masks, nfpc, where)

    def _make_traces_waveforms(self) -> None:
        n_channels = len(self._channel_order)
        self._traces = raw = None
        if self._raw is not None:
            n_all = self._raw[0].shape[1]
            if n_channels and self._channel_order.max() >= n_all:
                logger.warning("%s: the raw data has %d channels, channel_order needs %d; "
                               "traces unavailable.", self.kwik_path, n_all,
                               int(self._channel_order.max()) + 1)
            else:
                # HDF5 datasets (.raw.kwd) read in any row order, errors as KwikError.
                arrays = [a if isinstance(a, np.ndarray) else h5_view(a, str(self.kwik_path))
                          for a in self._raw]
                raw = arrays[0] if len(arrays) == 1 else ConcatenatedArrays(arrays)
                starts = np.cumsum([0] + [a.shape[0] for a in self._raw[:-1]])
                declared = [self._recording_starts.get(r, 0) for r in self._recordings]
                if len(declared) == len(starts) and not np.array_equal(declared, starts):
                    logger.warning("%s: the recordings' start_sample %s disagree with the "
                                   "raw data lengths (starts %s); waveforms may be "
                                   "misaligned.", self.kwik_path, declared, starts.tolist())
                self._traces = ChannelSubset(raw, self._channel_order)
        md = self._metadata
        n_before, n_after = int(md["extract_s_before"]), int(md["extract_s_after"])
        sos, margin, bandpass = None, 0, None
        if self._traces is not None and bool(md.get("waveform_filter", True)):
            sos, margin = make_bandpass(self._sample_rate, float(md["filter_low"]),
                                        float(md["filter_high_factor"]),
                                        int(md["filter_butter_order"]))
            # Zero-phase band-pass along time, for all requested windows in one call.
            bandpass = partial(_sosfiltfilt, sos, axis=-2)
        if raw is None:  # no traces: waveforms are zeros
            self._waveforms = constant_view((len(self._spike_samples), n_before + n_after,
                                             n_channels))
        else:
            self._waveforms = SpikeWindows(raw, self._spike_samples, n_before, n_after,
                                           channels=self._channel_order, filter=bandpass,
                                           margin=margin)
        self._waveforms.sos = sos  # the band-pass filter, None if unfiltered

    # Changing channel group -------------------------------------------------

    @property
    def channel_group(self) -> int:
        return self._channel_group

    @channel_group.setter
    def channel_group(self, value: int) -> None:
        with open_h5(self.kwik_path, "r") as f:
            self._select_group(f, value)
            self._load_group(f, None)

    @property
    def channel_groups(self) -> list[int]:
        """Channel groups (shanks) found in the file."""
        return list(self._channel_groups)

    # Data -------------------------------------------------------------------

    def has_kwx(self) -> bool:
        """Whether features and masks were found in the ``.kwx``."""
        return self._features_masks is not None

    @property
    def metadata(self) -> dict:
        """SpikeDetekt parameters (``/application_data/spikedetekt``, defaults filled)."""
        return self._metadata

    @property
    def kk2_metadata(self) -> dict:
        """KlustaKwik2 parameters (``/application_data/klustakwik2``)."""
        return self._kk2_metadata

    @property
    def sample_rate(self) -> float:
        return self._sample_rate

    @property
    def channels(self) -> np.ndarray:
        """All channels of the current group (``/channel_groups/<g>/channels``)."""
        return self._channels

    @property
    def channel_order(self) -> np.ndarray:
        """Channels used by features, masks, waveforms and traces, in that order."""
        return self._channel_order

    @property
    def n_channels(self) -> int:
        return len(self._channel_order)

    @property
    def channel_positions(self) -> np.ndarray:
        return self._probe_groups[self._channel_group]["positions"]

    @property
    def probe(self) -> Any:
        """An `MEA` of all channel groups (a Bunch if phy_probes has no MEA)."""
        groups = {
            g: {"channels": [int(c) for c in p["channel_order"]],
                "graph": [(int(a), int(b)) for a, b in p["graph"]],
                "geometry": {int(c): (float(x), float(y))
                             for c, (x, y) in zip(p["channel_order"], p["positions"],
                                                  strict=True)}}
            for g, p in self._probe_groups.items()
        }
        try:
            from phy_probes.mea import MEA

            mea = MEA(channel_groups=groups, name=self.name)
            mea.change_channel_group(self._channel_group)
            return mea
        except (ImportError, PhyError, ValueError) as exc:
            logger.debug("Probe as a Bunch (%s).", exc)
            return Bunch(channel_groups=groups, channel_group=self._channel_group,
                         channels=self._channel_order, positions=self.channel_positions)

    @property
    def recordings(self) -> list[int]:
        return list(self._recordings)

    @property
    def n_recordings(self) -> int:
        return len(self._recordings)

    @property
    def n_spikes(self) -> int:
        return len(self._spike_samples)

    @property
    def spike_ids(self) -> np.ndarray:
        return np.arange(self.n_spikes)

    @property
    def spike_samples(self) -> np.ndarray:
        """Spike times in samples (int64), recordings' start samples added."""
        return self._spike_samples

    @property
    def spike_samples_fractional(self) -> np.ndarray:
        """`spike_samples` plus klusta's ``time_fractional / 255`` (float64)."""
        return self._spike_samples + self._spike_fractional

    @property
    def spike_times(self) -> np.ndarray:
        return self._spike_samples.astype(np.float64) / self._sample_rate

    @property
    def spike_recordings(self) -> np.ndarray:
        return self._spike_recordings

    @property
    def n_features_per_channel(self) -> int:
        return self._n_features_per_channel

    @property
    def features_masks(self):
        """``(n_spikes, n_channels * n_features, 2)`` (memmap or h5py), or None."""
        return self._features_masks

    @property
    def features(self):
        return self._features

    @property
    def masks(self):
        return self._masks

    @property
    def traces(self):
        return self._traces

    @property
    def waveforms(self):
        """Waveforms extracted lazily and band-pass filtered; zeros without traces.

        Their ``sos`` attribute is the filter (None: unfiltered)."""
        return self._waveforms

    @property
    def n_samples_waveforms(self) -> int:
        return self._waveforms.shape[1]

    @property
    def duration(self) -> float:
        """Duration in seconds: of the traces, else up to the last spike."""
        if self._traces is not None:
            return self._traces.shape[0] / self._sample_rate
        return float(self._spike_samples[-1]) / self._sample_rate if self.n_spikes else 0.0

    # Description and closing -------------------------------------------------

    def describe(self) -> str:
        """A short description of the dataset."""
        s = summary(self)
        rows = [
            ("Kwik file", str(self.kwik_path)),
            ("Recordings", self.n_recordings),
            ("Channel groups", ", ".join(f"{g}" + ("*" if g == self._channel_group else "")
                                         for g in self._channel_groups)),
            ("Clusterings", ", ".join(c + ("*" if c == self._clustering else "")
                                      for c in self.clusterings) or "(none)"),
            ("Channels", self.n_channels),
            ("Spikes", self.n_spikes),
            ("Clusters", self.n_clusters),
            ("Features per channel", self.n_features_per_channel),
            ("Features", "yes" if self.has_kwx() else "missing (.kwx)"),
            ("Traces", "yes" if self._traces is not None else "missing"),
            ("Sample rate", f"{s.sample_rate:g} Hz"),
            ("Duration", f"{s.duration_s:.1f} s"),
        ]
        return "\n".join(f"{name:<24}{value}" for name, value in rows)

    def close(self) -> None:
        """Close the ``.kwx`` and raw data files."""
        self._features_masks = None
        for f in getattr(self, "_opened", []):
            if isinstance(f, File):
                f.close()
        self._opened = []
        self._fm_file = None

    def __enter__(self) -> KwikModel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# Light reads, for callers that need only these numbers: opening a `KwikModel` reads every
# channel's attributes (0.1 s of CPU at 384 channels, seconds on a loaded machine). When the
# file is not what they expect, the model opens it, to say what is wrong with it.


def kwik_channel_groups(kwik_path: str | os.PathLike) -> list[int]:
    """The channel groups of a Kwik file, from its HDF5 groups."""
    try:
        with open_h5(kwik_path, "r") as f:
            groups = _int_children(f, "/channel_groups")
    except Exception:  # noqa: BLE001 - the model below reports the problem
        groups = []
    if groups:
        return groups
    with KwikModel(kwik_path) as model:
        return list(model.channel_groups)


def clustering_counts(kwik_path: str | os.PathLike, group: int,
                      clustering: str = "main") -> tuple[int, int]:
    """``(n_spikes, n_clusters)`` of a channel group's clustering, from its dataset."""
    path = f"/channel_groups/{int(group)}/spikes/clusters/{clustering}"
    try:
        with open_h5(kwik_path, "r") as f:
            clusters = f.read(path)[()] if f.exists(path) else None
    except Exception:  # noqa: BLE001 - the model below reports the problem
        clusters = None
    if clusters is not None and clusters.ndim == 1:
        return int(len(clusters)), int(len(np.unique(clusters)))
    with KwikModel(kwik_path, channel_group=group, clustering=clustering) as model:
        return int(model.n_spikes), int(model.n_clusters)


__all__ = ["KwikModel", "ClusterMetadata", "clustering_counts", "kwik_channel_groups"]
