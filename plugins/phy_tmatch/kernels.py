"""Numba kernels of the template matching: projections, cross-correlations, pursuit, medians.

Conventions (shared by every kernel here)
-----------------------------------------
A template ``k`` is low rank and sparse: on its channels ``idx[ptr[k]:ptr[k+1]]``
it is ``T_k(tau, c) = sum_r temporal[k, r, tau] * spatial[j, r]`` (``j`` the
row of channel ``c`` in the flat ``spatial`` array), ``tau`` in ``0 .. n_t - 1``.
A spike of template ``k`` with amplitude ``a`` *starting* at sample ``s`` adds
``a T_k(t - s, c)`` to the traces. Its *projection template* ``P_k`` has the
same temporal components and its own channels and spatial components
(`phy_tmatch.whitening`: ``T_k`` times the inverse noise covariance of a
neighbourhood, so that correlated noise is discounted; or ``T_k`` itself).
The projection of the traces ``x`` on template ``k`` at start ``s`` is
``B[k, s] = sum_{tau, c} P_k(tau, c) x(s + tau, c)``, and the energy of a unit
spike is ``|T_k|^2 = <P_k, T_k>`` (the metric of the inverse covariance).

The pursuit
-----------
Removing ``a T_k`` at ``s`` lowers the residual energy by
``score = 2 a B - a^2 |T_k|^2``, maximal at ``a* = B / |T_k|^2``, which is clipped
to ``[amin, amax]``. An entry ``(k, s)`` is *eligible* when

- ``B / sigma_k >= z_threshold``: its projection stands out of the projection
  of noise on that template (``sigma_k``, measured);
- ``a*`` lies in ``[alo_k, ahi_k]``, the amplitude range widened by the noise
  of the estimate (``amin - tol * sigma_k / |T_k|^2`` to ``amax + ...``): a unit's
  spikes have about its mean amplitude, so a template neither takes the much
  larger spike of a unit that has no template (which it would otherwise
  partly explain, and leave a residual that others take), nor a fraction of a
  neighbour's spike;
- its score is positive, and no accepted spike of ``k`` lies within the
  refractory period.

Each round accepts every eligible entry that beats, in the order (score, then
earlier start, then lower template), every other eligible entry of an
*interacting* template (itself, and every template with a channel of its
projection template on this one's channels, or the converse) less than
``n_t`` samples away; then subtracts them all and updates the projections
through the templates' cross-correlations. Accepted spikes of one round never
interact, so subtracting them together is the same as one after the other,
and the best entry of any group of interacting entries is always accepted:
this is the greedy matching pursuit, run in parallel wherever spikes are
apart. Rounds repeat until no entry is eligible or `max_rounds` is reached.

The amplitude prior
-------------------
Two templates of one shape, one ``r`` times the other (co-located units of
similar waveforms, ``r`` within the amplitude range), give a spike the same
score on both: at its best amplitude each explains the same part of the spike.
With a prior ``N(1, s^2)`` on a spike's amplitude (`prior`: the weight
``w_k = sigma_k^2 / (|T_k|^2 s^2)`` of each template, from
`phy_tmatch.matching.amplitude_prior`), an entry's score is the log-posterior
gain ``2 a B - a^2 |T_k|^2 - w_k (a - 1)^2`` at its maximum
``a = (B + w_k) / (|T_k|^2 + w_k)`` (clipped), and that amplitude is the one
subtracted: a spike then prefers the template on which its amplitude is near 1.
Eligibility is unchanged (the fitted ``a* = B / |T_k|^2`` in ``[alo_k, ahi_k]``:
it is about the data). Weight 0 (no prior) is the plain pursuit, bit for bit.

A decision at start ``s`` in round ``r`` depends on the scores within
``n_t - 1`` samples of ``s``; a score depends on the traces under its window
and on the spikes accepted in earlier rounds within ``max(n_t - 1,
refractory)`` samples. So after `max_rounds` rounds the decisions depend only
on the traces within `dependency_radius` samples, which is what makes chunked
matching independent of the chunk size.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Projections are computed in blocks of this many samples: every template is projected
#: on one block before the next (the block of traces, ~1.6 MB at 384 channels, stays in
#: the L2/L3 cache while the templates read it, instead of being read from memory once per
#: template: twice as fast at 384 channels).
BLOCK = 1024


def dependency_radius(n_t: int, max_rounds: int, refractory: int) -> int:
    """Samples on each side of a start that the pursuit's decision there may depend on."""
    w = n_t - 1
    return (max_rounds + 1) * (w + max(w, refractory)) + w + n_t


@njit(cache=True)
def transpose(x, out):  # pragma: no cover - compiled
    """``out[:] = x.T`` for 2D arrays, by cache-sized tiles (numpy's copy is ~5x slower)."""
    n, c = x.shape
    tile = 64
    for i0 in range(0, n, tile):
        i1 = min(i0 + tile, n)
        for j0 in range(0, c, tile):
            for j in range(j0, min(j0 + tile, c)):
                for i in range(i0, i1):
                    out[j, i] = x[i, j]


@njit(cache=True)
def transpose_columns(x, columns, out):  # pragma: no cover - compiled
    """``out[:] = x[:, columns].T`` (the columns of a few templates, channel-major)."""
    n = x.shape[0]
    tile = 64
    for i0 in range(0, n, tile):
        i1 = min(i0 + tile, n)
        for j in range(len(columns)):
            c = columns[j]
            for i in range(i0, i1):
                out[j, i] = x[i, c]


@njit(cache=True, fastmath=True)
def project(xt, ptr, idx, spatial, temporal, out):  # pragma: no cover - compiled
    """``out[k, s] = B[k, s]`` for ``s`` in ``0 .. n - n_t`` (see the module docstring).

    `xt` is the traces channel-major, ``(n_channels, n)`` float32 (so that a
    channel's samples are contiguous: every inner loop is a SIMD loop).
    Cost per sample: ``R (n_channels_k + n_t)`` multiply-adds per template.
    Blocks of `BLOCK` samples are the outer loop (see `BLOCK`); the inner
    loops take four channels, or four lags, per pass over the accumulator, so
    that it is loaded and stored a quarter as often.
    """
    n = xt.shape[1]
    n_templates, rank, n_t = temporal.shape
    m = n - n_t + 1
    z = np.empty((rank, BLOCK + n_t), dtype=np.float32)
    acc = np.empty(BLOCK, dtype=np.float32)
    for b0 in range(0, m, BLOCK):
        b1 = min(b0 + BLOCK, m)
        width = b1 - b0 + n_t - 1  # samples of the block's windows
        nb = b1 - b0
        for k in range(n_templates):
            # Spatial: z[r] = sum_j spatial[j, r] x[idx[j]], four channels at a time.
            z[:, :width] = 0.0
            j, j1 = ptr[k], ptr[k + 1]
            if rank == 3:
                # The three components in one pass over the four channels (each z[r, t]
                # the same sum as below, with a third of the loads).
                z0, z1, z2 = z[0], z[1], z[2]
                while j + 4 <= j1:
                    x0 = xt[idx[j], b0:b0 + width]
                    x1 = xt[idx[j + 1], b0:b0 + width]
                    x2 = xt[idx[j + 2], b0:b0 + width]
                    x3 = xt[idx[j + 3], b0:b0 + width]
                    a0, a1 = spatial[j, 0], spatial[j + 1, 0]
                    a2, a3 = spatial[j + 2, 0], spatial[j + 3, 0]
                    c0, c1 = spatial[j, 1], spatial[j + 1, 1]
                    c2, c3 = spatial[j + 2, 1], spatial[j + 3, 1]
                    e0, e1 = spatial[j, 2], spatial[j + 1, 2]
                    e2, e3 = spatial[j + 2, 2], spatial[j + 3, 2]
                    for t in range(width):
                        v0, v1, v2, v3 = x0[t], x1[t], x2[t], x3[t]
                        z0[t] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
                        z1[t] += c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3
                        z2[t] += e0 * v0 + e1 * v1 + e2 * v2 + e3 * v3
                    j += 4
            while j + 4 <= j1:
                x0 = xt[idx[j], b0:b0 + width]
                x1 = xt[idx[j + 1], b0:b0 + width]
                x2 = xt[idx[j + 2], b0:b0 + width]
                x3 = xt[idx[j + 3], b0:b0 + width]
                for r in range(rank):
                    w0, w1 = spatial[j, r], spatial[j + 1, r]
                    w2, w3 = spatial[j + 2, r], spatial[j + 3, r]
                    zr = z[r]
                    for t in range(width):
                        zr[t] += w0 * x0[t] + w1 * x1[t] + w2 * x2[t] + w3 * x3[t]
                j += 4
            while j < j1:
                x0 = xt[idx[j], b0:b0 + width]
                for r in range(rank):
                    w0 = spatial[j, r]
                    zr = z[r]
                    for t in range(width):
                        zr[t] += w0 * x0[t]
                j += 1
            # Temporal: acc[t] = sum_r sum_tau temporal[k, r, tau] z[r, t + tau].
            acc[:nb] = 0.0
            for r in range(rank):
                zr = z[r]
                tau = 0
                while tau + 4 <= n_t:
                    w0, w1 = temporal[k, r, tau], temporal[k, r, tau + 1]
                    w2, w3 = temporal[k, r, tau + 2], temporal[k, r, tau + 3]
                    for t in range(nb):
                        acc[t] += (w0 * zr[t + tau] + w1 * zr[t + tau + 1]
                                   + w2 * zr[t + tau + 2] + w3 * zr[t + tau + 3])
                    tau += 4
                while tau < n_t:
                    w0 = temporal[k, r, tau]
                    for t in range(nb):
                        acc[t] += w0 * zr[t + tau]
                    tau += 1
            out[k, b0:b1] = acc[:nb]


@njit(cache=True, nogil=True)  # nogil: the parent computes it in a thread (`runner`)
def cross_correlations(temporal, ptr, idx, spatial, pdense, nbr_ptr,
                       nbr_idx):  # pragma: no cover - compiled
    """``cc[e, d + n_t - 1] = sum_{tau, c} P_k'(tau, c) T_k(tau + d, c)`` for each edge.

    Edge ``e`` in ``nbr_ptr[k]:nbr_ptr[k + 1]`` links template ``k`` to
    ``k' = nbr_idx[e]``: removing a unit spike of ``k`` starting at ``s``
    lowers ``B[k', s + d]`` by ``cc[e, d + n_t - 1]``. ``P_k'`` is the
    projection template of ``k'``, given on every channel by its spatial
    components `pdense` ``(K, n_channels, R)``. From the low-rank forms:
    ``sum_{r, r'} <p'_r, t_r'> xcorr(u'_r, u_r')(d)``, in float64.
    """
    n_templates, rank, n_t = temporal.shape
    cc = np.zeros((len(nbr_idx), 2 * n_t - 1), dtype=np.float32)
    g = np.zeros((rank, rank))
    acc = np.zeros(2 * n_t - 1)
    for k in range(n_templates):
        for e in range(nbr_ptr[k], nbr_ptr[k + 1]):
            kk = nbr_idx[e]
            g[:] = 0.0
            for j in range(ptr[k], ptr[k + 1]):
                c = idx[j]
                for r in range(rank):
                    for q in range(rank):
                        g[r, q] += np.float64(pdense[kk, c, r]) * spatial[j, q]
            acc[:] = 0.0
            for r in range(rank):
                for q in range(rank):
                    if g[r, q] == 0.0:
                        continue
                    for d in range(-(n_t - 1), n_t):
                        lo = max(0, -d)
                        hi = min(n_t, n_t - d)
                        x = 0.0
                        for tau in range(lo, hi):
                            x += np.float64(temporal[kk, r, tau]) * temporal[k, q, tau + d]
                        acc[d + n_t - 1] += g[r, q] * x
            for i in range(2 * n_t - 1):
                cc[e, i] = acc[i]
    return cc


@njit(cache=True)
def _better(s1, t1, k1, s2, t2, k2):  # pragma: no cover - compiled
    # The total order of entries: higher score, then earlier start, then lower template.
    if s1 != s2:
        return s1 > s2
    if t1 != t2:
        return t1 < t2
    return k1 < k2


@njit(cache=True)
def _rescore(b, score, blocked, zones, n_zones, norm2, sigma, z_threshold, amin, amax,
             alo, ahi, prior):  # pragma: no cover - compiled
    """Scores of every template in the zones; -inf where not eligible."""
    for i in range(n_zones):
        for k in range(b.shape[0]):
            bound = z_threshold * sigma[k]
            for t in range(zones[i, 0], zones[i, 1]):
                x = b[k, t]
                if x < bound:  # most entries: no division
                    score[k, t] = -np.inf
                    continue
                a = x / norm2[k]
                if blocked[k, t] or a < alo[k] or a > ahi[k]:
                    score[k, t] = -np.inf
                    continue
                p = prior[k]
                a = min(max((x + p) / (norm2[k] + p), amin), amax)
                v = a * (2.0 * x - a * norm2[k]) - p * (a - 1.0) * (a - 1.0)
                score[k, t] = v if v > 0.0 else -np.inf


@njit(cache=True)
def _rescore_around(b, score, blocked, winners, n_win, reach, nbr_ptr, nbr_idx, norm2, sigma,
                    z_threshold, amin, amax, alo, ahi, prior):  # pragma: no cover - compiled
    """`_rescore` of the entries the spikes just accepted changed: for each (t, k) of
    `winners`, the templates interacting with k, within `reach` samples of t."""
    m = b.shape[1]
    for i in range(n_win):
        t, k = winners[i, 0], winners[i, 1]
        lo, hi = max(0, t - reach), min(m, t + reach + 1)
        for e in range(nbr_ptr[k], nbr_ptr[k + 1]):
            kk = nbr_idx[e]
            bound = z_threshold * sigma[kk]
            for u in range(lo, hi):
                x = b[kk, u]
                if x < bound:
                    score[kk, u] = -np.inf
                    continue
                a = x / norm2[kk]
                if blocked[kk, u] or a < alo[kk] or a > ahi[kk]:
                    score[kk, u] = -np.inf
                    continue
                p = prior[kk]
                a = min(max((x + p) / (norm2[kk] + p), amin), amax)
                v = a * (2.0 * x - a * norm2[kk]) - p * (a - 1.0) * (a - 1.0)
                score[kk, u] = v if v > 0.0 else -np.inf


@njit(cache=True)
def _is_winner(score, k, t, w, nbr_ptr, nbr_idx):  # pragma: no cover - compiled
    """Whether entry (k, t) beats every eligible interacting entry less than n_t away."""
    m = score.shape[1]
    st = score[k, t]
    lo, hi = max(0, t - w), min(m, t + w + 1)
    for u in range(lo, hi):  # its own template first: most entries are not peaks
        if u != t and _better(score[k, u], u, k, st, t, k):
            return False
    for e in range(nbr_ptr[k], nbr_ptr[k + 1]):
        kk = nbr_idx[e]
        if kk == k:
            continue
        for u in range(lo, hi):
            if _better(score[kk, u], u, kk, st, t, k):
                return False
    return True


@njit(cache=True)
def _winners(score, zones, n_zones, w, nbr_ptr, nbr_idx, out):  # pragma: no cover - compiled
    """Write the winners whose start lies in the zones into `out` (start, template); count.

    Returns ``len(out) + 1`` when `out` is too small (the caller grows it and asks again).
    """
    n = 0
    for i in range(n_zones):
        for k in range(score.shape[0]):
            for t in range(zones[i, 0], zones[i, 1]):
                if score[k, t] != -np.inf and _is_winner(score, k, t, w, nbr_ptr, nbr_idx):
                    if n == out.shape[0]:
                        return n + 1
                    out[n, 0] = t
                    out[n, 1] = k
                    n += 1
    return n


@njit(cache=True)
def _zones(marks, zones):  # pragma: no cover - compiled
    """The runs of non-zero `marks` as intervals in `zones` (clearing the marks); count."""
    n, t, m = 0, 0, len(marks)
    while t < m:
        if marks[t]:
            start = t
            while t < m and marks[t]:
                marks[t] = 0
                t += 1
            zones[n, 0], zones[n, 1] = start, t
            n += 1
        else:
            t += 1
    return n


@njit(cache=True)
def _subtract(b, blocked, t, k, a, w, refractory, nbr_ptr, nbr_idx,
              cc):  # pragma: no cover - compiled
    """Remove spike (k, t, a) from the projections of every interacting template."""
    m = b.shape[1]
    lo, hi = max(0, t - w), min(m, t + w + 1)
    for e in range(nbr_ptr[k], nbr_ptr[k + 1]):
        kk = nbr_idx[e]
        for u in range(lo, hi):
            b[kk, u] -= a * cc[e, u - t + w]
    for u in range(max(0, t - refractory), min(m, t + refractory + 1)):
        blocked[k, u] = 1


@njit(cache=True)
def pursue(b, norm2, sigma, z_threshold, amin, amax, alo, ahi, refractory, nbr_ptr, nbr_idx, cc,
           max_rounds, prior=None):  # pragma: no cover - compiled
    """The matching pursuit on projections `b` ``(K, m)`` (modified in place).

    `prior`: None, or the weight ``w_k`` of each template's amplitude prior
    ``(K,)`` float32 (see "The amplitude prior" in the module docstring).

    Returns
    -------
    spikes : (n, 2) int64
        The accepted spikes (start sample in the chunk, template), in the order
        they were accepted.
    amplitudes : (n,) float32
    n_rounds : int
        Rounds with winners (``max_rounds + 1``: the cap stopped the pursuit
        while winners were left, and they were not accepted).
    """
    n_templates, m = b.shape
    return pursue_in(b, norm2, sigma, z_threshold, amin, amax, alo, ahi, refractory, nbr_ptr,
                     nbr_idx, cc, max_rounds, np.empty((n_templates, m), dtype=np.float32),
                     np.empty((n_templates, m), dtype=np.uint8),
                     np.empty((m // 2 + 1, 2), dtype=np.int64), np.empty(m, dtype=np.uint8),
                     prior)


@njit(cache=True)
def pursue_in(b, norm2, sigma, z_threshold, amin, amax, alo, ahi, refractory, nbr_ptr, nbr_idx,
              cc, max_rounds, score, blocked, search, marks_search,
              prior=None):  # pragma: no cover
    """`pursue` in the work arrays given (their contents need not be set).

    `score` ``(K, m)`` float32, `blocked` ``(K, m)`` uint8, `search`
    ``(m // 2 + 1, 2)`` int64, `marks_search` ``(m,)`` uint8: a worker passes the
    same arrays for every chunk, which spares the kernel faulting in and zeroing
    ~20 MB of fresh pages per chunk.
    """
    n_templates, m = b.shape
    # No prior is a prior of weight 0: the same arithmetic, bit for bit.
    if prior is None:
        w_prior = np.zeros(n_templates, dtype=np.float32)
    else:
        w_prior = prior
    w = (cc.shape[1] + 1) // 2 - 1  # n_t - 1
    reach = max(w, refractory)
    blocked[:] = 0
    marks_search[:] = 0
    spikes = np.empty((1024, 2), dtype=np.int64)
    amplitudes = np.empty(1024, dtype=np.float32)
    n_out = 0
    # Scores are computed for the whole chunk, then again only where the spikes just
    # accepted changed them (`_rescore_around`); winners are sought in zones
    # (`search`): the whole chunk, then around the spikes just accepted.
    whole = np.zeros((1, 2), dtype=np.int64)
    whole[0, 1] = m
    search[0, 0], search[0, 1] = 0, m
    n_search = 1
    n_win = 0
    winners = np.empty((256, 2), dtype=np.int64)
    n_rounds = 0
    for round_ in range(max_rounds + 1):
        if round_ == 0:
            _rescore(b, score, blocked, whole, 1, norm2, sigma, z_threshold, amin, amax, alo,
                     ahi, w_prior)
        else:  # `winners` still holds the last round's
            _rescore_around(b, score, blocked, winners, n_win, reach, nbr_ptr, nbr_idx, norm2,
                            sigma, z_threshold, amin, amax, alo, ahi, w_prior)
        n_win = _winners(score, search, n_search, w, nbr_ptr, nbr_idx, winners)
        while n_win > winners.shape[0]:
            winners = np.empty((2 * winners.shape[0], 2), dtype=np.int64)
            n_win = _winners(score, search, n_search, w, nbr_ptr, nbr_idx, winners)
        if n_win == 0:
            break
        n_rounds = round_ + 1
        if round_ == max_rounds:
            break  # the cap: these winners are not accepted
        if n_out + n_win > spikes.shape[0]:
            size = 2 * (n_out + n_win)
            old_spikes, old_amplitudes = spikes, amplitudes
            spikes = np.empty((size, 2), dtype=np.int64)
            amplitudes = np.empty(size, dtype=np.float32)
            for i in range(n_out):
                spikes[i, 0] = old_spikes[i, 0]
                spikes[i, 1] = old_spikes[i, 1]
                amplitudes[i] = old_amplitudes[i]
        for i in range(n_win):
            t, k = winners[i, 0], winners[i, 1]
            a = min(max((b[k, t] + w_prior[k]) / (norm2[k] + w_prior[k]), amin), amax)
            spikes[n_out, 0] = t
            spikes[n_out, 1] = k
            amplitudes[n_out] = a
            n_out += 1
            _subtract(b, blocked, t, k, a, w, refractory, nbr_ptr, nbr_idx, cc)
            for u in range(max(0, t - reach - w), min(m, t + reach + w + 1)):
                marks_search[u] = 1
        n_search = _zones(marks_search, search)
    return spikes[:n_out], amplitudes[:n_out], n_rounds


@njit(cache=True)
def _select_nonnegative(bits, k, hist, work):  # pragma: no cover - compiled
    """The `k`-th smallest (from 0) of non-negative float32 values, given as their uint32 bits.

    Non-negative floats sort as their bit patterns do: a radix selection, 11, 11
    then 10 bits at a time from the top; after each pass only the values that
    share the bits chosen so far are kept (in `work`, as long as `bits`), so the
    later passes see few of them. `hist` has 2048 entries.
    """
    prefix = np.uint32(0)
    n = len(bits)
    source = bits
    for shift, width in ((21, 2048), (10, 2048), (0, 1024)):
        hist[:width] = 0
        for i in range(n):
            hist[(source[i] >> shift) & (width - 1)] += 1
        d = 0
        while k >= hist[d]:
            k -= hist[d]
            d += 1
        prefix |= np.uint32(d) << np.uint32(shift)
        if shift == 0:
            break
        # Keep the values in bin d (their higher bits already equal the prefix's).
        m = 0
        for i in range(n):
            v = source[i]
            if ((v >> shift) & (width - 1)) == d:
                work[m] = v
                m += 1
        source, n = work, m
    return prefix


@njit(cache=True)
def abs_medians(x, step):  # pragma: no cover - compiled
    """``np.median(np.abs(x[:, ::step]), axis=1)`` of a float32 2D array, the same float32 values.

    A median is one order statistic (the mean of two for an even count, taken
    in float32 as numpy does), found by radix selection (`_select_nonnegative`):
    about half the time of numpy's partition on these rows. No NaN allowed.
    """
    n_rows = x.shape[0]
    n = (x.shape[1] + step - 1) // step
    out = np.empty(n_rows, dtype=np.float32)
    values = np.empty(n, dtype=np.float32)
    bits = values.view(np.uint32)
    hist = np.empty(2048, dtype=np.int64)
    work = np.empty(n, dtype=np.uint32)
    word = np.empty(1, dtype=np.uint32)
    as_float = word.view(np.float32)
    for c in range(n_rows):
        if n == 0:
            out[c] = np.nan
            continue
        for i in range(n):
            values[i] = abs(x[c, i * step])
        word[0] = _select_nonnegative(bits, n // 2, hist, work)
        upper = as_float[0]
        if n % 2:
            out[c] = upper
        else:
            word[0] = _select_nonnegative(bits, n // 2 - 1, hist, work)
            out[c] = np.float32(as_float[0] + upper) / np.float32(2.0)
    return out
