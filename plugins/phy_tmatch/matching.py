"""The matching pursuit over the filtered recording, chunk by chunk.

Each chunk is loaded with a margin on each side (the filter's, plus the
pursuit's `dependency_radius`), band-passed, projected on every template
(`kernels.project`, from the templates' low-rank form), and the greedy pursuit
(`kernels.pursue`, described there) finds the spikes: ``(time, template,
amplitude)`` that most reduce the residual energy, until nothing eligible is
left. Only the spikes whose time falls in the chunk's keep range are kept;
since every decision there depends on traces within the margin, the result
does not depend on the chunk size (and chunks run in parallel).

Thresholds: an entry is eligible when its projection is at least
`z_threshold` times the spread of that template's projection on noise
(``sigma``, measured on excerpts of the recording: `phy_tmatch.runner`) and
its fitted amplitude lies in ``[amplitude_min, amplitude_max]`` widened by
`amplitude_tolerance` standard deviations of that fit (`amplitude_bounds`);
the amplitude subtracted is clipped to ``[amplitude_min, amplitude_max]``.
The defaults (z 5, amplitudes 0.75-1.35) were chosen on the synthetic
recordings (10 % amplitude jitter per spike): recordings whose units vary
more in amplitude (bursts, drift) want a wider range.

Optionally (`amplitude_prior_std`, off by default), a Gaussian prior on the
amplitudes lets a spike prefer, of two templates of one shape and different
sizes, the one on which its amplitude is near 1 (`amplitude_prior`). Measured
on the synthetic recordings (384 channels, seeds 0 and 1; 1024 channels), it
changed the sorted units' accuracy by at most one unit either way, at no
measurable cost: left off for all templates. `amplitude_prior_templates`
limits it to some (the others match as without it): `phy_tmatch.runner` gives
it to the scaled copies of the refinement's amplitude split
(``amplitude_copy_prior_std``), which tie on every spike without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phy_core.bunch import Bunch

from .kernels import (
    cross_correlations,
    dependency_radius,
    project,
    pursue_in,
    transpose,
    transpose_columns,
)


@dataclass(frozen=True)
class MatchParameters:
    """Parameters of the pursuit (see `phy_tmatch.kernels`)."""

    z_threshold: float = 5.0
    amplitude_min: float = 0.75
    amplitude_max: float = 1.35
    amplitude_tolerance: float = 3.0  # in standard deviations of the amplitude estimate
    refractory: int = 30  # samples
    max_rounds: int = 12
    amplitude_prior_std: float | None = None  # None: no amplitude prior (`amplitude_prior`)
    # The templates (indices) the prior applies to; None: all. The scaled copies of an
    # amplitude split (`phy_tmatch.refine`) want it; the other templates match as without.
    amplitude_prior_templates: tuple[int, ...] | None = None


def margin_samples(n_t: int, parameters: MatchParameters, filter_margin: int) -> int:
    """The overlap each chunk needs so that its kept spikes equal the whole recording's."""
    return int(filter_margin) + dependency_radius(n_t, parameters.max_rounds,
                                                  parameters.refractory)


def amplitude_bounds(norm2: np.ndarray, sigma: np.ndarray,
                     parameters: MatchParameters) -> tuple[np.ndarray, np.ndarray]:
    """The eligible range of each template's fitted amplitude (float32 arrays).

    ``[amplitude_min, amplitude_max]`` widened by `amplitude_tolerance` standard
    deviations of the amplitude estimate on noise (``sigma / |T|^2``): weak
    units' amplitudes are noisy, strong ones' are not.
    """
    spread = parameters.amplitude_tolerance * np.asarray(sigma, np.float64) / norm2
    return ((parameters.amplitude_min - spread).astype(np.float32),
            (parameters.amplitude_max + spread).astype(np.float32))


def amplitude_prior(norm2: np.ndarray, sigma: np.ndarray,
                    parameters: MatchParameters) -> np.ndarray | None:
    """The weight ``w_k`` of each template's amplitude prior (float32), or None without one.

    The prior is ``N(1, s^2)`` on a spike's amplitude, ``s`` the parameters'
    `amplitude_prior_std`. The fitted amplitude ``a* = B / |T|^2`` varies by
    ``sigma / |T|^2`` on noise (``sigma``: the measured spread of ``B``), so
    the score ``2 a B - a^2 |T|^2 = |T|^2 (a*^2 - (a - a*)^2)`` is, up to a
    constant, ``2 sigma^2 / |T|^2`` times the log-likelihood of ``a``; in the
    same units the prior's log-density is ``-w (a - 1)^2`` with
    ``w = sigma^2 / (|T|^2 s^2)`` (``1 / s^2`` if the noise of ``B`` were
    white in the whitened metric). See `phy_tmatch.kernels`. With
    ``amplitude_prior_templates``, the other templates' weight is 0 (no prior);
    None when that leaves none.
    """
    s = parameters.amplitude_prior_std
    chosen = parameters.amplitude_prior_templates
    if s is None or (chosen is not None and not len(chosen)):
        return None
    sigma = np.asarray(sigma, np.float64)
    weights = sigma * sigma / (np.asarray(norm2, np.float64) * float(s) ** 2)
    if chosen is not None:
        keep = np.zeros(len(weights), dtype=bool)
        keep[np.asarray(chosen, dtype=np.int64)] = True
        weights[~keep] = 0.0
    return weights.astype(np.float32)


def channel_major(filtered: np.ndarray, scratch: bool = False,
                  columns: np.ndarray | None = None) -> np.ndarray:
    """The chunk ``(n, C)`` as ``(C, n)`` float32 (each channel's samples contiguous).

    With `columns`, only those columns, in that order (``(len(columns), n)``).
    With `scratch`, in the worker's scratch array ``'xt'`` (`phy_tmatch.worker.scratch`).
    """
    from .worker import scratch as scratch_array

    filtered = np.ascontiguousarray(filtered, dtype=np.float32)
    n_rows = filtered.shape[1] if columns is None else len(columns)
    shape = (n_rows, filtered.shape[0])
    xt = scratch_array("xt", shape) if scratch else np.empty(shape, dtype=np.float32)
    if columns is None:
        transpose(filtered, xt)
    else:
        transpose_columns(filtered, np.asarray(columns, dtype=np.int64), xt)
    return xt


def reads_most_channels(templates, n_channels: int) -> bool:
    """Whether the templates' projections read at least half of the channels.

    If not, `projections` makes only the channels they read channel-major.
    """
    return 2 * len(np.unique(templates.pidx)) >= n_channels


def projections(filtered: np.ndarray, templates, xt: np.ndarray | None = None,
                scratch: bool = False) -> np.ndarray:
    """``B[k, s]``: projection of the chunk on template ``k`` starting at row ``s``.

    ``(K, n - n_t + 1)`` float32 (no column when the chunk is shorter than a template).
    `xt`: the chunk already channel-major (`channel_major`), if at hand. With
    `scratch`, the result (and the channel-major chunk) are the worker's scratch
    arrays ``'b'`` and ``'xt'`` (`phy_tmatch.worker.scratch`).
    """
    from .worker import scratch as scratch_array

    n_t = templates.n_samples
    m = max(filtered.shape[0] - n_t + 1, 0)
    shape = (templates.n_templates, m)
    out = scratch_array("b", shape) if scratch else np.empty(shape, dtype=np.float32)
    if m:
        pidx = templates.pidx
        if xt is None:
            # A few templates (the noise of the templates a refinement changed) read
            # a few channels: only those are made channel-major.
            if reads_most_channels(templates, filtered.shape[1]):
                xt = channel_major(filtered, scratch)
            else:
                used = np.unique(pidx)
                xt = channel_major(filtered, scratch, columns=used)
                pidx = np.searchsorted(used, pidx)
        project(xt, templates.pptr, pidx, templates.pspatial, templates.temporal, out)
    return out


def template_cross_correlations(templates) -> np.ndarray:
    return cross_correlations(templates.temporal, templates.ptr, templates.idx,
                              templates.spatial, templates.spatial_dense(projection=True),
                              templates.nbr_ptr, templates.nbr_idx)


def match_chunk(setup, chunk, filtered: np.ndarray, xt: np.ndarray | None = None) -> Bunch:
    """The spikes of one chunk (those whose time is in its keep range).

    `xt`: the chunk channel-major (`channel_major`; the worker's filter writes
    it, `phy_tmatch.worker.filtered_chunk`), if at hand; it may be changed (it
    becomes the residual with ``setup.collect``).

    Returns
    -------
    Bunch
        ``spike_samples`` (int64, absolute), ``spike_templates`` (int64),
        ``amplitudes`` (float32), sorted by sample then template; ``n_rounds``;
        ``capped`` (bool: the round cap stopped the pursuit); ``events``: with
        ``setup.collect``, what `phy_tmatch.residual.collect_events` collects
        for the refinement, else None.
    """
    from .worker import cached, scratch

    t = setup.templates
    p = setup.parameters
    cc = setup.cross_correlations
    if cc is None:
        cc = cached(setup.token, lambda: template_cross_correlations(t))
    # Scratch arrays (reused by the worker's next chunk): nothing returned refers to them.
    if xt is None and setup.collect is not None:
        xt = channel_major(filtered, scratch=True)
    b = projections(filtered, t, xt, scratch=True)
    sigma = np.asarray(setup.sigma, dtype=np.float32)
    alo, ahi = amplitude_bounds(t.norm2, sigma, p)
    prior = amplitude_prior(t.norm2, sigma, p)
    k, m = b.shape
    spikes, amplitudes, n_rounds = pursue_in(
        b, t.norm2, sigma, np.float32(p.z_threshold), np.float32(p.amplitude_min),
        np.float32(p.amplitude_max), alo, ahi, int(p.refractory), t.nbr_ptr, t.nbr_idx, cc,
        int(p.max_rounds), scratch("score", (k, m)), scratch("blocked", (k, m), np.uint8),
        scratch("search", (m // 2 + 1, 2), np.int64), scratch("marks_search", (m,), np.uint8),
        # Without a prior, the arguments (and the compiled kernel) of the warm-up.
        *(() if prior is None else (prior,)))
    starts, kinds = spikes[:, 0], spikes[:, 1]
    events = None
    if setup.collect is not None:
        from .residual import collect_events, local_templates

        c = setup.collect
        local = cached(setup.token, lambda: local_templates(t, c.local, c.template_home),
                       "local")
        events = collect_events(c, t, chunk, xt, starts, kinds, amplitudes, local)
    samples = chunk.load_start + starts + t.trough[kinds]
    keep = (samples >= chunk.keep_start) & (samples < chunk.keep_stop)
    samples, kinds, amplitudes = samples[keep], kinds[keep], amplitudes[keep]
    order = np.lexsort((kinds, samples))
    return Bunch(spike_samples=samples[order], spike_templates=kinds[order],
                 amplitudes=amplitudes[order], n_rounds=int(n_rounds),
                 capped=bool(n_rounds > p.max_rounds), events=events)
