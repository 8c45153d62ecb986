"""The refinement's split test: are a group's spikes one unit or two (`phy_tmatch.refine`)?

`split_units` bisects whitened snippets recursively (`_bisect`): their first
principal components where they stand out of the noise, a two-component
Gaussian mixture (`_two_gaussians`, compiled EM) against one Gaussian by the
BIC, then bars on the parts' sizes, on the distance of their means in noise
units, and, for snippets, on their difference beyond a scale and a fraction of
a sample (`phy_tmatch.comparison.beyond_scale_and_shift`). `with_far_field`
gives a split part its parent's waveform beyond the channels of its snippets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from .comparison import beyond_scale_and_shift

if TYPE_CHECKING:
    from .refine import RefineParameters

logger = logging.getLogger("phy")


def _gaussian_loglik(y: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    d = y.shape[1]
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (y - mean).T)
    return -0.5 * (z ** 2).sum(axis=0) - np.log(np.diag(chol)).sum() - 0.5 * d * np.log(
        2 * np.pi)


def _fit_gaussian(y: np.ndarray, weights: np.ndarray, reg: float):
    w = weights / max(weights.sum(), 1e-12)
    mean = w @ y
    yc = y - mean
    cov = (yc * w[:, None]).T @ yc + reg * np.eye(y.shape[1])
    return mean, cov


def _two_gaussians(y: np.ndarray, labels: np.ndarray, reg: float,
                   n_iter: int = 60) -> tuple[np.ndarray, float]:
    """EM of a two-component Gaussian mixture from hard `labels`; (labels, log-likelihood).

    The iterations run in `_two_gaussians_em` (compiled: in numpy, the calls on
    ``(n, 3)`` arrays cost more than their arithmetic, half of the refinement).
    """
    y = np.ascontiguousarray(y, dtype=np.float64)
    out, ll, ok = _two_gaussians_em(y, np.asarray(labels, dtype=np.int64), float(reg),
                                    int(n_iter))
    if not ok:
        raise np.linalg.LinAlgError("Refinement: a mixture covariance is not positive definite")
    if ll == -np.inf:
        return labels, ll
    return out, ll


@njit(cache=True)
def _two_gaussians_em(y, labels, reg, n_iter):  # pragma: no cover - compiled
    """The EM of `_two_gaussians`: (labels, log-likelihood or -inf, covariances were PD).

    Each step as the numpy formulas `_fit_gaussian` and `_gaussian_loglik`
    (weighted mean and covariance plus ``reg I``, Cholesky factor, forward
    substitution), equal to them up to rounding.
    """
    n, d = y.shape
    resp = np.zeros((n, 2))
    for i in range(n):
        resp[i, labels[i]] = 1.0
    logp = np.empty((n, 2))
    total = np.empty(n)
    mean = np.empty(d)
    cov = np.empty((d, d))
    chol = np.empty((d, d))
    z = np.empty(d)
    log_2pi = 0.5 * d * np.log(2 * np.pi)
    ll = -np.inf
    for _ in range(n_iter):
        for j in range(2):
            wsum = 0.0
            for i in range(n):
                wsum += resp[i, j]
            if wsum < d + 1:
                return labels, -np.inf, True
            scale = 1.0 / max(wsum, 1e-12)
            for a in range(d):
                acc = 0.0
                for i in range(n):
                    acc += resp[i, j] * scale * y[i, a]
                mean[a] = acc
            for a in range(d):
                for b in range(a + 1):
                    acc = 0.0
                    for i in range(n):
                        acc += (y[i, a] - mean[a]) * resp[i, j] * scale * (y[i, b] - mean[b])
                    cov[a, b] = acc
                    cov[b, a] = acc
                cov[a, a] += reg
            # Cholesky factor (lower).
            for a in range(d):
                for b in range(a + 1):
                    acc = cov[a, b]
                    for c in range(b):
                        acc -= chol[a, c] * chol[b, c]
                    if a == b:
                        if acc <= 0.0:
                            return labels, -np.inf, False
                        chol[a, a] = np.sqrt(acc)
                    else:
                        chol[a, b] = acc / chol[b, b]
            log_det = 0.0
            for a in range(d):
                log_det += np.log(chol[a, a])
            log_weight = np.log(wsum / n)
            for i in range(n):
                sq = 0.0
                for a in range(d):
                    acc = y[i, a] - mean[a]
                    for c in range(a):
                        acc -= chol[a, c] * z[c]
                    z[a] = acc / chol[a, a]
                    sq += z[a] * z[a]
                logp[i, j] = log_weight - 0.5 * sq - log_det - log_2pi
        new_ll = 0.0
        for i in range(n):
            top = max(logp[i, 0], logp[i, 1])
            total[i] = top + np.log(np.exp(logp[i, 0] - top) + np.exp(logp[i, 1] - top))
            new_ll += total[i]
            resp[i, 0] = np.exp(logp[i, 0] - total[i])
            resp[i, 1] = np.exp(logp[i, 1] - total[i])
        if new_ll - ll < 1e-6 * abs(new_ll):
            ll = new_ll
            break
        ll = new_ll
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = 1 if resp[i, 1] > resp[i, 0] else 0
    return out, ll, True



def _bisect(x: np.ndarray, p: RefineParameters, n_t: int | None = None) -> np.ndarray | None:
    """Labels 0/1 splitting the rows of `x` (noise units) in two units, or None.

    With `n_t` (the rows are ``(n_t, L)`` snippets, time-major), the parts must
    also differ by more than a scale and a shift (`beyond_scale_and_shift`).
    """
    x_all = x
    if len(x) < 2 * p.min_spikes:
        return None
    # The dimensions where the spikes stand out of the (white, unit-variance) noise, in
    # mean square (two units of opposite signs there would cancel in the mean): the
    # others carry only noise, whose principal components would hide a small unit's.
    energy = (x ** 2).mean(axis=0) - 1.0
    n_dims = int(np.clip((energy >= p.signal_floor ** 2).sum(), min(20, x.shape[1]),
                         p.max_dims))
    x = x[:, np.argsort(-energy, kind="stable")[:n_dims]]
    n, dim = x.shape
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    y = xc @ vt[:p.n_features].T
    reg = 1e-3 * max(float(y.var(axis=0).mean()), 1e-12)
    mean, cov = _fit_gaussian(y, np.ones(n), reg)
    ll1 = float(_gaussian_loglik(y, mean, cov).sum())
    best, best_ll = None, -np.inf
    for axis in range(min(2, y.shape[1])):
        # 2-means started from the sign of a principal axis, then the mixture.
        labels = (y[:, axis] > np.median(y[:, axis])).astype(np.int64)
        for _ in range(10):
            if labels.min() == labels.max():
                break
            centres = np.stack([y[labels == 0].mean(axis=0), y[labels == 1].mean(axis=0)])
            labels = ((y[:, None, :] - centres[None]) ** 2).sum(axis=-1).argmin(axis=1)
        if labels.min() == labels.max():
            continue
        labels, ll2 = _two_gaussians(y, labels, reg)
        if ll2 > best_ll:
            best, best_ll = labels, ll2
    if best is None:
        return None
    # The mixture saw only a few principal components; the two means on every kept
    # dimension tell the parts apart better (a few steps of 2-means, from its labels).
    for _ in range(10):
        if best.min() == best.max():
            return None
        centres = np.stack([x[best == 0].mean(axis=0), x[best == 1].mean(axis=0)])
        labels = ((x[:, None, :] - centres[None]) ** 2).sum(axis=-1).argmin(axis=1)
        if np.array_equal(labels, best):
            break
        best = labels
    d = y.shape[1]
    n_params = d + d * (d + 1) // 2
    if 2.0 * (best_ll - ll1) < (n_params + 1) * np.log(n):
        return None
    n_a, n_b = int((best == 0).sum()), int((best == 1).sum())
    if min(n_a, n_b) < p.min_spikes:
        return None
    delta = x[best == 0].mean(axis=0) - x[best == 1].mean(axis=0)
    # In units of the parts' own spread, which the whitening leaves near 1 but not at 1
    # (a unit's spikes also vary in amplitude and alignment).
    spread = max(1.0, float(np.concatenate([x[best == 0] - x[best == 0].mean(axis=0),
                                            x[best == 1] - x[best == 1].mean(axis=0)]).var(
        axis=0).mean()))
    stat = float((delta ** 2).sum()) / (1.0 / n_a + 1.0 / n_b) / spread
    if stat < dim + p.split_significance * np.sqrt(2.0 * dim):
        return None
    # Parts of one shape whose amplitudes differ little are one unit whose amplitudes
    # vary (not always as a Gaussian): the merge would join them again.
    m_a, m_b = x[best == 0].mean(axis=0), x[best == 1].mean(axis=0)
    n_a2, n_b2 = float(np.linalg.norm(m_a)), float(np.linalg.norm(m_b))
    cos = float(m_a @ m_b) / max(n_a2 * n_b2, 1e-12)
    similar = cos >= p.merge_similarity and max(n_a2, n_b2) <= p.merge_amplitude_ratio * min(
        n_a2, n_b2)
    if similar and not (p.distinct_beyond_scale and n_t is not None):
        return None
    if n_t is not None:
        # The same on every dimension, in the snippets' time order: a unit's spikes
        # also vary in alignment, which two means of noisy halves show as a difference.
        a, b = x_all[best == 0], x_all[best == 1]
        m_a, m_b = a.mean(axis=0), b.mean(axis=0)
        dims = np.argsort(-energy, kind="stable")[:n_dims]
        stat, bar = beyond_scale_and_shift(m_a, m_b, n_t, dims, spread * (1 / n_a + 1 / n_b),
                                           p, whole_shift=int(p.distinct_beyond_scale))
        if stat < bar:
            return None
        # Similar parts (`distinct_beyond_scale`): each spike must tell them apart, by a
        # share of the waveform a strong unit's own spikes do not vary by (their
        # amplitude and alignment vary by ~10 %, which beyond the fit of a scale and a
        # shift leaves several noise sigmas when the unit is strong).
        if similar:
            separation = np.sqrt(stat * (1 / n_a + 1 / n_b))
            relative = separation * np.sqrt(spread) / max(
                float(np.linalg.norm(0.5 * (m_a + m_b)[dims])), 1e-12)
            logger.debug("Refinement: parts alike in shape (n=%d/%d): separation %.2f, "
                         "%.3f of their norm.", n_a, n_b, separation, relative)
            if separation < p.min_separation or relative < p.min_relative_separation:
                return None
    return best


def split_units(x: np.ndarray, p: RefineParameters, depth: int = 0,
                n_t: int | None = None) -> list[np.ndarray]:
    """Row indices of `x` grouped into units by recursive bisection (see the module docstring)."""
    rows = np.arange(len(x))
    if depth >= p.max_split_depth:
        return [rows]
    labels = _bisect(x, p, n_t)
    if labels is None:
        return [rows]
    out = []
    for j in (0, 1):
        part = rows[labels == j]
        out += [part[sub] for sub in split_units(x[part], p, depth + 1, n_t)]
    return out


def with_far_field(mean: np.ndarray, parent: np.ndarray, chans: np.ndarray,
                   p: RefineParameters) -> np.ndarray:
    """A split part's mean `mean` (zero beyond the channels `chans`), with its parent's far field.

    A part's mean is known on its home's local channels only; a strong unit's
    template reaches further, and a part of it matched on fewer channels leaves
    the rest of each spike to the neighbouring templates (a co-located pair of
    the 1024 channels, split: a neighbour matched half of one unit's spikes
    again). A part alike to its parent there (cosine at least
    ``merge_similarity``: one of two co-located units of one shape) takes the
    parent's waveform, scaled to it by least squares on `chans`, on the other
    channels; a part unlike its parent (another unit) is left as it is.
    """
    a, b = mean[:, chans], parent[:, chans]
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm <= 0 or float((a * b).sum()) / norm < p.merge_similarity:
        return mean
    out = parent * (float((a * b).sum()) / float((b * b).sum()))
    out[:, chans] = a
    return out
