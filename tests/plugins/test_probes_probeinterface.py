"""Reading probeinterface JSON files."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phy_probes.builtin import load_probe
from phy_probes.prb import ProbeError
from phy_probes.probeinterface import (
    parse_probeinterface,
    probeinterface_to_channel_groups,
    read_probeinterface,
)

# Written by hand after probeinterface's format_spec.rst: two tetrodes on two shanks,
# wired in a scrambled order, one contact unconnected; plus a second, unwired-shank probe.
DOCUMENT = {
    "specification": "probeinterface",
    "version": "0.2.21",
    "probes": [
        {
            "ndim": 2,
            "si_units": "um",
            "annotations": {"name": "2 shank tetrodes", "manufacturer": "homemade"},
            "contact_positions": [[0, 0], [20, 0], [0, 20], [20, 20],
                                  [250, 0], [270, 0], [250, 20], [270, 20]],
            "contact_shapes": ["circle"] * 8,
            "contact_shape_params": [{"radius": 5}] * 8,
            "device_channel_indices": [5, 4, 7, 6, 1, 0, -1, 2],
            "shank_ids": ["0", "0", "0", "0", "1", "1", "1", "1"],
        },
        {
            "ndim": 2,
            "si_units": "mm",
            "contact_positions": [[1.0, 0.0], [1.0, 0.025]],
            "device_channel_indices": [10, 11],
            "shank_ids": ["", ""],
        },
    ],
}


def test_read_hand_written_file(tmp_path):
    path = tmp_path / "tetrodes.json"
    path.write_text(json.dumps(DOCUMENT, indent=2))
    groups = read_probeinterface(path)
    assert list(groups) == [0, 1, 2]
    assert groups[0]["channels"] == [5, 4, 7, 6]
    assert groups[0]["geometry"] == {5: (0, 0), 4: (20, 0), 7: (0, 20), 6: (20, 20)}
    assert groups[1]["channels"] == [1, 0, 2]  # contact 6 is unconnected
    assert groups[1]["geometry"][2] == (270, 20)
    assert groups[2]["geometry"] == {10: (1000.0, 0.0), 11: (1000.0, 25.0)}  # mm -> um

    mea = load_probe(path)
    assert mea.name == "tetrodes"
    assert mea.all_channels.tolist() == [0, 1, 2, 4, 5, 6, 7, 10, 11]
    # A tetrode square (20 um sides): 1.75 x 20 = 35 um > diagonal 28.3 um, all linked.
    assert len(mea.graph) == 6


def test_shank_ids_sorted_numerically():
    doc = {"probes": [{"contact_positions": [[0, 0], [0, 20], [0, 40]],
                       "device_channel_indices": [0, 1, 2],
                       "shank_ids": ["10", "2", "2"]}]}
    groups = probeinterface_to_channel_groups(doc)
    assert groups[0]["channels"] == [1, 2] and groups[1]["channels"] == [0]


@pytest.mark.parametrize("doc,match", [
    ([], "expected a JSON object"),
    ({"specification": "other", "probes": []}, "'specification' is 'other'"),
    ({"probes": []}, "non-empty 'probes' list"),
    ({"probes": [{"ndim": 3, "contact_positions": [[0, 0, 0]]}]}, "2-D probes only"),
    ({"probes": [{"contact_positions": [[0, 0]]}]}, "not wired"),
    ({"probes": [{"contact_positions": [[0, 0]], "device_channel_indices": [0, 1]}]},
     "list of 1 channel indices"),
    ({"probes": [{"contact_positions": [[0, "a"]], "device_channel_indices": [0]}]},
     "contact 0: position"),
    ({"probes": [{"contact_positions": [[0, 0]], "device_channel_indices": [-1]}]},
     "no contact is connected"),
    ({"probes": [{"contact_positions": [[0, 0], [0, 1]], "device_channel_indices": [3, 3]}]},
     "listed twice"),
    ({"probes": [{"contact_positions": [[0, 0]], "device_channel_indices": [0],
                  "si_units": "inch"}]}, "si_units"),
    ({"probes": [{"contact_positions": [[0, 0]], "device_channel_indices": [0],
                  "shank_ids": ["0", "1"]}]}, "shank_ids"),
])
def test_malformed_documents(doc, match):
    with pytest.raises(ProbeError, match=match):
        probeinterface_to_channel_groups(doc, "p.json")


def test_file_errors(tmp_path):
    with pytest.raises(ProbeError, match="no such file"):
        load_probe(tmp_path / "missing.json")
    path = tmp_path / "bad.json"
    path.write_text('{"probes": [\n  {"ndim": 2,}\n]}')
    with pytest.raises(ProbeError, match=r"bad.json, line 2.*not valid JSON"):
        read_probeinterface(path)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ProbeError, match="UTF-8"):
        read_probeinterface(path)


def test_neuropixels_like_document_matches_builtin():
    xy = load_probe("neuropixels1").positions
    doc = {"specification": "probeinterface", "probes": [
        {"ndim": 2, "contact_positions": xy.tolist(),
         "device_channel_indices": list(range(384))}]}
    groups = probeinterface_to_channel_groups(doc)
    positions = np.array([groups[0]["geometry"][c] for c in range(384)])
    assert np.array_equal(positions, xy)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["probes", "ndim", "si_units", "contact_positions",
                                       "device_channel_indices", "shank_ids",
                                       "specification", "x"]), children, max_size=5),
    max_leaves=25,
)
_probe = st.fixed_dictionaries({}, optional={
    "ndim": st.sampled_from([2, 3, "2", None, True]),
    "si_units": st.sampled_from(["um", "mm", "m", 3, None]),
    "contact_positions": st.lists(st.lists(st.floats() | st.integers(), max_size=3), max_size=5)
    | _json_values,
    "device_channel_indices": st.lists(st.integers(-2, 6) | st.booleans(), max_size=5)
    | _json_values,
    "shank_ids": st.lists(st.sampled_from(["", "0", "1", "²", 1, None]), max_size=5)
    | _json_values,
})
_documents = st.one_of(
    _json_values,
    st.fixed_dictionaries({"probes": st.lists(_probe, max_size=3) | _json_values},
                          optional={"specification": st.sampled_from(["probeinterface", "x"])}),
)


@settings(deadline=None, max_examples=300)
@given(_documents)
def test_malformed_documents_raise_only_probe_error(doc):
    try:
        groups = probeinterface_to_channel_groups(doc, "fuzz.json")
    except ProbeError as exc:
        assert str(exc).startswith("fuzz.json")
        return
    for spec in groups.values():
        assert set(spec["geometry"]) == set(spec["channels"])


@settings(deadline=None, max_examples=200)
@given(st.one_of(st.text(max_size=80),
                 _documents.map(json.dumps).map(lambda s: s[: len(s) // 2]),
                 st.integers(1, 5000).map(lambda n: "[" * n)))
def test_malformed_json_text_raises_only_probe_error(text):
    try:
        parse_probeinterface(text, "fuzz.json")
    except ProbeError as exc:
        assert str(exc).startswith("fuzz.json")
