"""klusta-style PRM parameter files: `read_prm`."""

import logging
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phy_core.literals import LiteralFileError
from phy_rawdata.prm import KLUSTAKWIK2_DEFAULTS, SPIKEDETEKT_DEFAULTS, PrmError, read_prm

MINIMAL = """
experiment_name = 'rat'
prb_file = 'probe.prb'
traces = dict(raw_data_files=[experiment_name + '.dat'], sample_rate=20000, n_channels=4)
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "rat.dat").write_bytes(b"\0" * 80)
    return tmp_path


def _prm(folder, text, name="rat.prm"):
    path = folder / name
    path.write_text(text)
    return path


def test_minimal_prm_gets_klusta_defaults(folder):
    prm = read_prm(_prm(folder, MINIMAL))
    assert prm.path == folder / "rat.prm"
    assert prm.experiment_name == "rat"
    # Relative paths are relative to the PRM's folder, made absolute.
    assert prm.prb_file == (folder / "probe.prb").resolve() and prm.prb_file.is_absolute()
    assert prm.traces.raw_data_files == [(folder / "rat.dat").resolve()]
    assert prm.traces.sample_rate == 20000.0 and isinstance(prm.traces.sample_rate, float)
    assert prm.traces.n_channels == 4
    assert prm.traces.dtype == "int16" and prm.traces.offset == 0
    assert prm.traces.voltage_gain == 10.0
    sd, kk = prm.spikedetekt, prm.klustakwik2
    assert sd["filter_low"] == 500.0 and sd["filter_high_factor"] == 0.95 * 0.5
    assert sd["filter_butter_order"] == 3
    assert sd["chunk_size_seconds"] == 1 and sd["chunk_overlap_seconds"] == 0.015
    assert sd["n_excerpts"] == 50 and sd["excerpt_size_seconds"] == 1
    assert sd["threshold_strong_std_factor"] == 4.5 and sd["threshold_weak_std_factor"] == 2.0
    assert sd["detect_spikes"] == "negative" and sd["connected_component_join_size"] == 1
    assert sd["extract_s_before"] == 10 and sd["extract_s_after"] == 10
    assert sd["n_features_per_channel"] == 3 and sd["pca_n_waveforms_max"] == 10000
    assert kk["num_starting_clusters"] == 100 and kk["penalty_k"] == 0.0
    assert kk["penalty_k_log_n"] == 1.0 and kk["max_iterations"] == 1000
    assert kk["dist_thresh"] == pytest.approx(math.log(10000))
    # The defaults themselves are not shared with the result.
    sd["filter_low"] = 1.0
    assert SPIKEDETEKT_DEFAULTS["filter_low"] == 500.0


def test_given_values_override_defaults(folder):
    (folder / "rat2.dat").write_bytes(b"\0" * 16)
    prm = read_prm(_prm(folder, MINIMAL + """
spikedetekt = dict(threshold_strong_std_factor=6, detect_spikes='both', extract_s_before=16)
klustakwik2 = {'num_starting_clusters': 50, 'max_split_iterations': 3}
traces = dict(raw_data_files=['rat.dat', 'rat2.dat'], sample_rate=30000., n_channels=2,
              dtype='float32', offset=8, voltage_gain=0.195)
"""))
    assert prm.spikedetekt["threshold_strong_std_factor"] == 6
    assert prm.spikedetekt["detect_spikes"] == "both"
    assert prm.spikedetekt["extract_s_before"] == 16 and prm.spikedetekt["extract_s_after"] == 10
    assert prm.klustakwik2["num_starting_clusters"] == 50
    assert prm.klustakwik2["max_split_iterations"] == 3
    assert prm.klustakwik2["max_iterations"] == KLUSTAKWIK2_DEFAULTS["max_iterations"]
    t = prm.traces
    assert [f.name for f in t.raw_data_files] == ["rat.dat", "rat2.dat"]
    assert (t.dtype, t.offset, t.voltage_gain, t.n_channels) == ("float32", 8, 0.195, 2)
    big_endian = read_prm(_prm(folder, MINIMAL.replace("n_channels=4", "n_channels=4, "
                                                       "dtype='>i2'")))
    assert big_endian.traces.dtype == ">i2"


def test_experiment_name_defaults_to_the_stem_and_absolute_paths_kept(folder):
    dat = (folder / "rat.dat").resolve()
    prm = read_prm(_prm(folder, f"traces = dict(raw_data_files=[{str(dat)!r}], "
                                "sample_rate=1000, n_channels=1)", name="session.prm"))
    assert prm.experiment_name == "session" and prm.prb_file is None
    assert prm.traces.raw_data_files == [dat]
    sub = folder / "sub"
    sub.mkdir()
    prm = read_prm(_prm(sub, "traces = dict(raw_data_files=['../rat.dat'], "
                             "sample_rate=1000, n_channels=1)"))
    assert prm.traces.raw_data_files == [dat]


def test_unknown_keys_warn_with_close_match(folder, caplog):
    with caplog.at_level(logging.DEBUG, logger="phy"):
        read_prm(_prm(folder, MINIMAL + """
spikedetekt = dict(threshold_strong_std_factr=5., my_own_thing=1)
klustakwik2 = dict(num_starting_cluster=3)
prb_fle = 'x.prb'
helper = 'session1'
"""))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    text = "\n".join(warnings)
    assert "'threshold_strong_std_factr'" in text and "'threshold_strong_std_factor'" in text
    assert "'my_own_thing'" in text
    assert "'num_starting_cluster'" in text and "did you mean 'num_starting_clusters'" in text
    assert "'prb_fle'" in text and "did you mean 'prb_file'" in text
    # A helper variable at the top level is legitimate: not a warning.
    assert "'helper'" not in text
    assert any("'helper'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("text, match", [
    ("traces = dict(raw_data_files=['rat.dat'], sample_rate=0, n_channels=4)",
     r"traces\['sample_rate'\] must be a positive number"),
    ("traces = dict(raw_data_files=['rat.dat'], sample_rate='fast', n_channels=4)",
     r"traces\['sample_rate'\]"),
    ("traces = dict(raw_data_files=['rat.dat'], sample_rate=1e3, n_channels=0)",
     r"traces\['n_channels'\] must be a positive integer"),
    ("traces = dict(raw_data_files=['rat.dat'], sample_rate=1e3, n_channels=2.5)",
     r"traces\['n_channels'\]"),
    ("traces = dict(raw_data_files=['rat.dat'], sample_rate=1e3, n_channels=4, dtype='str')",
     r"traces\['dtype'\]"),
    ("traces = dict(raw_data_files=['rat.dat'], sample_rate=1e3, n_channels=4, dtype='xx')",
     r"traces\['dtype'\]"),
    ("traces = dict(raw_data_files=[], sample_rate=1e3, n_channels=4)",
     r"raw_data_files'\] must be a non-empty list"),
    ("traces = dict(raw_data_files=[1], sample_rate=1e3, n_channels=4)",
     r"raw_data_files'\] must be a non-empty list"),
    ("traces = dict(raw_data_files=['rat.dat', 'a.dat', 'b.dat'], sample_rate=1, n_channels=4)",
     r"no such file\(s\): .*a\.dat, .*b\.dat"),
    ("traces = dict(sample_rate=1e3, n_channels=4)", r"traces\['raw_data_files'\] is missing"),
    ("x = 1", "no traces"),
    ("traces = [1]", "traces must be a dict"),
    ("traces = dict(raw_data_files=['rat.dat'], sample_rate=1e3, n_channels=4, offset=-1)",
     r"traces\['offset'\]"),
    (MINIMAL + "spikedetekt = dict(n_excerpts=2.5)", r"spikedetekt\['n_excerpts'\] must be an "
                                                      "integer"),
    (MINIMAL + "spikedetekt = dict(detect_spikes='up')", r"detect_spikes'\] must be one of"),
    (MINIMAL + "spikedetekt = dict(filter_precision='float16')",
     r"filter_precision'\] must be one of"),
    (MINIMAL + "spikedetekt = dict(filter_low='500')", r"filter_low'\] must be a number"),
    (MINIMAL + "klustakwik2 = dict(use_noise_cluster=1)", r"use_noise_cluster'\] must be True"),
    (MINIMAL + "klustakwik2 = 3", "klustakwik2 must be a dict"),
    (MINIMAL + "experiment_name = 3", "experiment_name must be a non-empty string"),
    (MINIMAL + "prb_file = 3", "prb_file must be a file name"),
])
def test_invalid_values_name_file_and_key(folder, text, match):
    with pytest.raises(PrmError, match=match) as info:
        read_prm(_prm(folder, text))
    assert "rat.prm" in str(info.value)


def test_code_is_refused_not_run(folder):
    marker = folder / "ran"
    with pytest.raises(LiteralFileError, match="rat.prm, line 1: the import"):
        read_prm(_prm(folder, f"import os\nos.mkdir({str(marker)!r})\n"))
    with pytest.raises(LiteralFileError, match="function call"):
        read_prm(_prm(folder, f"traces = open({str(marker)!r}, 'w')"))
    assert not marker.exists()
    with pytest.raises(LiteralFileError, match="no such file"):
        read_prm(folder / "missing.prm")


_FRAGMENTS = [
    "traces", "spikedetekt", "klustakwik2", "experiment_name", "prb_file", " = ", "dict(",
    ")", "(", "[", "]", "{", "}", ",", ":", "'rat.dat'", "raw_data_files=", "sample_rate=",
    "n_channels=", "dtype=", "'int16'", "1", "-3", "2.5", "None", "True", "\n", " + ", " * ",
    "'", "\"", "#", "offset=", "voltage_gain=", "1e999", "'\\x00'", "import os", "os.sep",
]


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map("".join),
    st.text(max_size=200),
))
def test_garbage_prm_only_raises_clean_errors(text):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "rat.dat").write_bytes(b"\0" * 8)
        path = folder / "g.prm"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            prm = read_prm(path)
        except (PrmError, LiteralFileError):
            return
        # Whatever was accepted is valid.
        assert prm.traces.sample_rate > 0 and prm.traces.n_channels >= 1
        assert all(f.is_file() for f in prm.traces.raw_data_files)
