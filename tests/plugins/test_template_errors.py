"""Property tests: malformed template directories raise only TemplateFormatError."""

import shutil

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phy_core.model import check_model
from phy_template.model import TemplateModel
from phy_template.tsv import TemplateFormatError

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _fresh(make_dir, tmp_path, name="ks"):
    d = tmp_path / name
    if d.exists():
        shutil.rmtree(d)
    make_dir(d)
    return d


def _open_cleanly(d):
    """Open `d`: either a clean error, or a consistent model whose arrays can be read."""
    try:
        model = TemplateModel(d)
    except TemplateFormatError as exc:
        assert str(exc)
        return None
    assert check_model(model) == []
    model.features[:]
    model.masks[:]
    model.waveforms[:3]
    return model


_values = st.one_of(
    st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(),
    st.none(), st.lists(st.text(max_size=5), max_size=2), st.just("raw.dat"), st.just("int16"),
)
_keys = st.sampled_from(["dat_path", "n_channels_dat", "dtype", "offset", "sample_rate",
                         "hp_filtered", "other"])


@SETTINGS
@given(st.dictionaries(_keys, _values, max_size=7))
def test_params_values(tmp_path, make_template_dir, params):
    d = _fresh(make_template_dir, tmp_path)
    (d / "params.py").write_text("".join(f"{k} = {v!r}\n" for k, v in params.items()))
    _open_cleanly(d)


@SETTINGS
@given(st.text(max_size=80))
def test_params_text(tmp_path, make_template_dir, text):
    d = _fresh(make_template_dir, tmp_path)
    (d / "params.py").write_text(text, encoding="utf-8", errors="replace")
    _open_cleanly(d)


_NAMES = ["spike_times.npy", "spike_templates.npy", "spike_clusters.npy", "amplitudes.npy",
          "templates.npy", "channel_map.npy", "channel_positions.npy", "pc_features.npy",
          "pc_feature_ind.npy", "similar_templates.npy", "whitening_mat_inv.npy"]
_DTYPES = ["int16", "uint32", "int64", "float32", "float64", "bool", "complex64", "U2"]


@SETTINGS
@given(st.sampled_from(_NAMES), st.sampled_from(_DTYPES),
       st.lists(st.integers(0, 13), min_size=0, max_size=3), st.integers(0, 2**32 - 1))
def test_bad_arrays(tmp_path, make_template_dir, name, dtype, shape, seed):
    d = _fresh(make_template_dir, tmp_path)
    rng = np.random.default_rng(seed)
    values = rng.integers(-3, 20, size=shape)
    np.save(d / name, values.astype(dtype))
    _open_cleanly(d)


@SETTINGS
@given(st.sampled_from(_NAMES + ["params.py", "cluster_group.tsv"]), st.binary(max_size=200))
def test_garbage_files(tmp_path, make_template_dir, name, data):
    d = _fresh(make_template_dir, tmp_path)
    (d / name).write_bytes(data)
    _open_cleanly(d)


@SETTINGS
@given(st.lists(st.integers(-2, 5), min_size=12, max_size=12))
def test_template_ids(tmp_path, make_template_dir, ids):
    d = _fresh(make_template_dir, tmp_path)
    np.save(d / "spike_templates.npy", np.array(ids))
    model = _open_cleanly(d)
    assert (model is not None) == (min(ids) >= 0 and max(ids) <= 2)


@SETTINGS
@given(st.lists(st.integers(0, 199), min_size=12, max_size=12))
def test_spike_time_order(tmp_path, make_template_dir, times):
    d = _fresh(make_template_dir, tmp_path)
    np.save(d / "spike_times.npy", np.array(times, dtype=np.uint64))
    model = _open_cleanly(d)
    assert (model is not None) == bool(np.all(np.diff(times) >= 0))


@SETTINGS
@given(st.text(alphabet="cluster_idgoodmua\t\n 0123-x", max_size=60))
def test_tsv_text(tmp_path, make_template_dir, text):
    d = _fresh(make_template_dir, tmp_path)
    (d / "cluster_group.tsv").write_text(text)
    _open_cleanly(d)
