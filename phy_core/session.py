"""`Session`: one dataset being curated, assembled from plugins.

A session ties the public services together: the model (from a reader
plugin), the clustering with its undo history, the per-cluster store (with
the statistics of every plugin), and the wizard (with the quality and
similarity chosen in the settings). The GUI and scripts use it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .clustering import Clustering
from .descriptors import Services
from .errors import PluginError
from .events import EventEmitter
from .metadata import ClusterMetadata
from .store import ClusterStore
from .wizard import Wizard


def choose(descriptors: Sequence[Any], wanted: str | None, kind: str) -> Any:
    """The descriptor named `wanted`, or the first one if `wanted` is None."""
    if not descriptors:
        raise PluginError(
            f"No plugin provides a {kind} (hook phy_register_{kind}); enable one, "
            "e.g. the built-in 'stats' plugin (see `phy plugins`)."
        )
    if wanted is None:
        return descriptors[0]
    for descriptor in descriptors:
        if descriptor.name == wanted:
            return descriptor
    names = ", ".join(d.name for d in descriptors)
    raise PluginError(f"The setting wizard.{kind} is {wanted!r}; the available ones are: {names}")


class Session(EventEmitter):
    """Curate one dataset.

    Parameters
    ----------
    model : DataModel
        The dataset, e.g. from ``plugin_manager.hook.phy_open_model``.
    plugin_manager : PhyPluginManager
        Provides statistics, quality and similarity functions.
    settings : Settings or None
        ``wizard.quality`` and ``wizard.similarity`` choose among the
        plugins' functions by name.

    Attributes
    ----------
    clustering : Clustering
    store : ClusterStore
    wizard : Wizard
    quality, similarity : ClusterMetric, ClusterSimilarity
        The descriptors chosen; ``quality_function`` and
        ``similarity_function`` are the callables made from them.
    services : Services
        What plugin factories receive.

    Events
    ------
    cluster(up)
        Forwarded from the clustering after every change.
    """

    def __init__(self, model: Any, plugin_manager: Any, settings: Any = None) -> None:
        super().__init__()
        self.model = model
        self.plugin_manager = plugin_manager
        self.settings = settings
        metadata = ClusterMetadata()
        for cluster, group in dict(getattr(model, "cluster_groups", {}) or {}).items():
            metadata.set("group", [cluster], group)
        self.clustering = Clustering(model.spike_clusters, cluster_metadata=metadata)
        self.store = ClusterStore(model, self.clustering,
                                  plugin_manager.collect("phy_register_statistics"))
        self.services = Services(
            model=model, clustering=self.clustering, store=self.store,
            settings=settings, plugin_manager=plugin_manager,
        )
        get = settings.get if settings is not None else (lambda key, default=None: default)
        self.quality = choose(plugin_manager.collect("phy_register_quality"),
                              get("wizard.quality"), "quality")
        self.similarity = choose(plugin_manager.collect("phy_register_similarity"),
                                 get("wizard.similarity"), "similarity")
        self.quality_function = self.quality.factory(self.services)
        self.similarity_function = self.similarity.factory(self.services)
        self.wizard = Wizard(quality=self.quality_function, similarity=self.similarity_function)
        self.wizard.attach(self.clustering)
        self.services.wizard = self.wizard
        self.clustering.connect(self._forward_cluster, event="cluster")

    def _forward_cluster(self, up) -> None:
        self.emit("cluster", up)

    def save(self) -> None:
        """Save the current clustering and cluster metadata through the model."""
        metadata = self.clustering.metadata
        labels = {field: {c: metadata.get(field, c) for c in self.clustering.cluster_ids}
                  for field in metadata.fields if field != "group"}
        groups = {int(c): metadata.group(c) for c in self.clustering.cluster_ids}
        self.model.save(self.clustering.spike_clusters, groups, labels)
