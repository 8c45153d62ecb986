"""The HDF5 wrapper: klusta's attribute encoding, overwrite rules, tree operations."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from phy_kwik.errors import KwikError
from phy_kwik.h5 import File, H5Error, open_h5


def test_write_read_overwrite(tmp_path):
    path = tmp_path / "a.h5"
    with open_h5(path, "w") as f:
        assert f.is_open()
        dset = f.write("/g/h/data", np.arange(5))
        assert dset.shape == (5,)
        with pytest.raises(H5Error, match="already exists"):
            f.write("/g/h/data", np.arange(3))
        f.write("/g/h/data", np.arange(3), overwrite=True)
        f.write("/g/empty", dtype=np.float32, shape=(2, 3))
        np.testing.assert_array_equal(f.read("/g/h/data")[:], [0, 1, 2])
        with pytest.raises(H5Error, match="does not exist"):
            f.read("/nope")
        with pytest.raises(H5Error, match="not a dataset"):
            f.read("/g/h")
        assert f.children("/g") == ["empty", "h"]
        assert f.groups("/g") == ["h"] and f.datasets("/g") == ["empty"]
        assert f.children("/missing") == []
    assert not f.is_open()


def test_attributes_klusta_encoding(tmp_path):
    path = tmp_path / "a.h5"
    with open_h5(path, "w") as f:
        f.write_attr("/x/y", "name", "hello")
        f.write_attr("/x/y", "names", ["a", "bc"])
        f.write_attr("/x/y", "flag", True)
        f.write_attr("/x/y", "nothing", None)
        f.write_attr("/x/y", "arr", np.array([1, 2], dtype=np.int32))
        assert f.attrs("/x/y") == ["arr", "flag", "name", "names", "nothing"]
        assert f.has_attr("/x/y", "flag") and not f.has_attr("/x/z", "flag")
        assert f.read_attr("/x/y", "name") == "hello"
        assert f.read_attr("/x/y", "names") == ["a", "bc"]
        assert f.read_attr("/x/y", "flag") == 1
        assert f.read_attr("/x/y", "nothing") == ""
        assert f.read_attr("/x/y", "missing", 7) == 7
        with pytest.raises(H5Error, match="no attribute"):
            f.read_attr("/x/y", "missing")
    # On disk: fixed-length byte strings in one-element arrays, as klusta wrote.
    with h5py.File(path, "r") as raw:
        value = raw["/x/y"].attrs["name"]
        assert value.dtype == np.dtype("S5") and value.shape == (1,)
        assert raw["/x/y"].attrs["flag"] == 1


def test_copy_move_delete_describe(tmp_path, capsys):
    with open_h5(tmp_path / "a.h5", "w") as f:
        f.write("/a/d", np.ones(3))
        f.write_attr("/a", "k", 1)
        f.copy("/a", "/b")
        assert f.read_attr("/b", "k") == 1 and f.exists("/b/d")
        f.move("/b", "/c/b")
        assert not f.exists("/b") and "/c/b/d" in f
        with pytest.raises(H5Error, match="already exists"):
            f.copy("/a", "/c/b")
        f.delete("c")
        assert not f.exists("/c")
        with pytest.raises(H5Error):
            f.delete("/c")
        text = f.describe()
    assert "/a/d" in text and "(3,)" in text and "/a/d" in capsys.readouterr().out


def test_open_errors(tmp_path):
    with pytest.raises(H5Error, match="no such file"):
        open_h5(tmp_path / "missing.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(KwikError, match="bad.h5"):
        open_h5(tmp_path / "bad.h5")
    f = File(tmp_path / "x.h5", "w")
    with pytest.raises(H5Error, match="not open"):
        f.read("/a")
