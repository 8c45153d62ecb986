"""write_template_directory: round trips, and the CLI (describe, export-template)."""

import numpy as np
import pytest

from phy_core.cli import main
from phy_core.model import check_model
from phy_core.progress import ProgressReporter
from phy_synthetic.features import SyntheticFeatureModel
from phy_template.model import TemplateModel
from phy_template.tsv import TemplateFormatError
from phy_template.writer import write_template_directory


@pytest.fixture
def source(tmp_path, make_template_dir):
    d = tmp_path / "ks"
    make_template_dir(d, with_clusters=True)
    return TemplateModel(d)


def test_template_round_trip(source, tmp_path):
    reporter = ProgressReporter()
    out = write_template_directory(source, tmp_path / "out", reporter=reporter)
    assert reporter.is_complete()
    copy = TemplateModel(out)
    assert check_model(copy) == []
    for name in ("spike_samples", "spike_times", "spike_clusters", "channel_positions",
                 "channel_map"):
        np.testing.assert_array_equal(getattr(copy, name), getattr(source, name), err_msg=name)
    np.testing.assert_array_equal(copy.features[:], source.features[:])
    np.testing.assert_array_equal(copy.masks[:], source.masks[:])
    np.testing.assert_array_equal(copy.traces[:], source.traces[:])
    np.testing.assert_array_equal(copy.waveforms[:], source.waveforms[:])
    assert copy.cluster_groups == source.cluster_groups
    assert copy.labels == source.labels
    assert copy.dat_path == source.dat_path
    # Templates are contiguous ids over the sorted cluster ids.
    ids = np.unique(source.spike_clusters)
    np.testing.assert_array_equal(ids[copy.spike_templates], source.spike_clusters)
    np.testing.assert_array_equal(np.load(out / "amplitudes.npy"), np.ones(12))


def test_templates_are_bounded_means(source, tmp_path):
    out = write_template_directory(source, tmp_path / "out", max_spikes_per_template=2)
    templates = np.load(out / "templates.npy")
    clusters = source.spike_clusters
    for t, c in enumerate(np.unique(clusters)):
        spikes = np.nonzero(clusters == c)[0]
        chosen = spikes[np.linspace(0, len(spikes) - 1, 2).round().astype(int)]
        expected = source.waveforms[chosen].mean(axis=0)
        np.testing.assert_allclose(templates[t], expected, rtol=1e-5, atol=1e-4)


def test_synthetic_round_trip(tmp_path):
    model = SyntheticFeatureModel(n_units=4, n_channels=8, n_spikes=600, seed=3)
    model.cluster_groups = {0: 2, 3: 0}
    out = write_template_directory(model, tmp_path / "out")
    copy = TemplateModel(out)
    assert check_model(copy) == []
    np.testing.assert_array_equal(copy.spike_samples, model.spike_samples)
    np.testing.assert_array_equal(copy.spike_clusters, model.spike_clusters)
    np.testing.assert_allclose(copy.spike_times, model.spike_times)
    np.testing.assert_array_equal(copy.channel_positions, model.channel_positions)
    assert copy.cluster_groups == {0: 2, 3: 0}
    assert copy.traces is None
    assert "Traces unavailable" in (out / "params.py").read_text()
    # Features are kept exactly on every channel a spike's mask touches.
    masks = np.asarray(model.masks)
    kept = np.repeat(copy.masks[:] > 0, 3, axis=1)
    assert np.all(copy.masks[:][masks > 0] == 1)
    np.testing.assert_array_equal(copy.features[:][kept], model.features[kept])
    # Without raw data the waveforms are the templates: the cluster means.
    c = model.spike_clusters[0]
    spikes = np.nonzero(model.spike_clusters == c)[0]
    chosen = spikes[np.linspace(0, len(spikes) - 1, min(100, len(spikes))).round().astype(int)]
    np.testing.assert_allclose(copy.waveforms[0], model.waveforms[chosen].mean(0), atol=1e-5)


def test_overwrite_rules(source, tmp_path):
    out = write_template_directory(source, tmp_path / "out")
    with pytest.raises(TemplateFormatError, match="overwrite"):
        write_template_directory(source, out)
    np.save(out / "similar_templates.npy", np.zeros((1, 1)))
    (out / "cluster_old.tsv").write_text("cluster_id\told\n1\tx\n")
    write_template_directory(source, out, overwrite=True)
    assert not (out / "similar_templates.npy").exists()
    assert not (out / "cluster_old.tsv").exists()
    assert check_model(TemplateModel(out)) == []
    with pytest.raises(TemplateFormatError, match="own directory"):
        write_template_directory(source, source.path, overwrite=True)


def test_cli_describe_and_export(source, tmp_path, capsys, phy_user_dir):
    assert main(["describe", str(source.path)]) == 0
    text = capsys.readouterr().out
    assert "Template directory" in text and "12" in text
    out = tmp_path / "exported"
    assert main(["export-template", "synthetic:n_spikes=300,n_channels=6,n_units=3",
                 str(out)]) == 0
    copy = TemplateModel(out)
    assert copy.n_spikes == 300 and copy.n_channels == 6
    assert main(["export-template", str(source.path), str(out)]) == 1  # exists: clean error
    assert main(["describe", str(out / "params.py")]) == 0
