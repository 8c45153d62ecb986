"""``phy spikesort`` with its optional template-matching stage: options, output, resuming."""

import contextlib
import io
import json

import numpy as np
import pytest

from phy_core.cli import main
from phy_detect.executors import SerialExecutor
from phy_evaluate.metrics import evaluate
from phy_spikesort.pipeline import (
    SpikeSortError,
    sort_recording,
    state_path,
    template_dir,
    template_matching_options,
)
from phy_template.model import TemplateModel
from phy_tmatch.templates import TemplateMatchingError

PLUGINS = "commands,rawdata,probes,kwik,detect,masked_em,evaluate,spikesort"


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from phy_synthetic.recording import synthesize_recording

    folder = tmp_path_factory.mktemp("spikesort_tmatch")
    return synthesize_recording(folder / "rec", name="rec", probe="linear32", duration_s=10,
                                seed=2)


def test_template_matching_options_from_the_prm_and_the_caller(recording, tmp_path):
    prm = recording.prm_path
    assert template_matching_options(prm) is None  # no section: off
    on = template_matching_options(prm, True)
    assert on["refine_rounds"] == 2 and on["include_noise"] and on["include_mua"]
    assert template_matching_options(prm, dict(refine_rounds=0))["refine_rounds"] == 0
    text = prm.read_text()
    with_section = tmp_path / "with.prm"
    with_section.write_text(text + "\ntemplate_matching = dict(refine_rounds=2)\n")
    assert template_matching_options(with_section)["refine_rounds"] == 2
    assert template_matching_options(with_section, False) is None
    disabled = tmp_path / "disabled.prm"
    disabled.write_text(text + "\ntemplate_matching = dict(enabled=False)\n")
    assert template_matching_options(disabled) is None
    assert template_matching_options(disabled, True) is not None
    bad = tmp_path / "bad.prm"
    bad.write_text(text + "\ntemplate_matching = 3\n")
    with pytest.raises(SpikeSortError, match="template_matching must be a dict"):
        template_matching_options(bad)


def test_spikesort_resumes_at_the_template_matching_stage(recording, tmp_path, caplog):
    # 1. A sort whose template matching fails (a misspelled option) after the clustering.
    with pytest.raises(TemplateMatchingError, match="z_treshold"):
        sort_recording(recording.prm_path, output_dir=tmp_path, executor=SerialExecutor(),
                       template_matching=dict(z_treshold=4))
    kwik = tmp_path / "rec.kwik"
    state = json.loads(state_path(kwik).read_text())
    assert state["clustered"] == [0] and state["matched"] == []
    kwik_stamp = kwik.stat().st_mtime_ns

    # 2. The rerun goes straight to the template matching (from the command line).
    caplog.set_level("INFO", logger="phy")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--plugins", PLUGINS, "spikesort", str(recording.prm_path), "--output-dir",
                     str(tmp_path), "--n-workers", "1", "--template-matching",
                     "--no-auto-label"]) == 0
    # Neither detected nor clustered again (nor labelled: --no-auto-label).
    assert kwik.stat().st_mtime_ns == kwik_stamp
    assert "good automatically" not in printed.getvalue()
    assert "Detection resumed, not redone" in printed.getvalue()
    out = template_dir(kwik, 0)
    assert f"Wrote the template directory {out}." in printed.getvalue()
    assert (out / "params.py").exists() and not state_path(kwik).exists()
    info = json.loads((out / "tmatch.json").read_text())
    assert len(info["refinements"]) <= 2 and info["options"]["refine_rounds"] == 2

    # The matched sorting finds the recording's strong units.
    truth = np.load(recording.gt_path if hasattr(recording, "gt_path")
                    else recording.prm_path.with_suffix(".groundtruth.npz"))
    model = TemplateModel(out)
    result = evaluate(truth["spike_samples"], truth["spike_clusters"], model.spike_samples,
                      model.spike_clusters, float(truth["sample_rate"]),
                      unit_snr=truth["unit_snr"])
    strong = result.snr >= 8
    assert strong.sum() >= 3 and np.all(result.accuracy[strong] >= 0.8), result.accuracy

    # 3. A finished sort (template matching included) is not redone without --overwrite.
    with pytest.raises(SpikeSortError, match="--overwrite"):
        sort_recording(recording.prm_path, output_dir=tmp_path, template_matching=True)


def test_noise_estimated_in_a_worker_while_the_clustering_runs(recording):
    """With template matching, an idle worker estimates the labels' noise during the masked
    EM: a worker process gives the NoiseCache the numbers computed here."""
    from phy_autolabel.sources import NoiseCache, recording_noise
    from phy_detect.executors import make_executor
    from phy_spikesort.pipeline import _NoiseInBackground

    executor = make_executor("processes", n_workers=1)
    try:
        job = _NoiseInBackground(executor, recording.prm_path)
        cache = NoiseCache()
        job.into(cache)
    finally:
        executor.close()
    key, columns, values = recording_noise(recording.prm_path)
    assert len(values) == 32 and np.all(values > 0)
    np.testing.assert_array_equal(cache.get(key, columns), values)
    # A failing job costs nothing: the labels estimate the noise themselves.
    failing = _NoiseInBackground(SerialExecutor(), recording.prm_path.with_name("none.prm"))
    other = NoiseCache()
    failing.into(other)
    assert np.all(np.isnan(other.get(key, columns)))


def test_labels_decided_by_the_workers_are_those_of_this_process(recording, tmp_path):
    """With template matching on worker processes, a worker decides the Kwik file's labels
    during the template matching and the workers compute the template directory's metrics
    in shares; labelling the saved sort again here gives every metric to the last bit and
    changes no group."""
    from phy_autolabel import label_clusters

    result = sort_recording(recording.prm_path, output_dir=tmp_path, n_workers=2,
                            template_matching=dict(refine_rounds=1))
    assert result.label_worker_cpu_s > 0  # the workers did label
    kwik, tdir = result.kwik_path, result.template_dirs[0]
    # The template matching's noise was measured by the workers during the masked EM
    # (`phy_tmatch.noise`: the same values, tests/plugins/test_tmatch_noise.py).
    assert json.loads((tdir / "tmatch.json").read_text())["noise_measured_before"]
    assert [r.path for r in result.labels] == [kwik, tdir]
    again = label_clusters(kwik, channel_group=0, dry_run=True) + label_clusters(tdir,
                                                                                 dry_run=True)
    for saved, here in zip(result.labels, again):
        assert {c: repr(q) for c, q in saved.quality.items()} \
            == {c: repr(q) for c, q in here.quality.items()}
        assert here.changed == [] and here.new_groups == saved.new_groups
    assert result.n_good == sum(len(r.good) for r in again) > 0
    assert {c for c, g in TemplateModel(tdir).cluster_groups.items() if g == 2} \
        == set(again[1].good)


def test_work_beside_the_clustering_comes_one_job_at_a_time(recording):
    """During the masked EM, the template matching's noise then the labels' noise are
    measured by one worker at a time (the EM keeps its core): each of the first's jobs is
    submitted alone, and the second after them."""
    from phy_spikesort.pipeline import _NoiseInBackground, _TemplateNoiseInBackground
    from phy_tmatch.noise import measure_noise

    class Recording(SerialExecutor):
        name = "recording"

        def __init__(self):
            self.calls = []

        def imap(self, func, jobs):
            jobs = list(jobs)
            self.calls.append((func.__name__, len(jobs)))
            return super().imap(func, jobs)

    executor = Recording()
    tmatch = _TemplateNoiseInBackground(executor, recording.prm_path, 0,
                                        dict(refine_rounds=2, include_mua=True))
    labels = _NoiseInBackground(executor, recording.prm_path, after=tmatch.wait)
    labels._thread.join()
    assert executor.calls == [("run_job", 1)] * 5 + [("recording_noise", 1)]
    stats = tmatch.result()
    expected = measure_noise(recording.prm_path, SerialExecutor(), channel_group=0)
    assert stats.key == expected.key and np.array_equal(stats.xtx, expected.xtx)
    np.testing.assert_array_equal(np.stack(stats.medians), np.stack(expected.medians))


def test_workers_make_the_matching_scratch_arrays_after_the_noise(recording):
    """During the masked EM, once the template matching's noise is measured (its jobs
    first), the workers are asked to make the matching's chunk-sized scratch arrays
    (`phy_tmatch.runner.worker_scratch` of the channel group, for the stage's options)."""
    from phy_rawdata.prm import read_prm
    from phy_spikesort.pipeline import _reserve_template_scratch, _TemplateNoiseInBackground
    from phy_tmatch import worker
    from phy_tmatch.runner import worker_scratch

    class Recorder(SerialExecutor):
        name = "recorder"

        def __init__(self):
            self.calls = []

        def imap(self, func, jobs):
            self.calls.append(func.__name__)
            return super().imap(func, jobs)

        def warm_up(self, func, *args):
            self.calls.append((func, args))
            return []

    prm = read_prm(recording.prm_path)
    options = dict(template_matching_options(recording.prm_path, True), chunk_size_s=1.0)
    executor = Recorder()
    noise = _TemplateNoiseInBackground(
        executor, recording.prm_path, 0, options,
        then=lambda: _reserve_template_scratch(executor, prm, 0, options))
    assert noise.result() is not None
    assert executor.calls[:5] == ["run_job"] * 5 and len(executor.calls) == 6
    func, (shapes,) = executor.calls[-1]
    assert func is worker.reserve_scratch and shapes == worker_scratch(prm, 0, **options)
    # A second longer than the 1 s chunks: their margins; the pooled residual with rounds.
    assert shapes["chunk"][0][1] == 32 and shapes["chunk"][0][0] > prm.traces.sample_rate
    assert "pooled" in shapes
