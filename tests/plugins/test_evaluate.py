"""Ground-truth evaluation: spike matching, accuracy, Hungarian assignment, ``phy evaluate``."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import phy_evaluate
from phy_core import hookimpl
from phy_core.bunch import Bunch
from phy_core.cli import build_parser
from phy_core.descriptors import Services
from phy_core.errors import PhyError
from phy_evaluate.command import GroundTruthError, load_ground_truth
from phy_evaluate.metrics import EvaluationError, evaluate, match_counts

# --------------------------------------------------------------------------------------------
# match_counts / evaluate on hand-made examples
# --------------------------------------------------------------------------------------------


def test_perfect_sorting_relabelled():
    t = np.array([100, 200, 300, 400, 500])
    u = np.array([0, 1, 0, 1, 0])
    c = np.array([7, 3, 7, 3, 7])
    units, clusters, counts = match_counts(t, u, t, c, 5)
    assert units.tolist() == [0, 1] and clusters.tolist() == [3, 7]
    assert counts.tolist() == [[0, 3], [2, 0]]
    r = evaluate(t, u, t, c, sample_rate=1000.0, tolerance_ms=5.0)
    assert r.matched_cluster.tolist() == [7, 3]
    assert r.accuracy.tolist() == [1.0, 1.0]
    assert r.recall.tolist() == [1.0, 1.0] and r.precision.tolist() == [1.0, 1.0]
    assert r.summary.fraction_accurate == 1.0 and r.summary.n_accurate == 2


def test_merge_of_two_units():
    t = np.array([100, 200, 300, 400, 500])
    u = np.array([0, 1, 0, 1, 0])
    c = np.full(5, 5)
    r = evaluate(t, u, t, c, sample_rate=1000.0, tolerance_ms=1.0)
    assert r.counts.tolist() == [[3], [2]]
    # Unit 0: 3 / (3 + 5 - 3); unit 1 would get 2 / (2 + 5 - 2) but the cluster goes to unit 0.
    np.testing.assert_allclose(r.accuracy_matrix[:, 0], [0.6, 0.4])
    assert r.matched_cluster.tolist() == [5, -1]
    np.testing.assert_allclose(r.accuracy, [0.6, 0.0])
    np.testing.assert_allclose(r.recall, [1.0, 0.0])
    np.testing.assert_allclose(r.precision, [0.6, 0.0])
    assert r.summary.n_accurate == 0


def test_split_of_one_unit():
    t = np.arange(1, 11) * 100
    u = np.zeros(10, dtype=int)
    c = np.array([1] * 6 + [2] * 4)
    r = evaluate(t, u, t, c, sample_rate=1000.0, tolerance_ms=1.0)
    assert r.counts.tolist() == [[6, 4]]
    np.testing.assert_allclose(r.accuracy_matrix, [[0.6, 0.4]])
    assert r.matched_cluster.tolist() == [1]
    np.testing.assert_allclose([r.accuracy[0], r.recall[0], r.precision[0]], [0.6, 0.6, 1.0])


def test_jitter_within_and_beyond_tolerance():
    # 0.4 ms at 30 kHz = 12 samples, inclusive.
    t = np.array([1000, 2000, 3000, 4000])
    s = np.array([1012, 1988, 3013, 3987])
    r = evaluate(t, np.zeros(4, int), s, np.zeros(4, int), sample_rate=30000.0)
    assert r.tolerance_samples == 12
    assert r.counts.tolist() == [[2]]
    np.testing.assert_allclose(r.accuracy, [2 / (4 + 4 - 2)])
    np.testing.assert_allclose([r.recall[0], r.precision[0]], [0.5, 0.5])
    # With a wider tolerance, all four match.
    r = evaluate(t, np.zeros(4, int), s, np.zeros(4, int), sample_rate=30000.0,
                 tolerance_ms=0.45)
    assert r.counts.tolist() == [[4]] and r.accuracy[0] == 1.0


def test_one_to_one_rule():
    z = np.zeros
    # Two true spikes of a unit within tolerance of one sorted spike: one match.
    assert match_counts([100, 105], z(2, int), [103], z(1, int), 5)[2].tolist() == [[1]]
    # One true spike, two sorted spikes of a cluster within tolerance: one match.
    assert match_counts([100], z(1, int), [98, 102], z(2, int), 5)[2].tolist() == [[1]]
    # Maximum matching, not "nearest first": 10-7 and 12-11 (nearest first gives 10-11 only).
    assert match_counts([10, 12], z(2, int), [11, 7], z(2, int), 3)[2].tolist() == [[2]]
    # Pairs are independent: one sorted spike counts for two synchronous units.
    assert match_counts([100, 100], [0, 1], [100], [0], 0)[2].tolist() == [[1], [1]]
    # And one true spike counts for two clusters that both have a spike near it.
    assert match_counts([100], [0], [99, 101], [4, 9], 1)[2].tolist() == [[1, 1]]


def test_summary_snr_and_false_good_units():
    # Unit 0 (SNR 6) perfect in cluster 10; unit 1 (SNR 4) perfect in 11; unit 2 (SNR 2)
    # half found in 12; cluster 13 is noise labelled good, cluster 11 good too.
    t0, t1, t2 = np.arange(10) * 1000, np.arange(10) * 1000 + 300, np.arange(10) * 1000 + 600
    t = np.r_[t0, t1, t2]
    u = np.repeat([0, 1, 2], 10)
    s = np.r_[t0, t1, t2[:5], np.arange(6) * 1000 + 800]
    c = np.r_[np.full(10, 10), np.full(10, 11), np.full(5, 12), np.full(6, 13)]
    r = evaluate(t, u, s, c, sample_rate=1000.0, tolerance_ms=1.0, unit_snr=[6.0, 4.0, 2.0],
                 cluster_groups={10: "mua", 11: "good", 13: 2, 99: "good"})
    np.testing.assert_allclose(r.accuracy, [1.0, 1.0, 0.5])
    assert r.matched_cluster.tolist() == [10, 11, 12]
    s_ = r.summary
    assert (s_.n_units, s_.n_clusters, s_.n_accurate) == (3, 4, 2)
    assert s_.fraction_accurate == pytest.approx(2 / 3)
    assert (s_.n_units_snr_5, s_.n_accurate_snr_5, s_.fraction_accurate_snr_5) == (1, 1, 1.0)
    assert (s_.n_units_snr_3, s_.n_accurate_snr_3, s_.fraction_accurate_snr_3) == (2, 2, 1.0)
    # 13 matches nothing, 99 has no spike at all; 11 is a real unit.
    assert (s_.n_good, s_.n_false_good, s_.false_good_clusters) == (3, 2, [13, 99])
    np.testing.assert_allclose(r.snr, [6.0, 4.0, 2.0])


def test_empty_inputs_and_bad_inputs():
    r = evaluate([100], [3], [], [], sample_rate=1000.0)
    assert r.matched_cluster.tolist() == [-1] and r.accuracy.tolist() == [0.0]
    assert r.summary.n_clusters == 0
    r = evaluate([], [], [5], [1], sample_rate=1000.0, cluster_groups={1: "good"})
    assert r.summary.n_units == 0 and r.summary.n_false_good == 1
    with pytest.raises(EvaluationError, match="labels"):
        evaluate([1, 2], [0], [1], [0], sample_rate=1000.0)
    with pytest.raises(EvaluationError, match="integer"):
        evaluate([1.5], [0], [1], [0], sample_rate=1000.0)
    with pytest.raises(EvaluationError, match="sample_rate"):
        evaluate([1], [0], [1], [0], sample_rate=0)
    with pytest.raises(EvaluationError, match="unit_snr"):
        evaluate([1], [4], [1], [0], sample_rate=1000.0, unit_snr=[1.0, 2.0])
    with pytest.raises(EvaluationError, match="Cluster 0"):
        evaluate([1], [0], [1], [0], sample_rate=1000.0, cluster_groups={0: "great"})


# --------------------------------------------------------------------------------------------
# match_counts against a brute-force maximum matching
# --------------------------------------------------------------------------------------------


def _brute_counts(t, u, s, c, tol):
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    units, clusters = np.unique(u), np.unique(c)
    counts = np.zeros((len(units), len(clusters)), dtype=np.int64)
    for a, unit in enumerate(units):
        for b, cluster in enumerate(clusters):
            ti, sj = t[u == unit], s[c == cluster]
            adjacency = np.abs(ti[:, None] - sj[None, :]) <= tol  # O(n * m)
            if adjacency.any():
                match = maximum_bipartite_matching(csr_matrix(adjacency.astype(np.int8)),
                                                   perm_type="column")
                counts[a, b] = int((match >= 0).sum())
    return units, clusters, counts


spikes = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 3)), min_size=1, max_size=25)


@settings(deadline=None, max_examples=150)
@given(true=spikes, sorted_=spikes, tol=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_match_counts_is_a_maximum_matching(true, sorted_, tol, seed):
    t, u = (np.array(x) for x in zip(*true))
    s, c = (np.array(x) for x in zip(*sorted_))
    c = c * 10 + 5  # cluster ids are not 0..n-1
    expected = _brute_counts(t, u, s, c, tol)
    got = match_counts(t, u, s, c, tol)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)
    # The order of the inputs does not matter.
    rng = np.random.default_rng(seed)
    p, q = rng.permutation(len(t)), rng.permutation(len(s))
    np.testing.assert_array_equal(match_counts(t[p], u[p], s[q], c[q], tol)[2], expected[2])


# --------------------------------------------------------------------------------------------
# The ``phy evaluate`` command
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from phy_synthetic.recording import synthesize_recording

    return synthesize_recording(tmp_path_factory.mktemp("gt"), name="rec", probe="linear32",
                                duration_s=2, seed=1)


@pytest.fixture
def pm(phy_plugin_manager):
    import phy_commands
    import phy_rawdata

    phy_plugin_manager.register_plugin(phy_commands, "commands")
    phy_plugin_manager.register_plugin(phy_rawdata, "rawdata")
    phy_plugin_manager.register_plugin(phy_evaluate, "evaluate")
    return phy_plugin_manager


def _run(pm, *argv):
    args = build_parser(pm.collect("phy_commands")).parse_args(["evaluate", *map(str, argv)])
    return args._command.run(args, Services(plugin_manager=pm))


def test_command_perfect_sorting(pm, recording, tmp_path, capsys):
    out = tmp_path / "eval.json"
    # The raw recording's spikes are its ground truth: a perfect "sorting".
    assert _run(pm, recording.prm_path, recording.prm_path, "--json", out) == 0
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    gt = np.load(recording.groundtruth_path)
    units = np.unique(gt["spike_clusters"])
    assert [d["unit"] for d in doc["units"]] == units.tolist()
    assert all(d["accuracy"] == 1.0 and d["matched_cluster"] == d["unit"] for d in doc["units"])
    assert [d["n_spikes"] for d in doc["units"]] == np.bincount(gt["spike_clusters"])[
        units].tolist()
    np.testing.assert_allclose([d["snr"] for d in doc["units"]], gt["unit_snr"][units])
    summary = doc["summary"]
    n5 = int((gt["unit_snr"][units] >= 5).sum())
    assert summary["n_units_snr_5"] == summary["n_accurate_snr_5"] == n5
    assert summary["fraction_accurate"] == 1.0 and summary["n_false_good"] == 0
    # The table is sorted by SNR, strongest first, then the summary lines.
    rows = [line.split() for line in text.splitlines()[1:len(units) + 1]]
    snrs = [float(r[1]) for r in rows]
    assert snrs == sorted(snrs, reverse=True) and len(rows) == len(units)
    assert f"Units with SNR >= 5 at accuracy >= 0.8: {n5} / {n5} (100%)." in text
    assert "(12 samples)" in text


def test_command_corrupted_sorting(pm, recording, tmp_path, capsys):
    src = recording.prm_path.parent
    for suffix in (".dat", ".prb", ".prm"):
        shutil.copy(src / f"rec{suffix}", tmp_path / f"rec{suffix}")
    with np.load(recording.groundtruth_path) as npz:
        gt = {k: npz[k] for k in npz.files}
    samples, clusters = gt["spike_samples"].copy(), gt["spike_clusters"]
    unit = int(np.bincount(clusters).argmax())
    idx = np.flatnonzero(clusters == unit)[::2]  # every other spike: half of them
    samples[idx] += 30  # 1 ms at 30 kHz, beyond the 0.4 ms tolerance
    assert samples[-1] < recording.n_samples
    order = np.argsort(samples, kind="stable")
    gt.update(spike_samples=samples[order], spike_clusters=clusters[order])
    np.savez(tmp_path / "rec.groundtruth.npz", **gt)

    out = tmp_path / "eval.json"
    assert _run(pm, tmp_path / "rec.prm", recording.groundtruth_path, "--json", out) == 0
    doc = {d["unit"]: d for d in json.loads(out.read_text())["units"]}
    n, h = int((clusters == unit).sum()), len(idx)
    # matches n - h, misses h, false positives h (the shifted spikes).
    assert doc[unit]["accuracy"] == pytest.approx((n - h) / (n + h))
    assert doc[unit]["recall"] == pytest.approx((n - h) / n)
    assert doc[unit]["precision"] == pytest.approx((n - h) / n)
    assert all(d["accuracy"] == 1.0 for u, d in doc.items() if u != unit)
    # A 1.5 ms tolerance finds them all again.
    assert _run(pm, tmp_path / "rec.prm", recording.groundtruth_path,
                "--tolerance-ms", "1.5") == 0
    assert "Units at accuracy >= 0.8: " in capsys.readouterr().out


class _FakeReader:
    """A reader plugin that serves a sorting with cluster groups, for any ``*.fake`` path."""

    def __init__(self, model):
        self.model = model

    @hookimpl
    def phy_open_model(self, path, options):
        return self.model if str(path).endswith(".fake") else None


def test_command_false_good_units(pm, recording, capsys):
    gt = load_ground_truth(recording.groundtruth_path)
    samples = np.r_[gt.spike_samples, [100, 200, 300]]
    clusters = np.r_[gt.spike_clusters + 100, [7, 7, 7]]
    model = Bunch(sample_rate=gt.sample_rate, spike_samples=samples, spike_clusters=clusters,
                  cluster_groups={7: 2, 101: 2, 102: 1}, close=lambda: None)
    pm.register(_FakeReader(model), "fake")
    assert _run(pm, "sorting.fake", recording.prm_path) == 0
    text = capsys.readouterr().out
    assert "False units among the good clusters (no true unit at accuracy >= 0.5): 1 of 2 (7)." \
        in text
    model.sample_rate = 20000.0
    with pytest.raises(EvaluationError, match="20000 Hz"):
        _run(pm, "sorting.fake", recording.prm_path)


def test_ground_truth_errors(pm, recording, tmp_path):
    with pytest.raises(GroundTruthError, match="no such file"):
        load_ground_truth(tmp_path / "missing.groundtruth.npz")
    prm = tmp_path / "other.prm"
    prm.write_text("experiment_name = 'other'\n")
    with pytest.raises(GroundTruthError, match="other.groundtruth.npz"):
        load_ground_truth(prm)
    bad = tmp_path / "bad.npz"
    np.savez(bad, spike_samples=np.arange(3), spike_clusters=np.zeros(3, int))
    with pytest.raises(GroundTruthError, match="missing array.*unit_snr"):
        load_ground_truth(bad)
    np.savez(bad, spike_samples=np.arange(3), spike_clusters=np.array([0, 1, 5]),
             unit_snr=np.ones(2), sample_rate=30000.0)
    with pytest.raises(GroundTruthError, match=r"span 0 \.\. 5.*2 values"):
        load_ground_truth(bad)
    np.savez(bad, spike_samples=np.arange(3.0), spike_clusters=np.zeros(3, int),
             unit_snr=np.ones(2), sample_rate=30000.0)
    with pytest.raises(GroundTruthError, match="spike_samples must be a 1-D integer"):
        load_ground_truth(bad)
    np.savez(bad, spike_samples=np.arange(3), spike_clusters=np.zeros(3, int),
             unit_snr=np.ones(2), sample_rate=np.array([1.0, 2.0]))
    with pytest.raises(GroundTruthError, match="sample_rate must be a positive"):
        load_ground_truth(bad)
    np.savez(bad, spike_samples=np.arange(3), spike_clusters=np.zeros(3, int),
             unit_snr=np.ones(2), sample_rate=30000.0, extra=np.array([{}], dtype=object))
    assert len(load_ground_truth(bad).spike_samples) == 3  # pickled extras are never loaded
    np.savez(bad, spike_samples=np.array([{}], dtype=object), spike_clusters=np.zeros(1, int),
             unit_snr=np.ones(1), sample_rate=30000.0)
    with pytest.raises(GroundTruthError, match="cannot be read"):
        load_ground_truth(bad)
    with pytest.raises(PhyError, match="bad.npz"):  # through the command, too
        _run(pm, recording.prm_path, bad)


@settings(deadline=None, max_examples=40)
@given(data=st.binary(max_size=400), keep_header=st.booleans())
def test_malformed_ground_truth_gives_a_clean_error(tmp_path_factory, recording, data,
                                                    keep_header):
    path = tmp_path_factory.mktemp("bad") / "x.groundtruth.npz"
    raw = recording.groundtruth_path.read_bytes()
    # Either random bytes, or a truncated/overwritten real archive.
    path.write_bytes(raw[:len(data) * 40] + data if keep_header else data)
    try:
        load_ground_truth(path)
    except GroundTruthError as exc:
        assert str(path) in str(exc)
