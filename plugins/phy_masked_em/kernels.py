"""Numba kernel of the E-step (imported lazily: numba is heavy)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def cluster_log_p(y, eta, indptr, indices, noise_mean, noise_variance, mean, block_pos,
                  unmasked, chol, diag, inv_cov_diag, const, out):  # pragma: no cover
    """Negative expected log-likelihood of every spike under one Gaussian cluster.

    The cluster's covariance is a block on its `unmasked` features (Cholesky
    factor `chol`) plus a diagonal `diag` on the others. A masked feature of a
    spike equals the noise mean with variance correction ``noise_variance``;
    `const` holds the contribution of a fully masked spike, so each spike only
    adds the terms of its own unmasked features, plus the triangular solve
    on the cluster's block.
    """
    n = y.shape[0]
    u = unmasked.shape[0]
    for i in prange(n):
        z = np.empty(u)
        for a in range(u):
            f = unmasked[a]
            z[a] = noise_mean[f] - mean[f]
        extra = 0.0
        for j in range(indptr[i], indptr[i + 1]):
            f = indices[j]
            d = y[i, f] - mean[f]
            a = block_pos[f]
            if a >= 0:
                z[a] = d
            else:
                d0 = noise_mean[f] - mean[f]
                extra += (d * d - d0 * d0) / diag[f]
            extra += (eta[i, f] - noise_variance[f]) * inv_cov_diag[f]
        # Forward substitution: chol w = z; the block's Mahalanobis term is |w|^2.
        block = 0.0
        for a in range(u):
            s = z[a]
            for b in range(a):
                s -= chol[a, b] * z[b]
            z[a] = s / chol[a, a]
            block += z[a] * z[a]
        out[i] = const + 0.5 * (block + extra)
