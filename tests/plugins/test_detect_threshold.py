"""Thresholds, excerpts, crossings, and whitening."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phy_detect.filtering import Filter
from phy_detect.threshold import (
    STAGES as THRESHOLD_STAGES,
)
from phy_detect.threshold import (
    Thresholder,
    ThresholdError,
    compute_threshold,
    compute_threshold_from_traces,
    excerpts,
)
from phy_detect.whitening import STAGES as WHITENING_STAGES
from phy_detect.whitening import LocalWhitening, Whitening, WhiteningError


def _mad_std(a):
    """Independent: sort-based median of |a| per column, / 0.6745."""
    a = np.sort(np.abs(np.asarray(a, dtype=np.float64)), axis=0)
    n = a.shape[0]
    med = a[n // 2] if n % 2 else 0.5 * (a[n // 2 - 1] + a[n // 2])
    return med / 0.6745


def test_compute_threshold():
    rng = np.random.default_rng(0)
    x = rng.normal(0, [1.0, 2.0, 5.0], (10001, 3)).astype(np.float32)
    per_channel = compute_threshold(x, single_threshold=False, std_factor=(2.0, 4.5))
    assert per_channel.shape == (2, 3)
    std = _mad_std(x)
    np.testing.assert_allclose(per_channel, [2.0 * std, 4.5 * std], rtol=1e-6)
    # The MAD estimate is the noise std for Gaussian noise.
    np.testing.assert_allclose(std, [1.0, 2.0, 5.0], rtol=0.05)
    single = compute_threshold(x)  # default factors (2.0, 4.5)
    assert single.shape == (2,)
    s = _mad_std(x.reshape(-1, 1))[0]
    np.testing.assert_allclose(single, [2.0 * s, 4.5 * s], rtol=1e-6)
    np.testing.assert_allclose(compute_threshold(x, std_factor=3), [3 * s, 3 * s], rtol=1e-6)
    for bad in [(1, 2, 3), -1.0, "a"]:
        with pytest.raises(ThresholdError, match="std_factor"):
            compute_threshold(x, std_factor=bad)
    with pytest.raises(ThresholdError, match="shape"):
        compute_threshold(np.zeros(10))


def test_excerpts():
    ex = excerpts(1000, 5, 100)
    assert ex == [(0, 100), (225, 325), (450, 550), (675, 775), (900, 1000)]
    assert excerpts(250, 5, 100) == [(0, 100), (100, 200), (200, 250)]  # tiles when short
    assert excerpts(50, 5, 100) == [(0, 50)]
    assert excerpts(1000, 1, 100) == [(450, 550)]
    with pytest.raises(ThresholdError):
        excerpts(0, 5, 10)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 60), st.integers(1, 10**5))
def test_excerpts_properties(n, k, size):
    ex = excerpts(n, k, size)
    assert 1 <= len(ex) <= k
    for (_, b), (c, _) in zip(ex, ex[1:]):
        assert b <= c  # sorted, no overlap
    assert all(0 <= a < b <= n and b - a <= size for a, b in ex)


def test_compute_threshold_from_traces(tmp_path):
    rng = np.random.default_rng(1)
    raw = (rng.normal(0, 30, (20000, 4)) + 1000).astype(np.int16)
    path = tmp_path / "raw.dat"
    raw.tofile(path)
    traces = np.memmap(path, dtype=np.int16, mode="r", shape=raw.shape)
    fil = Filter(10000.0)
    thr = compute_threshold_from_traces(
        traces, fil, n_excerpts=4, excerpt_size_samples=1000, single_threshold=False
    )
    # Independent: filter the whole recording, take the same excerpts.
    whole = fil(raw.astype(np.float32))
    ref = np.concatenate([whole[a:b] for a, b in excerpts(20000, 4, 1000)])
    np.testing.assert_allclose(thr, compute_threshold(ref, False, (2.0, 4.5)), rtol=1e-5)
    single = compute_threshold_from_traces(traces, fil, n_excerpts=4, excerpt_size_samples=1000)
    assert single.shape == (2,)
    only = compute_threshold_from_traces(
        traces, fil, 4, 1000, single_threshold=False, channels=[1, 3]
    )
    np.testing.assert_allclose(only, thr[:, [1, 3]])
    # A memory budget shortens the excerpts (4 excerpts x 4 channels x 100 samples).
    small = compute_threshold_from_traces(traces, fil, 4, 1000, False, max_values=1600)
    ref = np.concatenate([whole[a:b] for a, b in excerpts(20000, 4, 100)])
    np.testing.assert_allclose(small, compute_threshold(ref, False), rtol=1e-5)
    assert not np.allclose(small, thr, rtol=1e-3)
    with pytest.raises(ThresholdError, match="shape"):
        compute_threshold_from_traces(np.zeros(10), fil)


def test_thresholder_modes():
    data = np.array([[-3.0, 0.5], [1.5, -0.5], [2.5, -1.5]], dtype=np.float32)
    thresholds = {"weak": 1.0, "strong": 2.0}
    pos = Thresholder("positive", thresholds)
    neg = Thresholder("negative", thresholds)
    both = Thresholder("both", thresholds)
    np.testing.assert_array_equal(pos.transform(data), data)
    np.testing.assert_array_equal(neg.transform(data), -data)
    np.testing.assert_array_equal(both.transform(data), np.abs(data))
    for thr in (pos, neg, both):
        crossings = thr(data)
        assert set(crossings) == {"weak", "strong"}
        for name, value in thresholds.items():
            expected = thr.transform(data) > value
            np.testing.assert_array_equal(crossings[name], expected)
            np.testing.assert_array_equal(thr.detect(thr.transform(data), name), expected)
            np.testing.assert_array_equal(thr(data, name), expected)
    np.testing.assert_array_equal(neg(data)["weak"], [[True, False], [False, False], [False, True]])
    assert Thresholder().mode == "negative"


def test_thresholder_threshold_forms():
    data = np.array([[0.15, 0.25], [0.05, 0.3]])
    t = Thresholder("positive", thresholds=(0.1, 0.2))  # the reference's example
    np.testing.assert_array_equal(t(data)["strong"], [[False, True], [False, True]])
    per_channel = compute_threshold(np.ones((5, 2)), single_threshold=False, std_factor=1)
    t = Thresholder("positive", thresholds=per_channel * [[0.1], [0.2]])
    assert set(t.thresholds) == {"weak", "strong"}
    t = Thresholder("positive", thresholds=0.1)
    np.testing.assert_array_equal(t.detect(data), data > 0.1)  # the only threshold
    t = Thresholder("positive", thresholds={"a": np.array([0.1, 0.28])})  # per channel
    np.testing.assert_array_equal(t(data)["a"], [[True, False], [False, True]])
    with pytest.raises(ThresholdError, match="mode"):
        Thresholder("up")
    with pytest.raises(ThresholdError, match="unknown threshold"):
        Thresholder("positive", {"a": 1.0})(data, "b")
    with pytest.raises(ThresholdError, match="name the threshold"):
        Thresholder("positive", (1.0, 2.0)).detect(data)
    with pytest.raises(ThresholdError, match=r"\(weak, strong\)"):
        Thresholder("positive", (1.0, 2.0, 3.0))
    (stage,) = THRESHOLD_STAGES
    assert (stage.name, stage.kind) == ("mad", "threshold")
    assert stage.factory(**stage.parameters).mode == "negative"


def _correlated(n, c, rng):
    mixing = rng.normal(size=(c, c)) + 3 * np.eye(c)
    return (rng.normal(size=(n, c)) @ mixing.T).astype(np.float32)


def test_whitening():
    rng = np.random.default_rng(2)
    x = _correlated(20000, 6, rng)
    assert np.abs(np.cov(x, rowvar=False) - np.eye(6)).max() > 1  # really correlated
    w = Whitening()
    matrix = w.fit(x)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-10)  # ZCA: symmetric
    y = w.transform(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(6), atol=1e-3)
    with pytest.raises(WhiteningError, match="fitted on 6 channels"):
        w.transform(x[:, :3])
    with pytest.raises(WhiteningError, match="fit"):
        Whitening().transform(x)
    with pytest.raises(WhiteningError, match="shape"):
        Whitening().fit(np.zeros(10))


def test_local_whitening():
    rng = np.random.default_rng(3)
    x = _correlated(20000, 8, rng)
    # Whole-probe neighbourhoods: equal to the global ZCA.
    full = LocalWhitening(n_neighbors=8).fit(x)
    glob = Whitening()
    glob.fit(x)
    np.testing.assert_allclose(full.transform(x), glob.transform(x), rtol=0, atol=1e-4)
    # Local: noise shared by neighbours only (a band matrix mixing).
    c = 40
    band = np.eye(c) + 0.3 * np.eye(c, k=1) + 0.3 * np.eye(c, k=-1)
    z = (rng.normal(size=(20000, c)) @ band.T).astype(np.float32)
    positions = np.c_[np.zeros(c), 20.0 * np.arange(c)]
    lw = LocalWhitening(n_neighbors=9, channel_positions=positions).fit(z)
    assert lw.neighbors.shape == (c, 9) and np.all(lw.neighbors[:, 0] == np.arange(c))
    y = lw.transform(z)
    cov = np.cov(y, rowvar=False)
    before = np.cov(z, rowvar=False)
    off = ~np.eye(c, dtype=bool)
    assert np.abs(before[off]).max() > 0.4
    assert np.abs(cov[off]).max() < 0.05 and np.abs(np.diag(cov) - 1).max() < 0.05
    # Independent reference (each channel from its neighbourhood's ZCA), for the
    # banded kernel (linear probe) and the gather kernel (shuffled channel order).
    perm = rng.permutation(c)
    for lw_, data in [(lw, z), (LocalWhitening(9, positions[perm]).fit(z[:, perm]), z[:, perm])]:
        assert (lw_._band is None) == (lw_ is not lw)
        ref = np.empty(data.shape)
        for ch in range(c):
            nb = lw_.neighbors[ch]
            d, v = np.linalg.eigh(np.cov(data[:, nb].astype(float), rowvar=False))
            ref[:, ch] = data[:, nb] @ ((v / np.sqrt(d)) @ v.T)[0]
        np.testing.assert_allclose(lw_.transform(data), ref, rtol=0, atol=1e-4)
    with pytest.raises(WhiteningError, match="channel_positions"):
        LocalWhitening(channel_positions=positions[:5]).fit(z)
    (stage,) = WHITENING_STAGES
    assert (stage.name, stage.kind) == ("whitening", "whitening")
    assert isinstance(stage.factory(**stage.parameters), Whitening)
    assert isinstance(stage.factory(scope="local"), LocalWhitening)


def _small_ties_case(mode, n_samples, n_channels, per_channel, seed):
    """Integer-valued traces (many values on the thresholds) and a Thresholder with one
    threshold pair, or one per channel."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-6, 7, size=(n_samples, n_channels)).astype(np.float32)
    if per_channel:
        weak = rng.integers(0, 3, n_channels).astype(float)
        strong = weak + rng.integers(1, 4, n_channels)
    else:
        weak, strong = 2.0, 4.0
    return data, Thresholder(mode, thresholds={"weak": weak, "strong": strong})


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(["positive", "negative", "both"]),
       n_samples=st.integers(1, 40), n_channels=st.integers(1, 9),
       per_channel=st.booleans(), seed=st.integers(0, 2**16))
def test_transform_detect_equals_the_separate_steps(mode, n_samples, n_channels, per_channel,
                                                    seed):
    # The fused kernel gives exactly `transform` and the two `detect` calls, values on the
    # thresholds included (ties are the strict inequality's).
    data, thresholder = _small_ties_case(mode, n_samples, n_channels, per_channel, seed)
    data_t = thresholder.transform(data)
    expected = (data_t, thresholder.detect(data_t, "weak"), thresholder.detect(data_t, "strong"))
    out = (np.full_like(data, np.nan), np.ones(data.shape, bool), np.ones(data.shape, bool))
    for got in (thresholder.transform_detect(data), thresholder.transform_detect(data, out=out)):
        for g, e in zip(got, expected, strict=True):
            assert g.dtype == e.dtype
            np.testing.assert_array_equal(g, e)
    assert thresholder.transform_detect(data, out=out)[1] is out[1]
    # Other dtypes take the separate steps (same values).
    got = thresholder.transform_detect(data.astype(np.float64))
    np.testing.assert_array_equal(got[2], thresholder.detect(data_t.astype(np.float64), "strong"))


def _unpack_bits(bits, n_samples):
    """The bool (n_samples, n_channels) array of a time-major crossing bitmap, in numpy."""
    shifts = np.arange(8, dtype=np.uint8)
    per_sample = (bits[:, None, :] >> shifts[None, :, None]) & 1  # (bytes, 8, channels)
    full = per_sample.reshape(-1, bits.shape[1]).astype(bool)
    assert not full[n_samples:].any()  # no bit past the last sample
    return full[:n_samples]


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(["positive", "negative", "both"]),
       n_samples=st.integers(1, 40), n_channels=st.integers(1, 9),
       per_channel=st.booleans(), seed=st.integers(0, 2**16))
def test_transform_bits_equals_the_separate_steps(mode, n_samples, n_channels, per_channel,
                                                  seed):
    # Bit t % 8 of byte [t // 8, c] is the crossing (t, c) of `detect`, ties included; the
    # preallocated bitmaps may hold garbage (the first sample of each byte assigns it).
    data, thresholder = _small_ties_case(mode, n_samples, n_channels, per_channel, seed)
    data_t = thresholder.transform(data)
    shape = ((n_samples + 7) // 8, n_channels)
    out = (np.full_like(data, np.nan), np.full(shape, 255, np.uint8),
           np.full(shape, 255, np.uint8))
    for got in (thresholder.transform_bits(data), thresholder.transform_bits(data, out=out)):
        np.testing.assert_array_equal(got[0], data_t)
        for bits, name in zip(got[1:], ("weak", "strong"), strict=True):
            assert bits.dtype == np.uint8 and bits.shape == shape
            np.testing.assert_array_equal(_unpack_bits(bits, n_samples),
                                          thresholder.detect(data_t, name))
    assert thresholder.transform_bits(data, out=out)[2] is out[2]
    with pytest.raises(ThresholdError, match="float32"):
        thresholder.transform_bits(data.astype(np.float64))


def _parts_medians(parts, single):
    """The exact medians of |parts| through their brackets, as the runner's workers do."""
    from phy_detect.threshold import (
        median_bracket,
        medians_from_parts,
        merge_brackets,
        values_in_bracket,
    )

    bracket = merge_brackets([median_bracket(p, single) for p in parts])
    n_values = sum(p.size if single else len(p) for p in parts)
    return medians_from_parts(n_values, [values_in_bracket(p, single, bracket) for p in parts])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.integers(1, 5),
       st.sampled_from(["normal", "ties", "zeros", "extremes", "drift"]), st.booleans(),
       st.integers(0, 2**16))
def test_medians_from_parts_equal_np_median(sizes, n_channels, kind, single, seed):
    # Parts of any size (even and odd totals), ties, dead channels, values beyond the
    # binned range (below 2**-20, above 2**30), and parts with very different levels.
    rng = np.random.default_rng(seed)
    parts = []
    for i, n in enumerate(sizes):
        x = rng.normal(0, 30, (n, n_channels))
        if kind == "ties":
            x = np.round(x / 20) * 20
        elif kind == "zeros":
            x[:, 0] = 0
        elif kind == "extremes":
            x *= rng.choice([1e-9, 1.0, 1e12], size=x.shape)
        elif kind == "drift":
            x *= 10.0 ** i
        parts.append(x.astype(np.float32))
    got = _parts_medians(parts, single)
    union = np.abs(np.concatenate(parts))
    expected = np.median(union) if single else np.median(union, axis=0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.atleast_1d(expected))


def test_medians_from_parts_on_many_values():
    # Many values: the brackets hold a few percent of them, the medians stay exact.
    from phy_detect.threshold import median_bracket, merge_brackets, values_in_bracket

    rng = np.random.default_rng(5)
    parts = [(rng.standard_normal((1001, 16)) * rng.uniform(10, 12, 16)).astype(np.float32)
             for _ in range(20)]
    for single in (True, False):
        got = _parts_medians(parts, single)
        union = np.abs(np.concatenate(parts))
        np.testing.assert_array_equal(
            got, np.atleast_1d(np.median(union) if single else np.median(union, axis=0)))
        bracket = merge_brackets([median_bracket(p, single) for p in parts])
        inside = sum(len(values_in_bracket(p, single, bracket)[1]) for p in parts)
        assert inside < 0.25 * union.size
