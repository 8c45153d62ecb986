"""Template matching (phy_tmatch): kernels, recall, overlapping spikes, chunking, outputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from phy_core.bunch import Bunch
from phy_core.cli import main
from phy_core.model import check_model
from phy_detect.evaluation import detection_report, match_spikes
from phy_detect.executors import SerialExecutor
from phy_synthetic.recording import synthesize_recording
from phy_template.model import TemplateModel
from phy_tmatch.kernels import BLOCK, cross_correlations, project, pursue, pursue_in
from phy_tmatch.output import write_template_directory
from phy_tmatch.runner import match_spikes as tmatch_spikes
from phy_tmatch.runner import template_match
from phy_tmatch.templates import TemplateMatchingError, TemplateSet

DURATION_S = 4.0


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tmatch_rec")
    synthesize_recording(folder, name="rec", probe="linear32", duration_s=DURATION_S, seed=5)
    return folder


@pytest.fixture(scope="module")
def ground_truth(recording):
    return dict(np.load(recording / "rec.groundtruth.npz"))


def _match(recording, gt, out, **options):
    options.setdefault("executor", SerialExecutor())
    return tmatch_spikes(recording / "rec.prm", gt["spike_samples"], gt["spike_clusters"], out,
                         **options)


@pytest.fixture(scope="module")
def matched(recording, ground_truth, tmp_path_factory):
    return _match(recording, ground_truth, tmp_path_factory.mktemp("tmatch_out"))


@pytest.fixture(scope="module")
def kwik(recording, tmp_path_factory):
    from phy_detect.runner import detect

    return detect(recording / "rec.prm", output_dir=tmp_path_factory.mktemp("tmatch_kwik"),
                  executor=SerialExecutor())


# -- kernels against direct computations ------------------------------------------------------


def _random_templates(rng, n_templates=3, n_t=9, n_channels=6, rank=2):
    ptr, idx, spatial = [0], [], []
    for _ in range(n_templates):
        chans = np.sort(rng.choice(n_channels, size=3, replace=False))
        idx.extend(chans)
        spatial.append(rng.standard_normal((3, rank)))
        ptr.append(len(idx))
    return TemplateSet(
        cluster_ids=np.arange(n_templates) + 10, ptr=np.array(ptr), idx=np.array(idx),
        spatial=np.concatenate(spatial).astype(np.float32),
        temporal=rng.standard_normal((n_templates, rank, n_t)).astype(np.float32),
        trough=np.zeros(n_templates, dtype=np.int64),
        n_spikes=np.ones(n_templates, dtype=np.int64), n_channels=n_channels,
        explained=np.ones(n_templates))


def test_projections_and_cross_correlations_match_dense_computations():
    rng = np.random.default_rng(0)
    t = _random_templates(rng)
    dense = t.dense().astype(np.float64)
    x = rng.standard_normal((50, t.n_channels)).astype(np.float32)
    b = np.empty((t.n_templates, 50 - t.n_samples + 1), dtype=np.float32)
    project(np.ascontiguousarray(x.T), t.pptr, t.pidx, t.pspatial, t.temporal, b)
    expected = np.array([[(dense[k] * x[s:s + t.n_samples]).sum() for s in range(b.shape[1])]
                         for k in range(t.n_templates)])
    np.testing.assert_allclose(b, expected, rtol=1e-4, atol=1e-4)

    cc = cross_correlations(t.temporal, t.ptr, t.idx, t.spatial, t.spatial_dense(True),
                            t.nbr_ptr, t.nbr_idx)
    w = t.n_samples - 1
    for k in range(t.n_templates):
        for e in range(t.nbr_ptr[k], t.nbr_ptr[k + 1]):
            kk = t.nbr_idx[e]
            for d in range(-w, w + 1):
                # Removing a unit spike of k at s changes B[kk, s + d] by cc[e, d + w].
                shifted = np.zeros((3 * t.n_samples, t.n_channels))
                shifted[t.n_samples:2 * t.n_samples] = dense[k]
                window = shifted[t.n_samples + d:2 * t.n_samples + d]
                assert cc[e, d + w] == pytest.approx((dense[kk] * window).sum(), abs=1e-4)
    np.testing.assert_allclose(t.norm2, (dense ** 2).sum(axis=(1, 2)), rtol=1e-5)


def test_pursuit_resolves_overlapping_spikes_without_noise():
    rng = np.random.default_rng(1)
    t = _random_templates(rng)
    dense = t.dense()
    n = 200
    x = np.zeros((n, t.n_channels), dtype=np.float32)
    truth = [(40, 0, 1.0), (43, 1, 1.2), (120, 2, 0.9), (122, 0, 1.1)]  # two overlaps
    for s, k, a in truth:
        x[s:s + t.n_samples] += a * dense[k]
    b = np.empty((t.n_templates, n - t.n_samples + 1), dtype=np.float32)
    project(np.ascontiguousarray(x.T), t.pptr, t.pidx, t.pspatial, t.temporal, b)
    cc = cross_correlations(t.temporal, t.ptr, t.idx, t.spatial, t.spatial_dense(True),
                            t.nbr_ptr, t.nbr_idx)
    spikes, amplitudes, n_rounds = pursue(
        b, t.norm2, np.full(t.n_templates, 1e-3, dtype=np.float32), np.float32(5.0),
        np.float32(0.5), np.float32(1.5), np.full(3, 0.5, np.float32), np.full(3, 1.5, np.float32),
        2, t.nbr_ptr, t.nbr_idx, cc, 10)
    found = sorted(zip(spikes[:, 0].tolist(), spikes[:, 1].tolist(),
                       np.round(amplitudes, 3).tolist()))
    assert [(s, k) for s, k, _ in found] == [(s, k) for s, k, _ in truth]
    # Greedy amplitudes of overlapping spikes are a little off (each is fitted while the
    # other is still there: matching pursuit, not a joint least-squares fit).
    np.testing.assert_allclose([a for *_, a in found], [a for *_, a in truth], atol=0.06)
    assert 2 <= n_rounds <= 10  # the overlapping spikes cannot be accepted in one round
    # Little is left in the residual's projections.
    assert np.abs(b).max() < 0.1 * t.norm2.max()


def _proportional_pair(seed, ratio, snr=1.0, n_t=12, n_channels=6, rank=2):
    """Templates 0 and 1 on the same channels, template 1 `ratio` times template 0.

    Scaled so that template 0's energy ``|T|^2`` is ``snr ** 2`` (in white noise of
    unit variance, a unit spike's projection stands `snr` deviations out).
    """
    rng = np.random.default_rng(seed)
    spatial = rng.standard_normal((4, rank)).astype(np.float32)
    temporal = rng.standard_normal((1, rank, n_t)).astype(np.float32)
    dense = np.einsum("cr,rt->tc", spatial, temporal[0])
    spatial *= np.float32(snr / np.sqrt((dense.astype(np.float64) ** 2).sum()))
    return TemplateSet(
        cluster_ids=np.array([10, 11]), ptr=np.array([0, 4, 8]), idx=np.array([0, 1, 2, 3] * 2),
        spatial=np.concatenate([spatial, np.float32(ratio) * spatial]),
        temporal=np.concatenate([temporal, temporal]), trough=np.zeros(2, dtype=np.int64),
        n_spikes=np.ones(2, dtype=np.int64), n_channels=n_channels, explained=np.ones(2))


def _pursue_pair(t, x, parameters, sigma):
    from phy_tmatch.matching import amplitude_bounds, amplitude_prior

    b = np.empty((t.n_templates, len(x) - t.n_samples + 1), dtype=np.float32)
    project(np.ascontiguousarray(x.T), t.pptr, t.pidx, t.pspatial, t.temporal, b)
    cc = cross_correlations(t.temporal, t.ptr, t.idx, t.spatial, t.spatial_dense(True),
                            t.nbr_ptr, t.nbr_idx)
    alo, ahi = amplitude_bounds(t.norm2, sigma, parameters)
    prior = amplitude_prior(t.norm2, sigma, parameters)
    args = (b, t.norm2, sigma, np.float32(parameters.z_threshold),
            np.float32(parameters.amplitude_min), np.float32(parameters.amplitude_max), alo, ahi,
            parameters.refractory, t.nbr_ptr, t.nbr_idx, cc, parameters.max_rounds)
    return pursue(*args) if prior is None else pursue(*args, prior)


def test_amplitude_prior_assigns_spikes_of_proportional_templates_to_their_own():
    # Two units of one shape, one 1.3 times the other: a spike of either scores the same
    # on both templates (2 a B - a^2 |T|^2 at the best a), so the pursuit cannot tell them
    # apart; the prior N(1, s^2) on the amplitude can (a ~ 1 on its own template, 1.3 or
    # 1 / 1.3 on the other).
    from phy_tmatch.matching import MatchParameters

    rng = np.random.default_rng(7)
    ratio = 1.3
    t = _proportional_pair(7, ratio, snr=20.0)
    n_spikes, gap = 200, 40
    truth_k = rng.integers(0, 2, n_spikes)
    truth_a = 1.0 + 0.05 * rng.standard_normal(n_spikes)
    starts = 20 + gap * np.arange(n_spikes)
    x = rng.standard_normal((starts[-1] + 60, t.n_channels)).astype(np.float32)
    for s, k, a in zip(starts, truth_k, truth_a):
        x[s:s + t.n_samples] += a * t.dense()[k]
    sigma = np.sqrt(t.norm2).astype(np.float32)  # white noise: B's spread is |T|

    def assigned(prior_std):
        p = MatchParameters(refractory=5, amplitude_prior_std=prior_std)
        spikes, amplitudes, _ = _pursue_pair(t, x, p, sigma)
        order = np.argsort(spikes[:, 0])
        found, kinds = spikes[order, 0], spikes[order, 1]
        assert np.array_equal(found, starts)  # every spike found once, at its start
        return kinds, amplitudes[order]

    without, _ = assigned(None)
    with_prior, amplitudes = assigned(0.1)
    # Without the prior, only the clipping of the amplitude to 0.75-1.35 tells some apart.
    assert np.mean(without == truth_k) < 0.8
    # With it, a spike goes to the other template only when its fitted amplitude is
    # closer to the other's mean (a > 2 r / (1 + r) = 1.13 for a spike of template 0;
    # amplitude jitter and noise 0.07: ~3 % of them).
    assert np.mean(with_prior == truth_k) > 0.93
    # Each isolated spike goes where the posterior is highest, computed here directly:
    # max over a in [0.75, 1.35] of 2 a B - a^2 |T|^2 - w (a - 1)^2, w = 1 / s^2.
    dense = t.dense().astype(np.float64)
    proj = np.array([[(dense[k] * x[s:s + t.n_samples]).sum() for k in range(2)]
                     for s in starts])
    n2, w = (dense ** 2).sum(axis=(1, 2)), 1.0 / 0.1 ** 2
    a = np.clip((proj + w) / (n2 + w), 0.75, 1.35)
    best = np.argmax(2 * a * proj - a * a * n2 - w * (a - 1) ** 2, axis=1)
    np.testing.assert_array_equal(with_prior, best)
    # The amplitudes are the posterior's mode (B + w) / (|T|^2 + w): a little pulled to 1.
    a_fit = truth_a / np.where(with_prior == truth_k, 1.0,
                               np.where(truth_k == 1, 1.0 / ratio, ratio))
    assert np.abs(amplitudes - a_fit).max() < 0.2
    assert np.std(amplitudes - 1.0) < np.std(a_fit - 1.0)


def test_amplitude_prior_amplitude_is_the_posterior_mode():
    # One spike, no noise: B = a |T|^2, so the amplitude is (a |T|^2 + w) / (|T|^2 + w).
    from phy_tmatch.matching import MatchParameters, amplitude_prior

    t = _proportional_pair(3, 1.0, snr=10.0).subset([0])
    x = np.zeros((80, t.n_channels), dtype=np.float32)
    x[30:30 + t.n_samples] += np.float32(1.2) * t.dense()[0]
    sigma = np.float32(0.5) * np.sqrt(t.norm2).astype(np.float32)  # noise B spread
    p = MatchParameters(refractory=5, z_threshold=1.0, amplitude_prior_std=0.2)
    w = amplitude_prior(t.norm2, sigma, p)
    n2 = float(t.norm2[0])
    assert w[0] == pytest.approx(0.25 * n2 / (n2 * 0.04), rel=1e-5)
    spikes, amplitudes, _ = _pursue_pair(t, x, p, sigma)
    assert spikes.tolist() == [[30, 0]]
    expected = (1.2 * n2 + w[0]) / (n2 + w[0])
    assert amplitudes[0] == pytest.approx(expected, rel=1e-4)
    assert 1.0 < amplitudes[0] < 1.2


def _five_spikes_projected():
    """Three random templates, five spikes (two pairs overlapping) in noise: the
    templates, the projections and `pursue`'s other arguments."""
    rng = np.random.default_rng(4)
    t = _random_templates(rng)
    x = rng.standard_normal((400, t.n_channels)).astype(np.float32)
    for s, k in ((40, 0), (43, 1), (200, 2), (203, 0), (330, 1)):
        x[s:s + t.n_samples] += 4.0 * t.dense()[k]
    b = np.empty((t.n_templates, 400 - t.n_samples + 1), dtype=np.float32)
    project(np.ascontiguousarray(x.T), t.pptr, t.pidx, t.pspatial, t.temporal, b)
    cc = cross_correlations(t.temporal, t.ptr, t.idx, t.spatial, t.spatial_dense(True),
                            t.nbr_ptr, t.nbr_idx)
    args = (t.norm2, np.full(t.n_templates, 1.0, dtype=np.float32), np.float32(3.0),
            np.float32(0.5), np.float32(5.0), np.full(3, 0.3, np.float32),
            np.full(3, 6.0, np.float32), 5, t.nbr_ptr, t.nbr_idx, cc, 10)
    return t, b, args


def test_no_amplitude_prior_is_a_prior_of_weight_zero():
    t, b, args = _five_spikes_projected()
    expected = pursue(b.copy(), *args)
    assert len(expected[0]) >= 5
    zero = pursue(b.copy(), *args, np.zeros(t.n_templates, np.float32))
    for a, e in zip(zero, expected):
        np.testing.assert_array_equal(a, e)
    # A prior of some weight changes the amplitudes (they are pulled to 1).
    some = pursue(b.copy(), *args, np.full(t.n_templates, 50.0, np.float32))
    assert not np.array_equal(some[1], expected[1])


def test_projections_across_blocks_and_channel_groups_match_dense_computations():
    # Templates on 7 channels (a group of four and three more) and a chunk of several
    # blocks of the kernel (`BLOCK`), the last one partial.
    rng = np.random.default_rng(2)
    n_channels, n_t, n = 12, 13, 2 * BLOCK + 37
    ptr = np.arange(0, 4 * 7 + 1, 7)
    idx = np.concatenate([np.sort(rng.choice(n_channels, 7, replace=False)) for _ in range(4)])
    t = TemplateSet(cluster_ids=np.arange(4), ptr=ptr, idx=idx,
                    spatial=rng.standard_normal((len(idx), 3)).astype(np.float32),
                    temporal=rng.standard_normal((4, 3, n_t)).astype(np.float32),
                    trough=np.zeros(4, dtype=np.int64), n_spikes=np.ones(4, dtype=np.int64),
                    n_channels=n_channels, explained=np.ones(4))
    x = rng.standard_normal((n, n_channels)).astype(np.float32)
    b = np.full((4, n - n_t + 1), np.nan, dtype=np.float32)
    project(np.ascontiguousarray(x.T), t.pptr, t.pidx, t.pspatial, t.temporal, b)
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), n_t, axis=0)
    expected = np.einsum("sct,ktc->ks", windows, t.dense().astype(np.float64))
    np.testing.assert_allclose(b, expected, rtol=1e-4, atol=1e-3)


def test_a_subset_of_templates_projects_as_in_the_whole_set():
    from phy_tmatch.matching import projections

    rng = np.random.default_rng(3)
    t = _random_templates(rng, n_templates=4, n_channels=12)
    x = rng.standard_normal((300, 12)).astype(np.float32)
    sub = t.subset([2, 0])
    np.testing.assert_array_equal(sub.cluster_ids, t.cluster_ids[[2, 0]])
    np.testing.assert_array_equal(sub.dense(), t.dense()[[2, 0]])
    np.testing.assert_array_equal(sub.norm2, t.norm2[[2, 0]])
    # Two templates read at most 6 of the 12 channels: only those are made channel-major.
    np.testing.assert_array_equal(projections(x, sub), projections(x, t)[[2, 0]])
    digests = t.digests()
    assert sub.digests() == [digests[2], digests[0]] and len(set(digests)) == 4
    other = t.subset([1])
    other.temporal[0, 0, 0] += 1.0
    assert other.digests()[0] != digests[1]


def test_pursuit_in_stale_work_arrays_equals_the_pursuit():
    t, b, args = _five_spikes_projected()
    expected = pursue(b.copy(), *args)
    assert len(expected[0]) >= 5
    k, m = b.shape
    work = (np.full((k, m), np.nan, np.float32), np.ones((k, m), np.uint8),
            np.full((m // 2 + 1, 2), -7), np.ones(m, np.uint8))
    for _ in range(2):  # the second time in the arrays the first left
        got = pursue_in(b.copy(), *args, *work)
        for a, e in zip(got, expected):
            np.testing.assert_array_equal(a, e)


def test_templates_a_refinement_left_alone_are_kept_as_they_were():
    from phy_core.bunch import Bunch
    from phy_tmatch.runner import _keep_unchanged, _make_templates, _options

    rng = np.random.default_rng(5)
    o = _options({})
    n_t, n_channels = 20, 8
    tt = np.arange(n_t)
    means = np.zeros((3, n_t, n_channels))
    for k in range(3):
        shape = -np.exp(-0.5 * ((tt - 8 - k) / 2.0) ** 2) + 0.3 * np.sin(tt / (2.0 + k))
        means[k, :, 2 * k:2 * k + 3] = 20.0 * shape[:, None] * (1.0 + rng.random(3))
    noise = np.ones(n_channels)
    old = _make_templates(means, np.full(3, 200), np.array([5, 6, 7]), noise, None, None, o)
    # The refinement gives back templates 5 and 7 as they were (their own waveforms, other
    # counts), changes 6 and adds 9.
    dense = old.dense().astype(np.float64)
    changed = dense[1] * 1.2
    refined = Bunch(means=np.stack([dense[0], changed, dense[2], means[0][::-1]]),
                    n_spikes=np.array([50, 60, 70, 80]), cluster_ids=np.array([5, 6, 7, 9]))
    new = _make_templates(refined.means, refined.n_spikes, refined.cluster_ids, noise, None,
                          None, o)
    kept = _keep_unchanged(old, refined, new)
    np.testing.assert_array_equal(kept.cluster_ids, [5, 6, 7, 9])
    np.testing.assert_array_equal(kept.n_spikes, [50, 60, 70, 80])
    old_d, new_d, kept_d = old.digests(), new.digests(), kept.digests()
    assert kept_d == [old_d[0], new_d[1], old_d[2], new_d[3]]
    np.testing.assert_allclose(kept.dense(), new.dense(), atol=1e-4 * np.abs(dense).max())


def test_the_noise_of_known_templates_is_not_measured_again(recording, ground_truth):
    from phy_core.progress import ProgressReporter
    from phy_detect.filtering import Filter
    from phy_tmatch.runner import _options, _projection_noise

    rng = np.random.default_rng(6)
    rate = float(ground_truth["sample_rate"])
    n_samples = int(DURATION_S * rate)
    t = _random_templates(rng, n_templates=4, n_t=30, n_channels=32)
    o = _options(dict(n_noise_excerpts=2, noise_excerpt_s=0.5))
    filter_ = Filter(rate, 500.0, 0.475 * rate, precision="float32")
    executor = SerialExecutor()

    def noise(templates, known):
        return _projection_noise(str(recording / "rec.prm"), np.arange(32), filter_, 10, 30,
                                 templates, "token", executor, ProgressReporter(), n_samples,
                                 rate, o, known=known)

    known = {}
    sigma, cpu_s = noise(t, known)
    assert len(known) == 4 and cpu_s > 0 and np.all(sigma > 0)
    # Measured again for one new template only, the others' values as before.
    sub = t.subset([3, 1])
    fresh = _random_templates(np.random.default_rng(7), n_templates=1, n_t=30, n_channels=32)
    from phy_tmatch.templates import gather_templates

    mixed = gather_templates([(sub, 0), (fresh, 0), (sub, 1)], 32, t.rank, 30)
    sigma_mixed, cpu_mixed = noise(mixed, known)
    assert len(known) == 5 and cpu_mixed > 0
    assert sigma_mixed[0] == sigma[3] and sigma_mixed[2] == sigma[1]
    # The new template's value is the one a whole measurement gives.
    assert sigma_mixed[1] == noise(fresh, {})[0][0]
    sigma_again, cpu_again = noise(mixed, known)
    np.testing.assert_array_equal(sigma_again, sigma_mixed)
    assert cpu_again == 0


def test_pooled_residual_over_sample_blocks_matches_a_direct_computation():
    from phy_tmatch.residual import pooled_residual

    rng = np.random.default_rng(3)
    n_channels, n_pool, n = 7, 6, 9001  # 6 neighbours: not a multiple of 4; n spans blocks
    xt = rng.standard_normal((n_channels, n)).astype(np.float32)
    nbr = np.stack([rng.permutation(n_channels)[:n_pool] for _ in range(n_channels)])
    weights = rng.uniform(-1, 1, (n_channels, n_pool)).astype(np.float32)
    inv_sigma = rng.uniform(0.5, 2, n_channels).astype(np.float32)
    out = np.full((n_channels, n), np.nan, dtype=np.float32)
    pooled_residual(xt, inv_sigma, nbr, weights, out)
    expected = np.einsum("cp,cpt->ct", weights.astype(np.float64) * inv_sigma[nbr],
                         xt[nbr].astype(np.float64))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_abs_medians_equal_numpy_medians_and_channel_noise_is_unchanged():
    from phy_tmatch.kernels import abs_medians
    from phy_tmatch.templates import channel_noise

    rng = np.random.default_rng(6)
    for n, step in [(101, 16), (97, 16), (2, 1), (1, 1), (1000, 1), (999, 3)]:
        # Rows of very different scales (the radix selection works on the bits), zeros,
        # negative zeros, ties; odd and even counts (the mean of the middle two).
        x = (rng.standard_normal((6, n)) * np.logspace(-3, 4, 6)[:, None]).astype(np.float32)
        x[0, ::3], x[1], x[2, ::2] = 0.0, -0.0, 7.25
        np.testing.assert_array_equal(abs_medians(x, step),
                                      np.median(np.abs(x[:, ::step]), axis=1))
    filtered = (rng.standard_normal((403, 7)) * 20).astype(np.float32)
    np.testing.assert_array_equal(channel_noise(filtered),
                                  np.median(np.abs(filtered[::4]), axis=0))


def _troughs_by_definition(z, threshold, nbr, half_width, lo, hi):
    found = []
    for c in range(z.shape[0]):
        for t in range(lo, hi):
            v = z[c, t]
            if v >= -threshold:
                continue
            window = [(z[cc, u], u, cc) for cc in nbr[c]
                      for u in range(max(0, t - half_width), min(z.shape[1], t + half_width + 1))]
            if min(window) == (v, t, c):  # ties: the earlier sample, then the lower channel
                found.append([t, c])
    return found


def test_residual_troughs_match_their_definition_across_scan_blocks():
    from phy_tmatch.residual import local_channels, residual_troughs

    rng = np.random.default_rng(4)
    positions = np.c_[np.zeros(8), 20.0 * np.arange(8)]
    nbr = local_channels(positions, 3)
    z = rng.standard_normal((8, 700)).astype(np.float32)
    for t, c, v in [(63, 1, -7), (64, 2, -7), (127, 4, -6), (128, 4, -6), (300, 6, -9),
                    (301, 7, -9), (450, 0, -5.5), (699, 3, -8), (20, 5, -6)]:
        z[c, t] = v  # at the edges of the kernel's scan blocks, ties in time and channel
    for lo, hi in [(0, 700), (21, 650), (64, 129)]:
        troughs = residual_troughs(z, np.float32(5.0), nbr, 10, lo, hi, 1000)
        assert troughs.tolist() == _troughs_by_definition(z, 5.0, nbr, 10, lo, hi)
        assert len(troughs) >= 1


# -- on a synthetic recording with ground truth -----------------------------------------------


def test_matching_finds_at_least_what_detection_found(matched, recording, ground_truth, kwik):
    from phy_kwik.model import KwikModel

    model = TemplateModel(matched)
    assert check_model(model) == []
    rate = float(ground_truth["sample_rate"])
    true_s, true_u = ground_truth["spike_samples"], ground_truth["spike_clusters"]
    with KwikModel(kwik) as detected:
        detection = detection_report(detected.spike_samples_fractional, true_s, true_u, rate)
    tmatch = detection_report(model.spike_samples, true_s, true_u, rate)
    assert np.all(tmatch.recall >= detection.recall - 1e-9), (tmatch.recall, detection.recall)
    assert tmatch.recall.mean() > detection.recall.mean()
    # Few spikes that are no true spike, and each spike carries the right template.
    assert tmatch.n_false <= 0.02 * len(true_s)
    found = tmatch.matches >= 0
    clusters = np.asarray(model.spike_clusters)[tmatch.matches[found]]
    assert np.mean(clusters == true_u[found]) > 0.98
    amplitudes = np.asarray(model.amplitudes)
    assert amplitudes.min() >= 0.75 - 1e-6 and amplitudes.max() <= 1.35 + 1e-6
    assert model.templates.shape[0] == len(np.unique(true_u))


def test_overlapping_spikes_of_two_units_are_both_found(recording, ground_truth, tmp_path):
    gt = ground_truth
    folder = tmp_path / "rec"
    shutil.copytree(recording, folder)
    templates, trough = gt["templates"], int(gt["template_trough"])
    peaks = gt["unit_peak_channels"]
    n_t = templates.shape[1]
    # Two clearly visible units with nearby peak channels.
    units = [u for u in np.argsort(-gt["unit_snr"]) if gt["unit_snr"][u] >= 4]
    a, b = next((u, v) for i, u in enumerate(units) for v in units[i + 1:]
                if 0 < abs(int(peaks[u]) - int(peaks[v])) <= 3)
    # A quiet place: no true spike within 3 ms.
    samples = gt["spike_samples"]
    t0 = next(t for t in range(15000, 100000, 500)
              if np.all(np.abs(samples - t) > 90) and np.all(np.abs(samples - t - 6) > 90))
    dat = np.memmap(folder / "rec.dat", dtype=np.int16, mode="r+").reshape(-1, 32)
    for unit, t in ((a, t0), (b, t0 + 6)):  # 0.2 ms apart: one flood-fill component
        window = dat[t - trough:t - trough + n_t].astype(np.float64) + templates[unit]
        dat[t - trough:t - trough + n_t] = np.round(window).astype(np.int16)
    dat.flush()
    del dat
    out = _match(folder, gt, tmp_path / "out")
    model = TemplateModel(out)
    near = np.abs(model.spike_samples - t0 - 3) <= 20
    found = sorted(zip(model.spike_samples[near].tolist(),
                       np.asarray(model.spike_clusters)[near].tolist()))
    assert len(found) == 2, found
    (s1, c1), (s2, c2) = found
    assert (c1, c2) == (a, b)
    assert abs(s1 - t0) <= 2 and abs(s2 - t0 - 6) <= 2


def test_result_does_not_depend_on_chunk_size(matched, recording, ground_truth, tmp_path):
    other = _match(recording, ground_truth, tmp_path / "small", chunk_size_s=0.37)
    whole = _match(recording, ground_truth, tmp_path / "whole", chunk_size_s=DURATION_S)
    for out in (other, whole):
        for name in ("spike_times.npy", "spike_templates.npy", "spike_clusters.npy"):
            np.testing.assert_array_equal(np.load(out / name), np.load(matched / name))
        np.testing.assert_allclose(np.load(out / "amplitudes.npy"),
                                   np.load(matched / "amplitudes.npy"), atol=1e-5)


def test_scratch_arrays_are_reused_resized_and_released():
    from phy_tmatch.worker import release_scratch, scratch

    a = scratch("test", (3, 4))
    b = scratch("test", (2, 5))  # fits: the same memory, another shape
    assert b.shape == (2, 5) and b.flags.c_contiguous and np.shares_memory(a, b)
    c = scratch("test", (4, 4))  # larger: a new array
    assert c.shape == (4, 4) and not np.shares_memory(a, c)
    assert scratch("test", (2, 2), dtype=np.uint8).dtype == np.uint8
    assert not np.shares_memory(scratch("other", (2, 2)), scratch("test", (2, 2)))
    release_scratch()
    assert not np.shares_memory(scratch("test", (2, 2)), c)
    release_scratch()


def test_stale_scratch_arrays_do_not_change_the_result(matched, recording, ground_truth,
                                                       tmp_path):
    import json

    from phy_tmatch import worker

    # Larger than any array of this recording, and NaN: a value read before being written
    # would show in the spikes.
    for name in ("chunk", "xt", "b", "score"):
        worker.scratch(name, (4_000_000,)).fill(np.nan)
    for name in ("blocked", "marks_search"):  # the pursuit's work arrays
        worker.scratch(name, (4_000_000,), np.uint8).fill(1)
    worker.scratch("search", (4_000_000,), np.int64).fill(-7)
    out = _match(recording, ground_truth, tmp_path / "stale")
    for name in ("spike_times.npy", "spike_templates.npy", "amplitudes.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(matched / name))
    assert worker._SCRATCH.arrays == {}  # released at the end of the run
    info = json.loads((out / "tmatch.json").read_text())
    for key in ("cpu_templates_s", "cpu_noise_s", "cpu_matching_s"):
        assert info[key] > 0
    assert info["cpu_refine_s"] == 0  # no refinement round
    # The timeline: every job of the three passes, in order within each pass.
    spans = {what: [(a, b) for _, w, a, b in info["timeline"] if w == what]
             for what in ("templates", "noise", "match 0")}
    assert all(spans.values()) and not any(w.startswith("refine") for _, w, _, _ in
                                           info["timeline"])
    assert all(0 <= a <= b <= info["elapsed_s"] + 0.01 for a, b in sum(spans.values(), []))
    assert max(b for _, b in spans["templates"]) <= min(a for a, _ in spans["noise"]) \
        and max(b for _, b in spans["noise"]) <= min(a for a, _ in spans["match 0"])


def test_template_match_from_a_kwik_file(kwik, recording, ground_truth, tmp_path, capsys):
    from phy_kwik.model import KwikModel

    # A clustering made from the ground truth: each detected spike gets its true unit
    # (+ 2), unmatched detections the noise cluster 0, one unit the MUA cluster 1.
    gt = ground_truth
    with KwikModel(kwik) as model:
        matches = match_spikes(model.spike_samples_fractional, gt["spike_samples"], 12)
        clusters = np.zeros(model.n_spikes, dtype=np.int64)
        found = matches >= 0
        clusters[matches[found]] = gt["spike_clusters"][found] + 2
        mua_unit = int(gt["spike_clusters"][0])
        clusters[clusters == mua_unit + 2] = 1
        groups = {int(c): (int(c) if c < 2 else 3) for c in np.unique(clusters)}
        model.save(clusters, groups)
    out = template_match(recording / "rec.prm", kwik, tmp_path / "out",
                         executor=SerialExecutor())
    model = TemplateModel(out)
    ids, counts = np.unique(clusters, return_counts=True)
    expected = [c for c, n in zip(ids.tolist(), counts) if c > 1 and n >= 3]  # min_spikes
    assert len(expected) >= 4
    assert sorted(np.unique(model.spike_clusters).tolist()) == expected
    assert model.cluster_groups == {c: 3 for c in expected}
    # Through the command line, with the MUA cluster included and the output replaced.
    assert main(["template-match", str(recording / "rec.prm"), str(kwik), "--output-dir",
                 str(out), "--include-mua", "--overwrite", "--n-workers", "1"]) == 0
    assert "Wrote" in capsys.readouterr().out
    assert 1 in np.unique(TemplateModel(out).spike_clusters)
    # And `phy evaluate` reads the result.
    assert main(["evaluate", str(out), str(recording / "rec.prm")]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_clear_errors(recording, ground_truth, matched, tmp_path):
    with pytest.raises(TemplateMatchingError, match="already holds a template directory"):
        _match(recording, ground_truth, matched)
    with pytest.raises(TemplateMatchingError, match="Unknown template-matching option"):
        _match(recording, ground_truth, tmp_path / "a", z_treshold=3)
    with pytest.raises(TemplateMatchingError, match="amplitude_range"):
        _match(recording, ground_truth, tmp_path / "b", amplitude_range=(1.2, 2.0))
    with pytest.raises(TemplateMatchingError, match="at least 3 spikes"):
        tmatch_spikes(recording / "rec.prm", [100, 200], [4, 4], tmp_path / "c",
                      executor=SerialExecutor())
    assert not (tmp_path / "a").exists() and not (tmp_path / "c" / "params.py").exists()


def test_template_sums_from_spike_windows_equal_those_from_whole_chunks(recording, ground_truth):
    from phy_detect.chunks import plan_chunks
    from phy_detect.filtering import Filter
    from phy_tmatch.worker import Setup, spike_segments, template_job

    rate = float(ground_truth["sample_rate"])
    setup = Setup(str(recording / "rec.prm"), np.arange(32),
                  Filter(rate, 500.0, 0.475 * rate, precision="float32"),
                  "templates", before=24, n_t=66)
    chunk = plan_chunks(int(DURATION_S * rate), int(rate), setup.filter.margin_samples + 66)[1]
    samples, units = ground_truth["spike_samples"], ground_truth["spike_clusters"]
    inside = np.flatnonzero((samples >= chunk.keep_start) & (samples < chunk.keep_stop))[::3]
    samples, units = samples[inside], units[inside]
    assert spike_segments(setup, chunk, samples) is not None  # sparse: windows only
    windows = template_job(setup, [(chunk, samples, units, False)])
    whole = template_job(setup, [(chunk, samples, units, True)])  # noise: the whole chunk
    np.testing.assert_array_equal(windows.templates, whole.templates)
    np.testing.assert_array_equal(windows.counts, whole.counts)
    np.testing.assert_allclose(windows.sums, whole.sums, atol=1e-3 * np.abs(whole.sums).max())
    assert len(whole.noise) == 1 and whole.xtx[0].shape == (32, 32)


def _match_job(recording, ground_truth):
    """Templates of the ground truth's units in the first chunk, and a match job of it.

    Returns ``(match, n_inside, templates)``: ``match(cc, token, parameters=None)`` runs
    the job (`cc`: the cross-correlations it is given, or None); `n_inside`: true spikes.
    """
    from phy_core.progress import ProgressReporter
    from phy_detect.chunks import plan_chunks
    from phy_detect.filtering import Filter
    from phy_tmatch.matching import MatchParameters
    from phy_tmatch.runner import _options, _projection_noise
    from phy_tmatch.templates import build_templates, noise_std_from_medians
    from phy_tmatch.worker import Setup, run_job, template_job

    rate = float(ground_truth["sample_rate"])
    prm, filter_ = str(recording / "rec.prm"), Filter(rate, 500.0, 0.475 * rate,
                                                      precision="float32")
    n_samples = int(DURATION_S * rate)
    setup = Setup(prm, np.arange(32), filter_, "templates", before=24, n_t=66)
    chunk = plan_chunks(n_samples, 2 * int(rate), filter_.margin_samples + 66)[0]
    samples, units = ground_truth["spike_samples"], ground_truth["spike_clusters"]
    inside = (samples >= chunk.keep_start + 100) & (samples < chunk.keep_stop - 100)
    sums = template_job(setup, [(chunk, samples[inside], units[inside], True)])
    t = build_templates(sums.sums / sums.counts[:, None, None], sums.counts, sums.templates,
                        noise_std_from_medians(sums.noise), channel_fraction=0.1,
                        significance=4.0, max_channels=64, rank=3)
    sigma, _ = _projection_noise(prm, np.arange(32), filter_, 24, 66, t, "t", SerialExecutor(),
                                 ProgressReporter(), n_samples, rate,
                                 _options(dict(n_noise_excerpts=2, noise_excerpt_s=0.5)))
    chunk = plan_chunks(n_samples, 2 * int(rate), filter_.margin_samples + 2000)[0]

    def match(cc, token, parameters=None, transpose_after=False):
        """`transpose_after`: the chunk filtered, then transposed for the projections
        (`matching.channel_major`), not transposed by the filter (what the job does)."""
        job = Setup(prm, np.arange(32), filter_, "match", before=24, n_t=66, templates=t,
                    parameters=parameters or MatchParameters(), sigma=sigma, token=token,
                    cross_correlations=cc)
        if transpose_after:
            from phy_tmatch.matching import match_chunk
            from phy_tmatch.worker import filtered_chunk

            return match_chunk(job, chunk, filtered_chunk(job, chunk).copy())
        return run_job((job, chunk, None))

    return match, int(inside.sum()), t


def test_a_match_job_given_the_parents_cross_correlations_is_the_job_that_makes_them(
        recording, ground_truth):
    # The runner makes the templates' cross-correlations once, while the workers measure
    # the noise, and sends them with the jobs; a job without them makes its own.
    from phy_tmatch.matching import template_cross_correlations

    match, n_inside, t = _match_job(recording, ground_truth)
    own, given = match(None, "own"), match(template_cross_correlations(t), "given")
    assert len(own.spike_samples) > 0.8 * n_inside
    for key in ("spike_samples", "spike_templates", "amplitudes"):
        np.testing.assert_array_equal(own[key], given[key])
    # They are used: without the interactions, a removed spike's neighbours are not updated.
    wrong = match(np.zeros_like(template_cross_correlations(t)), "zero")
    assert not np.array_equal(wrong.spike_samples, own.spike_samples)


def test_the_amplitude_prior_reaches_the_match_jobs(recording, ground_truth):
    # MatchParameters.amplitude_prior_std goes with the job to the worker's pursuit: the
    # same spikes, nearly, with amplitudes pulled towards 1 (the prior's mean).
    from phy_tmatch.matching import MatchParameters, template_cross_correlations

    match, n_inside, t = _match_job(recording, ground_truth)
    cc = template_cross_correlations(t)
    plain = match(cc, "plain")
    prior = match(cc, "prior", MatchParameters(amplitude_prior_std=0.05))
    assert len(plain.spike_samples) > 0.8 * n_inside
    same = np.intersect1d(plain.spike_samples, prior.spike_samples)
    assert len(same) > 0.95 * len(plain.spike_samples)
    spread = [np.abs(np.log(r.amplitudes)).mean() for r in (plain, prior)]
    assert spread[1] < 0.8 * spread[0]


def test_a_match_job_on_the_filters_channel_major_chunk_finds_the_same_spikes(
        recording, ground_truth):
    # The job's filter writes the chunk channel-major as it goes (`worker.filtered_chunk`):
    # the same spikes, templates and amplitudes, bit for bit, as transposing afterwards.
    match, n_inside, t = _match_job(recording, ground_truth)
    fused, after = match(None, "fused"), match(None, "after", transpose_after=True)
    assert len(fused.spike_samples) > 0.8 * n_inside
    for key in ("spike_samples", "spike_templates", "amplitudes"):
        np.testing.assert_array_equal(fused[key], after[key])


def test_filtered_chunk_channel_major_is_the_transpose(recording, ground_truth):
    # The filter's channel-major output, and that of a filter that is not a `Filter`
    # (transposed afterwards), against the time-major chunk.
    from phy_detect.chunks import plan_chunks
    from phy_detect.filtering import Filter
    from phy_tmatch.worker import Setup, filtered_chunk

    rate = float(ground_truth["sample_rate"])
    chunk = plan_chunks(int(DURATION_S * rate), int(rate), 3000)[1]
    for filter_ in (Filter(rate, 500.0, 0.475 * rate), lambda x: 2.0 * x):
        setup = Setup(str(recording / "rec.prm"), np.arange(3, 29), filter_, "match")
        data = filtered_chunk(setup, chunk, name="time-major").copy()
        again, xt = filtered_chunk(setup, chunk, channel_major=True)
        np.testing.assert_array_equal(again, data)
        assert xt.shape == (26, chunk.load_stop - chunk.load_start)
        np.testing.assert_array_equal(xt, data.T)
        assert np.abs(data).max() > 0


# -- the refinement's events: a capped uniform sample ----------------------------------------


def _chunk_events(rng, n, n_templates=3, n_homes=4, n_t=5, n_local=2):
    from phy_tmatch.residual import MISFIT

    # Matched spikes (>= 0), residual events (-1) and misfits (MISFIT - template).
    labels = rng.integers(-2, n_templates, n)
    labels = np.where(labels == -2, MISFIT - rng.integers(0, n_templates, n), labels)
    return Bunch(samples=rng.integers(0, 10**6, n), labels=labels,
                 homes=rng.integers(0, n_homes, n),
                 snippets=rng.standard_normal((n, n_t, n_local)).astype(np.float32))


def _group_counts(events):
    # Per template; per home channel, the residual events, then the misfits.
    labels, homes = np.asarray(events.labels), np.asarray(events.homes)
    return (np.bincount(labels[labels >= 0], minlength=1),
            np.bincount(homes[labels == -1], minlength=1),
            np.bincount(homes[labels < -1], minlength=1))


def test_an_event_sample_under_its_caps_is_the_concatenation_of_the_chunks():
    from phy_tmatch.event_sample import EventSample

    rng = np.random.default_rng(0)
    chunks = [_chunk_events(rng, n) for n in (7, 0, 12, 5)]
    sample = EventSample(max_per_template=100, max_per_home=100)
    for i, events in enumerate(chunks):
        sample.add(events, i)
    out = sample.result(snippet_dtype=np.float64)
    for key in ("samples", "labels", "homes", "snippets"):
        np.testing.assert_array_equal(out[key], np.concatenate([c[key] for c in chunks]))
    assert out.snippets.dtype == np.float64 and out.labels.dtype == chunks[0].labels.dtype


def test_an_event_sample_holds_its_caps_and_is_uniform_over_the_recording():
    from phy_tmatch.event_sample import EventSample

    rng = np.random.default_rng(1)
    chunks = [_chunk_events(rng, 40) for _ in range(10)]
    for i, events in enumerate(chunks):
        events.samples = 1000 * i + np.arange(40)  # an event's identity
    every = Bunch({key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]})
    n_templates, n_homes, n_misfits = _group_counts(every)
    cap_t, cap_h = 10, 7
    sample = EventSample(cap_t, cap_h, seed=3)
    for i, events in enumerate(chunks):
        sample.add(events, i)
        # Memory: at most twice the capped sample and a chunk, whatever the number of chunks.
        assert sample.n_held <= 2 * (n_templates.size * cap_t
                                     + (n_homes.size + n_misfits.size) * cap_h) + 40
    assert sample.n_seen == 400
    out = sample.result()
    got_t, got_h, got_m = _group_counts(out)
    np.testing.assert_array_equal(got_t, np.minimum(n_templates, cap_t))
    np.testing.assert_array_equal(got_h, np.minimum(n_homes, cap_h))
    np.testing.assert_array_equal(got_m, np.minimum(n_misfits, cap_h))  # a cap of their own
    # A subset of the events (each event's sample is unique), in their order.
    index = np.flatnonzero(np.isin(every.samples, out.samples))
    np.testing.assert_array_equal(every.snippets[index], out.snippets)
    # Uniform: over seeds, every event of template 0 is kept with probability cap / n, the
    # first chunks' as often as the last ones' (a cap filled first come, or evenly per
    # chunk with a minimum of one, would not be).
    group = np.flatnonzero(every.labels == 0)
    kept = np.zeros(len(group))
    n_seeds = 400
    for seed in range(n_seeds):
        s = EventSample(cap_t, cap_h, seed=seed)
        for i, events in enumerate(chunks):
            s.add(events, i)
        kept += np.isin(every.samples[group], s.result().samples)
    p = cap_t / len(group)
    frequency = kept / n_seeds
    assert np.abs(frequency - p).max() < 5 * np.sqrt(p * (1 - p) / n_seeds)
    half = len(group) // 2
    assert abs(frequency[:half].mean() - frequency[half:].mean()) < 0.03


def test_the_refinement_gets_at_most_the_capped_events(recording, ground_truth, tmp_path,
                                                       monkeypatch):
    import phy_tmatch.refine as refine_module

    received = []
    real_refine = refine_module.refine

    def recording_refine(templates, events, *args, **kwargs):
        received.append(Bunch(events))
        return real_refine(templates, events, *args, **kwargs)

    monkeypatch.setattr(refine_module, "refine", recording_refine)
    # Eight chunks: the workers' share of each cap (at least one event per chunk) adds up
    # to more than the cap, which the parent enforces. Half of the units have no template:
    # their spikes are residual events.
    units = np.unique(ground_truth["spike_clusters"])
    _match(recording, ground_truth, tmp_path / "out", cluster_ids=units[::2], refine_rounds=1,
           chunk_size_s=0.5, max_snippets_per_template=5, max_residual_per_channel=3)
    assert len(received) == 1
    events = received[0]
    per_template, per_home, per_home_misfits = _group_counts(events)
    assert per_template.max() == 5 and per_home.max() == 3 and per_home_misfits.max() <= 3
    assert events.snippets.dtype == np.float64 and len(events.samples) == len(events.snippets)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_template_directory_files_are_synced_before_their_renames_and_the_directory_after(
        tmp_path, monkeypatch):
    templates = _random_templates(np.random.default_rng(0))
    result = Bunch(spike_samples=np.array([5, 40, 90]), spike_templates=np.array([0, 2, 1]),
                   amplitudes=np.ones(3))
    prm = Bunch(traces=Bunch(raw_data_files=[str(tmp_path / "rec.dat")], n_channels=6,
                             dtype="int16", offset=0, sample_rate=20000.0))
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(
        ("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda src, dst: real_replace(src, dst) or events.append(
        ("rename", str(dst))))
    out = write_template_directory(tmp_path / "tm", prm, templates, result, np.arange(6),
                                   np.zeros((6, 2)), cluster_groups={10: 2}, info=dict(a=1))
    renames = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    dir_syncs = [i for i, event in enumerate(events) if event == ("fsync", str(out))]
    assert len(renames) == 10 and len(dir_syncs) == 2
    for i in renames:   # each file's data reached the disk before its rename
        assert events[i - 1][0] == "fsync"
        assert Path(events[i - 1][1]).name.startswith("." + Path(events[i][1]).name + ".")
    # params.py is renamed last, after a directory sync that makes the other renames durable
    assert events[renames[-1]][1] == str(out / "params.py")
    assert renames[-2] < dir_syncs[0] < renames[-1] < dir_syncs[1] == len(events) - 1
    assert TemplateModel(out).n_spikes == 3
