"""Ground-truth accuracy of a spike sorting: spike matching, Hungarian assignment, summary.

Definitions (what ``phy evaluate`` reports)
-------------------------------------------
Matching
    A true spike at sample ``t`` and a sorted spike at sample ``s`` *can match*
    when ``|t - s| <= tolerance_samples`` (inclusive; the command uses
    ``round(tolerance_ms * sample_rate / 1000)``, 12 samples for 0.4 ms at
    30 kHz).
Counts (the one-to-one rule)
    ``counts[i, j]`` is the size of a *maximum one-to-one matching* between the
    spikes of true unit ``i`` and the spikes of sorted cluster ``j``: within a
    (unit, cluster) pair, each true spike is matched to at most one sorted
    spike and each sorted spike to at most one true spike. So two spikes of a
    unit 5 samples apart with a single sorted spike between them count once,
    and one true spike with two sorted spikes of a cluster within tolerance
    counts once. Pairs are independent of each other: a sorted spike may be
    matched both to unit ``i`` and to unit ``k`` (two units firing together
    are both "found" by the one sorted spike; the Hungarian step below then
    gives the cluster to one unit only).
    Because every true spike's window ``[t - tol, t + tol]`` has the same
    length, the greedy rule "take the true spikes in time order, give each the
    earliest still-free sorted spike of the cluster in its window" is a
    maximum matching (intervals sorted by start are also sorted by end), and it
    is what `match_counts` computes, in ``O(n_true * window)`` time.
Accuracy
    ``accuracy[i, j] = counts / (n_unit_i + n_cluster_j - counts)``, i.e.
    matches / (matches + misses + false positives).
Assignment
    Each true unit gets at most one cluster and each cluster at most one unit,
    maximising the sum of accuracies (Hungarian method,
    `scipy.optimize.linear_sum_assignment`). A unit assigned a cluster with no
    matched spike gets no cluster (``-1``, accuracy 0). Per unit:
    ``recall = counts / n_unit`` and ``precision = counts / n_cluster`` of its
    assigned cluster.
Summary
    ``fraction_accurate``: units with accuracy >= `accuracy_threshold` (0.8);
    the same among units with SNR >= 5 and SNR >= 3 when SNRs are given; and
    ``n_false_good``: clusters labelled *good* (group 2) whose best accuracy
    against every true unit is below 0.5 (they match no true unit).
    Only units with at least one spike in the recording are evaluated (a unit
    that never fired cannot be sorted).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from phy_core.bunch import Bunch
from phy_core.errors import PhyError

logger = logging.getLogger("phy")

ACCURACY_THRESHOLD = 0.8
FALSE_UNIT_THRESHOLD = 0.5
SNR_THRESHOLDS = (5.0, 3.0)
GOOD = 2


class EvaluationError(PhyError, ValueError):
    """Inconsistent inputs to the ground-truth evaluation."""


def _numba_kernel():
    # numba is imported on first use only, so that importing the module stays cheap.
    from numba import njit

    @njit(cache=True, nogil=True)
    def kernel(true_samples, true_units, sorted_samples, sorted_clusters, tol,
               n_units, n_clusters):  # pragma: no cover (compiled)
        counts = np.zeros((n_units, n_clusters), dtype=np.int64)
        # last[i, j]: index of the sorted spike last matched to unit i in pair (i, j).
        # The greedy matches of a pair are increasing in time, so a sorted spike of
        # cluster j is free for unit i iff its index is greater than last[i, j].
        last = np.full((n_units, n_clusters), -1, dtype=np.int64)
        # stamp[j] == k: true spike k already matched a spike of cluster j.
        stamp = np.full(n_clusters, -1, dtype=np.int64)
        n_sorted = len(sorted_samples)
        lo = 0
        for k in range(len(true_samples)):
            t = true_samples[k]
            i = true_units[k]
            while lo < n_sorted and sorted_samples[lo] < t - tol:
                lo += 1
            m = lo
            while m < n_sorted and sorted_samples[m] <= t + tol:
                j = sorted_clusters[m]
                if stamp[j] != k and m > last[i, j]:
                    stamp[j] = k
                    last[i, j] = m
                    counts[i, j] += 1
                m += 1
        return counts

    return kernel


_KERNEL = None


def _check_spikes(samples: Any, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    samples, labels = np.asarray(samples), np.asarray(labels)
    for name, array in ((f"{what} spike samples", samples), (f"{what} spike labels", labels)):
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise EvaluationError(f"The {name} must be a 1-D integer array, found shape "
                                  f"{array.shape} and dtype {array.dtype}.")
    if len(samples) != len(labels):
        raise EvaluationError(f"{len(samples)} {what} spike samples but {len(labels)} labels.")
    return samples.astype(np.int64), labels.astype(np.int64)


def match_counts(
    true_samples: Any,
    true_units: Any,
    sorted_samples: Any,
    sorted_clusters: Any,
    tolerance_samples: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched spike counts of every (true unit, sorted cluster) pair.

    Parameters
    ----------
    true_samples, true_units : 1-D integer arrays
        The true spikes (sample and unit id), in any order.
    sorted_samples, sorted_clusters : 1-D integer arrays
        The sorted spikes (sample and cluster id), in any order.
    tolerance_samples : int
        Spikes match when ``|t - s| <= tolerance_samples``.

    Returns
    -------
    units : int64 array (n_units,)
        The sorted unique true unit ids (rows).
    clusters : int64 array (n_clusters,)
        The sorted unique cluster ids (columns).
    counts : int64 array (n_units, n_clusters)
        Size of the maximum one-to-one matching of each pair (see the module
        docstring for the exact rule).
    """
    global _KERNEL
    true_samples, true_units = _check_spikes(true_samples, true_units, "true")
    sorted_samples, sorted_clusters = _check_spikes(sorted_samples, sorted_clusters, "sorted")
    if int(tolerance_samples) != tolerance_samples or tolerance_samples < 0:
        raise EvaluationError(f"tolerance_samples must be a non-negative integer, "
                              f"got {tolerance_samples!r}.")
    units, unit_index = np.unique(true_units, return_inverse=True)
    clusters, cluster_index = np.unique(sorted_clusters, return_inverse=True)
    if not len(units) or not len(clusters):
        return units, clusters, np.zeros((len(units), len(clusters)), dtype=np.int64)
    # Stable sorts, so that the result does not depend on the order of the inputs
    # beyond ties (which the maximum matching makes irrelevant anyway).
    order_t = np.argsort(true_samples, kind="stable")
    order_s = np.argsort(sorted_samples, kind="stable")
    if _KERNEL is None:
        _KERNEL = _numba_kernel()
    counts = _KERNEL(true_samples[order_t], unit_index[order_t].astype(np.int64),
                     sorted_samples[order_s], cluster_index[order_s].astype(np.int64),
                     np.int64(tolerance_samples), len(units), len(clusters))
    return units, clusters, counts


def accuracy_matrix(counts: np.ndarray, n_unit: np.ndarray, n_cluster: np.ndarray) -> np.ndarray:
    """``counts / (n_unit[:, None] + n_cluster[None, :] - counts)`` (0 where both are empty)."""
    counts = np.asarray(counts, dtype=np.float64)
    denominator = n_unit[:, None] + n_cluster[None, :] - counts
    return np.divide(counts, denominator, out=np.zeros_like(counts), where=denominator > 0)


def assign(accuracy: np.ndarray) -> np.ndarray:
    """Column (cluster index) assigned to each row (unit) by the Hungarian method, or -1."""
    from scipy.optimize import linear_sum_assignment

    assigned = np.full(accuracy.shape[0], -1, dtype=np.int64)
    if accuracy.size:
        rows, cols = linear_sum_assignment(-accuracy)
        keep = accuracy[rows, cols] > 0
        assigned[rows[keep]] = cols[keep]
    return assigned


def _fraction(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else float("nan")


def evaluate(
    true_samples: Any,
    true_units: Any,
    sorted_samples: Any,
    sorted_clusters: Any,
    sample_rate: float,
    tolerance_ms: float = 0.4,
    unit_snr: Any = None,
    cluster_groups: Mapping[int, Any] | None = None,
    accuracy_threshold: float = ACCURACY_THRESHOLD,
) -> Bunch:
    """Compare a sorting to the ground truth (see the module docstring).

    Parameters
    ----------
    true_samples, true_units : 1-D integer arrays
        The true spikes.
    sorted_samples, sorted_clusters : 1-D integer arrays
        The sorted spikes.
    sample_rate : float
        Hz, to convert `tolerance_ms` into samples.
    tolerance_ms : float
        Matching tolerance (0.4 ms).
    unit_snr : array or None
        SNR of each true unit, indexed by unit id (as ``unit_snr`` in a
        ``.groundtruth.npz``).
    cluster_groups : mapping or None
        ``{cluster_id: group}`` (integers or names; 2 / ``'good'`` is good).
    accuracy_threshold : float
        A unit counts as well sorted at this accuracy (0.8).

    Returns
    -------
    Bunch
        Per true unit (rows, units sorted by id): ``units``, ``n_spikes``,
        ``snr`` (NaN without `unit_snr`), ``matched_cluster`` (-1 if none),
        ``accuracy``, ``recall``, ``precision``; per cluster: ``clusters``,
        ``cluster_n_spikes``, ``cluster_best_accuracy``; ``counts`` and
        ``accuracy_matrix`` (units x clusters); ``tolerance_samples``; and
        ``summary``, a Bunch with ``n_units``, ``n_clusters``,
        ``accuracy_threshold``, ``n_accurate``, ``fraction_accurate``,
        ``mean_accuracy``, and when `unit_snr` is given, for each SNR
        threshold ``x`` in (5, 3): ``n_units_snr_x``, ``n_accurate_snr_x``,
        ``fraction_accurate_snr_x``; when `cluster_groups` is given,
        ``n_good`` and ``n_false_good`` (and ``false_good_clusters``, a list).
    """
    if not (np.isfinite(sample_rate) and sample_rate > 0):
        raise EvaluationError(f"sample_rate must be a positive number, got {sample_rate!r}.")
    if not (np.isfinite(tolerance_ms) and tolerance_ms >= 0):
        raise EvaluationError(f"tolerance_ms must be a non-negative number, got {tolerance_ms!r}.")
    tolerance_samples = int(round(tolerance_ms * sample_rate / 1000.0))
    units, clusters, counts = match_counts(true_samples, true_units, sorted_samples,
                                           sorted_clusters, tolerance_samples)
    n_unit = np.bincount(np.searchsorted(units, np.asarray(true_units, dtype=np.int64)),
                         minlength=len(units)).astype(np.int64)
    n_cluster = np.bincount(np.searchsorted(clusters, np.asarray(sorted_clusters,
                                                                 dtype=np.int64)),
                            minlength=len(clusters)).astype(np.int64)
    acc = accuracy_matrix(counts, n_unit, n_cluster)
    assigned = assign(acc)
    has = np.flatnonzero(assigned >= 0)
    cols = assigned[has]
    matched_cluster = np.full(len(units), -1, dtype=np.int64)
    accuracy = np.zeros(len(units))
    matched = np.zeros(len(units), dtype=np.int64)
    n_assigned = np.zeros(len(units), dtype=np.int64)
    matched_cluster[has] = clusters[cols]
    accuracy[has] = acc[has, cols]
    matched[has] = counts[has, cols]
    n_assigned[has] = n_cluster[cols]
    out = Bunch(
        units=units,
        n_spikes=n_unit,
        matched_cluster=matched_cluster,
        accuracy=accuracy,
        recall=matched / np.maximum(n_unit, 1),
        precision=np.divide(matched, n_assigned, out=np.zeros(len(units)),
                            where=n_assigned > 0),
        clusters=clusters,
        cluster_n_spikes=n_cluster,
        cluster_best_accuracy=acc.max(axis=0) if len(units) else np.zeros(len(clusters)),
        counts=counts,
        accuracy_matrix=acc,
        tolerance_samples=tolerance_samples,
    )
    accurate = out.accuracy >= accuracy_threshold
    summary = Bunch(
        n_units=len(units), n_clusters=len(clusters), tolerance_ms=float(tolerance_ms),
        accuracy_threshold=float(accuracy_threshold),
        n_accurate=int(accurate.sum()), fraction_accurate=_fraction(accurate),
        mean_accuracy=float(out.accuracy.mean()) if len(units) else float("nan"),
    )
    out.snr = np.full(len(units), np.nan)
    if unit_snr is not None:
        out.snr = _unit_snr(unit_snr, units)
        for threshold in SNR_THRESHOLDS:
            sel = out.snr >= threshold
            key = f"snr_{threshold:g}"
            summary[f"n_units_{key}"] = int(sel.sum())
            summary[f"n_accurate_{key}"] = int((accurate & sel).sum())
            summary[f"fraction_accurate_{key}"] = _fraction(accurate[sel])
    if cluster_groups is not None:
        good = _good_clusters(cluster_groups)
        index = {int(c): k for k, c in enumerate(clusters)}
        # A good cluster without any spike matches nothing: it is a false unit too.
        false_good = sorted(c for c in good if c not in index or
                            out.cluster_best_accuracy[index[c]] < FALSE_UNIT_THRESHOLD)
        summary.n_good = len(good)
        summary.n_false_good = len(false_good)
        summary.false_good_clusters = false_good
    out.summary = summary
    return out


def _unit_snr(unit_snr: Any, units: np.ndarray) -> np.ndarray:
    snr = np.asarray(unit_snr)
    if snr.ndim != 1 or snr.dtype.kind not in "iuf":
        raise EvaluationError(f"unit_snr must be a 1-D numeric array indexed by unit id, found "
                              f"shape {snr.shape} and dtype {snr.dtype}.")
    if len(units) and (units[0] < 0 or units[-1] >= len(snr)):
        raise EvaluationError(f"unit_snr has {len(snr)} values, but the true unit ids span "
                              f"{units[0]} .. {units[-1]}.")
    return snr[units].astype(np.float64)


def _good_clusters(cluster_groups: Mapping[int, Any]) -> list[int]:
    from phy_core.metadata import normalize_group

    good = []
    for cluster, group in cluster_groups.items():
        try:
            if normalize_group(group) == GOOD:
                good.append(int(cluster))
        except ValueError as exc:
            raise EvaluationError(f"Cluster {cluster}: {exc}") from None
    return sorted(good)
