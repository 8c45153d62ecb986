"""Sparse masked data for the masked EM algorithm (Kadir, Goodman & Harris, 2014).

Each spike has a feature vector ``x`` and a mask ``m`` in ``[0, 1]`` per feature.
Features are first scaled to ``[0, 1]`` (per feature, by min/max over all
spikes, as KlustaKwik 2 does), which gives the noise cluster its uniform
density of 1. The *noise distribution* of feature ``f`` is estimated from the
masked parts of the data: mean and variance of ``x_f`` weighted by ``1 - m_f``.

The algorithm works on the *corrected* data: the expected value of each feature
when masked entries are drawn from the noise distribution,
``y = m x + (1 - m) noise_mean``, and its variance, the correction term
``eta = m (1 - m) (x - noise_mean)**2 + (1 - m) noise_variance``.

Storage is sparse, as KlustaKwik 2's: only the entries with ``m > 0`` are kept,
in CSR form (spike ``i``'s entries are ``indptr[i]:indptr[i + 1]``), as float32
offsets from the fully masked values: ``dy = y - noise_mean = m (x - noise_mean)``
and ``deta = eta - noise_variance``; a masked entry has ``dy = deta = 0``. So
memory is proportional to the number of unmasked entries, not to
``n_spikes * n_features``, and the input is read once, in row blocks, from any
lazily row-sliceable array (numpy array, memmap, h5py dataset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phy_core.errors import PhyError

#: Bytes of float64 rows read at a time from the input (features plus masks).
BLOCK_BYTES = 8 << 20


class MaskedEMError(PhyError, ValueError):
    """Bad input to the masked EM algorithm."""


@dataclass
class MaskedData:
    """Normalised, corrected, sparse masked data (see the module docstring)."""

    noise_mean: np.ndarray  # (n_features,) float64, of the scaled features
    noise_variance: np.ndarray  # (n_features,) float64
    indptr: np.ndarray  # (n_spikes + 1,) int64
    indices: np.ndarray  # (n_entries,) int32, feature of each entry
    dy: np.ndarray  # (n_entries,) float32, y - noise_mean
    deta: np.ndarray  # (n_entries,) float32, eta - noise_variance
    masks: np.ndarray  # (n_entries,) float32, in (0, 1]
    float_num_unmasked: np.ndarray  # (n_spikes,) float64, sum of each spike's masks
    #: The scaling of the raw features to [0, 1] (min and max - min per feature), to
    #: prepare more rows the same way (`prepare_rows`); None for a `subset`.
    lo: np.ndarray | None = None
    span: np.ndarray | None = None

    @property
    def n_spikes(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_features(self) -> int:
        return len(self.noise_mean)

    @property
    def n_unmasked(self) -> np.ndarray:
        """Number of unmasked features (mask > 0) of each spike."""
        return np.diff(self.indptr)

    def unmasked(self, spike: int) -> np.ndarray:
        """Features with mask > 0 of one spike."""
        return self.indices[self.indptr[spike]:self.indptr[spike + 1]]

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """Corrected data ``y`` and correction ``eta`` as dense arrays (for tests only)."""
        n, f = self.n_spikes, self.n_features
        y = np.tile(self.noise_mean, (n, 1))
        eta = np.tile(self.noise_variance, (n, 1))
        rows = np.repeat(np.arange(n), self.n_unmasked)
        y[rows, self.indices] += self.dy
        eta[rows, self.indices] += self.deta
        return y.reshape(n, f), eta.reshape(n, f)


def subset(data: MaskedData, spikes: np.ndarray) -> MaskedData:
    """The data of some spikes (same noise statistics)."""
    from .kernels import gather_rows

    spikes = np.asarray(spikes, dtype=np.int64)
    counts = np.diff(data.indptr)[spikes]
    indptr = np.zeros(len(spikes) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    entries = gather_rows(data.indptr, spikes, indptr)
    return MaskedData(data.noise_mean, data.noise_variance, indptr, data.indices[entries],
                      data.dy[entries], data.deta[entries], data.masks[entries],
                      data.float_num_unmasked[spikes])


def _shape(array, what: str) -> tuple[int, ...]:
    shape = getattr(array, "shape", None)
    if shape is None or not hasattr(array, "__getitem__"):
        raise MaskedEMError(f"{what} must be an array or a row-sliceable array-like with a "
                            f"shape, got {type(array).__name__}.")
    return tuple(int(s) for s in shape)


def _check_shapes(features, masks) -> tuple[int, int, int]:
    """``(n_spikes, n_features, n_mask_columns)``, or an error naming what is wrong."""
    fshape, mshape = _shape(features, "features"), _shape(masks, "masks")
    if len(fshape) != 2:
        raise MaskedEMError(f"features have shape {fshape}, expected 2 dimensions "
                            "(n_spikes, n_features).")
    n, n_features = fshape
    if len(mshape) != 2 or mshape[0] != n:
        raise MaskedEMError(f"masks have shape {mshape}, expected ({n}, n_channels) or "
                            f"({n}, {n_features}).")
    if mshape[1] != n_features and (mshape[1] == 0 or n_features % mshape[1]):
        raise MaskedEMError(f"{n_features} features are not a multiple of the "
                            f"{mshape[1]} mask columns.")
    return n, n_features, mshape[1]


def _read(array, start: int, stop: int, n_columns: int, what: str) -> np.ndarray:
    block = np.asarray(array[start:stop], dtype=np.float64)
    if block.shape != (stop - start, n_columns):
        raise MaskedEMError(f"{what}[{start}:{stop}] has shape {block.shape}, expected "
                            f"({stop - start}, {n_columns}).")
    return block


def _finish_noise(acc, lo, hi):
    """Noise mean and variance of the scaled features from the accumulated sums."""
    shift, sw, swx, swx2, s1, sx, sx2 = acc
    span = np.where(hi > lo, hi - lo, 1.0)
    none = sw <= 0  # a feature never masked: the statistics of all its values
    w = np.where(none, s1, sw)
    m1 = np.where(none, sx, swx) / np.maximum(w, 1e-300)
    m2 = np.where(none, sx2, swx2) / np.maximum(w, 1e-300)
    mean = (shift + m1 - lo) / span
    # A floor so that covariances stay positive definite on constant features.
    var = np.maximum((m2 - m1 ** 2) / span ** 2, 1e-8)
    return mean, var, span


def _block_rows(n_features: int, n_mask_columns: int, block_bytes: int) -> int:
    return max(1, int(block_bytes) // (8 * (n_features + n_mask_columns) or 8))


def _scan(features, masks, start, stop, n_features, n_mask_columns, fpc, shift, lo, hi, sums):
    """Read rows ``start:stop``, accumulate their statistics, and extract their unmasked
    entries: ``(counts, indices, raw values, masks, mask sums)``."""
    from .kernels import scan_block

    fb = _read(features, start, stop, n_features, "features")
    mb = _read(masks, start, stop, n_mask_columns, "masks")
    if start == 0:
        shift[:] = fb[0]
    status = np.zeros(2, dtype=np.int64)
    counts = np.count_nonzero(mb > 0, axis=1) * fpc
    indptr = np.zeros(stop - start + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx = np.empty(indptr[-1], dtype=np.int32)
    x = np.empty(indptr[-1], dtype=np.float32)
    m = np.empty(indptr[-1], dtype=np.float32)
    mask_sums = np.empty(stop - start)
    scan_block(fb, mb, fpc, shift, lo, hi, sums, indptr, idx, x, m, mask_sums, status)
    if status[0]:
        raise MaskedEMError(f"features and masks must be finite numbers (row "
                            f"{start + status[1]} is not).")
    if mb.size and (mb.min() < 0 or mb.max() > 1):
        raise MaskedEMError(f"masks must be in [0, 1], found values in "
                            f"[{mb.min()}, {mb.max()}] (rows {start} to {stop}).")
    return counts, indptr, idx, x, m, mask_sums


def _keep_rows(scanned, rows):
    """The entries of the rows `rows` (indices into the block) of a `_scan` result."""
    from .kernels import gather_rows

    counts, indptr, idx, x, m, mask_sums = scanned
    new_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts[rows], out=new_indptr[1:])
    entries = gather_rows(indptr, rows, new_indptr)
    return counts[rows], new_indptr, idx[entries], x[entries], m[entries], mask_sums[rows]


def prepare_rows(features, masks, start: int, stop: int, reference: MaskedData) -> MaskedData:
    """Rows ``start:stop`` prepared as `reference` was (its scaling and noise statistics:
    the rows of the spikes a model fitted on `reference` assigns)."""
    from .kernels import correct_entries

    if reference.lo is None or reference.span is None:
        raise ValueError("the reference data have no scaling (a subset?)")
    n, n_features, n_mask_columns = _check_shapes(features, masks)
    fpc = n_features // n_mask_columns if n_mask_columns else 1
    # Statistics of these rows are not needed: scratch accumulators.
    lo, hi = np.full(n_features, np.inf), np.full(n_features, -np.inf)
    shift, sums = np.zeros(n_features), np.zeros((6, n_features))
    _, indptr, idx, x, m, mask_sums = _scan(features, masks, start, stop, n_features,
                                            n_mask_columns, fpc, shift, lo, hi, sums)
    deta = np.empty(len(x), dtype=np.float32)
    correct_entries(idx, x, m, reference.lo, reference.span, reference.noise_mean,
                    reference.noise_variance, deta)
    return MaskedData(reference.noise_mean, reference.noise_variance, indptr, idx, x, deta, m,
                      mask_sums, reference.lo, reference.span)


def prepare_data(features, masks, block_bytes: int = BLOCK_BYTES,
                 rows: np.ndarray | None = None) -> MaskedData:
    """Check, normalise, correct and sparsify features and masks, reading row blocks.

    Parameters
    ----------
    features : array-like (n_spikes, n_features)
        A numpy array or anything with ``.shape`` whose ``[start:stop]`` gives a
        numpy array of rows (np.memmap, h5py dataset, ...); read once, in blocks.
    masks : array-like (n_spikes, n_channels) or (n_spikes, n_features), in [0, 1]
        Per-channel masks apply to the channel's features (channel-major
        features, ``channel * n_features_per_channel + k``, as in Kwik files).
    block_bytes : int
        Approximate size of the float64 rows read at a time.
    rows : int array or None
        Keep only these rows (increasing): the scaling and the noise statistics are
        still those of all the rows, so that other rows can be prepared the same way
        later (`prepare_rows`), and memory is that of the rows kept.
    """
    from .kernels import correct_entries

    n, n_features, n_mask_columns = _check_shapes(features, masks)
    fpc = n_features // n_mask_columns if n_mask_columns else 1
    block = _block_rows(n_features, n_mask_columns, block_bytes)
    keep = None if rows is None else np.asarray(rows, dtype=np.int64)
    if keep is not None and len(keep) and (keep[0] < 0 or keep[-1] >= n
                                           or np.any(np.diff(keep) <= 0)):
        raise MaskedEMError(f"rows to keep must be increasing, in [0, {n}).")
    lo = np.full(n_features, np.inf)
    hi = np.full(n_features, -np.inf)
    shift = np.zeros(n_features)
    sums = np.zeros((6, n_features))  # sw, swx, swx2, s1, sx, sx2 (x - shift)
    # Per block: unmasked entries per row, their features, raw values, masks; mask sums.
    parts: tuple[list, ...] = ([], [], [], [], [])
    for start in range(0, n, block):
        stop = min(n, start + block)
        scanned = _scan(features, masks, start, stop, n_features, n_mask_columns, fpc, shift,
                        lo, hi, sums)
        if keep is not None:
            first, last = np.searchsorted(keep, [start, stop])
            scanned = _keep_rows(scanned, keep[first:last] - start)
        counts, _, idx, x, m, mask_sums = scanned
        for part, value in zip(parts, (counts, idx, x, m, mask_sums)):
            part.append(value)
        del scanned
    if n == 0:
        lo[:], hi[:] = 0.0, 1.0
    mean, var, span = _finish_noise((shift, *sums), lo, hi)
    # One array at a time, so that the blocks and the whole coexist for one array only.
    counts, idx, x, m, unmasked = (_concatenate(part, dtype) for part, dtype in zip(
        parts, (np.int64, np.int32, np.float32, np.float32, np.float64)))
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    # The corrected values: dy overwrites the raw values.
    deta = np.empty(len(x), dtype=np.float32)
    correct_entries(idx, x, m, lo, span, mean, var, deta)
    return MaskedData(mean, var, indptr, idx, x, deta, m, unmasked, lo, span)


def _concatenate(blocks: list, dtype) -> np.ndarray:
    """Concatenate and empty a list of arrays."""
    out = np.concatenate(blocks).astype(dtype, copy=False) if blocks else np.zeros(0, dtype)
    blocks.clear()
    return out
