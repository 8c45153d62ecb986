"""Mask-based starting clusters (KlustaKwik 2's "mask starts").

Spikes with the same set of unmasked features start in the same cluster. When
there are more distinct sets than `num_starting_clusters`, some sets seed the
clusters and every other set joins the seed at the smallest Hamming distance.
The seeds are the most frequent sets, ties broken by a hash of the set: a
pseudo-random choice, as KlustaKwik's random spikes, that spreads the seeds over
the probe, yet depends neither on the order of the spikes nor on chance.
"""

from __future__ import annotations

import numpy as np

from .data import MaskedData


def mask_starts(data: MaskedData, num_starting_clusters: int) -> np.ndarray:
    """Starting cluster (0, 1, ...) of each spike."""
    from .kernels import nearest_seeds, pattern_hashes

    n = data.n_spikes
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    hashes = pattern_hashes(data.indptr, data.indices)
    patterns, first, inverse, counts = np.unique(hashes, return_index=True,
                                                 return_inverse=True, return_counts=True)
    # Most frequent first, then by hash (np.unique sorted the patterns by hash).
    order = np.argsort(-counts, kind="stable")
    k = max(1, min(int(num_starting_clusters), len(patterns)))
    seeds = order[:k]
    pattern_cluster = np.empty(len(patterns), dtype=np.int64)
    pattern_cluster[seeds] = np.arange(k)
    rest = order[k:]
    if len(rest):
        seed_rows = first[seeds]
        sizes = np.diff(data.indptr)[seed_rows]
        seed_ptr = np.zeros(k + 1, dtype=np.int64)
        np.cumsum(sizes, out=seed_ptr[1:])
        seed_features = np.concatenate([data.unmasked(r) for r in seed_rows]).astype(np.int64)
        seed_of_entry = np.repeat(np.arange(k), sizes)
        by_feature = np.argsort(seed_features, kind="stable")
        feature_seeds = seed_of_entry[by_feature]
        feature_seeds_ptr = np.searchsorted(seed_features[by_feature],
                                            np.arange(data.n_features + 1))
        pattern_cluster[rest] = nearest_seeds(data.indptr, data.indices, first[rest], seed_ptr,
                                              seed_features, feature_seeds_ptr,
                                              feature_seeds)
    return pattern_cluster[inverse.ravel()]
