"""`RawRecordingModel`, the ``phy_open_model`` reader hook and ``phy describe``."""

import h5py
import numpy as np
import pytest

import phy_rawdata
from phy_core.cli import main
from phy_core.errors import PhyError
from phy_core.model import check_model
from phy_rawdata.dat import RawDataError
from phy_rawdata.model import RawRecordingModel

N_SAMPLES, N_CHANNELS, SAMPLE_RATE = 2000, 6, 10_000.0
# The probe lists the file's channels in another order: waveforms follow the probe.
PROBE_CHANNELS = [3, 0, 1, 2, 5, 4]


def _write_prb(path, groups):
    text = "channel_groups = {\n"
    for group, channels in groups.items():
        geometry = {c: (0.0, 20.0 * i) for i, c in enumerate(channels)}
        text += f"    {group}: {{'channels': {channels}, 'geometry': {geometry}}},\n"
    path.write_text(text + "}\n")


@pytest.fixture
def recording(tmp_path):
    """A tiny ``rec.dat`` + ``rec.prb`` + ``rec.prm`` + ``rec.groundtruth.npz``."""
    traces = np.random.default_rng(3).integers(-2000, 2000, (N_SAMPLES, N_CHANNELS))
    traces = traces.astype(np.int16)
    traces.tofile(tmp_path / "rec.dat")
    _write_prb(tmp_path / "rec.prb", {0: PROBE_CHANNELS})
    (tmp_path / "rec.prm").write_text(
        "experiment_name = 'rec'\nprb_file = experiment_name + '.prb'\n"
        f"traces = dict(raw_data_files=[experiment_name + '.dat'], sample_rate={SAMPLE_RATE},\n"
        f"              n_channels={N_CHANNELS}, dtype='int16', voltage_gain=0.195)\n"
        "spikedetekt = dict(extract_s_before=5, extract_s_after=7)\n"
    )
    # Spikes at the very edges too, to exercise the zero padding.
    samples = np.array([0, 3, 100, 101, 999, 1500, 1996, 1999], dtype=np.int64)
    clusters = np.array([1, 0, 1, 2, 0, 2, 1, 0], dtype=np.int64)
    np.savez(tmp_path / "rec.groundtruth.npz", spike_samples=samples, spike_clusters=clusters,
             sample_rate=SAMPLE_RATE)
    return tmp_path, traces, samples, clusters


def _expected_waveform(traces, sample, channels, before=5, after=7):
    out = np.zeros((before + after, len(channels)), dtype=np.float32)
    for i, t in enumerate(range(sample - before, sample + after)):
        if 0 <= t < len(traces):
            out[i] = traces[t, channels]
    return out


def test_model_fulfils_the_protocol(recording):
    folder, traces, samples, clusters = recording
    model = RawRecordingModel(folder / "rec.prm")
    assert check_model(model) == []
    assert model.path == folder / "rec.prm"
    assert model.sample_rate == SAMPLE_RATE and model.n_channels == N_CHANNELS
    assert isinstance(model.raw_traces, np.memmap)
    np.testing.assert_array_equal(model.raw_traces, traces)  # the full file, file order
    np.testing.assert_array_equal(model.channel_order, PROBE_CHANNELS)
    # The protocol's traces: the probe's channels, in probe order, read lazily.
    np.testing.assert_array_equal(model.traces[10:20], traces[10:20][:, PROBE_CHANNELS])
    np.testing.assert_array_equal(model.channel_positions[:, 1], 20.0 * np.arange(6))
    np.testing.assert_array_equal(model.spike_samples, samples)
    np.testing.assert_array_equal(model.spike_clusters, clusters)
    np.testing.assert_allclose(model.spike_times, samples / SAMPLE_RATE)
    assert model.n_spikes == 8 and model.n_units == 3
    assert model.n_features_per_channel == 0 and model.features.shape == (8, 0)
    assert model.masks.shape == (8, 6) and np.all(np.asarray(model.masks) == 1)
    assert model.cluster_groups == {}
    assert model.duration == N_SAMPLES / SAMPLE_RATE
    assert model.probe.n_channels == 6
    model.close()


def test_waveforms_are_windows_of_the_traces(recording):
    folder, traces, samples, _ = recording
    model = RawRecordingModel(folder / "rec.prm")
    waveforms = model.waveforms
    assert waveforms.shape == (8, 12, 6)
    everything = waveforms[:]
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(
            everything[i], _expected_waveform(traces, sample, PROBE_CHANNELS))
    # A window inside the recording is a direct slice of the file, in probe order.
    np.testing.assert_array_equal(waveforms[2], traces[95:107][:, PROBE_CHANNELS])
    # Zero padding at both edges.
    assert np.all(waveforms[0][:5] == 0) and np.all(waveforms[7][6:] == 0)
    np.testing.assert_array_equal(waveforms[[5, 2]], everything[[5, 2]])
    np.testing.assert_array_equal(waveforms[-1], everything[7])
    np.testing.assert_array_equal(waveforms[np.arange(8) % 2 == 0], everything[::2])
    np.testing.assert_array_equal(waveforms[1:4, :, 0], everything[1:4, :, 0])
    with pytest.raises(IndexError):
        waveforms[8]


def test_no_ground_truth_means_no_spikes(recording):
    folder, *_ = recording
    (folder / "rec.groundtruth.npz").unlink()
    model = RawRecordingModel(folder / "rec.prm")
    assert check_model(model) == []
    assert model.n_spikes == 0 and model.spike_samples.shape == (0,)
    assert model.waveforms.shape == (0, 12, 6) and model.masks.shape == (0, 6)
    assert "not sorted yet" in model.describe()


def test_describe_and_save(recording):
    folder, *_ = recording
    model = RawRecordingModel(folder / "rec.prm")
    text = model.describe()
    for expected in ("rec.dat", "0.2 s", "2,000 samples", "10000 Hz", "int16", "rec",
                     "units (true)      3", "channels          6"):
        assert expected in text
    with pytest.raises(PhyError, match="no clustering.*Sort it first"):
        model.save(np.zeros(8, dtype=np.int64), {})


def test_channel_groups_and_mapping(recording):
    folder, traces, samples, _ = recording
    _write_prb(folder / "rec.prb", {0: [4, 1], 1: [5, 0, 2]})
    model = RawRecordingModel(folder / "rec.prm", channel_group=1)
    assert model.channel_group == 1 and model.n_channels == 3
    np.testing.assert_array_equal(model.channel_order, [5, 0, 2])
    assert model.raw_traces.shape == (N_SAMPLES, N_CHANNELS)  # the full file
    assert model.traces.shape == (N_SAMPLES, 3)
    np.testing.assert_array_equal(model.traces[5:9], traces[5:9][:, [5, 0, 2]])
    assert model.waveforms.shape == (8, 12, 3) and model.masks.shape == (8, 3)
    np.testing.assert_array_equal(model.waveforms[4],
                                  _expected_waveform(traces, samples[4], [5, 0, 2]))
    assert RawRecordingModel(folder / "rec.prm").channel_order.tolist() == [4, 1]
    with pytest.raises(PhyError, match="channel group"):
        RawRecordingModel(folder / "rec.prm", channel_group=7)


def test_probe_naming_a_channel_beyond_the_data_is_an_error(recording):
    folder, *_ = recording
    _write_prb(folder / "rec.prb", {0: [0, 1, 40]})
    with pytest.raises(RawDataError, match=r"rec.prb: the probe names channel\(s\) \[40\].*"
                                           r"only 6 channels"):
        RawRecordingModel(folder / "rec.prm")


def test_builtin_probe_name_and_no_probe(recording):
    folder, *_ = recording
    prm = (folder / "rec.prm").read_text()
    (folder / "rec.prm").write_text(prm.replace("prb_file = experiment_name + '.prb'",
                                                "prb_file = 'linear32'"))
    with pytest.raises(RawDataError, match="channel"):  # linear32 needs 32 channels
        RawRecordingModel(folder / "rec.prm")
    (folder / "rec.prm").write_text(prm.replace("prb_file = experiment_name + '.prb'", ""))
    model = RawRecordingModel(folder / "rec.prm")
    assert model.probe is None and check_model(model) == []
    np.testing.assert_array_equal(model.channel_order, np.arange(6))


@pytest.mark.parametrize("arrays, match", [
    (dict(spike_samples=np.array([5, 3]), spike_clusters=np.array([0, 0])), "not sorted"),
    (dict(spike_samples=np.array([3, 5]), spike_clusters=np.array([0])), "2 spike_samples"),
    (dict(spike_samples=np.array([3, 2000]), spike_clusters=np.array([0, 1])), "outside"),
    (dict(spike_samples=np.array([-1, 3]), spike_clusters=np.array([0, 1])), "outside"),
    (dict(spike_samples=np.array([1.5]), spike_clusters=np.array([0])), "integer"),
    (dict(spike_clusters=np.array([0])), "missing array"),
])
def test_invalid_ground_truth(recording, arrays, match):
    folder, *_ = recording
    np.savez(folder / "rec.groundtruth.npz", **arrays)
    with pytest.raises(RawDataError, match=f"rec.groundtruth.npz: .*{match}"):
        RawRecordingModel(folder / "rec.prm")
    (folder / "rec.groundtruth.npz").write_bytes(b"not a zip")
    with pytest.raises(RawDataError, match="rec.groundtruth.npz: cannot be read"):
        RawRecordingModel(folder / "rec.prm")


def test_kwd_and_several_files(recording):
    folder, traces, samples, _ = recording
    with h5py.File(folder / "rec.raw.kwd", "w") as f:
        f.create_dataset("recordings/0/data", data=traces[:700])
        f.create_dataset("recordings/1/data", data=traces[700:1200], chunks=True,
                         compression="gzip")
    traces[1200:].tofile(folder / "rest.dat")
    prm = (folder / "rec.prm").read_text()
    (folder / "rec.prm").write_text(prm.replace("[experiment_name + '.dat']",
                                                "['rec.raw.kwd', 'rest.dat']"))
    model = RawRecordingModel(folder / "rec.prm")
    assert check_model(model) == []
    np.testing.assert_array_equal(np.asarray(model.raw_traces), traces)
    np.testing.assert_array_equal(np.asarray(model.traces), traces[:, PROBE_CHANNELS])
    np.testing.assert_array_equal(model.waveforms[4],  # sample 999 across the two recordings
                                  _expected_waveform(traces, samples[4], PROBE_CHANNELS))
    model.close()
    (folder / "rec.prm").write_text(prm.replace("[experiment_name + '.dat']", "['rec.raw.kwd']")
                                    .replace(f"n_channels={N_CHANNELS}", "n_channels=5"))
    with pytest.raises(RawDataError, match="rec.raw.kwd: has 6 channels.*n_channels=5"):
        RawRecordingModel(folder / "rec.prm")


def test_reader_hook(recording, phy_plugin_manager):
    folder, *_ = recording
    phy_plugin_manager.register_plugin(phy_rawdata, "rawdata")
    hook = phy_plugin_manager.hook.phy_open_model
    for path in (folder / "rec.prm", folder / "rec.dat"):
        model = hook(path=path, options={})
        assert isinstance(model, RawRecordingModel) and model.n_spikes == 8
    assert hook(path=folder / "rec.prm", options={"channel_group": 0}).channel_group == 0
    other = folder / "other.dat"
    other.write_bytes(b"\0" * 12)
    assert hook(path=other, options={}) is None  # no PRM beside it
    assert hook(path=folder / "rec.prb", options={}) is None
    assert hook(path=folder / "missing.prm", options={}) is None
    assert hook(path=folder / "x.kwik", options={}) is None


def test_cli_describe(recording, phy_user_dir, capsys):
    folder, *_ = recording
    assert main(["describe", str(folder / "rec.prm")]) == 0
    out = capsys.readouterr().out
    assert "Raw recording rec" in out and "units (true)      3" in out
    assert main(["describe", str(folder / "rec.dat")]) == 0
    assert "Raw recording rec" in capsys.readouterr().out
    other = folder / "other.dat"
    other.write_bytes(b"\0" * 12)
    assert main(["describe", str(other)]) == 1
    assert "no plugin reads this dataset" in capsys.readouterr().err
    (folder / "rec.prm").write_text("traces = dict(raw_data_files=['rec.dat'], sample_rate=-1,"
                                    " n_channels=6)")
    assert main(["describe", str(folder / "rec.prm")]) == 1
    err = capsys.readouterr().err
    assert "sample_rate" in err and "Traceback" not in err


def test_synthetic_recording_round_trip(tmp_path):
    """A recording written by ``phy_synthetic``: spikes at the ground truth's troughs."""
    recording = pytest.importorskip("phy_synthetic.recording")
    out = recording.synthesize_recording(tmp_path, name="syn", probe="linear32",
                                         duration_s=3.0, seed=1)
    model = RawRecordingModel(out.prm_path)
    assert check_model(model) == []
    gt = np.load(out.groundtruth_path)
    assert model.n_spikes == len(gt["spike_samples"]) > 0
    before = model.prm.spikedetekt["extract_s_before"]
    waveforms = model.waveforms[:]
    peak_channels = gt["unit_peak_channels"][gt["spike_clusters"]]
    # Column j of a waveform is file channel channel_order[j].
    column_of = {int(c): j for j, c in enumerate(model.channel_order)}
    columns = np.array([column_of[int(c)] for c in peak_channels])
    on_peak = waveforms[np.arange(model.n_spikes), :, columns]
    troughs = np.argmin(on_peak, axis=1)
    # The trough is at the spike sample (window index `before`) for most spikes
    # (overlapping spikes and noise can move a few).
    assert np.mean(np.abs(troughs - before) <= 1) > 0.8
