"""numba kernels of the zero-phase band-pass filter (`phy_detect.filtering`).

`filtfilt` is what ``scipy.signal.sosfiltfilt`` computes with its defaults (odd
extension of ``padlen`` samples at each end, steady-state initial conditions,
forward then backward), on ``(n_samples, n_channels)`` float32 traces, for the
coefficients that `phy_detect.filtering.Filter` designs.

Layout of the work: the recursion along time cannot be vectorised, the
channels can. A block of LANES channels (one SIMD register of float32) goes
through GROUP second-order sections with its 2 x GROUP state vectors held in
registers, for all the rows of a tile; the state goes to memory only at tile
edges. Per row and block that is one load and one store, where running each
section over whole rows (the previous kernel) loads and stores the row and
two state variables per section: bound by stores, it ran 3x (1024 channels)
to 4.5x (384) slower. The
state lives in stack arrays (`_stack_array`), which LLVM turns into registers:
a heap array might alias the traces, which forces a load and a store of every
state variable on every row. A tile is a few rows of all channels (in L2); the
next tile is prefetched while the current one is filtered (`_prefetch`):
blocks read the rows in 64-byte pieces a row apart, which the hardware
prefetcher does not follow (without it, these blocks ran 2.5-4x slower).

The backward pass can also write its output channel-major (`filtfilt`'s
`xt`, for the template matching's projections): panels of rows that were
just filtered, still in L2, are transposed by 16 x 16 blocks in registers
(`_transpose_block`).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["FAST_MAX_ORDER", "GROUP", "LANES", "filtfilt"]

# Sections are in transposed direct form II with b0 = 1 (the product of
# scipy's b0 is one gain, applied at the input; see
# `phy_detect.filtering._kernel_design`):
#     y = u + z0;   z0 <- z1 + b1 u - a1 y;   z1 <- b2 u - a2 y
# ("general": 4 multiplications per section and sample). Up to order 3 the
# zeros of the band-pass are paired as 1 - z^-2 in every section, which leaves
#     y = u + z0;   z0 <- z1 - a1 y;   z1 <- -u - a2 y
# (2 multiplications: "fast"). Beyond order 3 that pairing loses precision
# (float32: 1e-2 of the signal at order 4, 100 Hz - 13.5 kHz, against 2e-4 with
# scipy's pairing), so scipy's sections are kept there. Orders above GROUP run
# as several groups over each tile, each reading the float32 output of the
# previous one.


# 16 float32: one AVX-512 register (two AVX2 ones, four SSE or NEON ones). Also
# the trip count at which LLVM vectorises the channel loop instead of first
# unrolling it into scalar code: measured, compiling for AVX2, 8 lanes ran 4x
# slower than 16 (and 16 beat the previous kernel on SSE-only targets too).
LANES = 16  # channels per block
GROUP = 3  # sections per pass over a tile; an order-3 band-pass is one group
FAST_MAX_ORDER = 3
MAX_TILE_ROWS = 32
_STATE_SIZE = GROUP * 2 * LANES
_SECTIONS_SIZE = GROUP * 4
_PADDED_SIZE = MAX_TILE_ROWS * LANES


@intrinsic
def _stack_array(typingctx, size, dtype):
    """Pointer to `size` (a compile-time constant) uninitialised values on the stack."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(dtype.dtype), size=count)

    return types.CPointer(dtype.dtype)(size, dtype), codegen


@intrinsic
def _prefetch(typingctx, array, row, column):
    """Ask for the cache line of ``array[row, column]`` (into L2; never faults)."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        ary = context.make_array(array_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, array_type, ary, [args[1], args[2]])
        i8p = llvm_ir.IntType(8).as_pointer()
        i32 = llvm_ir.IntType(32)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch")
        # read, locality 2 (prefetcht1: L2, leaving L1 to the rows in use), data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(2), i32(1)])
        return context.get_dummy_value()

    return types.void(array, row, column), codegen


def _transpose_masks() -> list:
    """The shuffles of a LANES x LANES transpose, one stage per bit of the index.

    Stage `bit` swaps that bit of the row index with that bit of the column
    index: rows ``i`` and ``i | bit`` (``i & bit == 0``) exchange the elements
    whose column has the bit set in the one and clear in the other. After the
    stages of every bit, ``out[j][i] = in[i][j]``. Masks index the 2 LANES
    elements of the pair (the first row's, then the second's).
    """
    stages = []
    bit = 1
    while bit < LANES:
        low = [c if not c & bit else LANES + (c & ~bit) for c in range(LANES)]
        high = [(c | bit) if not c & bit else LANES + c for c in range(LANES)]
        stages.append((bit, low, high))
        bit *= 2
    return stages


_TRANSPOSE_STAGES = _transpose_masks()


@intrinsic
def _transpose_block(typingctx, src, row, column, dst):
    """``dst[column + j, row + i] = src[row + i, column + j]`` for ``i, j < LANES``.

    float32 2D arrays. LANES rows are loaded as vectors and transposed in
    registers (log2(LANES) stages of two-vector shuffles): numba's element loops
    compile to one scalar load and store per value and ran 2x (384 channels) to
    7x (1024: rows 4 KiB apart, one L1 set) slower than this.
    """

    def codegen(context, builder, signature, args):
        src_type, _, _, dst_type = signature.args
        s = context.make_array(src_type)(context, builder, args[0])
        d = context.make_array(dst_type)(context, builder, args[3])
        i64, i32 = llvm_ir.IntType(64), llvm_ir.IntType(32)
        vector = llvm_ir.VectorType(llvm_ir.FloatType(), LANES)
        masks = llvm_ir.VectorType(i32, LANES)
        rows = []
        for i in range(LANES):
            index = [builder.add(args[1], i64(i)), args[2]]
            pointer = cgutils.get_item_pointer(context, builder, src_type, s, index)
            load = builder.load(builder.bitcast(pointer, vector.as_pointer()))
            load.align = 4
            rows.append(load)
        for bit, low, high in _TRANSPOSE_STAGES:
            new = list(rows)
            for i in range(LANES):
                if not i & bit:
                    a, b = rows[i], rows[i | bit]
                    new[i] = builder.shuffle_vector(a, b, llvm_ir.Constant(masks, low))
                    new[i | bit] = builder.shuffle_vector(a, b, llvm_ir.Constant(masks, high))
            rows = new
        for j in range(LANES):
            index = [builder.add(args[2], i64(j)), args[1]]
            pointer = cgutils.get_item_pointer(context, builder, dst_type, d, index)
            store = builder.store(rows[j], builder.bitcast(pointer, vector.as_pointer()))
            store.align = 4
        return context.get_dummy_value()

    return types.void(src, types.int64, types.int64, dst), codegen


@njit(cache=True, inline="always")
def _transpose_rows(y, xt, r0, r1, c_lo, c_hi):
    """``xt[c, r] = y[r, c]`` for rows ``r0:r1`` and channels ``c_lo:c_hi`` (c_lo: a
    multiple of LANES); by LANES x LANES blocks, the edges element by element."""
    full = c_lo + (c_hi - c_lo) // LANES * LANES
    for c0 in range(c_lo, full, LANES):
        r = r0
        while r + LANES <= r1:
            _transpose_block(y, r, c0, xt)
            r += LANES
        for c in range(c0, c0 + LANES):
            for k in range(r, r1):
                xt[c, k] = y[k, c]
    for c in range(full, c_hi):
        for k in range(r0, r1):
            xt[c, k] = y[k, c]


@njit(cache=True)
def _panel_rows(n_channels):
    """Rows of `y` transposed at a time into `xt` (`_run`): about 512 KiB, in L2.

    Measured per 62,000-row chunk, on top of the filter alone: at 384 channels
    (15 ms) +14 ms by 64-row panels, +9 ms by 256, +7.5 ms by 512 or 1024; at
    1024 channels (45 ms) +31, +26, +28 ms by 128, 256, 512 rows. (Transposing
    afterwards, tile by tile in numba loops: +25 and +190 ms.)
    """
    rows = (512 * 1024 // 4) // max(n_channels, 1) // LANES * LANES
    return min(max(rows, 256), 1024)


@njit(cache=True, fastmath=True, inline="always")
def _load_state(z, dtype):
    zr = carray(_stack_array(_STATE_SIZE, dtype), (GROUP, 2, LANES))
    for s in range(GROUP):
        for j in range(2):
            zs = z[s, j]
            for c in range(LANES):
                zr[s, j, c] = zs[c]
    return zr


@njit(cache=True, fastmath=True, inline="always")
def _store_state(z, zr):
    for s in range(GROUP):
        for j in range(2):
            zs = z[s, j]
            for c in range(LANES):
                zs[c] = zr[s, j, c]


@njit(cache=True, fastmath=True, inline="always")
def _block_rows(x, r0, n_rows, step, c0, z, sections, gain, prefetch_row, general):
    """Filter ``x[r0 + i * step, c0:c0 + LANES]`` for ``i < n_rows`` in place.

    Through the GROUP `sections` (b1, b2, a1, a2), `general` or fast (a
    compile-time constant: callers pass a literal), state `z` (GROUP, 2,
    LANES) read before and written after. Also prefetches the same columns
    of the rows from `prefetch_row` on (the next tile): the hardware
    prefetcher would not guess them, as it follows streams within a page and
    these lines are a row apart.
    """
    # c0 >= 0 stated for the compiler: no negative-index handling of c0 + c,
    # hence one SIMD load and store per row instead of a gather and a scatter.
    c0 = max(c0, 0)
    zr = _load_state(z, sections.dtype)
    r = r0
    p = prefetch_row
    for _ in range(n_rows):
        _prefetch(x, p, c0)
        p += step
        for c in range(LANES):  # independent channels: one SIMD register
            y = gain * x[r, c0 + c]
            for s in range(GROUP):
                u = y
                y = u + zr[s, 0, c]
                if general:
                    zr[s, 0, c] = zr[s, 1, c] + sections[s, 0] * u - sections[s, 2] * y
                    zr[s, 1, c] = sections[s, 1] * u - sections[s, 3] * y
                else:
                    zr[s, 0, c] = zr[s, 1, c] - sections[s, 2] * y
                    zr[s, 1, c] = -u - sections[s, 3] * y
            x[r, c0 + c] = y
        r += step
    _store_state(z, zr)


@njit(cache=True, fastmath=True, inline="always")
def _blocks(x, r, m, step, b0, b1, z, sections, gain, prefetch_row, general):
    # The section formula chosen once per call, outside the loops.
    if general:
        for b in range(b0, b1):
            _block_rows(x, r, m, step, b * LANES, z[b], sections, gain, prefetch_row, True)
    else:
        for b in range(b0, b1):
            _block_rows(x, r, m, step, b * LANES, z[b], sections, gain, prefetch_row, False)


@njit(cache=True, inline="always")
def _copy(src, dst):
    # The shorter length; loops from 0 on 1D slices: SIMD, no negative-index handling.
    for c in range(min(len(src), len(dst))):
        dst[c] = src[c]


@njit(cache=True, fastmath=True)
def _run(src, dst, r0, n_rows, step, z, coefficients, gains, general, b0, b1, tile_rows,
         xt):
    """One pass of the whole cascade over rows ``r0 + i * step`` (``i < n_rows``).

    Channel blocks ``b0:b1`` (the last one may be partial), state `z`
    (n_groups, n_blocks, GROUP, 2, LANES), sections `coefficients`
    (n_groups, GROUP, 4); ``gains[g]`` multiplies the input of group `g`. If
    `dst` is not `src`, rows are copied into `dst` first, a tile at a time
    (while in cache); otherwise they are filtered in place. Groups after the
    first read the float32 output of the previous one.

    `xt`: None, or (backward pass from the last row to row 0, ``step == -1``)
    the output channel-major, ``xt[c, r] = dst[r, c]``: the filtered rows are
    transposed by panels of `_panel_rows` while in L2 (None: a separate
    compilation, without this code).
    """
    copy = src.ctypes.data != dst.ctypes.data
    n_channels = dst.shape[1]
    n_groups = coefficients.shape[0]
    # A group's coefficients, copied into a stack array: values that cannot
    # alias the traces, kept in registers across the blocks.
    sections = carray(_stack_array(_SECTIONS_SIZE, coefficients.dtype), (GROUP, 4))
    full = min(b1, n_channels // LANES)  # blocks b0:full are whole
    c_lo, c_hi = b0 * LANES, min(b1 * LANES, n_channels)
    # Partial last block: filtered in a zero-padded copy.
    padded = carray(_stack_array(_PADDED_SIZE, dst.dtype), (MAX_TILE_ROWS, LANES))
    padded[:] = 0
    panel = _panel_rows(n_channels)
    pending = r0  # xt: rows [lo, pending] filtered, not yet transposed
    for i0 in range(0, n_rows, tile_rows):
        m = min(tile_rows, n_rows - i0)
        r = r0 + i0 * step
        # First row of the next tile, kept so that its m rows are in the array.
        if step > 0:
            following = min(r + m, dst.shape[0] - m)
        else:
            following = max(r - m, m - 1)
        if copy:
            for k in range(m):
                _copy(src[r + k * step, c_lo:c_hi], dst[r + k * step, c_lo:c_hi])
        partial = full < b1
        if partial:
            c0 = full * LANES
            for k in range(m):
                _copy(dst[r + k * step, c0:], padded[k])
        for g in range(n_groups):
            for s in range(GROUP):
                for k in range(4):
                    sections[s, k] = coefficients[g, s, k]
            gain = gains[g]
            _blocks(dst, r, m, step, b0, full, z[g], sections, gain, following, general)
            if partial:
                _blocks(padded, 0, m, 1, 0, 1, z[g, full:], sections, gain, 0, general)
        if partial:
            for k in range(m):
                _copy(padded[k], dst[r + k * step, c0:])
        if xt is not None:
            lo = r - m + 1
            # Panels start on a multiple of LANES rows: whole blocks; the last one is
            # what is left.
            start = lo if lo == 0 else -(-lo // LANES) * LANES
            if pending - start + 1 >= panel or lo == 0:
                _transpose_rows(dst, xt, start, pending + 1, c_lo, c_hi)
                pending = start - 1


@njit(cache=True, fastmath=True, inline="always")
def _init_state(z, zi, first, scale, b0, b1):
    # Steady state of a step of height `scale * first` (sosfilt_zi * x0 in sosfiltfilt).
    n_channels = first.shape[0]
    for g in range(z.shape[0]):
        for b in range(b0, b1):
            for s in range(GROUP):
                for j in range(2):
                    for c in range(LANES):
                        ch = b * LANES + c
                        x0 = scale * first[ch] if ch < n_channels else 0.0
                        z[g, b, s, j, c] = zi[g, s, j] * x0


@njit(cache=True, fastmath=True)
def _filtfilt_blocks(x, y, left, right, z, kernel, b0, b1, tile_rows, xt):
    """Forward-backward filter channel blocks ``b0:b1`` of `x` into `y`.

    `left` and `right` are the odd extensions (sosfiltfilt's padding; they
    are overwritten). Only the forward output over the right extension is
    kept: the backward pass starts there, and its output over the left
    extension is not needed, so it stops at row 0. With `xt` (not None), the
    backward pass also writes the result channel-major there (`_run`).
    """
    coefficients, zi, gains, general = kernel
    n = x.shape[0]
    edge = left.shape[0]
    # Typed int64, not literals: one compiled `_run` serves every call.
    start, forward, backward = np.int64(0), np.int64(1), np.int64(-1)
    rest = (b0, b1, tile_rows)
    # Forward over [left, x, right] (the squared gain of the two passes is
    # applied once, at its input: gains[0]).
    fwd = (z, coefficients, gains[0], general)
    if edge > 0:  # two calls: `left` is float32, `x` may be int16
        _init_state(z, zi, left[0], gains[0, 0], b0, b1)
    else:
        _init_state(z, zi, x[0], gains[0, 0], b0, b1)
    _run(left, left, start, edge, forward, *fwd, *rest, None)
    _run(x, y, start, n, forward, *fwd, *rest, None)
    _run(right, right, start, edge, forward, *fwd, *rest, None)
    # Backward from the end of the right extension; initial state from the
    # last forward output.
    bwd = (z, coefficients, gains[1], general)
    _init_state(z, zi, right[edge - 1] if edge > 0 else y[n - 1], gains[1, 0], b0, b1)
    _run(right, right, edge - 1, edge, backward, *bwd, *rest, None)
    _run(y, y, n - 1, n, backward, *bwd, *rest, xt)


@njit(cache=True)
def _odd_extensions(x, edge):
    # ext[i] = 2 x[0] - x[edge - i] on the left, 2 x[n-1] - x[n-2-j] on the right.
    n, n_channels = x.shape
    left = np.empty((edge, n_channels), np.float32)
    right = np.empty((edge, n_channels), np.float32)
    for i in range(edge):
        for c in range(n_channels):
            left[i, c] = 2.0 * np.float64(x[0, c]) - x[edge - i, c]
            right[i, c] = 2.0 * np.float64(x[n - 1, c]) - x[n - 2 - i, c]
    return left, right


@njit(cache=True, parallel=True)
def _filtfilt_parallel(x, y, left, right, z, kernel, shares, tile_rows, xt):
    # Thread t filters the channel blocks shares[t]:shares[t + 1].
    for t in prange(len(shares) - 1):
        _filtfilt_blocks(x, y, left, right, z, kernel, shares[t], shares[t + 1], tile_rows, xt)


def _tile_rows(n_channels: int) -> int:
    """Rows per tile: as many as L1 holds without conflicts, at most MAX_TILE_ROWS.

    A block reads one cache line per row, rows ``4 * n_channels`` bytes apart.
    L1 caches map addresses 4 KiB apart to the same set (of 8 to 12 ways): at
    1024 channels every row of a block lands in one set, and more than ~6 rows
    evict each other (measured: 6 rows 13 ms, 8 rows 17 ms, 16 rows 31 ms per
    30,900 x 1024 float32 chunk). Other strides spread rows over more sets.
    """
    stride = 4 * n_channels
    sets = 4096 // math.gcd(stride, 4096)  # distinct 4 KiB offsets of the rows
    return int(min(MAX_TILE_ROWS, 6 * max(1, min(sets, 64))))


def filtfilt(x: np.ndarray, y: np.ndarray, kernel: tuple, padlen: int, n_threads: int = 1,
             xt: np.ndarray | None = None):
    """Zero-phase filter `x` into `y` (C-contiguous 2D: `y` float32, `x` float32 or
    int16, converted as it is copied into `y`; `y` may be `x`).

    With `xt` (C-contiguous float32, ``(n_channels, n_samples)``), the result
    also goes there, channel-major (the same values as `y`, bit for bit), for
    much less than a transpose of `y` afterwards (see `_run`).

    `kernel` is ``(coefficients, zi, gains, general)`` as made by
    `phy_detect.filtering._kernel_design`, `padlen` the length of the odd
    extensions (``len(x) > padlen``). With `n_threads` > 1 the channel blocks
    are split between numba threads.
    """
    n_channels = x.shape[1]
    if xt is not None and not (xt.dtype == np.float32 and xt.flags.c_contiguous
                               and xt.shape == x.shape[::-1]):
        raise ValueError("filtfilt: xt must be C-contiguous float32, (n_channels, n_samples).")
    if n_channels == 0:
        return
    n_blocks = -(-n_channels // LANES)
    left, right = _odd_extensions(x, padlen)  # before x is overwritten (in place)
    coefficients = kernel[0]
    z = np.empty((coefficients.shape[0], n_blocks, GROUP, 2, LANES), coefficients.dtype)
    tiles = _tile_rows(n_channels)
    threads = min(n_threads, n_blocks)
    if threads == 1:
        _filtfilt_blocks(x, y, left, right, z, kernel, 0, n_blocks, tiles, xt)
        return
    # Thread t filters blocks shares[t]:shares[t + 1].
    shares = np.linspace(0, n_blocks, threads + 1).round().astype(np.int64)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        _filtfilt_parallel(x, y, left, right, z, kernel, shares, tiles, xt)
    finally:
        numba.set_num_threads(previous)
