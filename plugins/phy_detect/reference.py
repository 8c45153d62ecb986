"""A local common reference: subtract from each channel the mean of the channels around it.

Part of the spike-band noise is a spatially smooth background shared by nearby
sites (distant activity, the reference electrode): on the synthetic recordings
35% of its variance. Subtracting from each channel the mean of the channels
some distance away (not the nearest ones, which carry the channel's own
spikes) removes most of it while keeping the spikes: SpikeInterface's
``common_reference(reference='local')`` does this with an exact annulus per
channel; this stage does it with a grid of cells, which costs a few operations
per sample instead of one per (channel, neighbour).

The operation (`cell_layout` computes its parts from the probe geometry):

- The group's sites are put in square cells of `cell_um`: site ``c`` at
  ``(x, y)`` is in cell ``(floor((x - min x) / cell_um), floor((y - min y) / cell_um))``.
- The *ring* of a cell is the cells whose Chebyshev distance to it (in cells)
  is between ``k_in = max(1, round(inner_um / cell_um))`` and
  ``k_out = max(k_in, round(outer_um / cell_um))``, both included: a square
  ring, which never holds the cell itself.
- At each sample, each site gets the mean of the sites in its cell's ring
  subtracted (the sum of their values over their number); a site whose ring
  holds no site is left as it is.

The stage works in place on a float32 ``(n_samples, n_channels)`` chunk, each
sample on its own: the result does not depend on the chunking. It is linear
and acts across channels only, so it commutes with the (per-channel, in time)
band-pass filter: the runner applies it to the filtered data.

The kernel takes `LANES` samples at a time. Each site adds its value to its
cell's sum, then subtracts its cell's reference, along the sample's contiguous
row (a scatter and a gather in small arrays); the cells' work between (a
summed-area table of the cells' sums, padded with empty cells along the grid's
rows so that a ring's 8 corners are at fixed offsets, then each ring's sum)
runs over the block's samples at once, in long contiguous loops that
vectorise. Cost measured on one core (one 1 s chunk, 30000 samples, 40 um
cells, `benchmarks/detect.py --stages --reference local`): ~16 ms at 384
channels, ~38 ms at 1024; the scatter and gather per site and sample are
most of it (a pass that only reads and writes every sample costs ~5 ms at
1024 channels): fusing the subtraction into a pass that already reads every
sample is what would make it cheaper.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from phy_core.descriptors import Stage
from phy_core.errors import PhyError

__all__ = ["LocalReference", "LocalReferenceError", "cell_layout", "STAGES"]

#: Samples processed together: the per-cell arrays hold one value per sample of a block,
#: contiguous, so that the cells' work vectorises. 8 measured ~5% faster than 16 or 32 at
#: 1024 channels (the block's rows stay in the L1 cache between its first and last step).
LANES = 8

DEFAULT_INNER_UM = 60.0
DEFAULT_OUTER_UM = 200.0
DEFAULT_CELL_UM = 40.0


class LocalReferenceError(PhyError, ValueError):
    """The local reference cannot be built from these parameters or this geometry."""


def _round_half_up(value: float) -> int:
    return int(np.floor(value + 0.5))


def cell_layout(positions: np.ndarray, inner_um: float, outer_um: float,
                cell_um: float) -> dict:
    """The cells, rings and counts of the local reference (see the module's docstring).

    Returns
    -------
    dict
        ``cell`` (C,) int64 cell of each site, row-major in a ``(nx, ny)`` grid;
        ``nx``, ``ny``; ``k_in``, ``k_out``; ``ring_count`` (nx * ny,) int64 the number
        of sites in each cell's ring.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) == 0:
        raise LocalReferenceError(f"local reference: channel positions must have shape "
                             f"(n_channels, 2), got {positions.shape}.")
    if not np.isfinite(positions).all():
        raise LocalReferenceError("local reference: channel positions must be finite.")
    for name, value in (("inner_um", inner_um), ("outer_um", outer_um), ("cell_um", cell_um)):
        if not np.isfinite(value) or value < 0 or (name == "cell_um" and value <= 0):
            raise LocalReferenceError(f"local reference: {name} must be a positive number, "
                                 f"got {value!r}.")
    if outer_um <= inner_um:
        raise LocalReferenceError(f"local reference: outer_um ({outer_um}) must be larger than "
                             f"inner_um ({inner_um}).")
    k_in = max(1, _round_half_up(inner_um / cell_um))
    k_out = max(k_in, _round_half_up(outer_um / cell_um))
    ix = np.floor((positions[:, 0] - positions[:, 0].min()) / cell_um).astype(np.int64)
    iy = np.floor((positions[:, 1] - positions[:, 1].min()) / cell_um).astype(np.int64)
    nx, ny = int(ix.max()) + 1, int(iy.max()) + 1
    if nx * ny > 1_000_000:
        raise LocalReferenceError(f"local reference: {nx} x {ny} cells of {cell_um} um: "
                             f"use larger cells.")
    cell = ix * ny + iy
    counts = np.bincount(cell, minlength=nx * ny).reshape(nx, ny)
    # Sites within Chebyshev distance k of each cell, by a summed-area table.
    table = np.zeros((nx + 1, ny + 1), dtype=np.int64)
    table[1:, 1:] = counts.cumsum(0).cumsum(1)

    def box(k: int) -> np.ndarray:
        if k < 0:
            return np.zeros((nx, ny), dtype=np.int64)
        i0 = np.clip(np.arange(nx) - k, 0, nx)
        i1 = np.clip(np.arange(nx) + k + 1, 0, nx)
        j0 = np.clip(np.arange(ny) - k, 0, ny)
        j1 = np.clip(np.arange(ny) + k + 1, 0, ny)
        return (table[i1][:, j1] - table[i0][:, j1] - table[i1][:, j0] + table[i0][:, j0])

    ring_count = (box(k_out) - box(k_in - 1)).ravel()
    return dict(cell=cell, nx=nx, ny=ny, k_in=k_in, k_out=k_out, ring_count=ring_count)


class LocalReference:
    """Subtract from each site the mean of the sites in its cell's square ring, in place.

    Parameters
    ----------
    channel_positions : array-like, (n_channels, 2)
        The sites' positions in um, in the data's column order.
    inner_um, outer_um : float
        The ring's inner and outer half-widths (rounded to whole cells).
    cell_um : float
        The cells' size.
    """

    def __init__(self, channel_positions, inner_um: float = DEFAULT_INNER_UM,
                 outer_um: float = DEFAULT_OUTER_UM, cell_um: float = DEFAULT_CELL_UM) -> None:
        self.inner_um, self.outer_um, self.cell_um = float(inner_um), float(outer_um), \
            float(cell_um)
        self.layout = layout = cell_layout(channel_positions, self.inner_um, self.outer_um,
                                           self.cell_um)
        self.n_channels = len(layout["cell"])
        counts = layout["ring_count"]
        # 1 / count per cell (0 for an empty ring: nothing subtracted), for each lane.
        scale = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0).astype(np.float32)
        self._scale_lanes = np.ascontiguousarray(np.repeat(scale, LANES))
        self._cell_lanes = np.ascontiguousarray(layout["cell"] * LANES, dtype=np.uint32)
        self._offsets = ring_offsets(layout["nx"], layout["ny"], layout["k_in"],
                                     layout["k_out"])

    def __call__(self, data: np.ndarray) -> np.ndarray:
        """Reference `data` ``(n_samples, n_channels)`` float32 C-contiguous in place."""
        if not isinstance(data, np.ndarray) or data.dtype != np.float32 or data.ndim != 2 \
                or not data.flags.c_contiguous or not data.flags.writeable:
            raise LocalReferenceError("local reference: the data must be a writeable C-contiguous "
                                 "(n_samples, n_channels) float32 array.")
        if data.shape[1] != self.n_channels:
            raise LocalReferenceError(f"local reference: {data.shape[1]} channels in the data, "
                                 f"{self.n_channels} positions.")
        if data.shape[0]:
            layout = self.layout
            _reference_rows(data, self._cell_lanes, self._scale_lanes, self._offsets,
                            layout["nx"], layout["ny"], layout["k_out"])
        return data

    def __repr__(self) -> str:
        layout = self.layout
        return (f"LocalReference({self.n_channels} channels, {layout['nx']} x {layout['ny']} "
                f"cells of {self.cell_um:g} um, ring {layout['k_in']}-{layout['k_out']} cells)")


def ring_offsets(nx: int, ny: int, k_in: int, k_out: int) -> np.ndarray:
    """Where `_reference_rows` reads each grid row's ring sums in its summed-area table.

    The table holds, for each sample of a block (`LANES`, contiguous), the sums
    of the cells below row ``a`` and left of column ``b``, at
    ``((a * gy + b) * LANES + lane)``, ``a`` in ``0..nx``, ``b`` in ``0..gy - 1``
    with ``gy = ny + 2 * k_out + 1``: the columns are padded with `k_out` empty
    cells on each side, so that along a grid row the boxes' corners are at
    fixed offsets (contiguous reads); the rows are clipped to the grid instead.
    Returns ``(nx, 8)`` int64: for grid row ``i``, the offsets of the corners of
    the box of half-width `k_out`, then of ``k_in - 1`` (each ``+ - - +``), for
    the row's first cell; cell ``j`` is ``j * LANES`` further.
    """
    gy = ny + 2 * k_out + 1
    i = np.arange(nx)
    offsets = []
    for k in (k_out, k_in - 1):
        a0, a1 = np.clip(i - k, 0, nx), np.clip(i + k + 1, 0, nx)
        b0, b1 = k_out - k, k_out + k + 1
        offsets += [a1 * gy + b1, a0 * gy + b1, a1 * gy + b0, a0 * gy + b0]
    return np.ascontiguousarray(np.stack(offsets, axis=1) * LANES, dtype=np.int64)


@njit(cache=True, nogil=True)
def _reference_rows(data, cell_lanes, scale_lanes, offsets, nx, ny, k_out):
    """`LocalReference` on `data` in place, `LANES` samples at a time.

    `cell_lanes`: each site's cell times `LANES`; `scale_lanes`: each cell's
    1 / (sites in its ring), repeated for the lanes; `offsets`: `ring_offsets`.
    The per-cell arrays are ``(cell, lane)`` with the block's samples
    contiguous, so that the cells' work is long loops of contiguous reads
    (vectorised); the sites add to and subtract from them along each sample's
    contiguous row.
    """
    n_samples, n_channels = data.shape
    n_cells = nx * ny
    gy = ny + 2 * k_out + 1
    row_size = gy * LANES
    sums = np.zeros(n_cells * LANES, dtype=np.float32)
    ref = np.zeros(n_cells * LANES, dtype=np.float32)
    table = np.zeros((nx + 1) * row_size, dtype=np.float32)  # its row 0 stays zero
    prefix = np.zeros(row_size, dtype=np.float32)
    first, last = (k_out + 1) * LANES, (k_out + 1 + ny) * LANES
    for t0 in range(0, n_samples, LANES):
        n = min(LANES, n_samples - t0)
        # 1. Each cell's sum. (Below, loops run over views from their start: the
        #    compiler then knows the indices are not negative and vectorises the loops.)
        sums[:] = 0.0
        for lane in range(n):
            row, into = data[t0 + lane], sums[lane:]
            for c in range(n_channels):
                into[cell_lanes[c]] += row[c]
        # 2. The summed-area table, a grid row at a time: the sums of the cells left of
        #    each column (on the padding: 0 before the cells, the row's total after).
        for i in range(nx):
            cells = sums[i * ny * LANES:(i + 1) * ny * LANES]
            for m in range(first, last):
                prefix[m] = prefix[m - LANES] + cells[m - first]
            for m in range(last, row_size):
                prefix[m] = prefix[m - LANES]
            above = table[(i + 1) * row_size:(i + 2) * row_size]
            below = table[i * row_size:(i + 1) * row_size]
            for m in range(row_size):
                above[m] = below[m] + prefix[m]
        # 3. Each cell's ring: the box of half-width k_out minus that of k_in - 1, over
        #    the number of sites in it (0 for an empty ring).
        for i in range(nx):
            t1, t2 = table[offsets[i, 0]:], table[offsets[i, 1]:]
            t3, t4 = table[offsets[i, 2]:], table[offsets[i, 3]:]
            u1, u2 = table[offsets[i, 4]:], table[offsets[i, 5]:]
            u3, u4 = table[offsets[i, 6]:], table[offsets[i, 7]:]
            out = ref[i * ny * LANES:(i + 1) * ny * LANES]
            scale = scale_lanes[i * ny * LANES:(i + 1) * ny * LANES]
            for m in range(ny * LANES):
                out[m] = ((t1[m] - t2[m] - t3[m] + t4[m])
                          - (u1[m] - u2[m] - u3[m] + u4[m])) * scale[m]
        # 4. Each site subtracts its cell's reference.
        for lane in range(n):
            row, own = data[t0 + lane], ref[lane:]
            for c in range(n_channels):
                row[c] -= own[cell_lanes[c]]


def warm_up() -> None:
    """Load the kernel (numba's on-disk cache) on a few sites."""
    positions = np.array([[0.0, 0.0], [0.0, 20.0], [0.0, 80.0], [20.0, 200.0]])
    LocalReference(positions)(np.zeros((LANES + 1, 4), dtype=np.float32))


def _make_none(**_):
    """No reference (the default): the runner applies nothing."""
    return None


def _make_local(channel_positions=None, inner_um: float = DEFAULT_INNER_UM,
                outer_um: float = DEFAULT_OUTER_UM, cell_um: float = DEFAULT_CELL_UM,
                **_) -> LocalReference:
    if channel_positions is None:
        raise LocalReferenceError("local reference: the channel group has no geometry (channel "
                             "positions); give the probe's positions or use reference 'none'.")
    return LocalReference(channel_positions, inner_um=inner_um, outer_um=outer_um,
                          cell_um=cell_um)


STAGES = [
    Stage(
        name="none",
        kind="reference",
        description="No common reference (the default).",
        factory=_make_none,
        parameters={},
        requires=("filter",),
    ),
    Stage(
        name="local",
        kind="reference",
        description="Local common reference: minus the mean of the sites in a square ring "
                    "of cells around each site.",
        factory=_make_local,
        parameters={"channel_positions": None, "inner_um": DEFAULT_INNER_UM,
                    "outer_um": DEFAULT_OUTER_UM, "cell_um": DEFAULT_CELL_UM},
        requires=("filter",),
    ),
]
