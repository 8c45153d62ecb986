"""`Session`: one dataset being curated, assembled from plugins.

A session ties the public services together: the model (from a reader
plugin), the clustering with its undo history, the per-cluster store (with
the statistics of every plugin), and the wizard (with the quality and
similarity chosen in the settings). The GUI and scripts use it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .clustering import Clustering, UpdateInfo
from .descriptors import Services
from .errors import PluginError
from .events import EventEmitter
from .metadata import ClusterMetadata
from .store import ClusterStore
from .wizard import Wizard


def choose(descriptors: Sequence[Any], wanted: str | None, kind: str,
           source: str | None = None, example: str = "stats", hook: str | None = None) -> Any:
    """The descriptor named `wanted`, or the first one if `wanted` is None.

    Parameters
    ----------
    descriptors : sequence
        What the plugins registered (hook ``phy_register_<kind>``).
    wanted : str or None
        A name.
    kind : str
        What they are, e.g. ``'quality'``.
    source : str or None
        Where `wanted` came from, for the error (default: the setting ``wizard.<kind>``).
    example : str
        A built-in plugin that provides some, for the error.
    hook : str or None
        The hook that registers them (default ``phy_register_<kind>``).
    """
    if not descriptors:
        raise PluginError(
            f"No plugin provides a {kind} (hook {hook or f'phy_register_{kind}'}); enable one, "
            f"e.g. the built-in {example!r} plugin (see `phy plugins`)."
        )
    if wanted is None:
        return descriptors[0]
    for descriptor in descriptors:
        if descriptor.name == wanted:
            return descriptor
    names = ", ".join(d.name for d in descriptors)
    source = source or f"The setting wizard.{kind}"
    raise PluginError(f"{source} is {wanted!r}; the available ones are: {names}")


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

    def clustering_algorithm(self, name: str | None = None) -> Any:
        """The `ClusteringAlgorithm` called `name`, else the one of the setting
        ``clustering.algorithm``, else the first one registered (hook
        ``phy_register_clustering_algorithms``)."""
        source = "The clustering algorithm asked for"
        if name is None and self.settings is not None:
            name, source = self.settings.get("clustering.algorithm"), \
                "The setting clustering.algorithm"
        hook = "phy_register_clustering_algorithms"
        return choose(self.plugin_manager.collect(hook), name, "clustering algorithm",
                      source=source, example="masked_em", hook=hook)

    def recluster(self, cluster_ids: int | Iterable[int], algorithm: str | None = None,
                  parameters: dict | None = None, reporter: Any = None) -> UpdateInfo:
        """Cluster the spikes of some clusters again, automatically, as one undoable action.

        The algorithm runs on the features and masks of those spikes only
        (``model.features[spike_ids]``, ``model.masks[spike_ids]``); the
        clusters it finds replace the given ones through one
        `Clustering.assign`, so one undo restores them.

        Parameters
        ----------
        cluster_ids : int or iterable of int
            Current clusters.
        algorithm : str or None
            The name of a `ClusteringAlgorithm` (see `clustering_algorithm`).
        parameters : dict or None
            Override the algorithm's default parameters.
        reporter : ProgressReporter or None
            Passed to the algorithm.

        Returns
        -------
        up : UpdateInfo
            Of the assignment (emitted as the clustering's ``cluster`` event);
            empty, and nothing recorded, when the clusters have no spike.

        Raises
        ------
        ValueError
            For unknown clusters.
        PluginError
            No such algorithm, or labels that do not fit the spikes.
        """
        spike_ids = self.clustering.spikes_in_clusters(cluster_ids)
        chosen = self.clustering_algorithm(algorithm)
        if len(spike_ids) == 0:
            return UpdateInfo(description="assign")
        merged = dict(chosen.parameters)
        merged.update(parameters or {})
        features = np.asarray(self.model.features[spike_ids])
        masks = np.asarray(self.model.masks[spike_ids])
        labels = np.asarray(chosen.run(features, masks, merged, reporter))
        if labels.shape != spike_ids.shape or labels.dtype.kind not in "iu":
            raise PluginError(f"The clustering algorithm {chosen.name!r} returned "
                              f"{labels.dtype} labels of shape {labels.shape} for "
                              f"{len(spike_ids)} spikes; expected integers, one per spike.")
        return self.clustering.assign(spike_ids, labels)

    def _forward_cluster(self, up) -> None:
        self.emit("cluster", up)

    def save(self) -> None:
        """Save the current clustering and cluster metadata through the model."""
        metadata = self.clustering.metadata
        labels = {field: {c: metadata.get(field, c) for c in self.clustering.cluster_ids}
                  for field in metadata.fields if field != "group"}
        groups = {int(c): metadata.group(c) for c in self.clustering.cluster_ids}
        self.model.save(self.clustering.spike_clusters, groups, labels)
