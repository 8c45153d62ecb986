"""Lazy array views behave like the numpy arrays they stand for."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phy_core.arrays import ChannelSubset, ConcatenatedArrays, SpikeWindows, normalize_rows


class CountingArray:
    """An array that records which rows were read (to check laziness)."""

    def __init__(self, data):
        self.data = data
        self.shape, self.dtype = data.shape, data.dtype
        self.rows_read = 0

    def __getitem__(self, item):
        out = self.data[item]
        self.rows_read += len(out)
        return out


@pytest.fixture
def traces():
    return np.random.default_rng(0).integers(-100, 100, (200, 6)).astype(np.int16)


def test_channel_subset_matches_numpy_and_is_lazy(traces):
    source = CountingArray(traces)
    view = ChannelSubset(source, [4, 0, 2])
    assert view.shape == (200, 3) and len(view) == 200
    expected = traces[:, [4, 0, 2]]
    for item in [slice(10, 20), 5, [3, 1, 199], (slice(0, 5), 1), (slice(0, 5), [2, 0])]:
        np.testing.assert_array_equal(view[item], expected[item])
    assert source.rows_read < 40
    np.testing.assert_array_equal(np.asarray(view), expected)
    with pytest.raises(ValueError, match="out of range"):
        ChannelSubset(traces, [6])


def test_spike_windows_with_padding_at_edges(traces):
    samples = np.array([0, 50, 198])
    windows = SpikeWindows(traces, samples, n_before=3, n_after=4, channels=[1, 5])
    assert windows.shape == (3, 7, 2)
    padded = np.zeros((210, 6), np.float32)
    padded[5:205] = traces
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(windows[i], padded[s + 5 - 3:s + 5 + 4][:, [1, 5]])
    np.testing.assert_array_equal(windows[[2, 0]][0], windows[2])
    assert windows[1:, 2:4, 0].shape == (2, 2)


def test_spike_windows_filter_uses_margins(traces):
    # With a margin, the window equals the filtered whole array around the spike.
    def diff(chunk):  # along axis -2 (time), for (n, c) and (k, n, c) arrays
        out = np.zeros_like(chunk)
        out[..., 1:, :] = np.diff(chunk, axis=-2)
        return out

    whole = diff(traces.astype(np.float32))
    windows = SpikeWindows(traces, [100], 5, 5, filter=diff, margin=2)
    np.testing.assert_array_equal(windows[0], whole[95:105])
    no_margin = SpikeWindows(traces, [100], 5, 5, filter=diff, margin=0)
    assert not np.array_equal(no_margin[0], whole[95:105])



def test_spike_windows_filter_called_once_per_indexing(traces):
    calls = []

    def spy(windows):
        calls.append(windows.shape)
        return windows

    windows = SpikeWindows(traces, [0, 50, 100, 198], 3, 4, channels=[1, 5], filter=spy,
                           margin=2)
    unfiltered = SpikeWindows(traces, [0, 50, 100, 198], 3, 4, channels=[1, 5])
    np.testing.assert_array_equal(windows[[3, 0, 1]], unfiltered[[3, 0, 1]])
    assert calls == [(3, 3 + 4 + 2 * 2, 2)]
    np.testing.assert_array_equal(windows[2], unfiltered[2])
    assert len(calls) == 2 and calls[1] == (1, 11, 2)
    assert windows[2:2].shape == (0, 7, 2) and len(calls) == 2

@settings(max_examples=200, deadline=None)
@given(st.data())
def test_concatenated_and_normalize_rows_match_numpy(data):
    sizes = data.draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    full = np.arange(sum(sizes) * 2).reshape(-1, 2)
    parts = np.split(full, np.cumsum(sizes)[:-1])
    concatenated = ConcatenatedArrays(parts)
    n = len(full)
    item = data.draw(st.one_of(
        st.slices(max(n, 1)),
        st.lists(st.integers(-n, n - 1), max_size=5) if n else st.just([]),
        st.integers(-n, n - 1) if n else st.just(slice(None)),
    ))
    np.testing.assert_array_equal(concatenated[item], full[item])
    if isinstance(item, list):
        assert list(np.atleast_1d(normalize_rows(item, n))) == [i % n for i in item]


def test_flat_binary_source_looks_through_views(tmp_path, traces):
    from phy_core.arrays import flat_binary_source

    paths = [tmp_path / "a.dat", tmp_path / "b.dat"]
    traces[:100].tofile(paths[0])
    traces[100:].tofile(paths[1])
    maps = [np.memmap(p, dtype=np.int16, mode="r", shape=(100, 6)) for p in paths]
    source = flat_binary_source(ChannelSubset(ConcatenatedArrays(maps), [5, 1]))
    assert source["files"] == [str(p) for p in paths]
    assert source["dtype"] == np.dtype(np.int16).str and source["offset"] == 0
    assert source["n_channels"] == 6 and source["channels"].tolist() == [5, 1]
    assert flat_binary_source(traces) is None  # in memory: no file to point at
