"""The detection runner, end to end: synthetic recording in, Kwik files out."""

import numpy as np
import pytest

from phy_core.errors import PhyError
from phy_core.model import check_model
from phy_core.progress import ProgressReporter
from phy_detect.evaluation import detection_report, match_spikes
from phy_detect.executors import DaskExecutor, SerialExecutor, make_executor
from phy_detect.runner import detect
from phy_kwik.model import KwikModel
from phy_synthetic.recording import synthesize_recording


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rec")
    synthesize_recording(folder, name="rec", probe="linear32", duration_s=4.0, seed=3)
    return folder


def _run(recording, out, **kwargs):
    kwargs.setdefault("executor", SerialExecutor())
    return detect(recording / "rec.prm", output_dir=out, **kwargs)


@pytest.fixture(scope="module")
def reference(recording, tmp_path_factory):
    kwik = _run(recording, tmp_path_factory.mktemp("ref"), chunk_size_s=1.0)
    return KwikModel(kwik)


def test_kwik_files_follow_the_protocol_and_find_the_spikes(reference, recording):
    model = reference
    assert check_model(model) == []
    assert model.n_spikes > 50 and model.n_features_per_channel == 3
    assert np.all(np.diff(model.spike_samples) >= 0)
    features = np.asarray(model.features[:])
    assert features.shape == (model.n_spikes, 32 * 3) and np.isfinite(features).all()
    masks = np.asarray(model.masks[:])
    assert masks.min() >= 0 and masks.max() <= 1 and np.all(masks.max(axis=1) == 1)
    gt = np.load(recording / "rec.groundtruth.npz")
    report = detection_report(model.spike_samples_fractional, gt["spike_samples"],
                              gt["spike_clusters"], model.sample_rate)
    big = gt["unit_snr"][report.units] >= 10
    assert big.any()
    assert np.all(report.recall[big] >= 0.95), report.recall
    # With the local reference (the default) the noise left is independent across
    # channels, and its crossings of the strong threshold are separate events: 29 of
    # 116 here (9 of 83 without the reference).
    assert report.n_false < 0.3 * model.n_spikes


def test_result_does_not_depend_on_chunk_size(reference, recording, tmp_path):
    timings = {}
    other = KwikModel(_run(recording, tmp_path, chunk_size_s=0.37, timings=timings))
    # Where the time went: every phase, adding up to at most the total.
    phases = ("setup", "thresholds", "pca", "chunks", "kwik")
    assert all(timings[p] >= 0 for p in phases) and timings["chunks"] > 0
    assert sum(timings[p] for p in phases) <= timings["total"]
    assert timings["n_spikes"] == other.n_spikes
    np.testing.assert_array_equal(other.spike_samples, reference.spike_samples)
    np.testing.assert_allclose(other.spike_samples_fractional,
                               reference.spike_samples_fractional, atol=1e-2)
    np.testing.assert_allclose(np.asarray(other.masks[:]), np.asarray(reference.masks[:]),
                               atol=1e-3)
    np.testing.assert_allclose(np.asarray(other.features[:]), np.asarray(reference.features[:]),
                               atol=1e-2 * np.abs(np.asarray(reference.features[:])).max())


def test_processes_and_dask_give_the_same_result(reference, recording, tmp_path):
    executor = make_executor("processes", n_workers=2)
    try:
        model = KwikModel(_run(recording, tmp_path / "p", executor=executor, chunk_size_s=1.0))
    finally:
        executor.close()
    np.testing.assert_array_equal(model.spike_samples, reference.spike_samples)
    pytest.importorskip("dask.distributed")
    dask = DaskExecutor(n_workers=2)
    try:
        model = KwikModel(_run(recording, tmp_path / "d", executor=dask, chunk_size_s=1.0))
    finally:
        dask.close()
    np.testing.assert_array_equal(model.spike_samples, reference.spike_samples)
    np.testing.assert_allclose(np.asarray(model.features[:]), np.asarray(reference.features[:]))


def test_interrupted_run_leaves_no_kwik_file(recording, tmp_path):
    reporter = ProgressReporter()

    @reporter.connect
    def on_progress(value, value_max):
        if value == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(recording, tmp_path, reporter=reporter, chunk_size_s=0.5)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_unknown_stage(recording, tmp_path):
    _run(recording, tmp_path)
    with pytest.raises(PhyError, match="already exists"):
        _run(recording, tmp_path)
    prm = (recording / "rec.prm").read_text()
    bad = tmp_path / "bad.prm"
    bad.write_text(prm.replace("spikedetekt = dict(", "spikedetekt = dict(stages=dict("
                                                      "filter='nope'), ", 1)
                   .replace("'rec.", f"'{recording}/rec."))
    with pytest.raises(PhyError, match="No filter stage named 'nope'"):
        detect(bad, output_dir=tmp_path / "x", executor=SerialExecutor())


def test_match_spikes_is_one_to_one():
    matches = match_spikes(detected=[10.0, 11.0, 50.0], true=[10.5, 10.6, 30.0], tolerance=2)
    assert sorted(matches[:2].tolist()) == [0, 1] and matches[2] == -1


class CountingFilter:
    """A lab's own filter stage: the built-in band-pass, counting its calls."""

    calls = 0

    def __init__(self, rate, low, high, order):
        from phy_detect.filtering import Filter

        self.bandpass = Filter(rate, low, high, order)
        self.margin_samples = self.bandpass.margin_samples
        self.rate = rate

    def __call__(self, x):
        CountingFilter.calls += 1
        return self.bandpass(x)

    def filter_chunk(self, *args, **kwargs):
        CountingFilter.calls += 1
        return self.bandpass.filter_chunk(*args, **kwargs)


def test_a_plugin_stage_replaces_the_built_in_by_name(reference, recording, tmp_path):
    from phy_core import hookimpl
    from phy_core.descriptors import Stage
    from phy_core.plugins import create_plugin_manager

    class LabPlugin:
        @hookimpl
        def phy_register_stages(self):
            return [Stage("counting", "filter", "band-pass, counted", CountingFilter)]

    pm = create_plugin_manager(enabled=["detect"])
    pm.register_plugin(LabPlugin(), "lab")
    prm = (recording / "rec.prm").read_text().replace("'rec.", f"'{recording}/rec.")
    lab_prm = tmp_path / "rec.prm"
    lab_prm.write_text(prm.replace("spikedetekt = dict(",
                                   "spikedetekt = dict(stages=dict(filter='counting'), ", 1))
    kwik = detect(lab_prm, output_dir=tmp_path, plugin_manager=pm, executor=SerialExecutor(),
                  chunk_size_s=1.0)
    assert CountingFilter.calls > 4
    np.testing.assert_array_equal(KwikModel(kwik).spike_samples, reference.spike_samples)


def _filter():
    from phy_detect.filtering import Filter

    return Filter(rate=30000.0, low=500.0, high=0.95 * 0.5 * 30000.0, order=3)


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("channels", [np.arange(32), np.array([5, 3, 30, 7])])
@pytest.mark.parametrize("max_values", [None, 20000])  # None: no shortening
def test_thresholds_in_the_workers_equal_the_serial_ones(recording, monkeypatch, single,
                                                         channels, max_values):
    from phy_detect import runner
    from phy_detect.threshold import compute_threshold_from_traces
    from phy_rawdata.model import open_traces
    from phy_rawdata.prm import read_prm

    if max_values is not None:
        monkeypatch.setattr(runner, "THRESHOLD_MAX_VALUES", max_values)
    traces = open_traces(read_prm(recording / "rec.prm"))
    f = _filter()
    expected = compute_threshold_from_traces(
        traces, f, n_excerpts=7, excerpt_size_samples=6000, single_threshold=single,
        std_factor=(2.0, 4.5), channels=channels, max_values=runner.THRESHOLD_MAX_VALUES)
    setup = runner.GroupSetup(str(recording / "rec.prm"), channels, f, None, None, None, None,
                              task="threshold")
    sd = dict(n_excerpts=7, excerpt_size_seconds=0.2, use_single_threshold=single,
              threshold_weak_std_factor=2.0, threshold_strong_std_factor=4.5)
    got = runner.compute_thresholds(SerialExecutor(), setup, traces.shape[0], sd, 30000.0)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kept", ["all", "some", "none"])
def test_threshold_excerpts_are_filtered_once_when_kept(recording, monkeypatch, kept):
    """The second round uses the excerpts kept from the first; those not kept (a full
    cache) are filtered again: the thresholds are the same either way."""
    from phy_detect import runner, worker
    from phy_detect.threshold import compute_threshold_from_traces
    from phy_rawdata.model import open_traces
    from phy_rawdata.prm import read_prm

    traces = open_traces(read_prm(recording / "rec.prm"))
    f, channels = _filter(), np.arange(32)
    expected = compute_threshold_from_traces(
        traces, f, n_excerpts=7, excerpt_size_samples=6000, single_threshold=False,
        std_factor=(2.0, 4.5), channels=channels)
    excerpt_bytes = 6000 * 32 * 4
    max_bytes = {"all": 2**30, "some": 3 * excerpt_bytes, "none": 0}[kept]
    monkeypatch.setattr(worker._EXCERPTS, "max_bytes", max_bytes)
    filtered = []
    real = worker.threshold_excerpt
    monkeypatch.setattr(worker, "threshold_excerpt",
                        lambda setup, chunk: filtered.append(chunk.keep_start) or real(setup,
                                                                                      chunk))
    setup = runner.GroupSetup(str(recording / "rec.prm"), channels, f, None, None, None, None)
    sd = dict(n_excerpts=7, excerpt_size_seconds=0.2, use_single_threshold=False,
              threshold_weak_std_factor=2.0, threshold_strong_std_factor=4.5)
    got = runner.compute_thresholds(SerialExecutor(), setup, traces.shape[0], sd, 30000.0)
    np.testing.assert_array_equal(got, expected)
    n_kept = {"all": 7, "some": 3, "none": 0}[kept]
    assert len(filtered) == 7 + (7 - n_kept)  # first round, then the excerpts not kept
    assert len(filtered) == 7 or len(set(filtered[7:])) == 7 - n_kept
    assert len(worker._EXCERPTS) == 0  # every kept excerpt was taken out


def test_thresholds_with_worker_processes_equal_the_serial_ones(recording):
    from phy_detect import runner
    from phy_detect.threshold import compute_threshold_from_traces
    from phy_rawdata.model import open_traces
    from phy_rawdata.prm import read_prm

    traces = open_traces(read_prm(recording / "rec.prm"))
    f, channels = _filter(), np.arange(32)
    sd = dict(n_excerpts=20, excerpt_size_seconds=0.1, use_single_threshold=False,
              threshold_weak_std_factor=2.0, threshold_strong_std_factor=4.5)
    expected = compute_threshold_from_traces(
        traces, f, n_excerpts=20, excerpt_size_samples=3000, single_threshold=False,
        std_factor=(2.0, 4.5), channels=channels)
    setup = runner.GroupSetup(str(recording / "rec.prm"), channels, f, None, None, None, None)
    executor = make_executor("processes", n_workers=2)
    try:
        for _ in range(2):  # the second run's workers still hold nothing of the first
            got = runner.compute_thresholds(executor, setup, traces.shape[0], sd, 30000.0)
            np.testing.assert_array_equal(got, expected)
    finally:
        executor.close()


def test_excerpt_cache_is_bounded_and_forgets_other_runs():
    from phy_detect.worker import _ExcerptCache, clear_buffers

    cache = _ExcerptCache(max_bytes=2 * 800 + 100)  # two of `a`
    a = np.arange(200, dtype=np.float32).reshape(100, 2)
    cache.put(("run1", 0, 100), a)
    margins = np.zeros((300, 2), np.float32)
    cache.put(("run1", 100, 200), margins[100:200])  # a view: kept as a copy
    assert len(cache) == 2 and cache.nbytes == 2 * 800
    cache.put(("run1", 200, 300), a)  # over the bound: not kept
    assert len(cache) == 2
    assert cache.take(("run1", 200, 300)) is None
    kept = cache.take(("run1", 100, 200))
    assert kept.base is None and np.shares_memory(kept, margins) is False
    cache.put(("run2", 0, 100), a)  # another run: the first run's entries are dropped
    assert cache.take(("run1", 0, 100)) is None and len(cache) == 1
    cache.put(("run2", 100, 200), 2 * a)
    spans = dict(cache.take_run("run2"))
    assert sorted(spans) == [(0, 100), (100, 200)] and len(cache) == 0
    np.testing.assert_array_equal(spans[100, 200], 2 * a)
    assert cache.take_run("run2") == []
    from phy_detect import worker

    worker._EXCERPTS.put(("run3", 0, 100), a)
    clear_buffers()
    assert len(worker._EXCERPTS) == 0


def test_read_float32_and_release_pages(recording):
    from phy_core.arrays import ChannelSubset, ConcatenatedArrays, _memmaps, release_pages
    from phy_detect.worker import read_float32
    from phy_rawdata.model import open_traces
    from phy_rawdata.prm import read_prm

    traces = open_traces(read_prm(recording / "rec.prm"))
    assert isinstance(traces, np.memmap)
    concatenated = ConcatenatedArrays([traces[:1000], traces[1000:]])
    for channels in (np.arange(32), np.array([4, 2, 31]), np.arange(1, 32)):
        expected = np.asarray(traces[500:1700])[:, channels].astype(np.float32)
        for array in (traces, concatenated):
            got = read_float32(array, 500, 1700, channels)
            assert got.dtype == np.float32 and got.flags.c_contiguous
            np.testing.assert_array_equal(got, expected)
    assert len(_memmaps(concatenated)) == 2 and len(_memmaps(ChannelSubset(traces, [0, 1]))) == 1
    assert _memmaps(np.zeros((3, 2))) == []
    before = np.array(traces[:100])
    release_pages(traces)
    release_pages(concatenated)
    release_pages(np.zeros((3, 2)))  # not a memmap: nothing to do
    np.testing.assert_array_equal(traces[:100], before)  # pages come back from the file


class WaveformsPCA:
    """A lab's features stage with only fit/transform: fitted on the full waveforms."""

    def __init__(self, n_pcs, pca_n_waveforms_max):
        from phy_detect.pca import PCA

        self.pca = PCA(n_pcs, pca_n_waveforms_max)
        self.fitted_on = None

    def fit(self, waveforms, masks):
        self.fitted_on = waveforms.shape
        return self.pca.fit(waveforms, masks)

    def transform(self, waveforms):
        return self.pca.transform(waveforms)


@pytest.mark.parametrize("n_max", [10000, 60])
def test_pca_from_pairs_equals_the_fit_on_full_waveforms(recording, tmp_path, n_max):
    from phy_core import hookimpl
    from phy_core.descriptors import Stage
    from phy_core.plugins import create_plugin_manager

    class LabPlugin:
        @hookimpl
        def phy_register_stages(self):
            return [Stage("waveforms-pca", "features", "PCA on full waveforms", WaveformsPCA)]

    prm = (recording / "rec.prm").read_text().replace("'rec.", f"'{recording}/rec.")
    assert "pca_n_waveforms_max=10000" in prm
    prm = prm.replace("pca_n_waveforms_max=10000", f"pca_n_waveforms_max={n_max}")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "rec.prm").write_text(prm)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "rec.prm").write_text(
        prm.replace("spikedetekt = dict(", "spikedetekt = dict(stages=dict("
                                           "features='waveforms-pca'), ", 1))
    pm = create_plugin_manager(enabled=["detect"])
    pm.register_plugin(LabPlugin(), "lab")
    models = [KwikModel(detect(tmp_path / d / "rec.prm", output_dir=tmp_path / d,
                               plugin_manager=pm, executor=SerialExecutor(), chunk_size_s=1.0))
              for d in "ab"]
    np.testing.assert_array_equal(models[0].spike_samples, models[1].spike_samples)
    a, b = (np.asarray(m.features[:]) for m in models)
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())


def test_worker_warm_up_opens_the_recording_and_runs_the_stages(recording, monkeypatch):
    from phy_detect import worker
    from phy_detect.runner import DEFAULT_STAGES, _warm_up

    calls = []

    class Recorder:
        def warm_up(self, func, *args):
            calls.append((func, args))
            return []

    from phy_rawdata.prm import read_prm

    prm = read_prm(recording / "rec.prm")
    _warm_up(Recorder(), prm, prm.spikedetekt, dict(DEFAULT_STAGES),
             dict(rate=20000.0, low=500.0, high=9000.0, order=3))
    (func, args), = calls
    assert func is worker.warm_up
    monkeypatch.setattr(worker, "_TRACES_CACHE", {})
    extracted = []
    original = worker._extract
    monkeypatch.setattr(worker, "_extract",
                        lambda setup, data: extracted.append(original(setup, data)))
    worker._warm_up_stages(args[1])  # raises if a stage cannot be built or run
    func(*args)
    assert str(recording / "rec.prm") in worker._TRACES_CACHE
    # The synthetic spike was found, so the extraction kernels ran.
    assert len(extracted) == 2 and all(len(e.spike_samples) == 1 for e in extracted)
    # A broken stage does not stop the run: warm-up is best effort.
    func(args[0], {"filter": ("no-such-stage", {})})


def test_chunk_results_become_kwx_rows_or_are_refused():
    from phy_detect.runner import DetectionError, _kwx_rows

    rng = np.random.default_rng(0)
    features = rng.normal(size=(4, 6))  # 3 channels x 2 features, float64 on purpose
    masks = rng.random((4, 3))
    rows = np.frombuffer(_kwx_rows(features, masks, 3, 2), np.float32).reshape(4, 6, 2)
    np.testing.assert_array_equal(rows[..., 0], features.astype(np.float32))
    # Channel c's mask on features 2c and 2c + 1 (channel-major features, as the Kwik format).
    np.testing.assert_array_equal(rows[..., 1], np.repeat(masks, 2, axis=1).astype(np.float32))
    with pytest.raises(DetectionError, match="expected"):
        _kwx_rows(np.zeros((2, 4), np.float32), np.zeros((2, 3)), 3, 2)
    with pytest.raises(DetectionError, match="expected"):
        _kwx_rows(np.zeros((2, 6), np.float32), np.zeros((2, 2)), 3, 2)


def test_optional_stage_arguments_reach_only_the_factories_that_take_them():
    from phy_detect.filtering import Filter
    from phy_detect.worker import make_stage

    arguments = dict(rate=30000.0, low=500.0, high=9000.0, order=3, precision="float32")
    # The built-in filter takes `precision`.
    assert make_stage(Filter, "filter", arguments).precision == "float32"
    seen = {}

    def old_style(rate, low, high, order):  # a lab's filter written before `precision`
        seen["old"] = (rate, low, high, order)
        return "old"

    def any_keywords(**kwargs):
        seen["any"] = kwargs
        return "any"

    assert make_stage(old_style, "filter", arguments) == "old"
    assert seen["old"] == (30000.0, 500.0, 9000.0, 3)
    assert make_stage(any_keywords, "filter", arguments) == "any"
    assert seen["any"] == arguments
    # Required arguments are always passed: a factory missing one fails loudly.
    with pytest.raises(TypeError):
        make_stage(lambda rate: None, "filter", arguments)


def test_main_pass_reuses_the_pca_excerpts_detections(reference, recording, tmp_path,
                                                      monkeypatch):
    # 4 s recorded, 1 s excerpts and chunks: every chunk was a PCA excerpt, so the main
    # pass only computes features there. Same spikes, masks and features as detecting
    # every chunk again (`reference` reused too: compare with a run that cannot).
    from phy_detect import runner, worker

    reused = []
    features_at_times = worker.features_at_times
    monkeypatch.setattr(worker, "features_at_times",
                        lambda setup, chunk, *args: reused.append(chunk.index)
                        or features_at_times(setup, chunk, *args))
    model = KwikModel(_run(recording, tmp_path / "a", chunk_size_s=1.0))
    assert reused == [0, 1, 2, 3]
    fit_pca = runner._fit_pca
    monkeypatch.setattr(runner, "_fit_pca", lambda *args: (fit_pca(*args)[0], {}))
    again = KwikModel(_run(recording, tmp_path / "b", chunk_size_s=1.0))
    assert reused == [0, 1, 2, 3]
    for m in (model, reference):
        np.testing.assert_array_equal(m.spike_samples_fractional, again.spike_samples_fractional)
        np.testing.assert_array_equal(np.asarray(m.masks[:]), np.asarray(again.masks[:]))
        np.testing.assert_array_equal(np.asarray(m.features[:]), np.asarray(again.features[:]))


def test_excerpts_in_flight_when_the_fit_has_its_spikes_are_reused(recording, tmp_path,
                                                                   monkeypatch):
    # 60 spikes suffice for the fit: the first excerpts have them. In this process
    # (serial) no other excerpt ran; with worker processes, the excerpts already in
    # flight finish and the main pass reuses them. The fit, hence every feature, is the
    # same.
    from phy_detect import runner

    prm = (recording / "rec.prm").read_text().replace("'rec.", f"'{recording}/rec.")
    (tmp_path / "rec.prm").write_text(prm.replace("pca_n_waveforms_max=10000",
                                                  "pca_n_waveforms_max=60"))
    reused = []
    fit_pca = runner._fit_pca
    monkeypatch.setattr(runner, "_fit_pca",
                        lambda *args: reused.append((out := fit_pca(*args))[1]) or out)
    serial = KwikModel(_run(tmp_path, tmp_path / "s", chunk_size_s=1.0))
    executor = make_executor("processes", n_workers=2)
    try:
        processes = KwikModel(_run(tmp_path, tmp_path / "p", executor=executor,
                                   chunk_size_s=1.0))
    finally:
        executor.close()
    assert len(reused[0]) < 4 and len(reused[1]) == 4
    np.testing.assert_array_equal(serial.spike_samples_fractional,
                                  processes.spike_samples_fractional)
    np.testing.assert_array_equal(np.asarray(serial.masks[:]), np.asarray(processes.masks[:]))
    np.testing.assert_array_equal(np.asarray(serial.features[:]),
                                  np.asarray(processes.features[:]))


def test_transform_rows_equals_the_transform_of_the_rows():
    from phy_detect.pca import PCA
    from phy_detect.worker import _transform_rows

    rng = np.random.default_rng(2)
    waveforms = rng.standard_normal((40, 12, 5)).astype(np.float32)
    pca = PCA(3)
    pca.fit(waveforms)
    for rows in (np.array([3, 2, 4, 5, 7, 6]), np.array([0, 39]), slice(4, 9),
                 np.array([], dtype=np.int64)):
        np.testing.assert_array_equal(_transform_rows(pca, waveforms, rows),
                                      pca.transform(waveforms[rows]))


def _recorded_pca_stages():
    """Two features stages that record the PCs they fit: the built-in PCA (fitted from
    pair moments, summed as the excerpts arrive when it takes all their spikes) and
    `WaveformsPCA` (fitted on the concatenated full waveforms, the former path)."""
    from phy_core import hookimpl
    from phy_core.descriptors import Stage
    from phy_detect.pca import PCA

    fitted = {"pairs": [], "waveforms": []}

    class RecordedPCA(PCA):
        def fit_statistics(self, statistics):
            statistics = list(statistics) if not hasattr(statistics, "s2") else [statistics]
            fitted["pairs"].append((sum(s.n_spikes for s in statistics),
                                    super().fit_statistics(statistics).copy()))
            return self._pcs

    class RecordedWaveformsPCA(WaveformsPCA):
        def fit(self, waveforms, masks):
            fitted["waveforms"].append((len(waveforms), super().fit(waveforms, masks).copy()))
            return self.pca._pcs

    class LabPlugin:
        @hookimpl
        def phy_register_stages(self):
            return [Stage("recorded-pca", "features", "", RecordedPCA),
                    Stage("recorded-waveforms-pca", "features", "", RecordedWaveformsPCA)]

    return LabPlugin(), fitted


def test_pcs_from_moments_summed_as_the_excerpts_arrive(recording, tmp_path):
    """The fit sums the pair moments as the PCA excerpts arrive while it takes all their
    spikes (`pca.subsample` None), else from the parts at the end: either way, the PCs
    of the fit on the full waveforms of the same spikes, also at the boundary (as many
    spikes as the fit takes) and one spike over it (a subsample). (To float32 rounding:
    the full waveforms' dense moments multiply in float32; the sums as the excerpts
    arrive are those of `statistics_from_pair_batches`, bit for bit, in test_detect_pca.)"""
    from phy_core.plugins import create_plugin_manager

    plugin, fitted = _recorded_pca_stages()
    pm = create_plugin_manager(enabled=["detect"])
    pm.register_plugin(plugin, "lab")
    text = (recording / "rec.prm").read_text().replace("'rec.", f"'{recording}/rec.")

    def fit_both(n_max):
        for stage in ("recorded-pca", "recorded-waveforms-pca"):
            folder = tmp_path / f"{stage}-{n_max}"
            folder.mkdir()
            (folder / "rec.prm").write_text(text.replace(
                "pca_n_waveforms_max=10000", f"pca_n_waveforms_max={n_max}").replace(
                "spikedetekt = dict(", f"spikedetekt = dict(stages=dict(features='{stage}'), ",
                1))
            detect(folder / "rec.prm", output_dir=folder, plugin_manager=pm,
                   executor=SerialExecutor(), chunk_size_s=1.0)
        (n_a, a), (n_b, b) = fitted["pairs"].pop(), fitted["waveforms"].pop()
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())
        return n_a, n_b

    n_fit, n_found = fit_both(10000)
    assert n_fit == n_found > 2  # every spike of the excerpts: summed as they arrived
    assert fit_both(n_fit) == (n_fit, n_fit)  # the boundary: all of them still
    assert fit_both(n_fit - 1) == (n_fit - 1, n_fit)  # one too many: a subsample
