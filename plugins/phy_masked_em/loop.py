"""The driver of the masked EM: starts, iterations, splits, stopping (see `em`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from phy_rawdata.prm import KLUSTAKWIK2_DEFAULTS

from .data import MaskedEMError, prepare_data
from .em import FIRST_GAUSSIAN, MaskedEM, subset
from .starts import mask_starts

logger = logging.getLogger("phy")

#: KlustaKwik 2 parameters: the names and defaults of the ``klustakwik2`` section of a PRM
#: file. The quick-step ones (`full_step_every`, `dist_thresh`, `max_quick_step_*`) and
#: `num_cpus`, `fast_split`, `always_split_bimodal`, `subset_break_fraction`,
#: `break_fraction`, `max_split_iterations` are accepted and ignored (see `em`).
DEFAULT_PARAMETERS: dict[str, Any] = dict(KLUSTAKWIK2_DEFAULTS)
# Iterations of the CEM that refines a candidate split on the cluster's spikes.
_SPLIT_ITERATIONS = 30
_MIN_SPLIT_SIZE = 4


def _reindex(labels: np.ndarray) -> np.ndarray:
    """Gaussian clusters renumbered 2, 3, ... in order, without gaps."""
    ids = np.unique(labels[labels >= FIRST_GAUSSIAN])
    mapping = np.arange(max(int(labels.max()) + 1, FIRST_GAUSSIAN) if labels.size else 2)
    mapping[ids] = FIRST_GAUSSIAN + np.arange(len(ids))
    return mapping[labels]


def _split_candidate(em: MaskedEM, spikes: np.ndarray) -> np.ndarray | None:
    """Two-cluster labels (2 or 3) of `spikes` that beat one cluster, or None."""
    d = subset(em.data, spikes)
    y = d.corrected - d.corrected.mean(axis=0)
    # First principal axis, with a sign convention so that it is deterministic.
    _, _, vt = np.linalg.svd(y, full_matrices=False)
    axis = vt[0] * np.sign(vt[0][np.argmax(np.abs(vt[0]))])
    labels = np.where(y @ axis > 0, 3, 2).astype(np.int64)
    if np.bincount(labels, minlength=4)[2:].min() == 0:
        return None
    p = dict(em.p, use_noise_cluster=False, use_mua_cluster=False)
    sub = MaskedEM(d, p)
    for _ in range(_SPLIT_ITERATIONS):
        new, score2, _ = sub.iterate(labels, deletion=False)
        changed = np.count_nonzero(new != labels)
        labels = new
        if changed == 0:
            break
    counts = np.bincount(labels, minlength=4)[2:]
    if counts.min() < 2:
        return None
    _, score1, _ = sub.iterate(np.full(len(spikes), 2, dtype=np.int64), deletion=False)
    _, score2, _ = sub.iterate(labels, deletion=False)
    return labels if score2 < score1 else None


def _try_splits(em: MaskedEM, labels: np.ndarray, score: float) -> tuple[np.ndarray, float, int]:
    """Try to split every Gaussian cluster; keep the splits that lower the total score."""
    n_split = 0
    for c in np.unique(labels[labels >= FIRST_GAUSSIAN]):
        if len(np.unique(labels[labels >= FIRST_GAUSSIAN])) >= em.p["max_possible_clusters"]:
            break
        spikes = np.flatnonzero(labels == c)
        if len(spikes) < _MIN_SPLIT_SIZE:
            continue
        halves = _split_candidate(em, spikes)
        if halves is None:
            continue
        trial = labels.copy()
        trial[spikes[halves == 3]] = labels.max() + 1
        new, new_score, _ = em.iterate(trial, deletion=False)
        if new_score < score:
            logger.debug("Split cluster %d: score %.2f -> %.2f.", c, score, new_score)
            labels, score = new, new_score
            n_split += 1
    return labels, score, n_split


def masked_em(features, masks, parameters: dict | None = None, reporter=None, *,
              initial_labels: np.ndarray | None = None, start_iteration: int = 0,
              on_iteration: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """Cluster spikes with the masked EM algorithm.

    Parameters
    ----------
    features : array (n_spikes, n_features)
    masks : array (n_spikes, n_channels) or (n_spikes, n_features), in [0, 1]
    parameters : dict
        KlustaKwik 2 parameters (`DEFAULT_PARAMETERS` for the others).
    reporter : ProgressReporter or None
        `value_max` is set to `max_iterations`; incremented once per iteration.
    initial_labels : int array (n_spikes,) or None
        Labels to start from instead of the mask-based starts (to resume an
        interrupted run from the labels `on_iteration` saw).
    start_iteration : int
        The number of iterations already done (with `initial_labels`): the
        split schedule and `max_iterations` count from 0 as if uninterrupted.
    on_iteration : callable or None
        ``on_iteration(iteration, labels)`` after each iteration (and its
        splits), e.g. to save a checkpoint; resuming with
        ``initial_labels=labels, start_iteration=iteration + 1`` continues.

    Returns
    -------
    spike_clusters : int64 array (n_spikes,)
        0 noise, 1 MUA, 2 and up the clusters found (consecutive).
    """
    p = dict(DEFAULT_PARAMETERS)
    p.update({k: v for k, v in (parameters or {}).items() if v is not None})
    for key in ("num_starting_clusters", "max_iterations", "max_possible_clusters"):
        if int(p[key]) < 1:
            raise MaskedEMError(f"{key} must be at least 1, got {p[key]!r}.")
    data = prepare_data(features, masks)
    n = data.n_spikes
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    max_iterations = int(p["max_iterations"])
    if reporter is not None:
        reporter.value_max = max_iterations
    em = MaskedEM(data, p)
    if initial_labels is not None:
        labels = np.asarray(initial_labels, dtype=np.int64)
        if labels.shape != (n,):
            raise MaskedEMError(f"initial_labels has shape {labels.shape}, expected ({n},).")
    else:
        labels = mask_starts(data.masks > 0, int(p["num_starting_clusters"])) + FIRST_GAUSSIAN
    threshold = float(p["num_changed_threshold"]) * n
    split_first, split_every = int(p["split_first"]), max(int(p["split_every"]), 1)
    if reporter is not None:
        reporter.value = min(int(start_iteration), max_iterations)
    for iteration in range(int(start_iteration), max_iterations):
        labels = _reindex(labels)
        new, score, deleted = em.iterate(labels, bool(p["consider_cluster_deletion"]))
        changed = np.count_nonzero(new != labels)
        labels = new
        if reporter is not None:
            reporter.increment()
        logger.debug("Masked EM iteration %d: %d clusters, %d changed, score %.2f.",
                     iteration, len(np.unique(labels)), changed, score)
        converged = changed <= threshold and not deleted
        due = iteration >= split_first and (iteration - split_first) % split_every == 0
        stop = False
        if converged or due:
            labels, score, n_split = _try_splits(em, labels, score)
            stop = n_split == 0 and converged
        if on_iteration is not None:
            on_iteration(iteration, labels)
        if stop:
            break
    if reporter is not None:
        reporter.value = reporter.value_max
    return _reindex(labels)
