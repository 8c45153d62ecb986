"""MEA: channel groups, single-group mode, layouts, graphs."""

import numpy as np
import pytest

from phy_probes.mea import MEA
from phy_probes.prb import ProbeError, read_prb, write_prb

GROUPS = {
    1: {"channels": [4, 2, 0], "graph": [(4, 2), (2, 0)],
        "geometry": {0: (0, 0), 2: (0, 20), 4: (0, 40)}},
    3: {"channels": [7, 8, 9, 10]},
}


def test_group_switching():
    mea = MEA(GROUPS, name="two")
    assert mea.channel_group == 1  # the first group by default
    assert mea.channels.tolist() == [4, 2, 0] and mea.channels.dtype == np.int64
    assert mea.n_channels == 3
    assert mea.positions.tolist() == [[0, 40], [0, 20], [0, 0]]  # in `channels` order
    assert mea.adjacency == {4: {2}, 2: {4, 0}, 0: {2}}
    assert mea.graph == [(0, 2), (2, 4)]
    mea.change_channel_group(3)
    assert mea.channel_group == 3
    assert mea.channels.tolist() == [7, 8, 9, 10]
    assert mea.all_channels.tolist() == [0, 2, 4, 7, 8, 9, 10]
    mea.change_channel_group(np.int64(1))
    assert mea.channel_group == 1


def test_unknown_group_lists_groups():
    mea = MEA(GROUPS, name="two")
    with pytest.raises(ProbeError, match=r"no channel group 5.*\[1, 3\]"):
        mea.change_channel_group(5)
    with pytest.raises(ProbeError):
        mea.change_channel_group("1")
    assert mea.channel_group == 1


def test_group_without_geometry_gets_linear_layout_and_note():
    mea = MEA(GROUPS, name="two")
    mea.change_channel_group(3)
    assert mea.positions.tolist() == [[0, 0], [0, 20], [0, 40], [0, 60]]
    # Graph computed from the assumed layout: each channel to its list neighbours.
    assert mea.graph == [(7, 8), (8, 9), (9, 10)]
    text = mea.describe()
    assert "group 3: 4 channels" in text
    assert "linear layout is assumed" in text
    assert text.count("linear layout") == 1  # group 1 has geometry


def test_single_group_mode():
    positions = [[0, 0], [20, 0], [0, 20], [100, 100]]
    mea = MEA(positions=positions, adjacency={0: [1], 1: [0, 1], 2: []})
    assert mea.channels.tolist() == [0, 1, 2, 3]
    assert mea.adjacency == {0: {1}, 1: {0}, 2: set(), 3: set()}  # self-loop dropped
    assert mea.positions.tolist() == positions
    computed = MEA(positions=positions)
    # Median NN distance 20 -> radius 35: the three close sites, not the far one.
    assert computed.graph == [(0, 1), (0, 2), (1, 2)]
    named = MEA(positions=positions[:2], channels=[10, 11], adjacency=[(10, 11)])
    assert named.adjacency == {10: {11}, 11: {10}}


@pytest.mark.parametrize("kwargs,match", [
    ({}, "give channel_groups"),
    ({"positions": [[0, 0, 0]]}, "shape"),
    ({"positions": [[0, float("nan")]]}, "finite"),
    ({"positions": [[0, 0]], "adjacency": [(0, 5)]}, "not in this group"),
    ({"positions": [[0, 0]], "adjacency": 3}, "adjacency must be"),
    ({"positions": [[0, 0], [1, 1]], "channels": [0]}, "2 positions for 1 channels"),
    ({"channel_groups": GROUPS, "positions": [[0, 0]]}, "not both"),
    ({"channel_groups": {0: {"channels": [0, 1]}, 1: {"channels": [1]}}}, "listed twice"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ProbeError, match=match):
        MEA(**kwargs)


def test_to_channel_groups_round_trip(tmp_path):
    mea = MEA(GROUPS, name="two")
    groups = mea.to_channel_groups()
    assert groups[3]["graph"] == [(7, 8), (8, 9), (9, 10)]
    assert groups[3]["geometry"] == {}  # the assumed layout is not written as geometry
    path = write_prb(tmp_path / "two.prb", groups)
    again = MEA(read_prb(path))
    for group in (1, 3):
        mea.change_channel_group(group)
        again.change_channel_group(group)
        assert again.channels.tolist() == mea.channels.tolist()
        assert again.graph == mea.graph
        assert np.array_equal(again.positions, mea.positions)


def test_graph_is_symmetric_even_when_given_one_way():
    mea = MEA({0: {"channels": [0, 1, 2], "graph": [(1, 0), (0, 1), (2, 2)]}})
    assert mea.graph == [(0, 1)]
    assert mea.adjacency == {0: {1}, 1: {0}, 2: set()}


def test_returned_arrays_are_copies():
    mea = MEA(positions=[[0, 0], [0, 20]])
    mea.positions[0] = 99
    mea.channels[0] = 99
    mea.adjacency[0].add(42)
    assert mea.positions[0].tolist() == [0, 0]
    assert mea.channels[0] == 0
    assert mea.adjacency[0] == {1}
