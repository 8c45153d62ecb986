"""What a matching pass leaves behind, collected in the workers for the template refinement.

After the pursuit of a chunk (`phy_tmatch.matching.match_chunk`), every accepted
spike ``a T_k`` is subtracted from the band-passed chunk: what remains is the
*residual*. Two kinds of *events* are collected from it, each a *snippet*: the
window of the template's length on the `L` channels nearest to the event's
*home* channel (`local_channels`), in band-passed units.

- Matched spikes: the residual plus the spike's own ``a T_k`` (the spike as
  the recording has it, with its neighbours' spikes removed: what the
  "peeler" sorters look at), home channel = the template's peak channel. At
  most `max_per_template` of each template's spikes per chunk (evenly spread);
  the parent caps each template's total (`phy_tmatch.event_sample`), so the
  memory of a pass does not grow with the recording.
- Residual events: spikes no template explained. A channel's residual is
  divided by its noise and summed over its nearest channels with weights
  (`pooled_residual`: a unit's spike spans several channels, noise
  much less; the weights discount the noise they share: `pooling_weights`),
  and the troughs of that statistic below ``-threshold`` times its
  robust spread, minimal among their neighbour channels within a template's
  half-length, are the events (`residual_troughs`); home channel = the trough's.
- Misfits (label ``MISFIT - k``): every matched spike of template ``k`` whose
  amplitude the pursuit clipped at its upper bound (``amplitude_max``): a
  larger unit's spike, which the template explains only in part. A unit
  without a template of its own whose spikes a smaller neighbour's template
  matches (co-located units of one shape and different sizes, a sparse unit
  next to a frequent one) shows so: on the 1024-channel synthetic recording,
  7 of 8, 7 of 7 and 5 of 9 such spikes were clipped, and none of the
  template's own unit's. Its snippet is the residual plus the ``a T`` of the
  spike and of the spikes matched with it (troughs within `misfit_window`
  samples, 0.2 ms, homes among its local channels: such a spike is often
  matched by two neighbours' templates at once, each in part): the spike as
  the recording has it (`add_back_misfits`). A misfit matched with a larger
  spike is that spike's remainder, which a weak template took, and is left
  out (`misfit_partners`).

The parent clusters them (`phy_tmatch.refine`) into new, split and merged
templates.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from phy_core.bunch import Bunch

from .kernels import abs_medians
from .matching import MatchParameters
from .worker import scratch

_MAD_TO_STD = 0.6744897501960817
#: The label of a misfit of template ``k`` is ``MISFIT - k``.
MISFIT = -3


def local_channels(positions: np.ndarray, n_local: int) -> np.ndarray:
    """``(C, L)`` int64: each channel's `n_local` nearest channels (itself first)."""
    positions = np.asarray(positions, dtype=np.float64)
    d = np.sqrt(((positions[:, None, :] - positions[None, :, :]) ** 2).sum(axis=-1))
    order = np.argsort(d + np.eye(len(d)) * -1.0, axis=1, kind="stable")
    return np.ascontiguousarray(order[:, :min(n_local, len(d))], dtype=np.int64)


def pooling_weights(positions: np.ndarray, local: np.ndarray, n_pool: int, width_um: float,
                    sigma: np.ndarray, covariance: np.ndarray | None = None,
                    regularization: float = 1e-3) -> np.ndarray:
    """``(C, P)`` float32 weights of each channel's `n_pool` nearest channels' ``x / sigma``.

    The detector of a spike with a Gaussian footprint ``g`` (`width_um`) centred on
    the channel, in noise of covariance ``C`` on those channels: ``C^-1 g`` (as
    for the projection templates, `phy_tmatch.whitening`: the background shared
    by nearby channels is discounted; independent channels pooled with weights
    ``g`` alone do worse than the centre channel on its own). Without a
    covariance, ``g``. The statistic is normalized afterwards by its spread.
    """
    positions = np.asarray(positions, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    nbr = local[:, :n_pool]
    out = np.zeros(nbr.shape)
    for c in range(len(nbr)):
        chans = nbr[c]
        d2 = ((positions[chans] - positions[c]) ** 2).sum(axis=-1)
        g = np.exp(-0.5 * d2 / max(width_um, 1e-9) ** 2)
        if covariance is None:
            out[c] = g
            continue
        cov = np.asarray(covariance, dtype=np.float64)[np.ix_(chans, chans)]
        cov = cov + regularization * max(float(np.trace(cov)) / len(chans), 1e-30) * np.eye(
            len(chans))
        # Weights on x are C^-1 g; on x / sigma, times sigma.
        out[c] = np.linalg.solve(cov, g) * sigma[chans]
    out /= np.maximum(np.abs(out).max(axis=1, keepdims=True), 1e-30)
    return out.astype(np.float32)


@njit(cache=True)
def subtract_spikes(xt, starts, kinds, amplitudes, ptr, idx, spatial,
                    temporal):  # pragma: no cover - compiled
    """``xt[c, s + tau] -= a T_k(tau, c)`` for every spike ``(s, k, a)``, in place.

    `xt` is the chunk channel-major, ``(C, n)``.
    """
    rank, n_t = temporal.shape[1], temporal.shape[2]
    for i in range(len(starts)):
        s, k, a = starts[i], kinds[i], amplitudes[i]
        for j in range(ptr[k], ptr[k + 1]):
            row = xt[idx[j]]
            for r in range(rank):
                w = a * spatial[j, r]
                for tau in range(n_t):
                    row[s + tau] -= w * temporal[k, r, tau]


def misfit_partners(troughs: np.ndarray, sizes: np.ndarray, misfits: np.ndarray,
                    homes: np.ndarray, local: np.ndarray, window: int,
                    max_ratio: float = 2.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """The misfits that are a spike of their own, and the spikes matched with each.

    `troughs`, `sizes` (``a`` times the template's peak), `homes`: of every spike
    of the chunk; `misfits`: indices of the clipped ones. A misfit's partners are
    the spikes (itself included) whose troughs are within `window` samples of its
    own and whose homes are among its local channels. A misfit with a partner
    more than `max_ratio` times larger is that partner's unit's remainder (a weak
    template takes what a strong unit's template leaves of its spikes), not a
    unit without a template: left out. Returns (kept misfits, their partners).
    """
    order = np.argsort(troughs, kind="stable")
    sorted_troughs = troughs[order]
    kept, partners = [], []
    for i in misfits:
        lo = np.searchsorted(sorted_troughs, troughs[i] - window, side="left")
        hi = np.searchsorted(sorted_troughs, troughs[i] + window, side="right")
        near = order[lo:hi]
        near = near[np.isin(homes[near], local[homes[i]])]
        if sizes[near].max() > max_ratio * sizes[i]:
            continue
        kept.append(i)
        partners.append(near)
    return np.array(kept, dtype=np.int64), partners


def add_back_misfits(xt: np.ndarray, snippets: np.ndarray, templates, starts: np.ndarray,
                     kinds: np.ndarray, amplitudes: np.ndarray, misfits: np.ndarray,
                     partners: list[np.ndarray], homes: np.ndarray,
                     local: np.ndarray) -> None:
    """``snippets[j]``: misfit ``misfits[j]``'s window, the residual plus its partners' ``a T``.

    On its home's local channels: the spike as the recording has it (a unit
    without a template is often matched by two neighbours' templates at once,
    each in part; `misfit_partners`). `xt`, the residual, is left as it was.
    """
    n_t = templates.n_samples
    for j, (i, near) in enumerate(zip(misfits, partners)):
        m_starts, m_kinds = starts[near].astype(np.int64), kinds[near].astype(np.int64)
        m_amp = amplitudes[near].astype(np.float32)
        subtract_spikes(xt, m_starts, m_kinds, -m_amp, templates.ptr, templates.idx,
                        templates.spatial, templates.temporal)
        snippets[j] = xt[local[homes[i]][None, :], starts[i] + np.arange(n_t)[:, None]]
        subtract_spikes(xt, m_starts, m_kinds, m_amp, templates.ptr, templates.idx,
                        templates.spatial, templates.temporal)


#: `pooled_residual` works on blocks of this many samples (its accumulator stays in L1,
#: and the rows of nearby channels, which share neighbours, in L2).
POOL_BLOCK = 4096


@njit(cache=True)
def pooled_residual(xt, inv_sigma, nbr, weights, out):  # pragma: no cover - compiled
    """``out[c] = sum_p weights[c, p] xt[nbr[c, p]] / sigma[nbr[c, p]]`` (rows: channels).

    `sampled_pooled_residual` without the sample.
    """
    sampled_pooled_residual(xt, inv_sigma, nbr, weights, out, 0,
                            np.empty((0, 0), dtype=np.float32))


@njit(cache=True, fastmath=True)
def sampled_pooled_residual(xt, inv_sigma, nbr, weights, out, step,
                            sampled):  # pragma: no cover - compiled
    """`pooled_residual`, and with ``step > 0`` ``sampled[:] = out[:, ::step]`` too.

    Channel-major, so that every inner loop is a contiguous SIMD loop. Blocks of
    `POOL_BLOCK` samples are the outer loop, and four neighbours are added per
    pass over the accumulator (each sample's terms still added in the order of
    `nbr`, so the result is the same as one neighbour at a time). The sample is
    copied from the accumulator while it is in the cache: its median then reads a
    contiguous array, not one value per cache line of `out` (`POOL_BLOCK` is a
    multiple of `step`).
    """
    n_channels, n = xt.shape
    n_pool = nbr.shape[1]
    if step > 0 and POOL_BLOCK % step:
        raise ValueError("sampled_pooled_residual: step must divide POOL_BLOCK.")
    # A buffer of its own: LLVM vectorizes the loop only when it cannot alias `xt`.
    acc = np.empty(POOL_BLOCK, dtype=np.float32)
    for t0 in range(0, n, POOL_BLOCK):
        t1 = min(t0 + POOL_BLOCK, n)
        nb = t1 - t0
        for c in range(n_channels):
            acc[:nb] = 0.0
            p = 0
            while p + 4 <= n_pool:
                j0, j1, j2, j3 = nbr[c, p], nbr[c, p + 1], nbr[c, p + 2], nbr[c, p + 3]
                w0 = np.float32(weights[c, p] * inv_sigma[j0])
                w1 = np.float32(weights[c, p + 1] * inv_sigma[j1])
                w2 = np.float32(weights[c, p + 2] * inv_sigma[j2])
                w3 = np.float32(weights[c, p + 3] * inv_sigma[j3])
                r0, r1 = xt[j0, t0:t1], xt[j1, t0:t1]
                r2, r3 = xt[j2, t0:t1], xt[j3, t0:t1]
                for t in range(nb):
                    a = acc[t] + w0 * r0[t]
                    a = a + w1 * r1[t]
                    a = a + w2 * r2[t]
                    acc[t] = a + w3 * r3[t]
                p += 4
            while p < n_pool:
                j = nbr[c, p]
                w = np.float32(weights[c, p] * inv_sigma[j])
                row = xt[j, t0:t1]
                for t in range(nb):
                    acc[t] += w * row[t]
                p += 1
            out[c, t0:t1] = acc[:nb]
            if step > 0:
                for q in range((nb + step - 1) // step):
                    sampled[c, t0 // step + q] = acc[q * step]


@njit(cache=True)
def residual_troughs(z, threshold, nbr, half_width, lo, hi,
                     max_events):  # pragma: no cover - compiled
    """Troughs ``(t, c)`` of the normalized statistic `z` ``(C, n)`` with ``lo <= t < hi``.

    A trough is below ``-threshold`` and the minimum (ties: earlier sample, then
    lower channel) over its neighbour channels and ``t +- half_width``. Sorted
    by channel, then sample.
    """
    return scaled_troughs(z, np.ones(z.shape[0], dtype=z.dtype), threshold, nbr, half_width,
                          lo, hi, max_events)


@njit(cache=True)
def scaled_troughs(z, scale, threshold, nbr, half_width, lo, hi,
                   max_events):  # pragma: no cover - compiled
    """`residual_troughs` of ``z / scale[:, None]``, dividing only the values it compares.

    The same divisions (float32, correctly rounded) as dividing `z` first, so the
    same troughs, without a pass that reads and writes the whole chunk: a row's
    minimum over a scan block is the minimum of the divided values divided (a
    division by a positive number is monotone), and only the blocks below the
    threshold are divided value by value.
    """
    n_channels, n = z.shape
    out = np.empty((max_events, 2), dtype=np.int64)
    count = 0
    # The minimum of each 64 samples first: most hold none below the threshold.
    scan = 64
    for c in range(n_channels):
        row = z[c]
        s = scale[c]
        for t0 in range(lo, hi, scan):
            t1 = min(t0 + scan, hi)
            low = row[t0]
            for t in range(t0 + 1, t1):
                low = min(low, row[t])
            if low / s >= -threshold:
                continue
            for t in range(t0, t1):
                v = row[t] / s
                if v >= -threshold:
                    continue
                best = True
                for p in range(nbr.shape[1]):
                    cc = nbr[c, p]
                    sc = scale[cc]
                    for u in range(max(0, t - half_width), min(n, t + half_width + 1)):
                        w = z[cc, u] / sc
                        if w < v or (w == v and (u < t or (u == t and cc < c))):
                            best = False
                            break
                    if not best:
                        break
                if best and count < max_events:
                    out[count, 0] = t
                    out[count, 1] = c
                    count += 1
    return out[:count]


def _evenly(indices: np.ndarray, n_max: int) -> np.ndarray:
    if len(indices) <= n_max:
        return indices
    return indices[np.linspace(0, len(indices) - 1, n_max).round().astype(np.int64)]


def collect_events(collect: Bunch, templates, chunk, xt: np.ndarray, starts: np.ndarray,
                   kinds: np.ndarray, amplitudes: np.ndarray, local_templates: np.ndarray) -> Bunch:
    """The events of one chunk (see the module docstring).

    `xt` is the band-passed chunk, channel-major ``(C, n)``: it becomes the residual.

    `starts`, `kinds`, `amplitudes`: every spike the pursuit accepted in the
    chunk (margins included); `local_templates` ``(K, n_t, L)``: each template
    on its home channel's local channels.

    Returns
    -------
    Bunch
        ``samples`` (absolute trough samples), ``labels`` (template, -1 for a
        residual event, ``MISFIT - k`` for a misfit of template ``k``),
        ``homes`` (home channel), ``snippets`` (n, n_t, L) float32, only for
        events whose sample is in the chunk's keep range.
    """
    n_t = templates.n_samples
    subtract_spikes(xt, starts.astype(np.int64), kinds.astype(np.int64),
                    amplitudes.astype(np.float32), templates.ptr, templates.idx,
                    templates.spatial, templates.temporal)
    offset = chunk.load_start
    keep_lo, keep_hi = chunk.keep_start - offset, chunk.keep_stop - offset
    local = collect.local
    before = int(collect.before)

    # Matched spikes of the keep range, at most `max_per_template` per template.
    samples = starts + templates.trough[kinds]
    inside = np.flatnonzero((samples >= keep_lo) & (samples < keep_hi))
    chosen = [_evenly(inside[kinds[inside] == k], int(collect.max_per_template))
              for k in np.unique(kinds[inside])]
    chosen = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    # Misfits: every matched spike of the keep range whose amplitude the pursuit clipped
    # at its upper bound (a larger unit's spike, which the template explains only in part).
    amplitude_max = float(collect.get("amplitude_max", MatchParameters.amplitude_max))
    misfit = inside[amplitudes[inside] >= np.float32(amplitude_max) * np.float32(1 - 1e-6)] \
        if collect.get("misfits", True) else np.zeros(0, np.int64)
    partners = []
    if len(misfit):
        spike_homes = collect.template_home[kinds]
        sizes = amplitudes * np.abs(local_templates).max(axis=(1, 2))[kinds]
        misfit, partners = misfit_partners(
            starts + templates.trough[kinds], sizes, misfit, spike_homes, local,
            int(collect.get("misfit_window", max(1, before // 4))))
    n_matched = len(chosen)
    chosen = np.concatenate([chosen, misfit]).astype(np.int64)
    m_starts, m_kinds = starts[chosen], kinds[chosen]
    m_homes = collect.template_home[m_kinds]

    # Residual events.
    inv_sigma = (1.0 / np.maximum(collect.sigma_channels, 1e-12)).astype(np.float32)
    pooled = scratch("pooled", xt.shape, xt.dtype)  # reused by the worker's next chunk
    # Every 16th sample of each row, whose median is the statistic's spread.
    sampled = scratch("pooled_sample", (xt.shape[0], (xt.shape[1] + 15) // 16), xt.dtype)
    sampled_pooled_residual(xt, inv_sigma, collect.pool_channels, collect.pool_weights,
                            pooled, 16, sampled)
    spread = abs_medians(sampled, 1) / _MAD_TO_STD  # = np.median(np.abs(pooled[:, ::16]), 1)
    # Troughs whose window fits in the chunk, of the statistic over its spread (divided
    # as it is compared: the same values as dividing `pooled` first).
    n = xt.shape[1]
    lo, hi = max(keep_lo, before), min(keep_hi, n - (n_t - before) + 1)
    troughs = scaled_troughs(pooled, np.maximum(spread, 1e-12).astype(np.float32),
                             np.float32(collect.residual_threshold), collect.pool_channels,
                             n_t // 2, lo, max(lo, hi), int(collect.max_residual))
    r_times, r_homes = troughs[:, 0], troughs[:, 1]
    keep = np.concatenate([_evenly(np.flatnonzero(r_homes == c),
                                   int(collect.max_residual_per_channel))
                           for c in np.unique(r_homes)]) if len(r_homes) else np.zeros(0, int)
    keep = np.sort(keep)
    r_times, r_homes = r_times[keep], r_homes[keep]

    all_starts = np.concatenate([m_starts, r_times - before]).astype(np.int64)
    homes = np.concatenate([m_homes, r_homes]).astype(np.int64)
    rows = all_starts[:, None] + np.arange(n_t)[None, :]
    snippets = xt[local[homes][:, None, :], rows[:, :, None]]  # (n, n_t, L)
    # The matched spikes with their own template added back.
    if n_matched:
        snippets[:n_matched] += (amplitudes[chosen[:n_matched]][:, None, None]
                                 * local_templates[m_kinds[:n_matched]])
    if len(misfit):
        add_back_misfits(xt, snippets[n_matched:len(chosen)], templates, starts, kinds,
                         amplitudes, misfit, partners, spike_homes, local)
    labels = np.concatenate([m_kinds[:n_matched], MISFIT - m_kinds[n_matched:],
                             np.full(len(r_times), -1)]).astype(np.int64)
    trough = np.concatenate([templates.trough[m_kinds], np.full(len(r_times), before)])
    return Bunch(samples=(all_starts + trough + offset).astype(np.int64), labels=labels,
                 homes=homes, snippets=snippets.astype(np.float32))


def home_channels(templates) -> np.ndarray:
    """Each template's peak channel (largest ``|T|``)."""
    return np.abs(templates.dense()).max(axis=1).argmax(axis=1).astype(np.int64)


def local_templates(templates, local: np.ndarray, homes: np.ndarray) -> np.ndarray:
    """``(K, n_t, L)``: each template on its home channel's local channels."""
    dense = templates.dense()
    return np.stack([dense[k][:, local[homes[k]]] for k in range(templates.n_templates)]) \
        if templates.n_templates else np.zeros((0, templates.n_samples, local.shape[1]),
                                               np.float32)
