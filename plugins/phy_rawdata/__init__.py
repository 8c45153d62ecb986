"""Raw traces: flat binary .dat files, .raw.kwd HDF5 files, klusta PRM parameter files.

The reader hook opens a recording described by a ``.prm`` file: the ``.prm``
itself, or a ``.dat``/``.bin``/``.raw.kwd`` with a ``.prm`` of the same stem
beside it. A raw data file without a PRM is not read (its sample rate, dtype
and channel count are unknown).
"""

from pathlib import Path

from phy_core import hookimpl

_RAW_SUFFIXES = (".dat", ".bin", ".raw.kwd")


def _prm_for(path: Path) -> Path | None:
    name = path.name
    if name.endswith(".prm"):
        # A missing file is left to the caller's "no such file" message.
        return path if path.is_file() else None
    for suffix in _RAW_SUFFIXES:
        if name.endswith(suffix):
            prm = path.with_name(name[:-len(suffix)] + ".prm")
            return prm if prm.is_file() else None
    return None


@hookimpl(trylast=True)
def phy_open_model(path, options):
    prm = _prm_for(Path(path))
    if prm is None:
        return None
    from .model import RawRecordingModel

    return RawRecordingModel(prm, channel_group=options.get("channel_group"))
