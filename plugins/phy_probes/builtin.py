"""Built-in probes, and `load_probe` for a built-in name or a probe file.

Each built-in is a function returning a ``channel_groups`` dict with geometry
(um) and no graph: the graph is computed from the geometry by
`phy_probes.geometry.adjacency_from_positions` (see there for the radius), so
built-ins and user probes get their adjacency the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .geometry import (
    buzsaki_shank_positions,
    grid_positions,
    linear_positions,
    neuropixels1_positions,
)
from .mea import MEA
from .prb import ProbeError, read_prb


def _group(channels, positions: np.ndarray) -> dict:
    return {"channels": [int(c) for c in channels],
            "geometry": {int(c): (float(x), float(y)) for c, (x, y) in zip(channels, positions)}}


def linear32() -> dict[int, dict]:
    """32 sites in one column, 20 um pitch, channel 0 at the tip.

    Geometry source: NeuroNexus A1x32 single-shank probes with 20 um site
    spacing (e.g. A1x32-Edge-5mm-20-177), read in depth order.
    """
    return {0: _group(range(32), linear_positions(32, 20.0))}


def buzsaki32() -> dict[int, dict]:
    """NeuroNexus Buzsaki32: 4 shanks of 8 staggered sites, 200 um between shanks.

    One channel group per shank, as in klusta's ``buzsaki32`` probe file:
    channels ``8k .. 8k+7`` on shank ``k``, tip first. Each shank has the
    Buzsaki zig-zag (`geometry.buzsaki_shank_positions`: 20 um apart in depth,
    alternately left and right, widening from 0 to +-18.5 um); shank ``k`` is
    shifted by ``200 k`` um in x (the "200" of NeuroNexus' Buzsaki32-5mm-BUZ-200-160
    part number). The graph computed from this geometry links each site to the
    next and next-but-one sites in depth, exactly klusta's hand-written graph.
    """
    shank = buzsaki_shank_positions()
    return {k: _group(range(8 * k, 8 * k + 8), shank + np.array([200.0 * k, 0.0]))
            for k in range(4)}


def neuropixels1() -> dict[int, dict]:
    """Neuropixels 1.0 (bank 0): 384 channels, four-column staggered checkerboard.

    Columns at x = 11, 27, 43, 59 um; 20 um between rows, two sites per row;
    channel ``i`` at ``y = 20 (i // 2 + 1)`` um with x cycling ``43, 11, 59, 27``
    (`geometry.neuropixels1_positions`). Source: Kilosort's
    ``neuropixPhase3A_kilosortChanMap`` and the Neuropixels 1.0 description in
    probeinterface (same layout up to an x offset). All 384 channels are kept,
    the reference sites included: mark them bad in your own ``.prb`` if needed.
    """
    return {0: _group(range(384), neuropixels1_positions(384))}


def dense1024() -> dict[int, dict]:
    """A dense 1024-site array: a 32 x 32 square grid at 20 um, one group.

    Not a commercial part: a stand-in for CMOS high-density arrays (square
    grids of electrodes at 15-40 um pitch). A square grid, rather than e.g. 8
    columns x 128 rows, because it is the two-dimensional worst case: every
    inner site has 8 neighbours, and views and detection cannot assume a
    probe that is mostly one-dimensional. Channel ``i`` at column ``i % 32``,
    row ``i // 32``.
    """
    return {0: _group(range(1024), grid_positions(32, 32, 20.0))}


_BUILTINS: dict[str, Callable[[], dict[int, dict]]] = {
    "linear32": linear32,
    "buzsaki32": buzsaki32,
    "neuropixels1": neuropixels1,
    "dense1024": dense1024,
}


def list_probes() -> list[str]:
    """Names of the built-in probes."""
    return list(_BUILTINS)


def builtin_description(name: str) -> str:
    """The first line of a built-in probe's docstring."""
    doc = _BUILTINS[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def load_probe(name_or_path: str | os.PathLike) -> MEA:
    """A built-in probe by name, or a probe file (``.prb``, or probeinterface ``.json``).

    Raises
    ------
    ProbeError
        For an unknown name or an invalid probe file (naming the file).
    phy_core.literals.LiteralFileError
        For a ``.prb`` file that is missing or is not made of literal assignments.
    """
    if isinstance(name_or_path, str) and name_or_path.lower() in _BUILTINS:
        name = name_or_path.lower()
        return MEA(_BUILTINS[name](), name=name)
    path = Path(name_or_path)
    suffix = path.suffix.lower()
    if suffix == ".prb":
        return MEA(read_prb(path), name=path.stem)
    if suffix == ".json":
        from .probeinterface import read_probeinterface

        return MEA(read_probeinterface(path), name=path.stem)
    raise ProbeError(f"{name_or_path}: not a built-in probe ({', '.join(list_probes())}); "
                     "a probe file path must end in .prb or .json (probeinterface).")
