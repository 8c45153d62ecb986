"""Flood-fill detector against a brute-force connected-components reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from phy_detect.floodfill import (
    STAGES,
    DetectionError,
    FloodFillDetector,
    adjacency_csr,
    crossing_bitmap,
    pack_crossings,
)


def _reference(weak, strong, adjacency, join_size):
    """Components as frozensets of (sample, channel), from an explicit graph."""
    n_c = weak.shape[1]
    adj = np.eye(n_c, dtype=bool)
    for c, nbrs in adjacency.items():
        for d in nbrs:
            adj[c, d] = adj[d, c] = True
    pts = np.argwhere(weak)
    n = len(pts)
    if n == 0:
        return set()
    s, c = pts[:, 0], pts[:, 1]
    close = (np.abs(s[:, None] - s[None, :]) <= join_size) & adj[c[:, None], c[None, :]]
    i, j = np.nonzero(close)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    n_comp, labels = connected_components(graph, directed=False)
    out = set()
    for k in range(n_comp):
        members = pts[labels == k]
        if strong[members[:, 0], members[:, 1]].any():
            out.add(frozenset(map(tuple, members.tolist())))
    return out


@st.composite
def _problems(draw):
    n_s = draw(st.integers(1, 25))
    n_c = draw(st.integers(1, 8))
    density = draw(st.floats(0.0, 0.6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    weak = rng.random((n_s, n_c)) < density
    strong = weak & (rng.random((n_s, n_c)) < draw(st.floats(0.0, 0.5)))
    # Some strong crossings outside the weak ones must be ignored.
    strong |= rng.random((n_s, n_c)) < 0.05
    adjacency = {}
    for c in range(n_c):
        if rng.random() < 0.8:  # some channels absent from the dict
            adjacency[c] = [int(d) for d in np.flatnonzero(rng.random(n_c) < 0.3)]
    join_size = draw(st.integers(0, 4))
    return weak, strong, adjacency, join_size


@settings(max_examples=150, deadline=None)
@given(_problems())
def test_floodfill_matches_reference(problem):
    weak, strong, adjacency, join_size = problem
    comps = FloodFillDetector(adjacency, join_size)(weak, strong)
    got = [frozenset(map(tuple, c.tolist())) for c in comps]
    assert len(got) == len(set(got))
    assert set(got) == _reference(weak, strong & weak, adjacency, join_size)
    # Sorted by first sample; rows of each component sorted by (sample, channel).
    firsts = [c[0, 0] for c in comps]
    assert firsts == sorted(firsts)
    for c in comps:
        assert c.dtype == np.int64 and c.shape[1] == 2
        assert np.all(np.diff(c[:, 0] * 1000 + c[:, 1]) > 0)


@settings(max_examples=40, deadline=None)
@given(n_s=st.integers(1, 90), n_c=st.integers(1, 5), density=st.floats(0.05, 0.7),
       join_size=st.integers(0, 4), seed=st.integers(0, 2**31 - 1))
def test_floodfill_long_runs_match_reference(n_s, n_c, density, join_size, seed):
    # Runs of crossings that cross the 8-sample bytes of the bitmaps, and neighbours
    # whose crossings lie several bytes apart.
    rng = np.random.default_rng(seed)
    weak = rng.random((n_s, n_c)) < density
    weak |= np.repeat(rng.random((n_s // 6 + 1, n_c)) < density, 6, axis=0)[:n_s]
    strong = weak & (rng.random((n_s, n_c)) < 0.1)
    adjacency = {c: [c + 1] for c in range(n_c - 1)}
    comps = FloodFillDetector(adjacency, join_size)(weak, strong)
    got = [frozenset(map(tuple, c.tolist())) for c in comps]
    assert set(got) == _reference(weak, strong, adjacency, join_size)
    assert len(got) == len(set(got))
    firsts = [tuple(c[0]) for c in comps]
    assert firsts == sorted(firsts)


def test_pack_crossings_layout_and_detect_bits():
    rng = np.random.default_rng(3)
    weak = rng.random((21, 3)) < 0.4
    strong = weak & (rng.random(weak.shape) < 0.3)
    bits = crossing_bitmap(21, 3)
    bits[:] = 255  # garbage: packing assigns every byte
    pack_crossings(weak, bits)
    for t in range(21):
        for c in range(3):
            assert bool(bits[t // 8, c] >> (t % 8) & 1) == weak[t, c]
    assert not np.any(bits[2] >> 5)  # samples 21..23 do not exist
    det = FloodFillDetector({0: [1], 1: [2]}, 1)
    strong_bits = crossing_bitmap(21, 3)
    pack_crossings(strong, strong_bits)
    points, offsets = det.detect_bits(bits, strong_bits, 21)
    expected = det.detect_flat(weak, strong)
    np.testing.assert_array_equal(points, expected[0])
    np.testing.assert_array_equal(offsets, expected[1])
    with pytest.raises(DetectionError, match="bitmaps"):
        det.detect_bits(np.zeros((3, 3), np.uint64), strong_bits, 21)
    with pytest.raises(DetectionError, match="bitmaps"):
        det.detect_bits(crossing_bitmap(20, 3)[:2], strong_bits, 9)


def test_floodfill_hand_made():
    weak = np.zeros((10, 4), dtype=bool)
    strong = np.zeros_like(weak)
    weak[1, 0] = weak[2, 1] = True  # adjacent channels, consecutive samples
    strong[2, 1] = True
    weak[1, 3] = True  # channel 3 not adjacent to 1: separate
    strong[1, 3] = True
    weak[5, 0] = weak[7, 0] = True  # gap of 2 > join_size 1, no strong: dropped
    adjacency = {0: [1], 1: [2], 2: [], 3: []}
    comps = FloodFillDetector(adjacency, join_size=1)(weak, strong)
    assert [c.tolist() for c in comps] == [[[1, 0], [2, 1]], [[1, 3]]]
    # With a larger join size, the weak-only pair joins but still has no strong point.
    strong[7, 0] = True
    comps = FloodFillDetector(adjacency, join_size=2)(weak, strong)
    assert [c.tolist() for c in comps] == [[[1, 0], [2, 1]], [[1, 3]], [[5, 0], [7, 0]]]


def test_floodfill_flat_and_empty():
    det = FloodFillDetector({0: [1]}, 1)
    weak = np.zeros((5, 2), dtype=bool)
    assert det(weak, weak) == []
    points, offsets = det.detect_flat(weak, weak)
    assert points.shape == (0, 2) and offsets.tolist() == [0]
    weak[2, 0] = weak[3, 1] = True
    points, offsets = det.detect_flat(weak, weak)
    assert points.tolist() == [[2, 0], [3, 1]] and offsets.tolist() == [0, 2]


def test_floodfill_errors():
    with pytest.raises(DetectionError, match="out of range"):
        FloodFillDetector({0: [5]}, 1)(np.zeros((3, 2), bool), np.zeros((3, 2), bool))
    with pytest.raises(DetectionError, match="differ in shape"):
        FloodFillDetector({}, 1)(np.zeros((3, 2), bool), np.zeros((3, 3), bool))
    with pytest.raises(DetectionError, match="join_size"):
        FloodFillDetector({}, -1)


def test_adjacency_csr_symmetric():
    indptr, indices = adjacency_csr({0: [1, 0], 2: [1]}, 4)
    nbrs = [indices[indptr[c] : indptr[c + 1]].tolist() for c in range(4)]
    assert nbrs == [[1], [0, 2], [1], []]


def test_floodfill_stage():
    (stage,) = STAGES
    assert (stage.name, stage.kind) == ("floodfill", "detector")
    det = stage.factory(**{**stage.parameters, "probe_adjacency_list": {0: [1]}})
    assert isinstance(det, FloodFillDetector) and det.join_size == 1


_junk = st.one_of(
    st.integers(-3, 6), st.text(max_size=2), st.floats(allow_nan=True), st.none(), st.booleans()
)


@settings(max_examples=100, deadline=None)
@given(
    adjacency=st.one_of(
        st.dictionaries(_junk, st.one_of(st.lists(_junk, max_size=3), _junk), max_size=4),
        st.lists(st.integers(), max_size=2),
    ),
    n_c=st.integers(1, 5),
)
def test_floodfill_bad_adjacency_clean_error(adjacency, n_c):
    weak = np.ones((4, n_c), dtype=bool)
    try:
        comps = FloodFillDetector(adjacency, 1)(weak, weak)
    except DetectionError:
        return
    # Accepted: every crossing is in exactly one component.
    assert sum(len(c) for c in comps) == weak.sum()


# -- splitting components at their peaks ---------------------------------------------


def _neighbourhood(points, adjacency, n_c, join_size):
    """Boolean (k, k) matrix: which points of a component are flood-fill neighbours."""
    adj = np.eye(n_c, dtype=bool)
    for c, nbrs in adjacency.items():
        for d in nbrs:
            adj[c, d] = adj[d, c] = True
    s, c = points[:, 0], points[:, 1]
    close = (np.abs(s[:, None] - s[None, :]) <= join_size) & adj[c[:, None], c[None, :]]
    np.fill_diagonal(close, False)
    return close


def _key_col(values, close, b):
    """Highest level at which point b connects to a higher point (-inf: it is the top).

    Brute force: lower a level through the values; b's connected component in
    the points above the level first reaches a higher point at the key col.
    """
    for level in np.sort(values[values <= values[b]])[::-1]:
        above = values >= level
        graph = coo_matrix(close & above[:, None] & above[None, :])
        _, labels = connected_components(graph, directed=False)
        if np.any((labels == labels[b]) & (values > values[b])):
            return level
    return -np.inf


@st.composite
def _split_problems(draw):
    n_s = draw(st.integers(3, 14))
    n_c = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # Smooth-ish bumps plus noise: several peaks, some prominent, some not.
    data_t = rng.normal(0, 1, (n_s, n_c))
    for _ in range(draw(st.integers(0, 3))):
        t0, c0 = rng.uniform(0, n_s), rng.uniform(0, n_c)
        t, c = np.meshgrid(np.arange(n_s), np.arange(n_c), indexing="ij")
        data_t += rng.uniform(2, 8) * np.exp(-((t - t0) / 2) ** 2 - ((c - c0) / 1.5) ** 2)
    weak = rng.uniform(-0.5, 0.5, n_c)
    strong = weak + rng.uniform(0.5, 2.5, n_c)
    adjacency = {c: [int(d) for d in np.flatnonzero(rng.random(n_c) < 0.5)] for c in range(n_c)}
    join_size = draw(st.integers(0, 2))
    prominence = draw(st.sampled_from([0.0, 0.3, 1.0, 2.0, np.inf]))
    tall_peak = draw(st.sampled_from([None, 1.0, 1.3, 2.0, 4.0]))
    tall_prominence = draw(st.sampled_from([0.0, 0.1, 0.3, 1.0]))
    return data_t, weak, strong, adjacency, join_size, prominence, tall_peak, tall_prominence


@settings(max_examples=150, deadline=None)
@given(_split_problems())
def test_split_matches_prominence_reference(problem):
    """Each part of a split component has one peak: the component's top, or a strong local
    maximum rising at least `prominence` above its key col (a tall one, at least
    `tall_peak` high: `tall_prominence`); the parts partition the component, are
    connected, and every other point is in the part of its highest neighbour (steepest
    ascent)."""
    data_t, weak, strong, adjacency, join_size, prominence, tall_peak, tall_prominence = \
        problem
    n_c = data_t.shape[1]
    thresholds = {"weak": weak, "strong": strong}
    weak_x, strong_x = data_t > weak, data_t > strong
    classic = FloodFillDetector(adjacency, join_size, split_prominence=None)(weak_x, strong_x)
    split = FloodFillDetector(adjacency, join_size, thresholds=thresholds,
                              split_prominence=prominence, split_tall_peak=tall_peak,
                              split_tall_prominence=tall_prominence, split_tall_apart=False,
                              split_far_peak=None, split_lead=None)(weak_x, strong_x, data_t)
    part_of = {tuple(p): i for i, part in enumerate(split) for p in part.tolist()}
    assert len(part_of) == sum(len(c) for c in classic)  # a partition of the same points
    firsts = [tuple(part[0]) for part in split]  # parts in scan order of their first point
    assert firsts == sorted(firsts)
    for part in split:  # scan order inside a part
        assert np.all(np.diff(part[:, 0] * 1000 + part[:, 1]) > 0)
    for comp in classic:
        values = (data_t[comp[:, 0], comp[:, 1]] - weak[comp[:, 1]]) / \
            (strong[comp[:, 1]] - weak[comp[:, 1]])
        close = _neighbourhood(comp, adjacency, n_c, join_size)
        labels = np.array([part_of[tuple(p)] for p in comp.tolist()])
        top = int(np.argmax(values))
        expected_peaks = {top}
        for b in range(len(comp)):
            is_max = not np.any(values[close[b]] > values[b])
            rise = values[b] - _key_col(values, close, b) if is_max else -np.inf
            tall = tall_peak is not None and values[b] >= tall_peak
            if b != top and is_max and values[b] > 1 and (
                    rise >= prominence or (tall and rise >= tall_prominence)):
                expected_peaks.add(b)
        parts = np.unique(labels)
        assert len(parts) == len(expected_peaks)
        for part in parts:
            members = np.flatnonzero(labels == part)
            assert int(members[np.argmax(values[members])]) in expected_peaks
            sub = close[np.ix_(members, members)]
            assert connected_components(coo_matrix(sub), directed=False)[0] == 1
        for p in range(len(comp)):
            higher = np.flatnonzero(close[p] & (values > values[p]))
            if len(higher):
                assert labels[p] == labels[higher[np.argmax(values[higher])]]


def _two_spikes(dt=3, n_c=12, amp=(12.0, 8.0), bump=0.0):
    """Two Gaussian spikes (time and space) on a line of channels, on channels 2 and 8:
    their weak crossings touch, so the flood fill makes one component of them. `bump`: the
    amplitude of a third one, 7 samples after the second, on its channel."""
    n_s = 80
    t, c = np.meshgrid(np.arange(n_s), np.arange(n_c), indexing="ij")
    data_t = np.zeros((n_s, n_c))
    for (t0, c0), a in zip([(30.0, 2.0), (30.0 + dt, 8.0), (37.0 + dt, 8.0)],
                           (*amp, bump), strict=True):
        data_t += a * np.exp(-0.5 * ((t - t0) / 2.0) ** 2 - 0.5 * ((c - c0) / 2.0) ** 2)
    adjacency = {i: [i + 1] for i in range(n_c - 1)}
    return data_t.astype(np.float32), adjacency


def test_split_separates_overlapping_spikes():
    data_t, adjacency = _two_spikes()
    thresholds = {"weak": 1.0, "strong": 4.0}
    weak, strong = data_t > 1.0, data_t > 4.0
    classic = FloodFillDetector(adjacency, 1, split_prominence=None)(weak, strong)
    assert len(classic) == 1
    det = FloodFillDetector(adjacency, 1, thresholds=thresholds, split_prominence=1.0)
    parts = det(weak, strong, data_t)
    assert len(parts) == 2
    # Each part is around its own peak: the first spike's channels and time, then the second.
    assert abs(np.median(parts[0][:, 1]) - 2) <= 1 and abs(np.median(parts[1][:, 1]) - 8) <= 1
    from phy_detect.waveform import WaveformExtractor

    ext = WaveformExtractor(10, 10, thresholds=thresholds)
    times = ext.extract_all(det.detect_flat(weak, strong, data_t), -data_t, data_t).spike_samples
    np.testing.assert_allclose(np.sort(times), [30.0, 33.0], atol=0.3)
    # A shallow dip between the peaks (a prominence above it) keeps one spike.
    assert len(FloodFillDetector(adjacency, 1, thresholds=thresholds, split_prominence=50.0,
                                 split_tall_peak=None, split_far_peak=None)(
        weak, strong, data_t)) == 1
    # A peak under the strong threshold is never a spike of its own, however deep the dip
    # that separates it (here (3.5 - 1) / 3 = 0.84 above weak, 0.3 above its saddle).
    data_t, _ = _two_spikes(bump=3.5)
    weak, strong = data_t > 1.0, data_t > 4.0
    assert len(FloodFillDetector(adjacency, 1, split_prominence=None)(weak, strong)) == 1
    det = FloodFillDetector(adjacency, 1, thresholds=thresholds, split_prominence=0.0)
    parts = det(weak, strong, data_t)
    assert len(parts) == 2 and sum(map(len, parts)) == int(weak.sum())


def test_split_needs_data_t_and_valid_parameters():
    data_t, adjacency = _two_spikes()
    det = FloodFillDetector(adjacency, 1, thresholds={"weak": 1.0, "strong": 4.0})
    assert det.splits
    with pytest.raises(DetectionError, match="needs the transformed traces"):
        det.detect_flat(data_t > 1, data_t > 4)
    # Without thresholds, the detector does not split (and needs no data_t).
    assert not FloodFillDetector(adjacency, 1).splits
    with pytest.raises(DetectionError, match="split_prominence"):
        FloodFillDetector(adjacency, 1, split_prominence=-1.0)
    with pytest.raises(DetectionError, match="split_tall_peak must be a number >= 0 or None"):
        FloodFillDetector(adjacency, 1, split_tall_peak="high")
    with pytest.raises(DetectionError, match="split_tall_prominence must be a number >= 0,"):
        FloodFillDetector(adjacency, 1, split_tall_prominence=None)
    with pytest.raises(DetectionError, match="split_tall_prominence"):
        FloodFillDetector(adjacency, 1, split_tall_prominence=-0.1)
    with pytest.raises(DetectionError, match="thresholds"):
        FloodFillDetector(adjacency, 1, thresholds={"weak": 1.0})
    bad = FloodFillDetector(adjacency, 1, thresholds={"weak": 4.0, "strong": 1.0})
    with pytest.raises(DetectionError, match="strong threshold must be above"):
        bad.detect_flat(data_t > 1, data_t > 4, data_t)
    bad = FloodFillDetector(adjacency, 1, thresholds={"weak": [1.0, 1.0], "strong": 4.0})
    with pytest.raises(DetectionError, match="expected scalars"):
        bad.detect_flat(data_t > 1, data_t > 4, data_t)
