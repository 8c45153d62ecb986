"""How well detection found the true spikes of a recording with ground truth."""

from __future__ import annotations

import numpy as np

from phy_core.bunch import Bunch


def match_spikes(detected: np.ndarray, true: np.ndarray, tolerance: float) -> np.ndarray:
    """For each true spike, the index of its matched detected spike, or -1.

    Matching is one-to-one: each true spike (in time order) takes the nearest
    detected spike not yet taken within `tolerance` samples.
    """
    detected = np.asarray(detected, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    order = np.argsort(detected, kind="stable")
    sorted_detected = detected[order]
    taken = np.zeros(len(detected), dtype=bool)
    matches = np.full(len(true), -1, dtype=np.int64)
    for i in np.argsort(true, kind="stable"):
        t = true[i]
        lo = np.searchsorted(sorted_detected, t - tolerance, side="left")
        hi = np.searchsorted(sorted_detected, t + tolerance, side="right")
        candidates = [j for j in range(lo, hi) if not taken[j]]
        if candidates:
            j = min(candidates, key=lambda j: abs(sorted_detected[j] - t))
            taken[j] = True
            matches[i] = order[j]
    return matches


def detection_report(detected_samples, true_samples, true_clusters, sample_rate: float,
                     tolerance_ms: float = 0.4) -> Bunch:
    """Recall per true unit and the number of detections matching no true spike.

    Returns
    -------
    Bunch
        ``units`` (ids), ``recall`` (per unit), ``n_true`` (per unit),
        ``n_false`` (detections matched to no true spike), ``matches``.
    """
    tolerance = tolerance_ms * 1e-3 * sample_rate
    matches = match_spikes(detected_samples, true_samples, tolerance)
    true_clusters = np.asarray(true_clusters)
    units = np.unique(true_clusters)
    found = matches >= 0
    recall = np.array([found[true_clusters == u].mean() for u in units])
    n_true = np.array([np.sum(true_clusters == u) for u in units])
    return Bunch(units=units, recall=recall, n_true=n_true,
                 n_false=int(len(detected_samples) - found.sum()), matches=matches)
