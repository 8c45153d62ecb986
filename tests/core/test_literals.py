"""Data files are parsed as literals, never executed."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phy_core.literals import LiteralFileError, parse_literal_assignments, read_literal_file

PRM = '''
"""A klusta parameter file."""
experiment_name = 'rat12'
prb_file = 'buzsaki32.prb'          # relative to the PRM file
traces = dict(raw_data_files=[experiment_name + '.dat'], voltage_gain=10., sample_rate=30000,
              n_channels=32, dtype='int16')
spikedetekt = dict(filter_low=500., filter_high_factor=0.95 * .5, detect_spikes='negative',
                   extract_s_before=10, extract_s_after=-(-10), flags={1, 2}, none=None)
'''


def test_prm_with_dict_calls_names_and_arithmetic():
    values = parse_literal_assignments(PRM, "rat12.prm", allowed_calls=("dict",))
    assert values["traces"]["raw_data_files"] == ["rat12.dat"]
    assert values["traces"]["voltage_gain"] == 10.0
    assert values["spikedetekt"]["filter_high_factor"] == pytest.approx(0.475)
    assert values["spikedetekt"]["extract_s_after"] == 10
    assert values["spikedetekt"]["flags"] == {1, 2} and values["spikedetekt"]["none"] is None
    assert list(values) == ["experiment_name", "prb_file", "traces", "spikedetekt"]


def test_prb_literal_dicts_with_tuples():
    prb = "channel_groups = {0: {'channels': [0, 1, 2], 'graph': [(0, 1), (1, 2)],\n" \
          "                     'geometry': {0: (0, 0), 1: (0, 20.5), 2: (0, 41)}}}"
    groups = parse_literal_assignments(prb, "x.prb")["channel_groups"]
    assert groups[0]["graph"] == [(0, 1), (1, 2)] and groups[0]["geometry"][1] == (0, 20.5)


@pytest.mark.parametrize(
    "text, what",
    [
        ("channels = list(range(32))", "function call"),
        ("import os", "import"),
        ("from os import system", "import"),
        ("x = os.system", "attribute access"),
        ("x = [c for c in [1, 2]]", "comprehension"),
        ("x = __import__('os').system('rm -rf /')", "function call"),
        ("x = dict(a=1)", "function call"),  # dict() only where the caller allows it
        ("x = y + 1", "undefined name"),
        ("x = lambda: 0", "expression"),
        ("def f():\n    pass", "statement"),
        ("x.y = 1", "statement"),
        ("x = [0] * 100_000_000", "sequence this large"),
        ("x = 1 / 0", "operation"),
        ("x = {[1]: 2}", "unhashable"),
        ("x = (", "syntax error"),
    ],
)
def test_anything_but_literals_is_refused_with_file_and_line(text, what):
    with pytest.raises(LiteralFileError, match=what) as info:
        parse_literal_assignments(text, "probe.prb", allowed_calls=())
    assert str(info.value).startswith("probe.prb")
    assert "line" in str(info.value)


def test_dict_call_only_with_keywords():
    with pytest.raises(LiteralFileError, match="only dict"):
        parse_literal_assignments("x = dict([(1, 2)])", "a.prm", allowed_calls=("dict",))
    with pytest.raises(LiteralFileError, match="only dict"):
        parse_literal_assignments("x = dict(**y)", "a.prm", allowed_calls=("dict",))


def test_read_literal_file_errors(tmp_path):
    with pytest.raises(LiteralFileError, match="no such file"):
        read_literal_file(tmp_path / "missing.prb")
    binary = tmp_path / "binary.prb"
    binary.write_bytes(b"\xff\xfe\x00x = 1")
    with pytest.raises(LiteralFileError, match="binary.prb"):
        read_literal_file(binary)
    good = tmp_path / "good.prb"
    good.write_text("a = 1")
    assert read_literal_file(good) == {"a": 1}


def test_nothing_is_executed(tmp_path):
    marker = tmp_path / "executed"
    text = f"x = 1\nopen({str(marker)!r}, 'w').write('x')\n"
    with pytest.raises(LiteralFileError):
        parse_literal_assignments(text, "evil.prb")
    assert not marker.exists()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_random_text_gives_values_or_a_clean_error(text):
    try:
        values = parse_literal_assignments(text, "fuzz.prb", allowed_calls=("dict",))
    except LiteralFileError as exc:
        assert str(exc).startswith("fuzz.prb")
    else:
        assert isinstance(values, dict)


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.integers() | st.text(max_size=5), children, max_size=4),
    max_leaves=20,
))
def test_round_trip_of_literal_values(value):
    assert parse_literal_assignments(f"x = {value!r}")["x"] == value
