"""The refinement's split test (phy_tmatch.split): bisection, the compiled mixture EM,
parts beyond a scale and a shift, a split part's far field."""

from __future__ import annotations

import numpy as np
import pytest
from tmatch_spikes import HOME, N_CHANNELS, N_T
from tmatch_spikes import spike as _spike

from phy_tmatch.refine import RefineParameters
from phy_tmatch.split import _bisect, _two_gaussians, split_units, with_far_field


def test_bisection_splits_two_gaussians_and_not_one():
    rng = np.random.default_rng(0)
    p = RefineParameters()
    dim = 200
    signal = np.zeros(dim)
    signal[:40] = 2.0  # a unit's mean waveform, in noise units
    one = rng.standard_normal((120, dim)) + signal
    assert _bisect(one, p) is None
    assert len(split_units(one, p)) == 1
    other = signal.copy()
    other[20:60] = -1.5  # another unit, with 40 samples of its own
    two = np.concatenate([one[:80], rng.standard_normal((40, dim)) + other])
    labels = _bisect(two, p)
    assert labels is not None
    # The halves are the two units (either label).
    assert abs(int(labels[:80].sum()) - int(labels[80:].sum())) >= 80 - 2
    small = np.concatenate([one[:110], rng.standard_normal((p.min_spikes - 1, dim)) + other])
    assert _bisect(small, p) is None  # a part smaller than min_spikes is not a unit


def _numpy_em(y, labels, reg, n_iter=60):
    """A two-Gaussian mixture's EM in plain numpy (scipy-free), the reference of the kernel."""
    resp = np.stack([labels == 0, labels == 1], axis=1).astype(np.float64)
    ll = -np.inf
    for _ in range(n_iter):
        logp = np.empty_like(resp)
        for j in range(2):
            w = resp[:, j] / resp[:, j].sum()
            mean = w @ y
            cov = (y - mean).T @ ((y - mean) * w[:, None]) + reg * np.eye(y.shape[1])
            sign, log_det = np.linalg.slogdet(cov)
            maha = np.einsum("nd,de,ne->n", y - mean, np.linalg.inv(cov), y - mean)
            logp[:, j] = (np.log(resp[:, j].mean()) - 0.5 * maha - 0.5 * log_det
                          - 0.5 * y.shape[1] * np.log(2 * np.pi))
        total = np.logaddexp(logp[:, 0], logp[:, 1])
        new_ll = float(total.sum())
        resp = np.exp(logp - total[:, None])
        done = new_ll - ll < 1e-6 * abs(new_ll)
        ll = new_ll
        if done:
            break
    return resp.argmax(axis=1), ll


def test_compiled_mixture_em_is_the_numpy_em():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((70, 3)) @ np.array([[1.0, 0.3, 0], [0, 0.8, 0.2], [0, 0, 0.5]])
    y = np.concatenate([a, rng.standard_normal((40, 3)) * 0.7 + [2.5, -1.0, 0.5]])
    start = (y[:, 1] > np.median(y[:, 1])).astype(np.int64)  # a poor start
    labels, ll = _two_gaussians(y, start, 1e-3)
    ref_labels, ref_ll = _numpy_em(y, start, 1e-3)
    assert np.array_equal(labels, ref_labels)
    assert ll == pytest.approx(ref_ll, rel=1e-9)
    assert min(np.bincount(labels)) >= 35  # and it found the two clusters
    # Too few points for a component's covariance: the start comes back, with -inf.
    few = np.zeros(len(y), dtype=np.int64)
    few[:3] = 1
    labels, ll = _two_gaussians(y, few, 1e-3)
    assert ll == -np.inf and labels is few


# -- Shape beyond a scale: two co-located units of one shape, amplitudes 1.15 apart -----------


def _moved_spike(offset: float, shift: float = 0.0) -> np.ndarray:
    """`_spike` with its footprint `offset` channels further (a unit a few um away)."""
    t = np.arange(N_T)[:, None] - 15.0 - shift
    shape = -np.exp(-0.5 * (t / 2.0) ** 2) + 0.4 * np.exp(-0.5 * ((t - 6.0) / 4.0) ** 2)
    footprint = np.exp(-0.5 * ((np.arange(N_CHANNELS) - HOME - offset) / 2.0) ** 2)
    return 8.0 * shape * footprint[None, :]


def _pair_snippets(rng, n_a: int, n_b: int, ratio: float, offset: float,
                   jitter: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Flat snippets of two units (the second `ratio` times larger, its footprint moved by
    `offset` channels), misaligned by up to half a sample, in white noise; (x, truth)."""
    spikes = [a * _spike(d) for a, d in zip(1 + jitter * rng.standard_normal(n_a),
                                            rng.uniform(-0.5, 0.5, n_a))]
    spikes += [a * _moved_spike(offset, d) for a, d in zip(
        ratio * (1 + jitter * rng.standard_normal(n_b)), rng.uniform(-0.5, 0.5, n_b))]
    x = np.stack(spikes) + rng.standard_normal((n_a + n_b, N_T, N_CHANNELS))
    return x.reshape(n_a + n_b, -1), np.r_[np.zeros(n_a, np.int64), np.ones(n_b, np.int64)]


def test_two_units_of_one_shape_beyond_a_scale_are_split():
    # Cosine 0.97, norms 1.15 apart (units 89 and 130 of the 1024 channels: 0.98, 1.14):
    # each spike is ~5 noise sigmas from the other unit beyond a scale, but the parts'
    # means are alike: without `distinct_beyond_scale` the split is vetoed as one unit
    # whose amplitude varies.
    beyond = RefineParameters()
    alike = RefineParameters(distinct_beyond_scale=False)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x, truth = _pair_snippets(rng, 150, 60, 1.15, 0.6)
        assert len(split_units(x, alike, n_t=N_T)) == 1
        parts = split_units(x, beyond, n_t=N_T)
        assert len(parts) == 2
        labels = np.zeros(len(x), np.int64)
        labels[parts[1]] = 1
        assert max((labels == truth).mean(), (labels != truth).mean()) >= 0.9
        # One unit, its amplitude varying by 10 or 20 %: not split.
        for jitter in (0.1, 0.2):
            x, _ = _pair_snippets(rng, 210, 0, 1.0, 0.0, jitter)
            assert len(split_units(x, beyond, n_t=N_T)) == 1


def test_a_split_part_alike_to_its_template_keeps_its_far_field():
    p = RefineParameters()
    parent = _spike()
    chans = np.arange(4, 13)
    part = np.zeros_like(parent)
    part[:, chans] = 1.2 * parent[:, chans] + 0.05 * np.random.default_rng(0).standard_normal(
        (N_T, len(chans)))
    out = with_far_field(part, parent, chans, p)
    assert np.array_equal(out[:, chans], part[:, chans])
    far = np.setdiff1d(np.arange(N_CHANNELS), chans)
    assert np.allclose(out[:, far], 1.2 * parent[:, far], rtol=0.02, atol=1e-3)
    # A part of another unit (centred elsewhere) is left as it is.
    other = np.zeros_like(parent)
    other[:, chans] = np.roll(parent, 5, axis=1)[:, chans]
    assert np.array_equal(with_far_field(other, parent, chans, p), other)
