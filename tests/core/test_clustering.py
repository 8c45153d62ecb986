"""Tests of phy_core.clustering."""

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal as ae

from phy_core.clustering import Clustering, UpdateInfo
from phy_core.metadata import ClusterMetadata

SC = [2, 5, 3, 2, 7, 5, 2]


@pytest.fixture
def clustering():
    c = Clustering(np.array(SC))
    c.events = []
    c.connect(c.events.append, event="cluster")
    return c


def _spc(up):
    return {c: s.tolist() for c, s in up.items()}


# Construction and properties
# -----------------------------------------------------------------------------


def test_construction(clustering):
    c = clustering
    ae(c.spike_clusters, SC)
    assert c.spike_clusters.dtype == np.int64
    assert c.n_spikes == 7
    ae(c.spike_ids, np.arange(7))
    ae(c.cluster_ids, [2, 3, 5, 7])
    assert c.cluster_ids.dtype == np.int64
    assert c.n_clusters == 4
    assert c.cluster_counts == {2: 3, 3: 1, 5: 2, 7: 1}
    assert _spc(c.spikes_per_cluster) == {2: [0, 3, 6], 3: [2], 5: [1, 5], 7: [4]}
    ae(c.spikes_in_clusters([5, 3]), [1, 2, 5])
    ae(c.spikes_in_clusters(7), [4])
    assert c.new_cluster_id() == 8
    assert isinstance(c.metadata, ClusterMetadata)


def test_read_only_and_copied_input():
    sc = np.array(SC, dtype=np.int32)
    c = Clustering(sc)
    with pytest.raises(ValueError):
        c.spike_clusters[0] = 100
    with pytest.raises(ValueError):
        c.cluster_ids[0] = 100
    with pytest.raises(ValueError):
        c.spikes_per_cluster[2][0] = 1
    c.merge([2, 3])
    ae(sc, SC)  # the caller's array is never modified
    sc[:] = 0
    assert c.spike_clusters[0] == 8


def test_empty_clustering():
    c = Clustering(np.zeros(0, dtype=np.int64))
    assert c.n_spikes == 0
    assert c.n_clusters == 0
    assert c.new_cluster_id() == 0
    assert c.undo() is None
    up = c.assign([])
    assert up.added == [] and up.deleted == []


def test_new_id_skips_metadata_ids():
    # A dead cluster 20 known only to the saved metadata must not be revived.
    c = Clustering(np.array([0, 1]), ClusterMetadata({"group": {"20": "good"}}))
    assert c.new_cluster_id() == 21


# Assign and split
# -----------------------------------------------------------------------------


def test_split(clustering):
    c = clustering
    up = c.split([0])
    assert isinstance(up, UpdateInfo)
    assert up.description == "assign"
    assert up.history is None
    assert up.deleted == [2]
    assert up.added == [8, 9]
    assert up.descendants == [(2, 8), (2, 9)]
    ae(up.spikes, [0, 3, 6])
    assert _spc(up.old_spikes_per_cluster) == {2: [0, 3, 6]}
    assert _spc(up.new_spikes_per_cluster) == {8: [0], 9: [3, 6]}
    assert up.metadata_changed == []
    ae(c.spike_clusters, [8, 5, 3, 9, 7, 5, 9])
    ae(c.cluster_ids, [3, 5, 7, 8, 9])
    assert c.new_cluster_id() == 10
    assert c.events == [up]

    # Undo: the change actually applied, pairs reversed.
    up = c.undo()
    assert up.description == "assign"
    assert up.history == "undo"
    assert up.deleted == [8, 9]
    assert up.added == [2]
    assert up.descendants == [(8, 2), (9, 2)]
    ae(up.spikes, [0, 3, 6])
    assert _spc(up.old_spikes_per_cluster) == {8: [0], 9: [3, 6]}
    assert _spc(up.new_spikes_per_cluster) == {2: [0, 3, 6]}
    ae(c.spike_clusters, SC)
    assert _spc(c.spikes_per_cluster) == {2: [0, 3, 6], 3: [2], 5: [1, 5], 7: [4]}
    assert c.new_cluster_id() == 10

    # Redo: same content as the original.
    up = c.redo()
    assert up.history == "redo"
    assert (up.description, up.added, up.deleted) == ("assign", [8, 9], [2])
    assert up.descendants == [(2, 8), (2, 9)]
    assert _spc(up.new_spikes_per_cluster) == {8: [0], 9: [3, 6]}
    ae(c.spike_clusters, [8, 5, 3, 9, 7, 5, 9])

    # Splitting a whole one-spike cluster just renames it.
    up = c.split([0])
    assert (up.description, up.deleted, up.added, up.descendants) == ("merge", [8], [10], [(8, 10)])
    ae(c.spike_clusters, [10, 5, 3, 9, 7, 5, 9])
    assert [e.history for e in c.events] == [None, "undo", "redo", None]


def test_split_several_clusters():
    # Reference example: the rest of each touched cluster gets its own new id.
    c = Clustering(np.array([10, 10, 20, 20, 30, 30]))
    up = c.split([1, 2, 3, 4])
    ae(c.spike_clusters, [32, 31, 31, 31, 31, 33])
    assert c.new_cluster_id() == 34
    assert up.added == [31, 32, 33]
    assert up.deleted == [10, 20, 30]
    assert up.descendants == [(10, 31), (10, 32), (20, 31), (30, 31), (30, 33)]
    ae(up.spikes, np.arange(6))


def test_assign_relative_ids(clustering):
    c = clustering
    # Unsorted spike ids, relative ids with a gap and negative values: only
    # equality matters and new ids are consecutive.
    up = c.assign([6, 0, 3], [-5, 40, -5])
    ae(c.spike_clusters, [9, 5, 3, 8, 7, 5, 8])
    assert up.added == [8, 9]
    assert up.deleted == [2]
    assert up.descendants == [(2, 8), (2, 9)]
    # Shifting the relative ids gives the same operation.
    c.undo()
    c.assign([6, 0, 3], [995, 1040, 995])
    ae(c.spike_clusters, [11, 5, 3, 10, 7, 5, 10])


def test_assign_whole_clusters_into_several(clustering):
    c = clustering
    up = c.assign([1, 5, 2], [0, 1, 1])
    ae(c.spike_clusters, [2, 8, 9, 2, 7, 9, 2])
    assert up.description == "assign"
    assert up.deleted == [3, 5]
    assert up.added == [8, 9]
    assert up.descendants == [(3, 9), (5, 8), (5, 9)]


def test_assign_into_one_cluster_is_a_merge(clustering):
    up = clustering.assign([2, 4])
    assert up.description == "merge"
    assert (up.deleted, up.added) == ([3, 7], [8])


# Merge
# -----------------------------------------------------------------------------


def test_merge(clustering):
    c = clustering
    up = c.merge([3, 2])
    assert up.description == "merge"
    assert (up.added, up.deleted) == ([8], [2, 3])
    assert up.descendants == [(2, 8), (3, 8)]
    ae(up.spikes, [0, 2, 3, 6])
    assert _spc(up.new_spikes_per_cluster) == {8: [0, 2, 3, 6]}
    assert _spc(up.old_spikes_per_cluster) == {2: [0, 3, 6], 3: [2]}
    ae(c.spike_clusters, [8, 5, 8, 8, 7, 5, 8])
    ae(c.cluster_ids, [5, 7, 8])
    assert c.cluster_counts == {5: 2, 7: 1, 8: 4}

    up = c.merge([5, 8, 7], to=20)
    assert (up.added, up.deleted) == ([20], [5, 7, 8])
    assert c.new_cluster_id() == 21
    ae(c.spike_clusters, [20] * 7)

    up = c.undo()
    assert (up.added, up.deleted, up.descendants) == ([5, 7, 8], [20], [(20, 5), (20, 7), (20, 8)])
    ae(c.spike_clusters, [8, 5, 8, 8, 7, 5, 8])


def test_ids_never_reused(clustering):
    c = clustering
    c.merge([2, 3])  # 8
    c.merge([5, 7])  # 9
    c.undo()
    c.undo()
    assert c.new_cluster_id() == 10
    up = c.merge([5, 7])
    assert up.added == [10]
    with pytest.raises(ValueError, match=">= 11"):
        c.merge([2, 3], to=9)  # used before, even though it no longer exists
    c.reset()
    assert c.new_cluster_id() == 11
    assert c.split([1]).added == [11, 12]


def test_merge_fewer_than_two_clusters_is_a_noop(clustering):
    c = clustering
    for clusters in ([2], [2, 2], []):
        up = c.merge(clusters)
        assert up.description == "merge"
        assert (up.added, up.deleted, up.descendants) == ([], [], [])
        assert len(up.spikes) == 0
    assert c.events == []
    assert c.undo() is None
    assert c.new_cluster_id() == 8
    ae(c.spike_clusters, SC)


def test_merge_bad_input(clustering):
    c = clustering
    with pytest.raises(ValueError, match=r"Unknown cluster id\(s\) \[4\]"):
        c.merge([2, 4])
    with pytest.raises(ValueError, match="list of cluster ids"):
        c.merge(2, 3)
    for to in (7, 3, -1, True, 9.0):
        with pytest.raises(ValueError, match="new id"):
            c.merge([2, 3], to=to)
    ae(c.spike_clusters, SC)
    assert c.events == [] and c.undo() is None


# Metadata
# -----------------------------------------------------------------------------


def test_set_group_undo_redo(clustering):
    c = clustering
    up = c.set_group([5, 2], "good")
    assert up.description == "metadata_group"
    assert (up.metadata_changed, up.metadata_key, up.metadata_value) == ([2, 5], "group", 2)
    assert up.metadata_values == {2: 2, 5: 2}
    assert (up.added, up.deleted, len(up.spikes)) == ([], [], 0)
    up = c.set_group(5, 1)
    assert c.metadata.groups == {2: 2, 5: 1}

    up = c.undo()
    assert (up.history, up.description, up.metadata_changed) == ("undo", "metadata_group", [5])
    assert up.metadata_values == {5: 2}
    assert c.metadata.groups == {2: 2, 5: 2}
    up = c.undo()
    assert up.metadata_values == {2: 3, 5: 3}
    assert c.metadata.groups == {}
    up = c.redo()
    assert (up.history, up.metadata_changed, up.metadata_value) == ("redo", [2, 5], 2)
    assert c.metadata.groups == {2: 2, 5: 2}
    assert len(c.events) == 5


def test_set_label(clustering):
    c = clustering
    up = c.set_label([3], "note", "burst")
    assert (up.description, up.metadata_key, up.metadata_value) == (
        "metadata_note",
        "note",
        "burst",
    )
    assert c.metadata.get("note", 3) == "burst"
    c.set_label(3, "note", None)
    assert not c.metadata.has("note", 3)
    c.undo()
    assert c.metadata.get("note", 3) == "burst"
    # 'group' through set_label is a set_group.
    assert c.set_label(3, "group", "MUA").description == "metadata_group"
    assert c.metadata.group(3) == 1


def test_metadata_bad_input(clustering):
    c = clustering
    with pytest.raises(ValueError, match=r"Unknown cluster id\(s\) \[4\]"):
        c.set_group([2, 4], "good")
    with pytest.raises(ValueError, match="Unknown cluster group"):
        c.set_group([2], "excellent")
    with pytest.raises(ValueError, match="JSON-able"):
        c.set_label([2], "note", object())
    assert c.metadata.to_dict() == {} and c.undo() is None and c.events == []
    up = c.set_group([], "good")
    assert up.metadata_changed == [] and c.events == []


def test_metadata_inheritance(clustering):
    c = clustering
    c.set_group([2, 3], "good")
    c.set_group([5], "mua")
    c.set_label([2, 3, 5], "note", "x")
    up = c.merge([2, 3])  # 8: both good, both "x"
    assert up.metadata_changed == [8]
    assert c.metadata.group(8) == 2 and c.metadata.get("note", 8) == "x"
    c.merge([5, 8])  # 9: mua + good -> unsorted, note "x"
    assert not c.metadata.has("group", 9)
    assert c.metadata.get("note", 9) == "x"
    c.merge([9, 7])  # 10: 7 has nothing set -> nothing inherited
    assert c.metadata.to_dict().get("note", {}).get("10") is None
    assert c.metadata.group(10) == 3
    # Undo removes what was inherited, redo brings it back.
    c.undo()
    c.undo()
    assert not c.metadata.has("note", 9)
    c.undo()
    assert not c.metadata.has("group", 8)
    c.redo()
    assert c.metadata.group(8) == 2


def test_split_inherits_group(clustering):
    c = clustering
    c.set_group(2, "noise")
    up = c.split([0])
    assert up.metadata_changed == [8, 9]
    assert c.metadata.cluster_groups_for([8, 9]) == {8: 0, 9: 0}
    up = c.undo()
    assert up.metadata_changed == [8, 9]
    assert c.metadata.groups == {2: 0}


# History and reset
# -----------------------------------------------------------------------------


def test_undo_redo_stacks(clustering):
    c = clustering
    assert c.undo() is None and c.redo() is None
    c.merge([2, 3])
    assert c.redo() is None
    c.undo()
    assert c.undo() is None
    c.merge([5, 7])  # drops the redo stack
    assert c.redo() is None
    ae(c.spike_clusters, [2, 9, 3, 2, 9, 9, 2])


def test_history_not_corrupted_by_consumers(clustering):
    c = clustering
    up = c.merge([2, 3])
    up.added.append(100)
    up.descendants.clear()
    c.undo()
    up = c.redo()
    assert up.added == [8] and up.descendants == [(2, 8), (3, 8)]


def test_reset():
    meta = ClusterMetadata({"group": {"2": "good"}})
    c = Clustering(np.array(SC), meta)
    events = []
    c.connect(events.append, event="cluster")
    c.split([0])  # 8, 9 (good, inherited)
    c.merge([3, 8])  # 10
    c.set_group([5], "noise")
    c.undo()
    up = c.reset()
    assert events[-1] is up
    assert (up.description, up.history) == ("reset", None)
    assert up.deleted == [9, 10]
    assert up.added == [2, 3]
    assert up.descendants == [(9, 2), (10, 2), (10, 3)]
    ae(up.spikes, [0, 2, 3, 6])
    ae(c.spike_clusters, SC)
    assert _spc(c.spikes_per_cluster) == {2: [0, 3, 6], 3: [2], 5: [1, 5], 7: [4]}
    assert c.metadata.groups == {2: 2}
    assert up.metadata_changed == [8, 9]  # 10 inherited nothing (3 had no group)
    assert c.undo() is None and c.redo() is None
    assert c.new_cluster_id() == 11


def test_clustering_shadows_emitter_reset(clustering):
    # Clustering.reset resets the clustering, not the callbacks.
    clustering.reset()
    assert len(clustering.events) == 1


# Bad input
# -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spike_ids", "rel", "match"),
    [
        ([7], 0, r"Spike id 7 out of range \[0, 7\)"),
        ([0, -1], 0, r"Spike id -1 out of range"),
        ([1, 3, 1], 0, "Spike id 1 appears more than once"),
        ([1, 2], [0, 1, 2], "3 values for 2 spike ids"),
        ([1, 2], [0.5, 1], "must be integers"),
        ([1.0, 2.0], 0, "must be integers"),
        ([[1, 2]], 0, "1-D"),
        (slice(0, 2), 0, "not a slice"),
    ],
)
def test_assign_bad_input(clustering, spike_ids, rel, match):
    with pytest.raises(ValueError, match=match):
        clustering.assign(spike_ids, rel)
    ae(clustering.spike_clusters, SC)
    assert clustering.undo() is None and clustering.events == []


@pytest.mark.parametrize(
    ("spike_clusters", "match"),
    [([0.5, 1], "integers"), ([[0, 1]], "1-D"), ([0, -3], "spike 1 has cluster -3")],
)
def test_constructor_bad_input(spike_clusters, match):
    with pytest.raises(ValueError, match=match):
        Clustering(np.array(spike_clusters))


def test_spikes_in_clusters_bad_input(clustering):
    with pytest.raises(ValueError, match="Unknown cluster"):
        clustering.spikes_in_clusters([2, 100])


# Property-based comparison with a naive model
# -----------------------------------------------------------------------------


class NaiveClustering:
    """Full snapshots of (spike_clusters, metadata); undo = previous snapshot."""

    def __init__(self, spike_clusters, metadata):
        self.states = [(spike_clusters.copy(), copy.deepcopy(metadata))]
        self.index = 0
        self.new_id = int(spike_clusters.max()) + 1

    @property
    def state(self):
        return self.states[self.index]

    def _push(self, spike_clusters, metadata):
        del self.states[self.index + 1 :]
        self.states.append((spike_clusters, metadata))
        self.index += 1

    def _change_spikes(self, new_values):
        before, metadata = self.state
        after = before.copy()
        for spike, cluster in new_values.items():
            after[spike] = cluster
        self.new_id = max(self.new_id, max(new_values.values()) + 1)
        metadata = copy.deepcopy(metadata)
        for child in set(after.tolist()) - set(before.tolist()):
            parents = set(before[after == child].tolist())
            for values in metadata.values():
                if all(p in values for p in parents) and len({values[p] for p in parents}) == 1:
                    values[child] = values[next(iter(parents))]
        self._push(after, metadata)

    def assign(self, spike_ids, rel):
        if not spike_ids:
            return
        before = self.state[0]
        distinct = sorted(set(rel))
        new_values = {s: self.new_id + distinct.index(r) for s, r in zip(spike_ids, rel)}
        next_id = self.new_id + len(distinct)
        for cluster in sorted(set(before[spike_ids].tolist())):
            rest = [s for s in np.flatnonzero(before == cluster) if s not in new_values]
            if rest:
                new_values.update(dict.fromkeys(rest, next_id))
                next_id += 1
        self._change_spikes(new_values)

    def merge(self, clusters, to):
        if len(set(clusters)) < 2:
            return
        to = self.new_id if to is None else to
        spikes = np.flatnonzero(np.isin(self.state[0], clusters))
        self._change_spikes(dict.fromkeys(spikes.tolist(), to))

    def set_meta(self, clusters, field, value):
        if not clusters:
            return
        metadata = copy.deepcopy(self.state[1])
        values = metadata.setdefault(field, {})
        for c in clusters:
            if value is None:
                values.pop(c, None)
            else:
                values[c] = value
        self._push(self.state[0].copy(), metadata)

    def undo(self):
        self.index = max(0, self.index - 1)

    def redo(self):
        self.index = min(len(self.states) - 1, self.index + 1)

    def reset(self):
        self.states = self.states[:1]
        self.index = 0


def _check_update(up, before, after, meta_before, meta_after):
    """An UpdateInfo must describe exactly the change between two states."""
    spikes = np.flatnonzero(before != after)
    ae(up.spikes, spikes)
    assert up.added == sorted(set(after.tolist()) - set(before.tolist()))
    assert up.deleted == sorted(set(before.tolist()) - set(after.tolist()))
    assert up.descendants == sorted(set(zip(before[spikes].tolist(), after[spikes].tolist())))
    for c in up.added:
        ae(up.new_spikes_per_cluster[c], np.flatnonzero(after == c))
    for c in up.deleted:
        ae(up.old_spikes_per_cluster[c], np.flatnonzero(before == c))
    changed = {
        c
        for f in set(meta_before) | set(meta_after)
        for c in set(meta_before.get(f, {})) | set(meta_after.get(f, {}))
        if meta_before.get(f, {}).get(c) != meta_after.get(f, {}).get(c)
    }
    assert changed <= set(up.metadata_changed)


def _check_state(c, model):
    sc, metadata = model.state
    ae(c.spike_clusters, sc)
    ae(c.cluster_ids, np.unique(sc))
    assert c.n_clusters == len(np.unique(sc))
    assert c.new_cluster_id() == model.new_id
    spc = c.spikes_per_cluster
    assert list(spc) == c.cluster_ids.tolist()
    for cluster, spikes in spc.items():
        ae(spikes, np.flatnonzero(sc == cluster))
    assert c.cluster_counts == {k: len(v) for k, v in spc.items()}
    for field in set(metadata) | set(c.metadata.fields):
        assert c.metadata.values(field) == metadata.get(field, {})


_spike_clusters = st.lists(st.integers(0, 6), min_size=1, max_size=25).map(np.array)


@settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis folder in the repo
    suppress_health_check=[HealthCheck.too_slow],
)
@given(sc=_spike_clusters, data=st.data())
def test_against_naive_model(sc, data):
    groups = data.draw(
        st.dictionaries(st.sampled_from(sorted(set(sc.tolist()))), st.integers(0, 3))
    )
    c = Clustering(sc, ClusterMetadata({"group": groups}))
    model = NaiveClustering(sc, {"group": groups})
    events = []
    c.connect(events.append, event="cluster")
    seen = set(sc.tolist())
    n = len(sc)

    for _ in range(data.draw(st.integers(1, 15))):
        op = data.draw(
            st.sampled_from(
                ["assign", "split", "merge", "set_group", "set_label", "undo", "redo", "reset"]
            )
        )
        clusters = c.cluster_ids.tolist()
        state_before = model.state
        before, meta_before = model.state[0], copy.deepcopy(model.state[1])
        n_events = len(events)
        if op in ("assign", "split"):
            spikes = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
            rel = data.draw(st.lists(st.integers(0, 3), min_size=len(spikes), max_size=len(spikes)))
            if op == "split":
                rel = [0] * len(spikes)
            up = c.assign(spikes, rel) if op == "assign" else c.split(spikes)
            model.assign(spikes, rel)
        elif op == "merge":
            to_merge = data.draw(st.lists(st.sampled_from(clusters), max_size=4))
            to = data.draw(st.none() | st.integers(0, 3).map(lambda k: c.new_cluster_id() + k))
            up = c.merge(to_merge, to)
            model.merge(to_merge, to)
        elif op in ("set_group", "set_label"):
            chosen = sorted(set(data.draw(st.lists(st.sampled_from(clusters), max_size=3))))
            if op == "set_group":
                value = data.draw(st.sampled_from([0, 1, 2, 3, "good", "MUA"]))
                up = c.set_group(chosen, value)
                model.set_meta(chosen, "group", c.metadata.normalize("group", value))
            else:
                value = data.draw(st.sampled_from(["a", "b", None]))
                up = c.set_label(chosen, "note", value)
                model.set_meta(chosen, "note", value)
        else:
            up = getattr(c, op)()
            getattr(model, op)()

        _check_state(c, model)
        after = model.state[0]
        if up is None:
            assert op in ("undo", "redo")
            assert model.state is state_before
            assert len(events) == n_events
        elif model.state is state_before and op != "reset":
            assert len(events) == n_events  # a no-op emits nothing
            assert (up.added, up.deleted, up.metadata_changed) == ([], [], [])
        else:
            assert events[n_events:] == [up]
            _check_update(up, before, after, meta_before, model.state[1])
        if up is not None and up.history is None and op != "reset":
            assert not (set(up.added) & seen), "a cluster id was reused"
        seen |= set(after.tolist())
