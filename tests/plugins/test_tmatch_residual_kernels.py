"""The residual collection's fused kernels give the values of the steps they replace.

`sampled_pooled_residual` also copies every `step`-th sample of the pooled
statistic (whose median is its spread), and `scaled_troughs` divides the
statistic by that spread only where it compares values: the worker's events must
be bit for bit those of pooling, taking ``[:, ::step]``, dividing the whole array,
then finding the troughs.
"""

from __future__ import annotations

import numpy as np


def _inputs(seed: int, n_channels: int, n_pool: int, n: int):
    rng = np.random.default_rng(seed)
    xt = rng.standard_normal((n_channels, n)).astype(np.float32)
    nbr = np.stack([rng.permutation(n_channels)[:n_pool] for _ in range(n_channels)])
    weights = rng.uniform(-1, 1, (n_channels, n_pool)).astype(np.float32)
    inv_sigma = rng.uniform(0.5, 2, n_channels).astype(np.float32)
    return xt, inv_sigma, nbr, weights


def test_sampled_pooled_residual_equals_the_pooled_statistic_and_its_every_step_th_sample():
    from phy_tmatch.residual import POOL_BLOCK, pooled_residual, sampled_pooled_residual

    for n_pool, n in [(6, 2 * POOL_BLOCK + 37), (16, POOL_BLOCK - 5), (3, 16)]:
        xt, inv_sigma, nbr, weights = _inputs(n + n_pool, 20, n_pool, n)
        expected = np.full((20, n), np.nan, dtype=np.float32)
        pooled_residual(xt, inv_sigma, nbr, weights, expected)
        out = np.full_like(expected, np.nan)
        sampled = np.full((20, (n + 15) // 16), np.nan, dtype=np.float32)
        sampled_pooled_residual(xt, inv_sigma, nbr, weights, out, 16, sampled)
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(sampled, expected[:, ::16])
        # Independent of the kernels: the definition, in float64.
        direct = np.einsum("cp,cpt->ct", weights.astype(np.float64) * inv_sigma[nbr],
                           xt[nbr].astype(np.float64))
        np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-5)


def test_scaled_troughs_are_the_troughs_of_the_divided_statistic():
    from phy_tmatch.residual import local_channels, residual_troughs, scaled_troughs

    rng = np.random.default_rng(8)
    n_channels, n = 10, 900
    positions = np.c_[np.zeros(n_channels), 20.0 * np.arange(n_channels)]
    nbr = local_channels(positions, 4)
    # Channels of very different spreads, so that the division decides what stands out.
    scale = np.logspace(-1, 2, n_channels).astype(np.float32)
    z = (rng.standard_normal((n_channels, n)) * 2.2).astype(np.float32) * scale[:, None]
    for t, c, v in [(63, 1, -7), (64, 2, -7), (127, 4, -6), (128, 5, -6), (300, 6, -9),
                    (301, 7, -9), (450, 0, -5.5), (899, 3, -8), (20, 9, -6)]:
        z[c, t] = np.float32(v) * scale[c]  # at scan-block edges; ties after the division
    divided = z / np.maximum(scale, 1e-12)[:, None]
    for threshold in (5.0, 4.0, 3.0):
        for lo, hi in [(0, n), (21, 650), (64, 129)]:
            expected = residual_troughs(divided, np.float32(threshold), nbr, 10, lo, hi, 10_000)
            found = scaled_troughs(z, scale, np.float32(threshold), nbr, 10, lo, hi, 10_000)
            np.testing.assert_array_equal(found, expected)
    assert len(residual_troughs(divided, np.float32(5.0), nbr, 10, 0, n, 10_000)) >= 5
