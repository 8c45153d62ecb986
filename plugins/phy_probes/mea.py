"""`MEA`: a multi-electrode array, its channel groups (shanks), positions and adjacency."""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .geometry import (
    adjacency_from_positions,
    default_radius,
    edges_to_adjacency,
    linear_positions,
    normalise_edges,
)
from .prb import ProbeError, validate_channel_groups

#: Pitch of the layout assumed for a group without geometry.
LINEAR_PITCH_UM = 20.0


class _Group:
    """What the MEA derives for one channel group, computed once on first use."""

    def __init__(self, spec: dict) -> None:
        self.channels = np.asarray(spec["channels"], dtype=np.int64)
        geometry = spec["geometry"]
        self.has_geometry = bool(geometry)
        if self.has_geometry:
            self.positions = np.array([geometry[int(c)] for c in self.channels],
                                      dtype=np.float64).reshape(-1, 2)
        else:
            # No geometry: a single column in channel-list order, so views can still
            # draw the group and a graph can still be derived (each site to its
            # neighbours in the list).
            self.positions = linear_positions(len(self.channels), LINEAR_PITCH_UM)
        self.graph_given = bool(spec["graph"])
        if self.graph_given:
            self.graph = normalise_edges(spec["graph"])
        else:
            self.graph = adjacency_from_positions(self.channels, self.positions)
        self.adjacency = edges_to_adjacency(self.channels.tolist(), self.graph)


class MEA:
    """A multi-electrode array: channel groups (shanks), each with positions and adjacency.

    Two modes:

    - *probe* mode: ``MEA(channel_groups)`` with a ``channel_groups`` dict as in a
      ``.prb`` file (validated with `validate_channel_groups`); one group is
      current at a time (the first by default), see `change_channel_group`.
    - *single-group* mode: ``MEA(positions=..., adjacency=...)`` for one group of
      channels ``0 .. n-1`` (or `channels`).

    In both modes, a group without geometry gets a linear layout (x = 0,
    y = 20 um x index in the channel list, noted by `describe`), and a group
    without a graph gets one computed from its positions with
    `adjacency_from_positions`. The adjacency is always symmetric and has no
    self-loops.

    Parameters
    ----------
    channel_groups : dict or None
        ``{group: {'channels': [...], 'graph': [...], 'geometry': {...}}}``.
    positions : array-like (n_channels, 2) or None
        Single-group mode: site positions in um.
    adjacency : list of (int, int) edges, or dict {channel: neighbours}, or None
        Single-group mode: the graph (default: computed from `positions`).
    name : str or None
        Shown by `describe`.
    channels : sequence of int or None
        Single-group mode: the channel ids (default ``0 .. n-1``).

    Raises
    ------
    ProbeError
        For an invalid description, naming the problem.
    """

    def __init__(
        self,
        channel_groups: Mapping | None = None,
        positions: Sequence[Sequence[float]] | np.ndarray | None = None,
        adjacency: Sequence[Sequence[int]] | Mapping[int, Any] | None = None,
        name: str | None = None,
        channels: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.name = name
        source = f"probe {name!r}" if name else "probe"
        if channel_groups is not None:
            if positions is not None or adjacency is not None or channels is not None:
                raise ProbeError(f"{source}: give either channel_groups, or positions/"
                                 "adjacency/channels for a single group, not both.")
            groups = channel_groups
        else:
            groups = {0: _single_group(positions, adjacency, channels, source)}
        self._channel_groups = validate_channel_groups(groups, source)
        self._groups: dict[int, _Group] = {}
        self._channel_group = next(iter(self._channel_groups))

    # Channel groups ---------------------------------------------------------------------

    @property
    def channel_groups(self) -> dict[int, dict]:
        """The normalised ``channel_groups`` dict (as given: no computed graph or layout)."""
        return self._channel_groups

    @property
    def channel_group(self) -> int:
        """The current channel group id."""
        return self._channel_group

    def change_channel_group(self, group: int) -> None:
        """Make `group` the current channel group.

        Raises
        ------
        ProbeError
            If the probe has no such group (the message lists the groups).
        """
        is_int = isinstance(group, numbers.Integral) and not isinstance(group, bool)
        if not is_int or int(group) not in self._channel_groups:
            raise ProbeError(f"{self._label()}: no channel group {group!r}; the groups are "
                             f"{sorted(self._channel_groups)}.")
        self._channel_group = int(group)

    def _group(self, group: int | None = None) -> _Group:
        group = self._channel_group if group is None else group
        if group not in self._groups:
            self._groups[group] = _Group(self._channel_groups[group])
        return self._groups[group]

    # Current group ----------------------------------------------------------------------

    @property
    def channels(self) -> np.ndarray:
        """Channel ids of the current group (int64), in the group's order."""
        return self._group().channels.copy()

    @property
    def n_channels(self) -> int:
        """Number of channels in the current group."""
        return len(self._group().channels)

    @property
    def positions(self) -> np.ndarray:
        """Positions (um) of the current group's channels, ``(n_channels, 2)`` float64."""
        return self._group().positions.copy()

    @property
    def adjacency(self) -> dict[int, set[int]]:
        """``{channel: set of neighbour channels}`` in the current group (every channel a key)."""
        return {c: set(n) for c, n in self._group().adjacency.items()}

    @property
    def graph(self) -> list[tuple[int, int]]:
        """Edges ``(c0, c1)``, ``c0 < c1``, of the current group's adjacency graph."""
        return list(self._group().graph)

    # Whole probe ------------------------------------------------------------------------

    @property
    def all_channels(self) -> np.ndarray:
        """Sorted channel ids over all groups (int64)."""
        return np.array(sorted(c for spec in self._channel_groups.values()
                               for c in spec["channels"]), dtype=np.int64)

    def to_channel_groups(self) -> dict[int, dict]:
        """A ``channel_groups`` dict for `write_prb` or a Kwik file, graphs filled in.

        Every group carries the graph phy uses (given or computed), so a written
        file reproduces this probe exactly; geometry is written only where it was
        given, so an assumed linear layout is never passed off as a measured one.
        """
        out = {}
        for group, spec in self._channel_groups.items():
            derived = self._group(group)
            out[group] = {"channels": list(spec["channels"]),
                          "graph": list(derived.graph),
                          "geometry": copy.deepcopy(spec["geometry"])}
        return out

    def describe(self) -> str:
        """A few lines: name, groups, channels, layout extent, graph density, notes."""
        lines = [f"Probe {self.name or '(unnamed)'}: {len(self._channel_groups)} channel "
                 f"group(s), {len(self.all_channels)} channels"]
        for group in self._channel_groups:
            g = self._group(group)
            n = len(g.channels)
            degrees = [len(v) for v in g.adjacency.values()]
            xy = g.positions
            width, height = np.ptp(xy[:, 0]), np.ptp(xy[:, 1])
            current = "  (current)" if group == self._channel_group else ""
            lines.append(f"  group {group}: {n} channels ({_ranges(g.channels)}), "
                         f"{width:g} x {height:g} um{current}")
            lines.append(f"    graph: {len(g.graph)} edges, {np.mean(degrees):.1f} neighbours "
                         f"per channel (min {min(degrees)}, max {max(degrees)}), "
                         + ("from the probe file" if g.graph_given else
                            f"computed within {default_radius(xy):.1f} um"))
            if not g.has_geometry:
                lines.append(f"    note: no geometry given; a linear layout is assumed "
                             f"(x = 0, y = {LINEAR_PITCH_UM:g} um x index in the channel list)")
        return "\n".join(lines)

    def _label(self) -> str:
        return f"probe {self.name!r}" if self.name else "probe"

    def __repr__(self) -> str:
        return (f"<MEA {self.name or ''} {len(self._channel_groups)} groups, "
                f"{len(self.all_channels)} channels, current group {self._channel_group}>")


def _single_group(positions: Any, adjacency: Any, channels: Any, source: str) -> dict:
    """A ``channel_groups`` entry for single-group mode, checked (raises ProbeError)."""
    if positions is None and adjacency is None and channels is None:
        raise ProbeError(f"{source}: give channel_groups, or positions (and adjacency) "
                         "for a single group.")
    xy = None
    if positions is not None:
        try:
            xy = np.asarray(positions, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ProbeError(f"{source}: positions must be numbers, shape (n_channels, 2) "
                             f"({exc}).") from None
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
            raise ProbeError(f"{source}: positions must have shape (n_channels, 2), "
                             f"got {xy.shape}.")
        if not np.all(np.isfinite(xy)):
            raise ProbeError(f"{source}: positions must be finite numbers.")
    if channels is not None:
        try:
            chan = np.asarray(channels)
        except (TypeError, ValueError) as exc:  # pragma: no cover - ragged input
            raise ProbeError(f"{source}: channels must be a list of ids ({exc}).") from None
        if chan.ndim != 1 or not (np.issubdtype(chan.dtype, np.integer) or len(chan) == 0):
            raise ProbeError(f"{source}: channels must be a 1-D list of integer ids.")
        channel_list = [int(c) for c in chan]
    elif xy is not None:
        channel_list = list(range(len(xy)))
    else:
        channel_list = _graph_nodes(adjacency, source)
    if xy is not None and len(xy) != len(channel_list):
        raise ProbeError(f"{source}: {len(xy)} positions for {len(channel_list)} channels.")
    spec: dict = {"channels": channel_list}
    if xy is not None:
        spec["geometry"] = {c: (float(x), float(y)) for c, (x, y) in zip(channel_list, xy)}
    if adjacency is not None:
        spec["graph"] = _edges(adjacency, source)
    return spec


def _edges(adjacency: Any, source: str) -> list:
    """Edges from a list of pairs or a ``{channel: neighbours}`` dict."""
    if isinstance(adjacency, Mapping):
        try:
            return [(c, n) for c, neighbours in adjacency.items() for n in neighbours]
        except TypeError:
            raise ProbeError(f"{source}: an adjacency dict maps each channel to a list of "
                             "neighbour channels.") from None
    if isinstance(adjacency, np.ndarray):
        adjacency = adjacency.tolist()
    if not isinstance(adjacency, (list, tuple)):
        raise ProbeError(f"{source}: adjacency must be a list of (channel, channel) edges or "
                         f"a dict {{channel: neighbours}}, got {type(adjacency).__name__}.")
    return list(adjacency)


def _graph_nodes(adjacency: Any, source: str) -> list[int]:
    """The channels named by an adjacency (dict keys included: isolated channels)."""
    nodes = list(adjacency) if isinstance(adjacency, Mapping) else []
    for edge in _edges(adjacency, source):
        if not isinstance(edge, (list, tuple)):
            raise ProbeError(f"{source}: adjacency edges must be (channel, channel) pairs, "
                             f"got {edge!r}.")
        nodes.extend(edge)
    if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in nodes):
        raise ProbeError(f"{source}: the adjacency names channels that are not integer ids.")
    return sorted({int(c) for c in nodes})


def _ranges(channels: np.ndarray) -> str:
    """``0-7, 9, 12-15``: compact display of a channel list."""
    values = sorted(int(c) for c in channels)
    runs = [[values[0], values[0]]]
    for value in values[1:]:
        if value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    return ", ".join(parts) if len(parts) <= 6 else ", ".join(parts[:6]) + ", ..."

