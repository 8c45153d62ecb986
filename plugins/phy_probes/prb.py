"""``.prb`` probe files: read as literals (never executed), validated, written atomically.

A ``.prb`` file assigns ``channel_groups``::

    channel_groups = {
        0: {                                   # group (shank) number
            'channels': [0, 1, 2, 3],          # channel ids in the recording
            'graph': [(0, 1), (1, 2), (2, 3)], # adjacency (optional)
            'geometry': {0: (0, 0), 1: (0, 20), 2: (0, 40), 3: (0, 60)},  # um (optional)
        },
    }

Other assignments in the file are ignored (older files carry e.g.
``total_nb_channels``), but everything must be a literal.
"""

from __future__ import annotations

import math
import numbers
import os
import pprint
from pathlib import Path
from typing import Any

from phy_core.atomic import atomic_write
from phy_core.errors import PhyError
from phy_core.literals import read_literal_file


class ProbeError(PhyError, ValueError):
    """A probe description is invalid."""


def _is_int(value: Any) -> bool:
    # numbers.Integral also accepts numpy integers, so callers may pass arrays' items.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite real number (an int too big for a float is refused, not an OverflowError)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


# Channel ids index int64 arrays downstream: refuse what would overflow them.
_MAX_CHANNEL = 2**63 - 1


def validate_channel_groups(channel_groups: Any, source: str = "probe") -> dict[int, dict]:
    """Check a ``channel_groups`` mapping and return it normalised.

    Normalised: ``channels`` a list of int; ``graph`` a list of ``(int, int)``
    tuples (empty if absent); ``geometry`` ``{channel: (float, float)}``
    (empty if absent).

    Raises
    ------
    ProbeError
        Naming `source`, the group and the problem.
    """
    if not isinstance(channel_groups, dict) or not channel_groups:
        raise ProbeError(f"{source}: channel_groups must be a non-empty dict "
                         "{group: {'channels': [...], ...}}, "
                         f"got {type(channel_groups).__name__}.")
    out: dict[int, dict] = {}
    seen: dict[int, int] = {}
    for group, spec in channel_groups.items():
        where = f"{source}: channel group {group!r}"
        if not _is_int(group) or group < 0:
            raise ProbeError(f"{where}: group ids must be non-negative integers.")
        if not isinstance(spec, dict):
            raise ProbeError(f"{where}: must be a dict with a 'channels' list.")
        unknown = set(spec) - {"channels", "graph", "geometry", "label", "labels"}
        if unknown:
            raise ProbeError(f"{where}: unknown keys {sorted(map(str, unknown))} "
                             "(expected 'channels', 'graph', 'geometry').")
        channels = spec.get("channels")
        if not isinstance(channels, (list, tuple)) or not channels:
            raise ProbeError(f"{where}: 'channels' must be a non-empty list of channel ids.")
        if not all(_is_int(c) and 0 <= c <= _MAX_CHANNEL for c in channels):
            bad = next(c for c in channels if not (_is_int(c) and 0 <= c <= _MAX_CHANNEL))
            raise ProbeError(f"{where}: channel ids must be non-negative integers, got {bad!r}.")
        for c in channels:
            if c in seen:
                raise ProbeError(f"{where}: channel {c} is listed twice "
                                 f"(already in group {seen[c]}).")
            seen[c] = group
        members = set(channels)
        graph = []
        raw_graph = spec.get("graph")
        raw_graph = [] if raw_graph is None else raw_graph
        if not isinstance(raw_graph, (list, tuple)):
            raise ProbeError(f"{where}: 'graph' must be a list of (channel, channel) pairs, "
                             f"got {type(raw_graph).__name__}.")
        for edge in raw_graph:
            if not isinstance(edge, (list, tuple)) or len(edge) != 2 or \
                    not all(_is_int(c) for c in edge):
                raise ProbeError(f"{where}: graph edges must be pairs of channel ids, "
                                 f"got {edge!r}.")
            outside = [c for c in edge if c not in members]
            if outside:
                raise ProbeError(f"{where}: the graph names channel {outside[0]}, "
                                 "which is not in this group's channels.")
            graph.append((int(edge[0]), int(edge[1])))
        geometry = {}
        raw_geometry = spec.get("geometry")
        raw_geometry = {} if raw_geometry is None else raw_geometry
        if not isinstance(raw_geometry, dict):
            raise ProbeError(f"{where}: 'geometry' must be a dict {{channel: (x, y)}}.")
        for c, position in raw_geometry.items():
            if c not in members:
                raise ProbeError(f"{where}: the geometry names channel {c!r}, "
                                 "which is not in this group's channels.")
            if not isinstance(position, (list, tuple)) or len(position) != 2 or \
                    not all(_is_number(v) for v in position):
                raise ProbeError(f"{where}: the position of channel {c} must be (x, y) "
                                 f"finite numbers, got {position!r}.")
            geometry[int(c)] = (float(position[0]), float(position[1]))
        if geometry and set(geometry) != members:
            missing = sorted(members - set(geometry))
            raise ProbeError(f"{where}: the geometry gives no position for channels {missing}.")
        out[int(group)] = {"channels": [int(c) for c in channels], "graph": graph,
                           "geometry": geometry}
    return out


def read_prb(path: str | os.PathLike) -> dict[int, dict]:
    """Read and validate a ``.prb`` file; returns normalised ``channel_groups``.

    Raises
    ------
    phy_core.literals.LiteralFileError
        If the file is missing or contains anything but literal assignments.
    ProbeError
        If ``channel_groups`` is missing or invalid.
    """
    values = read_literal_file(path)
    if "channel_groups" not in values:
        raise ProbeError(f"{path}: defines no channel_groups (found: "
                         f"{', '.join(values) or 'nothing'}).")
    return validate_channel_groups(values["channel_groups"], str(path))


def write_prb(path: str | os.PathLike, channel_groups: dict) -> Path:
    """Write a ``.prb`` file atomically (validated first); returns its path."""
    groups = validate_channel_groups(channel_groups, str(path))
    text = "# Probe file written by phy: read as literals, never executed.\n\n"
    text += "channel_groups = " + pprint.pformat(groups, sort_dicts=True, width=100) + "\n"
    atomic_write(path, text)
    return Path(path)
