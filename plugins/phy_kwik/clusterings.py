"""Clusterings of a Kwik dataset: loading, saving safely, and management.

A clustering ``X`` of channel group ``g`` lives in three places:
``spikes/clusters/X`` (int32 per spike: the commit point), ``clusters/X/<id>``
(attribute ``cluster_group``, plus one attribute per label) and
``cluster_groups/X/<0..3>`` (attribute ``name``).

Saving never overwrites ``X`` in place:

1. the new clustering is written completely under ``_tmp_X`` and flushed;
2. the current ``X`` is copied to ``X_backup`` (the previous backup is
   replaced) and flushed;
3. ``X``'s spike-cluster dataset is deleted, then its groups, then the
   ``_tmp_X`` groups are renamed to ``X``, and last the ``_tmp_X`` dataset;
   flushed.

An interruption before step 3 leaves ``X`` untouched. An interruption in
step 3 leaves ``X`` without its dataset; on opening, a clustering whose
dataset is missing but which has a complete ``X_backup`` is read from the
backup (with a warning), and the next save writes ``X`` again. ``_tmp_*``
names are never listed as clusterings and are cleaned up by the next save.
(HDF5 itself is not journaled: a crash of the process in the middle of an
HDF5 metadata write can still damage the file; the steps above protect
against interruptions between operations.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from .creator import DEFAULT_CLUSTER_GROUPS, write_cluster_group, write_clustering
from .errors import KwikError
from .h5 import File, open_h5

logger = logging.getLogger("phy")

TMP_PREFIX = "_tmp_"
BACKUP_SUFFIX = "_backup"


class ClusterMetadata:
    """Groups and labels of the clusters: ``group(cluster_id)`` (default 3, unsorted)."""

    def __init__(self, groups: dict[int, int], labels: dict[str, dict[int, Any]],
                 group_names: dict[int, str]) -> None:
        self.groups = groups
        self.labels = labels
        self.group_names = group_names

    def group(self, cluster_id: int) -> int:
        return self.groups.get(int(cluster_id), 3)

    def get(self, label: str, cluster_id: int, default: Any = None) -> Any:
        return self.labels.get(label, {}).get(int(cluster_id), default)


def _group_id(value: Any, names: dict[int, str]) -> int:
    """A ``cluster_group`` attribute as an int (klusta sometimes stored the name)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.ravel()[0]
    if isinstance(value, str):
        inverse = {n.lower(): i for i, n in names.items()}
        if value.lower() in inverse:
            return inverse[value.lower()]
        if value.strip().isdigit():
            return int(value)
        raise KwikError(f"unknown cluster group {value!r} (known: {sorted(inverse)}).")
    return int(value)


class ClusteringsMixin:
    """Clustering state and operations of `KwikModel`."""

    # Paths ------------------------------------------------------------------

    def _clustering_paths(self, name: str) -> tuple[str, str, str]:
        g = self._group_path
        return (f"{g}/spikes/clusters/{name}", f"{g}/clusters/{name}",
                f"{g}/cluster_groups/{name}")

    # Loading ----------------------------------------------------------------

    def _list_clusterings(self, f: File) -> list[str]:
        names = [n for n in f.datasets(self._group_path + "/spikes/clusters")
                 if not n.startswith(TMP_PREFIX)]
        names.sort()
        if "main" in names:
            names.remove("main")
            names.insert(0, "main")
        return names

    def _load_clusterings(self, f: File, clustering: str | None) -> None:
        self._clusterings = self._list_clusterings(f)
        self._save_as = None
        available = self._clusterings
        if clustering is None:
            clustering = "main"
            if "main" not in available and "main" + BACKUP_SUFFIX not in available:
                clustering = available[0] if available else None
        if clustering is not None and clustering not in available:
            if clustering + BACKUP_SUFFIX not in available:
                raise KwikError(f"{f.filename}: no clustering {clustering!r} in channel group "
                                f"{self._channel_group}; available: {available}.")
            logger.warning("%s: the clustering %r is missing (interrupted save?); reading its "
                           "backup. Saving writes %r again.", f.filename, clustering,
                           clustering)
            self._save_as = clustering
            clustering += BACKUP_SUFFIX
        self._clustering = clustering
        self._load_clustering(f)

    def _load_clustering(self, f: File) -> None:
        n = self.n_spikes
        names = {i: n_ for i, n_ in DEFAULT_CLUSTER_GROUPS}
        groups: dict[int, int] = {}
        labels: dict[str, dict[int, Any]] = {}
        metadata: dict[str, Any] = {}
        if self._clustering is None:
            logger.warning("%s: no clustering in channel group %d; all spikes in cluster 0.",
                           f.filename, self._channel_group)
            self._spike_clusters = np.zeros(n, dtype=np.int64)
        else:
            sc_path, cl_path, cg_path = self._clustering_paths(self._clustering)
            sc = f.read(sc_path)
            if sc.ndim != 1 or sc.shape[0] != n or sc.dtype.kind not in "iu":
                raise KwikError(f"{f.filename}: {sc_path} has shape {sc.shape} ({sc.dtype}), "
                                f"expected ({n},) integers, one per spike.")
            sc = sc[()].astype(np.int64) if n else np.zeros(0, dtype=np.int64)
            if n and sc.min() < 0:
                raise KwikError(f"{f.filename}: {sc_path} contains negative cluster ids "
                                f"({int(sc.min())}).")
            self._spike_clusters = sc
            for gid in f.children(cg_path):
                if gid.isdigit():
                    names[int(gid)] = str(f.read_attr(f"{cg_path}/{gid}", "name", gid))
            metadata = {a: f.read_attr(cl_path, a) for a in f.attrs(cl_path)}
            for cid in f.children(cl_path):
                if not cid.isdigit():
                    continue
                path = f"{cl_path}/{cid}"
                for attr in f.attrs(path):
                    value = f.read_attr(path, attr)
                    if attr == "cluster_group":
                        try:
                            groups[int(cid)] = _group_id(value, names)
                        except (KwikError, TypeError, ValueError) as exc:
                            raise KwikError(f"{f.filename}: {path}: {exc}") from None
                    else:
                        labels.setdefault(attr, {})[int(cid)] = value
        self._cluster_metadata = ClusterMetadata(groups, labels, names)
        self._clustering_metadata = metadata
        self._spikes_per_cluster = None

    # Properties -------------------------------------------------------------

    @property
    def clusterings(self) -> list[str]:
        """Clusterings of the current channel group (``main`` first)."""
        return list(self._clusterings)

    @property
    def clustering(self) -> str | None:
        return self._clustering

    @clustering.setter
    def clustering(self, value: str) -> None:
        with open_h5(self.kwik_path, "r") as f:
            self._load_clusterings(f, value)

    @property
    def clustering_metadata(self) -> dict:
        return self._clustering_metadata

    @property
    def spike_clusters(self) -> np.ndarray:
        return self._spike_clusters

    @property
    def cluster_ids(self) -> np.ndarray:
        return np.unique(self._spike_clusters)

    @property
    def n_clusters(self) -> int:
        return len(self.cluster_ids)

    @property
    def cluster_metadata(self) -> ClusterMetadata:
        return self._cluster_metadata

    @property
    def cluster_groups(self) -> dict[int, int]:
        """``{cluster_id: group}`` for the clusters of `spike_clusters` (default 3)."""
        return {int(c): self._cluster_metadata.group(c) for c in self.cluster_ids}

    @property
    def cluster_group_names(self) -> dict[int, str]:
        return dict(self._cluster_metadata.group_names)

    @property
    def cluster_labels(self) -> dict[str, dict[int, Any]]:
        return self._cluster_metadata.labels

    @property
    def spikes_per_cluster(self) -> dict[int, np.ndarray]:
        """``{cluster_id: sorted spike ids}``."""
        if self._spikes_per_cluster is None:
            order = np.argsort(self._spike_clusters, kind="stable")
            ids, starts = np.unique(self._spike_clusters[order], return_index=True)
            parts = np.split(order, starts[1:]) if len(ids) else []
            self._spikes_per_cluster = {int(c): p for c, p in zip(ids, parts, strict=True)}
        return self._spikes_per_cluster

    def update_spikes_per_cluster(self, spc: dict[int, np.ndarray]) -> None:
        """Replace the cached `spikes_per_cluster` (e.g. after a manual clustering step)."""
        self._spikes_per_cluster = dict(spc)

    def spike_train(self, cluster_id: int) -> np.ndarray:
        """Spike times (seconds) of a cluster."""
        return self.spike_times[self._spike_clusters == int(cluster_id)]

    # Saving -----------------------------------------------------------------

    def _check_spike_clusters(self, spike_clusters) -> np.ndarray:
        sc = np.asarray(spike_clusters).ravel()
        if sc.shape != (self.n_spikes,) or (sc.size and sc.dtype.kind not in "iu"):
            raise KwikError(f"{self.kwik_path}: spike_clusters must be {self.n_spikes} "
                            f"integers, got shape {sc.shape} ({sc.dtype}).")
        if sc.size and sc.min() < 0:
            raise KwikError(f"{self.kwik_path}: cluster ids must be >= 0, got {sc.min()}.")
        return sc

    def save(self, spike_clusters, cluster_groups: Mapping[int, int] | None = None,
             labels: Mapping[str, Mapping[int, Any]] | None = None,
             clustering_metadata: Mapping[str, Any] | None = None) -> None:
        """Save the clustering (see the module docstring for the safe sequence).

        Parameters
        ----------
        spike_clusters : array (n_spikes,)
        cluster_groups : {cluster_id: group}, groups 0 noise, 1 mua, 2 good, 3 unsorted
            (or a custom group id added with `add_cluster_group`, or its name).
        labels : {label: {cluster_id: value}}, stored as attributes of each cluster.
        clustering_metadata : {key: value}, attributes of the clustering
            (merged into the current `clustering_metadata`).
        """
        sc = self._check_spike_clusters(spike_clusters)
        names = self._cluster_metadata.group_names
        groups = {int(c): _group_id(g, names) if g is not None else 3
                  for c, g in (cluster_groups or {}).items()}
        name = self._save_as or self._clustering or "main"
        tmp, backup = TMP_PREFIX + name, name + BACKUP_SUFFIX
        with open_h5(self.kwik_path, "a") as f:
            self._delete_paths(f, tmp)
            write_clustering(f, self._channel_group, tmp, sc, groups, labels)
            for gid, gname in names.items():
                if gid > 3:
                    write_cluster_group(f, self._channel_group, tmp, gid, gname)
            metadata = dict(self._clustering_metadata)
            metadata.update(clustering_metadata or {})
            for key, value in metadata.items():
                f.write_attr(self._clustering_paths(tmp)[1], key, value)
            f.flush()
            if self._clustering is not None and f.exists(self._clustering_paths(name)[0]):
                self._make_backup(f, name, backup)
            self._swap_in(f, tmp, name)
        with open_h5(self.kwik_path, "r") as f:
            self._load_clusterings(f, name)
        logger.info("Saved clustering %r of %s.", name, self.kwik_path)

    def _delete_paths(self, f: File, name: str) -> None:
        for path in self._clustering_paths(name):
            if f.exists(path):
                f.delete(path)

    def _make_backup(self, f: File, name: str, backup: str) -> None:
        self._delete_paths(f, backup)
        for src, dst in zip(self._clustering_paths(name), self._clustering_paths(backup),
                            strict=True):
            if f.exists(src):
                f.copy(src, dst)
        f.flush()

    def _swap_in(self, f: File, tmp: str, name: str) -> None:
        # The spike-cluster dataset goes first and comes back last: it is the
        # commit point that readers check.
        old = self._clustering_paths(name)
        for path in old:
            if f.exists(path):
                f.delete(path)
        new = self._clustering_paths(tmp)
        for src, dst in ((new[1], old[1]), (new[2], old[2]), (new[0], old[0])):
            f.move(src, dst)
        f.flush()

    # Clustering management --------------------------------------------------

    def add_clustering(self, name: str, spike_clusters,
                       cluster_groups: Mapping[int, int] | None = None) -> None:
        """Save a new clustering of the current channel group."""
        if name in self._clusterings or name.startswith(TMP_PREFIX):
            raise KwikError(f"{self.kwik_path}: the clustering {name!r} already exists "
                            "or is reserved.")
        sc = self._check_spike_clusters(spike_clusters)
        with open_h5(self.kwik_path, "a") as f:
            write_clustering(f, self._channel_group, name, sc, dict(cluster_groups or {}))
            self._clusterings = self._list_clusterings(f)

    def _check_clustering(self, name: str) -> None:
        if name not in self._clusterings:
            raise KwikError(f"{self.kwik_path}: no clustering {name!r}; available: "
                            f"{self._clusterings}.")

    def _move_clustering(self, name: str, new_name: str, copy: bool) -> None:
        self._check_clustering(name)
        if new_name in self._clusterings or new_name.startswith(TMP_PREFIX):
            raise KwikError(f"{self.kwik_path}: the clustering {new_name!r} already exists "
                            "or is reserved.")
        if not copy and name == self._clustering:
            raise KwikError(f"{self.kwik_path}: cannot rename the current clustering "
                            f"{name!r}; switch to another one first.")
        with open_h5(self.kwik_path, "a") as f:
            op = f.copy if copy else f.move
            # Dataset last: a clustering appears only once it is complete.
            src, dst = self._clustering_paths(name), self._clustering_paths(new_name)
            for i in (1, 2, 0):
                if f.exists(src[i]):
                    op(src[i], dst[i])
            self._clusterings = self._list_clusterings(f)

    def copy_clustering(self, name: str, new_name: str) -> None:
        self._move_clustering(name, new_name, copy=True)

    def rename_clustering(self, old_name: str, new_name: str) -> None:
        self._move_clustering(old_name, new_name, copy=False)

    def delete_clustering(self, name: str) -> None:
        self._check_clustering(name)
        if name == self._clustering:
            raise KwikError(f"{self.kwik_path}: cannot delete the current clustering {name!r}.")
        with open_h5(self.kwik_path, "a") as f:
            self._delete_paths(f, name)
            self._clusterings = self._list_clusterings(f)

    # Cluster groups ---------------------------------------------------------

    def _cluster_group_path(self, group_id: int) -> str:
        if self._clustering is None:
            raise KwikError(f"{self.kwik_path}: no clustering to add cluster groups to.")
        return f"{self._clustering_paths(self._clustering)[2]}/{int(group_id)}"

    def add_cluster_group(self, group_id: int, name: str) -> None:
        """Add a cluster group (ids 0-3 are the fixed defaults)."""
        if int(group_id) <= 3:
            raise KwikError("Cluster groups 0-3 (noise, mua, good, unsorted) are fixed.")
        if int(group_id) in self._cluster_metadata.group_names:
            raise KwikError(f"The cluster group {group_id} already exists.")
        self._write_group_name(group_id, name)

    def rename_cluster_group(self, group_id: int, name: str) -> None:
        if int(group_id) <= 3:
            raise KwikError("Cluster groups 0-3 (noise, mua, good, unsorted) are fixed.")
        if int(group_id) not in self._cluster_metadata.group_names:
            raise KwikError(f"No cluster group {group_id}; available: "
                            f"{sorted(self._cluster_metadata.group_names)}.")
        self._write_group_name(group_id, name)

    def _write_group_name(self, group_id: int, name: str) -> None:
        with open_h5(self.kwik_path, "a") as f:
            f.write_attr(self._cluster_group_path(group_id), "name", str(name))
        self._cluster_metadata.group_names[int(group_id)] = str(name)

    def delete_cluster_group(self, group_id: int) -> None:
        if int(group_id) <= 3:
            raise KwikError("Cluster groups 0-3 (noise, mua, good, unsorted) are fixed.")
        if int(group_id) not in self._cluster_metadata.group_names:
            raise KwikError(f"No cluster group {group_id}.")
        with open_h5(self.kwik_path, "a") as f:
            f.delete(self._cluster_group_path(group_id))
        del self._cluster_metadata.group_names[int(group_id)]
