"""Template refinement: split, find, merge and drop templates from a matching pass's events.

A matching pass with collection (`phy_tmatch.residual`) gives, for a sample of
each template's matched spikes and for the residual events, snippets on the
channels near their home channel. From them, in the parent process:

- **Split** a template whose spikes are bimodal: the snippets, whitened
  (`SnippetWhitener`) and restricted to where they stand out of the noise, are
  reduced to their first `n_features` principal components, and a
  two-component Gaussian mixture (full covariances) is fitted. The template is
  split when the mixture beats one Gaussian by the BIC, both parts have at
  least `min_spikes` spikes, their means differ by more than noise could make
  them (``|m_a - m_b|^2 / (1/n_a + 1/n_b)``, in noise units, above
  ``D + split_significance * sqrt(2 D)``, ``D`` the dimensions kept), and not
  merely in amplitude (parts the merge would join again, unless each spike tells
  them apart beyond a scale: ``distinct_beyond_scale``), nor merely by a scale
  and a fraction of a sample (`_beyond_scale_and_shift`: a unit's spikes vary in
  amplitude and alignment; without this check a second round split clean
  units). The parts are split
  again, up to `max_split_depth` times. A single Gaussian with data-chosen axes
  still fits noise, which is why the mixture is tested against it rather than
  2-means against nothing.
- **Find** new units among the residual events: those of each home channel are
  split the same way, and every part with at least `min_spikes` events whose
  mean stands out of the noise (its peak over its channel's noise at least
  `new_min_snr`) is a new template. The same for the *misfits* of each home
  channel (``misfits``, on): the spikes a template matched at the amplitude's
  upper bound, whole (`phy_tmatch.residual`): a unit without a template of its
  own whose spikes a smaller neighbour's template took leaves no residual
  event, and its few spikes among the template's hundreds cannot split it. A
  group of misfits is not merged into the template(s) it was taken from, nor
  dropped as a duplicate of the spikes it re-explains.
- **Merge** two templates that explain the same unit: alike after alignment
  (cosine similarity of their noise-divided waveforms at the best lag within
  `merge_max_lag_ms` at least `merge_similarity`, amplitudes within a factor
  `merge_amplitude_ratio`; or means that differ by less than the split test's
  bar, for the small groups whose means are noisy; or, from `merge_min_similarity`
  up, groups whose *snippets* (matched spikes or residual events, on the channels
  both have) differ by no more than their spread, a scale and a fraction of a
  sample allow (`_compare_snippets`; a weak unit's template keeps few channels,
  so its waveform differs from its events' mean); or a group of residual events
  alike in shape (cosine >= `fragment_similarity` where the means stand out) and
  amplitude to another group's events: residual events are chosen by their
  troughs, so their mean is biased and a test of means would keep a weak unit's
  fragments apart; never the two parts of a split of this round), unless
  their spike trains are not refractory with each other (units have a dead
  time, so a unit split in two has almost no pair of spikes closer than
  `refractory_ms`).
- **Drop** the templates that matched fewer than `min_spikes` spikes, and, after
  the merges, the groups most of whose spikes are other templates' spikes seen
  again (`_duplicates`, ``drop_duplicates``): a spike matched by a template of
  another unit's shape leaves a residual, the difference of the two, that would
  become a template of the same spikes (most false clusters of the 1024
  channels).
- **Split by amplitude** (``amplitude_split``, off by default): two co-located
  units of one shape (amplitude ratio 1.42: units 24 and 39 of the 384-channel
  seed 0) share a template, and the split above sees one unit whose amplitude
  varies. A template kept whole whose spikes' amplitudes on it form two modes
  (`_amplitude_modes`: one unit's amplitudes have a known spread, its jitter
  and the estimate's noise; the jitter is measured on the recording's templates,
  `_recording_jitter`, and two modes must also beat one unit of any jitter) that
  do not depend on time or on the interval since the previous spike
  (`_modes_independent`: a unit that drifts or bursts) becomes two scaled
  copies; the next pass assigns
  the spikes, which needs the pursuit's amplitude prior (``amplitude_prior_std``
  of `phy_tmatch.runner`: without it the two copies tie on every spike). Two
  groups alike in shape whose amplitudes form two modes are not merged (the
  copies of the previous round).
- **Rescale** a template that is neither split nor merged to the mean amplitude
  of its matched spikes (`_mean_amplitude`) when that is off 1 by more than its
  standard error allows and by `rescale_min_change` to `rescale_max_change`: a
  weak unit's masked EM cluster holds the spikes that crossed the detection
  threshold, so its mean is too large (by 10-20 %), and a template too large
  matches only the unit's larger spikes. After the merges, which compare the
  waveforms the pass matched with.

A template that is neither split nor merged keeps its waveform (rescaled); a new, split
or merged one gets a new cluster id (ids are never reused) and the mean of its
snippets (on its home channel's local channels) as waveform, and, given a
`phy_tmatch.means.WindowMeans`, the mean of those events' windows read from the
recording on its other channels (a unit stands out beyond the local channels;
its template would leave that part of its spikes to be matched again by
others). The result is a set of mean waveforms from which `phy_tmatch.runner`
rebuilds the templates and matches again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numba import njit

from phy_core.bunch import Bunch

from .residual import MISFIT

logger = logging.getLogger("phy")


@dataclass(frozen=True)
class RefineParameters:
    """Parameters of the refinement (the ``refine`` option of `phy_tmatch.runner`).

    ``min_spikes``: the fewest spikes of a unit (a part, a new template, a kept
    template); ``n_features``: principal components the mixture sees;
    ``max_split_depth``: splits of splits; ``split_significance``: the chi-square
    bar, in its standard deviations; ``signal_floor``: the RMS (noise units) above
    the noise of a kept dimension; ``max_dims``: at most this many dimensions;
    ``new_min_snr``: a new template's peak over its channel's noise;
    ``merge_similarity``, ``merge_amplitude_ratio``, ``merge_max_lag_ms``,
    ``merge_radius_um`` (between the peak channels), ``merge_min_similarity`` (the
    waveform similarity from which the snippets are compared),
    ``fragment_similarity``: what is alike;
    ``refractory_ms``: the window of the refractory test;
    ``distinct_beyond_scale`` (on): two groups of matched spikes whose means
    differ beyond a scale and a shift of up to 1.5 samples
    (`_beyond_scale_and_shift` with ``whole_shift``) by at least
    ``min_separation`` standard deviations of one spike's noise are two units,
    however alike their waveforms (a split also needs that difference to be
    ``min_relative_separation`` of the parts' norm: a strong unit's spikes vary
    by more than 2 noise sigmas beyond a scale and a shift; unit 70 of the 200 s
    1024-channel recording, SNR 15.7, split at 0.103, units 89 and 130 at 0.159
    and 0.135-0.155 for the other splits there): a split is not
    vetoed by the similarity of its parts, nor are they merged by it when alike
    at a lag of at most one
    sample (units 89 and 130 of the 1024 channels, 8 um apart, cosine 0.98,
    amplitude ratio 1.14: one template, split with it). Alone it was not better
    on the whole: the parts' means, on their home's local channels only, left
    the rest of each spike to a neighbouring template, and strong units'
    fragments dated 8-9 samples off were no longer merged; with
    ``split_far_field`` and the lag bar, better or equal on the benchmark
    recordings;
    ``drop_duplicates``, ``duplicate_fraction``: a group (a template, a part, a
    group of residual events) more than this fraction of whose spikes fall on
    the spikes another nearby template matched is dropped (`_duplicates`);
    ``rescale_significance``, ``rescale_min_change``, ``rescale_max_change``: a
    kept template is rescaled to its spikes' mean amplitude when that differs
    from 1 by this many standard errors and by a fraction in ``(min, max]``
    (`_mean_amplitude`; smaller errors are within the pursuit's amplitude range;
    the means of groups of residual events, 0.5-0.7, are also off in shape, and
    rescaling them let them take their neighbours' spikes);
    ``amplitude_split`` (off by default), ``amplitude_split_ratio``,
    ``amplitude_split_margin``, ``amplitude_split_free_margin``,
    ``amplitude_split_min_fraction``, ``amplitude_jitter`` (one unit's amplitude
    spread over its mean; None: measured on the recording, `_recording_jitter`,
    from the templates with at least ``amplitude_jitter_min_spikes`` matched
    spikes), ``amplitude_split_independence``
    (a bar in standard deviations of a correlation): a template the shape test
    left whole is split in two scaled copies when its spikes' amplitudes form
    two modes (`_amplitude_modes`: two co-located units of one shape; it wants
    the pursuit's amplitude prior) that are independent of time and of the
    interval since the previous spike (`_modes_independent`: a unit that drifts
    or bursts is one unit). ``split_far_field`` (on): the parts of a split alike
    to their template keep its waveform beyond their home's local channels
    (`_with_far_field`). ``misfits``: new templates also from the spikes matched
    at the amplitude's upper bound (the "find" step). The defaults were chosen
    on the synthetic recordings (2 ms dead time, 10 % amplitude jitter).
    """

    min_spikes: int = 6
    n_features: int = 3
    max_split_depth: int = 3
    split_significance: float = 6.0
    signal_floor: float = 1.0
    max_dims: int = 300
    new_min_snr: float = 2.5
    merge_similarity: float = 0.95
    merge_amplitude_ratio: float = 1.3
    merge_max_lag_ms: float = 0.4
    merge_radius_um: float = 60.0
    merge_min_similarity: float = 0.2
    fragment_similarity: float = 0.6
    refractory_ms: float = 1.5
    rescale_significance: float = 3.0
    rescale_min_change: float = 0.1
    rescale_max_change: float = 0.25
    distinct_beyond_scale: bool = True
    min_separation: float = 2.0
    min_relative_separation: float = 0.125
    drop_duplicates: bool = True
    duplicate_fraction: float = 0.5
    split_far_field: bool = True
    amplitude_split: bool = False
    amplitude_split_ratio: float = 1.3
    amplitude_split_margin: float = 4.0
    amplitude_split_min_fraction: float = 0.2
    amplitude_jitter: float | None = None
    amplitude_jitter_min_spikes: int = 30
    amplitude_split_independence: float = 3.0
    amplitude_split_free_margin: float = 0.0
    misfits: bool = True


# -- Splitting --------------------------------------------------------------------------------


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


def _beyond_scale_and_shift(m_a: np.ndarray, m_b: np.ndarray, n_t: int, dims: np.ndarray,
                            noise: float, p: RefineParameters,
                            whole_shift: int = 0) -> tuple[float, float]:
    """How much two whitened means differ beyond a scale and a fraction of a sample.

    `m_a`, `m_b`: flat ``(n_t * L,)`` means (time-major); `noise`: the variance of
    their difference per dimension. The difference on `dims` less its
    least-squares fit by the mean waveform (an amplitude within the merge's
    ratio) and its time derivative (a shift of at most half a sample: events of
    a weak unit are aligned on a noisy trough); (chi-square statistic, bar).
    With `whole_shift`, `m_b` is first delayed by the number of samples, up to
    that many, that fits best: the pursuit dates a spike to a whole sample, and
    a unit whose trough falls between two samples has its spikes dated on either
    (parts one sample apart, the same unit: 10 false splits of the 1024 channels).
    """
    best = None
    for lag in range(-whole_shift, whole_shift + 1):
        b = m_b if lag == 0 else _shift(m_b.reshape(n_t, -1), lag).reshape(-1)
        mean = 0.5 * (m_a + b)
        slope = np.gradient(mean.reshape(n_t, -1), axis=0).reshape(-1)
        delta = m_a[dims] - b[dims]
        basis = np.stack([mean[dims], slope[dims]], axis=1)
        coef = np.linalg.lstsq(basis, delta, rcond=None)[0]
        # m_a / m_b = (1 + c/2) / (1 - c/2) within the ratio.
        r = p.merge_amplitude_ratio
        coef = np.clip(coef, [-2 * (r - 1) / (r + 1), -0.5], [2 * (r - 1) / (r + 1), 0.5])
        stat = float(((delta - basis @ coef) ** 2).sum()) / noise
        best = stat if best is None else min(best, stat)
    n_free = max(len(dims) - 2 - (whole_shift > 0), 1)
    return best, n_free + p.split_significance * np.sqrt(2.0 * n_free)


def _bisect(x: np.ndarray, p: RefineParameters, n_t: int | None = None) -> np.ndarray | None:
    """Labels 0/1 splitting the rows of `x` (noise units) in two units, or None.

    With `n_t` (the rows are ``(n_t, L)`` snippets, time-major), the parts must
    also differ by more than a scale and a shift (`_beyond_scale_and_shift`).
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
        stat, bar = _beyond_scale_and_shift(m_a, m_b, n_t, dims, spread * (1 / n_a + 1 / n_b),
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


def _with_far_field(mean: np.ndarray, parent: np.ndarray, chans: np.ndarray,
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


# -- Noise whitening of the snippets -----------------------------------------------------------


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


# -- Merging ----------------------------------------------------------------------------------


def _similarity(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[float, float, int]:
    """Best cosine similarity of two ``(n_t, C)`` waveforms over lags; (cos, |a|/|b|, lag)."""
    best, best_lag = -1.0, 0
    n_t = a.shape[0]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0, 0.0, 0
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            v = float((a[lag:] * b[:n_t - lag]).sum())
        else:
            v = float((a[:n_t + lag] * b[-lag:]).sum())
        if v > best:
            best, best_lag = v, lag
    return best / (na * nb), na / nb, best_lag


def _shift(b: np.ndarray, lag: int) -> np.ndarray:
    """`b` (n_t, C) delayed by `lag` samples (zeros shifted in)."""
    out = np.zeros_like(b)
    if lag >= 0:
        out[lag:] = b[:len(b) - lag]
    else:
        out[:lag] = b[-lag:]
    return out


def _spread(x: np.ndarray, p: RefineParameters) -> float:
    """The variance of whitened snippets `x` around their mean where their mean stands out.

    In noise units, so 1 for a unit whose spikes differ only by the noise; more
    when they vary in amplitude or alignment (weak units' events, aligned on a
    noisy trough, jitter), which a test of their mean must allow for.
    """
    if len(x) < 3:
        return 1.0
    mean = x.mean(axis=0)
    n_dims = int(np.clip((np.abs(mean) >= p.signal_floor).sum(), min(20, x.shape[1]),
                         p.max_dims))
    dims = np.argsort(-np.abs(mean), kind="stable")[:n_dims]
    return max(1.0, float(x[:, dims].var(axis=0, ddof=1).mean()))


def _indistinct(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int, home: int, whitener,
                local: np.ndarray, p: RefineParameters, spread_a: float = 1.0,
                spread_b: float = 1.0) -> bool:
    """Whether two mean waveforms differ by no more than their noise (the split test's bar).

    `spread_a`, `spread_b`: each group's variance around its mean, in noise units
    (`_spread`).
    """
    chans = local[home]
    wa = whitener(a[None, :, chans], home)[0]
    wb = whitener(b[None, :, chans], home)[0]
    signal = np.maximum(np.abs(wa), np.abs(wb))
    n_dims = int(np.clip((signal >= p.signal_floor).sum(), min(20, len(signal)), p.max_dims))
    dims = np.argsort(-signal, kind="stable")[:n_dims]
    stat = float(((wa[dims] - wb[dims]) ** 2).sum()) / (spread_a / max(n_a, 1)
                                                        + spread_b / max(n_b, 1))
    logger.debug("Refinement: indistinct test n=%d/%d: stat %.1f, bar %.1f (%d dims).", n_a, n_b,
                 stat, n_dims + p.split_significance * np.sqrt(2.0 * n_dims), n_dims)
    return stat < n_dims + p.split_significance * np.sqrt(2.0 * n_dims)


def _compare_snippets(x_a: np.ndarray, home_a: int, x_b: np.ndarray, home_b: int, lag: int,
                      whitener: SnippetWhitener, local: np.ndarray,
                      p: RefineParameters, separation: bool = False,
                      whole_shift: int = 0) -> tuple:
    """Whether two groups of snippets have means that differ by no more than their noise.

    `x_a`, `x_b`: the groups' snippets ``(n, n_t, L)`` on the local channels of
    their homes; compared on the channels both have, `x_b` delayed by `lag`. The
    means of the snippets, not the templates: a weak unit's template keeps only
    its few strongest channels, and its zeros elsewhere differ from a mean over
    its events by more than their noise. The chi-square bar of the split test,
    in units of the groups' own spread (`_spread`).

    Returns
    -------
    (indistinct, cosine, ratio)
        The test's verdict, and the cosine similarity and norm ratio of the two
        means on the dimensions where they stand out of the noise; with
        `separation`, also the difference of the means beyond a scale and a
        shift in standard deviations of one snippet (0 when not tested).
    """
    common = np.intersect1d(local[home_a], local[home_b])
    if len(common) < 4 or min(len(x_a), len(x_b)) < 3:
        return (False, 0.0, 0.0, 0.0) if separation else (False, 0.0, 0.0)
    pos_a = np.searchsorted(local[home_a], common, sorter=np.argsort(local[home_a]))
    pos_a = np.argsort(local[home_a])[pos_a]
    pos_b = np.argsort(local[home_b])[np.searchsorted(local[home_b], common,
                                                     sorter=np.argsort(local[home_b]))]
    wa = whitener.on_channels(x_a[:, :, pos_a], common)
    wb = whitener.on_channels(x_b[:, :, pos_b], common)
    n_t = wa.shape[1]
    if lag >= 0:
        wa, wb = wa[:, lag:], wb[:, :n_t - lag]
    else:
        wa, wb = wa[:, :n_t + lag], wb[:, -lag:]
    n_t = wa.shape[1]
    wa, wb = wa.reshape(len(wa), -1), wb.reshape(len(wb), -1)
    m_a, m_b = wa.mean(axis=0), wb.mean(axis=0)
    signal = np.maximum(np.abs(m_a), np.abs(m_b))
    n_dims = int(np.clip((signal >= p.signal_floor).sum(), min(20, len(signal)), p.max_dims))
    dims = np.argsort(-signal, kind="stable")[:n_dims]
    v_a = max(1.0, float(wa[:, dims].var(axis=0, ddof=1).mean()))
    v_b = max(1.0, float(wb[:, dims].var(axis=0, ddof=1).mean()))
    n_a2, n_b2 = float(np.linalg.norm(m_a[dims])), float(np.linalg.norm(m_b[dims]))
    cos = float(m_a[dims] @ m_b[dims]) / max(n_a2 * n_b2, 1e-12)
    noise = v_a / len(wa) + v_b / len(wb)
    stat, bar = _beyond_scale_and_shift(m_a, m_b, n_t, dims, noise, p, whole_shift)
    logger.debug("Refinement: snippet test n=%d/%d: stat %.1f, bar %.1f (%d dims), cosine "
                 "%.3f.", len(wa), len(wb), stat, bar, n_dims, cos)
    if separation:
        return (stat < bar, cos, n_a2 / max(n_b2, 1e-12),
                float(np.sqrt(stat * noise / (0.5 * (v_a + v_b)))))
    return stat < bar, cos, n_a2 / max(n_b2, 1e-12)


def _coincidences(s1: np.ndarray, s2: np.ndarray, window: int, same: int) -> int:
    """Pairs with ``same < |t1 - t2| <= window``."""
    s2 = np.sort(s2)
    count = 0
    for a, b in ((-window, -same - 1), (same + 1, window)):
        lo = np.searchsorted(s2, s1 + a, side="left")
        hi = np.searchsorted(s2, s1 + b, side="right")
        count += int((hi - lo).sum())
    return count


def _refractory_conflict(s1, s2, window: int, same: int, duration: int) -> bool:
    """Whether two spike trains have too many pairs within `window` for one unit.

    Pairs closer than `same` samples are one spike seen twice (a residual event
    where a template matched a spike poorly), not two.
    """
    expected = len(s1) * len(s2) * 2 * (window - same) / max(duration, 1)
    observed = _coincidences(s1, s2, window, same)
    return observed > max(2.0, 0.3 * expected)


def _duplicates(groups: list, owners: list, samples: np.ndarray, labels: np.ndarray,
                counts: np.ndarray, template_homes: np.ndarray, positions: np.ndarray,
                same: int, p: RefineParameters) -> list[int]:
    """Indices of the groups whose spikes are mostly other templates' spikes, seen again.

    A spike the pursuit matched with a template of another unit's shape leaves
    a residual, the difference of the two, which the residual events collect
    and a later round makes a template of: the same spikes twice, a false
    unit (most false clusters of the 1024 channels). Independent units rarely
    fire within `same` samples of each other (a few % of a unit's spikes,
    whatever their shapes), so a group more than ``p.duplicate_fraction`` of
    whose spikes are within `same` samples of spikes of templates other than
    its own (`owners`: the set of templates whose spikes it holds), whose peak
    channels lie within ``p.merge_radius_um`` of its home, is not a unit (after
    the merges: a group of a template's own misfits joins that template and
    makes its waveform better). The groups are taken from
    the smallest: two copies of one unit's spikes lose the smaller one; a
    template dropped no longer counts. Matched spikes are a sample of each
    template's (`counts`: all of them): each counts for the spikes it stands
    for (``counts / sampled``), so that the count of coincidences is unbiased
    and a sample does not hide a duplicate.
    """
    matched = np.flatnonzero(labels >= 0)
    order = np.argsort(samples[matched], kind="stable")
    m_samples, m_kinds = samples[matched][order], labels[matched][order]
    sampled = np.bincount(m_kinds, minlength=len(counts))
    weight = np.asarray(counts, dtype=np.float64) / np.maximum(sampled, 1)
    gone = np.zeros(len(counts), dtype=bool)
    drop = []
    for i in sorted(range(len(groups)), key=lambda i: (groups[i][1], i)):
        g = groups[i]
        spikes = np.asarray(g[4])
        if len(spikes) == 0:
            continue
        own = np.array(sorted(owners[i]), dtype=np.int64)
        near = np.linalg.norm(positions[template_homes] - positions[g[3]], axis=1) \
            <= p.merge_radius_um
        lo = np.searchsorted(m_samples, spikes - same, side="left")
        hi = np.searchsorted(m_samples, spikes + same, side="right")
        # Every matched spike within `same` samples of one of the group's spikes.
        width = hi - lo
        index = np.repeat(lo - np.cumsum(width) + width, width) + np.arange(width.sum())
        kinds = m_kinds[index]
        ok = near[kinds] & ~gone[kinds] & ~np.isin(kinds, own)
        covered = float(weight[kinds[ok]].sum())
        if covered > p.duplicate_fraction * len(spikes):
            drop.append(i)
            if g[5] < 0:  # not a part of a split (whose parent's other part stays)
                gone[own] = True
    return sorted(drop)


# -- Amplitude --------------------------------------------------------------------------------


def _mean_amplitude(x: np.ndarray, template: np.ndarray,
                    slope: np.ndarray) -> tuple[float, float]:
    """The mean amplitude of whitened snippets `x` on a whitened template.

    ``(mean, standard error)``. Each snippet's amplitude is its coefficient on
    the template in a least-squares fit by the template and its time derivative
    `slope` (whitened too), the scale and shift `_beyond_scale_and_shift` allows:
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


def _amplitudes(x: np.ndarray, template: np.ndarray,
                slope: np.ndarray) -> tuple[np.ndarray, float]:
    """Each whitened snippet's amplitude on a whitened template, and the noise variance of one.

    The coefficients on the template of a least-squares fit by the template and
    its time derivative (see `_mean_amplitude`); the variance is the one white,
    unit-variance noise gives that coefficient (the first diagonal entry of the
    inverse Gram matrix of the two).
    """
    basis = np.stack([template, slope], axis=1)
    # The normal equations of the two-column fit (a least-squares solver per call cost
    # more than the rest of the amplitude split).
    inverse = np.linalg.pinv(basis.T @ basis)
    amplitudes = inverse[0] @ (basis.T @ np.asarray(x).T)
    return amplitudes, float(inverse[0, 0])


def _amplitude_modes(amplitudes: np.ndarray, noise_var: float, p: RefineParameters,
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
        raise ValueError("_amplitude_modes needs the jitter (amplitude_jitter is None)")
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


def _recording_jitter(amplitude_sets: list[tuple[np.ndarray, float]],
                      min_spikes: int) -> float | None:
    """One unit's amplitude jitter, measured on the recording: the median over templates.

    `amplitude_sets`: each template's spikes' amplitudes on it and the noise
    variance of one (`_amplitudes`). A template's jitter is the spread of its
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


def _modes_independent(labels: np.ndarray, samples: np.ndarray, p: RefineParameters) -> bool:
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


def _counted(group: list, copies: set[int]) -> int:
    """The spike count a group's template is built with (`build_templates`' channel test).

    Its matched spikes; for a kept template of `copies` (one of two of one shape
    whose amplitudes form two modes), at least the spikes its mean averaged: the
    test is about the noise of the mean, and the copies of an amplitude split
    are as clean as their parent's mean (counted so when split, `refine`). On
    fewer channels the next pass, the smaller copy explained less of its own
    spikes than the larger one, and matched none. (Applied to every kept
    template, this lost a unit of the 1024 channels.)
    """
    if group[2] is not None and group[2] in copies:
        return max(int(group[1]), int(group[6]))
    return int(group[1])


# -- The refinement ---------------------------------------------------------------------------


def refine(templates, events: Bunch, counts: np.ndarray, sigma_channels: np.ndarray,
           local: np.ndarray, positions: np.ndarray, n_samples: int, sample_rate: float,
           next_id: int, p: RefineParameters = RefineParameters(),
           covariance: np.ndarray | None = None, window_means=None) -> Bunch:
    """New mean waveforms from a matching pass's events (see the module docstring).

    Parameters
    ----------
    templates : TemplateSet
        The templates of the pass.
    events : Bunch
        ``samples``, ``labels`` (template or -1), ``homes``, ``snippets`` (n, n_t, L).
    counts : (K,) int
        Spikes each template matched in the whole pass.
    sigma_channels : (C,) noise standard deviation per channel.
    local : (C, L) each channel's nearest channels.
    covariance : (C, C) or None
        The noise covariance of the channels (None: independent channels).
    next_id : int
        The first unused cluster id.
    window_means : phy_tmatch.means.WindowMeans or None
        If given, a template made from the events' snippets (which have the `L`
        local channels only) gets its other channels from the recording
        (`WindowMeans.widen`); otherwise it keeps the local channels alone.

    Returns
    -------
    Bunch
        ``means`` (K', n_t, C) float64, ``n_spikes`` (K',), ``cluster_ids`` (K',),
        ``changed`` (bool), and the counts ``n_split``, ``n_new``, ``n_merged``,
        ``n_dropped``.
    """
    n_t, n_channels = templates.n_samples, templates.n_channels
    dense = templates.dense().astype(np.float64)
    sigma = np.maximum(np.asarray(sigma_channels, dtype=np.float64), 1e-12)
    labels, homes = np.asarray(events.labels), np.asarray(events.homes)
    snippets = np.asarray(events.snippets, dtype=np.float64)
    samples = np.asarray(events.samples)

    template_homes = np.abs(dense).max(axis=1).argmax(axis=1)
    whitener = SnippetWhitener(covariance, sigma, local)
    whitener.fit_temporal([(snippets[labels == k], int(template_homes[k]))
                           for k in range(templates.n_templates)])

    def whitened(rows, home):
        return whitener(snippets[rows], int(home))

    def embed(rows, home):
        out = np.zeros((n_t, n_channels))
        out[:, local[home]] = snippets[rows].mean(axis=0)
        return out

    # Groups: [mean, n_spikes, cluster id or None (new), home, spike samples, parent
    # template or -1, spikes averaged in the mean, spread of its snippets (`_spread`), its
    # snippets' rows, the home of their channels, whether it is made of residual events,
    # the scale its waveform gets if it is kept as it is (`_mean_amplitude`), whether its
    # mean is of its snippets (on their home's local channels only)].
    def on_template(k, home):
        # The whitened template and its time derivative, on its home's channels.
        waveform_local = dense[k][None][:, :, local[home]]
        return (whitener(waveform_local, home)[0],
                whitener(np.gradient(waveform_local, axis=1), home)[0])

    # One unit's amplitude jitter (`amplitude_split`): given, or measured on the templates.
    jitter = p.amplitude_jitter
    if p.amplitude_split and jitter is None:
        sets = []
        for k in range(templates.n_templates):
            rows = np.flatnonzero(labels == k)
            if len(rows) >= max(p.amplitude_jitter_min_spikes, p.min_spikes):
                home = int(template_homes[k])
                sets.append(_amplitudes(whitened(rows, home), *on_template(k, home)))
        jitter = _recording_jitter(sets, p.amplitude_jitter_min_spikes)
        logger.debug("Refinement: amplitude jitter measured on %d templates: %s.", len(sets),
                     "none" if jitter is None else f"{jitter:.3f}")

    groups = []
    n_split = n_dropped = n_new = n_rescaled = 0
    for k in range(templates.n_templates):
        rows = np.flatnonzero(labels == k)
        if counts[k] < p.min_spikes:
            n_dropped += 1
            continue
        home = int(template_homes[k])
        x = whitened(rows, home)
        parts = split_units(x, p, n_t=n_t) if len(rows) else [np.arange(0)]
        if len(parts) == 1:
            scale = 1.0
            if len(rows) >= p.min_spikes:
                template_w, slope_w = on_template(k, home)
                modes = None
                if p.amplitude_split and jitter is not None:
                    amplitudes, noise_var = _amplitudes(x, template_w, slope_w)
                    modes = _amplitude_modes(amplitudes, noise_var, p, jitter)
                    if modes is not None and not _modes_independent(modes, samples[rows], p):
                        logger.debug("Refinement: template %d: amplitude modes that depend on "
                                     "time or on the interval since the previous spike: one "
                                     "unit.", k)
                        modes = None
                if modes is not None:
                    # Two units of one shape: each a scaled copy of the template (the mean
                    # of a mode's few spikes is noisier); the next pass assigns the spikes.
                    n_split += 1
                    logger.debug("Refinement: template %d (n=%d, amplitude noise %.3f) split "
                                 "by amplitude: groups %d, %d.", k, len(rows),
                                 np.sqrt(noise_var), len(groups), len(groups) + 1)
                    for j in (0, 1):
                        part = np.flatnonzero(modes == j)
                        r = rows[part]
                        scale = float(amplitudes[part].mean())
                        # A copy scaled by c is as noisy, relative to its size, as the
                        # template: the mean of n / c^2 spikes. Counted so, both copies keep
                        # the template's channels (`build_templates` drops those below the
                        # noise of a mean); a copy on fewer channels explains less of any
                        # spike, and the pursuit gave it none.
                        n_equal = max(int(round(int(templates.n_spikes[k]) / scale ** 2)),
                                      len(r))
                        groups.append([dense[k] * scale, n_equal, None, home, samples[r], k,
                                       n_equal, _spread(x[part], p), r, home, False, 1.0,
                                       False])
                    continue
                mean, error = _mean_amplitude(x, template_w, slope_w)
                change = abs(mean - 1.0)
                if (max(p.rescale_significance * error, p.rescale_min_change) < change
                        <= p.rescale_max_change):
                    scale = mean
            groups.append([dense[k], int(counts[k]), int(templates.cluster_ids[k]), home,
                           samples[rows], -1, int(templates.n_spikes[k]), _spread(x, p),
                           rows, home, False, scale, False])
            continue
        n_split += 1
        for part in parts:
            r = rows[part]
            mean = embed(r, home)
            if p.split_far_field:
                mean = _with_far_field(mean, dense[k], local[home], p)
            # A part may be another unit, centred elsewhere.
            peak = int(np.abs(mean / sigma).max(axis=0).argmax())
            groups.append([mean, len(r), None, peak, samples[r], k, len(r),
                           _spread(x[part], p), r, home, False, 1.0, True])
    # Residual events and misfits (`phy_tmatch.residual`), each kind grouped by its home
    # channel (a misfit may also have left a residual event).
    for kind in (labels == -1, labels <= MISFIT) if p.misfits else (labels == -1,):
        residual = np.flatnonzero(kind)
        for home in np.unique(homes[residual]):
            rows = residual[homes[residual] == home]
            if len(rows) < p.min_spikes:
                continue
            x = whitened(rows, home)
            for part in split_units(x, p, n_t=n_t):
                r = rows[part]
                if len(r) < p.min_spikes:
                    continue
                mean = embed(r, home)
                snr = np.abs(mean[:, home]).max() / sigma[home]
                if snr < p.new_min_snr:
                    continue
                n_new += 1
                # Misfits are whole spikes aligned by their template, not events chosen
                # by their troughs (the merges' rule for those does not apply).
                misfits = bool(labels[r[0]] <= MISFIT)
                groups.append([mean, len(r), None, int(home), samples[r], -1, len(r),
                               _spread(x[part], p), r, int(home), not misfits, 1.0, True])

    def amplitude_modes(g, h) -> bool:
        # Both groups' snippets (on one home's channels) on the larger group's waveform.
        if g[10] or h[10] or g[9] != h[9] or not (len(g[8]) and len(h[8])):
            return False
        home = g[9]
        big = g if np.abs(g[0]).max() >= np.abs(h[0]).max() else h
        waveform_local = big[0][None][:, :, local[home]]
        rows = np.concatenate([g[8], h[8]])
        amplitudes, noise_var = _amplitudes(
            whitened(rows, home), whitener(waveform_local, home)[0],
            whitener(np.gradient(waveform_local, axis=1), home)[0])
        modes = _amplitude_modes(amplitudes, noise_var, p, jitter)
        return modes is not None and _modes_independent(modes, samples[rows], p)

    # The templates found to be copies of one shape at two amplitudes (`_counted`).
    copies: set[int] = set()
    # Merges, most similar pairs first.
    refractory = int(round(p.refractory_ms * 1e-3 * sample_rate))
    same = int(round(0.2e-3 * sample_rate))
    # The new groups made of misfits (`phy_tmatch.residual`).
    of_misfits = [g[2] is None and g[5] < 0 and len(g[8]) > 0 and labels[g[8][0]] <= MISFIT
                  for g in groups]
    # The templates whose matched spikes each group holds (`_duplicates`). A group of
    # misfits is, by its making, at spikes other templates matched: it is their better
    # explanation, not a copy of them (it owns them all).
    owners = [set(range(templates.n_templates)) if misfit else {g[5]} if g[5] >= 0
              else ({int(labels[g[8][0]])} if not g[10] and len(g[8]) else set())
              for g, misfit in zip(groups, of_misfits)]
    # The templates a group of misfits was taken from: its spikes were too large for them
    # (that is why they were collected), so the two are not merged.
    parents = [set((MISFIT - labels[g[8]]).tolist()) if misfit else set()
               for g, misfit in zip(groups, of_misfits)]
    max_lag = int(round(p.merge_max_lag_ms * 1e-3 * sample_rate))
    positions = np.asarray(positions, dtype=np.float64)
    pairs = []
    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            hi, hj = groups[i][3], groups[j][3]
            if groups[i][5] >= 0 and groups[i][5] == groups[j][5]:
                continue  # the parts of a split were just found distinct
            if (parents[i] & owners[j] and not parents[j]) or (parents[j] & owners[i]
                                                                and not parents[i]):
                continue  # misfits and the template they were too large for
            if np.linalg.norm(positions[hi] - positions[hj]) > p.merge_radius_um:
                continue
            a, b = groups[i][0] / sigma, groups[j][0] / sigma
            cos, ratio, lag = _similarity(a, b, max_lag)
            alike = cos >= p.merge_similarity and \
                1 / p.merge_amplitude_ratio <= ratio <= p.merge_amplitude_ratio
            by_snippets = False
            if alike and p.distinct_beyond_scale and not (groups[i][10] or groups[j][10]) \
                    and abs(lag) <= 1:
                # Alike waveforms, but their spikes may tell two units apart (a split
                # of a previous round, parts that `_bisect` found beyond a scale and a
                # shift). Residual events are left to the rules below (their means
                # are biased by their selection), and so are groups alike only at a
                # lag of several samples: co-located units are dated on their own
                # troughs, a copy of one unit dated elsewhere is not (two fragments of
                # strong units, 8-9 samples off, 384 channels seed 1).
                one, cos_s, _, separation = _compare_snippets(
                    snippets[groups[i][8]], groups[i][9], snippets[groups[j][8]],
                    groups[j][9], lag, whitener, local, p, separation=True, whole_shift=1)
                # cos_s 0: too few spikes or channels to test.
                alike = one or cos_s == 0.0 or separation < p.min_separation
            if not alike and cos >= p.merge_min_similarity:
                alike, cos_s, ratio_s = _compare_snippets(
                    snippets[groups[i][8]], groups[i][9], snippets[groups[j][8]],
                    groups[j][9], lag, whitener, local, p)
                # A group of residual events is selected by its troughs (its mean is
                # biased: deeper where they were detected), so next to a template of
                # the same unit it looks distinct by the test: alike in shape suffices.
                residual_pair = groups[i][10] or groups[j][10]
                alike = alike or (residual_pair and cos_s >= p.fragment_similarity
                                  and 1 / p.merge_amplitude_ratio <= ratio_s
                                  <= p.merge_amplitude_ratio)
                by_snippets = alike
            if not alike and cos >= 0.5:
                home = groups[i][3] if groups[i][1] >= groups[j][1] else groups[j][3]
                alike = _indistinct(groups[i][0], _shift(groups[j][0], lag),
                                    min(groups[i][1], groups[i][6]),
                                    min(groups[j][1], groups[j][6]), home, whitener, local, p,
                                    groups[i][7], groups[j][7])
            if alike and p.amplitude_split and jitter is not None and amplitude_modes(
                    groups[i], groups[j]):
                # Units of one shape told apart by their amplitudes (a split of a previous
                # round): merged, they would be split again.
                logger.debug("Refinement: groups %d and %d are alike but their amplitudes "
                             "form two modes.", i, j)
                alike = False
                copies.update(g[2] for g in (groups[i], groups[j]) if g[2] is not None)
            logger.debug("Refinement: groups %d (n=%d, home %d) and %d (n=%d, home %d): "
                         "similarity %.3f, amplitude ratio %.2f, lag %d: %s.", i, groups[i][1],
                         hi, j, groups[j][1], hj, cos, ratio, lag,
                         "alike" if alike else "distinct")
            if alike:
                pairs.append((cos, i, j, lag, by_snippets))
    alive = [True] * len(groups)
    n_merged = 0
    for _, i, j, lag, by_snippets in sorted(pairs, reverse=True):
        if not (alive[i] and alive[j]):
            continue
        # The two may date one spike differently (by their lag).
        if _refractory_conflict(groups[i][4], groups[j][4], max(refractory, same + abs(lag) + 1),
                                same + abs(lag), n_samples):
            logger.debug("Refinement: groups %d and %d are alike but not refractory.", i, j)
            continue
        big, small = (i, j) if groups[i][1] >= groups[j][1] else (j, i)
        g, h = groups[big], groups[small]
        # The smaller one aligned on the bigger one (whose spike times stay).
        if by_snippets:
            # Alike by their events, not by their waveforms: a template's waveform
            # (a seed cluster's mean, perhaps of the noise cluster) may be what differs,
            # so the merged one is the mean of both groups' events.
            n_g, n_h = len(g[8]), len(h[8])
            g[0] = (embed(g[8], g[9]) * n_g + _shift(embed(h[8], h[9]), lag if big == i
                                                     else -lag) * n_h) / (n_g + n_h)
        else:
            g[0] = (g[0] * g[6] + _shift(h[0], lag if big == i else -lag) * h[6]) / (g[6]
                                                                                   + h[6])
        if g[9] == h[9]:
            g[8] = np.concatenate([g[8], h[8]])
        g[1] += h[1]
        g[7] = max(g[7], h[7])
        g[6] += h[6]
        g[2] = None
        g[12] = g[12] or by_snippets
        g[4] = np.concatenate([g[4], h[4]])
        alive[small] = False
        owners[big] |= owners[small]
        n_merged += 1
    kept = [g for g, a in zip(groups, alive) if a]
    if p.drop_duplicates and kept:
        # After the merges: a residual group of a template's own misfits (at its spikes)
        # joined that template, and made its waveform better.
        kept_owners = [o for o, a in zip(owners, alive) if a]
        drop = set(_duplicates(kept, kept_owners, samples, labels, counts, template_homes,
                               positions, same, p))
        for i in drop:
            if kept[i][10] and kept[i][2] is None:
                n_new -= 1
            else:
                n_dropped += 1
        kept = [g for i, g in enumerate(kept) if i not in drop]
    if window_means is not None:
        # The snippets' means get the channels beyond the snippets' (see `phy_tmatch.means`):
        # each event's window starts where its snippet did (a misfit of template k, like
        # its matched spikes, at k's trough; a residual event at `before`).
        troughs = np.asarray(templates.trough)
        kinds = np.where(labels >= 0, labels, np.where(labels <= MISFIT, MISFIT - labels, -1))
        starts = samples - np.where(kinds >= 0, troughs[np.maximum(kinds, 0)],
                                    window_means.before)
        for g in kept:
            if g[12] and len(g[8]):
                g[0] = window_means.widen(g[0], starts[g[8]], local[g[9]], sigma, positions)
    # Rescaled after the merges, which compare the waveforms as the pass matched them:
    # rescaling first moved neighbouring weak units within the merge's amplitude ratio
    # (1024 channels: 5 units lost).
    for g in kept:
        if g[2] is not None and g[11] != 1.0:
            g[0] = g[0] * g[11]
            n_rescaled += 1
    ids = []
    for g in kept:
        if g[2] is None:
            g[2] = next_id
            next_id += 1
        ids.append(g[2])
    changed = bool(n_split or n_new or n_merged or n_dropped or n_rescaled)
    logger.info("Template refinement: %d split, %d new, %d merged, %d dropped, %d rescaled: "
                "%d -> %d templates.", n_split, n_new, n_merged, n_dropped, n_rescaled,
                templates.n_templates, len(kept))
    return Bunch(
        means=np.stack([g[0] for g in kept]) if kept else np.zeros((0, n_t, n_channels)),
        n_spikes=np.array([_counted(g, copies) for g in kept], dtype=np.int64),
        cluster_ids=np.array(ids, dtype=np.int64), changed=changed, n_split=n_split,
        n_new=n_new, n_merged=n_merged, n_dropped=n_dropped, n_rescaled=n_rescaled)
