"""Probe geometry: site layouts and adjacency graphs computed from positions.

Positions are in micrometres, ``(n_sites, 2)`` arrays of ``(x, y)``, ``y``
increasing away from the tip. The adjacency graph says which sites see the same
spikes: spike detection's flood fill joins threshold crossings along its edges,
and masks spread along it. A graph that is too sparse splits spikes in two; one
that is too dense merges unrelated spikes and costs time on 1000+ channels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# The default radius, in units of the typical (median) nearest-neighbour distance.
# Why 1.75: on regular layouts the distances between sites come in shells, and the
# factor must fall between two shells, never on one (a radius equal to a shell makes
# the graph depend on rounding). Measured in units of the nearest-neighbour distance:
#   - square grid (dense arrays): 1, 1.41 (diagonal), 2 -> 1.75 keeps the 8 sites
#     around a site, the classic 8-neighbourhood.
#   - Neuropixels 1.0 checkerboard (NN 25.6 um): 1 (adjacent-row diagonals), 1.25
#     (the other site of the same row, 32 um), 1.56 (same column two rows away,
#     40 um), 2.0 (51.2 um) -> 1.75 (44.8 um) gives every site the 7 sites around it
#     in its own and the adjacent rows and columns, and stops before the 51 um shell.
#   - a single column (20 um pitch): 1, 2 -> the sites just above and below.
#   - Buzsaki staggered shanks (NN ~29 um, zig-zag sites 20 um apart in depth):
#     the next and next-but-one sites in depth order, klusta's hand-made graph.
# 1.5, the more usual choice, falls between the same shells except on Neuropixels,
# where it drops the same-column sites 40 um away, which see most of the same spike.
DEFAULT_RADIUS_FACTOR = 1.75


def _as_positions(positions: object, n: int | None = None) -> np.ndarray:
    array = np.asarray(positions, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"positions must have shape (n_sites, 2), got {array.shape}.")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{array.shape[0]} positions for {n} channels.")
    if not np.all(np.isfinite(array)):
        raise ValueError("positions must be finite numbers.")
    return array


def nearest_neighbour_distances(positions: np.ndarray) -> np.ndarray:
    """Distance from each site to its nearest other site (not at the same place).

    Sites sharing a position (a badly written probe file) are counted once, so
    they do not make the typical distance zero. Returns an empty array for
    fewer than two distinct positions.
    """
    from scipy.spatial import cKDTree

    unique = np.unique(_as_positions(positions), axis=0)
    if len(unique) < 2:
        return np.empty(0)
    distances, _ = cKDTree(unique).query(unique, k=2)
    return distances[:, 1]


def default_radius(positions: np.ndarray) -> float:
    """The default adjacency radius (um) for a layout: 1.75 x the median NN distance.

    The median, not the minimum, so that a few closely packed sites (a tetrode
    at the tip of a shank) do not shrink the radius for the whole probe; a
    multiple of it so that the graph scales with the probe's pitch: the same
    rule serves a 20 um dense array and a 50 um pitch shank. See
    `DEFAULT_RADIUS_FACTOR` for why 1.75. Returns 0 for fewer than two distinct
    positions (no edges).
    """
    nn = nearest_neighbour_distances(positions)
    return float(DEFAULT_RADIUS_FACTOR * np.median(nn)) if len(nn) else 0.0


def adjacency_from_positions(
    channels: Sequence[int] | np.ndarray,
    positions: Sequence[Sequence[float]] | np.ndarray,
    radius_um: float | None = None,
) -> list[tuple[int, int]]:
    """The adjacency graph of sites closer than a radius.

    Parameters
    ----------
    channels : sequence of int
        Channel id of each site.
    positions : array-like, shape (n_channels, 2)
        Site positions in um, in `channels` order.
    radius_um : float or None
        Sites at most this far apart are adjacent. Default: `default_radius`,
        1.75 x the median nearest-neighbour distance (a Neuropixels 1.0 site gets
        the 7 sites around it; a dense grid site its 8 neighbours).

    Returns
    -------
    edges : list of (int, int)
        Sorted ``(c0, c1)`` channel pairs with ``c0 < c1``: no self-loops, each
        edge once (the graph is undirected). Every edge is at most `radius_um`
        long.

    Notes
    -----
    A KD-tree finds the pairs in O(n log n) time and O(edges) memory: 4096
    channels take milliseconds.
    """
    from scipy.spatial import cKDTree

    channels = np.asarray(channels, dtype=np.int64).ravel()
    xy = _as_positions(positions, len(channels))
    if radius_um is None:
        radius_um = default_radius(xy)
    if not np.isfinite(radius_um) or radius_um < 0:
        raise ValueError(f"radius_um must be a non-negative number, got {radius_um!r}.")
    if len(channels) < 2 or radius_um == 0:
        return []
    pairs = cKDTree(xy).query_pairs(float(radius_um), output_type="ndarray")
    if len(pairs) == 0:
        return []
    c0, c1 = channels[pairs[:, 0]], channels[pairs[:, 1]]
    edges = np.unique(np.stack([np.minimum(c0, c1), np.maximum(c0, c1)], axis=1), axis=0)
    edges = edges[edges[:, 0] != edges[:, 1]]
    return [(int(a), int(b)) for a, b in edges]


def normalise_edges(edges: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """Sorted unique ``(c0, c1)`` pairs with ``c0 < c1``; self-loops dropped."""
    out = {(min(int(a), int(b)), max(int(a), int(b))) for a, b in edges if int(a) != int(b)}
    return sorted(out)


def edges_to_adjacency(channels: Iterable[int],
                       edges: Iterable[Sequence[int]]) -> dict[int, set[int]]:
    """``{channel: set of neighbours}`` for every channel (isolated ones map to an empty set)."""
    adjacency: dict[int, set[int]] = {int(c): set() for c in channels}
    for a, b in normalise_edges(edges):
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    return adjacency


def adjacency_to_edges(adjacency: Mapping[int, Iterable[int]]) -> list[tuple[int, int]]:
    """Edges of an ``{channel: neighbours}`` mapping, symmetrised (one direction suffices)."""
    return normalise_edges((c, n) for c, neighbours in adjacency.items() for n in neighbours)


# Layouts ---------------------------------------------------------------------------------

def linear_positions(n_channels: int, pitch_um: float = 20.0) -> np.ndarray:
    """One column: ``x = 0``, ``y = pitch_um * index`` (site 0 at the tip)."""
    y = pitch_um * np.arange(n_channels, dtype=np.float64)
    return np.stack([np.zeros(n_channels), y], axis=1)


def grid_positions(n_rows: int, n_cols: int, pitch_um: float = 20.0) -> np.ndarray:
    """A regular grid, row by row from the tip: site ``i`` at column ``i % n_cols``, row
    ``i // n_cols``."""
    index = np.arange(n_rows * n_cols)
    return np.stack([pitch_um * (index % n_cols), pitch_um * (index // n_cols)],
                    axis=1).astype(np.float64)


def neuropixels1_positions(n_channels: int = 384) -> np.ndarray:
    """Neuropixels 1.0 (phase 3A/3B) bank 0: the staggered four-column checkerboard.

    Channel ``i`` sits in row ``i // 2`` at ``y = 20 * (i // 2 + 1)`` um; the x
    positions repeat ``43, 11, 59, 27`` um every four channels, so even rows use
    the columns at 11 and 43 um, odd rows those at 27 and 59 um (16 um stagger,
    32 um between the two sites of a row). This is the geometry of Kilosort's
    ``neuropixPhase3A_kilosortChanMap`` (``xcoords = tile([43, 11, 59, 27])``,
    ``ycoords = 20 * repeat(1 + arange(192), 2)``), also used by SpikeGLX's
    ``channel_map`` helpers and, up to an x offset, by probeinterface's NP1.
    """
    index = np.arange(n_channels)
    x = np.array([43.0, 11.0, 59.0, 27.0])[index % 4]
    y = 20.0 * (index // 2 + 1)
    return np.stack([x, y], axis=1)


def buzsaki_shank_positions() -> np.ndarray:
    """The 8 staggered sites of one Buzsaki shank (NeuroNexus Buzsaki32/64), tip first.

    Sites are 20 um apart in depth, alternately left and right of the shank's
    midline, the shank widening away from the tip: x offsets (um)
    ``0, -8.5, 8.5, -10.5, 12.5, -14.5, 16.5, -18.5`` at depths 0, 20, ..., 140 um
    (the tip site on the midline). Source: NeuroNexus' Buzsaki design as
    transcribed in public probe-layout code (e.g. the ``Neuronexus_Buzsaki64``
    site coordinates of the MATLAB ``probes`` package, the same shank as Buzsaki32).
    """
    x = np.array([0.0, -8.5, 8.5, -10.5, 12.5, -14.5, 16.5, -18.5])
    y = 20.0 * np.arange(8)
    return np.stack([x, y], axis=1)
