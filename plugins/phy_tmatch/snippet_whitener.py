"""Noise whitening of the refinement's snippets (`SnippetWhitener`)."""

from __future__ import annotations

import numpy as np


def _inverse_sqrt(matrix: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    values = np.maximum(values, floor * max(values.max(), 1e-30))
    return (vectors / np.sqrt(values)) @ vectors.T


class SnippetWhitener:
    """Makes the noise of snippets ``(n, n_t, L)`` white: a spatial then a temporal whitening.

    The spike-band noise is correlated across channels and, band-limited, along
    time: in raw coordinates its largest principal components are noise, and
    hide the difference between two units. The noise covariance of a snippet
    is modelled as separable, ``S_t (x) S_c``: ``S_c`` from the noise covariance
    of the local channels, ``S_t`` from the spatially whitened snippets of the
    matched spikes minus their template's mean (mostly noise).
    """

    def __init__(self, covariance: np.ndarray | None, sigma: np.ndarray, local: np.ndarray):
        self.sigma, self.local = sigma, local
        self.covariance = covariance
        self._spatial: dict[int, np.ndarray] = {}
        self.temporal = None

    def spatial(self, home: int) -> np.ndarray:
        if home not in self._spatial:
            chans = self.local[home]
            if self.covariance is None:
                self._spatial[home] = np.diag(1.0 / self.sigma[chans])
            else:
                self._spatial[home] = _inverse_sqrt(self.covariance[np.ix_(chans, chans)])
        return self._spatial[home]

    def fit_temporal(self, snippet_groups: list[tuple[np.ndarray, int]]) -> None:
        n_t = snippet_groups[0][0].shape[1] if snippet_groups else 1
        acc, n = np.zeros((n_t, n_t)), 0
        for snippets, home in snippet_groups:
            if len(snippets) < 2:
                continue
            y = (snippets - snippets.mean(axis=0)) @ self.spatial(home).T  # (m, n_t, L)
            # sum over m, l of y[m, t, l] y[m, s, l], as one BLAS product (einsum's own
            # loops took a third of the refinement).
            n += y.shape[0] * y.shape[2]
            y = np.ascontiguousarray(y.transpose(1, 0, 2)).reshape(n_t, -1)
            acc += y @ y.T
        self.temporal = _inverse_sqrt(acc / n) if n else np.eye(n_t)

    def __call__(self, snippets: np.ndarray, home: int) -> np.ndarray:
        y = snippets @ self.spatial(home).T
        return (self.temporal @ y).reshape(len(snippets), -1)

    def on_channels(self, snippets: np.ndarray, chans: np.ndarray) -> np.ndarray:
        """Snippets ``(n, n_t, len(chans))`` on the channels `chans`, whitened, same shape."""
        key = tuple(int(c) for c in chans)
        if key not in self._spatial:
            if self.covariance is None:
                self._spatial[key] = np.diag(1.0 / self.sigma[chans])
            else:
                self._spatial[key] = _inverse_sqrt(self.covariance[np.ix_(chans, chans)])
        y = snippets @ self._spatial[key].T
        return self.temporal @ y  # (n_t, n_t) @ (n, n_t, L): the temporal whitening
