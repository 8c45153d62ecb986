"""``phy spikesort``: detection then clustering, its summary, and resuming an interrupted sort."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from phy_core.cli import main
from phy_core.progress import ProgressReporter
from phy_detect.executors import SerialExecutor
from phy_kwik.model import KwikModel
from phy_masked_em.command import checkpoint_path, find_checkpoints, save_checkpoint
from phy_spikesort import spikesort
from phy_spikesort.pipeline import (
    SpikeSortError,
    _channel_groups,
    _group_counts,
    _resume_plan,
    detection_identity,
    sort_recording,
    state_path,
)

# The plugins a sort and its evaluation need (not the others being developed alongside).
PLUGINS = "commands,rawdata,probes,kwik,detect,masked_em,evaluate,spikesort"


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from phy_synthetic.recording import synthesize_recording

    # 10 s: in 3 s the strongest units fire too few spikes to pay a cluster's penalty.
    folder = tmp_path_factory.mktemp("spikesort")
    return synthesize_recording(folder / "rec", name="rec", probe="linear32", duration_s=10,
                                seed=2)


@pytest.fixture(scope="module")
def sorted_once(recording, tmp_path_factory):
    """``phy spikesort`` run once from the command line, uninterrupted: (.kwik, its output)."""
    out = tmp_path_factory.mktemp("once")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["--plugins", PLUGINS, "spikesort", str(recording.prm_path), "--output-dir",
                     str(out), "--n-workers", "1"])
    assert code == 0
    return out / "rec.kwik", printed.getvalue()


def _clusters(kwik):
    with KwikModel(kwik) as model:
        return model.spike_clusters.copy(), list(model.clusterings)


def test_spikesort_command_end_to_end(recording, sorted_once, tmp_path):
    sorted_once, out = sorted_once
    clusters, names = _clusters(sorted_once)
    assert {"main", "main_previous"} <= set(names)  # the detection's clustering is kept
    n_clusters = len(np.unique(clusters))
    assert n_clusters > 1
    assert f"{len(clusters)} spikes in {n_clusters} clusters" in out
    assert "x real time" in out and "Sorted 10.0 s of recording" in out
    # Nothing is left for a resume: no state, no checkpoint.
    assert not state_path(sorted_once).exists() and find_checkpoints(sorted_once) == []

    report = tmp_path / "evaluation.json"
    assert main(["--plugins", PLUGINS, "evaluate", str(sorted_once), str(recording.prm_path),
                 "--json", str(report)]) == 0
    evaluation = json.loads(report.read_text())
    units = evaluation["units"]
    # The sort ends with the automatic labels: some clusters good, none of them a false unit.
    summary = evaluation["summary"]
    assert summary["n_good"] >= 1 and summary["n_false_good"] == 0, summary
    assert f"Labelled {summary['n_good']} clusters good automatically" in out
    big = [u for u in units if u["snr"] >= 8]
    assert len(big) >= 3
    # Every big unit is found, and most are sorted accurately.
    assert all(u["accuracy"] >= 0.5 for u in big), big
    assert sum(u["accuracy"] >= 0.8 for u in big) >= 0.75 * len(big), big


def test_existing_sort_is_not_replaced_without_overwrite(recording, sorted_once):
    sorted_once, _ = sorted_once
    with pytest.raises(SpikeSortError, match="--overwrite"):
        spikesort(recording.prm_path, output_dir=sorted_once.parent)
    with pytest.raises(SpikeSortError, match="no channel group 3; the probe has 0"):
        spikesort(recording.prm_path, output_dir=sorted_once.parent, channel_group=3)


def _interrupt_at_third_iteration(value, value_max):
    if value >= 3:
        raise KeyboardInterrupt  # as Ctrl+C would, in the middle of the clustering


def test_interrupted_sort_resumes(recording, sorted_once, tmp_path, caplog):
    sorted_once, _ = sorted_once
    reporter = ProgressReporter()
    reporter.connect(_interrupt_at_third_iteration, event="progress")
    with pytest.raises(KeyboardInterrupt):
        sort_recording(recording.prm_path, output_dir=tmp_path, executor=SerialExecutor(),
                       cluster_reporter=reporter, checkpoint_every_s=0)
    kwik = tmp_path / "rec.kwik"
    assert kwik.exists() and state_path(kwik).exists() and checkpoint_path(kwik, 0).exists()
    clusters, names = _clusters(kwik)
    assert "main_previous" not in names and len(np.unique(clusters)) == 1  # not clustered yet

    caplog.set_level("INFO", logger="phy")
    result = sort_recording(recording.prm_path, output_dir=tmp_path)
    assert result.resumed and result.detect_s == 0
    assert "resuming with the clustering of channel group(s) 0" in caplog.text
    assert "Resuming masked EM at iteration 2" in caplog.text
    np.testing.assert_array_equal(_clusters(kwik)[0], _clusters(sorted_once)[0])
    assert result.n_clusters == len(np.unique(_clusters(kwik)[0]))
    assert not state_path(kwik).exists() and find_checkpoints(kwik) == []
    assert result.label_cpu_s > 0 and result.n_good >= 1


def test_groups_and_counts_read_without_a_model(sorted_once, tmp_path):
    sorted_once, _ = sorted_once
    with KwikModel(sorted_once) as model:
        assert _channel_groups(sorted_once) == list(model.channel_groups) == [0]
        assert _group_counts(sorted_once, 0) == (model.n_spikes, model.n_clusters)
    assert _group_counts(sorted_once, 0)[1] > 2  # the masked EM's clusters, not detection's
    # Not a Kwik file: the model says what is wrong.
    bad = tmp_path / "bad.kwik"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(Exception, match="bad.kwik"):
        _channel_groups(bad)


def test_resume_plan(recording, sorted_once, tmp_path):
    from phy_rawdata.prm import read_prm

    sorted_once, _ = sorted_once
    kwik = tmp_path / "rec.kwik"
    shutil.copy(sorted_once, kwik)
    shutil.copy(sorted_once.with_suffix(".kwx"), kwik.with_suffix(".kwx"))
    identity = detection_identity(read_prm(recording.prm_path))
    # A finished sort: nothing to resume.
    assert _resume_plan(kwik, identity) is None
    # `phy detect` + an interrupted `phy cluster-auto`: the checkpointed group resumes.
    save_checkpoint(checkpoint_path(kwik, 0), {}, 0, np.zeros(3))
    assert _resume_plan(kwik, identity) == [0]
    # An interrupted sort with the same detection: the groups not clustered yet.
    state_path(kwik).write_text(json.dumps(dict(detection=identity, clustered=[])))
    assert _resume_plan(kwik, identity) == [0]
    state_path(kwik).write_text(json.dumps(dict(detection=identity, clustered=[0])))
    assert _resume_plan(kwik, identity) == []
    # ... but with other detection parameters it is refused.
    other = dict(identity, spikedetekt=dict(identity["spikedetekt"],
                                            threshold_strong_std_factor=6.0))
    with pytest.raises(SpikeSortError, match="other detection parameters"):
        _resume_plan(kwik, other)
    # A .kwik without its .kwx is not a complete detection.
    kwik.with_suffix(".kwx").unlink()
    with pytest.raises(SpikeSortError, match="without its rec.kwx"):
        _resume_plan(kwik, identity)
