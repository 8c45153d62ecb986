"""The noise whitening of the refinement's snippets (phy_tmatch.snippet_whitener)."""

from __future__ import annotations

import numpy as np

from phy_tmatch.residual import local_channels
from phy_tmatch.snippet_whitener import SnippetWhitener


def test_snippet_whitening_is_the_separable_whitening():
    rng = np.random.default_rng(4)
    n_t, n_channels, n_local = 9, 6, 4
    mixing = rng.standard_normal((n_channels, n_channels))
    covariance = mixing @ mixing.T + np.eye(n_channels)
    sigma = np.sqrt(np.diag(covariance))
    local = local_channels(np.c_[np.zeros(n_channels), 20.0 * np.arange(n_channels)], n_local)
    whitener = SnippetWhitener(covariance, sigma, local)
    groups = [(rng.standard_normal((30, n_t, n_local)), 2), (rng.standard_normal((1, n_t,
                                                                                   n_local)), 3)]
    whitener.fit_temporal(groups)
    # The temporal covariance, from its definition, sum over spikes and channels.
    x, home = groups[0]
    y = np.stack([(s - x.mean(axis=0)) @ whitener.spatial(home).T for s in x])
    s_t = sum(y[m] @ y[m].T for m in range(len(y))) / (len(y) * n_local)
    assert np.allclose(np.linalg.inv(whitener.temporal @ whitener.temporal), s_t, rtol=1e-6)
    # A snippet whitened is (W_t (x) W_c) vec(x), row-major.
    out = whitener(x[:5], home)
    kron = np.kron(whitener.temporal, whitener.spatial(home))
    assert np.allclose(out, x[:5].reshape(5, -1) @ kron.T, rtol=1e-10, atol=1e-12)
    chans = local[home][[0, 2, 3]]
    out = whitener.on_channels(x[:5][:, :, [0, 2, 3]], chans)
    kron = np.kron(whitener.temporal, whitener._spatial[tuple(int(c) for c in chans)])
    assert np.allclose(out.reshape(5, -1), x[:5][:, :, [0, 2, 3]].reshape(5, -1) @ kron.T,
                       rtol=1e-10, atol=1e-12)
