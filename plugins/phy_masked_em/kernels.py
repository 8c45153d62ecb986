"""Numba kernels of the masked EM (imported lazily: numba is heavy).

All of them work on the sparse data of `data.MaskedData` (CSR rows of unmasked
entries): a spike costs its unmasked entries, and in the E-step only those that
fall on a cluster's unmasked features.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Spikes per parallel task of the E-step: each task allocates its scratch space once.
_CHUNK = 256


@njit(cache=True)
def scan_block(fb, mb, fpc, shift, lo, hi, sums, indptr, idx, x, m, mask_sums,
               status):  # pragma: no cover (compiled)
    """Accumulate the statistics of a block of rows and extract its unmasked entries.

    ``sums`` rows: weights ``1 - m``, weighted ``x - shift``, weighted
    ``(x - shift)**2``, and the same unweighted. ``mask_sums`` gets the sum of
    each row's masks. Sets ``status = (1, row)`` at a non-finite value.
    """
    n, n_features = fb.shape
    for i in range(n):
        k = indptr[i]
        total = 0.0
        for f in range(n_features):
            v = fb[i, f]
            w = mb[i, f // fpc]
            if not (np.isfinite(v) and np.isfinite(w)):
                status[0] = 1
                status[1] = i
                return
            lo[f] = min(lo[f], v)
            hi[f] = max(hi[f], v)
            d = v - shift[f]
            q = 1.0 - w
            sums[0, f] += q
            sums[1, f] += q * d
            sums[2, f] += q * d * d
            sums[3, f] += 1.0
            sums[4, f] += d
            sums[5, f] += d * d
            if w > 0:
                idx[k] = f
                x[k] = v
                m[k] = w
                k += 1
                total += w
        mask_sums[i] = total


@njit(cache=True)
def correct_entries(indices, x, m, lo, span, noise_mean, noise_variance,
                    deta):  # pragma: no cover (compiled)
    """Raw unmasked values `x` replaced (in place) by ``dy = m (x_scaled - noise_mean)``;
    ``deta = m (1 - m) (x_scaled - noise_mean)**2 - m noise_variance``."""
    for j in range(len(x)):
        f = indices[j]
        d = (x[j] - lo[f]) / span[f] - noise_mean[f]
        w = np.float64(m[j])
        x[j] = w * d
        deta[j] = w * (1.0 - w) * d * d - w * noise_variance[f]


@njit(cache=True)
def gather_rows(indptr, spikes, new_indptr):  # pragma: no cover (compiled)
    """Entry indices of the rows `spikes`, in that order."""
    out = np.empty(new_indptr[-1], dtype=np.int64)
    for t in range(len(spikes)):
        s = spikes[t]
        k = new_indptr[t]
        for j in range(indptr[s], indptr[s + 1]):
            out[k] = j
            k += 1
    return out


@njit(cache=True)
def cluster_sums(indptr, indices, dy, masks, labels, n_clusters,
                 n_features):  # pragma: no cover (compiled)
    """Per cluster: spike counts, and per feature the sums of ``dy`` and of the masks."""
    counts = np.zeros(n_clusters, dtype=np.int64)
    s1 = np.zeros((n_clusters, n_features))
    ms = np.zeros((n_clusters, n_features))
    for i in range(len(labels)):
        c = labels[i]
        counts[c] += 1
        for j in range(indptr[i], indptr[i + 1]):
            f = indices[j]
            s1[c, f] += dy[j]
            ms[c, f] += masks[j]
    return counts, s1, ms


@njit(cache=True)
def entry_sums(indptr, indices, dy, masks, labels, n_clusters,
               n_features):  # pragma: no cover (compiled)
    """Per cluster and feature: the number of unmasked entries and the sum of their
    uncorrected offsets ``x - noise_mean = dy / m``."""
    count = np.zeros((n_clusters, n_features))
    sx = np.zeros((n_clusters, n_features))
    for i in range(len(labels)):
        c = labels[i]
        for j in range(indptr[i], indptr[i + 1]):
            f = indices[j]
            count[c, f] += 1.0
            sx[c, f] += dy[j] / masks[j]
    return count, sx


@njit(cache=True)
def _e_step_chunk(first, last, indptr, indices, dy, deta, inv_nv, ids, const, inv_scale,
                  is_const, feat_ptr, feat_slot, feat_g, best_c, best, second_c,
                  second):  # pragma: no cover (compiled)
    """The E-step of spikes ``first:last`` (see `e_step_parallel`)."""
    n_slots = len(ids)
    acc = np.zeros(n_slots)
    for i in range(first, last):
        background = 0.0
        for j in range(indptr[i], indptr[i + 1]):
            f = indices[j]
            v = dy[j]
            background += (v * v + deta[j]) * inv_nv[f]
            for q in range(feat_ptr[f], feat_ptr[f + 1]):
                acc[feat_slot[q]] += v * feat_g[q]
        b, s2 = np.inf, np.inf
        bc, sc = -1, -1
        for k in range(n_slots):
            if is_const[k]:
                lp = const[k]
            else:
                lp = const[k] + 0.5 * inv_scale[k] * (background + 2.0 * acc[k])
            acc[k] = 0.0
            c = ids[k]
            if lp < b:
                s2, sc = b, bc
                b, bc = lp, c
            elif lp < s2:
                s2, sc = lp, c
        best[i], best_c[i], second[i], second_c[i] = b, bc, s2, sc


@njit(parallel=True, cache=True)
def e_step_parallel(indptr, indices, dy, deta, inv_nv, ids, const, inv_scale, is_const,
                    feat_ptr, feat_slot, feat_g, best_c, best, second_c,
                    second):  # pragma: no cover (compiled)
    """Best and second-best cluster of each spike (negative expected log-likelihoods).

    Slot ``k`` (cluster ``ids[k]``) has variance ``noise_variance / inv_scale[k]``
    on every feature and, on its unmasked features, the mean ``noise_mean - d0``.
    A spike's negative log-likelihood under it is ``const[k]`` (a fully masked
    spike) plus ``inv_scale[k] / 2`` times the sum over its entries of
    ``(dy**2 + deta) / noise_variance`` (the same for every slot), plus
    ``2 dy g`` with ``g = d0 / noise_variance`` on the slot's unmasked features:
    those are listed per feature (``feat_slot[feat_ptr[f]:feat_ptr[f + 1]]`` and
    their ``feat_g``), so a spike only visits the clusters overlapping it.
    Ties go to the first slot.
    """
    n = len(indptr) - 1
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    for chunk in prange(n_chunks):
        _e_step_chunk(chunk * _CHUNK, min(n, (chunk + 1) * _CHUNK), indptr, indices, dy, deta,
                      inv_nv, ids, const, inv_scale, is_const, feat_ptr, feat_slot, feat_g,
                      best_c, best, second_c, second)


@njit(cache=True)
def own_log_p(indptr, indices, dy, deta, inv_nv, slots, const, inv_scale, is_const, g,
              out):  # pragma: no cover (compiled)
    """Negative log-likelihood of each spike under slot ``slots[i]`` (inf if -1);
    ``g`` is dense, (n_slots, n_features), zero off each slot's unmasked features."""
    for i in range(len(indptr) - 1):
        k = slots[i]
        if k < 0:
            out[i] = np.inf
            continue
        if is_const[k]:
            out[i] = const[k]
            continue
        acc = 0.0
        for j in range(indptr[i], indptr[i + 1]):
            f = indices[j]
            v = dy[j]
            acc += (v * v + deta[j]) * inv_nv[f] + 2.0 * v * g[k, f]
        out[i] = const[k] + 0.5 * inv_scale[k] * acc


@njit(cache=True)
def sparse_cov_matvec(indptr, indices, dy, mean, v):  # pragma: no cover (compiled)
    """``sum_i z_i (z_i . v)`` with ``z_i = dy_i - mean`` (``dy_i`` sparse)."""
    out = np.zeros(len(v))
    mv = 0.0
    for f in range(len(v)):
        mv += mean[f] * v[f]
    total = 0.0
    for i in range(len(indptr) - 1):
        s = -mv
        for j in range(indptr[i], indptr[i + 1]):
            s += dy[j] * v[indices[j]]
        total += s
        for j in range(indptr[i], indptr[i + 1]):
            out[indices[j]] += dy[j] * s
    for f in range(len(v)):
        out[f] -= mean[f] * total
    return out


@njit(cache=True)
def sparse_project(indptr, indices, dy, v):  # pragma: no cover (compiled)
    """``dy_i . v`` for each spike."""
    n = len(indptr) - 1
    out = np.zeros(n)
    for i in range(n):
        s = 0.0
        for j in range(indptr[i], indptr[i + 1]):
            s += dy[j] * v[indices[j]]
        out[i] = s
    return out


@njit(cache=True)
def project_rows(indptr, indices, dy, masks, rows, v):  # pragma: no cover (compiled)
    """``(x_i - noise_mean) . v`` for the spikes `rows`, on their unmasked entries
    (``x - noise_mean = dy / m``; a masked entry counts as the noise mean)."""
    out = np.zeros(len(rows))
    for t in range(len(rows)):
        i = rows[t]
        s = 0.0
        for j in range(indptr[i], indptr[i + 1]):
            s += dy[j] / masks[j] * v[indices[j]]
        out[t] = s
    return out


@njit(cache=True)
def two_gaussians_1d(x, w, mean, var, floor, iterations,
                     tolerance):  # pragma: no cover (compiled)
    """EM of a mixture of two 1-D Gaussians from weights `w`, means `mean` and variances
    `var` (updated in place; variances at least `floor`). Returns the log-likelihood of
    the fit, or NaN when a component lost every value."""
    n = len(x)
    log_likelihood = -np.inf
    previous = -np.inf
    r = np.empty(n)
    for _ in range(iterations):
        c0 = np.log(w[0]) - 0.5 * np.log(2 * np.pi * var[0])
        c1 = np.log(w[1]) - 0.5 * np.log(2 * np.pi * var[1])
        log_likelihood = 0.0
        for i in range(n):
            a = c0 - 0.5 * (x[i] - mean[0]) ** 2 / var[0]
            b = c1 - 0.5 * (x[i] - mean[1]) ** 2 / var[1]
            top = max(a, b)
            pa, pb = np.exp(a - top), np.exp(b - top)
            log_likelihood += top + np.log(pa + pb)
            r[i] = pb / (pa + pb)
        n1 = r.sum()
        n0 = n - n1
        if n0 < 1e-9 or n1 < 1e-9:
            return np.nan
        s0 = s1 = 0.0
        for i in range(n):
            s0 += (1.0 - r[i]) * x[i]
            s1 += r[i] * x[i]
        mean[0], mean[1] = s0 / n0, s1 / n1
        v0 = v1 = 0.0
        for i in range(n):
            v0 += (1.0 - r[i]) * (x[i] - mean[0]) ** 2
            v1 += r[i] * (x[i] - mean[1]) ** 2
        var[0], var[1] = max(v0 / n0, floor), max(v1 / n1, floor)
        w[0], w[1] = n0 / n, n1 / n
        if log_likelihood - previous < tolerance * abs(log_likelihood):
            break
        previous = log_likelihood
    return log_likelihood


@njit(cache=True)
def pattern_hashes(indptr, indices):  # pragma: no cover (compiled)
    """A 64-bit hash (FNV-1a) of each spike's set of unmasked features."""
    n = len(indptr) - 1
    out = np.empty(n, dtype=np.uint64)
    prime = np.uint64(1099511628211)
    for i in range(n):
        h = np.uint64(14695981039346656037)
        for j in range(indptr[i], indptr[i + 1]):
            h = (h ^ np.uint64(indices[j] + 1)) * prime
        h = (h ^ np.uint64(indptr[i + 1] - indptr[i])) * prime
        out[i] = h
    return out


@njit(cache=True)
def nearest_seeds(indptr, indices, rows, seed_ptr, seed_features, feature_seeds_ptr,
                  feature_seeds):  # pragma: no cover (compiled)
    """Seed at the smallest Hamming distance from each pattern (ties: lowest seed).

    Pattern ``p`` is the unmasked set of spike ``rows[p]``; seed ``s`` has
    features ``seed_features[seed_ptr[s]:seed_ptr[s + 1]]`` and the seeds
    containing feature ``f`` are ``feature_seeds[feature_seeds_ptr[f]:...]``.
    """
    n_seeds = len(seed_ptr) - 1
    inter = np.zeros(n_seeds, dtype=np.int64)
    touched = np.empty(n_seeds, dtype=np.int64)
    # The nearest among the seeds sharing no feature: the smallest one.
    smallest, smallest_size = 0, seed_ptr[1] - seed_ptr[0]
    for s in range(1, n_seeds):
        if seed_ptr[s + 1] - seed_ptr[s] < smallest_size:
            smallest, smallest_size = s, seed_ptr[s + 1] - seed_ptr[s]
    out = np.empty(len(rows), dtype=np.int64)
    for p in range(len(rows)):
        i = rows[p]
        size = indptr[i + 1] - indptr[i]
        nt = 0
        for j in range(indptr[i], indptr[i + 1]):
            f = indices[j]
            for q in range(feature_seeds_ptr[f], feature_seeds_ptr[f + 1]):
                s = feature_seeds[q]
                if inter[s] == 0:
                    touched[nt] = s
                    nt += 1
                inter[s] += 1
        best, best_d = smallest, size + smallest_size
        for t in range(nt):
            s = touched[t]
            d = size + (seed_ptr[s + 1] - seed_ptr[s]) - 2 * inter[s]
            if d < best_d or (d == best_d and s < best):
                best, best_d = s, d
            inter[s] = 0
        out[p] = best
    return out
