"""Mask-based starting clusters (KlustaKwik 2's "mask starts").

Spikes with the same set of unmasked features start in the same cluster. When
there are more distinct sets than `num_starting_clusters`, the most frequent
sets (ties broken by the set itself, so that the result does not depend on
the order of the spikes, unlike KlustaKwik 2 which takes them in spike order)
seed the clusters and every other set joins the seed at the smallest Hamming
distance.
"""

from __future__ import annotations

import numpy as np


def mask_starts(unmasked: np.ndarray, num_starting_clusters: int) -> np.ndarray:
    """Starting cluster (0, 1, ...) of each spike.

    Parameters
    ----------
    unmasked : bool array (n_spikes, n_features)
        Which features of each spike are unmasked.
    num_starting_clusters : int
    """
    n = unmasked.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    patterns, inverse, counts = np.unique(unmasked, axis=0, return_inverse=True,
                                          return_counts=True)
    inverse = inverse.ravel()
    # np.unique sorts patterns lexicographically; a stable sort by count keeps that
    # order among equal counts.
    order = np.argsort(-counts, kind="stable")
    k = max(1, min(int(num_starting_clusters), len(patterns)))
    seeds = patterns[order[:k]].astype(np.int64)
    pattern_cluster = np.empty(len(patterns), dtype=np.int64)
    pattern_cluster[order[:k]] = np.arange(k)
    for p in order[k:]:
        distance = np.abs(seeds - patterns[p].astype(np.int64)).sum(axis=1)
        pattern_cluster[p] = int(np.argmin(distance))
    return pattern_cluster[inverse]
