"""`ClusterStore`: per-cluster statistics computed once and cached by cluster id.

Cluster ids are never reused (a changed cluster gets a new id), so a cached
value never goes stale: after an undo, the old clusters come back with the
very spikes they had, and their cached statistics are still right.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .descriptors import ClusterStatistic


class ClusterStore:
    """Compute and cache `ClusterStatistic` values per cluster.

    Parameters
    ----------
    model : DataModel
        The dataset.
    clustering : Clustering
        Gives the spikes of each cluster.
    statistics : iterable of ClusterStatistic
        Usually ``plugin_manager.collect('phy_register_statistics')``.

    Examples
    --------
    >>> store.get('mean_masks', 12)      # doctest: +SKIP
    """

    def __init__(self, model: Any, clustering: Any, statistics: Iterable[ClusterStatistic]) -> None:
        self.model = model
        self.clustering = clustering
        self.statistics = {statistic.name: statistic for statistic in statistics}
        self._cache: dict[tuple[str, int], Any] = {}

    def get(self, name: str, cluster_id: int) -> Any:
        """The statistic `name` of cluster `cluster_id`, computed on first use."""
        key = (name, int(cluster_id))
        if key not in self._cache:
            try:
                statistic = self.statistics[name]
            except KeyError:
                raise KeyError(
                    f"No statistic named {name!r}; available: {', '.join(sorted(self.statistics))}"
                    " (statistics come from plugins: see `phy plugins`)"
                ) from None
            spikes = self.clustering.spikes_per_cluster.get(int(cluster_id))
            if spikes is None:
                raise KeyError(f"Cluster {cluster_id} does not exist in the current clustering.")
            self._cache[key] = statistic.compute(self.model, spikes)
        return self._cache[key]

    def is_cached(self, name: str, cluster_id: int) -> bool:
        return (name, int(cluster_id)) in self._cache

    def clear(self) -> None:
        """Forget every cached value (e.g. when the dataset changes)."""
        self._cache.clear()
