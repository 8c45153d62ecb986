"""Manual clustering: spike-cluster assignments, metadata, undo and redo.

Design (see also `docs/architecture.md`):

- Cluster ids are never reused. Every cluster touched by an action gets a
  brand-new id (`max id ever seen + 1` onwards), so anything cached per
  cluster id stays valid, even across undo and redo.
- Each history entry stores a *delta*: the `{cluster: spikes}` arrays of the
  clusters that disappeared and of those that appeared, plus the metadata
  changes. Undo writes the old ids back into the spikes of the old clusters,
  redo writes the new ids; neither replays history from the original array,
  so both cost O(spikes changed), not O(n_spikes).
- `spikes_per_cluster` is maintained incrementally; its arrays are read-only
  and shared with the `UpdateInfo` objects and the history.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from .bunch import Bunch
from .events import EventEmitter
from .metadata import GROUP_FIELD, ClusterMetadata, normalize_cluster_ids

logger = logging.getLogger("phy")

_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.flags.writeable = False


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


def _union_sorted(arrays: list[np.ndarray], n_spikes: int) -> np.ndarray:
    """Sorted union of disjoint sorted arrays of spike ids in ``[0, n_spikes)``."""
    if len(arrays) == 1:
        return arrays[0]
    if not arrays:
        return _EMPTY
    total = sum(len(a) for a in arrays)
    if total > n_spikes // 16:
        # Many spikes: a boolean mask is O(n_spikes) but much faster than sorting.
        mask = np.zeros(n_spikes, dtype=bool)
        for a in arrays:
            mask[a] = True
        return _readonly(np.flatnonzero(mask))
    # Few spikes: timsort is linear on the sorted runs.
    return _readonly(np.sort(np.concatenate(arrays), kind="stable"))


class UpdateInfo(Bunch):
    """Description of a change of the clustering, emitted with the `cluster` event.

    Keys
    ----
    description : str
        ``'merge'``, ``'assign'``, ``'metadata_<field>'`` or ``'reset'``.
    history : str or None
        None, ``'undo'`` or ``'redo'``.
    spikes : int64 array
        Sorted ids of all spikes whose cluster changed.
    added, deleted : list of int
        Sorted ids of the clusters that appear / disappear.
    descendants : list of (int, int)
        Sorted ``(old, new)`` pairs: cluster `old` was (partly) replaced by
        `new`. For an undo the pairs are reversed, so it always reads
        "the first was replaced by the second".
    metadata_changed : list of int
        Clusters whose metadata changed (including new clusters that
        inherited metadata from their parents).
    metadata_key, metadata_value
        Field and value of a ``set_group``/``set_label``; for an undo, the
        value that was undone (read the restored values in `metadata_values`).
    metadata_values : dict
        ``{cluster: value now in effect}`` for a metadata update.
    old_spikes_per_cluster, new_spikes_per_cluster : dict
        ``{cluster: spikes}`` of the deleted / added clusters.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            description="",
            history=None,
            spikes=_EMPTY,
            added=[],
            deleted=[],
            descendants=[],
            metadata_changed=[],
            metadata_key=None,
            metadata_value=None,
            metadata_values={},
            old_spikes_per_cluster={},
            new_spikes_per_cluster={},
        )
        self.update(kwargs)

    def copy(self) -> UpdateInfo:
        """Copy whose lists and dicts are new (the read-only arrays are shared)."""
        return UpdateInfo(
            **{k: (type(v)(v) if isinstance(v, (list, dict)) else v) for k, v in self.items()}
        )

    def __repr__(self) -> str:
        return f"UpdateInfo({dict.__repr__(self)})"


def _reversed_update(up: UpdateInfo, history: str) -> UpdateInfo:
    """The UpdateInfo of undoing `up`."""
    return UpdateInfo(
        description=up.description,
        history=history,
        spikes=up.spikes,
        added=list(up.deleted),
        deleted=list(up.added),
        descendants=sorted((new, old) for old, new in up.descendants),
        metadata_changed=list(up.metadata_changed),
        metadata_key=up.metadata_key,
        metadata_value=up.metadata_value,
        old_spikes_per_cluster=dict(up.new_spikes_per_cluster),
        new_spikes_per_cluster=dict(up.old_spikes_per_cluster),
    )


# A metadata change: (field, cluster, old value, new value); `_UNSET` means "not set".
_UNSET = object()


class _Entry:
    """One history entry: the UpdateInfo of the action and its metadata changes."""

    __slots__ = ("meta", "up")

    def __init__(self, up: UpdateInfo, meta: list[tuple[str, int, Any, Any]]) -> None:
        self.up = up
        self.meta = meta


def _as_spike_ids(spike_ids: Any, n_spikes: int) -> np.ndarray:
    """Validate spike ids and return them as an int64 array (original order)."""
    if isinstance(spike_ids, slice):
        # ValueError, not TypeError: the project reports all bad user input so.
        raise ValueError("Spike ids must be a list or an array of integers, not a slice.")
    arr = np.asarray(spike_ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"Spike ids must be a 1-D list or array, got shape {arr.shape}.")
    if arr.size == 0:
        return _EMPTY
    if arr.dtype.kind not in "iu":
        raise ValueError(f"Spike ids must be integers, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64, copy=False)
    bad = arr[(arr < 0) | (arr >= n_spikes)]
    if bad.size:
        raise ValueError(f"Spike id {int(bad[0])} out of range [0, {n_spikes}).")
    return arr


def _group_sorted(values: np.ndarray, order_values: np.ndarray) -> tuple[np.ndarray, list]:
    """Group `order_values` by `values`: return (unique values, list of sub-arrays).

    Sub-arrays keep the order of `order_values` (stable sort), so they are
    sorted when `order_values` is.
    """
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    uniq, starts = np.unique(sorted_values, return_index=True)
    grouped = order_values[order]
    return uniq, np.split(grouped, starts[1:])


class Clustering(EventEmitter):
    """Spike-cluster assignments with merge, split, metadata, undo and redo.

    Parameters
    ----------
    spike_clusters : array-like of int
        Cluster id (non-negative) of every spike. It is copied.
    cluster_metadata : ClusterMetadata or None
        Groups and labels of the clusters; a new empty one by default.

    Notes
    -----
    Every operation, including `undo`, `redo`, metadata changes and `reset`,
    emits ``'cluster'`` with its `UpdateInfo`. No-ops (an empty assignment, a
    merge of fewer than two distinct clusters, a metadata change of no
    cluster) return an empty `UpdateInfo`, are not recorded and emit nothing.

    `reset` here resets the clustering; it shadows `EventEmitter.reset`. To
    remove all callbacks call ``EventEmitter.reset(clustering)``.
    """

    def __init__(
        self, spike_clusters: Any, cluster_metadata: ClusterMetadata | None = None
    ) -> None:
        # Not super().__init__(): EventEmitter.__init__ calls self.reset(), which is ours.
        EventEmitter.reset(self)
        arr = np.asarray(spike_clusters)
        if arr.ndim != 1:
            raise ValueError(f"spike_clusters must be a 1-D array, got shape {arr.shape}.")
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"spike_clusters must contain integers, got dtype {arr.dtype}.")
        # Own copy: we modify it in place.
        self._spike_clusters = np.array(arr, dtype=np.int64)
        if arr.size and self._spike_clusters.min() < 0:
            i = int(np.argmax(self._spike_clusters < 0))
            raise ValueError(
                f"spike_clusters must be non-negative, spike {i} has cluster "
                f"{int(self._spike_clusters[i])}."
            )
        self._n_spikes = len(self._spike_clusters)
        self._spike_ids = _readonly(np.arange(self._n_spikes, dtype=np.int64))
        self._spc = self._compute_spikes_per_cluster()
        self._cluster_ids_cache: np.ndarray | None = None

        if cluster_metadata is not None and not isinstance(cluster_metadata, ClusterMetadata):
            raise ValueError(
                "cluster_metadata must be a ClusterMetadata, "
                f"got {type(cluster_metadata).__name__}."
            )
        self._metadata = cluster_metadata if cluster_metadata is not None else ClusterMetadata()
        self._metadata_0 = self._metadata.to_dict()

        # Skip ids that only exist in the metadata too (e.g. saved groups of dead
        # clusters): a new cluster must not pick up a stale label.
        seen = [max(self._spc, default=-1)]
        seen += [max(self._metadata.values(f), default=-1) for f in self._metadata.fields]
        self._new_id = max(seen) + 1

        self._undo_stack: list[_Entry] = []
        self._redo_stack: list[_Entry] = []

    def _compute_spikes_per_cluster(self) -> dict[int, np.ndarray]:
        sc = self._spike_clusters
        if sc.size == 0:
            return {}
        # numpy's stable argsort is a radix sort for 16-bit keys: much faster than
        # the timsort used for int64, so use it when the ids fit.
        keys = sc.astype(np.uint16) if sc.max() < 2**16 else sc
        order = _readonly(np.argsort(keys, kind="stable"))
        del keys
        sorted_clusters = sc[order]
        # Boundaries between runs of equal ids in the sorted array.
        change = np.flatnonzero(sorted_clusters[1:] != sorted_clusters[:-1]) + 1
        starts = np.r_[0, change]
        ends = np.r_[change, sc.size]
        uniq = sorted_clusters[starts].tolist()
        del sorted_clusters
        # Each value is a read-only view (sorted, thanks to the stable sort).
        return {c: order[s:e] for c, s, e in zip(uniq, starts.tolist(), ends.tolist())}

    # Properties
    # -------------------------------------------------------------------------

    @property
    def spike_clusters(self) -> np.ndarray:
        """Read-only int64 view of the cluster of every spike (copy it to keep a snapshot)."""
        view = self._spike_clusters.view()
        view.flags.writeable = False
        return view

    @property
    def spike_ids(self) -> np.ndarray:
        """All spike ids, ``arange(n_spikes)``."""
        return self._spike_ids

    @property
    def n_spikes(self) -> int:
        """Number of spikes."""
        return self._n_spikes

    @property
    def cluster_ids(self) -> np.ndarray:
        """Sorted int64 array of the non-empty clusters."""
        if self._cluster_ids_cache is None:
            self._cluster_ids_cache = _readonly(np.array(sorted(self._spc), dtype=np.int64))
        return self._cluster_ids_cache

    @property
    def n_clusters(self) -> int:
        """Number of non-empty clusters."""
        return len(self._spc)

    @property
    def cluster_counts(self) -> dict[int, int]:
        """``{cluster: number of spikes}``."""
        return {c: len(s) for c, s in sorted(self._spc.items())}

    @property
    def spikes_per_cluster(self) -> dict[int, np.ndarray]:
        """``{cluster: sorted read-only int64 array of its spikes}``, a new dict sorted by id."""
        return {c: self._spc[c] for c in self.cluster_ids.tolist()}

    @property
    def metadata(self) -> ClusterMetadata:
        """The cluster metadata; change it through `set_group`/`set_label` to get undo."""
        return self._metadata

    def new_cluster_id(self) -> int:
        """Id for the next new cluster: the largest id ever seen plus one.

        It never decreases, not even on undo or reset, so ids are never reused.
        """
        return self._new_id

    def _check_clusters(self, cluster_ids: Any) -> list[int]:
        clusters = normalize_cluster_ids(cluster_ids)
        unknown = [c for c in clusters if c not in self._spc]
        if unknown:
            raise ValueError(
                f"Unknown cluster id(s) {unknown}: not among the {self.n_clusters} "
                "current non-empty clusters."
            )
        return clusters

    def spikes_in_clusters(self, clusters: int | Iterable[int]) -> np.ndarray:
        """Sorted int64 array of the spikes of the given clusters.

        Raises
        ------
        ValueError
            If a cluster is not a current non-empty cluster.
        """
        return _union_sorted([self._spc[c] for c in self._check_clusters(clusters)], self._n_spikes)

    # Low-level changes (shared by actions, undo and redo)
    # -------------------------------------------------------------------------

    def _apply(self, up: UpdateInfo) -> None:
        """Apply the spike changes described by `up` (O(spikes changed))."""
        for c in up.deleted:
            del self._spc[c]
        for c, spikes in up.new_spikes_per_cluster.items():
            self._spike_clusters[spikes] = c
            self._spc[c] = spikes
        if up.added or up.deleted:
            self._cluster_ids_cache = None

    def _apply_meta(self, changes: list, reverse: bool = False) -> None:
        # Undo applies the inverse changes in reverse order, as any undo log must.
        for field, cluster, old, new in reversed(changes) if reverse else changes:
            value = old if reverse else new
            if value is _UNSET:
                self._metadata.unset(field, [cluster])
            else:
                self._metadata.set(field, [cluster], value)

    def _record(self, up: UpdateInfo, meta: list) -> UpdateInfo:
        # Keep our own copy: a consumer may modify the UpdateInfo it receives.
        self._undo_stack.append(_Entry(up.copy(), meta))
        # A new action makes the undone ones unreachable.
        self._redo_stack.clear()
        self.emit("cluster", up)
        return up

    def _inherit_metadata(self, added: list[int], descendants: list) -> list:
        """Metadata changes giving each new cluster its parents' common values."""
        parents: dict[int, list[int]] = {c: [] for c in added}
        for old, new in descendants:
            parents[new].append(old)
        changes = []
        for field in self._metadata.fields:
            values = self._metadata.values(field)
            if not values:
                continue
            for child in added:
                ps = parents[child]
                if ps and all(p in values for p in ps):
                    first = values[ps[0]]
                    if all(values[p] == first for p in ps[1:]):
                        changes.append((field, child, _UNSET, first))
        return changes

    def _do(self, up: UpdateInfo) -> UpdateInfo:
        """Apply a new spike-changing action, with metadata inheritance, and record it."""
        meta = self._inherit_metadata(up.added, up.descendants)
        up.metadata_changed = sorted({c for _, c, _, _ in meta})
        self._new_id = max(self._new_id, max(up.added) + 1)
        self._apply(up)
        self._apply_meta(meta)
        return self._record(up, meta)

    # Actions
    # -------------------------------------------------------------------------

    def merge(self, cluster_ids: Iterable[int], to: int | None = None) -> UpdateInfo:
        """Merge several clusters into a new one.

        Parameters
        ----------
        cluster_ids : iterable of int
            The clusters to merge; they must all be current clusters.
        to : int or None
            Id of the new cluster: `new_cluster_id()` by default, otherwise an
            id that was never used (``>= new_cluster_id()``).

        Returns
        -------
        up : UpdateInfo
            ``description='merge'``. Merging fewer than two distinct clusters is
            a no-op: an empty UpdateInfo, nothing recorded nor emitted.

        Raises
        ------
        ValueError
            For unknown clusters or a `to` that is or was already used.
        """
        if isinstance(cluster_ids, numbers.Integral):
            raise ValueError(
                f"merge() expects a list of cluster ids, got the single id {cluster_ids!r}."
            )
        clusters = self._check_clusters(cluster_ids)
        if to is None:
            to = self._new_id
        elif not isinstance(to, numbers.Integral) or isinstance(to, bool) or to < self._new_id:
            raise ValueError(
                f"Cannot merge into cluster {to!r}: the target must be a new id, "
                f">= {self._new_id} (ids are never reused)."
            )
        if len(clusters) < 2:
            return UpdateInfo(description="merge")
        to = int(to)
        old_spc = {c: self._spc[c] for c in clusters}
        spikes = _union_sorted(list(old_spc.values()), self._n_spikes)
        up = UpdateInfo(
            description="merge",
            spikes=spikes,
            added=[to],
            deleted=clusters,
            descendants=[(c, to) for c in clusters],
            old_spikes_per_cluster=old_spc,
            new_spikes_per_cluster={to: spikes},
        )
        return self._do(up)

    def assign(self, spike_ids: Any, spike_clusters_rel: Any = 0) -> UpdateInfo:
        """Move spikes to new clusters.

        Parameters
        ----------
        spike_ids : array-like of int
            Distinct spike ids.
        spike_clusters_rel : int or array-like of int
            Relative cluster of each spike (or one for all). Only equality
            matters: spikes with equal relative values end up together, in new
            clusters numbered from `new_cluster_id()` in the order of the
            sorted distinct relative values.

        Returns
        -------
        up : UpdateInfo
            ``description='assign'`` (``'merge'`` when everything ends up in one
            cluster). An empty `spike_ids` is a no-op.

        Notes
        -----
        Every cluster that loses spikes disappears: its remaining spikes move
        to a brand-new cluster too (one per old cluster, numbered after the
        explicit ones, in the order of the old ids). So the changed spikes are
        usually a superset of `spike_ids`.
        """
        spikes = _as_spike_ids(spike_ids, self._n_spikes)
        rel = np.asarray(spike_clusters_rel)
        if rel.ndim == 0:
            rel = np.full(len(spikes), rel)
        if rel.ndim != 1 or len(rel) != len(spikes):
            raise ValueError(
                f"spike_clusters_rel has {rel.size} values for {len(spikes)} spike ids: "
                "give one per spike, or a single value."
            )
        if len(spikes) == 0:
            return UpdateInfo(description="assign")
        if rel.dtype.kind not in "iu":
            raise ValueError(f"spike_clusters_rel must be integers, got dtype {rel.dtype}.")
        order = np.argsort(spikes, kind="stable")
        spikes, rel = spikes[order], rel[order]
        if np.any(spikes[1:] == spikes[:-1]):
            dup = int(spikes[1:][spikes[1:] == spikes[:-1]][0])
            raise ValueError(f"Spike id {dup} appears more than once in spike_ids.")

        # New ids of the explicit spikes: compacted relative values.
        _, rel_index = np.unique(rel, return_inverse=True)
        new = self._new_id + rel_index.astype(np.int64).ravel()
        new_ids, new_groups = _group_sorted(new, spikes)
        new_spc = {int(c): _readonly(s) for c, s in zip(new_ids, new_groups)}

        # Old clusters, and the spikes they keep, which also need new ids.
        old = self._spike_clusters[spikes]
        old_ids, old_groups = _group_sorted(old, spikes)
        old_spc = {}
        pairs = np.unique(np.stack([old, new], axis=1), axis=0).tolist()
        descendants = [(a, b) for a, b in pairs]
        next_id = int(new_ids[-1]) + 1
        for c, explicit in zip(old_ids.tolist(), old_groups):
            full = self._spc[c]
            old_spc[c] = full
            if len(explicit) < len(full):
                keep = np.ones(len(full), dtype=bool)
                keep[np.searchsorted(full, explicit)] = False
                new_spc[next_id] = _readonly(full[keep])
                descendants.append((c, next_id))
                next_id += 1
        descendants.sort()

        up = UpdateInfo(
            description="merge" if len(new_spc) == 1 else "assign",
            spikes=_union_sorted(list(old_spc.values()), self._n_spikes),
            added=sorted(new_spc),
            deleted=sorted(old_spc),
            descendants=descendants,
            old_spikes_per_cluster=old_spc,
            new_spikes_per_cluster=new_spc,
        )
        return self._do(up)

    def split(self, spike_ids: Any, spike_clusters_rel: Any = 0) -> UpdateInfo:
        """Move spikes to one new cluster; the same as `assign(spike_ids)`.

        As with `assign`, the rest of every cluster that loses spikes also
        gets a new id.
        """
        return self.assign(spike_ids, spike_clusters_rel)

    # Metadata
    # -------------------------------------------------------------------------

    def set_group(self, cluster_ids: int | Iterable[int], group: int | str) -> UpdateInfo:
        """Set the group (name or integer, see `GROUP_NAMES`) of clusters, undoably."""
        return self.set_label(cluster_ids, GROUP_FIELD, group)

    def set_label(self, cluster_ids: int | Iterable[int], field: str, value: Any) -> UpdateInfo:
        """Set a metadata field of clusters, undoably.

        Parameters
        ----------
        cluster_ids : int or iterable of int
            Current clusters.
        field : str
            ``'group'`` or any label name.
        value : Any
            For ``group`` a group name or integer, otherwise any JSON-able
            value; None unsets a label.

        Returns
        -------
        up : UpdateInfo
            ``description='metadata_<field>'``, `metadata_changed`,
            `metadata_key`, `metadata_value`.
        """
        clusters = self._check_clusters(cluster_ids)
        value = self._metadata.normalize(field, value)
        description = f"metadata_{field}"
        if not clusters:
            return UpdateInfo(description=description)
        target = _UNSET if value is None else value
        current = self._metadata.values(field)
        meta = [(field, c, current.get(c, _UNSET), target) for c in clusters]
        self._apply_meta(meta)
        up = UpdateInfo(
            description=description,
            metadata_changed=clusters,
            metadata_key=field,
            metadata_value=value,
            metadata_values={c: self._metadata.get(field, c) for c in clusters},
        )
        return self._record(up, meta)

    # History
    # -------------------------------------------------------------------------

    def undo(self) -> UpdateInfo | None:
        """Undo the last action; return its reversed UpdateInfo, or None if nothing to undo."""
        if not self._undo_stack:
            return None
        entry = self._undo_stack.pop()
        self._redo_stack.append(entry)
        up = _reversed_update(entry.up, "undo")
        self._apply_meta(entry.meta, reverse=True)
        self._apply(up)
        if entry.up.metadata_key is not None:
            up.metadata_values = {
                c: self._metadata.get(entry.up.metadata_key, c) for c in up.metadata_changed
            }
        self.emit("cluster", up)
        return up

    def redo(self) -> UpdateInfo | None:
        """Redo the last undone action; return its UpdateInfo, or None if nothing to redo."""
        if not self._redo_stack:
            return None
        entry = self._redo_stack.pop()
        self._undo_stack.append(entry)
        self._apply(entry.up)
        self._apply_meta(entry.meta)
        up = entry.up.copy()
        up.history = "redo"
        self.emit("cluster", up)
        return up

    def reset(self) -> UpdateInfo:
        """Go back to the original clustering and metadata; clear the history.

        The id counter is kept, so ids are still never reused. The emitted
        UpdateInfo (``description='reset'``) lists the clusters that
        disappear/appear, their spikes and the ``(current, original)``
        descendants.
        """
        before = dict(self._spc)
        # Undoing the whole stack costs O(spikes changed), not O(n_spikes).
        while self._undo_stack:
            entry = self._undo_stack.pop()
            self._apply(_reversed_update(entry.up, "undo"))
        self._redo_stack.clear()
        deleted = sorted(set(before) - set(self._spc))
        added = sorted(set(self._spc) - set(before))
        spikes = _union_sorted([before[c] for c in deleted], self._n_spikes)
        descendants = [
            (c, new) for c in deleted for new in np.unique(self._spike_clusters[before[c]]).tolist()
        ]

        old_meta = self._metadata.to_dict()
        self._metadata.replace(self._metadata_0)
        new_meta = self._metadata.to_dict()
        changed = {
            int(c)
            for f in set(old_meta) | set(new_meta)
            for c in set(old_meta.get(f, {})) | set(new_meta.get(f, {}))
            if old_meta.get(f, {}).get(c, _UNSET) != new_meta.get(f, {}).get(c, _UNSET)
        }
        up = UpdateInfo(
            description="reset",
            spikes=spikes,
            added=added,
            deleted=deleted,
            descendants=descendants,
            metadata_changed=sorted(changed),
            old_spikes_per_cluster={c: before[c] for c in deleted},
            new_spikes_per_cluster={c: self._spc[c] for c in added},
        )
        self.emit("cluster", up)
        return up
