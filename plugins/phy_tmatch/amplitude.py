"""Amplitudes of a group's spikes on its template, and the test of two amplitude modes.

`mean_amplitude` (the rescaling of a template to its spikes), `amplitudes`
(each spike's amplitude and the noise variance of one), `amplitude_modes` (two
co-located units of one shape: two modes beyond one unit's spread),
`recording_jitter` (one unit's amplitude spread, measured on the recording's
templates) and `modes_independent` (two units, not one that drifts or bursts).
Used by `phy_tmatch.refine` (``amplitude_split`` and the rescaling).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .refine import RefineParameters


def mean_amplitude(x: np.ndarray, template: np.ndarray,
                   slope: np.ndarray) -> tuple[float, float]:
    """The mean amplitude of whitened snippets `x` on a whitened template.

    ``(mean, standard error)``. Each snippet's amplitude is its coefficient on
    the template in a least-squares fit by the template and its time derivative
    `slope` (whitened too), the scale and shift `beyond_scale_and_shift` allows:
    whitening mixes samples, so a spike off the template's alignment by a
    fraction of a sample changes its projection on the template alone (strong,
    clean units measured 0.93-0.94 that way, 0.98-1.00 with the derivative, on
    the synthetic recordings). A template is the mean of its unit's spikes only
    if this mean is 1; the waveforms the refinement starts from can be biased
    upwards: a masked EM cluster of a weak unit holds the spikes that crossed
    the detection threshold, a group of residual events those whose trough
    crossed its own (means of 0.5-0.9 on the synthetic recordings). Too large a
    template matches only the unit's larger spikes (the pursuit keeps
    amplitudes near 1).
    """
    basis = np.stack([template, slope], axis=1)
    if len(x) < 2 or float(template @ template) <= 0:
        return 1.0, np.inf
    amplitudes = np.linalg.lstsq(basis, x.T, rcond=None)[0][0]
    return float(amplitudes.mean()), float(amplitudes.std(ddof=1) / np.sqrt(len(x)))


def amplitudes(x: np.ndarray, template: np.ndarray,
               slope: np.ndarray) -> tuple[np.ndarray, float]:
    """Each whitened snippet's amplitude on a whitened template, and the noise variance of one.

    The coefficients on the template of a least-squares fit by the template and
    its time derivative (see `mean_amplitude`); the variance is the one white,
    unit-variance noise gives that coefficient (the first diagonal entry of the
    inverse Gram matrix of the two).
    """
    basis = np.stack([template, slope], axis=1)
    # The normal equations of the two-column fit (a least-squares solver per call cost
    # more than the rest of the amplitude split).
    inverse = np.linalg.pinv(basis.T @ basis)
    amplitudes = inverse[0] @ (basis.T @ np.asarray(x).T)
    return amplitudes, float(inverse[0, 0])


def amplitude_modes(amplitudes: np.ndarray, noise_var: float, p: RefineParameters,
                    jitter: float | None = None) -> np.ndarray | None:
    """Labels 0 (smaller) / 1 (larger) when `amplitudes` form two modes, or None.

    Two units of one shape on one site (a template of their mixed spikes) show
    as two modes of their spikes' amplitudes on the template. One unit's
    amplitudes have a known spread: its own jitter (`jitter`, by default
    ``amplitude_jitter``, times its mean) and the estimate's noise (variance
    `noise_var`); with the spread
    free, a few dozen spikes of two units 1.4 apart are as likely one wide
    Gaussian (measured), so the test uses that knowledge. The model of one unit,
    ``N(m, noise_var + (jitter m)^2)``, is compared with a mixture of two such
    (fitted by EM), by the BIC (two more parameters) plus
    ``amplitude_split_margin``, and with one Gaussian of free variance (one unit
    whose jitter is wider than `jitter`: at 20 % against 10 %, most such units
    passed the first test) by ``amplitude_split_free_margin`` (twice the
    log-likelihood ratio; at 0 two units 1.4 apart keep most of their power: with
    few spikes, one wide Gaussian fits them almost as well); the mixture is kept
    when, besides, each mode
    holds ``min_spikes`` spikes and ``amplitude_split_min_fraction`` of them
    (a few overlapped spikes' amplitudes are off), and the larger mean is
    ``amplitude_split_ratio`` times the smaller.
    """
    a = np.asarray(amplitudes, dtype=np.float64)
    n = len(a)
    if n < 2 * p.min_spikes:
        return None
    jitter = p.amplitude_jitter if jitter is None else jitter
    if jitter is None:
        raise ValueError("amplitude_modes needs the jitter (amplitude_jitter is None)")
    jitter2 = jitter ** 2

    def logpdf(mean):
        var = noise_var + jitter2 * mean * mean
        return -0.5 * (a - mean) ** 2 / var - 0.5 * np.log(2 * np.pi * var)

    ll1 = float(logpdf(a.mean()).sum())
    best = None
    # EM from a few splits at quantiles (the modes' weights are unknown).
    for q in (0.25, 0.5, 0.75):
        resp = (a > np.quantile(a, q)).astype(np.float64)
        ll2 = -np.inf
        for _ in range(200):
            w1 = float(resp.sum())
            w0 = n - w1
            if min(w0, w1) < 1:
                break
            m0, m1 = float((1 - resp) @ a) / w0, float(resp @ a) / w1
            l0 = np.log(w0 / n) + logpdf(m0)
            l1 = np.log(w1 / n) + logpdf(m1)
            top = np.maximum(l0, l1)
            total = top + np.log(np.exp(l0 - top) + np.exp(l1 - top))
            new_ll = float(total.sum())
            resp = np.exp(l1 - total)
            converged = new_ll - ll2 < 1e-9 * abs(new_ll)
            ll2 = new_ll
            if converged:
                break
        if min(w0, w1) >= 1 and (best is None or ll2 > best[0]):
            best = (ll2, m0, m1, resp)
    if best is None:
        return None
    ll2, m0, m1, resp = best
    labels = (resp > 0.5).astype(np.int64)
    if m0 > m1:
        m0, m1, labels = m1, m0, 1 - labels
    if 2.0 * (ll2 - ll1) < 2 * np.log(n) + p.amplitude_split_margin:
        return None
    # Nor better explained by one unit of any jitter (a Gaussian of free variance): a
    # unit whose amplitudes vary more than the jitter looks like two modes to the test above.
    var = max(float(a.var()), 1e-12)
    ll_free = float((-0.5 * (a - a.mean()) ** 2 / var - 0.5 * np.log(2 * np.pi * var)).sum())
    if 2.0 * (ll2 - ll_free) < p.amplitude_split_free_margin:
        return None
    smaller = min(int(labels.sum()), n - int(labels.sum()))
    if smaller < max(p.min_spikes, p.amplitude_split_min_fraction * n):
        return None
    if m0 <= 0 or m1 < p.amplitude_split_ratio * m0:
        return None
    return labels


def recording_jitter(amplitude_sets: list[tuple[np.ndarray, float]],
                     min_spikes: int) -> float | None:
    """One unit's amplitude jitter, measured on the recording: the median over templates.

    `amplitude_sets`: each template's spikes' amplitudes on it and the noise
    variance of one (`amplitudes`). A template's jitter is the spread of its
    amplitudes beyond that noise, over their mean: ``sqrt(var - noise_var) / mean``
    (0 when the noise explains it all); templates with fewer than `min_spikes`
    spikes are left out (their variance is too noisy). The median: a template
    of two units (whose amplitudes spread the most) is one of many, and so is a
    unit that bursts or drifts. None when fewer than 3 templates qualify.
    """
    values = []
    for amplitudes, noise_var in amplitude_sets:
        a = np.asarray(amplitudes, dtype=np.float64)
        if len(a) < max(min_spikes, 3):
            continue
        mean = float(a.mean())
        if mean <= 0:
            continue
        values.append(np.sqrt(max(float(a.var(ddof=1)) - noise_var, 0.0)) / mean)
    if len(values) < 3:
        return None
    return float(np.median(values))


def _rank_correlation(labels: np.ndarray, values: np.ndarray) -> float:
    """The correlation of 0/1 `labels` with the ranks of `values` (0 when either is constant).

    Tied values share their mean rank (equal intervals say nothing of the labels).
    """
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - 0.5 * (counts - 1))[inverse.reshape(-1)]
    lab = labels.astype(np.float64)
    if lab.std() == 0 or ranks.std() == 0:
        return 0.0
    return float(np.corrcoef(lab, ranks)[0, 1])


def modes_independent(labels: np.ndarray, samples: np.ndarray, p: RefineParameters) -> bool:
    """Whether amplitude modes `labels` look like two units rather than one that varies.

    Two units fire independently: which of the two fired is independent of
    time and of the interval since the previous spike of the template. One unit
    whose amplitude drifts has its modes in different stretches of time; one
    that bursts has its smaller spikes after short intervals. Either rank
    correlation (the labels' with the spike times, and with the intervals since
    the previous spike) above ``amplitude_split_independence / sqrt(n)`` is
    one unit. The intervals are those of the sampled spikes (all of a small
    template's): a sample lengthens them, and an interval since a spike of the
    other unit dilutes a unit's own, but neither makes them depend on the mode.
    """
    samples = np.asarray(samples, dtype=np.float64)
    n = len(labels)
    if n < 4:
        return True
    bar = p.amplitude_split_independence / np.sqrt(n - 1)
    if abs(_rank_correlation(labels, samples)) > bar:
        return False
    order = np.argsort(samples, kind="stable")
    interval = np.empty(n)
    # The first spike has no interval: infinite, ranked longest.
    interval[order] = np.diff(samples[order], prepend=-np.inf)
    return abs(_rank_correlation(labels, interval)) <= bar
