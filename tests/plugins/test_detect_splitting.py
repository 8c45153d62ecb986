"""Splitting components at tall, far and leading peaks, on planted spikes, and the rules
against a brute-force reference on random components (the reference of the prominence
rule alone is in test_detect_floodfill.py)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from phy_detect.floodfill import FloodFillDetector, adjacency_csr
from phy_detect.splitting import split_components
from phy_detect.waveform import WaveformExtractor

THRESHOLDS = {"weak": 1.0, "strong": 4.0}  # normalised value n = (x - 1) / 3


def _planted(amp_a, amp_b, n_c=12):
    """Spike A on channel 3 at sample 30, spike B 4 channels and 2 samples away (Gaussian in
    time and space, on a line of channels): their footprints overlap, so the flood fill
    makes one component of them, and B rises a little above the saddle between them."""
    n_s = 80
    t, c = np.meshgrid(np.arange(n_s), np.arange(n_c), indexing="ij")
    data_t = np.zeros((n_s, n_c))
    for (t0, c0), a in zip([(30.0, 3.0), (32.0, 7.0)], (amp_a, amp_b), strict=True):
        data_t += a * np.exp(-0.5 * ((t - t0) / 2.0) ** 2 - 0.5 * ((c - c0) / 1.5) ** 2)
    adjacency = {i: [i + 1] for i in range(n_c - 1)}
    return data_t.astype(np.float32), adjacency


def _normalised(x):
    return (x - THRESHOLDS["weak"]) / (THRESHOLDS["strong"] - THRESHOLDS["weak"])


def _parts(data_t, adjacency, **kwargs):
    det = FloodFillDetector(adjacency, 1, thresholds=THRESHOLDS, **kwargs)
    return det, det(data_t > 1.0, data_t > 4.0, data_t)


def _split(data_t, adjacency, prominence=1.0, tall_peak=None, tall_prominence=0.0, **rules):
    """`split_components` on the whole of `data_t` (one component per list item)."""
    n_c = data_t.shape[1]
    points, offsets = FloodFillDetector(adjacency, 1, split_prominence=None).detect_flat(
        data_t > 1.0, data_t > 4.0)
    indptr, indices = adjacency_csr(adjacency, n_c)
    points, offsets = split_components(
        points, offsets, data_t, np.full(n_c, THRESHOLDS["weak"]),
        np.full(n_c, THRESHOLDS["strong"]), prominence, indptr, indices, 1, tall_peak,
        tall_prominence, **rules)
    return np.split(points, offsets[1:-1])


def test_tall_peaks_split_at_a_shallow_dip():
    data_t, adjacency = _planted(12.0, 8.0)
    # The planted geometry: B's peak is tall (n >= 1.3), and the saddle on channel 5 (the
    # lowest channel maximum between the peaks) leaves it a rise of ~0.3, under 1.
    peak_b = _normalised(data_t[:, 7].max())
    saddle = _normalised(data_t[:, 3:8].max(axis=0).min())
    assert peak_b > 1.3 and 0.3 <= peak_b - saddle < 0.5
    assert len(_split(data_t, adjacency, 1.0)) == 1  # prominence 1 alone: one spike
    det, parts = _parts(data_t, adjacency)  # the defaults: tall 1.3, rise 0.3
    assert len(parts) == 2
    assert sum(map(len, parts)) == int((data_t > 1.0).sum())  # a partition of the component
    assert abs(np.median(parts[0][:, 1]) - 3) <= 1 and abs(np.median(parts[1][:, 1]) - 7) <= 1
    extracted = WaveformExtractor(10, 10, thresholds=THRESHOLDS).extract_all(
        det.detect_flat(data_t > 1.0, data_t > 4.0, data_t), -data_t, data_t)
    np.testing.assert_allclose(np.sort(extracted.spike_samples), [30.0, 32.0], atol=0.2)
    # A tall rise requirement above B's rise keeps one spike.
    assert len(_split(data_t, adjacency, 1.0, 1.3, 0.6)) == 1
    # B is 4 channels from A: apart, so the tall rule still applies with tall_apart.
    assert len(_split(data_t, adjacency, 1.0, 1.3, 0.3, tall_apart=True)) == 2


def test_strong_but_not_tall_peaks_need_the_full_prominence():
    data_t, adjacency = _planted(5.5, 4.7)
    peak_b = _normalised(data_t[:, 7].max())
    saddle = _normalised(data_t[:, 3:8].max(axis=0).min())
    assert 1.0 < peak_b < 1.3 and 0.3 <= peak_b - saddle < 1.0  # strong, not tall
    assert len(_parts(data_t, adjacency)[1]) == 1
    # Lower the bar of tallness under B's peak: it splits off.
    assert len(_parts(data_t, adjacency, split_tall_peak=1.2)[1]) == 2


def test_a_far_peak_splits_at_any_rise_unless_its_channel_neighbours_the_higher_peak():
    data_t, adjacency = _planted(20.0, 10.0)
    peak_b = _normalised(data_t[:, 7].max())
    saddle = _normalised(data_t[:, 3:8].max(axis=0).min())
    assert peak_b > 2.5 and peak_b - saddle < 0.3  # tall, but less than 0.3 above its saddle
    assert len(_split(data_t, adjacency, 1.0, 1.3, 0.3)) == 1
    assert len(_split(data_t, adjacency, 1.0, far_peak=2.5)) == 2
    assert len(_split(data_t, adjacency, 1.0, far_peak=peak_b + 0.01)) == 1  # not that tall
    # The same traces, but channel 7 now neighbours channel 3 (A's): not apart, one spike.
    near = {**adjacency, 3: [4, 7]}
    assert len(_split(data_t, near, 1.0, far_peak=2.5)) == 1


def _leading(dt_b, n_c=12):
    """A (tall) on channel 3 at sample 30, B (just strong) on channel 7 at 30 + dt_b, with
    a weak bridge between them on channels 4-6 (a shallow saddle, rise ~0.3)."""
    n_s = 80
    t, c = np.meshgrid(np.arange(n_s), np.arange(n_c), indexing="ij")
    data_t = np.zeros((n_s, n_c))
    for t0, c0, a, width in ((30.0, 3.0, 12.0, 1.5), (30.0 + dt_b, 7.0, 4.4, 0.8)):
        data_t += a * np.exp(-0.5 * ((t - t0) / 1.5) ** 2 - 0.5 * ((c - c0) / width) ** 2)
    bridge = (c >= 4) & (c <= 6) & (np.abs(t - (30.0 + dt_b / 2)) <= abs(dt_b) / 2 + 2)
    data_t[bridge] = np.maximum(data_t[bridge], 3.4)
    return data_t.astype(np.float32), {i: [i + 1] for i in range(n_c - 1)}


def test_a_peak_leading_the_higher_one_elsewhere_splits_at_any_rise():
    data_t, adjacency = _leading(-4)
    peak_b = _normalised(data_t[:, 7].max())
    assert 1.0 < peak_b < 1.3  # strong, not tall: the other rules keep one spike
    assert len(_split(data_t, adjacency, 1.0, 1.3, 0.3, far_peak=2.0)) == 1
    parts = _split(data_t, adjacency, 1.0, lead=3)
    assert len(parts) == 2
    assert {int(np.median(p[:, 1])) for p in parts} >= {3}
    assert len(_split(data_t, adjacency, 1.0, lead=5)) == 1  # B leads by 4 only
    # The mirror image in time (B 4 samples after A) is a lagging footprint: one spike.
    data_t, adjacency = _leading(4)
    assert len(_split(data_t, adjacency, 1.0, lead=3)) == 1
    # Leading, but on a channel next to A's: one spike.
    data_t, adjacency = _leading(-4)
    assert len(_split(data_t, {**adjacency, 3: [4, 7]}, 1.0, lead=3)) == 1


def test_tall_apart_keeps_a_tall_ripple_on_the_peak_channel():
    # One broad trough on channel 3 with a ripple: two maxima 3 samples apart on the same
    # channel, the lower tall and 0.3 to 1 above the dip between them.
    n_s, n_c = 80, 8
    t = np.arange(n_s)[:, None]
    c = np.arange(n_c)[None, :]
    profile = np.exp(-0.5 * ((c - 3) / 1.0) ** 2)
    trace = 12.0 * np.exp(-0.5 * ((t - 30) / 1.2) ** 2) + 9.0 * np.exp(
        -0.5 * ((t - 33.5) / 1.2) ** 2)
    data_t = (trace * profile).astype(np.float32)
    adjacency = {i: [i + 1] for i in range(n_c - 1)}
    second = _normalised(data_t[33, 3])
    dip = _normalised(data_t[30:34, 3].min())
    assert second > 1.3 and 0.3 <= second - dip < 1.0
    assert len(_split(data_t, adjacency, 1.0, 1.3, 0.3)) == 2
    assert len(_split(data_t, adjacency, 1.0, 1.3, 0.3, tall_apart=True)) == 1
    # Tall enough for the far rule, but on the same channel: not apart.
    assert len(_split(data_t, adjacency, 1.0, far_peak=2.0, lead=1)) == 1


# -- the rules against a brute-force reference ------------------------------------------------


def _graph(points, adjacency, n_c):
    adj = np.eye(n_c, dtype=bool)
    for c, nbrs in adjacency.items():
        for d in nbrs:
            adj[c, d] = adj[d, c] = True
    s, c = points[:, 0], points[:, 1]
    close = (np.abs(s[:, None] - s[None, :]) <= 1) & adj[c[:, None], c[None, :]]
    np.fill_diagonal(close, False)
    return close, adj


def _key_col(values, close, b):
    """Highest level at which point b connects to a higher point (-inf: it is the top)."""
    for level in np.sort(values[values <= values[b]])[::-1]:
        above = values >= level
        _, labels = connected_components(coo_matrix(close & above[:, None] & above[None, :]),
                                         directed=False)
        if np.any((labels == labels[b]) & (values > values[b])):
            return level
    return -np.inf


@st.composite
def _problems(draw):
    n_s = draw(st.integers(4, 14))
    n_c = draw(st.integers(2, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    data_t = rng.normal(0, 1, (n_s, n_c))
    t, c = np.meshgrid(np.arange(n_s), np.arange(n_c), indexing="ij")
    for _ in range(draw(st.integers(1, 3))):
        t0, c0 = rng.uniform(0, n_s), rng.uniform(0, n_c)
        data_t += rng.uniform(3, 10) * np.exp(-((t - t0) / 2) ** 2 - ((c - c0) / 1.5) ** 2)
    adjacency = {c: [int(d) for d in np.flatnonzero(rng.random(n_c) < 0.4)] for c in range(n_c)}
    rules = dict(tall_peak=draw(st.sampled_from([None, 1.3, 2.0])),
                 tall_prominence=draw(st.sampled_from([0.0, 0.3])),
                 tall_apart=draw(st.booleans()),
                 far_peak=draw(st.sampled_from([None, 1.0, 2.0])),
                 lead=draw(st.sampled_from([None, 1, 3])))
    prominence = draw(st.sampled_from([0.5, 1.0, np.inf]))
    return data_t.astype(np.float32), adjacency, prominence, rules


@settings(max_examples=150, deadline=None)
@given(_problems())
def test_split_rules_match_a_brute_force_reference(problem):
    """Components with exactly two strong local maxima: the lower one (b) is a spike of its
    own iff it rises `prominence` above its key col, or is apart from the top (not on the
    top's channel or a neighbour) and at least `far_peak` high or `lead` samples before the
    top, or is tall (`tall_peak`, rise `tall_prominence`) and, with `tall_apart`, apart.
    Every component: the parts partition it, and each holds one peak."""
    data_t, adjacency, prominence, rules = problem
    n_c = data_t.shape[1]
    weak_t, strong_t = THRESHOLDS["weak"], THRESHOLDS["strong"]
    classic = FloodFillDetector(adjacency, 1, split_prominence=None)(data_t > weak_t,
                                                                     data_t > strong_t)
    parts = _split(data_t, adjacency, prominence, **rules)
    part_of = {tuple(p): i for i, part in enumerate(parts) for p in part.tolist()}
    assert len(part_of) == sum(len(c) for c in classic)
    for comp in classic:
        values = _normalised(data_t[comp[:, 0], comp[:, 1]].astype(np.float64))
        close, adj = _graph(comp, adjacency, n_c)
        labels = np.array([part_of[tuple(p)] for p in comp.tolist()])
        is_max = np.array([not np.any(values[close[b]] > values[b]) for b in range(len(comp))])
        strong_maxima = np.flatnonzero(is_max & (values > 1.0))
        n_parts = len(np.unique(labels))
        assert 1 <= n_parts <= max(1, len(strong_maxima))
        for part in np.unique(labels):  # each part's highest point is a (strong) maximum
            members = np.flatnonzero(labels == part)
            assert is_max[members[np.argmax(values[members])]]
        if len(strong_maxima) != 2:
            continue
        top, b = sorted(strong_maxima, key=lambda k: -values[k])
        rise = values[b] - _key_col(values, close, b)
        apart = not adj[comp[b, 1], comp[top, 1]]
        lead = comp[top, 0] - comp[b, 0]
        tall = rules["tall_peak"] is not None and values[b] >= rules["tall_peak"] and \
            rise >= rules["tall_prominence"]
        far = rules["far_peak"] is not None and values[b] >= rules["far_peak"]
        leads = rules["lead"] is not None and lead >= rules["lead"]
        distinct = rise >= prominence or (apart and (far or leads)) or (
            tall and (apart or not rules["tall_apart"]))
        assert n_parts == (2 if distinct else 1)
        if distinct:
            assert labels[b] != labels[top]
