"""Write Kwik datasets (``.kwik`` + ``.kwx``) in the layout klusta reads.

Layout and attribute types follow klusta's writer: ``kwik_version`` int 2,
strings as fixed-length byte strings (see `phy_kwik.h5`), ``channel_order``
and ``adjacency_graph`` int32, channel ``position`` float32[2], spikes
``time_samples`` uint64 / ``time_fractional`` uint8 / ``recording`` int32,
``spike_clusters`` int32, ``cluster_group`` an integer attribute,
``features_masks`` float32 ``(n_spikes, n_channels * n_features, 2)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import KwikError
from .h5 import open_h5
from .kwx_rows import KwxRowWriter

logger = logging.getLogger("phy")

DEFAULT_CLUSTER_GROUPS = ((0, "Noise"), (1, "MUA"), (2, "Good"), (3, "Unsorted"))


def _creator_version() -> str:
    try:
        from importlib.metadata import version

        return "phy " + version("phy")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "phy"


def _chunks(data: Any) -> Iterable[np.ndarray]:
    """Yield chunks of an array, or the chunks of an iterable of arrays."""
    if data is None:
        return
    if hasattr(data, "shape") and hasattr(data, "__getitem__"):
        yield data
        return
    for chunk in data:
        if chunk is not None:
            yield chunk


def _concat_1d(data: Any, name: str) -> np.ndarray:
    parts = [np.asarray(chunk).ravel() for chunk in _chunks(data)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _probe_channel_groups(probe: Any) -> dict:
    """Normalised ``channel_groups`` from an MEA, ``{'channel_groups': ...}`` or a dict."""
    from phy_probes.prb import validate_channel_groups

    if hasattr(probe, "to_channel_groups"):
        groups = probe.to_channel_groups()
    elif isinstance(probe, Mapping) and "channel_groups" in probe:
        groups = probe["channel_groups"]
    else:
        groups = probe
    # Accept numpy ints and arrays as a PRB literal would give them.
    cleaned = {}
    for group, spec in dict(groups).items():
        spec = dict(spec)
        spec["channels"] = [int(c) for c in np.asarray(spec.get("channels", [])).ravel()]
        spec["graph"] = [(int(a), int(b)) for a, b in
                         np.asarray(spec.get("graph", []) or [], dtype=np.int64).reshape(-1, 2)]
        spec["geometry"] = {int(c): (float(p[0]), float(p[1]))
                            for c, p in dict(spec.get("geometry", {}) or {}).items()}
        cleaned[int(group)] = spec
    return validate_channel_groups(cleaned, "probe")


class KwikCreator:
    """Create and modify a ``.kwik`` file and its ``.kwx``.

    Parameters
    ----------
    basename : path
        ``basename.kwik`` / ``basename.kwx`` (a ``.kwik`` suffix is accepted).
    kwik_path, kwx_path : path, optional
        Explicit file names.
    """

    def __init__(self, basename: str | os.PathLike | None = None,
                 kwik_path: str | os.PathLike | None = None,
                 kwx_path: str | os.PathLike | None = None) -> None:
        if kwik_path is None:
            if basename is None:
                raise ValueError("Give a basename or a kwik_path.")
            base = str(basename)
            if base.endswith(".kwik"):
                base = base[:-5]
            kwik_path = base + ".kwik"
        self.kwik_path = Path(kwik_path)
        self.basename = str(self.kwik_path.with_suffix(""))
        self.kwx_path = Path(kwx_path) if kwx_path else self.kwik_path.with_suffix(".kwx")

    # Files ------------------------------------------------------------------

    def create_empty(self) -> None:
        """Create empty ``.kwik`` and ``.kwx`` files (error if they exist)."""
        for path in (self.kwik_path, self.kwx_path):
            if path.exists():
                raise KwikError(f"{path}: already exists (use overwrite).")
        for path in (self.kwik_path, self.kwx_path):
            # Build under a temporary name, then rename: never a half-made file.
            tmp = path.with_name(path.name + ".tmp")
            with open_h5(tmp, "w") as f:
                f.write_attr("/", "kwik_version", 2)
                f.write_attr("/", "name", Path(self.basename).name)
                f.write_attr("/", "creator_version", _creator_version())
            os.replace(tmp, path)

    def _check_exists(self) -> None:
        if not self.kwik_path.exists():
            raise KwikError(f"{self.kwik_path}: does not exist; call create_empty() first.")

    def set_metadata(self, path: str, **kwargs: Any) -> None:
        """Set attributes at an HDF5 path (e.g. ``/application_data/spikedetekt``)."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"set_metadata: {path!r} is not an absolute HDF5 path.")
        self._check_exists()
        with open_h5(self.kwik_path, "a") as f:
            for key, value in kwargs.items():
                if isinstance(value, dict):
                    # Nested dicts have no HDF5 attribute type; store their repr.
                    value = repr(value)
                f.write_attr(path, key, value)

    # Probe ------------------------------------------------------------------

    def set_probe(self, probe: Any) -> None:
        """Save a probe: an MEA, a ``channel_groups`` dict, or ``{'channel_groups': ...}``.

        Writes, per group, ``channel_order`` (int32), ``adjacency_graph``
        (int32, K x 2) and ``channels/<ch>`` with ``name`` and ``position``
        (float32[2]; ``(0, ch)`` when the probe gives no geometry, as klusta).
        """
        self._check_exists()
        groups = _probe_channel_groups(probe)
        with open_h5(self.kwik_path, "a") as f:
            for group, spec in groups.items():
                gpath = f"/channel_groups/{group:d}"
                channels = np.array(spec["channels"], dtype=np.int32)
                f.write_attr(gpath, "channel_order", channels)
                graph = np.array(spec["graph"], dtype=np.int32).reshape(-1, 2)
                f.write_attr(gpath, "adjacency_graph", graph)
                for channel in spec["channels"]:
                    position = spec["geometry"].get(channel, (0.0, float(channel)))
                    cpath = f"{gpath}/channels/{channel:d}"
                    f.write_attr(cpath, "name", str(channel))
                    f.write_attr(cpath, "position", np.array(position, dtype=np.float32))

    # Recordings -------------------------------------------------------------

    def add_recording(self, id: int = 0, raw_path: str | os.PathLike | None = None,
                      start_sample: int = 0, sample_rate: float | None = None) -> None:
        """Add a recording.

        Parameters
        ----------
        id : int
            The recording id (0, 1, 2, ...).
        raw_path : path, optional
            ``.raw.kwd`` (stored as ``hdf5_path``
            ``'<file relative to the kwik>/recordings/<id>'``) or ``.dat`` /
            ``.bin`` (stored as ``dat_path``, absolute).
        start_sample : int
            Offset of the recording, in samples.
        sample_rate : float
            In Hz.
        """
        self._check_exists()
        if sample_rate is None or not float(sample_rate) > 0:
            raise KwikError(f"add_recording: sample_rate must be > 0, got {sample_rate!r}.")
        rec = int(id)
        path = f"/recordings/{rec:d}"
        with open_h5(self.kwik_path, "a") as f:
            f.write_attr(path, "name", f"recording_{rec:d}")
            f.write_attr(path, "start_sample", int(start_sample))
            f.write_attr(path, "sample_rate", float(sample_rate))
            f.write_attr(path, "start_time", int(start_sample) / float(sample_rate))
            if raw_path:
                raw = str(raw_path)
                if raw.endswith(".kwd"):
                    try:
                        rel = os.path.relpath(raw, self.kwik_path.parent)
                    except ValueError:  # other drive on Windows
                        rel = raw
                    f.write_attr(path + "/raw", "hdf5_path", f"{rel}/recordings/{rec:d}")
                else:
                    f.write_attr(path + "/raw", "dat_path", str(Path(raw).resolve()))

    # Spikes -----------------------------------------------------------------

    def add_spikes(self, group: int = 0, spike_samples: Any = None,
                   spike_recordings: Any = None, masks: Any = None, features: Any = None,
                   n_channels: int | None = None, n_features: int | None = None,
                   features_masks: Any = None) -> None:
        """Add the spikes of a channel group (once per group).

        Parameters
        ----------
        group : int
            Channel group.
        spike_samples : array or iterable of arrays
            Spike times in samples (may be fractional: the fraction is stored
            in ``time_fractional`` as ``uint8(frac * 255)``).
        spike_recordings : array, optional
            Recording of every spike (default 0).
        masks : array (n_spikes, n_channels) or iterable of chunks
        features : array (n_spikes, n_channels * n_features) or
            (n_spikes, n_channels, n_features), or an iterable of chunks
            (generators are consumed once; chunks of features and masks must
            have the same number of rows pairwise).
        n_channels, n_features : int
            Needed when they cannot be inferred from the first chunks.
        features_masks : array (n_spikes, n_channels * n_features, 2), iterable of chunks,
            or `phy_kwik.kwx_rows.KwxRowWriter`
            Instead of `features` and `masks`: the ``.kwx`` layout itself
            (features in ``[..., 0]``, each channel's mask repeated for its
            features in ``[..., 1]``), copied as is (no interleaving); or the
            rows a `KwxRowWriter` (see `kwx_row_writer`) has already written
            into the ``.kwx``, which become the dataset without being copied.

        Notes
        -----
        Features are written chunk by chunk into a contiguous dataset of the
        final size (known from `spike_samples`), so they never need to fit in
        RAM and the ``.kwx`` stays memory-mappable. A chunk total that
        disagrees with the number of spikes raises `KwikError` and removes the
        partial dataset.
        """
        self._check_exists()
        group = int(group)
        if spike_samples is None:
            return
        samples = np.asarray(_concat_1d(spike_samples, "spike_samples"), dtype=np.float64)
        n_spikes = len(samples)
        if n_spikes and (not np.all(np.isfinite(samples)) or samples.min() < 0):
            raise KwikError("add_spikes: spike_samples must be finite and >= 0.")
        if spike_recordings is None:
            recordings = np.zeros(n_spikes, dtype=np.int32)
        else:
            recordings = _concat_1d(spike_recordings, "spike_recordings").astype(np.int32)
        if len(recordings) != n_spikes:
            raise KwikError(f"add_spikes: {len(recordings)} spike_recordings for "
                            f"{n_spikes} spike_samples.")
        # Samples are relative to their recording: sorted by (recording, sample).
        if n_spikes > 1 and (np.any(np.diff(recordings) < 0) or np.any(
                (np.diff(samples) < 0) & (np.diff(recordings) == 0))):
            raise KwikError("add_spikes: spikes must be sorted by recording, then sample.")
        spath = f"/channel_groups/{group:d}/spikes"
        with open_h5(self.kwik_path, "a") as f:
            if f.exists(spath + "/time_samples"):
                raise KwikError(f"{self.kwik_path}: spikes were already added to group {group}.")
            time_samples = np.floor(samples).astype(np.uint64)
            frac = ((samples - time_samples) * 255).astype(np.uint8)
            f.write(spath + "/time_samples", time_samples)
            f.write(spath + "/time_fractional", frac)
            f.write(spath + "/recording", recordings)
        if features_masks is not None:
            if masks is not None or features is not None:
                raise KwikError("add_spikes: give features_masks, or features and masks.")
            if isinstance(features_masks, KwxRowWriter):
                if features_masks.n_rows != n_spikes:
                    features_masks.close()
                    raise KwikError(f"add_spikes: {features_masks.n_rows} feature rows for "
                                    f"{n_spikes} spikes.")
                features_masks.adopt(f"/channel_groups/{group:d}/features_masks")
                return
            self._write_interleaved(group, n_spikes, features_masks, n_channels, n_features)
            return
        if masks is None and features is None:
            return
        if masks is None or features is None:
            raise KwikError("add_spikes: give both features and masks, or neither.")
        self._write_features_masks(group, n_spikes, features, masks, n_channels, n_features)

    def kwx_row_writer(self, n_columns: int, direct: bool = True) -> KwxRowWriter:
        """A writer of features_masks rows straight into the ``.kwx`` (see `kwx_rows`).

        Pass it to `add_spikes` as `features_masks` once every row is written;
        nothing else may write to the ``.kwx`` in between. `direct`: with direct
        I/O where the file system takes it (the default).
        """
        self._check_exists()
        return KwxRowWriter(self.kwx_path, n_columns, direct=direct)

    def _write_interleaved(self, group, n_spikes, features_masks, n_channels, n_features):
        fm_path = f"/channel_groups/{group:d}/features_masks"
        chunks = _chunks(features_masks)
        first = next(chunks, None)
        if first is None or len(np.shape(first)) != 3 or np.shape(first)[2] != 2:
            raise KwikError("add_spikes: features_masks must be (n_spikes, n_features, 2) "
                            f"chunks, got {None if first is None else np.shape(first)}.")
        n_columns = int(np.shape(first)[1])
        if n_channels is not None and n_features is not None:
            n_columns = int(n_channels) * int(n_features)
        with open_h5(self.kwx_path, "a") as f:
            if f.exists(fm_path):
                raise KwikError(f"{self.kwx_path}: {fm_path} already exists.")
            dset = f.write(fm_path, shape=(n_spikes, n_columns, 2), dtype=np.float32)
            offset = 0
            try:
                for chunk in _prepend(first, chunks):
                    block = np.ascontiguousarray(chunk[...], dtype=np.float32)
                    n = len(block)
                    if block.shape != (n, n_columns, 2) or offset + n > n_spikes:
                        raise KwikError(f"add_spikes: a features_masks chunk of shape "
                                        f"{block.shape} at row {offset} does not fit "
                                        f"({n_spikes}, {n_columns}, 2).")
                    if n:
                        dset.write_direct(block, dest_sel=np.s_[offset:offset + n])
                    offset += n
                if offset != n_spikes:
                    raise KwikError(f"add_spikes: {offset} feature rows for {n_spikes} spikes.")
            except BaseException:
                f.delete(fm_path)
                raise

    def _write_features_masks(self, group, n_spikes, features, masks, n_channels, n_features):
        pairs = zip(_chunks(features), _chunks(masks), strict=False)
        first = next(pairs, None)
        if first is None:
            raise KwikError("add_spikes: features and masks are empty.")
        fet0, m0 = first
        if n_channels is None:
            n_channels = int(np.shape(m0)[1])
        if n_features is None:
            shape = np.shape(fet0)
            n_features = int(shape[2]) if len(shape) == 3 else int(shape[1]) // n_channels
        n_columns = n_channels * n_features

        def interleaved():
            # Each chunk in the .kwx layout: features, then each channel's mask per feature.
            for fet, m in _prepend(first, pairs):
                fet = np.asarray(fet[...], dtype=np.float32).reshape(len(fet), -1)
                m = np.asarray(m[...], dtype=np.float32)
                n = fet.shape[0]
                if fet.shape != (n, n_columns) or m.shape != (n, n_channels):
                    raise KwikError(
                        f"add_spikes: a chunk has features {fet.shape} and masks {m.shape}, "
                        f"expected ({n}, {n_columns}) and ({n}, {n_channels}).")
                block = np.empty((n, n_columns, 2), dtype=np.float32)
                block[..., 0] = fet
                block[..., 1] = np.repeat(m, n_features, axis=1)
                yield block

        self._write_interleaved(group, n_spikes, interleaved(), n_channels, n_features)

    # Clusterings ------------------------------------------------------------

    def add_cluster_group(self, group: int = 0, id: int | None = None, name: str | None = None,
                          clustering: str = "main") -> None:
        """Add a cluster group (``cluster_groups/<clustering>/<id>``, attr ``name``)."""
        self._check_exists()
        with open_h5(self.kwik_path, "a") as f:
            write_cluster_group(f, int(group), clustering, int(id), str(name))

    def add_clustering(self, group: int = 0, name: str = "main", spike_clusters: Any = None,
                       cluster_groups: Mapping[int, int] | None = None) -> None:
        """Add a clustering: spike clusters (int32), one group per cluster, the 4 default groups."""
        self._check_exists()
        spike_clusters = np.asarray(spike_clusters).ravel()
        with open_h5(self.kwik_path, "a") as f:
            n = f.read(f"/channel_groups/{int(group):d}/spikes/time_samples").shape[0] \
                if f.exists(f"/channel_groups/{int(group):d}/spikes/time_samples") else None
            if n is not None and n != len(spike_clusters):
                raise KwikError(f"add_clustering: {len(spike_clusters)} spike_clusters for "
                                f"{n} spikes in group {group}.")
            write_clustering(f, int(group), name, spike_clusters, cluster_groups or {})


def _prepend(first, rest):
    yield first
    yield from rest


def write_cluster_group(f, group: int, clustering: str, group_id: int, name: str) -> None:
    f.write_attr(f"/channel_groups/{group:d}/cluster_groups/{clustering}/{group_id:d}",
                 "name", name)


def write_clustering(f, group: int, name: str, spike_clusters: np.ndarray,
                     cluster_groups: Mapping[int, int],
                     labels: Mapping[str, Mapping[int, Any]] | None = None) -> None:
    """Write a clustering named `name` in an open File (must not exist yet)."""
    gpath = f"/channel_groups/{group:d}"
    path = f"{gpath}/spikes/clusters/{name}"
    if f.exists(path):
        raise KwikError(f"{f.filename}: the clustering {name!r} already exists.")
    spike_clusters = np.asarray(spike_clusters).ravel()
    if spike_clusters.size and (spike_clusters.dtype.kind not in "iu"
                                or spike_clusters.min() < 0
                                or spike_clusters.max() > np.iinfo(np.int32).max):
        raise KwikError(f"{f.filename}: cluster ids must be integers in [0, 2**31), "
                        f"got dtype {spike_clusters.dtype}.")
    f.write(path, spike_clusters.astype(np.int32))
    # The clusters group exists even for an empty clustering.
    f.h5py_file.require_group(f"{gpath}/clusters/{name}")
    labels = labels or {}
    for cluster in np.unique(spike_clusters):
        cluster = int(cluster)
        cpath = f"{gpath}/clusters/{name}/{cluster:d}"
        f.write_attr(cpath, "cluster_group", int(cluster_groups.get(cluster, 3)))
        for label, values in labels.items():
            if cluster in values and values[cluster] is not None:
                f.write_attr(cpath, label, values[cluster])
    for group_id, group_name in DEFAULT_CLUSTER_GROUPS:
        write_cluster_group(f, group, name, group_id, group_name)


def _dat_n_samples(path: Path, n_channels: int, dtype: str, offset: int = 0) -> int:
    from phy_rawdata.dat import read_dat

    return int(read_dat(path, dtype=dtype, n_channels=n_channels, offset=offset).shape[0])


def create_kwik(prm_file: str | os.PathLike | None = None,
                kwik_path: str | os.PathLike | None = None, overwrite: bool = False,
                probe: Any = None, **kwargs: Any) -> Path:
    """Create a new Kwik dataset (no spikes yet) from a PRM file.

    Writes the probe, the recordings (from ``traces.raw_data_files``: one
    recording per ``.dat`` file, or the recordings of a ``.raw.kwd``), and
    the parameters in ``/application_data/spikedetekt`` (SpikeDetekt's, with
    ``prb_file``, ``dtype``, ``n_channels``, ``sample_rate``,
    ``voltage_gain``, ``experiment_name``) and
    ``/application_data/klustakwik2``. `kwargs` override PRM values (e.g.
    ``sample_rate``). The files are built under temporary names and renamed
    at the end, so a failure leaves no half-made dataset.

    Returns
    -------
    kwik_path : Path
    """
    prm = None
    if prm_file is not None:
        from phy_rawdata.prm import read_prm

        prm = read_prm(prm_file)
    params: dict[str, Any] = {}
    kk2: dict[str, Any] = {}
    raw_files: list[Path] = []
    if prm is not None:
        params.update(prm.spikedetekt or {})
        kk2.update(prm.klustakwik2 or {})
        traces = prm.traces
        params.update(sample_rate=float(traces.sample_rate), n_channels=int(traces.n_channels),
                      dtype=str(traces.dtype), voltage_gain=float(traces.voltage_gain),
                      offset=int(getattr(traces, "offset", 0) or 0))
        params["experiment_name"] = prm.experiment_name
        params["prb_file"] = str(prm.prb_file) if prm.prb_file else ""
        raw_files = [Path(p) for p in (traces.raw_data_files or [])]
        params["raw_data_files"] = [str(p) for p in raw_files]
    params.update(kwargs)
    sample_rate = params.get("sample_rate")
    if sample_rate is None or not float(sample_rate) > 0:
        raise KwikError(f"create_kwik: a sample_rate > 0 is needed (PRM {prm_file}).")
    if kwik_path is None:
        if prm is None:
            raise KwikError("create_kwik: give a prm_file or a kwik_path.")
        kwik_path = Path(prm.path).parent / (prm.experiment_name + ".kwik")
    kwik_path = Path(kwik_path).resolve()
    kwx_path = kwik_path.with_suffix(".kwx")
    if (kwik_path.exists() or kwx_path.exists()) and not overwrite:
        raise KwikError(f"{kwik_path}: already exists; use overwrite=True (--overwrite).")
    if probe is None and params.get("prb_file"):
        from phy_probes.builtin import load_probe

        probe = load_probe(params["prb_file"])
    params.setdefault("experiment_name", kwik_path.stem)

    tmp_kwik = kwik_path.with_name(f".{kwik_path.stem}.tmp.kwik")
    tmp_kwx = tmp_kwik.with_suffix(".kwx")
    for tmp in (tmp_kwik, tmp_kwx):
        tmp.unlink(missing_ok=True)
    creator = KwikCreator(kwik_path=tmp_kwik)
    try:
        creator.create_empty()
        with open_h5(tmp_kwik, "a") as f:
            f.write_attr("/", "name", kwik_path.stem)
        if probe is not None:
            creator.set_probe(probe)
        _add_recordings(creator, raw_files, params)
        creator.set_metadata("/application_data/spikedetekt", **params)
        creator.set_metadata("/application_data/klustakwik2", **kk2)
        os.replace(tmp_kwx, kwx_path)
        os.replace(tmp_kwik, kwik_path)
    finally:
        for tmp in (tmp_kwik, tmp_kwx):
            tmp.unlink(missing_ok=True)
    logger.info("Created the Kwik dataset %s.", kwik_path)
    return kwik_path


def _add_recordings(creator: KwikCreator, raw_files: list[Path], params: dict) -> None:
    sample_rate = float(params["sample_rate"])
    start = 0
    if len(raw_files) == 1 and str(raw_files[0]).endswith(".kwd"):
        with open_h5(raw_files[0], "r") as kwd:
            for rec in sorted(kwd.groups("/recordings"), key=int):
                rate = kwd.read_attr(f"/recordings/{rec}", "sample_rate", sample_rate)
                creator.add_recording(int(rec), raw_files[0], start, float(rate))
                start += kwd.read(f"/recordings/{rec}/data").shape[0]
        return
    for i, path in enumerate(raw_files):
        creator.add_recording(i, path, start, sample_rate)
        start += _dat_n_samples(path, int(params["n_channels"]), params.get("dtype", "int16"),
                                int(params.get("offset", 0) or 0))
