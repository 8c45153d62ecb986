"""``phy cluster-auto FILE.kwik``: masked EM clustering of a Kwik dataset.

The previous ``main`` clustering (if any) is first copied to
``main_previous`` (or ``main_previous_2``, ... if taken); the result is then
saved as ``main`` through `KwikModel.save` (which writes it safely), with
cluster 0 in the noise group, 1 in the MUA group and the others unsorted.
Parameters come from the ``klustakwik2`` metadata of the Kwik file when
present (the PRM values used at detection), else the defaults.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .data import MaskedEMError
from .loop import DEFAULT_PARAMETERS, masked_em

logger = logging.getLogger("phy")


def add_arguments(parser) -> None:
    parser.add_argument("path", help="The .kwik file.")
    parser.add_argument("--channel-group", type=int, default=None,
                        help="Channel group to cluster (default: the first one).")
    parser.add_argument("--clustering-name", default="main",
                        help="Name of the clustering to write (default: main).")


def _free_name(existing, base: str) -> str:
    name, i = base, 2
    while name in existing:
        name, i = f"{base}_{i}", i + 1
    return name


def _parameters(model) -> dict:
    p = dict(DEFAULT_PARAMETERS)
    try:
        stored = dict(model.kk2_metadata or {})
    except Exception:  # noqa: BLE001 - metadata is optional
        stored = {}
    p.update({k: v for k, v in stored.items() if k in DEFAULT_PARAMETERS})
    return p


def cluster_kwik(path, channel_group: int | None = None, clustering_name: str = "main",
                 reporter=None) -> dict:
    """Cluster a Kwik file in place; returns ``{'n_clusters', 'previous', 'n_spikes'}``."""
    from phy_kwik.model import KwikModel

    with KwikModel(path, channel_group=channel_group) as model:
        fm = model.features_masks
        if fm is None:
            raise MaskedEMError(f"{model.kwx_path}: no features and masks to cluster.")
        fm = np.asarray(fm[...], dtype=np.float64)
        nfpc = model.n_features_per_channel
        features, masks = fm[..., 0], fm[:, ::nfpc, 1]
        spike_clusters = masked_em(features, masks, _parameters(model), reporter)
        previous = None
        if clustering_name in model.clusterings:
            previous = _free_name(model.clusterings, f"{clustering_name}_previous")
            model.copy_clustering(clustering_name, previous)
            if model.clustering != clustering_name:
                model.clustering = clustering_name
            model.save(spike_clusters, _groups(spike_clusters))
        else:
            model.add_clustering(clustering_name, spike_clusters, _groups(spike_clusters))
    return dict(n_clusters=len(np.unique(spike_clusters)), previous=previous,
                n_spikes=len(spike_clusters))


def _groups(spike_clusters: np.ndarray) -> dict[int, int]:
    # 0 noise and 1 MUA are the special clusters of the algorithm; the others unsorted.
    return {int(c): (int(c) if c < 2 else 3) for c in np.unique(spike_clusters)}


def run(args, services) -> int:
    from phy_core.progress import ProgressReporter, show_progress

    path = Path(args.path)
    if not path.exists():
        raise MaskedEMError(f"{path}: no such file.")
    reporter = ProgressReporter()
    reporter.set_progress_message(
        "Masked EM: {progress:.0f}% (iteration {value} of at most {value_max})")
    reporter.set_complete_message("Masked EM done.")
    with show_progress(reporter):
        info = cluster_kwik(path, args.channel_group, args.clustering_name, reporter)
    previous = (f"; previous clustering kept as {info['previous']!r}"
                if info["previous"] else "")
    logger.info("%s: %d spikes in %d clusters saved as %r%s.", path, info["n_spikes"],
                info["n_clusters"], args.clustering_name, previous)
    return 0
