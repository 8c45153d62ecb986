"""Find and open the raw traces of a Kwik dataset.

For every recording ``r`` (in ``/recordings``), in this order:

1. ``/recordings/r/raw`` attribute ``hdf5_path``: a ``.raw.kwd`` file,
   optionally followed by the HDF5 path inside it (``x.raw.kwd/recordings/r``;
   default ``/recordings/r``). ``{file}`` and ``{raw.kwd}`` placeholders are
   replaced by the kwik basename (resp. ``basename.raw.kwd``). A relative
   path is relative to the kwik's folder; if it does not exist, a file of
   the same name in the kwik's folder is tried.
2. attribute ``dat_path``: a flat binary file, same rules, read with
   ``dtype``, ``n_channels`` and ``offset`` from
   ``/application_data/spikedetekt``.
3. ``<basename>.raw.kwd`` beside the kwik, dataset ``/recordings/r/data``.

If any recording cannot be found or read, there are no traces: a warning is
logged and `None` returned (the rest of the dataset stays usable).
"""

from __future__ import annotations

import logging
from pathlib import Path

from phy_core.errors import PhyError

from .h5 import File, H5Error, open_h5

logger = logging.getLogger("phy")


def _candidates(raw: str, folder: Path) -> list[Path]:
    path = Path(raw)
    if not path.is_absolute():
        path = folder / path
    return [path, folder / path.name]


def _open_kwd(path: Path, h5_path: str, opened: dict):
    if not path.exists():
        return None
    key = str(path.resolve())
    if key not in opened:
        opened[key] = open_h5(path, "r")
    f: File = opened[key]
    dset = f.h5py_file.get(h5_path)
    if dset is None or getattr(dset, "ndim", 0) != 2:
        return None
    return dset


def _kwd_source(value: str, recording: int, basename: Path, folder: Path, opened: dict):
    value = value.replace("{raw.kwd}", f"{basename}.raw.kwd").replace("{file}", str(basename))
    if ".kwd" in value:
        file_part, _, inner = value.partition(".kwd")
        file_part += ".kwd"
    else:
        file_part, inner = value, ""
    inner = inner.strip("/")
    if not inner:
        h5_path = f"/recordings/{recording}/data"
    elif inner == "data" or inner.endswith("/data"):
        h5_path = "/" + inner
    else:
        h5_path = "/" + inner + "/data"
    for path in _candidates(file_part, folder):
        dset = _open_kwd(path, h5_path, opened)
        if dset is not None:
            return dset
    return None


def _dat_source(value: str, metadata: dict, folder: Path):
    from phy_rawdata.dat import read_dat

    dtype, n_channels = metadata.get("dtype"), metadata.get("n_channels")
    if not dtype or not n_channels:
        logger.warning("%s: dtype and n_channels are needed to read %s.", folder, value)
        return None
    for path in _candidates(value, folder):
        if path.exists():
            return read_dat(path, dtype=str(dtype), n_channels=int(n_channels),
                            offset=int(metadata.get("offset", 0) or 0))
    return None


def find_traces(kwik: File, kwik_path: Path, metadata: dict) -> tuple[list | None, list]:
    """Return ``(arrays, opened_files)``: one ``(n_samples, n_all_channels)`` array per recording.

    `arrays` is None when the traces are not available (warning logged).
    """
    folder = kwik_path.parent
    basename = kwik_path.with_suffix("")
    recordings = sorted(int(r) for r in kwik.groups("/recordings") if r.isdigit())
    opened: dict[str, File] = {}
    arrays = []
    try:
        for rec in recordings:
            raw = f"/recordings/{rec}/raw"
            source = None
            if kwik.has_attr(raw, "hdf5_path"):
                source = _kwd_source(str(kwik.read_attr(raw, "hdf5_path")), rec, basename,
                                     folder, opened)
            elif kwik.has_attr(raw, "dat_path"):
                source = _dat_source(str(kwik.read_attr(raw, "dat_path")), metadata, folder)
            if source is None:
                source = _open_kwd(Path(f"{basename}.raw.kwd"), f"/recordings/{rec}/data",
                                   opened)
            if source is None:
                logger.warning("%s: no raw data found for recording %d (raw.kwd, .dat); "
                               "traces and waveforms are unavailable.", kwik_path, rec)
                return None, list(opened.values())
            arrays.append(source)
    except (PhyError, H5Error, OSError, ValueError) as exc:
        logger.warning("%s: the raw data cannot be read (%s); traces and waveforms are "
                       "unavailable.", kwik_path, exc)
        return None, list(opened.values())
    if not arrays:
        logger.warning("%s: no recordings; traces and waveforms are unavailable.", kwik_path)
        return None, list(opened.values())
    if len({a.shape[1] for a in arrays}) != 1:
        logger.warning("%s: recordings have different channel counts; traces unavailable.",
                       kwik_path)
        return None, list(opened.values())
    return arrays, list(opened.values())
