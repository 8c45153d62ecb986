"""``phy label-auto``: planted clusterings of a real detection, labels saved and kept.

The clustering is made from the ground truth: each detected spike goes to the
true unit it matches (within 0.4 ms; the closest one if a true spike was detected
twice), the others to the noise cluster 0,
and two nearby units (2 and 6, on channels 11 and 12) are merged into one
cluster. So we know which clusters are single units and which is not.
"""

import contextlib
import io
import shutil

import numpy as np
import pytest

from phy_autolabel import label_clusters
from phy_autolabel.label import AUTO_LABEL, AutoLabelError
from phy_autolabel.rule import GoodRule
from phy_core.cli import main
from phy_evaluate.metrics import evaluate
from phy_kwik.model import KwikModel
from phy_template.model import TemplateModel

PLUGINS = "commands,rawdata,probes,kwik,template,autolabel"
MERGED = 100
# Clusters of the single units 3 and 4 (ids 2 + unit): SNR 9.7, 82 and 26 detected spikes
# (unit 3 fires mostly outside this 8 s excerpt's detections), clearly isolated.
SINGLE_GOOD = {5, 6}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A Kwik file whose ``main`` clustering is planted from the ground truth."""
    from phy_detect.executors import SerialExecutor
    from phy_detect.runner import detect
    from phy_synthetic.recording import synthesize_recording

    folder = tmp_path_factory.mktemp("autolabel")
    rec = synthesize_recording(folder / "rec", name="rec", probe="linear32", duration_s=8,
                               seed=8, n_units=10)
    kwik = detect(rec.prm_path, output_dir=folder / "out", executor=SerialExecutor())
    gt = np.load(rec.groundtruth_path)
    with KwikModel(kwik) as model:
        samples = model.spike_samples
        true_samples, units = gt["spike_samples"], gt["spike_clusters"]
        i = np.clip(np.searchsorted(true_samples, samples), 1, len(true_samples) - 1)
        nearest = np.where(np.abs(true_samples[i - 1] - samples)
                           <= np.abs(true_samples[i] - samples), i - 1, i)
        matched = np.abs(true_samples[nearest] - samples) <= 12
        # A true spike detected twice (the second detection is a noise crossing or an
        # echo of the spike on distant channels through the local reference): only the
        # closest detection is the unit's, so that the planted units are clean.
        distance = np.where(matched, np.abs(true_samples[nearest] - samples), np.inf)
        order = np.lexsort((distance, nearest))
        first = np.ones(len(order), dtype=bool)
        first[1:] = nearest[order][1:] != nearest[order][:-1]
        matched[order[~first]] = False
        clusters = np.where(matched, units[nearest] + 2, 0)
        clusters[np.isin(clusters, [2 + 2, 6 + 2])] = MERGED
        model.save(clusters, {int(c): 0 if c == 0 else 3 for c in np.unique(clusters)})
    return kwik, gt


@pytest.fixture
def kwik(planted, tmp_path):
    """A fresh copy of the planted Kwik dataset (its .dat stays where the PRM says)."""
    src, _ = planted
    for suffix in (".kwik", ".kwx"):
        shutil.copy(src.with_suffix(suffix), tmp_path / f"rec{suffix}")
    return tmp_path / "rec.kwik"


def _groups(path):
    with KwikModel(path) as model:
        return dict(model.cluster_groups), dict(model.cluster_labels.get(AUTO_LABEL, {})), \
            model.spike_clusters.copy(), list(model.clusterings)


def test_kwik_labels_single_units_good_and_round_trip(kwik, planted):
    _, gt = planted
    before = _groups(kwik)[2]
    (result,) = label_clusters(kwik)
    assert set(result.good) >= SINGLE_GOOD
    assert MERGED not in result.good
    assert any("split_separation" in why for why in result.failures[MERGED])
    # Independently of the metrics: every good cluster is one true unit (accuracy >= 0.8).
    with KwikModel(kwik) as model:
        res = evaluate(gt["spike_samples"], gt["spike_clusters"], model.spike_samples,
                       model.spike_clusters, model.sample_rate)
    best = dict(zip(res.clusters.tolist(), res.cluster_best_accuracy.tolist()))
    assert all(best[c] >= 0.8 for c in result.good)
    assert best[MERGED] < 0.8  # the larger unit plus a third more spikes of the other
    groups, marks, spike_clusters, clusterings = _groups(kwik)
    assert {c for c, g in groups.items() if g == 2} == set(result.good)
    assert groups[0] == 0 and groups[MERGED] == 3
    assert marks == {c: "good" for c in result.good}
    np.testing.assert_array_equal(spike_clusters, before)
    assert "main_backup" in clusterings  # saved through KwikModel.save
    # Nothing left to change: a second run saves nothing.
    (again,) = label_clusters(kwik)
    assert again.changed == [] and again.good == result.good


def test_manual_labels_kept_unless_overwrite(kwik):
    with KwikModel(kwik) as model:
        groups = dict(model.cluster_groups)
        groups.update({5: 1, MERGED: 2})  # by hand: a passing cluster MUA, the merge good
        model.save(model.spike_clusters, groups)
    (result,) = label_clusters(kwik)
    groups = _groups(kwik)[0]
    assert groups[5] == 1 and groups[MERGED] == 2 and groups[6] == 2
    assert 5 not in result.changed and MERGED not in result.changed
    label_clusters(kwik, overwrite_labels=True)
    groups, marks, _, _ = _groups(kwik)
    assert groups[5] == 2 and groups[MERGED] == 3 and groups[0] == 0
    assert marks.get(5) == "good" and MERGED not in marks


def test_rerun_revisits_only_its_own_good_labels(kwik):
    with KwikModel(kwik) as model:
        groups = dict(model.cluster_groups)
        groups[11] = 2  # good by hand
        model.save(model.spike_clusters, groups)
    label_clusters(kwik)
    assert _groups(kwik)[0][6] == 2
    # A stricter rule: what this tool labelled good goes back to unsorted, the hand label stays.
    (strict,) = label_clusters(kwik, rule=GoodRule(min_snr=50))
    groups, marks, _, _ = _groups(kwik)
    assert strict.good == [11]
    assert groups[6] == 3 and groups[11] == 2 and marks == {}


@pytest.mark.parametrize("features", [True, False])
def test_template_directory_round_trip(kwik, tmp_path, features):
    from phy_template.writer import write_template_directory

    out = tmp_path / "templates"
    with KwikModel(kwik) as model:
        write_template_directory(model, out)
    if not features:  # as template matching writes it: isolation from waveforms
        (out / "pc_features.npy").unlink()
        (out / "pc_feature_ind.npy").unlink()
    spike_clusters = (out / "spike_clusters.npy").read_bytes()
    (result,) = label_clusters(out)
    assert set(result.good) >= SINGLE_GOOD
    assert MERGED not in result.good
    model = TemplateModel(out)
    assert {c for c, g in model.cluster_groups.items() if g == 2} == set(result.good)
    assert model.cluster_groups[0] == 0  # the noise cluster kept
    assert {c for c, v in model.labels[AUTO_LABEL].items() if v == "good"} == set(result.good)
    assert (out / "spike_clusters.npy").read_bytes() == spike_clusters
    assert not (out / "spike_clusters.backup.npy").exists()


def test_command_prints_the_table_and_dry_run_saves_nothing(kwik):
    before = _groups(kwik)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["--plugins", PLUGINS, "label-auto", str(kwik), "--dry-run",
                     "--refractory-period-ms", "1.0"])
    assert code == 0
    text = printed.getvalue()
    assert "isolation_distance" in text and "unsorted -> good" in text
    assert f"{len(SINGLE_GOOD)} good clusters" in text or "good clusters of" in text
    after = _groups(kwik)
    assert after[0] == before[0] and after[3] == before[3]


def test_not_a_sorting(tmp_path):
    with pytest.raises(AutoLabelError, match="neither a .kwik file nor a template directory"):
        label_clusters(tmp_path)
    with pytest.raises(AutoLabelError, match="no such file"):
        label_clusters(tmp_path / "missing.kwik")


def test_template_directory_with_one_cluster(kwik, tmp_path):
    """No other spike near the cluster: isolation is perfect, nothing breaks."""
    from phy_template.writer import write_template_directory

    out = tmp_path / "one"
    with KwikModel(kwik) as model:
        write_template_directory(model, out)
    for name in ("pc_features.npy", "pc_feature_ind.npy", "cluster_group.tsv"):
        (out / name).unlink()
    n = len(np.load(out / "spike_times.npy"))
    np.save(out / "spike_clusters.npy", np.zeros(n, dtype=np.int64))
    (result,) = label_clusters(out, dry_run=True)
    quality = result.quality[0]
    assert quality.n_spikes == n
    assert quality.isolation_distance == np.inf and quality.l_ratio == 0
    assert not (out / "cluster_group.tsv").exists()


def _metrics(results):
    """Every metric of every cluster, NaN-safe comparable (repr of each value)."""
    return [{c: {k: repr(v) for k, v in q.as_dict().items()} for c, q in r.quality.items()}
            for r in results]


@pytest.mark.parametrize("features", [True, False])
def test_metrics_in_shares_are_those_of_one_process(kwik, tmp_path, features):
    """`phy spikesort` has its workers compute shares of the clusters' metrics: merged,
    they are the single computation's to the last bit, and label the same clusters."""
    from phy_autolabel.label import quality_share
    from phy_template.writer import write_template_directory

    out = tmp_path / "templates"
    with KwikModel(kwik) as model:
        write_template_directory(model, out)
    if not features:
        (out / "pc_features.npy").unlink()
        (out / "pc_feature_ind.npy").unlink()
    whole = label_clusters(out, dry_run=True)
    shares = [quality_share(out, k, 3) for k in range(3)]
    assert sorted(c for s in shares for c in s) == sorted(whole[0].quality)
    assert all(len(s) >= 2 for s in shares)  # every share has work
    merged = dict(sorted((c, q) for s in shares for c, q in s.items()))
    (result,) = label_clusters(out, quality=merged)
    assert _metrics([result]) == _metrics(whole)
    assert result.new_groups == whole[0].new_groups and set(result.good) >= SINGLE_GOOD
    assert {c for c, g in TemplateModel(out).cluster_groups.items() if g == 2} \
        == set(result.good)
    # Metrics of another sorting (a cluster missing) are refused.
    del merged[max(merged)]
    with pytest.raises(AutoLabelError, match="changed"):
        label_clusters(out, quality=merged)


def test_labels_decided_then_saved_later(kwik, planted, tmp_path):
    """A dry run's labels saved later (`save_labels`: how `phy spikesort` saves the labels
    its worker decided during the template matching) are what labelling at once saves;
    labels of groups changed in between are refused."""
    from phy_autolabel.label import save_labels

    at_once = tmp_path / "at_once"
    at_once.mkdir()
    for suffix in (".kwik", ".kwx"):
        shutil.copy(kwik.with_suffix(suffix), at_once / f"rec{suffix}")
    expected = label_clusters(at_once / "rec.kwik")
    before = _groups(kwik)
    decided = label_clusters(kwik, dry_run=True)
    assert _groups(kwik)[0] == before[0]  # a dry run saves nothing
    save_labels(decided)
    assert _metrics(decided) == _metrics(expected)
    groups, marks, clusters, _ = _groups(kwik)
    want_groups, want_marks, want_clusters, _ = _groups(at_once / "rec.kwik")
    assert groups == want_groups and marks == want_marks
    np.testing.assert_array_equal(clusters, want_clusters)
    assert {c for c, g in groups.items() if g == 2} >= SINGLE_GOOD
    # Saved again after a hand change of a group: refused, nothing written.
    decided = label_clusters(kwik, dry_run=True)
    with KwikModel(kwik) as model:
        changed = dict(model.cluster_groups)
        changed[MERGED] = 0
        model.save(np.asarray(model.spike_clusters), changed)
    with pytest.raises(AutoLabelError, match="groups changed"):
        save_labels(decided)
    assert _groups(kwik)[0][MERGED] == 0
