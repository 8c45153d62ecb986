"""Features and masks written straight into the .kwx, then adopted as the dataset."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phy_kwik import kwx_rows
from phy_kwik.creator import KwikCreator
from phy_kwik.errors import KwikError
from phy_kwik.kwx_rows import ALIGNMENT, _move
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
