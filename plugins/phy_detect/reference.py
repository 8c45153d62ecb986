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

The kernel takes `LANES` samples at a time, in three steps:

- Each site adds its value to its cell's sum, along the sample's contiguous
  row. Most channels are in *runs* (`channel_runs`): channels in order whose
  cells follow each other, possibly a few interleaved (a 20 um grid with 40 um
  cells: pairs of channels; a Neuropixels 1.0 probe: groups of 4 channels, its
  4 columns of sites in 2 columns of cells). A run is one vectorised loop per sample; the
  grid's numbering (which axis first, which directions: the ring is symmetric)
  is the one giving the runs the most sites (`reference_plan`). The sites in no
  run (an irregular geometry) are added one by one.
- The cells' work, over the block's samples at once (each cell's values
  ``(cell, lane)``, the samples contiguous: the sums are transposed to it): a
  summed-area table of the cells' sums, padded with empty cells along the
  grid's rows so that a ring's 8 corners are at fixed offsets, then each ring's
  sum, in long contiguous loops that vectorise.
- Each site subtracts its cell's reference (transposed back), along the runs.

Cost measured on one core (one 1 s chunk, 30000 samples, 40 um cells, the
kernel alone on a copy of a chunk of noise, median of repeats on a shared
machine): ~11 ms at 384 channels (Neuropixels 1.0: one run), ~18 ms at 1024
(a 32 x 32 grid of 20 um: 17 runs) where the former kernel (a scattered add
and subtract per site and sample) took ~16 and ~36 ms; a pass that only reads
and writes every sample costs ~5 ms at 1024 channels. A geometry without runs
(1024 sites scattered at random) takes ~31 ms (the former kernel: ~35 ms).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from phy_core.descriptors import Stage
from phy_core.errors import PhyError

__all__ = ["LocalReference", "LocalReferenceError", "cell_layout", "STAGES"]

#: Samples processed together: the per-cell arrays hold one value per sample of a block,
#: contiguous, so that the cells' work vectorises. 8: the transposes between a sample's
#: cells and the block's are loops the compiler vectorises for up to 8 interleaved arrays,
#: and the block's rows stay in the L1 cache between its first and last step.
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
        self.plan = plan = reference_plan(layout)
        counts = layout["ring_count"][plan["cell_of"]]  # in the plan's cell numbering
        # 1 / count per cell (0 for an empty ring: nothing subtracted), for each lane.
        scale = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0).astype(np.float32)
        self._scale_lanes = np.ascontiguousarray(np.repeat(scale, LANES))
        self._offsets = ring_offsets(plan["nx"], plan["ny"], layout["k_in"], layout["k_out"])
        runs = plan["runs"]
        self._runs = tuple(np.ascontiguousarray(runs[runs[:, 1] == stride])
                           for stride in RUN_STRIDES)
        self._single_channels = plan["single_channels"].astype(np.uint32)
        self._single_cell_lanes = (plan["single_cells"] * LANES).astype(np.uint32)

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
            plan, layout = self.plan, self.layout
            _reference_rows(data, *self._runs, self._single_channels, self._single_cell_lanes,
                            self._scale_lanes, self._offsets, plan["nx"], plan["ny"],
                            layout["k_out"])
        return data

    def __repr__(self) -> str:
        layout = self.layout
        return (f"LocalReference({self.n_channels} channels, {layout['nx']} x {layout['ny']} "
                f"cells of {self.cell_um:g} um, ring {layout['k_in']}-{layout['k_out']} cells)")


#: The strides of the channel runs the kernel handles with vector loops (see `channel_runs`).
RUN_STRIDES = (1, 2, 4)
#: Runs covering fewer sites than this go to the per-site path (a loop's set-up costs more).
MIN_RUN_SITES = 8


def channel_runs(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cover the channels with runs whose cells follow the channel order, and the rest.

    A run of stride ``p`` (in `RUN_STRIDES`) is the channels ``c0 .. c0 + p * length - 1``
    where channel ``c0 + p * m + i`` (``i < p``) is in cell ``base_i + m``: along the run,
    each of its ``p`` interleaved members steps to the next cell. On a probe numbered
    along its rows or columns, most channels are in a few long runs (a 1024-site grid of
    20 um with 40 um cells: 17 runs of stride 2; a Neuropixels 1.0 probe: one run of
    stride 4), and a run is a vectorised loop per sample instead of a scattered access
    per site. Scanning the channels in order, each run is the longest from its first
    channel; a channel that starts no run of `MIN_RUN_SITES` sites goes to the per-site
    path.

    Returns
    -------
    runs : (n_runs, 7) int64
        ``c0, stride, length, base_0 .. base_3`` (unused bases -1).
    singles : (n,) int64
        The channels in no run.
    """
    cell = np.asarray(cell, dtype=np.int64)
    n = len(cell)
    # steps[p][c]: channel c + p is in the cell after channel c's.
    steps = {p: np.concatenate([cell[p:] == cell[:-p] + 1, np.zeros(min(p, n), bool)])
             for p in RUN_STRIDES}
    runs, singles = [], []
    c0 = 0
    while c0 < n:
        best_sites, best = 0, None
        for p in RUN_STRIDES:
            if c0 + p > n:
                continue
            length = 1  # one more step while each member's next channel is in its next cell
            while c0 + p * (length + 1) <= n and \
                    steps[p][c0 + p * (length - 1):c0 + p * length].all():
                length += 1
            if p * length > best_sites:
                best_sites, best = p * length, (p, length)
        if best_sites >= MIN_RUN_SITES:
            p, length = best
            bases = cell[c0:c0 + p]
            runs.append([c0, p, length] + list(bases) + [-1] * (4 - p))
            c0 += best_sites
        else:
            singles.append(c0)
            c0 += 1
    return (np.array(runs, dtype=np.int64).reshape(-1, 7),
            np.array(singles, dtype=np.int64))


def reference_plan(layout: dict) -> dict:
    """The kernel's numbering of the cells, its runs of channels and its per-site channels.

    The ring is symmetric under the grid's flips and transposition, so the kernel may
    number the cells along whichever axis and direction the channels follow: of the 8
    orientations, the one whose runs (`channel_runs`) cover the most sites (the first
    such, starting with the `cell_layout` numbering).

    Returns
    -------
    dict
        ``nx``, ``ny``: the grid in that orientation; ``cell_of`` (nx * ny,) the
        `cell_layout` cell of each of its cells; ``runs``, ``single_channels`` and
        ``single_cells`` (each single channel's cell in that numbering).
    """
    nx0, ny0 = layout["nx"], layout["ny"]
    ix0, iy0 = np.divmod(layout["cell"], ny0)
    best = None
    for transpose in (False, True):
        for flip_x in (False, True):
            for flip_y in (False, True):
                ix = nx0 - 1 - ix0 if flip_x else ix0
                iy = ny0 - 1 - iy0 if flip_y else iy0
                nx, ny = nx0, ny0
                if transpose:
                    ix, iy, nx, ny = iy, ix, ny, nx
                cell = ix * ny + iy
                runs, singles = channel_runs(cell)
                covered = int((runs[:, 1] * runs[:, 2]).sum())
                if best is None or covered > best[0]:
                    best = covered, transpose, flip_x, flip_y, nx, ny, cell, runs, singles
    _, transpose, flip_x, flip_y, nx, ny, cell, runs, singles = best
    a, b = np.divmod(np.arange(nx * ny), ny)  # each oriented cell's grid position...
    if transpose:
        a, b = b, a
    ix0 = nx0 - 1 - a if flip_x else a  # ... and its cell_layout one
    iy0 = ny0 - 1 - b if flip_y else b
    return dict(nx=nx, ny=ny, cell_of=ix0 * ny0 + iy0, runs=runs,
                single_channels=singles, single_cells=cell[singles])


def ring_offsets(nx: int, ny: int, k_in: int, k_out: int) -> np.ndarray:
    """Where `_ring_means` reads each grid row's ring sums in its summed-area table.

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
def _add_every_site(row, into, cell_lanes):
    """`_add_singles` for a geometry without runs: every channel, in order (one index
    array fewer to read)."""
    for c in range(len(cell_lanes)):
        into[cell_lanes[c]] += row[c]


@njit(cache=True, nogil=True)
def _subtract_every_site(row, own, cell_lanes):
    """`_subtract_singles` for a geometry without runs."""
    for c in range(len(cell_lanes)):
        row[c] -= own[cell_lanes[c]]


@njit(cache=True, nogil=True)
def _add_singles(row, into, channels, cell_lanes):
    """Add the sites of `row` (one sample) in no run to their cells' sums in `into`
    (``(cell, lane)``, from the sample's lane)."""
    for k in range(len(channels)):
        into[cell_lanes[k]] += row[channels[k]]


# The runs of each stride have their own functions: a loop vectorises worse when the
# function also holds the loops of the other strides.


@njit(cache=True, nogil=True)
def _add_runs_1(row, sums, runs):
    """Add the sites of `row` (one sample) in the runs of stride 1 to their cells' sums."""
    for r in range(runs.shape[0]):
        c0, length, base = runs[r, 0], runs[r, 2], runs[r, 3]
        src, into = row[c0:c0 + length], sums[base:base + length]
        for m in range(length):
            into[m] += src[m]


@njit(cache=True, nogil=True)
def _add_runs_2(row, sums, runs):
    """Add the sites of `row` (one sample) in the runs of stride 2 to their cells' sums.

    For each cell of a run's members (at its first member in it), one loop adds the
    members in that cell (selects keep them, in channel order): each loop reads whole
    pairs of channels and writes to distinct cells, so it vectorises.
    """
    zero = np.float32(0.0)
    for r in range(runs.shape[0]):
        c0, length = runs[r, 0], runs[r, 2]
        src = row[c0:c0 + 2 * length]
        for i in range(2):
            base = runs[r, 3 + i]
            if i == 1 and runs[r, 3] == base:
                continue
            w0, w1 = runs[r, 3] == base, runs[r, 4] == base
            into = sums[base:base + length]
            if w0 and w1:
                for m in range(length):
                    into[m] = (into[m] + src[2 * m]) + src[2 * m + 1]
            else:
                for m in range(length):
                    a, b = src[2 * m], src[2 * m + 1]  # (loaded whatever the selects)
                    into[m] = (into[m] + (a if w0 else zero)) + (b if w1 else zero)


@njit(cache=True, nogil=True)
def _add_runs_4(row, sums, runs):
    """`_add_runs_2` for the runs of stride 4."""
    zero = np.float32(0.0)
    for r in range(runs.shape[0]):
        c0, length = runs[r, 0], runs[r, 2]
        src = row[c0:c0 + 4 * length]
        for i in range(4):
            base = runs[r, 3 + i]
            first = True
            for k in range(i):
                first = first and runs[r, 3 + k] != base
            if not first:
                continue
            w0, w1 = runs[r, 3] == base, runs[r, 4] == base
            w2, w3 = runs[r, 5] == base, runs[r, 6] == base
            into = sums[base:base + length]
            if w0 and w1 and w2 and w3:
                for m in range(length):
                    into[m] = (((into[m] + src[4 * m]) + src[4 * m + 1]) + src[4 * m + 2]) \
                        + src[4 * m + 3]
            else:
                for m in range(length):
                    a, b, c, d = src[4 * m], src[4 * m + 1], src[4 * m + 2], src[4 * m + 3]
                    into[m] = ((((into[m] + (a if w0 else zero)) + (b if w1 else zero))
                                + (c if w2 else zero)) + (d if w3 else zero))


@njit(cache=True, nogil=True)
def _subtract_singles(row, own, channels, cell_lanes):
    """Subtract from each site of `row` (one sample) in no run its cell's reference in
    `own` (``(cell, lane)``, from the sample's lane)."""
    for k in range(len(channels)):
        row[channels[k]] -= own[cell_lanes[k]]


@njit(cache=True, nogil=True)
def _subtract_runs_1(row, ref, runs):
    """Subtract from each site of `row` in the runs of stride 1 its cell's value in `ref`."""
    for r in range(runs.shape[0]):
        c0, length, base = runs[r, 0], runs[r, 2], runs[r, 3]
        out, first = row[c0:c0 + length], ref[base:base + length]
        for m in range(length):
            out[m] -= first[m]


@njit(cache=True, nogil=True)
def _subtract_runs_2(row, ref, runs):
    """`_subtract_runs_1` for the runs of stride 2."""
    for r in range(runs.shape[0]):
        c0, length = runs[r, 0], runs[r, 2]
        out = row[c0:c0 + 2 * length]
        first = ref[runs[r, 3]:runs[r, 3] + length]
        if runs[r, 4] == runs[r, 3]:
            for m in range(length):
                value = first[m]
                out[2 * m] -= value
                out[2 * m + 1] -= value
        else:
            second = ref[runs[r, 4]:runs[r, 4] + length]
            for m in range(length):
                out[2 * m] -= first[m]
                out[2 * m + 1] -= second[m]


@njit(cache=True, nogil=True)
def _subtract_runs_4(row, ref, runs):
    """`_subtract_runs_1` for the runs of stride 4."""
    for r in range(runs.shape[0]):
        c0, length = runs[r, 0], runs[r, 2]
        out = row[c0:c0 + 4 * length]
        first = ref[runs[r, 3]:runs[r, 3] + length]
        second = ref[runs[r, 4]:runs[r, 4] + length]
        third = ref[runs[r, 5]:runs[r, 5] + length]
        fourth = ref[runs[r, 6]:runs[r, 6] + length]
        for m in range(length):
            out[4 * m] -= first[m]
            out[4 * m + 1] -= second[m]
            out[4 * m + 2] -= third[m]
            out[4 * m + 3] -= fourth[m]


@njit(cache=True, nogil=True)
def _ring_means(sums, ref, table, prefix, scale_lanes, offsets, nx, ny, k_out):
    """Each cell's ring mean from the cells' sums, for a block's samples.

    `sums` and `ref` are ``(cell, lane)`` with the block's samples contiguous, so that
    the loops are long and contiguous (vectorised): a summed-area table of the cells'
    sums, padded with empty cells along the grid's rows so that a ring's 8 corners are
    at fixed offsets (`ring_offsets`), then each ring's sum times `scale_lanes`.
    (Unsigned indices where a loop reads back what it wrote `LANES` earlier: without a
    negative index to wrap around, the compiler sees the distance and vectorises.)
    """
    lanes = np.uint64(LANES)
    gy = ny + 2 * k_out + 1
    row_size = gy * LANES
    first, last = (k_out + 1) * LANES, (k_out + 1 + ny) * LANES
    for i in range(nx):
        # The sums of the cells left of each column (on the padding: 0 before the
        # cells, the row's total after), then the table's row below this grid row.
        cells = sums[i * ny * LANES:(i + 1) * ny * LANES]
        into, tail = prefix[first:last], prefix[last:]
        for m in range(ny * LANES):
            into[m] = cells[m]
        for m in range(row_size - last):
            tail[m] = 0.0
        for m in range(lanes, np.uint64(row_size)):
            prefix[m] += prefix[m - lanes]
        above = table[(i + 1) * row_size:(i + 2) * row_size]
        below = table[i * row_size:(i + 1) * row_size]
        for m in range(row_size):
            above[m] = below[m] + prefix[m]
    # Each cell's ring: the box of half-width k_out minus that of k_in - 1, over the
    # number of sites in it (0 for an empty ring).
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


@njit(cache=True, nogil=True)
def _reference_rows(data, runs_1, runs_2, runs_4, single_channels, single_cell_lanes,
                    scale_lanes, offsets, nx, ny, k_out):
    """`LocalReference` on `data` in place, `LANES` samples at a time.

    Per sample, the sites in runs add to their cells' sums along the runs (a sample's
    cells contiguous); the block's sums are transposed to ``(cell, lane)``, where the
    sites in no run add theirs, for the cells' work (`_ring_means`); its result is
    transposed back for the runs to subtract, per sample, and the other sites subtract
    theirs from it directly.
    """
    n_samples = data.shape[0]
    n_cells = nx * ny
    gy = ny + 2 * k_out + 1
    any_runs = len(runs_1) + len(runs_2) + len(runs_4) > 0
    by_sample = np.zeros((LANES, n_cells), dtype=np.float32)  # a sample's cells contiguous
    ref_by_sample = np.zeros((LANES, n_cells), dtype=np.float32)
    sums = np.zeros(n_cells * LANES, dtype=np.float32)  # (cell, lane)
    ref = np.zeros(n_cells * LANES, dtype=np.float32)
    table = np.zeros((nx + 1) * gy * LANES, dtype=np.float32)  # its row 0 stays zero
    prefix = np.zeros(gy * LANES, dtype=np.float32)
    for t0 in range(0, n_samples, LANES):
        n = min(LANES, n_samples - t0)
        if any_runs:
            for lane in range(n):
                row, cells = data[t0 + lane], by_sample[lane]
                for j in range(n_cells):
                    cells[j] = 0.0
                _add_runs_1(row, cells, runs_1)
                _add_runs_2(row, cells, runs_2)
                _add_runs_4(row, cells, runs_4)
            for k in range(n_cells):  # (the lanes from `n` on hold earlier samples: unused)
                for lane in range(LANES):
                    sums[k * LANES + lane] = by_sample[lane, k]
        else:
            sums[:] = 0.0
        for lane in range(n):
            if any_runs:
                _add_singles(data[t0 + lane], sums[lane:], single_channels, single_cell_lanes)
            else:
                _add_every_site(data[t0 + lane], sums[lane:], single_cell_lanes)
        _ring_means(sums, ref, table, prefix, scale_lanes, offsets, nx, ny, k_out)
        if any_runs:
            for k in range(n_cells):
                for lane in range(LANES):
                    ref_by_sample[lane, k] = ref[k * LANES + lane]
        for lane in range(n):
            row = data[t0 + lane]
            if any_runs:
                own = ref_by_sample[lane]
                _subtract_runs_1(row, own, runs_1)
                _subtract_runs_2(row, own, runs_2)
                _subtract_runs_4(row, own, runs_4)
                _subtract_singles(row, ref[lane:], single_channels, single_cell_lanes)
            else:
                _subtract_every_site(row, ref[lane:], single_cell_lanes)


def warm_up() -> None:
    """Load the kernel (numba's on-disk cache) on a few sites."""
    positions = np.array([[0.0, 0.0], [0.0, 20.0], [0.0, 80.0], [20.0, 200.0]])
    LocalReference(positions)(np.zeros((LANES + 1, 4), dtype=np.float32))


def _make_none(**_):
    """No reference: the runner applies nothing."""
    return None


def _make_local(channel_positions=None, inner_um: float = DEFAULT_INNER_UM,
                outer_um: float = DEFAULT_OUTER_UM, cell_um: float = DEFAULT_CELL_UM,
                **_) -> LocalReference:
    if channel_positions is None:
        raise LocalReferenceError("local reference: the channel group has no geometry (channel "
                             "positions); give the probe's positions or use reference 'none'.")
    return LocalReference(channel_positions, inner_um=inner_um, outer_um=outer_um,
                          cell_um=cell_um)


def _make_auto(channel_positions=None, **arguments) -> LocalReference | None:
    """The default: the local reference where it can subtract something, else nothing.

    A group without a geometry (a probe file that gives no positions), or whose
    sites are all closer together than the ring's inner edge (a tetrode), gets
    no reference instead of an error or a pass that subtracts zeros.
    """
    if channel_positions is None:
        return None
    reference = _make_local(channel_positions=channel_positions, **arguments)
    if not reference.layout["ring_count"][reference.layout["cell"]].any():
        return None
    return reference


STAGES = [
    Stage(
        name="auto",
        kind="reference",
        description="The default: the local reference for a channel group with a geometry "
                    "and sites far enough apart for a ring; none otherwise.",
        factory=_make_auto,
        parameters={"channel_positions": None, "inner_um": DEFAULT_INNER_UM,
                    "outer_um": DEFAULT_OUTER_UM, "cell_um": DEFAULT_CELL_UM},
        requires=("filter",),
    ),
    Stage(
        name="none",
        kind="reference",
        description="No common reference.",
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
