"""The driver of the masked EM: starts, iterations, merges and splits, stopping.

1. The data are read once, in row blocks, into sparse form (`data`).
2. Mask-based starting clusters (`starts`), unless resuming from given labels.
3. Iterations (`em`): M-step, E-step (the noise cluster takes no spike before
   iteration `split_first`), deletion. At iteration `split_first`, every
   `split_every` iterations after, and whenever at most `num_changed_threshold`
   of the spikes changed cluster ("converged"), clusters with the same mean
   waveform are merged (`merge`) and every cluster is tried for a split
   (`splits`).
4. Stop when converged and nothing merged or split, or after `max_iterations`.
5. Clusters without a mean waveform go to the MUA cluster, and a MUA cluster with a
   clear one leaves it (`weak`).

Everything that decides the next iteration is in the labels and the iteration
number: a run resumed from the labels `on_iteration` saw ends exactly as the
uninterrupted run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from phy_rawdata.prm import KLUSTAKWIK2_DEFAULTS

from .data import MaskedEMError, prepare_data
from .em import FIRST_GAUSSIAN, MaskedEM
from .merge import merge_similar
from .splits import SplitCache, try_splits
from .starts import mask_starts
from .weak import weak_to_mua

logger = logging.getLogger("phy")

#: The parameters: the names and defaults of the ``klustakwik2`` section of a PRM file:
#: KlustaKwik 2's, and `merge_similarity`: clusters whose mean waveforms are at least this
#: similar, and whose union has one mode, are merged (see `merge`; None or above 1: never).
#: Accepted and ignored: `num_cpus`, `fast_split`, `always_split_bimodal`,
#: `subset_break_fraction`, `break_fraction`, and the quick steps' `full_step_every`,
#: `dist_thresh` and `max_quick_step_candidates*`: the E-step only visits the clusters
#: unmasked on a spike's features (`kernels`), which makes every step cost what a quick
#: step did, without a stale candidate list.
DEFAULT_PARAMETERS: dict[str, Any] = dict(KLUSTAKWIK2_DEFAULTS)


def _reindex(labels: np.ndarray) -> np.ndarray:
    """Gaussian clusters renumbered 2, 3, ... in order, without gaps."""
    ids = np.unique(labels[labels >= FIRST_GAUSSIAN])
    mapping = np.arange(max(int(labels.max()) + 1, FIRST_GAUSSIAN) if labels.size else 2)
    mapping[ids] = FIRST_GAUSSIAN + np.arange(len(ids))
    return mapping[labels]


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
        labels = mask_starts(data, int(p["num_starting_clusters"])) + FIRST_GAUSSIAN
    threshold = float(p["num_changed_threshold"]) * n
    split_first, split_every = int(p["split_first"]), max(int(p["split_every"]), 1)
    # The split trials of the clusters unchanged since the last split step are reused.
    split_cache = SplitCache()
    if reporter is not None:
        reporter.value = min(int(start_iteration), max_iterations)
    for iteration in range(int(start_iteration), max_iterations):
        labels = _reindex(labels)
        # A starting cluster mixing units fits them worse than the noise cluster does: they
        # would all go there, where no split reaches them. The noise cluster takes spikes
        # once splits had their chance (from `split_first` on).
        new, score, deleted = em.iterate(labels, bool(p["consider_cluster_deletion"]),
                                         noise=iteration >= split_first)
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
            labels, n_merged = merge_similar(data, labels, p["merge_similarity"])
            labels, n_split = try_splits(em, labels, split_cache)
            stop = n_split == 0 and n_merged == 0 and converged
        if on_iteration is not None:
            on_iteration(iteration, labels)
        if stop:
            break
    if reporter is not None:
        reporter.value = reporter.value_max
    if em.use_mua:
        labels, n_weak = weak_to_mua(data, labels)
        logger.debug("Masked EM: %d clusters without a waveform moved to MUA.", n_weak)
    return _reindex(labels)
