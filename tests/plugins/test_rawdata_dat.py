"""Flat binary traces: `read_dat` and `ConcatenatedArrays`."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phy_rawdata.dat import ConcatenatedArrays, RawDataError, read_dat


def _write(path, array, header=b""):
    path.write_bytes(header + np.ascontiguousarray(array).tobytes())
    return path


@pytest.fixture
def data():
    return np.random.default_rng(0).integers(-1000, 1000, (101, 7)).astype(np.int16)


def test_shape_from_size_and_memmap(tmp_path, data):
    path = _write(tmp_path / "a.dat", data)
    traces = read_dat(path, dtype="int16", n_channels=7)
    assert isinstance(traces, np.memmap)
    assert traces.shape == (101, 7)
    np.testing.assert_array_equal(traces, data)
    # The explicit shape is checked against the file size.
    assert read_dat(path, dtype=np.int16, shape=(101, 7)).shape == (101, 7)
    with pytest.raises(RawDataError, match=r"\(100, 7\) disagrees .* \(101, 7\)"):
        read_dat(path, dtype=np.int16, shape=(100, 7))


def test_offset_skips_the_header(tmp_path, data):
    path = _write(tmp_path / "h.dat", data, header=b"HEADER!")
    traces = read_dat(path, dtype="<i2", n_channels=7, offset=7)
    np.testing.assert_array_equal(traces, data)


def test_several_files_equal_concatenate(tmp_path, data):
    parts = [data[:30], data[30:31], data[31:]]
    paths = [_write(tmp_path / f"p{i}.dat", p) for i, p in enumerate(parts)]
    traces = read_dat(paths, dtype="int16", n_channels=7)
    assert isinstance(traces, ConcatenatedArrays)
    assert traces.shape == data.shape and traces.dtype == np.int16 and len(traces) == 101
    np.testing.assert_array_equal(np.asarray(traces), np.concatenate(parts))
    # A single-element list is just that file.
    assert isinstance(read_dat(paths[:1], dtype="int16", n_channels=7), np.memmap)
    with pytest.raises(RawDataError, match="disagrees"):
        read_dat(paths, dtype="int16", shape=(100, 7))


INDICES = [
    slice(None), slice(10, 40), slice(25, 35), slice(-5, None), slice(None, None, 3),
    slice(90, 10, -7), slice(50, 20), 0, 30, 31, -1, [5, 31, 30, 30, 0, 100],
    np.array([[1, 2], [99, 40]]), np.arange(101) % 3 == 0, np.array([], dtype=int),
    (slice(20, 60), 3), (slice(None), [6, 0, 2]), (31, slice(1, 4)), ([3, 50], [1, 1]),
]


@pytest.mark.parametrize("index", INDICES, ids=repr)
def test_concatenated_indexing_matches_numpy(tmp_path, data, index):
    paths = [_write(tmp_path / f"p{i}.dat", p)
             for i, p in enumerate([data[:30], data[30:31], data[31:]])]
    traces = read_dat(paths, dtype="int16", n_channels=7)
    np.testing.assert_array_equal(traces[index], data[index])


def test_concatenated_out_of_bounds_is_index_error(tmp_path, data):
    traces = ConcatenatedArrays([data[:50], data[50:]])
    for index in (101, -102, [0, 101]):
        with pytest.raises(IndexError):
            traces[index]


def test_scattered_fancy_index_reads_only_those_rows(data):
    big = np.zeros((100_000, 2), dtype=np.int16)
    big[::1000] = 1
    traces = ConcatenatedArrays([big[:50_000], big[50_000:]])
    index = np.arange(0, 100_000, 1000)[::-1]
    np.testing.assert_array_equal(traces[index], np.ones((100, 2)))


def test_size_not_a_multiple_gives_the_numbers(tmp_path, data):
    path = _write(tmp_path / "odd.dat", data, header=b"xyz")
    with pytest.raises(RawDataError) as info:
        read_dat(path, dtype="int16", n_channels=7)
    message = str(info.value)
    # 101 * 7 * 2 + 3 = 1417 bytes, frame = 14 bytes, 101 full samples, 3 bytes left.
    for number in ("1417", "14 bytes", "101 full samples", "3 bytes left", "odd.dat"):
        assert number in message


def test_missing_file_and_bad_arguments(tmp_path, data):
    path = _write(tmp_path / "a.dat", data)
    with pytest.raises(RawDataError, match="nope.dat: no such file"):
        read_dat(tmp_path / "nope.dat", dtype="int16", n_channels=7)
    with pytest.raises(RawDataError, match="nope.dat: no such file"):
        read_dat([path, tmp_path / "nope.dat"], dtype="int16", n_channels=7)
    for dtype in ("int17", "complex64", "bool", "i4,i4", "object", "U3"):
        with pytest.raises(RawDataError, match="a.dat"):
            read_dat(path, dtype=dtype, n_channels=7)
    with pytest.raises(RawDataError, match="dtype"):
        read_dat(path, n_channels=7)
    with pytest.raises(RawDataError, match="n_channels"):
        read_dat(path, dtype="int16")
    with pytest.raises(RawDataError, match="n_channels must be a positive"):
        read_dat(path, dtype="int16", n_channels=0)
    with pytest.raises(RawDataError, match="offset"):
        read_dat(path, dtype="int16", n_channels=7, offset=-2)
    with pytest.raises(RawDataError, match="less than the offset"):
        read_dat(path, dtype="int16", n_channels=7, offset=10_000)
    with pytest.raises(RawDataError, match="directory"):
        read_dat(tmp_path, dtype="int16", n_channels=7)
    with pytest.raises(RawDataError, match="no file"):
        read_dat([], dtype="int16", n_channels=7)


def test_files_with_different_channel_counts_refused(tmp_path, data):
    a = _write(tmp_path / "a.dat", data[:, :2])
    b = _write(tmp_path / "b.dat", data[:, :3])
    with pytest.raises(ValueError, match="differ"):
        ConcatenatedArrays([read_dat(a, dtype="int16", n_channels=2),
                            read_dat(b, dtype="int16", n_channels=3)])


def test_empty_file_gives_zero_samples(tmp_path):
    path = tmp_path / "empty.dat"
    path.write_bytes(b"")
    assert read_dat(path, dtype="float32", n_channels=4).shape == (0, 4)


@settings(max_examples=60, deadline=None)
@given(
    n_bytes=st.integers(0, 400),
    n_channels=st.integers(-2, 9),
    offset=st.integers(-3, 40),
    dtype=st.sampled_from(["int16", "uint8", "float32", "float64", "int32", "bad", "c8"]),
    n_files=st.integers(1, 3),
)
def test_random_sizes_give_correct_array_or_clean_error(n_bytes, n_channels, offset, dtype,
                                                        n_files):
    raw = np.random.default_rng(n_bytes).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n_files):
            paths.append(Path(tmp) / f"f{i}.dat")
            paths[-1].write_bytes(raw)
        try:
            traces = read_dat(paths, dtype=dtype, n_channels=n_channels, offset=offset)
        except RawDataError:
            return
        # Success only when everything is consistent, and then the data is right.
        itemsize = np.dtype(dtype).itemsize
        assert n_channels >= 1 and 0 <= offset <= n_bytes
        assert (n_bytes - offset) % (n_channels * itemsize) == 0
        one = np.frombuffer(raw[offset:], dtype=dtype).reshape(-1, n_channels)
        expected = np.concatenate([one] * n_files)
        assert traces.shape == expected.shape
        np.testing.assert_array_equal(np.asarray(traces), expected)
        del traces  # release the memmaps before the folder goes
