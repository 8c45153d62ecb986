"""Read probeinterface JSON files (SpikeInterface's probe format) as ``channel_groups``.

The format (probeinterface's ``doc/format_spec.rst``) is a ProbeGroup::

    {"specification": "probeinterface", "version": "0.2.21",
     "probes": [{"ndim": 2, "si_units": "um",
                 "contact_positions": [[x, y], ...],
                 "device_channel_indices": [c, ...],   # -1: contact not recorded
                 "shank_ids": ["0", "0", "1", ...],    # optional ("" = no shank)
                 "contact_shapes": [...], ...}]}

Each probe gives one channel group, or one per shank id when the probe has
shanks; groups are numbered 0, 1, ... in file order (shanks in numerical
order). A group's channels are the ``device_channel_indices`` of its contacts,
with their positions as geometry; unconnected contacts (``-1``) are skipped.
The graph is left empty: `MEA` computes it from the geometry. Only the
fields phy needs are read; shapes, contours and annotations are ignored.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any

from phy_core.textfile import read_text

from .prb import ProbeError, validate_channel_groups

_SCALE_TO_UM = {"um": 1.0, "mm": 1000.0}


def read_probeinterface(path: str | os.PathLike) -> dict[int, dict]:
    """Read a probeinterface ``.json`` file; returns normalised ``channel_groups``.

    Raises
    ------
    ProbeError
        If the file is missing, is not JSON, or does not describe wired 2-D
        probes; the message names the file, the probe and the field.
    """
    return parse_probeinterface(read_text(path, ProbeError), str(path))


def parse_probeinterface(text: str, source: str = "<probeinterface>") -> dict[int, dict]:
    """Parse the text of a probeinterface JSON file (see `read_probeinterface`)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{source}, line {exc.lineno}, column {exc.colno}: not valid JSON "
                         f"({exc.msg}).") from None
    except RecursionError:
        raise ProbeError(f"{source}: not valid JSON (nested too deeply).") from None
    return probeinterface_to_channel_groups(data, source)


def probeinterface_to_channel_groups(data: Any, source: str = "<probeinterface>"
                                     ) -> dict[int, dict]:
    """Convert a decoded probeinterface document to normalised ``channel_groups``."""
    if not isinstance(data, dict):
        raise ProbeError(f"{source}: expected a JSON object with a 'probes' list, "
                         f"got a {type(data).__name__}.")
    specification = data.get("specification", "probeinterface")
    if specification != "probeinterface":
        raise ProbeError(f"{source}: 'specification' is {specification!r}, expected "
                         "'probeinterface'.")
    probes = data.get("probes")
    if not isinstance(probes, list) or not probes:
        raise ProbeError(f"{source}: expected a non-empty 'probes' list, got "
                         f"{_kind(probes)}.")
    groups: dict[int, dict] = {}
    for index, probe in enumerate(probes):
        for channels, positions in _probe_groups(probe, f"{source}: probe {index}"):
            groups[len(groups)] = {
                "channels": channels,
                "geometry": dict(zip(channels, positions)),
            }
    if not groups:
        raise ProbeError(f"{source}: no contact is connected to a recording channel "
                         "(every device_channel_index is -1).")
    # Also catches a channel wired to two contacts, naming both groups.
    return validate_channel_groups(groups, source)


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _probe_groups(probe: Any, where: str) -> list[tuple[list[int], list[tuple[float, float]]]]:
    """``[(channels, positions)]`` for one probe: one entry per shank (or one)."""
    if not isinstance(probe, dict):
        raise ProbeError(f"{where}: expected an object, got {_kind(probe)}.")
    ndim = probe.get("ndim", 2)
    if ndim != 2 or isinstance(ndim, bool):
        raise ProbeError(f"{where}: 'ndim' is {ndim!r}; phy reads 2-D probes only.")
    units = probe.get("si_units", "um")
    if not isinstance(units, str) or units not in _SCALE_TO_UM:
        raise ProbeError(f"{where}: 'si_units' is {units!r}, expected 'um' or 'mm'.")
    scale = _SCALE_TO_UM[units]

    positions = probe.get("contact_positions")
    if not isinstance(positions, list) or not positions:
        raise ProbeError(f"{where}: 'contact_positions' must be a non-empty list of [x, y], "
                         f"got {_kind(positions)}.")
    n = len(positions)
    xy = []
    for i, position in enumerate(positions):
        if not (isinstance(position, list) and len(position) == 2
                and all(_is_finite(v, scale) for v in position)):
            raise ProbeError(f"{where}: contact {i}: position must be [x, y] finite "
                             f"numbers, got {position!r}.")
        xy.append((float(position[0]) * scale, float(position[1]) * scale))

    wiring = probe.get("device_channel_indices")
    if wiring is None:
        raise ProbeError(f"{where}: no 'device_channel_indices': the probe is not wired to "
                         "recording channels (set them with probeinterface's "
                         "set_device_channel_indices and save again).")
    if not isinstance(wiring, list) or len(wiring) != n:
        raise ProbeError(f"{where}: 'device_channel_indices' must be a list of {n} "
                         f"channel indices (one per contact), got {_describe_list(wiring)}.")
    for i, channel in enumerate(wiring):
        if not _is_int(channel) or channel < -1:
            raise ProbeError(f"{where}: contact {i}: device channel index must be an "
                             f"integer >= 0, or -1 for an unconnected contact; got {channel!r}.")

    shanks = probe.get("shank_ids")
    if shanks is None or (isinstance(shanks, list) and all(s in ("", None) for s in shanks)):
        shanks = [""] * n
    if not isinstance(shanks, list) or len(shanks) != n:
        raise ProbeError(f"{where}: 'shank_ids' must be a list of {n} shank ids (one per "
                         f"contact), got {_describe_list(shanks)}.")
    if not all(isinstance(s, str) or _is_int(s) for s in shanks):
        bad = next(s for s in shanks if not (isinstance(s, str) or _is_int(s)))
        raise ProbeError(f"{where}: shank ids must be strings, got {bad!r}.")

    members: dict[str, list[int]] = {}
    for i in range(n):
        if wiring[i] != -1:
            members.setdefault(str(shanks[i]), []).append(i)
    return [([int(wiring[i]) for i in members[shank]], [xy[i] for i in members[shank]])
            for shank in sorted(members, key=_shank_order)]


def _is_finite(value: Any, scale: float) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value) * scale)
    except OverflowError:  # an int too large for a float
        return False


def _describe_list(value: Any) -> str:
    return f"{len(value)} items" if isinstance(value, list) else _kind(value)


def _shank_order(shank: str) -> tuple:
    # "2" before "10": shank ids are strings in probeinterface, usually numbers.
    return (0, int(shank), "") if shank.isdecimal() else (1, 0, shank)
