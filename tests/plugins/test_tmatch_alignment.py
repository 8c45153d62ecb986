"""Templates aligned on their troughs (phy_tmatch.alignment and its use by the refinement).

A masked EM cluster of a unit's spikes detected a second time, off their trough,
gives a template whose trough is far from the window's alignment sample: the
same unit as its centred template, alike to it only at a lag beyond the merges'.
The refinement re-centres it (and its events) and merges the two; the pieces are
checked against independent computations, the whole against the ground truth.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from phy_core.bunch import Bunch
from phy_detect.executors import SerialExecutor
from phy_evaluate.metrics import evaluate
from phy_template.model import TemplateModel
from phy_tmatch.alignment import alignment_delay, alignment_sample, shift_events
from phy_tmatch.comparison import compare_snippets
from phy_tmatch.refine import RefineParameters, refine
from phy_tmatch.residual import local_channels
from phy_tmatch.runner import match_spikes
from phy_tmatch.snippet_whitener import SnippetWhitener
from phy_tmatch.templates import build_templates

N_T, BEFORE = 66, 24


def _spike(trough: int, n_t: int = N_T, n_channels: int = 4) -> np.ndarray:
    """A negative spike (trough -10 at `trough`, a positive rebound 2.5 after) decaying
    over the channels."""
    t = np.arange(n_t)[:, None]
    shape = -10.0 * np.exp(-0.5 * ((t - trough) / 2.0) ** 2) \
        + 2.5 * np.exp(-0.5 * ((t - trough - 8) / 4.0) ** 2)
    return shape * (0.6 ** np.arange(n_channels))[None, :]


def test_the_alignment_sample_is_the_trough_over_the_noise():
    w = _spike(11)
    sigma = np.ones(4)
    assert alignment_sample(w, sigma) == 11
    assert alignment_delay(w, sigma, BEFORE, tolerance=3) == 13
    assert alignment_delay(_spike(26), sigma, BEFORE, tolerance=3) == 0  # within tolerance
    # Over the noise: a deeper trough on a noisier channel does not count.
    w2 = w.copy()
    w2[:, 3] = 40.0 * np.minimum(_spike(40)[:, 0], 0) / 10
    assert alignment_sample(w2, np.ones(4)) == 40
    assert alignment_sample(w2, np.array([1.0, 1, 1, 100])) == 11
    # A unit whose positive peak dominates is left as it is (sign -1: detection's
    # negative mode), unless the sign asks for the largest |value|.
    positive = -0.3 * w  # its trough, 0.3 * 2.5, is under half of its peak, 3
    assert alignment_sample(positive, sigma) is None
    assert alignment_delay(positive, sigma, BEFORE, tolerance=3) == 0
    assert alignment_sample(positive, sigma, sign=0) == 11
    assert alignment_sample(positive, sigma, sign=+1) == 11
    assert alignment_sample(np.zeros((N_T, 4)), sigma) is None


def test_shifting_events_delays_them_with_zeros():
    x = np.random.default_rng(0).normal(size=(5, N_T, 3))
    for d in (0, 7, -13, N_T, -N_T - 1):
        y = shift_events(x, d)
        expected = np.zeros_like(x)
        for t in range(N_T):
            if 0 <= t - d < N_T:
                expected[:, t] = x[:, t - d]
        assert np.array_equal(y, expected)


def test_snippets_shifted_with_zeros_compare_only_where_both_hold_data():
    # One unit's events, the second group's re-centred (shifted by -12, zeros in its
    # last 12 samples): alike where both hold data, not over the zeros.
    rng = np.random.default_rng(1)
    n_channels = 4
    local = np.arange(n_channels)[None, :].repeat(n_channels, axis=0)
    sigma = np.ones(n_channels)
    t = np.arange(N_T)[:, None]
    # A slow after-hyperpolarisation, largely in the last 12 samples.
    unit = 3.0 * _spike(BEFORE, n_channels=n_channels) \
        + 4.0 * np.exp(-0.5 * ((t - 58) / 6.0) ** 2) * (0.6 ** np.arange(n_channels))[None]
    a = unit[None] + rng.normal(size=(60, N_T, n_channels))
    b = shift_events(shift_events(unit[None], 12)
                     + rng.normal(size=(60, N_T, n_channels)), -12)
    whitener = SnippetWhitener(None, sigma, local)
    whitener.temporal = np.eye(N_T)  # white noise: the exact temporal whitening
    p = RefineParameters()
    whole, _, _ = compare_snippets(a, 0, b, 0, 0, whitener, local, p)
    held, cos, _ = compare_snippets(a, 0, b, 0, 0, whitener, local, p,
                                    valid_b=(0, N_T - 12))
    assert not whole and held and cos > 0.95
    # A lag counts: the valid range moves with the group it belongs to.
    held_lag, _, _ = compare_snippets(shift_events(a, 2), 0, b, 0, 2, whitener, local, p,
                                      valid_a=(2, N_T), valid_b=(0, N_T - 12))
    assert held_lag
    # Two different units stay distinct on the samples both hold.
    other = 3.0 * _spike(BEFORE, n_channels=n_channels)[:, ::-1]
    c = other[None] + rng.normal(size=(60, N_T, n_channels))
    assert not compare_snippets(a, 0, c, 0, 0, whitener, local, p, valid_b=(0, N_T - 12))[0]


def test_refine_recentres_a_template_and_its_events_then_merges_it():
    # One unit on 4 of 8 channels, given as two templates: centred, and 13 samples early
    # (its trough at 11), each with 80 matched spikes of the unit, alternately.
    rng = np.random.default_rng(2)
    n_channels, n = 8, 80
    positions = np.c_[np.zeros(n_channels), 20.0 * np.arange(n_channels)]
    local = local_channels(positions, n_channels)
    sigma = np.ones(n_channels)
    unit = np.zeros((N_T, n_channels))
    t = np.arange(N_T)[:, None]
    unit[:, 2:6] = 6 * _spike(BEFORE) + 1.5 * np.exp(-0.5 * ((t - 50) / 6.0) ** 2) \
        * 0.6 ** np.arange(4)
    early = shift_events(unit[None], -13)[0]
    templates = build_templates(np.stack([unit, early]), np.array([200, 200]),
                                np.array([3, 7]), sigma)
    assert templates.trough.tolist() == [BEFORE, BEFORE - 13]
    home = int(np.abs(unit).max(axis=0).argmax())
    snippets = np.concatenate([w[None, :, local[home]] + rng.normal(size=(n, N_T, n_channels))
                               for w in (unit, early)])
    events = Bunch(samples=np.arange(2 * n) * 300 + 100, labels=np.repeat([0, 1], n),
                   homes=np.full(2 * n, home), snippets=snippets.copy())
    args = (templates, events, np.array([n, n]), sigma, local, positions, 2 * n * 300 + 1000,
            30000.0, 10)
    plain = refine(*args, RefineParameters(recentre=False), before=BEFORE)
    assert plain.cluster_ids.tolist() == [3, 7] and plain.n_merged == 0
    aligned = refine(*args, before=BEFORE)
    assert aligned.n_recentred == 1 and aligned.n_merged == 1
    assert aligned.cluster_ids.tolist() == [10]  # a merge is a new template
    mean = aligned.means[0]
    assert int(np.abs(mean).max(axis=1).argmax()) == BEFORE
    assert np.corrcoef(mean.ravel(), unit.ravel())[0, 1] > 0.99
    # The caller's events are left as they were.
    assert np.array_equal(events.snippets, snippets)


@pytest.fixture(scope="module")
def recording(linear32_seed1_8s):
    return linear32_seed1_8s  # shared with other modules (conftest.py), read only


def _sorted(recording, samples, clusters, out, **refine):
    out = match_spikes(recording / "rec.prm", samples, clusters, out,
                       executor=SerialExecutor(), refine_rounds=1, refine=refine)
    model = TemplateModel(out)
    truth = np.load(recording / "rec.groundtruth.npz")
    result = evaluate(truth["spike_samples"], truth["spike_clusters"], model.spike_samples,
                      model.spike_clusters, float(truth["sample_rate"]))
    info = json.loads((out / "tmatch.json").read_text())
    return dict(zip(result.units.tolist(), result.accuracy)), info


@pytest.mark.parametrize("unit, lag", [(6, 13), (2, -13)])
def test_a_unit_detected_off_its_trough_is_one_template(recording, tmp_path, unit, lag):
    # Half of a unit's spikes given as a second cluster dated `lag` samples off their
    # trough, as masked EM clusters a unit's spikes detected again (384 channels seed 2,
    # unit 41: 13 samples late). Unit 6: SNR 14.8, unit 2: SNR 5.0.
    truth = np.load(recording / "rec.groundtruth.npz")
    s, c = truth["spike_samples"].copy(), truth["spike_clusters"].copy()
    off = np.flatnonzero(c == unit)[::2]
    s[off] += lag
    c[off] = 100
    plain, info_plain = _sorted(recording, s, c, tmp_path / "plain", recentre=False)
    aligned, info = _sorted(recording, s, c, tmp_path / "aligned")
    before = info["template_before"]
    # Without: a template 13 samples off (beyond the merges' 0.4 ms) keeps part of the unit.
    assert plain[unit] < 0.8
    assert (np.abs(np.array(info_plain["template_trough"]) - before) >= 12).any()
    # With: re-centred and merged, one template, the unit whole.
    assert aligned[unit] >= 0.95
    assert info["refinements"][0]["n_merged"] >= 1
    assert np.all(np.abs(np.array(info["template_trough"]) - before) <= 1)
    # The other units are not harmed.
    assert all(aligned[u] >= plain[u] - 0.02 for u in plain if u != unit)
