"""Per-channel principal components of spike waveforms (SpikeDetekt's features).

SpikeDetekt computes one set of PCs per channel, from the waveforms of the
spikes that are *unmasked* on that channel (mask > 0), so that each channel's
PCs describe what spikes look like where they are actually seen. Channels
with few unmasked spikes would get a noisy (or singular) covariance, so every
channel's covariance is regularised towards the covariance of all unmasked
(spike, channel) waveforms pooled over channels, with weight ``1 / n_spikes``
(klusta meant to do this; its released code regularises with the identity
because of a typo, which only matters on nearly empty channels):

    cov_c = cov(unmasked waveforms on c) + cov_pooled / n_spikes

Masks are used as binary weights (unmasked if > 0), as in SpikeDetekt.

Speed at 1000+ channels: the waveforms ``(n, n_samples, n_channels)`` are
never transposed or copied. The per-channel first and second moments are
accumulated in numba, over the unmasked ``(spike, channel)`` pairs when masks
are sparse (the usual case: a spike is seen on a few channels), or densely
with the channel axis innermost (SIMD) otherwise; then all the small
``(n_samples, n_samples)`` eigenproblems are solved in one batched call.
The projection is a numba loop with the channel axis innermost as well.

Shapes: `pcs` is ``(n_pcs, n_samples, n_channels)``; `transform` returns
features ``(n_spikes, n_channels, n_pcs)`` (channel-major once reshaped to
``(n_spikes, n_channels * n_pcs)``: the .kwx layout, where the features of
channel `c` are columns ``c * n_pcs .. c * n_pcs + n_pcs - 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from phy_core.descriptors import Stage
from phy_core.errors import PhyError

__all__ = ["PCA", "PCAError", "PCAStatistics", "STAGES"]


class PCAError(PhyError, ValueError):
    """Invalid input to the PCA stage."""


def _check_waveforms(waveforms, masks=None) -> tuple[np.ndarray, np.ndarray | None]:
    waveforms = np.asarray(waveforms)
    if waveforms.ndim != 3:
        raise PCAError(f"PCA: expected waveforms of shape (n_spikes, n_samples, n_channels), "
                       f"got {waveforms.shape}.")
    if masks is not None:
        masks = np.asarray(masks)
        expected = (waveforms.shape[0], waveforms.shape[2])
        if masks.shape != expected:
            raise PCAError(f"PCA: masks have shape {masks.shape}, expected {expected} "
                           "(n_spikes, n_channels) to match the waveforms.")
    return waveforms, masks


@njit(cache=True)
def _moments_sparse(waveforms, spikes, channels, n_channels):
    """Per-channel count, sum and sum of outer products over (spike, channel) pairs."""
    n_s = waveforms.shape[1]
    count = np.zeros(n_channels)
    s1 = np.zeros((n_channels, n_s))
    s2 = np.zeros((n_channels, n_s, n_s))
    x = np.empty(n_s)
    for k in range(spikes.shape[0]):
        i = spikes[k]
        c = channels[k]
        for a in range(n_s):
            x[a] = waveforms[i, a, c]
        count[c] += 1
        for a in range(n_s):
            s1[c, a] += x[a]
            for b in range(a + 1):
                s2[c, a, b] += x[a] * x[b]
    return count, s1, s2


@njit(cache=True)
def _moments_dense(waveforms, unmasked):
    """Same as `_moments_sparse` for all pairs, channel axis innermost (vectorised)."""
    n, n_s, n_c = waveforms.shape
    count = np.zeros(n_c)
    s1 = np.zeros((n_s, n_c))
    s2 = np.zeros((n_s, n_s, n_c))
    for i in range(n):
        m = unmasked[i]
        for c in range(n_c):
            count[c] += m[c]
        for a in range(n_s):
            wa = waveforms[i, a]
            for c in range(n_c):
                s1[a, c] += m[c] * wa[c]
            for b in range(a + 1):
                wb = waveforms[i, b]
                for c in range(n_c):
                    s2[a, b, c] += m[c] * wa[c] * wb[c]
    return count, s1.T.copy(), s2.transpose(2, 0, 1).copy()


def _covariances(count, s1, s2) -> np.ndarray:
    """Sample covariances from moments (lower triangles of `s2` filled); NaN if count < 2."""
    s2 = np.tril(s2) + np.swapaxes(np.tril(s2, -1), -1, -2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / count[..., None]
        cov = (s2 - count[..., None, None] * mean[..., :, None] * mean[..., None, :]) / \
            (count[..., None, None] - 1)
    cov[count < 2] = np.nan
    return cov


@njit(cache=True, inline="always")
def _add_pair(values, k, c, x, count, s1, s2):
    """Add pair `k` (a waveform ``values[k]`` on channel `c`) to the moments of `c`."""
    n_s = values.shape[1]
    for a in range(n_s):
        x[a] = values[k, a]
    count[c] += 1
    for a in range(n_s):
        s1[c, a] += x[a]
        for b in range(a + 1):
            s2[c, a, b] += x[a] * x[b]


@njit(cache=True)
def _moments_pairs(values, channels, n_channels):
    """`_moments_sparse` on the (spike, channel) pairs' waveforms ``values`` (P, n_samples).

    Same arithmetic in the same order as `_moments_sparse` over the same pairs,
    so the moments are bit-identical.
    """
    n_s = values.shape[1]
    count = np.zeros(n_channels)
    s1 = np.zeros((n_channels, n_s))
    s2 = np.zeros((n_channels, n_s, n_s))
    x = np.empty(n_s)
    for k in range(values.shape[0]):
        _add_pair(values, k, channels[k], x, count, s1, s2)
    return count, s1, s2


@njit(cache=True, parallel=True)
def _moments_pairs_parallel(values, order, starts, n_channels):
    """`_moments_pairs`, channels in parallel: channel c's pairs are ``order[starts[c]:
    starts[c + 1]]`` (in their original order: the same sums, bit for bit)."""
    n_s = values.shape[1]
    count = np.zeros(n_channels)
    s1 = np.zeros((n_channels, n_s))
    s2 = np.zeros((n_channels, n_s, n_s))
    for c in prange(n_channels):
        x = np.empty(n_s)
        for j in range(starts[c], starts[c + 1]):
            _add_pair(values, order[j], c, x, count, s1, s2)
    return count, s1, s2


@njit(cache=True)
def _add_batch(values, channels, spikes, offset, chosen, count, s1, s2):
    """Add a batch's pairs of chosen spikes (``chosen[spikes[k] + offset]``) to the moments.

    The same steps, in the same order, as `_moments_pairs` on the chosen pairs
    of the batches concatenated: bit-identical sums, without the concatenation.
    """
    x = np.empty(values.shape[1])
    for k in range(values.shape[0]):
        if chosen[spikes[k] + offset]:
            _add_pair(values, k, channels[k], x, count, s1, s2)


@njit(cache=True, nogil=True)
def _add_batch_channels(values, channels, spikes, offset, chosen, count, s1, s2, first, stop):
    """`_add_batch` for the pairs on channels ``first..stop-1`` only, without the GIL:
    threads on disjoint channel ranges write disjoint moments, each channel's pairs in
    the same order (the same sums, bit for bit)."""
    x = np.empty(values.shape[1])
    for k in range(values.shape[0]):
        c = channels[k]
        if first <= c < stop and chosen[spikes[k] + offset]:
            _add_pair(values, k, c, x, count, s1, s2)


@dataclass
class PCAStatistics:
    """What `compute_pcs` needs from a batch of spikes: additive (``a + b``).

    ``n_spikes`` spikes; per channel, ``count`` unmasked spikes, ``s1``
    ``(n_channels, n_samples)`` the sum of their waveforms and ``s2``
    ``(n_channels, n_samples, n_samples)`` the sum of their outer products
    (lower triangles only), float64. A few MB at 1024 channels, whatever the
    number of spikes.
    """

    n_spikes: int
    count: np.ndarray
    s1: np.ndarray
    s2: np.ndarray

    def __add__(self, other: PCAStatistics) -> PCAStatistics:
        if self.s2.shape != other.s2.shape:
            raise PCAError(f"PCA: cannot add statistics of shapes {self.s2.shape} and "
                           f"{other.s2.shape} (n_channels, n_samples, n_samples).")
        return PCAStatistics(self.n_spikes + other.n_spikes, self.count + other.count,
                             self.s1 + other.s1, self.s2 + other.s2)

    @property
    def n_samples(self) -> int:
        return int(self.s2.shape[-1])


def compute_statistics(waveforms: np.ndarray,
                       masks: np.ndarray | None = None) -> PCAStatistics:
    """The `PCAStatistics` of waveforms ``(n_spikes, n_samples, n_channels)``."""
    waveforms, masks = _check_waveforms(waveforms, masks)
    n_spikes, _, n_channels = waveforms.shape
    waveforms = np.ascontiguousarray(waveforms, dtype=np.float32)
    unmasked = np.ones((n_spikes, n_channels), dtype=bool) if masks is None else masks > 0
    n_pairs = int(np.count_nonzero(unmasked))
    if n_pairs < 0.2 * unmasked.size:
        spikes, channels = np.nonzero(unmasked)
        count, s1, s2 = _moments_sparse(waveforms, spikes, channels, n_channels)
    else:
        count, s1, s2 = _moments_dense(waveforms, unmasked.astype(np.float32))
    return PCAStatistics(int(n_spikes), count, s1, s2)


#: From this many pairs on, `statistics_from_pairs` sums the channels in parallel.
_PARALLEL_MIN_PAIRS = 100_000


def statistics_from_pairs(values: np.ndarray, channels: np.ndarray, n_channels: int,
                          n_spikes: int) -> PCAStatistics:
    """The `PCAStatistics` of spikes given by their unmasked (spike, channel) pairs only.

    `values` ``(P, n_samples)`` are the waveforms of the pairs on their
    `channels` ``(P,)``, in ``np.nonzero(masks > 0)`` order (spike-major) for
    results bit-identical to `compute_statistics`'s sparse path. What a worker
    sends instead of the ``(n, n_samples, n_channels)`` waveforms.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    channels = np.ascontiguousarray(channels, dtype=np.int64)
    if values.ndim != 2 or channels.shape != (values.shape[0],):
        raise PCAError(f"PCA: expected pair waveforms (P, n_samples) and channels (P,), got "
                       f"{values.shape} and {channels.shape}.")
    if len(channels) and (channels.min() < 0 or channels.max() >= n_channels):
        raise PCAError(f"PCA: pair channels must be in 0..{n_channels - 1}.")
    if len(channels) < _PARALLEL_MIN_PAIRS:
        count, s1, s2 = _moments_pairs(values, channels, int(n_channels))
    else:
        # Many pairs (the runner's fit: ~1M at 1024 channels): channels on all cores.
        order = np.argsort(channels, kind="stable")
        starts = np.searchsorted(channels[order], np.arange(int(n_channels) + 1))
        count, s1, s2 = _moments_pairs_parallel(values, order, starts, int(n_channels))
    return PCAStatistics(int(n_spikes), count, s1, s2)


def statistics_from_pair_batches(batches, n_channels: int, n_spikes: int,
                                 selected: np.ndarray | None = None,
                                 n_threads: int = 1) -> PCAStatistics:
    """`statistics_from_pairs` of batches of pairs, concatenated, without concatenating them.

    `batches` yields ``(values, channels, spikes, n)``: a batch of `n` spikes,
    its pairs as `statistics_from_pairs` takes them, with their spikes
    numbered within the batch (0..n-1); batch after batch, the spikes are
    numbered on (`n_spikes` in all).
    Only the pairs of the spikes in `selected` (sorted indices among the
    `n_spikes`, e.g. `PCA.subsample`) are counted, if given; then
    ``PCAStatistics.n_spikes`` is their number. One thread, the pairs in the
    same order as `statistics_from_pairs` (serial or parallel, whose sums are
    the same): the same bits. What the runner's fit uses: the per-chunk pairs
    arrive in batches, and its cores are busy with the workers. With
    `n_threads` > 1, each of that many Python threads sums the pairs of a
    range of channels (about as many pairs each), the batches in order: the
    same bits, no numba thread pool.
    """
    moments = PairBatchMoments(n_channels, n_spikes, selected)
    if n_threads <= 1:
        for values, channels, spikes, n in batches:
            moments.add(values, channels, spikes, n)
        return moments.statistics()
    checked = [moments.add(values, channels, spikes, n, accumulate=False)
               for values, channels, spikes, n in batches]
    moments.add_by_channel_ranges(checked, int(n_threads))
    return moments.statistics()


class PairBatchMoments:
    """`statistics_from_pair_batches`, one batch at a time (`add`), as the batches arrive.

    With `n_spikes` None (the number of spikes not known yet), every spike
    counts (`selected` must be None): the runner adds the PCA excerpts'
    batches while it waits for the next ones, as long as the fit will take
    all their spikes (`PCA.subsample` None). The same sums in the same order
    as `statistics_from_pair_batches`: the same bits.
    """

    def __init__(self, n_channels: int, n_spikes: int | None = None,
                 selected: np.ndarray | None = None) -> None:
        self.n_channels = int(n_channels)
        self.n_spikes = None if n_spikes is None else int(n_spikes)
        self._chosen = None
        if self.n_spikes is not None:
            self._chosen = np.ones(self.n_spikes, dtype=np.bool_)
            if selected is not None:
                self._chosen[:] = False
                self._chosen[np.asarray(selected, dtype=np.int64)] = True
        elif selected is not None:
            raise PCAError("PCA: a selection of spikes needs their number (n_spikes).")
        self._offset = 0
        self._count = self._s1 = self._s2 = None

    def add(self, values, channels, spikes, n: int, accumulate: bool = True) -> tuple:
        """Add a batch of `n` spikes: its pairs' waveforms, channels and spikes (0..n-1).

        Returns the batch checked, with its offset among the spikes. Without
        `accumulate`, only checks it and counts its spikes: `add_by_channel_ranges`
        sums such batches later.
        """
        values = np.ascontiguousarray(values, dtype=np.float32)
        channels = np.ascontiguousarray(channels, dtype=np.int64)
        spikes = np.ascontiguousarray(spikes, dtype=np.int64)
        n, n_channels = int(n), self.n_channels
        if values.ndim != 2 or channels.shape != (values.shape[0],) \
                or spikes.shape != channels.shape:
            raise PCAError(f"PCA: expected pair waveforms (P, n_samples), channels (P,) and "
                           f"spikes (P,), got {values.shape}, {channels.shape} and "
                           f"{spikes.shape}.")
        if self._count is None:
            n_s = values.shape[1]
            self._count = np.zeros(n_channels)
            self._s1 = np.zeros((n_channels, n_s))
            self._s2 = np.zeros((n_channels, n_s, n_s))
        elif values.shape[1] != self._s1.shape[1]:
            raise PCAError(f"PCA: pair waveforms of {values.shape[1]} and "
                           f"{self._s1.shape[1]} samples.")
        if len(channels):
            if channels.min() < 0 or channels.max() >= n_channels:
                raise PCAError(f"PCA: pair channels must be in 0..{n_channels - 1}.")
            if spikes.min() < 0 or spikes.max() >= n:
                raise PCAError(f"PCA: pair spikes must be in 0..{n - 1}.")
        if self.n_spikes is not None and self._offset + n > self.n_spikes:
            raise PCAError(f"PCA: the batches hold more than {self.n_spikes} spikes.")
        checked = (values, channels, spikes, self._offset, n)
        if accumulate and len(channels):
            chosen, offset = (self._chosen, self._offset) if self._chosen is not None \
                else (np.ones(n, dtype=np.bool_), 0)
            _add_batch(values, channels, spikes, offset, chosen, self._count, self._s1,
                       self._s2)
        self._offset += n
        return checked

    def add_by_channel_ranges(self, checked: list, n_threads: int) -> None:
        """Sum batches checked by ``add(..., accumulate=False)``, in order, on `n_threads`
        threads, each the pairs of a range of channels (about as many pairs each)."""
        from concurrent.futures import ThreadPoolExecutor

        checked = [b for b in checked if len(b[1])]
        if not checked:
            return
        pairs = np.zeros(self.n_channels, dtype=np.int64)
        for _, channels, _, _, _ in checked:
            pairs += np.bincount(channels, minlength=self.n_channels)
        cumulative = np.cumsum(pairs)
        bounds = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, n_threads)
                                 / n_threads, side="right")
        edges = [0, *(int(b) for b in bounds), self.n_channels]

        def add_range(first: int, stop: int) -> None:
            for values, channels, spikes, offset, n in checked:
                chosen, at = (self._chosen, offset) if self._chosen is not None \
                    else (np.ones(n, dtype=np.bool_), 0)
                _add_batch_channels(values, channels, spikes, at, chosen, self._count,
                                    self._s1, self._s2, first, stop)

        ranges = [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
        with ThreadPoolExecutor(len(ranges), thread_name_prefix="phy-pca-fit") as pool:
            for future in [pool.submit(add_range, a, b) for a, b in ranges]:
                future.result()

    def statistics(self) -> PCAStatistics:
        """The `PCAStatistics` of the batches added (of their selected spikes)."""
        if self._count is None:
            raise PCAError("PCA: statistics_from_pair_batches needs at least one batch.")
        n = self._offset if self._chosen is None else int(self._chosen.sum())
        return PCAStatistics(n, self._count, self._s1, self._s2)


def warm_up_fit() -> None:
    """Load the kernel of `statistics_from_pair_batches` (the runner's fit) in this process.

    Its first call here loads numba's registries (importing scipy.linalg):
    ~0.4 s of CPU that the runner spends while it waits for its workers
    rather than during the fit, when they wait for it.
    """
    batch = (np.zeros((1, 2), np.float32), np.zeros(1, np.int64), np.zeros(1, np.int64), 1)
    statistics_from_pair_batches([batch], 1, 1)
    statistics_from_pair_batches([batch], 1, 1, n_threads=2)  # the fit of a subsample


def pcs_from_statistics(stats: PCAStatistics, n_pcs: int = 3) -> np.ndarray:
    """Per-channel PCs ``(n_pcs, n_samples, n_channels)`` float32 from `PCAStatistics`."""
    count, s1, s2, n_spikes = stats.count, stats.s1, stats.s2, stats.n_spikes
    n_samples = stats.n_samples
    if not 1 <= n_pcs <= n_samples:
        raise PCAError(f"PCA: n_pcs must be in 1..{n_samples} (the waveform length), "
                       f"got {n_pcs}.")
    # Regularisation: the covariance of all unmasked waveforms, pooled over channels.
    pooled = _covariances(count.sum(), s1.sum(axis=0), s2.sum(axis=0))
    cov_reg = np.eye(n_samples) if np.isnan(pooled).any() else pooled
    covs = _covariances(count, s1, s2)
    # A channel with fewer than 2 unmasked spikes gets the regulariser alone.
    covs[count < 2] = 0.0
    covs += cov_reg / max(n_spikes, 1)

    _, vecs = np.linalg.eigh(covs)  # batched, ascending eigenvalues
    # vecs[c, :, j] is eigenvector j; take the top n_pcs in decreasing order.
    top = vecs[:, :, ::-1][:, :, :n_pcs]  # (C, n_samples, n_pcs)
    idx = np.abs(top).argmax(axis=1)  # (C, n_pcs)
    signs = np.sign(np.take_along_axis(top, idx[:, None, :], axis=1))
    signs[signs == 0] = 1
    top = top * signs
    return np.ascontiguousarray(np.transpose(top, (2, 1, 0)), dtype=np.float32)


def compute_pcs(waveforms: np.ndarray, n_pcs: int = 3,
                masks: np.ndarray | None = None) -> np.ndarray:
    """Per-channel PCs, ``(n_pcs, n_samples, n_channels)`` float32.

    Eigenvectors in decreasing eigenvalue order; the sign of each is fixed
    (largest-magnitude entry positive) so that results are reproducible.
    """
    waveforms, masks = _check_waveforms(waveforms, masks)
    n_samples = waveforms.shape[1]
    if not 1 <= n_pcs <= n_samples:
        raise PCAError(f"PCA: n_pcs must be in 1..{n_samples} (the waveform length), "
                       f"got {n_pcs}.")
    return pcs_from_statistics(compute_statistics(waveforms, masks), n_pcs)


@njit(cache=True)
def _project(waveforms, pcs, out):
    """out[n, f, c] = sum_s waveforms[n, s, c] * pcs[f, s, c] (channel axis innermost)."""
    n, n_s, n_c = waveforms.shape
    n_f = pcs.shape[0]
    for i in range(n):
        for f in range(n_f):
            o = out[i, f]
            for c in range(n_c):
                o[c] = 0.0
            for s in range(n_s):
                w = waveforms[i, s]
                p = pcs[f, s]
                for c in range(n_c):
                    o[c] += w[c] * p[c]


def project_pcs(waveforms: np.ndarray, pcs: np.ndarray) -> np.ndarray:
    """Features ``(n_spikes, n_channels, n_pcs)`` float32 of waveforms on per-channel PCs."""
    waveforms, _ = _check_waveforms(waveforms)
    pcs = np.asarray(pcs)
    if pcs.ndim != 3 or pcs.shape[1:] != waveforms.shape[1:]:
        raise PCAError(f"PCA: PCs of shape {pcs.shape} do not match waveforms of shape "
                       f"{waveforms.shape} (expected (n_pcs, n_samples, n_channels)).")
    w = np.ascontiguousarray(waveforms, dtype=np.float32)
    out = np.empty((w.shape[0], pcs.shape[0], w.shape[2]), dtype=np.float32)
    _project(w, np.ascontiguousarray(pcs, dtype=np.float32), out)
    return np.ascontiguousarray(np.transpose(out, (0, 2, 1)))


class PCA:
    """Apply PCA to waveforms (one set of PCs per channel).

    Parameters
    ----------
    n_pcs : int
        Number of PCs (features) per channel.
    pca_n_waveforms_max : int
        `fit` uses at most this many spikes, drawn at random (with `seed`).
    seed : int
        Seed of the subsampling.
    """

    def __init__(self, n_pcs: int = 3, pca_n_waveforms_max: int = 10000, seed: int = 0) -> None:
        if isinstance(n_pcs, bool) or int(n_pcs) != n_pcs or n_pcs < 1:
            raise PCAError(f"PCA: n_pcs must be an integer >= 1, got {n_pcs!r}.")
        if int(pca_n_waveforms_max) < 2:
            raise PCAError("PCA: pca_n_waveforms_max must be >= 2.")
        self._n_pcs = int(n_pcs)
        self._n_max = int(pca_n_waveforms_max)
        self._seed = seed
        self._pcs: np.ndarray | None = None

    @property
    def pcs(self) -> np.ndarray | None:
        """The fitted PCs, ``(n_pcs, n_samples, n_channels)``, or None."""
        return self._pcs

    def fit(self, waveforms: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Compute the PCs of waveforms.

        Parameters
        ----------
        waveforms : ndarray
            Shape: ``(n_spikes, n_samples, n_channels)``.
        masks : ndarray
            Shape: ``(n_spikes, n_channels)``.

        Returns
        -------
        pcs : ndarray
            Shape: ``(n_pcs, n_samples, n_channels)``, float32.
        """
        waveforms, masks = _check_waveforms(waveforms, masks)
        idx = self.subsample(waveforms.shape[0])
        if idx is not None:
            waveforms = waveforms[idx]
            masks = masks[idx] if masks is not None else None
        self._pcs = compute_pcs(waveforms, n_pcs=self._n_pcs, masks=masks)
        return self._pcs

    def subsample(self, n_spikes: int) -> np.ndarray | None:
        """The sorted indices of the spikes `fit` uses among `n_spikes`, or None for all.

        At most `pca_n_waveforms_max`, drawn at random with the seed: a runner
        that holds only the statistics of its batches uses it to pick the
        same spikes as `fit` on their concatenation.
        """
        n_spikes = int(n_spikes)
        if n_spikes <= self._n_max:
            return None
        rng = np.random.default_rng(self._seed)
        return np.sort(rng.choice(n_spikes, self._n_max, replace=False))

    @staticmethod
    def statistics(waveforms: np.ndarray, masks: np.ndarray | None = None) -> PCAStatistics:
        """Additive statistics of a batch of spikes (no subsampling): see `fit_statistics`."""
        return compute_statistics(waveforms, masks)

    def fit_statistics(self, statistics) -> np.ndarray:
        """Compute the PCs from the `PCAStatistics` of one or several batches.

        ``fit_statistics([statistics(w1, m1), statistics(w2, m2)])`` gives the
        PCs of ``fit`` on the concatenated batches when they hold at most
        `pca_n_waveforms_max` spikes (for more, select with `subsample`
        first): exactly for one batch, to float64 rounding of the summed
        moments otherwise. No subsampling happens here.
        """
        if isinstance(statistics, PCAStatistics):
            statistics = [statistics]
        statistics = list(statistics)
        if not statistics:
            raise PCAError("PCA: fit_statistics needs the statistics of at least one batch.")
        total = statistics[0]
        for other in statistics[1:]:
            total = total + other
        self._pcs = pcs_from_statistics(total, self._n_pcs)
        return self._pcs

    def transform(self, waveforms: np.ndarray, pcs: np.ndarray | None = None) -> np.ndarray:
        """Project waveforms on the PCs.

        Returns features of shape ``(n_spikes, n_channels, n_pcs)`` float32;
        ``features.reshape(n_spikes, -1)`` is the channel-major .kwx layout.
        """
        pcs = self._pcs if pcs is None else pcs
        if pcs is None:
            raise PCAError("PCA: call fit() before transform(), or pass the PCs.")
        return project_pcs(waveforms, pcs)


def _make_pca(**parameters) -> PCA:
    return PCA(**parameters)


STAGES = [
    Stage(
        name="pca",
        kind="features",
        description="Per-channel PCA of the waveforms on unmasked channels (SpikeDetekt).",
        factory=_make_pca,
        parameters={"n_pcs": 3, "pca_n_waveforms_max": 10000, "seed": 0},
        requires=("extractor",),
    )
]
