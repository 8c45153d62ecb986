"""Flood-fill detector against a brute-force connected-components reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from phy_detect.floodfill import STAGES, DetectionError, FloodFillDetector, adjacency_csr


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
