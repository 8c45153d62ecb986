"""Tests of phy_core.metadata."""

import json

import numpy as np
import pytest

from phy_core.metadata import GROUP_NAMES, UNSORTED, ClusterMetadata, normalize_group


def test_group_constants():
    assert GROUP_NAMES == {0: "noise", 1: "mua", 2: "good", 3: "unsorted"}
    assert UNSORTED == 3


@pytest.mark.parametrize(
    ("group", "expected"),
    [("noise", 0), ("MUA", 1), ("Good", 2), (" unsorted ", 3), (0, 0), (np.int64(2), 2)],
)
def test_normalize_group(group, expected):
    assert normalize_group(group) == expected
    assert type(normalize_group(group)) is int


@pytest.mark.parametrize("group", ["great", "", 4, -1, True, None, 2.0, [2]])
def test_normalize_group_bad(group):
    with pytest.raises(ValueError, match="Unknown cluster group"):
        normalize_group(group)


def test_defaults():
    m = ClusterMetadata()
    assert m.fields == ["group"]
    assert m.group(10) == UNSORTED
    assert m.get("group", 10) == UNSORTED
    assert m.get("quality", 10) is None
    assert not m.has("group", 10)
    assert m.groups == {}
    assert m.cluster_groups == {}
    assert m.to_dict() == {}


def test_set_group_and_previous_values():
    m = ClusterMetadata()
    assert m.set("group", [3, 5], "good") == {}
    assert m.groups == {3: 2, 5: 2}
    assert m.has("group", 3)
    # Previous values are returned for the clusters that had one (undo needs them).
    assert m.set("group", [5, 7], "Noise") == {5: 2}
    assert m.groups == {3: 2, 5: 0, 7: 0}
    assert m.cluster_groups == m.groups
    assert m.cluster_groups_for([3, 4, 7]) == {3: 2, 4: 3, 7: 0}
    # A single id is accepted, numpy ints too.
    assert m.set("group", np.int64(4), 1) == {}
    assert m.group(4) == 1
    assert m.unset("group", [4, 8]) == {4: 1}
    assert m.group(4) == UNSORTED


def test_set_returns_copies():
    m = ClusterMetadata()
    m.set("group", 1, "good")
    groups = m.groups
    groups[1] = 0
    assert m.group(1) == 2


def test_labels():
    m = ClusterMetadata()
    m.set("quality", [1, 2], 0.5)
    m.set("note", 2, {"text": "drifting", "tags": ["a", "b"]})
    assert m.fields == ["group", "note", "quality"]
    assert m.get("quality", 1) == 0.5
    assert m.get("note", 2)["tags"] == ["a", "b"]
    assert m.values("quality") == {1: 0.5, 2: 0.5}
    # numpy scalars are stored as Python scalars, so they can be saved.
    m.set("quality", 3, np.float32(0.25))
    assert type(m.get("quality", 3)) is float
    # None is the label default: setting None unsets.
    assert m.set("quality", 1, None) == {1: 0.5}
    assert not m.has("quality", 1)
    assert m.get("quality", 1) is None


def test_labels_bad():
    m = ClusterMetadata()
    with pytest.raises(ValueError, match="JSON-able"):
        m.set("note", 1, object())
    with pytest.raises(ValueError, match="JSON-able"):
        m.set("note", 1, np.zeros(3))
    with pytest.raises(ValueError, match="field name"):
        m.set("", 1, "x")
    with pytest.raises(ValueError, match="field name"):
        m.set(3, 1, "x")
    with pytest.raises(ValueError, match="Unknown cluster group"):
        m.set("group", 1, None)
    assert m.to_dict() == {}


@pytest.mark.parametrize("cluster_ids", [-1, [1, -2], [1.5], ["a"], "3", None, [True]])
def test_bad_cluster_ids(cluster_ids):
    m = ClusterMetadata()
    with pytest.raises(ValueError, match="cluster id"):
        m.set("group", cluster_ids, "good")
    assert m.groups == {}


def test_to_dict_from_dict_roundtrip():
    m = ClusterMetadata()
    m.set("group", [1, 10], "good")
    m.set("group", 2, "mua")
    m.set("note", 10, ["x", 1])
    d = json.loads(json.dumps(m.to_dict()))
    assert d == {"group": {"1": 2, "2": 1, "10": 2}, "note": {"10": ["x", 1]}}
    m2 = ClusterMetadata.from_dict(d)
    assert m2.groups == {1: 2, 2: 1, 10: 2}
    assert m2.get("note", 10) == ["x", 1]
    assert m2.to_dict() == m.to_dict()
    # Integer keys and group names are accepted too.
    m3 = ClusterMetadata({"group": {4: "noise"}})
    assert m3.groups == {4: 0}


def test_replace():
    m = ClusterMetadata({"group": {1: 2}, "note": {1: "a"}})
    m.replace({"group": {2: 0}})
    assert m.groups == {2: 0}
    assert m.values("note") == {}


@pytest.mark.parametrize(
    "data",
    [[1, 2], {"group": [1, 2]}, {"group": {"x": 2}}, {"group": {"1": "best"}}, {"": {"1": 2}}],
)
def test_from_dict_bad(data):
    with pytest.raises(ValueError):
        ClusterMetadata.from_dict(data)
