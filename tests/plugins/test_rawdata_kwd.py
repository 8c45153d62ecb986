"""``.raw.kwd`` files: `read_kwd`, `read_kwd_recordings`."""

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phy_rawdata.dat import RawDataError
from phy_rawdata.kwd import H5Traces, KwdError, read_kwd, read_kwd_recordings


def _recordings(n_channels=5):
    rng = np.random.default_rng(1)
    return [rng.integers(-500, 500, (n, n_channels)).astype(np.int16) for n in (40, 1, 63)]


def _write_kwd(path, recordings, **dataset_options):
    with h5py.File(path, "w") as f:
        for i, data in enumerate(recordings):
            f.create_dataset(f"recordings/{i}/data", data=data, **dataset_options)
    return path


def test_contiguous_datasets_are_memory_mapped(tmp_path):
    recs = _recordings()
    path = _write_kwd(tmp_path / "x.raw.kwd", recs)
    arrays = read_kwd_recordings(path)
    assert all(isinstance(a, np.memmap) for a in arrays)
    for a, r in zip(arrays, recs):
        np.testing.assert_array_equal(a, r)
    traces = read_kwd(path)
    assert traces.shape == (104, 5) and traces.dtype == np.int16
    np.testing.assert_array_equal(np.asarray(traces), np.concatenate(recs))


def test_chunked_compressed_path_gives_the_same_data(tmp_path):
    recs = _recordings()
    plain = read_kwd(_write_kwd(tmp_path / "plain.raw.kwd", recs))
    packed_arrays = read_kwd_recordings(
        _write_kwd(tmp_path / "packed.raw.kwd", recs, chunks=True, compression="gzip"))
    assert all(isinstance(a, H5Traces) for a in packed_arrays)
    packed = read_kwd(tmp_path / "packed.raw.kwd")
    expected = np.concatenate(recs)
    for index in (slice(None), slice(35, 45), slice(None, None, -4), 41, -1,
                  [60, 2, 41, 41, 40], np.arange(104) % 5 == 1, (slice(10, 50), [4, 0]),
                  ([3, 90], [1, 2])):
        np.testing.assert_array_equal(plain[index], expected[index])
        np.testing.assert_array_equal(packed[index], expected[index])
    for array in packed_arrays:
        array.close()


def test_open_file_is_accepted_and_left_open(tmp_path):
    recs = _recordings()
    path = _write_kwd(tmp_path / "x.raw.kwd", recs, chunks=(1, 5))
    with h5py.File(path, "r") as f:
        traces = read_kwd(f)
        np.testing.assert_array_equal(traces[38:42], np.concatenate(recs)[38:42])
        traces.arrays[0].close()  # not ours to close
        assert f.id.valid


def test_in_memory_file_is_read_through_h5py():
    recs = _recordings()
    with h5py.File("mem.raw.kwd", "w", driver="core", backing_store=False) as f:
        for i, data in enumerate(recs):
            f.create_dataset(f"recordings/{i}/data", data=data)
        arrays = read_kwd_recordings(f)
        assert not any(isinstance(a, np.memmap) for a in arrays)
        np.testing.assert_array_equal(np.asarray(read_kwd(f)), np.concatenate(recs))


def test_recordings_sorted_numerically(tmp_path):
    recs = [np.full((2, 3), i, dtype=np.float32) for i in range(12)]
    path = tmp_path / "many.raw.kwd"
    with h5py.File(path, "w") as f:
        for i in reversed(range(12)):  # "10" sorts before "2" as text
            f.create_dataset(f"recordings/{i}/data", data=recs[i])
    np.testing.assert_array_equal(read_kwd(path)[::2, 0], np.arange(12))


def test_errors_name_the_file(tmp_path):
    with pytest.raises(KwdError, match="missing.raw.kwd: no such file"):
        read_kwd(tmp_path / "missing.raw.kwd")
    text = tmp_path / "text.raw.kwd"
    text.write_text("hello")
    with pytest.raises(KwdError, match="text.raw.kwd: not an HDF5 file"):
        read_kwd(text)
    empty = tmp_path / "empty.raw.kwd"
    with h5py.File(empty, "w") as f:
        f.create_group("other")
    with pytest.raises(KwdError, match="empty.raw.kwd: no /recordings"):
        read_kwd(empty)
    mixed = _write_kwd(tmp_path / "mixed.raw.kwd",
                       [np.zeros((4, 3), np.int16), np.zeros((4, 2), np.int16)])
    with pytest.raises(KwdError, match=r"mixed.raw.kwd: .*different channel counts.*"
                                       r"recording 0: 3, recording 1: 2"):
        read_kwd(mixed)
    flat = _write_kwd(tmp_path / "flat.raw.kwd", [np.zeros(10, np.int16)])
    with pytest.raises(KwdError, match=r"flat.raw.kwd: /recordings/0/data: expected a 2-D"):
        read_kwd(flat)
    nodata = tmp_path / "nodata.raw.kwd"
    with h5py.File(nodata, "w") as f:
        f.create_group("recordings/0")
    with pytest.raises(KwdError, match="nodata.raw.kwd: /recordings/0/data: missing"):
        read_kwd(nodata)
    strings = tmp_path / "strings.raw.kwd"
    with h5py.File(strings, "w") as f:
        f.create_dataset("recordings/0/data", data=np.array([[b"a", b"b"]]))
    with pytest.raises(KwdError, match="integer or float"):
        read_kwd(strings)
    named = tmp_path / "named.raw.kwd"
    with h5py.File(named, "w") as f:
        f.create_dataset("recordings/first/data", data=np.zeros((2, 2)))
    with pytest.raises(KwdError, match="numbered"):
        read_kwd(named)
    assert issubclass(KwdError, RawDataError)


def test_truncated_file_is_a_clean_error(tmp_path):
    path = _write_kwd(tmp_path / "t.raw.kwd", [np.ones((1000, 8), np.int16)])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 4000])
    with pytest.raises(KwdError, match="t.raw.kwd"):
        np.asarray(read_kwd(path))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.booleans())
def test_random_bytes_only_raise_kwd_error(raw, with_signature):
    if with_signature:  # get past the signature check into h5py's parser
        raw = b"\x89HDF\r\n\x1a\n" + raw
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.raw.kwd"
        path.write_bytes(raw)
        with pytest.raises(KwdError, match="random.raw.kwd"):
            read_kwd(path)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.booleans())
def test_corrupted_kwd_only_raises_kwd_error_or_reads(data, compressed):
    rec = np.arange(4000, dtype=np.int16).reshape(1000, 4)
    options = dict(chunks=(100, 4), compression="gzip") if compressed else {}
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_kwd(Path(tmp) / "c.raw.kwd", [rec], **options)
        raw = bytearray(path.read_bytes())
        n = data.draw(st.integers(1, 8))
        for _ in range(n):
            position = data.draw(st.integers(0, len(raw) - 1))
            raw[position] = data.draw(st.integers(0, 255))
        path.write_bytes(bytes(raw))
        try:
            traces = read_kwd(path)
            out = np.asarray(traces[:])
        except KwdError:
            return
        assert out.shape[0] >= 0
