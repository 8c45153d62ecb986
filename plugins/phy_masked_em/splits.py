"""The split step of the masked EM (KlustaKwik 2's ``try_splits``).

Each Gaussian cluster is clustered on its own (its spikes only, no noise or MUA
cluster, no deletion): once as one cluster, once as two, started from the two
sides of the first principal axis of its corrected data (deterministic and
independent of the spike order, where KlustaKwik 2 starts at random). If two
clusters score better there, the split is evaluated on the whole data set: the
score of every spike under its own cluster, plus the penalties, with and
without the split; it is kept if that score is lower, unless the two halves
are one unit (`merge.halves_alike`: alike mean waveforms and a single mode, as a
unit cut by its amplitude or its mask patterns).

Only the split cluster's spikes need evaluating: the other clusters keep their
parameters, and their spikes' log-likelihoods only change through the weights'
common denominator, which grows by `prior_point`. The noise and MUA clusters are
split too (`try_splits`).

A split is also vetoed when one of its halves would be joined with another cluster
by the next merge step (`merge.joining_cluster`, the test of `merge_similar`): the
merge would undo it, the E-step would rebuild the cluster, and the split would come
back, iteration after iteration (`loop.CycleStop` ends the cycles this test does not
foresee).

Everything a trial computes from a cluster's spikes (the two-cluster fit, the costs of
the halves and of the whole, which half of the MUA cluster stays, whether the halves are
alike) depends on that set of spikes alone, and most clusters keep theirs from one
split step to the next (on 384 channels, 80% of the trials): a `SplitCache` keeps the
trials of the last split step, keyed by a digest of the spike set, and only the
score arithmetic, which depends on the other clusters, is redone. The labels are the
same as without it, bit for bit.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np

from .data import subset
from .em import FIRST_GAUSSIAN, MUA, NOISE, MaskedEM
from .merge import WaveformStats, halves_alike, joining_cluster

logger = logging.getLogger("phy")

_MIN_SPLIT_SIZE = 4
_POWER_ITERATIONS = 30
# Largest change of a unit-norm axis entry at which the power iteration stops.
_POWER_TOLERANCE = 1e-4
# Iterations of the CEM on a cluster's spikes when `max_split_iterations` is None.
_SPLIT_ITERATIONS = 100


def principal_halves(em: MaskedEM) -> np.ndarray | None:
    """Labels 2 and 3: the two sides of the first principal axis of the data, or None."""
    from .kernels import sparse_cov_matvec, sparse_project

    d = em.data
    mean = np.bincount(d.indices, weights=d.dy, minlength=d.n_features) / d.n_spikes
    v = np.full(d.n_features, 1.0 / math.sqrt(d.n_features))
    for _ in range(_POWER_ITERATIONS):
        w = sparse_cov_matvec(d.indptr, d.indices, d.dy, mean, v)
        norm = np.linalg.norm(w)
        if norm == 0:
            return None
        w /= norm
        # Converged: only the sides of the axis matter, not its last digits.
        done = np.abs(w - v).max() < _POWER_TOLERANCE
        v = w
        if done:
            break
    v *= np.sign(v[np.argmax(np.abs(v))])
    side = sparse_project(d.indptr, d.indices, d.dy, v) > mean @ v
    if side.all() or not side.any():
        return None
    return np.where(side, 3, 2).astype(np.int64)


def _fit_costs(em: MaskedEM, labels: np.ndarray):
    """Per cluster id: summed negative log-likelihood of its spikes *without* the weight
    term (inf if it could not be fitted), spike counts, and summed penalty parameters."""
    model = em.fit(labels)
    n_clusters = int(labels.max()) + 1
    slot = model.slot_of(n_clusters)[labels]
    log_p = em.own_log_p(model, labels) + np.log(model.weights[slot])
    return (np.bincount(labels, weights=log_p, minlength=n_clusters),
            np.bincount(labels, minlength=n_clusters),
            np.bincount(labels, weights=em.params, minlength=n_clusters))


def _score(em: MaskedEM, costs, counts, params, denom: float, prior: float) -> float:
    """Score of the non-empty clusters ``2, 3, ...`` of `costs` (see `_fit_costs`),
    weights ``(count + prior) / denom``, with `em`'s penalties."""
    c = counts[FIRST_GAUSSIAN:]
    raw = costs[FIRST_GAUSSIAN:] - c * np.log((c + prior) / denom)
    return float(raw[c > 0].sum() + em.penalty(params[FIRST_GAUSSIAN:], c).sum())


def split_candidate(em: MaskedEM, spikes: np.ndarray) -> np.ndarray | None:
    """Labels 2 or 3 of `spikes` splitting them in two clusters that score better
    than one on these spikes alone (KlustaKwik 2's ``K2``), or None."""
    sub = MaskedEM(subset(em.data, spikes), em.p, use_noise=False, use_mua=False)
    return _split_candidate(sub, em.p)[0]


def _split_candidate(sub: MaskedEM, p: dict):
    """`split_candidate` on the spikes' own `sub` (no noise or MUA cluster): the halves
    (or None) and, with halves, the `_fit_costs` of the halves and of the whole."""
    labels = principal_halves(sub)
    if labels is None:
        return None, None, None
    max_iterations = p.get("max_split_iterations") or _SPLIT_ITERATIONS
    for _ in range(int(max_iterations)):
        new, _, _, _ = sub.e_step(sub.fit(labels))
        if np.any(new < FIRST_GAUSSIAN) or len(np.unique(new)) < 2:
            return None, None, None
        changed = np.count_nonzero(new != labels)
        labels = new
        if changed == 0:
            break
    prior = float(p["prior_point"])
    n = sub.data.n_spikes
    split_costs = _fit_costs(sub, labels)
    unsplit_costs = _fit_costs(sub, np.full(n, FIRST_GAUSSIAN, dtype=np.int64))
    if (_score(sub, *split_costs, n + 2 * prior, prior)
            >= _score(sub, *unsplit_costs, n + prior, prior)):
        return None, None, None
    return labels, split_costs, unsplit_costs


@dataclass
class _Trial:
    """What a split trial computed from a set of spikes alone (see the module docstring)."""

    halves: np.ndarray | None  # labels 2 and 3 of the spikes, None: no split candidate
    split_costs: tuple | None = None  # `_fit_costs` of the halves
    unsplit_costs: tuple | None = None  # `_fit_costs` of the whole
    mua_half: int | None = None  # the half that stays MUA (MUA cluster only)
    alike: bool | None = None  # `halves_alike` (None: not computed yet)


class SplitCache:
    """The split trials of the last `try_splits` call, by spike set.

    Bounded: each call keeps only the trials of the spike sets it saw, so the cache
    holds at most one trial per cluster (halves as small integers).
    """

    def __init__(self) -> None:
        self._trials: dict[bytes, _Trial] = {}
        self._next: dict[bytes, _Trial] = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(spikes: np.ndarray, c: int) -> bytes:
        """A digest of the spike set, and whether it is the noise, MUA or a Gaussian
        cluster (which the trials of the first two also depend on)."""
        spikes = np.ascontiguousarray(spikes, dtype=np.int64)
        kind = min(int(c), FIRST_GAUSSIAN)
        return (hashlib.blake2b(spikes.tobytes(), digest_size=20).digest()
                + len(spikes).to_bytes(8, "little") + kind.to_bytes(1, "little"))

    def get(self, key: bytes) -> _Trial | None:
        trial = self._trials.get(key)
        if trial is None:
            self.misses += 1
        else:
            self.hits += 1
            self._next[key] = trial
        return trial

    def put(self, key: bytes, trial: _Trial) -> None:
        self._next[key] = trial

    def end_step(self) -> None:
        """Forget the trials of spike sets this step did not see."""
        self._trials, self._next = self._next, {}


def _trial(em: MaskedEM, spikes: np.ndarray, c: int, cache: SplitCache | None):
    """The trial of cluster `c` (spikes `spikes`) and its spikes' `MaskedEM` (None when
    the trial came from the cache)."""
    key = cache.key(spikes, c) if cache is not None else None
    trial = cache.get(key) if cache is not None else None
    if trial is not None:
        return trial, None
    sub = MaskedEM(subset(em.data, spikes), em.p, use_noise=False, use_mua=False)
    halves, split_costs, unsplit_costs = _split_candidate(sub, em.p)
    trial = _Trial(None if halves is None else halves.astype(np.int8), split_costs,
                   unsplit_costs)
    if halves is not None and c == MUA:
        # (Its spikes were fitted with `prior_point`: a negligible difference.)
        stats = WaveformStats(sub.data, halves, FIRST_GAUSSIAN + 2)
        energy = [stats.mean(h) @ stats.mean(h) for h in (FIRST_GAUSSIAN, FIRST_GAUSSIAN + 1)]
        trial.mua_half = int(np.argmin(energy)) + FIRST_GAUSSIAN
    if cache is not None:
        cache.put(key, trial)
    return trial, sub


def _noise_split(em: MaskedEM, halves, costs, counts, params, denom: float, prior: float):
    """Carving a Gaussian cluster out of the noise cluster's spikes: the score change (but
    the other spikes' weights) and the labels of the spikes, one half staying noise."""
    n_noise, p0 = len(halves), float(em.p["noise_point"])
    before = -n_noise * math.log((n_noise + p0) / denom)
    options = []
    for keep, new in ((FIRST_GAUSSIAN, FIRST_GAUSSIAN + 1), (FIRST_GAUSSIAN + 1, FIRST_GAUSSIAN)):
        n_keep, n_new = counts[keep], counts[new]
        after = (-n_keep * math.log((n_keep + p0) / (denom + prior)) + costs[new]
                 - n_new * math.log((n_new + prior) / (denom + prior))
                 + em.penalty([params[new]], [n_new])[0])
        options.append((after - before, np.where(halves == keep, NOISE, -1)))
    return min(options, key=lambda option: option[0])


class _Joins:
    """Would the merge step join a half of a split with another cluster? Then the split
    would be undone at the next split step, the E-step would rebuild the cluster, and the
    split would happen again: a cycle that never converges (measured on a 1024-channel
    recording of 28,000 spikes: the same 66-spike cluster split every third iteration up
    to `max_iterations`). Such a split is vetoed instead."""

    def __init__(self, data, labels, order, bounds, gaussian, threshold) -> None:
        # One spare slot (the last) for the half tested.
        self.stats = WaveformStats(data, labels, int(labels.max()) + 2)
        self.members = {int(c): order[bounds[c]:bounds[c + 1]] for c in gaussian}
        self.data, self.threshold = data, threshold

    def target(self, sub_data, spikes, halves, new, c) -> int | None:
        """The cluster a half that becomes a Gaussian cluster would merge into, or None."""
        if self.threshold is None or self.threshold > 1:
            return None
        group = WaveformStats(sub_data, halves, FIRST_GAUSSIAN + 2)
        members = {k: v for k, v in self.members.items() if k != c}
        for h in (FIRST_GAUSSIAN, FIRST_GAUSSIAN + 1):
            side = halves == h
            if c < FIRST_GAUSSIAN and np.any(new[side] >= 0):
                continue  # stays noise or MUA: the merge step does not touch it
            target = joining_cluster(self.data, self.stats, members, spikes[side], group, h,
                                     self.threshold)
            if target is not None:
                return target
        return None


def try_splits(em: MaskedEM, labels: np.ndarray, cache: SplitCache | None = None
               ) -> tuple[np.ndarray, int]:
    """Try to split every cluster; keep the splits that lower the total score.

    The noise and MUA clusters are tried too: spikes of a unit that fitted no
    cluster (a starting cluster mixing several units fits them badly) may have
    gone there. A unit carved out of the noise cluster becomes a Gaussian
    cluster, the rest stays noise; the MUA cluster keeps the half with the
    smaller mean waveform. `cache` (kept by the caller from one split step to the
    next) saves the trials of the clusters whose spikes have not changed; the
    result is the same without it.
    """
    p = em.p
    n = em.data.n_spikes
    prior = float(p["prior_point"])
    labels = labels.copy()
    gaussian = np.unique(labels[labels >= FIRST_GAUSSIAN])
    n_alive = len(gaussian)
    special = [NOISE] * em.use_noise + [MUA] * em.use_mua
    denom = n + prior * n_alive
    denom += p["noise_point"] if em.use_noise else 0
    denom += p["mua_point"] if em.use_mua else 0
    next_id = max(int(labels.max()) + 1, FIRST_GAUSSIAN)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(next_id + 1))
    n_split = 0
    joins = None
    for c in np.concatenate([special, gaussian]).astype(np.int64):
        if n_alive >= p["max_possible_clusters"]:
            break
        spikes = order[bounds[c]:bounds[c + 1]]
        if len(spikes) < _MIN_SPLIT_SIZE:
            continue
        trial, sub = _trial(em, spikes, int(c), cache)
        if trial.halves is None:
            continue
        halves = trial.halves.astype(np.int64)
        costs, counts, params = trial.split_costs
        # The change of the whole data set's score (see the module docstring), with the
        # penalties of the whole data set (`em`'s log(n_spikes)).
        if c == NOISE:
            delta, new = _noise_split(em, halves, costs, counts, params, denom, prior)
        else:
            delta = (_score(em, costs, counts, params, denom + prior, prior)
                     - _score(em, *trial.unsplit_costs, denom, prior))
            keep = trial.mua_half if c == MUA else FIRST_GAUSSIAN
            new = np.where(halves == keep, c, -1)
        delta += (n - len(spikes)) * math.log((denom + prior) / denom)
        if delta >= 0:
            continue
        if c != NOISE:
            if trial.alike is None:
                if sub is None:
                    sub = MaskedEM(subset(em.data, spikes), p, use_noise=False, use_mua=False)
                trial.alike = halves_alike(sub.data, halves, p.get("merge_similarity"))
            if trial.alike:
                logger.debug("Split of cluster %d vetoed: halves alike, one mode.", c)
                continue
        if joins is None:
            joins = _Joins(em.data, labels, order, bounds, gaussian, p.get("merge_similarity"))
        if sub is None:
            sub = MaskedEM(subset(em.data, spikes), p, use_noise=False, use_mua=False)
        target = joins.target(sub.data, spikes, halves, new, c)
        if target is not None:
            logger.debug("Split of cluster %d vetoed: a half would merge into cluster %d.",
                         c, target)
            continue
        logger.debug("Split cluster %d (%d spikes): score %+.1f.", c, len(spikes), delta)
        labels[spikes] = np.where(new < 0, next_id, new)
        joins.members.pop(int(c), None)  # its statistics are those before the split
        next_id += 1
        n_alive += 1
        denom += prior
        n_split += 1
    if cache is not None:
        cache.end_step()
    return labels, n_split
