"""The driver of the masked EM: starts, iterations, merges and splits, stopping.

1. The data are read once, in row blocks, into sparse form (`data`).
2. Mask-based starting clusters (`starts`), unless resuming from given labels.
3. Iterations (`em`): M-step, E-step (the noise cluster takes no spike before
   iteration `split_first`), deletion. At iteration `split_first`, every
   `split_every` iterations after, and whenever at most `num_changed_threshold`
   of the spikes changed cluster ("converged"), clusters with the same mean
   waveform are merged (`merge`) and every cluster is tried for a split
   (`splits`).
4. Stop when converged and nothing merged or split, when the labels go around a
   cycle (`CycleStop`), or after `max_iterations`.
5. Clusters without a mean waveform go to the MUA cluster, and a MUA cluster with a
   clear one leaves it (`weak`).
6. With more than `max_spikes` spikes (0: no limit), steps 1-5 run on `max_spikes` spikes spread
   evenly through the recording (`fitted_rows`; the scaling and noise statistics are
   still those of all the spikes), and every spike is then assigned to its best cluster
   of the fitted model by one E-step, reading the rows again in blocks (`assign_all`).
   The work of the EM is then bounded whatever the length of the recording, and its
   memory is that of `max_spikes` spikes (16 bytes per unmasked feature: 4.5 kB per
   spike on the 1024-channel probe, where some 90 channels are unmasked per spike).
   The price: a unit with fewer than a few dozen spikes in the subset may be missed.

   The default, 50,000, was measured on the synthetic 1024-channel recording of 200 s
   (140,675 spikes, 2 cores, loaded machine): fitting 50,000 spikes took 53 CPU s and
   580 MB peak RSS, reading and assigning all the spikes included, and sorted 85 of the
   106 units of SNR >= 5 (88 of 152 of SNR >= 3) at accuracy >= 0.8 (the whole fit of
   the 20 s recording: 84 and 87); fitting all the spikes took more than 325 CPU s and
   1.3 GB, even with `fraction_for_cluster_mask` 0.04 (still splitting and merging after
   75 iterations). The fit's work grows
   faster than the number of spikes (more clusters, larger ones to try splitting,
   more iterations): 5.9, 16 and 47 CPU s for the first 14,000, 28,000 and 56,000
   spikes of that recording. Every benchmark recording of 20 s has fewer spikes.

Everything that decides the next iteration is in the labels and the iteration
number: a run resumed from the labels `on_iteration` saw ends exactly as the
uninterrupted run (a cycle ends at the same state wherever it was entered).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from phy_rawdata.prm import KLUSTAKWIK2_DEFAULTS

from .data import BLOCK_BYTES, MaskedEMError, _check_shapes, prepare_data
from .em import FIRST_GAUSSIAN, MaskedEM
from .merge import merge_similar
from .splits import SplitCache, try_splits
from .starts import mask_starts
from .weak import weak_to_mua

logger = logging.getLogger("phy")

#: Default `max_spikes` (see `masked_em`).
MAX_SPIKES = 50_000

#: The parameters: the names and defaults of the ``klustakwik2`` section of a PRM file:
#: KlustaKwik 2's, and `merge_similarity`: clusters whose mean waveforms are at least this
#: similar, and whose union has one mode, are merged (see `merge`; None or above 1: never).
#: Accepted and ignored: `num_cpus`, `fast_split`, `always_split_bimodal`,
#: `subset_break_fraction`, `break_fraction`, and the quick steps' `full_step_every`,
#: `dist_thresh` and `max_quick_step_candidates*`: the E-step only visits the clusters
#: unmasked on a spike's features (`kernels`), which makes every step cost what a quick
#: step did, without a stale candidate list.
DEFAULT_PARAMETERS: dict[str, Any] = dict(KLUSTAKWIK2_DEFAULTS)
#: phy: a cluster's unmasked features are those where its masks sum to at least this
#: fraction of its spikes (and `points_for_cluster_mask`); 0: off (see `model`).
DEFAULT_PARAMETERS.setdefault("fraction_for_cluster_mask", 0.0)
#: phy: at most this many spikes, spread evenly through the recording, are clustered;
#: every spike is then assigned by one E-step of the fitted model (0: all of them).
DEFAULT_PARAMETERS.setdefault("max_spikes", MAX_SPIKES)


def fitted_rows(n_spikes: int, max_spikes: int | None) -> np.ndarray | None:
    """The spikes the model is fitted on: None for all (`max_spikes` 0 or None, or not
    more spikes), else `max_spikes` spikes spread evenly through the recording (the rows
    of a Kwik file are in time order)."""
    if not max_spikes or n_spikes <= int(max_spikes):
        return None
    return np.unique(np.linspace(0, n_spikes - 1, int(max_spikes)).round().astype(np.int64))


def n_fitted(n_spikes: int, max_spikes: int | None) -> int:
    """How many spikes the model is fitted on (the length of the labels `on_iteration`
    sees and `initial_labels` must have)."""
    rows = fitted_rows(n_spikes, max_spikes)
    return n_spikes if rows is None else len(rows)


def assign_all(em: MaskedEM, labels: np.ndarray, features, masks,
               block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """Every spike of `features` / `masks` assigned to its best cluster of the model fitted
    on `em`'s spikes with `labels`, reading the rows in blocks (memory: one block)."""
    from .data import _block_rows, _check_shapes, prepare_rows

    model = em.fit(labels)
    n, n_features, n_mask_columns = _check_shapes(features, masks)
    out = np.empty(n, dtype=np.int64)
    block = _block_rows(n_features, n_mask_columns, block_bytes)
    for start in range(0, n, block):
        stop = min(n, start + block)
        rows = prepare_rows(features, masks, start, stop, em.data)
        best_c, _, _, _ = MaskedEM(rows, em.p, em.use_noise, em.use_mua).e_step(model)
        out[start:stop] = best_c
    return out


class CycleStop:
    """Stops the iterations when the labels come back to a state seen before.

    The E-step, the merges and the splits do not optimise one score together: a split
    the score wants can be undone by a merge a few iterations later, and the E-step
    can rebuild the cluster split (`splits` vetoes the direct case). The labels then go
    around a cycle until `max_iterations`: on a 1024-channel recording, every 20
    iterations from the 25th, for 221 s of CPU instead of 6. The more spikes and
    clusters, the likelier some cycle, so this is what made long recordings slow.

    When the labels after an iteration equal (up to renumbering) those after an earlier
    one, the states in between are the cycle; the iterations go on to the next visit of
    the state of lowest score (ties: digest) and stop there. That state does not depend
    on where the cycle was entered: a run resumed from a checkpoint stops with the same
    labels as the uninterrupted run.
    """

    def __init__(self) -> None:
        self._seen: dict[bytes, int] = {}
        self._history: list[tuple[float, bytes]] = []  # (score, digest) per iteration
        self._target: bytes | None = None
        self._deadline = 0

    @staticmethod
    def digest(labels: np.ndarray) -> bytes:
        # Canonical ids: clusters numbered by their first spike (the noise and MUA
        # clusters keep theirs).
        first = np.unique(labels, return_index=True)
        ids, first_spike = first
        rank = np.empty(len(ids), dtype=np.int64)
        rank[np.argsort(first_spike, kind="stable")] = np.arange(len(ids))
        canon = np.where(labels < FIRST_GAUSSIAN, labels,
                         FIRST_GAUSSIAN + rank[np.searchsorted(ids, labels)])
        return hashlib.blake2b(canon.astype(np.int64).tobytes(), digest_size=20).digest()

    def stop(self, iteration: int, labels: np.ndarray, score: float) -> bool:
        key = self.digest(labels)
        if self._target is not None:
            # (Not periodic after all, e.g. through the split schedule: stop anyway.)
            return key == self._target or iteration >= self._deadline
        self._history.append((float(score), key))
        previous = self._seen.get(key)
        self._seen[key] = len(self._history) - 1
        if previous is None:
            return False
        states = self._history[previous + 1:]
        self._target = min(states)[1]
        self._deadline = iteration + 2 * len(states)
        logger.info("Masked EM: the labels at iteration %d are those of %d iterations "
                    "before; stopping at the cycle's state of lowest score.", iteration,
                    len(states))
        return key == self._target


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
    initial_labels : int array (n_fitted,) or None
        Labels to start from instead of the mask-based starts (to resume an
        interrupted run from the labels `on_iteration` saw).
    start_iteration : int
        The number of iterations already done (with `initial_labels`): the
        split schedule and `max_iterations` count from 0 as if uninterrupted.
    on_iteration : callable or None
        ``on_iteration(iteration, labels)`` after each iteration (and its
        splits), e.g. to save a checkpoint; resuming with
        ``initial_labels=labels, start_iteration=iteration + 1`` continues.
        The labels are those of the spikes the model is fitted on: all of them,
        or `n_fitted` spikes with `max_spikes` (`fitted_rows`).

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
    max_spikes = p.get("max_spikes")
    if max_spikes is not None and int(max_spikes) < 0:
        raise MaskedEMError(f"max_spikes must be a number of spikes (0: all), got "
                            f"{max_spikes!r}.")
    n_all = _check_shapes(features, masks)[0]
    subset_rows = fitted_rows(n_all, max_spikes)
    data = prepare_data(features, masks, rows=subset_rows)
    n = data.n_spikes
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if subset_rows is not None:
        logger.info("Masked EM: fitting %d of the %d spikes, spread through the recording "
                    "(max_spikes); every spike is then assigned to its best cluster.", n, n_all)
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
    cycle = CycleStop()
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
        stop = cycle.stop(iteration, labels, score) or stop
        if on_iteration is not None:
            on_iteration(iteration, labels)
        if stop:
            break
    if reporter is not None:
        reporter.value = reporter.value_max
    if em.use_mua:
        labels, n_weak = weak_to_mua(data, labels)
        logger.debug("Masked EM: %d clusters without a waveform moved to MUA.", n_weak)
    if subset_rows is not None:
        labels = assign_all(em, _reindex(labels), features, masks)
    return _reindex(labels)
