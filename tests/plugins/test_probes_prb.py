"""The .prb reader and writer: literals only, validation, atomic round trip."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phy_core.literals import LiteralFileError
from phy_probes.builtin import load_probe
from phy_probes.prb import ProbeError, read_prb, validate_channel_groups, write_prb


def test_round_trip(tmp_path):
    groups = load_probe("buzsaki32").to_channel_groups()
    path = write_prb(tmp_path / "b.prb", groups)
    assert read_prb(path) == validate_channel_groups(groups)
    assert not [p for p in tmp_path.iterdir() if p.name != "b.prb"]  # no temp file left


def test_klusta_style_file_with_comments_and_extra_names(tmp_path):
    path = tmp_path / "old.prb"
    path.write_text("total_nb_channels = 4\nradius = 100\n"
                    "channel_groups = {\n  # shank 0\n  0: {'channels': [0, 1, 2, 3],\n"
                    "      'graph': [(0, 1), (1, 2), (2, 3)],\n"
                    "      'geometry': {0: (0, 0), 1: (0, 20), 2: (0, 40), 3: (0, 60.5)}}}\n")
    groups = read_prb(path)
    assert groups[0]["geometry"][3] == (0.0, 60.5)
    assert groups[0]["graph"] == [(0, 1), (1, 2), (2, 3)]
    assert load_probe(path).name == "old"


@pytest.mark.parametrize("text", [
    "channel_groups = {0: {'channels': list(range(32))}}",
    "import os\nchannel_groups = {0: {'channels': [0]}}",
    "channel_groups = {0: {'channels': os.listdir('.')}}",
    "from os import path\n",
    "channel_groups = {0: {'channels': [i for i in [0, 1]]}}",
])
def test_code_is_refused_with_the_file_name(tmp_path, text):
    path = tmp_path / "evil.prb"
    path.write_text(text)
    with pytest.raises(LiteralFileError, match="evil.prb"):
        read_prb(path)
    with pytest.raises(LiteralFileError, match="evil.prb"):
        load_probe(path)


def test_missing_channel_groups(tmp_path):
    path = tmp_path / "empty.prb"
    path.write_text("radius = 100\n")
    with pytest.raises(ProbeError, match="empty.prb: defines no channel_groups"):
        read_prb(path)


def test_missing_prb_file(tmp_path):
    with pytest.raises(LiteralFileError, match="no such file"):
        load_probe(tmp_path / "nothing.prb")


def test_unknown_name():
    with pytest.raises(ProbeError, match=r"linear32.*buzsaki32.*\.prb or \.json"):
        load_probe("nonexistent")


@pytest.mark.parametrize("groups,match", [
    ({0: {"channels": [0, 1], "graph": 5}}, "'graph' must be a list"),
    ({0: {"channels": [0, 1], "geometry": {0: (0, 10**400), 1: (0, 0)}}}, "finite"),
    ({0: {"channels": [2**70]}}, "non-negative integers"),
    ({0: {"channels": [0, 1], "geometry": {0: (0, 0)}}}, r"no position for channels \[1\]"),
    ({-1: {"channels": [0]}}, "non-negative integers"),
    ({0: {"channels": [0], "shape": 1}}, "unknown keys"),
])
def test_validation_messages(groups, match):
    with pytest.raises(ProbeError, match=match):
        validate_channel_groups(groups, "my.prb")


# Property-based: whatever the dict, the only outcome is a clean ProbeError or success.

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.integers(),
                     st.floats(allow_nan=True), st.text(max_size=3))
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.tuples(children, children),
                               st.dictionaries(st.one_of(st.integers(-2, 40), st.text(max_size=2)),
                                               children, max_size=4)),
    max_leaves=20,
)
_group_specs = st.one_of(
    _values,
    st.fixed_dictionaries(
        {"channels": st.one_of(st.lists(st.integers(-1, 40), max_size=6), _values)},
        optional={"graph": st.one_of(st.lists(st.tuples(st.integers(-1, 40),
                                                        st.integers(-1, 40)), max_size=6),
                                     _values),
                  "geometry": st.one_of(st.dictionaries(
                      st.integers(-1, 40),
                      st.tuples(st.floats(), st.floats()) | _values, max_size=6), _values),
                  "label": _values},
    ),
)
_channel_groups = st.one_of(_values, st.dictionaries(st.integers(-2, 5) | _scalars,
                                                     _group_specs, max_size=4))


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_channel_groups)
def test_malformed_channel_groups_raise_only_probe_error(channel_groups):
    from phy_probes.mea import MEA

    try:
        groups = validate_channel_groups(channel_groups, "fuzz")
    except ProbeError as exc:
        assert str(exc).startswith("fuzz")
        return
    # Accepted: the MEA built from it works for every group.
    mea = MEA(groups)
    for group in groups:
        mea.change_channel_group(group)
        assert mea.positions.shape == (mea.n_channels, 2)
        assert set(mea.adjacency) == set(mea.channels.tolist())
    mea.describe()


_prb_fragments = st.sampled_from([
    "channel_groups = ", "{", "}", "0: ", "'channels': ", "[0, 1, 2]", "[", "]", ", ",
    "'graph': ", "(0, 1)", "'geometry': ", "{0: (0, 0)}", "list(range(3))", "import os",
    "\n", "x", " * 3", "os.sep", "-", "1e999", "None", "'a' + ", "(", ")", "lambda: 0",
])


@settings(deadline=None, max_examples=200)
@given(st.lists(_prb_fragments, max_size=15).map("".join) | st.text(max_size=60))
def test_malformed_prb_text_raises_only_clean_errors(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("prb") / "fuzz.prb"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        read_prb(path)
    except (ProbeError, LiteralFileError) as exc:
        assert "fuzz.prb" in str(exc)
