"""Features and masks written straight into the .kwx, then adopted as the dataset."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phy_kwik import kwx_rows
from phy_kwik.creator import KwikCreator
from phy_kwik.errors import KwikError
from phy_kwik.kwx_rows import ALIGNMENT, KwxRowWriter, _move
from phy_kwik.model import KwikModel

N_CHANNELS, N_PCS = 8, 3


def _rows(rng, n):
    features = rng.normal(size=(n, N_CHANNELS * N_PCS)).astype(np.float32)
    masks = np.repeat(rng.random((n, N_CHANNELS)), N_PCS, axis=1).astype(np.float32)
    return np.stack([features, masks], axis=-1)


def _creator(tmp_path, name="rec"):
    creator = KwikCreator(tmp_path / name)
    creator.create_empty()
    groups = {g: list(range(g * N_CHANNELS, (g + 1) * N_CHANNELS)) for g in range(3)}
    creator.set_probe({g: {"channels": channels, "graph": [],
                           "geometry": {c: (0.0, 20.0 * c) for c in channels}}
                       for g, channels in groups.items()})
    creator.add_recording(0, sample_rate=20000.0)
    creator.set_metadata("/application_data/spikedetekt", n_features_per_channel=N_PCS,
                         sample_rate=20000.0)
    return creator


@pytest.mark.parametrize("shift", [0, ALIGNMENT])
def test_rows_become_the_dataset_in_place_or_moved(tmp_path, shift):
    rng = np.random.default_rng(0)
    rows = _rows(rng, 9000)  # 1.7 MB: the data are aligned
    creator = _creator(tmp_path)
    writer = creator.kwx_row_writer(N_CHANNELS * N_PCS)
    # shift: the rows start one alignment step further than HDF5 will place the dataset.
    writer.start += shift
    for part in np.array_split(rows, 7):
        writer.append(part)
    writer.append(rows[:0])  # nothing
    assert writer.n_rows == len(rows)
    creator.add_spikes(0, np.arange(len(rows), dtype=float), features_masks=writer)
    creator.add_clustering(0, "main", np.zeros(len(rows), dtype=np.int64))
    with h5py.File(tmp_path / "rec.kwx", "r") as f:
        dataset = f["/channel_groups/0/features_masks"]
        np.testing.assert_array_equal(dataset[...], rows)
        # Contiguous, at an aligned offset: memory-mappable by the model.
        assert dataset.id.get_offset() % ALIGNMENT == 0
        assert dataset.id.get_offset() == writer.start - shift
    with KwikModel(tmp_path / "rec.kwik") as model:
        np.testing.assert_array_equal(np.asarray(model.features[:]), rows[..., 0])
        np.testing.assert_array_equal(np.asarray(model.masks[:]), rows[:, ::N_PCS, 1])


def test_several_groups_small_and_empty(tmp_path):
    rng = np.random.default_rng(1)
    creator = _creator(tmp_path)
    expected = {0: _rows(rng, 5000), 1: _rows(rng, 3), 2: _rows(rng, 0)}
    for group, rows in expected.items():
        writer = creator.kwx_row_writer(N_CHANNELS * N_PCS)
        writer.append(rows.tobytes())
        creator.add_spikes(group, np.arange(len(rows), dtype=float), features_masks=writer)
    with h5py.File(tmp_path / "rec.kwx", "r") as f:
        for group, rows in expected.items():
            np.testing.assert_array_equal(f[f"/channel_groups/{group}/features_masks"][...],
                                          rows)


def test_bad_rows_are_refused(tmp_path):
    rng = np.random.default_rng(2)
    creator = _creator(tmp_path)
    writer = creator.kwx_row_writer(N_CHANNELS * N_PCS)
    with pytest.raises(KwikError, match="whole rows"):
        writer.append(b"\0" * 10)
    writer.append(_rows(rng, 4))
    with pytest.raises(KwikError, match="4 feature rows for 5 spikes"):
        creator.add_spikes(0, np.arange(5, dtype=float), features_masks=writer)
    with pytest.raises(KwikError, match="closed"):
        writer.append(_rows(rng, 1))


def test_a_row_that_does_not_read_back_is_an_error(tmp_path, monkeypatch):
    # If the rows were not where HDF5 put the dataset, the check says so.
    rng = np.random.default_rng(3)
    creator = _creator(tmp_path)
    writer = creator.kwx_row_writer(N_CHANNELS * N_PCS)
    writer.start += ALIGNMENT  # the rows go one step above where the dataset will be...
    writer.append(_rows(rng, 9000))
    monkeypatch.setattr(kwx_rows, "_move", lambda *args: None)  # ...and are not moved
    with pytest.raises(KwikError, match="does not read back"):
        creator.add_spikes(0, np.arange(9000, dtype=float), features_masks=writer)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 300), source=st.integers(0, 200), destination=st.integers(0, 200))
def test_move_is_memmove(tmp_path_factory, size, source, destination):
    path = tmp_path_factory.mktemp("move") / "f"
    data = np.arange(600, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    original = kwx_rows._COPY_BLOCK
    kwx_rows._COPY_BLOCK = 7  # small blocks: overlapping moves span several
    try:
        _move(path, source, destination, size)
    finally:
        kwx_rows._COPY_BLOCK = original
    expected = data.copy()
    expected[destination:destination + size] = data[source:source + size]
    got = np.frombuffer(path.read_bytes(), np.uint8)
    np.testing.assert_array_equal(got[:len(expected)], expected)


def _direct_io_works(directory) -> bool:
    """Whether this file system takes direct writes from aligned memory."""
    path = directory / "probe-direct"
    path.write_bytes(b"")
    fd = kwx_rows._open_direct(path)
    if fd is None:
        return False
    try:
        kwx_rows._pwrite_all(fd, kwx_rows._aligned_buffer(kwx_rows.BLOCK), 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        path.unlink()


@settings(max_examples=25, deadline=None)
@given(n_channels=st.sampled_from([8, 64, 384, 1024]),
       sizes=st.lists(st.integers(0, 40), min_size=1, max_size=8),
       misalign=st.lists(st.sampled_from([0, 0, 4, 512]), min_size=8, max_size=8),
       direct=st.booleans())
def test_rows_in_any_pieces_read_back(tmp_path_factory, n_channels, sizes, misalign, direct):
    # Whatever the pieces (partial blocks carried over, memory not aligned for direct
    # I/O, direct writes on or off), the file holds exactly the rows appended.
    directory = tmp_path_factory.mktemp("pieces")
    n_columns = n_channels * N_PCS
    rng = np.random.default_rng(sum(sizes))
    rows = rng.normal(size=(sum(sizes), n_columns, 2)).astype(np.float32)
    path = directory / "rec.kwx"
    path.write_bytes(b"\1" * 100)
    writer = KwxRowWriter(path, n_columns, direct=direct)
    bounds = np.cumsum([0, *sizes])
    for (a, b), shift in zip(zip(bounds[:-1], bounds[1:]), misalign):
        # The piece at an address `shift` bytes past an aligned one.
        buffer = kwx_rows._aligned_buffer(rows[a:b].nbytes + shift)
        piece = buffer[shift:]
        piece[:] = rows[a:b].reshape(-1).view(np.uint8)
        writer.append(piece.data)  # bytes, as from the runner's shared memory
    writer.close()
    data = np.fromfile(path, np.uint8)
    assert np.all(data[:100] == 1)
    got = data[writer.start:].view(np.float32).reshape(-1, n_columns, 2)
    np.testing.assert_array_equal(got, rows)
    assert writer.n_rows == len(rows)
    if not direct:
        assert writer.direct_bytes == 0


def test_whole_blocks_go_direct_where_the_file_system_takes_them(tmp_path):
    if not _direct_io_works(tmp_path):
        pytest.skip("no direct I/O on this file system")
    n_columns = 384 * N_PCS  # 9216-byte rows: blocks and rows do not line up
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(1000, n_columns, 2)).astype(np.float32)
    path = tmp_path / "rec.kwx"
    path.write_bytes(b"")
    writer = KwxRowWriter(path, n_columns)
    for part in np.array_split(rows, 13):
        piece = kwx_rows._aligned_buffer(part.nbytes)  # as the runner's shared memory is
        piece[:] = part.reshape(-1).view(np.uint8)
        writer.append(piece.data)
    writer.close()
    # Everything but the last partial block went direct (the carried-over blocks too).
    assert writer.direct_bytes > rows.nbytes - kwx_rows.BLOCK
    got = np.fromfile(path, np.uint8)[writer.start:].view(np.float32)
    np.testing.assert_array_equal(got.reshape(rows.shape), rows)


def test_a_file_system_without_direct_io_gets_the_same_bytes(tmp_path):
    # /dev/shm (tmpfs) refuses O_DIRECT on most kernels; either way the bytes are right.
    directory = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    path = directory / f"phy-test-{os.getpid()}.kwx"
    rows = np.random.default_rng(5).normal(size=(300, 64 * N_PCS, 2)).astype(np.float32)
    try:
        path.write_bytes(b"")
        writer = KwxRowWriter(path, 64 * N_PCS)
        for part in np.array_split(rows, 7):
            writer.append(part)
        writer.close()
        got = np.fromfile(path, np.uint8)[writer.start:].view(np.float32)
        np.testing.assert_array_equal(got.reshape(rows.shape), rows)
    finally:
        path.unlink(missing_ok=True)
