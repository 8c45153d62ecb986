"""Merging clusters with the same mean waveform (an extension of KlustaKwik 2).

The masked EM model replaces a spike's masked features by noise. A channel
where a unit's signal is near the detection threshold is unmasked in some of
its spikes and masked in others: the unit then fits better as two clusters,
one per mask pattern, and the score keeps both. Such halves have the same
waveform wherever both are unmasked, which distinct units do not.

The *similarity* of clusters ``a`` and ``b`` compares their mean uncorrected
features ``x - noise_mean`` (over the spikes where each feature is unmasked),
in noise standard deviations, on their *common* features (unmasked in at least
half the spikes of each): ``2 a.b / (|a|^2 + |b|^2) = 1 - |a - b|^2 / (|a|^2 + |b|^2)``,
1 for identical means, 0 for orthogonal ones (a 20% amplitude difference alone
gives 0.976). It counts
only if the common features hold at least half of each cluster's energy (two
units on different channels that share a faint one are not alike).

Alike is not enough: neighbouring units on a dense probe can have the same
waveform shape at different amplitudes (similarity 0.9-0.97, as the halves of one
unit cut by amplitude). So two alike clusters are *one unit* only if their union
also has a single mode along the line joining their means (`one_mode`, with
`unimodal.is_bimodal`), projected on their *core* features (unmasked in at least
80% of the spikes of each, where masking cannot make a gap).

`merge_similar` merges, most similar first, the pairs of Gaussian clusters at
`merge_similarity` or more that form one mode; `splits` vetoes a split into two
such halves.
"""

from __future__ import annotations

import logging

import numpy as np

from .data import MaskedData
from .model import FIRST_GAUSSIAN
from .unimodal import is_bimodal

logger = logging.getLogger("phy")

# A feature is common to two clusters if unmasked in at least this fraction of
# the spikes of each; the common features must hold this fraction of each
# cluster's energy.
_COMMON_FRACTION = 0.5
_ENERGY_FRACTION = 0.5
# The projection that tests for one mode uses the features unmasked in at least this
# fraction of the spikes of each cluster.
_CORE_FRACTION = 0.8


class WaveformStats:
    """Per cluster: spikes, unmasked entries per feature, and their summed offsets."""

    def __init__(self, data: MaskedData, labels: np.ndarray, n_clusters: int | None = None):
        from .kernels import entry_sums

        n_clusters = n_clusters or int(labels.max()) + 1
        self.inv_std = 1.0 / np.sqrt(data.noise_variance)
        self.n = np.bincount(labels, minlength=n_clusters).astype(np.float64)
        self.count, self.sx = entry_sums(data.indptr, data.indices, data.dy, data.masks,
                                         labels, n_clusters, data.n_features)

    def strong(self, c: int) -> np.ndarray:
        return self.count[c] >= _COMMON_FRACTION * self.n[c]

    def mean(self, c: int) -> np.ndarray:
        """Mean offset from the noise mean, in noise standard deviations."""
        return self.sx[c] / np.maximum(self.count[c], 1) * self.inv_std

    def add(self, a: int, b: int) -> None:
        """Cluster ``b`` merged into ``a``."""
        self.n[a] += self.n[b]
        self.count[a] += self.count[b]
        self.sx[a] += self.sx[b]
        self.n[b] = 0
        self.count[b] = 0
        self.sx[b] = 0

    def similarity(self, a: int, b: int) -> float:
        sa, sb = self.strong(a), self.strong(b)
        common = sa & sb
        if not common.any():
            return 0.0
        ma, mb = self.mean(a), self.mean(b)
        ea, eb = ma[common] @ ma[common], mb[common] @ mb[common]
        if (ea < _ENERGY_FRACTION * (ma[sa] @ ma[sa]) or
                eb < _ENERGY_FRACTION * (mb[sb] @ mb[sb]) or ea + eb <= 0):
            return 0.0
        return float(2 * (ma[common] @ mb[common]) / (ea + eb))


def one_mode(data: MaskedData, stats: WaveformStats, a: int, b: int, rows_a: np.ndarray,
             rows_b: np.ndarray) -> bool:
    """Whether clusters `a` and `b` (spikes `rows_a` and `rows_b` of `data`) have a single
    mode along the line joining their means, on their core features (True when they
    have none: nothing tells them apart)."""
    from .kernels import project_rows

    core = ((stats.count[a] >= _CORE_FRACTION * stats.n[a]) &
            (stats.count[b] >= _CORE_FRACTION * stats.n[b]))
    if not core.any():
        return True
    # The difference of the means in noise standard deviations, applied to raw offsets.
    direction = np.where(core, stats.mean(b) - stats.mean(a), 0.0) * stats.inv_std
    rows = np.concatenate([rows_a, rows_b]).astype(np.int64)
    values = project_rows(data.indptr, data.indices, data.dy, data.masks, rows, direction)
    return not is_bimodal(values, np.arange(len(rows)) >= len(rows_a))


def halves_alike(data: MaskedData, halves: np.ndarray, threshold: float | None) -> bool:
    """Whether the clusters 2 and 3 of `halves` (labels of `data`'s spikes) are one unit:
    similarity at least `threshold` and one mode."""
    if threshold is None or threshold > 1:
        return False
    stats = WaveformStats(data, halves, FIRST_GAUSSIAN + 2)
    similarity = stats.similarity(FIRST_GAUSSIAN, FIRST_GAUSSIAN + 1)
    if similarity < threshold:
        return False
    return one_mode(data, stats, FIRST_GAUSSIAN, FIRST_GAUSSIAN + 1,
                    np.flatnonzero(halves == FIRST_GAUSSIAN),
                    np.flatnonzero(halves == FIRST_GAUSSIAN + 1))


def joining_cluster(data: MaskedData, stats: WaveformStats, members: dict, rows: np.ndarray,
                    group: WaveformStats, g: int, threshold: float | None) -> int | None:
    """A cluster of `stats` the merge step would join with the spikes `rows` of `data`
    (cluster `g` of `group`): similarity at least `threshold` and one mode; or None.

    `stats` has one spare slot (its last) for the group; `members` gives the rows of the
    clusters that may be joined (the others are ignored).
    """
    if threshold is None or threshold > 1 or not members:
        return None
    spare = len(stats.n) - 1
    stats.n[spare], stats.count[spare], stats.sx[spare] = group.n[g], group.count[g], group.sx[g]
    strong = stats.strong(spare)
    if not strong.any():
        return None
    clusters = np.array(sorted(members), dtype=np.int64)
    counts = stats.count[clusters][:, strong]
    shared = (counts >= _COMMON_FRACTION * stats.n[clusters][:, None]).any(axis=1)
    sims = [(stats.similarity(int(c), spare), int(c)) for c in clusters[shared]]
    for s, c in sorted(sims, key=lambda item: (-item[0], item[1])):
        if s < threshold:
            break
        if one_mode(data, stats, c, spare, members[c], rows):
            return c
    return None


def _candidate_pairs(stats: WaveformStats, clusters: np.ndarray) -> set:
    """Pairs ``(a, b)``, ``a < b``, of clusters sharing at least one strong feature."""
    clusters = np.sort(np.asarray(clusters, dtype=np.int64))
    if len(clusters) < 2:
        return set()
    strong = np.array([stats.strong(int(c)) for c in clusters], dtype=np.float32)
    # Shared strong features counted by a matrix product (exact: small integers).
    shared = np.triu(strong @ strong.T > 0, k=1)
    first, second = np.nonzero(shared)
    return set(zip(clusters[first].tolist(), clusters[second].tolist()))


def merge_similar(data: MaskedData, labels: np.ndarray, threshold: float | None
                  ) -> tuple[np.ndarray, int]:
    """Merge Gaussian clusters at similarity >= `threshold` that form one mode, most
    similar first.

    A merged cluster takes the smaller id. Returns the new labels and the number
    of merges. `threshold` None (or above 1) merges nothing.
    """
    if threshold is None or threshold > 1 or not len(labels):
        return labels, 0
    stats = WaveformStats(data, labels)
    clusters = np.flatnonzero(stats.n[FIRST_GAUSSIAN:] > 0) + FIRST_GAUSSIAN
    sims = {pair: stats.similarity(*pair) for pair in _candidate_pairs(stats, clusters)}
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(stats.n) + 1))
    members = {int(c): order[bounds[c]:bounds[c + 1]] for c in clusters}
    into = np.arange(len(stats.n))
    n_merged = 0
    while sims:
        # Most similar first; ties by the pair itself, so the result is deterministic.
        (a, b), s = max(sims.items(), key=lambda item: (item[1], -item[0][0], -item[0][1]))
        if s < threshold:
            break
        if not one_mode(data, stats, a, b, members[a], members[b]):
            logger.debug("Clusters %d and %d alike (%.3f) but two modes.", a, b, s)
            del sims[(a, b)]
            continue
        logger.debug("Merge clusters %d and %d (similarity %.3f).", a, b, s)
        stats.add(a, b)
        members[a] = np.concatenate([members[a], members.pop(b)])
        into[b] = a
        n_merged += 1
        partners = {x for pair in sims for x in pair if a in pair or b in pair} - {a, b}
        sims = {pair: v for pair, v in sims.items() if a not in pair and b not in pair}
        for c in partners:
            pair = (a, c) if a < c else (c, a)
            sims[pair] = stats.similarity(*pair)
    if not n_merged:
        return labels, 0
    # Resolve chains (b into a, a into c...).
    for c in range(len(into)):
        while into[into[c]] != into[c]:
            into[c] = into[into[c]]
    return into[labels], n_merged
