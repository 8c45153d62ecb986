"""Every hook is exercised: one plugin implements them all, phy's public paths call them."""

import numpy as np

from phy_core import hookimpl
from phy_core.cli import build_parser
from phy_core.descriptors import (
    ClusteringAlgorithm,
    ClusterMetric,
    ClusterSimilarity,
    ClusterStatistic,
    Command,
    Services,
    Stage,
)
from phy_core.session import Session
from phy_core.settings import Settings
from phy_qt.descriptors import ActionSpec, ViewSpec
from phy_synthetic.features import SyntheticFeatureModel


class EveryHook:
    def __init__(self):
        self.called = set()

    def _seen(self, name):
        self.called.add(name)

    @hookimpl
    def phy_configure(self, settings):
        self._seen("phy_configure")
        settings.add_defaults({"every.answer": 42})

    @hookimpl
    def phy_commands(self):
        self._seen("phy_commands")
        return [Command("every", "test command", run=lambda args, services: 7)]

    @hookimpl
    def phy_open_model(self, path, options):
        self._seen("phy_open_model")
        if str(path) == "every:":
            return SyntheticFeatureModel(n_units=3, n_spikes=300, n_channels=4, **options)
        return None

    @hookimpl
    def phy_register_stages(self):
        self._seen("phy_register_stages")
        return [Stage("identity", "filter", "no-op", factory=lambda: (lambda x: x))]

    @hookimpl
    def phy_register_clustering_algorithms(self):
        self._seen("phy_register_clustering_algorithms")
        return [ClusteringAlgorithm("zeros", "one cluster",
                                    lambda features, masks, parameters, reporter:
                                    np.zeros(len(features), dtype=np.int64))]

    @hookimpl
    def phy_register_statistics(self):
        self._seen("phy_register_statistics")
        return [ClusterStatistic("size", "spike count", lambda model, spikes: len(spikes))]

    @hookimpl
    def phy_register_metrics(self):
        self._seen("phy_register_metrics")
        return [ClusterMetric("size_metric", "size", lambda s: lambda c: s.store.get("size", c))]

    @hookimpl
    def phy_register_quality(self):
        self._seen("phy_register_quality")
        return [ClusterMetric("size", "size", lambda s: lambda c: float(s.store.get("size", c)))]

    @hookimpl
    def phy_register_similarity(self):
        self._seen("phy_register_similarity")
        return [ClusterSimilarity("id_distance", "closer ids", lambda s: lambda a, b: -abs(a - b))]

    @hookimpl
    def phy_register_views(self):
        self._seen("phy_register_views")
        return [ViewSpec("dummy", "Dummy", factory=lambda services: None)]

    @hookimpl
    def phy_register_actions(self):
        self._seen("phy_register_actions")
        return [ActionSpec("noop", callback=lambda services: None, shortcut="ctrl+n")]

    @hookimpl
    def phy_gui_ready(self, gui):
        self._seen("phy_gui_ready")


def test_every_hook_is_called_through_public_paths(phy_plugin_manager):
    pm = phy_plugin_manager
    plugin = EveryHook()
    info = pm.register_plugin(plugin, "every")
    assert info.status == "loaded", info.error
    all_hooks = {name for name in vars(pm.hook) if name.startswith("phy_")}
    assert set(info.hooks) == all_hooks

    settings = Settings()
    pm.hook.phy_configure.call_historic(kwargs=dict(settings=settings))
    assert settings.get("every.answer") == 42

    parser = build_parser(pm.collect("phy_commands"))
    args = parser.parse_args(["every"])
    assert args._command.run(args, Services()) == 7

    model = pm.hook.phy_open_model(path="every:", options={"seed": 3})
    assert model.n_spikes == 300 and model.seed == 3

    assert pm.collect("phy_register_stages")[0].factory()(5) == 5
    algorithm = pm.collect("phy_register_clustering_algorithms")[0]
    assert algorithm.run(np.ones((4, 2)), None, {}, None).tolist() == [0, 0, 0, 0]

    session = Session(model, pm, settings)
    sizes = session.clustering.cluster_counts
    biggest = max(sizes, key=lambda c: (sizes[c], -c))
    assert session.wizard.start() == [biggest]
    metric = pm.collect("phy_register_metrics")[0].factory(session.services)
    assert metric(biggest) == sizes[biggest]

    views = pm.collect("phy_register_views")
    actions = pm.collect("phy_register_actions")
    assert views[0].name == "dummy" and actions[0].shortcut == "ctrl+n"
    pm.hook.phy_gui_ready.call_historic(kwargs=dict(gui=object()))

    assert plugin.called == all_hooks
