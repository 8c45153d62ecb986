"""Every format opens through the same reader hook and the same protocol, end to end.

synthetic .dat + .prb + .prm  ->  phy detect  ->  .kwik + .kwx  ->  phy export-template
"""

import numpy as np
import pytest

from phy_core.cli import main
from phy_core.model import check_model
from phy_core.plugins import create_plugin_manager
from phy_detect.executors import SerialExecutor
from phy_detect.runner import detect
from phy_synthetic.recording import synthesize_recording
from phy_template.writer import write_template_directory


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    rec = synthesize_recording(folder, name="rec", probe="buzsaki32", duration_s=2.0, seed=5)
    pm = create_plugin_manager()
    kwik = detect(rec.prm_path, plugin_manager=pm, executor=SerialExecutor())
    model = pm.hook.phy_open_model(path=kwik, options={})
    template_dir = write_template_directory(model, folder / "template")
    return pm, {"prm": rec.prm_path, "dat": rec.dat_path, "kwik": kwik,
                "template": template_dir}


@pytest.mark.parametrize("kind", ["prm", "dat", "kwik", "template"])
def test_each_format_opens_through_the_hook(datasets, kind, capsys, phy_user_dir):
    pm, paths = datasets
    model = pm.hook.phy_open_model(path=paths[kind], options={})
    assert model is not None, kind
    assert check_model(model) == []
    assert model.sample_rate == 30000.0
    assert main(["describe", str(paths[kind])]) == 0
    assert str(model.n_channels) in capsys.readouterr().out
    model.close()


def test_kwik_to_template_round_trip(datasets):
    pm, paths = datasets
    kwik = pm.hook.phy_open_model(path=paths["kwik"], options={})
    template = pm.hook.phy_open_model(path=paths["template"], options={})
    assert kwik.n_spikes > 0
    np.testing.assert_array_equal(template.spike_samples, kwik.spike_samples)
    np.testing.assert_array_equal(template.spike_clusters, kwik.spike_clusters)
    np.testing.assert_allclose(template.channel_positions, kwik.channel_positions)
    # Raw data is found from the template directory too: the same traces.
    np.testing.assert_array_equal(np.asarray(template.traces[1000:1010]),
                                  np.asarray(kwik.traces[1000:1010]))
