"""Geometry of the built-in probes and adjacency computed from positions."""

import time

import numpy as np
import pytest

from phy_probes.builtin import list_probes, load_probe
from phy_probes.geometry import (
    DEFAULT_RADIUS_FACTOR,
    adjacency_from_positions,
    default_radius,
    edges_to_adjacency,
    grid_positions,
    neuropixels1_positions,
)


def _brute_force_edges(channels, positions, radius):
    """Independent O(n^2) reference."""
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=2)
    i, j = np.nonzero(np.triu(d <= radius, k=1))
    return sorted((min(channels[a], channels[b]), max(channels[a], channels[b]))
                  for a, b in zip(i, j))


def test_list_probes():
    assert list_probes() == ["linear32", "buzsaki32", "neuropixels1", "dense1024"]


@pytest.mark.parametrize("name,n_channels,n_groups", [
    ("linear32", 32, 1), ("buzsaki32", 32, 4), ("neuropixels1", 384, 1), ("dense1024", 1024, 1),
])
def test_builtin_channel_counts_and_unique_positions(name, n_channels, n_groups):
    probe = load_probe(name)
    assert len(probe.all_channels) == n_channels
    assert np.array_equal(probe.all_channels, np.arange(n_channels))
    assert len(probe.channel_groups) == n_groups
    positions = []
    for group in probe.channel_groups:
        probe.change_channel_group(group)
        assert probe.positions.shape == (probe.n_channels, 2)
        assert probe.positions.dtype == np.float64
        positions.append(probe.positions)
    positions = np.concatenate(positions)
    assert len(np.unique(positions, axis=0)) == n_channels


def test_linear32_pitch():
    probe = load_probe("linear32")
    assert np.all(probe.positions[:, 0] == 0)
    assert np.allclose(np.diff(probe.positions[:, 1]), 20.0)
    # One column at 20 um: each site is adjacent to the one above and below only.
    assert probe.graph == [(i, i + 1) for i in range(31)]


def test_buzsaki32_shanks_and_klusta_graph():
    probe = load_probe("buzsaki32")
    assert list(probe.channel_groups) == [0, 1, 2, 3]
    x_centres = []
    for shank in range(4):
        probe.change_channel_group(shank)
        assert probe.channels.tolist() == list(range(8 * shank, 8 * shank + 8))
        xy = probe.positions
        assert np.allclose(np.diff(xy[:, 1]), 20.0)          # 20 um in depth
        assert np.all(np.sign(xy[1:, 0] - xy[0, 0])[::2] < 0)  # zig-zag: left, right, ...
        assert np.all(np.sign(xy[2:, 0] - xy[0, 0])[::2] > 0)
        x_centres.append(xy[0, 0])
        # klusta's hand-made graph: each site to the next and next-but-one in depth.
        c = 8 * shank
        expected = sorted({(c + i, c + i + 1) for i in range(7)}
                          | {(c + i, c + i + 2) for i in range(6)})
        assert probe.graph == expected
    assert np.allclose(np.diff(x_centres), 200.0)


def test_neuropixels1_geometry():
    xy = load_probe("neuropixels1").positions
    assert xy[:4].tolist() == [[43, 20], [11, 20], [59, 40], [27, 40]]
    assert sorted(np.unique(xy[:, 0])) == [11, 27, 43, 59]
    assert np.all(np.bincount((xy[:, 1] // 20).astype(int))[1:] == 2)  # two sites per row
    assert xy[:, 1].max() == 20 * 192
    # Checkerboard: even rows use columns 11 and 43, odd rows 27 and 59.
    rows = (xy[:, 1] // 20).astype(int) - 1
    assert set(xy[rows % 2 == 0, 0]) == {11, 43}
    assert set(xy[rows % 2 == 1, 0]) == {27, 59}


def test_neuropixels1_adjacency_is_local():
    probe = load_probe("neuropixels1")
    xy, channels = probe.positions, probe.channels
    radius = default_radius(xy)
    assert radius == pytest.approx(DEFAULT_RADIUS_FACTOR * np.hypot(16, 20))
    degrees = {c: len(n) for c, n in probe.adjacency.items()}
    assert min(degrees.values()) >= 2 and max(degrees.values()) <= 8
    position = {c: xy[i] for i, c in enumerate(channels)}
    for c0, c1 in probe.graph:
        assert np.linalg.norm(position[c0] - position[c1]) <= radius
    # A site in the middle: the two diagonals above and below, the other site of its
    # row, and the same column two rows (40 um) away on both sides.
    assert probe.adjacency[100] == {96, 98, 99, 101, 102, 103, 104}


def test_dense1024_has_8_neighbourhood():
    probe = load_probe("dense1024")
    degrees = np.array([len(probe.adjacency[c]) for c in range(1024)])
    assert degrees.max() == 8 and degrees.min() == 3  # inner sites, corners
    assert (degrees == 8).sum() == 30 * 30


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adjacency_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 300
    positions = rng.uniform(0, 500, size=(n, 2))
    channels = rng.permutation(1000)[:n]
    for radius in (None, 30.0, 0.0):
        expected_radius = default_radius(positions) if radius is None else radius
        edges = adjacency_from_positions(channels, positions, radius)
        assert edges == _brute_force_edges(channels, positions, expected_radius)


def test_adjacency_symmetric_without_self_loops():
    edges = adjacency_from_positions(np.arange(64), grid_positions(8, 8))
    adjacency = edges_to_adjacency(range(64), edges)
    assert all(c not in n for c, n in adjacency.items())
    assert all(c in adjacency[m] for c, n in adjacency.items() for m in n)


def test_adjacency_degenerate_inputs():
    assert adjacency_from_positions([3], [[0, 0]]) == []
    # Two sites at the same place: no typical distance, no edges, no crash.
    assert adjacency_from_positions([0, 1], [[5, 5], [5, 5]]) == []
    with pytest.raises(ValueError):
        adjacency_from_positions([0, 1], [[0, 0]])


def test_adjacency_scales_to_4096_channels():
    positions = grid_positions(64, 64, 20.0)
    start = time.perf_counter()
    edges = adjacency_from_positions(np.arange(4096), positions)
    elapsed = time.perf_counter() - start
    # 8-neighbourhood on a 64 x 64 grid: horizontal + vertical + 2 diagonal directions.
    assert len(edges) == 2 * 64 * 63 + 2 * 63 * 63
    assert elapsed < 2.0


def test_neuropixels1_positions_longer_probe():
    xy = neuropixels1_positions(960)
    assert xy.shape == (960, 2) and len(np.unique(xy, axis=0)) == 960
