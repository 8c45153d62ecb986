"""The local common reference stage: its kernel against an independent computation of the
same definition, and the runner with it (thresholds, chunk-size independence, errors)."""

import re

import numpy as np
import pytest

from phy_detect.reference import (
    LANES,
    MIN_RUN_SITES,
    LocalReference,
    LocalReferenceError,
    cell_layout,
    channel_runs,
)
from phy_probes.geometry import grid_positions, neuropixels1_positions


def _referenced(x, positions, inner, outer, cell):
    """The module's definition, computed directly: each site minus the float64 mean of
    the sites whose cell is at a Chebyshev distance (in cells) in [k_in, k_out] of its
    own; a site with no such site is unchanged."""
    positions = np.asarray(positions, dtype=np.float64)
    ix = np.floor((positions[:, 0] - positions[:, 0].min()) / cell)
    iy = np.floor((positions[:, 1] - positions[:, 1].min()) / cell)
    k_in = max(1, int(np.floor(inner / cell + 0.5)))
    k_out = max(k_in, int(np.floor(outer / cell + 0.5)))
    distance = np.maximum(np.abs(ix[:, None] - ix[None, :]), np.abs(iy[:, None] - iy[None, :]))
    ring = ((distance >= k_in) & (distance <= k_out)).astype(np.float64)
    n = ring.sum(axis=1)
    weights = ring / np.maximum(n, 1)[:, None]
    return x - x.astype(np.float64) @ weights.T, n


def _irregular_positions(rng, n=60):
    """Sites scattered over a region with holes (empty cells) and a far isolated site
    (an empty ring)."""
    xy = rng.uniform(0, 300, size=(n, 2))
    xy = xy[~((xy[:, 0] > 100) & (xy[:, 0] < 200) & (xy[:, 1] > 100) & (xy[:, 1] < 200))]
    return np.vstack([xy, [[1500.0, 1500.0]]])


def _two_columns(n=40):
    """Channels alternating between two columns 40 um apart, 40 um down each."""
    c = np.arange(n)
    return np.stack([40.0 * (c % 2), 40.0 * (c // 2)], axis=1)


def _tetrodes(n=40):
    """Groups of 4 channels in a 10 um square, a group every 40 um."""
    c = np.arange(n)
    return np.stack([10.0 * (c % 2), 10.0 * (c // 2 % 2) + 40.0 * (c // 4)], axis=1)


def _upward_column(n=24):
    """One column, 40 um apart, the first channel at the top."""
    return np.stack([np.zeros(n), 40.0 * np.arange(n)[::-1]], axis=1)


def _mixed(rng):
    """Runs of several kinds (a grid, a Neuropixels piece, a column) and scattered sites."""
    return np.vstack([grid_positions(4, 8, 20.0), neuropixels1_positions(48) + [400.0, 0.0],
                      _upward_column(12) + [800.0, 0.0], rng.uniform(0, 900, size=(9, 2))])


LAYOUTS = {"irregular": _irregular_positions,
           "neuropixels": lambda rng: neuropixels1_positions(96),
           "grid": lambda rng: grid_positions(8, 8, 20.0),
           "two columns": lambda rng: _two_columns(),
           "tetrodes": lambda rng: _tetrodes(),
           "upward column": lambda rng: _upward_column(),
           "mixed": _mixed,
           "one site": lambda rng: np.array([[5.0, 7.0]])}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("cell", [20.0, 40.0, 70.0])
def test_kernel_equals_the_definition(layout, cell):
    rng = np.random.default_rng(1)
    positions = LAYOUTS[layout](rng)
    # Not a multiple of the kernel's block of samples; a common background on top.
    x = (rng.standard_normal((2 * LANES + 5, len(positions)))
         + 3 * rng.standard_normal((2 * LANES + 5, 1))).astype(np.float32)
    expected, n = _referenced(x, positions, 60.0, 200.0, cell)
    got = LocalReference(positions, 60.0, 200.0, cell)(x.copy())
    # The float32 summed-area table's rounding grows with the sums it holds (the whole
    # probe's): ~150 sites with a common background in "mixed".
    np.testing.assert_allclose(got, expected, atol=1e-4 if layout == "mixed" else 2e-5, rtol=0)
    empty = n == 0  # an empty ring leaves the site as it is, bit for bit
    np.testing.assert_array_equal(got[:, empty], x[:, empty])
    if layout == "irregular":
        assert empty[-1] and not empty[:-1].all()


def _stride_kinds(reference):
    """The kernel's paths for this geometry: (stride, whether the members share a cell)
    of its runs, and its number of sites in no run."""
    runs = reference.plan["runs"]
    kinds = {(int(run[1]), bool((run[3:3 + run[1]] == run[3]).all())) for run in runs}
    return kinds, len(reference.plan["single_channels"])


@pytest.mark.parametrize("layout, kinds, singles", [
    ("grid", {(2, True)}, 0),            # a cell: 2 x 2 sites, pairs of channels
    ("neuropixels", {(4, False)}, 0),    # groups of 4 channels over 2 columns of cells
    ("two columns", {(2, False)}, 0),
    ("tetrodes", {(4, True)}, 0),
    ("upward column", {(1, True)}, 0),   # numbered down the grid (a flipped orientation)
    ("irregular", set(), None),
])
def test_the_kernel_paths_each_geometry_takes(layout, kinds, singles):
    """At 40 um cells, which kinds of runs each test geometry exercises (and so which
    loops `test_kernel_equals_the_definition` checks)."""
    reference = LocalReference(LAYOUTS[layout](np.random.default_rng(1)), 60.0, 200.0, 40.0)
    got_kinds, got_singles = _stride_kinds(reference)
    assert got_kinds == kinds
    if singles is None:  # all of them
        singles = reference.n_channels
    assert got_singles == singles


def test_a_mixed_geometry_has_runs_and_single_sites():
    mixed = LocalReference(_mixed(np.random.default_rng(1)), 60.0, 200.0, 40.0)
    kinds, singles = _stride_kinds(mixed)
    assert kinds and 0 < singles < mixed.n_channels


def test_channel_runs_cover_each_channel_once_with_the_cells_following():
    rng = np.random.default_rng(4)
    pairs = np.repeat(np.arange(10), 2)                 # 0 0 1 1 2 2 ...
    zigzag = (np.arange(6)[:, None] + [0, 0, 9, 0]).ravel()  # as on a Neuropixels 1.0
    cases = {"pairs": pairs, "steps": np.arange(12) + 5, "zigzag": zigzag,
             "shuffled": rng.permutation(30), "short": np.arange(MIN_RUN_SITES - 1),
             "joined": np.concatenate([np.arange(10), rng.permutation(5) + 40, pairs + 60])}
    for name, cell in cases.items():
        runs, singles = channel_runs(cell)
        covered = np.zeros(len(cell), int)
        covered[singles] += 1
        for c0, stride, length, *bases in runs:
            assert stride * length >= MIN_RUN_SITES
            channels = c0 + np.arange(stride * length).reshape(length, stride)
            covered[channels] += 1
            np.testing.assert_array_equal(cell[channels],
                                          np.array(bases[:stride]) + np.arange(length)[:, None])
        np.testing.assert_array_equal(covered, 1, err_msg=name)
    assert channel_runs(pairs)[0].tolist() == [[0, 2, 10, 0, 0, -1, -1]]
    assert len(channel_runs(cases["shuffled"])[0]) == 0
    assert len(channel_runs(cases["short"])[0]) == 0
    assert channel_runs(zigzag)[0][:, :3].tolist() == [[0, 4, 6]]


def test_each_sample_is_referenced_on_its_own():
    rng = np.random.default_rng(2)
    positions = neuropixels1_positions(64)
    x = rng.standard_normal((3 * LANES + 3, 64)).astype(np.float32)
    reference = LocalReference(positions)
    whole = reference(x.copy())
    for cut in (1, LANES - 1, LANES + 7):  # any chunking: the same bits
        parts = np.vstack([reference(x[:cut].copy()), reference(x[cut:].copy())])
        np.testing.assert_array_equal(parts, whole)


def test_layout_counts_and_bad_parameters():
    positions = grid_positions(4, 4, 20.0)  # 80 x 80 um
    layout = cell_layout(positions, 30.0, 45.0, 20.0)  # rings of 2 cells (40 um) only
    assert (layout["nx"], layout["ny"], layout["k_in"], layout["k_out"]) == (4, 4, 2, 2)
    # A corner's ring: the sites 2 cells away (5 of them); a centre's: the 7 on the edge.
    counts = layout["ring_count"].reshape(4, 4)
    assert counts[0, 0] == 5 and counts[1, 1] == 7
    for inner, outer, cell in [(60.0, 60.0, 40.0), (60.0, 200.0, 0.0), (-1.0, 200.0, 40.0)]:
        with pytest.raises(LocalReferenceError):
            cell_layout(positions, inner, outer, cell)
    with pytest.raises(LocalReferenceError, match="channels"):
        LocalReference(positions)(np.zeros((4, 15), np.float32))
    with pytest.raises(LocalReferenceError, match="float32"):
        LocalReference(positions)(np.zeros((4, 16), np.float64))


# -- The runner ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from phy_synthetic.recording import synthesize_recording

    folder = tmp_path_factory.mktemp("rec")
    synthesize_recording(folder, name="rec", probe="linear32", duration_s=3.0, seed=5)
    return folder


def _prm(recording, folder, spikedetekt: str):
    folder.mkdir(parents=True, exist_ok=True)
    text = (recording / "rec.prm").read_text().replace("'rec.", f"'{recording}/rec.")
    # The given keys replace those `phy synth` wrote (a dict's last duplicate key wins).
    for key in re.findall(r"(\w+)=", spikedetekt):
        text = re.sub(rf"\n\s*{key}=[^\n]*,", "", text)
    path = folder / "rec.prm"
    path.write_text(text.replace("spikedetekt = dict(", f"spikedetekt = dict({spikedetekt}", 1))
    return path


def _detect(prm, **kwargs):
    from phy_detect.executors import SerialExecutor
    from phy_detect.runner import detect
    from phy_kwik.model import KwikModel

    return KwikModel(detect(prm, output_dir=prm.parent, executor=SerialExecutor(), **kwargs))


def test_runner_thresholds_use_the_referenced_data(recording):
    """The thresholds the workers compute equal the MAD of the excerpts filtered and
    referenced here (numpy), and are lower than without the reference."""
    from phy_detect import runner, worker
    from phy_detect.executors import SerialExecutor
    from phy_detect.filtering import Filter
    from phy_rawdata.model import open_traces
    from phy_rawdata.prm import read_prm

    prm = read_prm(recording / "rec.prm")
    sd = dict(prm.spikedetekt, n_excerpts=5, excerpt_size_seconds=0.1)
    gt = np.load(recording / "rec.groundtruth.npz")
    positions = gt["channel_positions_um"]
    filter_ = Filter(rate=30000.0, low=500.0, high=0.95 * 0.5 * 30000.0, order=3)
    channels = np.arange(32)
    thresholds = {}
    for reference in (None, LocalReference(positions)):
        setup = worker.GroupSetup(str(recording / "rec.prm"), channels, filter_, None, None,
                                  None, None, reference=reference)
        thresholds[reference is None] = runner.compute_thresholds(
            SerialExecutor(), setup, int(open_traces(prm).shape[0]), sd, 30000.0)
    traces = open_traces(prm)
    ranges = runner._threshold_excerpts(traces.shape[0], 5, 3000, 32, filter_)
    values = []
    for a, b in ranges:
        filtered = filter_.filter_chunk(traces, a, b).astype(np.float64)
        values.append(_referenced(filtered, positions, 60.0, 200.0, 40.0)[0])
    std = np.median(np.abs(np.concatenate(values))) / 0.6745
    np.testing.assert_allclose(thresholds[False], [2.0 * std, 4.5 * std], rtol=1e-5)
    assert np.all(thresholds[False] < 0.9 * thresholds[True])


def test_runner_with_the_reference_does_not_depend_on_chunk_size(recording, tmp_path):
    a = _detect(_prm(recording, tmp_path / "a", "stages=dict(reference='local'), "),
                chunk_size_s=1.0)
    b = _detect(_prm(recording, tmp_path / "b", "stages=dict(reference='local'), "),
                chunk_size_s=0.37)
    np.testing.assert_array_equal(a.spike_samples, b.spike_samples)
    np.testing.assert_array_equal(np.asarray(a.features[:]), np.asarray(b.features[:]))
    # The default ('auto') is the local reference on a probe with a geometry; and the
    # reference changes the detection (other thresholds, other spikes).
    default = _detect(_prm(recording, tmp_path / "d", ""), chunk_size_s=1.0)
    np.testing.assert_array_equal(default.spike_samples, a.spike_samples)
    none = _detect(_prm(recording, tmp_path / "n", "stages=dict(reference='none'), "),
                   chunk_size_s=1.0)
    assert not np.array_equal(none.spike_samples, a.spike_samples)


def test_runner_reference_parameters_and_errors(recording, tmp_path):
    from phy_detect.runner import DetectionError

    # A ring so far out that every site's is empty: the reference changes nothing.
    far = _detect(_prm(recording, tmp_path / "far", "stages=dict(reference='local'), "
                       "reference_inner_um=1000., reference_outer_um=2000., "),
                  chunk_size_s=1.0)
    none = _detect(_prm(recording, tmp_path / "none", "stages=dict(reference='none'), "),
                   chunk_size_s=1.0)
    np.testing.assert_array_equal(far.spike_samples, none.spike_samples)
    with pytest.raises(DetectionError, match="outer_um"):
        _detect(_prm(recording, tmp_path / "bad", "stages=dict(reference='local'), "
                     "reference_inner_um=200., reference_outer_um=100., "))
    # A probe without geometry: a clear error before any work.
    prb = tmp_path / "nogeo.prb"
    prb.write_text(f"channel_groups = {{0: {{'channels': {list(range(32))}, "
                   f"'graph': {[(i, i + 1) for i in range(31)]}}}}}\n")
    prm = _prm(recording, tmp_path / "nogeo", "stages=dict(reference='local'), ")
    prm.write_text(prm.read_text().replace(f"'{recording}/rec.prb'", f"'{prb}'"))
    with pytest.raises(DetectionError, match="geometry"):
        _detect(prm)
    assert not list((tmp_path / "nogeo").glob("*.kwik"))
    # The default ('auto') detects without a reference there, as 'none' does.
    prm.write_text(prm.read_text().replace("stages=dict(reference='local'), ", ""))
    np.testing.assert_array_equal(_detect(prm, chunk_size_s=1.0).spike_samples,
                                  none.spike_samples)


def test_auto_reference_is_local_only_where_a_ring_holds_sites():
    from phy_detect.reference import STAGES

    auto = next(stage for stage in STAGES if stage.name == "auto").factory
    assert auto(channel_positions=None) is None
    # A tetrode: every site within the ring's inner edge of every other.
    tetrode = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    assert auto(channel_positions=tetrode) is None
    column = np.stack([np.zeros(32), 25.0 * np.arange(32)], axis=1)
    reference = auto(channel_positions=column)
    assert isinstance(reference, LocalReference)
    data = np.random.default_rng(0).standard_normal((50, 32)).astype(np.float32)
    expected = _referenced(data.astype(np.float64), column, 60.0, 200.0, 40.0)[0]
    np.testing.assert_allclose(reference(data.copy()), expected, atol=1e-5)
