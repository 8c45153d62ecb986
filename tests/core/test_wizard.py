"""Tests of the wizard, alone and following a real `Clustering`."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phy_core.clustering import Clustering
from phy_core.metadata import ClusterMetadata
from phy_core.wizard import Wizard

# Clusters without a clustering
# -----------------------------------------------------------------------------
# quality: 2 (9) > 6 (8) > 3 (7) = 4 (7) > 1 (5) > 5 (1); cluster 5 is noise.
QUALITY = {1: 5.0, 2: 9.0, 3: 7.0, 4: 7.0, 5: 1.0, 6: 8.0}
POSITION = {1: 0.0, 2: 1.0, 3: 10.0, 4: 2.0, 5: 3.0, 6: 11.0}


def _similarity(c0, c1):
    return -abs(POSITION[c0] - POSITION[c1])


@pytest.fixture
def wizard():
    w = Wizard(cluster_ids=sorted(QUALITY), cluster_groups={5: "noise"})
    w.set_quality_function(QUALITY.__getitem__)
    w.set_similarity_function(_similarity)
    return w


@pytest.fixture
def events(wizard):
    selections = []
    wizard.connect(selections.append, event="select")
    return selections


def test_best_clusters(wizard):
    assert wizard.best_clusters() == [2, 6, 3, 4, 1]
    assert wizard.best_clusters(n_max=2) == [2, 6]
    assert wizard.best_clusters(quality=lambda c: -c) == [1, 2, 3, 4, 6]


def test_most_similar_clusters(wizard):
    # From 2 (position 1): 1 and 4 at distance 1 (ties by id), 3 at 9, 6 at 10; 5 is noise.
    assert wizard.most_similar_clusters(2) == [1, 4, 3, 6]
    assert wizard.most_similar_clusters(2, n_max=1) == [1]
    assert wizard.most_similar_clusters(3, similarity=lambda a, b: b) == [6, 4, 2, 1]
    with pytest.raises(ValueError, match="no current best"):
        wizard.most_similar_clusters()
    wizard.start()
    assert wizard.most_similar_clusters() == [1, 4, 3, 6]


def test_start(wizard, events):
    assert not wizard.has_started
    assert wizard.selection == [] and wizard.best is None and wizard.match is None
    assert wizard.start() == [2]
    assert wizard.has_started
    assert wizard.best_list == [2, 6, 3, 4, 1]
    assert wizard.match_list == [] and wizard.match is None
    assert events == [[2]]
    assert wizard.reset() == []
    assert not wizard.has_started and wizard.best_list == [] and events == [[2], []]


def test_best_navigation(wizard, events):
    wizard.start()
    assert wizard.next_best() == [6]
    assert wizard.next() == [3]
    assert wizard.previous_best() == [6]
    assert wizard.last() == [1]
    assert wizard.next() == [1]  # The end: stay.
    assert wizard.first() == [2]
    assert wizard.previous() == [2]  # The beginning: stay.
    assert events == [[2], [6], [3], [6], [1], [2]]


def test_navigation_starts(wizard):
    assert wizard.next() == [2]
    assert wizard.has_started


def test_pin_unpin(wizard, events):
    wizard.start()
    assert wizard.pin() == [2, 1]
    assert wizard.pinned
    assert wizard.match_list == [1, 4, 3, 6]
    assert wizard.next() == [2, 4]
    assert wizard.next_match() == [2, 3]
    assert wizard.previous() == [2, 4]
    assert wizard.last() == [2, 6]
    assert wizard.next() == [2, 6]  # The end: stay.
    assert wizard.first() == [2, 1]
    assert wizard.previous_match() == [2, 1]
    assert wizard.unpin() == [2]
    assert not wizard.pinned and wizard.match_list == [] and wizard.match is None
    assert events == [[2], [2, 1], [2, 4], [2, 3], [2, 4], [2, 6], [2, 1], [2]]


def test_pin_cluster(wizard):
    wizard.start()
    # 3 (position 10): 6 (1), 4 (8), 2 (9), 1 (10).
    assert wizard.pin(3) == [3, 6]
    assert wizard.match_list == [6, 4, 2, 1]
    # Navigating the best list goes on from the pinned cluster.
    assert wizard.next_best() == [4, 2]  # 4 (position 2): 2 (1), 1 (2), 3, 6.
    assert wizard.match_list == [2, 1, 3, 6]
    assert wizard.pinned
    assert wizard.previous_best() == [3, 6]
    with pytest.raises(ValueError, match="noise"):
        wizard.pin(5)
    with pytest.raises(ValueError, match="does not exist"):
        wizard.pin(42)


def test_next_match_pins(wizard):
    wizard.start()
    assert wizard.next_match() == [2, 1]
    assert wizard.pinned


def test_groups(wizard):
    assert wizard.n_clusters == 6
    assert wizard.n_processed == 1
    assert wizard.cluster_groups == {
        1: "unsorted",
        2: "unsorted",
        3: "unsorted",
        4: "unsorted",
        5: "noise",
        6: "unsorted",
    }
    wizard.cluster_groups = {1: "good", 2: 1, 5: "noise"}
    assert wizard.n_processed == 3
    assert wizard.best_clusters() == [6, 3, 4, 1]
    np.testing.assert_array_equal(wizard.cluster_ids, [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="Unknown cluster group"):
        wizard.cluster_groups = {1: "excellent"}


def test_set_cluster_ids_resyncs(wizard, events):
    wizard.start()
    wizard.next_best()
    wizard.cluster_ids = [1, 3, 6]
    assert wizard.best_list == [6, 3, 1]
    assert wizard.best == 6 and events[-1] == [6]
    wizard.cluster_ids = [1, 3]
    assert wizard.selection == [3] and events[-1] == [3]


def test_missing_functions():
    w = Wizard(cluster_ids=[1, 2])
    with pytest.raises(RuntimeError, match="set_quality_function"):
        w.start()
    with pytest.raises(RuntimeError, match="quality"):
        w.best_clusters()

    @w.set_quality_function
    def quality(cluster):
        return cluster

    assert quality(3) == 3  # The decorator returns the function.
    assert w.start() == [2]
    with pytest.raises(RuntimeError, match="set_similarity_function"):
        w.pin()
    assert not w.pinned and w.selection == [2]
    with pytest.raises(TypeError):
        w.set_similarity_function(3)


def test_on_cluster_without_clustering(wizard):
    """A script can drive the wizard with hand-made UpdateInfo dicts."""
    QUALITY[7] = 0.5
    POSITION[7] = 1.5
    try:
        wizard.start()
        wizard.pin()  # [2, 1]
        wizard.on_cluster(
            {
                "description": "merge",
                "added": [7],
                "deleted": [2, 1],
                "descendants": [(1, 7), (2, 7)],
            }
        )
        assert wizard.best_list == [7, 6, 3, 4]
        assert wizard.selection == [7, 4]
        wizard.on_cluster(
            {
                "description": "metadata_group",
                "metadata_changed": [4],
                "metadata_key": "group",
                "metadata_value": "mua",
            }
        )
        assert wizard.cluster_groups[4] == "mua"
        assert wizard.best_list == [7, 6, 3]
        assert wizard.selection == [7, 3]
    finally:
        del QUALITY[7], POSITION[7]


def test_empty(wizard):
    wizard.cluster_groups = {c: "noise" for c in QUALITY}
    assert wizard.start() == []
    assert wizard.next() == [] and wizard.pin() == [] and wizard.last() == []
    assert not wizard.pinned


# Following a real Clustering
# -----------------------------------------------------------------------------
# cluster: (size, center). quality = size: 1 (50) > 3 (40) > 5 (35) > 2 (30) > 4 (20) > 0 (10).
# similarity to 1 (center 1.0): 3 (0.5), 0 (1.0), 5 (3.0), 2 (4.0), 4 (8.0).
CLUSTERS = {0: (10, 0.0), 1: (50, 1.0), 2: (30, 5.0), 3: (40, 1.5), 4: (20, 9.0), 5: (35, 4.0)}


def _make_clustering(clusters=CLUSTERS, groups=None, seed=0):
    spike_clusters = np.concatenate([np.full(n, c) for c, (n, _) in clusters.items()])
    features = np.concatenate([np.full(n, x) for n, x in clusters.values()])
    order = np.random.default_rng(seed).permutation(len(spike_clusters))
    spike_clusters, features = spike_clusters[order], features[order]
    metadata = ClusterMetadata({"group": groups}) if groups else None
    clustering = Clustering(spike_clusters, metadata)
    calls = Counter()

    def quality(cluster):
        calls[cluster] += 1
        return len(clustering.spikes_per_cluster[cluster])

    def similarity(c0, c1):
        f = features
        sc = clustering.spike_clusters
        return -abs(f[sc == c0].mean() - f[sc == c1].mean())

    return clustering, quality, similarity, calls


@pytest.fixture
def setup():
    clustering, quality, similarity, calls = _make_clustering()
    w = Wizard(quality=quality, similarity=similarity).attach(clustering)
    selections = []
    w.connect(selections.append, event="select")
    return clustering, w, selections, calls


def _state(w):
    return w.best_list, w.match_list, w.best, w.match, w.pinned


def test_attach(setup):
    _, w, _, calls = setup
    np.testing.assert_array_equal(w.cluster_ids, np.arange(6))
    w.start()
    assert w.best_list == [1, 3, 5, 2, 4, 0]
    assert w.pin() == [1, 3]
    assert w.match_list == [3, 0, 5, 2, 4]
    assert calls == {c: 1 for c in range(6)}
    with pytest.raises(RuntimeError, match="attached"):
        w.cluster_ids = [1, 2]


def test_merge_best_and_match(setup):
    clustering, w, events, calls = setup
    w.start()
    w.pin()
    w.next()  # [1, 0]
    w.previous()  # [1, 3]
    before = _state(w)
    clustering.merge(w.selection)  # New cluster 6 (size 90, center 1.22).
    assert w.best_list == [6, 5, 2, 4, 0]
    assert w.selection == [6, 0] and w.pinned
    assert w.match_list == [0, 5, 2, 4]
    assert events[-1] == [6, 0]
    assert calls[6] == 0  # The new cluster took its parent's place: no ranking needed.
    after = _state(w)

    clustering.undo()
    assert _state(w) == before
    assert events[-1] == [1, 3]
    clustering.redo()
    assert _state(w) == after
    assert events[-1] == [6, 0]
    assert max(calls.values()) == 1


def test_merge_other_clusters(setup):
    clustering, w, events, _ = setup
    w.start()
    w.pin()  # [1, 3]
    n_events = len(events)
    clustering.merge([2, 4])  # 6: size 50, center 6.33; takes the place of 2.
    assert w.best_list == [1, 3, 5, 6, 0]
    assert w.match_list == [3, 0, 5, 6]
    assert w.selection == [1, 3]
    assert len(events) == n_events  # The selection did not change.
    clustering.merge([3, 0])  # The match is merged with another cluster: 7 replaces it.
    assert w.selection == [1, 7]
    assert w.match_list == [7, 5, 6]
    assert w.best_list == [1, 7, 5, 6]


def test_split_best(setup):
    clustering, w, events, _ = setup
    w.start()
    w.next_best()  # 3
    before = _state(w)
    spikes = clustering.spikes_per_cluster[3][:10]
    up = clustering.split(spikes)
    assert up.descendants == [(3, 6), (3, 7)]
    assert w.best_list == [1, 6, 7, 5, 2, 4, 0]
    assert w.selection == [6]
    assert events[-1] == [6]
    after = _state(w)
    clustering.undo()
    assert _state(w) == before
    clustering.redo()
    assert _state(w) == after


def test_split_match(setup):
    clustering, w, _, _ = setup
    w.start()
    w.pin()  # [1, 3]
    clustering.split(clustering.spikes_per_cluster[3][:5])  # 3 -> 6 (5 spikes), 7 (35).
    assert w.selection == [1, 6]
    assert w.match_list == [6, 7, 0, 5, 2, 4]
    assert w.best_list == [1, 6, 7, 5, 2, 4, 0]


def test_split_best_pinned(setup):
    clustering, w, _, _ = setup
    w.start()
    w.pin()  # [1, 3]
    clustering.split(clustering.spikes_per_cluster[1][:5])  # 1 -> 6 (5 spikes), 7 (45).
    # The best was replaced by its first child: the matches are those of the child.
    assert w.best == 6 and w.pinned
    assert w.match_list == w.most_similar_clusters(6)
    assert w.match == w.match_list[0]
    assert w.best_list == [6, 7, 3, 5, 2, 4, 0]


def test_noise_best(setup):
    clustering, w, events, _ = setup
    w.start()
    w.pin()  # [1, 3]
    before = _state(w)
    clustering.set_group([1], "noise")
    assert w.best_list == [3, 5, 2, 4, 0]
    # The next best is selected, still pinned: matches of 3 (center 1.5).
    assert w.selection == [3, 0]
    assert w.match_list == [0, 5, 2, 4]
    assert w.n_processed == 1
    assert events[-1] == [3, 0]
    after = _state(w)
    clustering.undo()
    assert _state(w) == before
    assert events[-1] == [1, 3]
    assert w.n_processed == 0
    clustering.redo()
    assert _state(w) == after


def test_mua_match_and_last_best(setup):
    clustering, w, _, _ = setup
    w.start()
    w.pin()  # [1, 3]
    clustering.set_group(3, "mua")
    assert w.selection == [1, 0]
    assert w.match_list == [0, 5, 2, 4]
    w.unpin()
    w.last()  # 0
    clustering.set_group(0, "noise")  # The last best: go to the previous one.
    assert w.selection == [4]
    clustering.set_group(4, "good")  # Not ignored: nothing moves.
    assert w.selection == [4] and w.best_list == [1, 5, 2, 4]
    assert w.n_processed == 3
    assert w.cluster_groups == {
        0: "noise",
        1: "unsorted",
        2: "unsorted",
        3: "mua",
        4: "good",
        5: "unsorted",
    }


def test_initial_groups_and_reappearing():
    clustering, quality, similarity, calls = _make_clustering(groups={3: "mua", 0: "good"})
    w = Wizard(quality=quality, similarity=similarity).attach(clustering)
    assert w.n_processed == 2
    w.start()
    assert w.best_list == [1, 5, 2, 4, 0]
    assert 3 not in calls
    w.next_best()  # 5
    w.pin()  # 5 (center 4): 2 (1), 1 (3), 0 (4), 4 (5).
    assert w.selection == [5, 2]
    clustering.set_group(3, "unsorted")  # 3 comes back: ranked again, selection kept.
    assert w.best_list == [1, 3, 5, 2, 4, 0]
    assert w.match_list == [2, 3, 1, 0, 4]
    assert w.selection == [5, 2]
    assert calls[3] == 1 and max(calls.values()) == 1


def test_undo_before_start_uses_descendants():
    """Undoing an operation the wizard did not see: the parents replace the child."""
    clustering, quality, similarity, _ = _make_clustering()
    w = Wizard(quality=quality, similarity=similarity).attach(clustering)
    clustering.merge([1, 3])  # 6
    clustering.set_group(2, "noise")
    w.start()
    assert w.best_list == [6, 5, 4, 0]
    clustering.undo()  # 2 comes back: ranked again, the best is kept.
    assert w.best_list == [6, 5, 2, 4, 0]
    assert w.best == 6
    clustering.undo()  # 6 is replaced by 1 and 3.
    assert w.best_list == [1, 3, 5, 2, 4, 0]
    assert w.best == 1


def test_reset_clustering(setup):
    clustering, w, events, _ = setup
    w.start()
    w.pin()
    clustering.merge([1, 3])
    clustering.set_group(5, "noise")
    assert w.selection == [6, 0]
    clustering.reset()
    assert w.best_list == [1, 3, 5, 2, 4, 0]
    assert w.selection == [1, 3] and events[-1] == [1, 3]
    assert w.match_list == [3, 0, 5, 2, 4]


def test_panel_params(setup):
    clustering, w, _, _ = setup
    clustering.set_group(3, "good")
    w.start()
    w.pin()
    p = w.get_panel_params()
    assert (p.best, p.match, p.pinned, p.best_index, p.n_best) == (1, 3, True, 1, 6)
    assert (p.match_index, p.n_match, p.best_group, p.match_group) == (1, 5, "unsorted", "good")
    assert (p.n_processed, p.n_clusters) == (1, 6)


def test_detach(setup):
    clustering, w, _, _ = setup
    clustering.set_group(2, "good")
    w.start()
    w.detach()
    clustering.merge([1, 3])
    assert w.best_list == [1, 3, 5, 2, 4, 0]
    assert w.cluster_groups[2] == "good"


# Random sequences of operations
# -----------------------------------------------------------------------------

NAVIGATION = [
    "next",
    "previous",
    "next_best",
    "previous_best",
    "next_match",
    "previous_match",
    "first",
    "last",
    "pin",
    "unpin",
]
OPERATIONS = NAVIGATION + ["merge", "split", "set_group", "undo", "redo"]


def _check_invariants(w, clustering):
    existing = set(clustering.cluster_ids.tolist())
    valid = {c for c in existing if clustering.metadata.group(c) not in (0, 1)}
    best_list, match_list = w.best_list, w.match_list
    assert len(set(best_list)) == len(best_list)
    assert len(set(match_list)) == len(match_list)
    assert set(best_list) == valid
    if w.best is None:
        assert not best_list
    else:
        assert w.best in best_list
    if w.pinned and w.best is not None:
        assert set(match_list) == valid - {w.best}
    else:
        assert match_list == []
    if w.match is None:
        assert not match_list
    else:
        assert w.match in match_list and w.match != w.best
    assert w.selection == [c for c in (w.best, w.match) if c is not None]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 10**6)), min_size=1, max_size=25
    ),
    st.integers(0, 3),
)
def test_random_operations(ops, seed):
    rng = np.random.default_rng(seed)
    clusters = {c: (int(rng.integers(1, 8)), float(rng.normal())) for c in range(5)}
    clustering, quality, similarity, calls = _make_clustering(clusters, seed=seed)
    w = Wizard(quality=quality, similarity=similarity).attach(clustering)
    events, updates = [], []
    w.connect(events.append, event="select")
    clustering.connect(updates.append, event="cluster")
    w.start()
    # The wizard's states before the undoable operations, and before the undos.
    undo_states, redo_states = [], []
    for op, arg in ops:
        before, n_events, n_updates = _state(w), len(events), len(updates)
        selection = w.selection
        if op in NAVIGATION:
            assert getattr(w, op)() == w.selection
        elif op == "merge":
            ids = clustering.cluster_ids.tolist()
            to_merge = w.selection if len(w.selection) == 2 else [ids[arg % len(ids)], w.best]
            clustering.merge([c for c in to_merge if c is not None])
        elif op == "split":
            n = clustering.n_spikes
            spikes = np.unique(np.random.default_rng(arg).integers(0, n, 1 + arg % 5))
            clustering.split(spikes)
        elif op == "set_group":
            ids = clustering.cluster_ids.tolist()
            cluster = (w.selection + ids)[arg % (len(ids) + len(w.selection))]
            clustering.set_group(cluster, arg % 4)
        elif op == "undo":
            if clustering.undo() is not None:
                redo_states.append(before)
                assert _state(w) == undo_states.pop()
        elif op == "redo" and clustering.redo() is not None:
            undo_states.append(before)
            assert _state(w) == redo_states.pop()
        if op in ("merge", "split", "set_group") and len(updates) > n_updates:
            undo_states.append(before)
            redo_states.clear()
        _check_invariants(w, clustering)
        # 'select' is emitted once exactly when the selection changes.
        new_events = events[n_events:]
        if w.selection != selection:
            assert new_events == [w.selection]
        else:
            assert new_events == []
    # Each quality is computed once at most.
    assert max(calls.values()) == 1
