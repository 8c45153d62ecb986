"""Template refinement (phy_tmatch.refine, phy_tmatch.residual): find, split, merge templates.

Each test gives the template matching seed clusters that are wrong in a known
way (a unit missing, two units in one cluster, one unit in two clusters), and
checks against the ground truth that the refinement repairs them while the
matching alone does not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from phy_core.bunch import Bunch
from phy_detect.executors import SerialExecutor
from phy_evaluate.metrics import evaluate
from phy_template.model import TemplateModel
from phy_tmatch.refine import (
    RefineParameters,
    SnippetWhitener,
    _amplitude_modes,
    _beyond_scale_and_shift,
    _bisect,
    _compare_snippets,
    _duplicates,
    _mean_amplitude,
    _modes_independent,
    _recording_jitter,
    _refractory_conflict,
    _two_gaussians,
    _with_far_field,
    refine,
    split_units,
)
from phy_tmatch.residual import local_channels, pooling_weights, residual_troughs
from phy_tmatch.runner import match_spikes
from phy_tmatch.templates import TemplateMatchingError, build_templates

# Seed 1, 8 s on linear32: units 2 (channel 9, SNR 5.0) and 4 (channel 12, SNR 7.1)
# are neighbours; unit 6 (channel 25, SNR 14.8) has 39 spikes.
NEIGHBOURS, LONE = (2, 4), 6


@pytest.fixture(scope="module")
def recording(linear32_seed1_8s):
    # Seed 1, 8 s: shared with other modules (conftest.py), read only.
    return linear32_seed1_8s


@pytest.fixture(scope="module")
def truth(recording):
    return dict(np.load(recording / "rec.groundtruth.npz"))


def _accuracy(recording, truth, seeds_samples, seeds_clusters, out, rounds):
    out = match_spikes(recording / "rec.prm", seeds_samples, seeds_clusters, out,
                       executor=SerialExecutor(), refine_rounds=rounds)
    model = TemplateModel(out)
    result = evaluate(truth["spike_samples"], truth["spike_clusters"], model.spike_samples,
                      model.spike_clusters, float(truth["sample_rate"]))
    info = json.loads((out / "tmatch.json").read_text())
    return dict(zip(result.units.tolist(), result.accuracy)), info["refinements"], model


def test_the_units_are_what_the_tests_assume(truth):
    counts = np.bincount(truth["spike_clusters"])
    assert counts[LONE] >= 30 and truth["unit_snr"][LONE] > 10
    assert all(counts[u] >= 40 for u in NEIGHBOURS)
    peaks = truth["unit_peak_channels"]
    assert abs(int(peaks[NEIGHBOURS[0]]) - int(peaks[NEIGHBOURS[1]])) <= 4


def test_a_unit_missing_from_the_seeds_is_found_in_the_residual(recording, truth, tmp_path):
    keep = truth["spike_clusters"] != LONE
    s, c = truth["spike_samples"][keep], truth["spike_clusters"][keep]
    before, _, _ = _accuracy(recording, truth, s, c, tmp_path / "plain", 0)
    after, refinements, _ = _accuracy(recording, truth, s, c, tmp_path / "refined", 1)
    assert before[LONE] < 0.1
    assert after[LONE] >= 0.9
    assert refinements[0]["n_new"] >= 1
    # The others are not harmed.
    assert all(after[u] >= 0.9 for u in after if u != LONE and before[u] >= 0.9)


def test_two_units_given_as_one_seed_cluster_are_split(recording, truth, tmp_path):
    s, c = truth["spike_samples"], truth["spike_clusters"].copy()
    c[c == NEIGHBOURS[1]] = NEIGHBOURS[0]
    before, _, _ = _accuracy(recording, truth, s, c, tmp_path / "plain", 0)
    after, refinements, _ = _accuracy(recording, truth, s, c, tmp_path / "refined", 1)
    assert min(before[u] for u in NEIGHBOURS) < 0.5
    assert all(after[u] >= 0.9 for u in NEIGHBOURS)
    assert refinements[0]["n_split"] >= 1


def test_one_unit_given_as_two_seed_clusters_is_merged(recording, truth, tmp_path):
    s, c = truth["spike_samples"], truth["spike_clusters"].copy()
    unit = NEIGHBOURS[1]
    halves = np.flatnonzero(c == unit)[::2]
    c[halves] = 100  # every other spike in a second cluster
    before, _, _ = _accuracy(recording, truth, s, c, tmp_path / "plain", 0)
    after, refinements, model = _accuracy(recording, truth, s, c, tmp_path / "refined", 1)
    assert before[unit] < 0.8
    assert after[unit] >= 0.9
    assert refinements[0]["n_merged"] >= 1
    # A merged template is a new cluster (ids are never reused).
    assert not np.isin([unit, 100], model.spike_clusters).all()
    assert model.spike_clusters.max() > 100
    # The last pass's spikes were consolidated (`phy_tmatch.consolidate`).
    info = json.loads((tmp_path / "refined" / "tmatch.json").read_text())
    assert set(info["consolidation"]) == {"n_duplicate_spikes", "n_dropped", "n_merged"}


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


def test_snippet_whitening_is_the_separable_whitening():
    rng = np.random.default_rng(4)
    n_t, n_channels, n_local = 9, 6, 4
    mixing = rng.standard_normal((n_channels, n_channels))
    covariance = mixing @ mixing.T + np.eye(n_channels)
    sigma = np.sqrt(np.diag(covariance))
    local = local_channels(np.c_[np.zeros(n_channels), 20.0 * np.arange(n_channels)], n_local)
    whitener = SnippetWhitener(covariance, sigma, local)
    groups = [(rng.standard_normal((30, n_t, n_local)), 2), (rng.standard_normal((1, n_t,
                                                                                   n_local)), 3)]
    whitener.fit_temporal(groups)
    # The temporal covariance, from its definition, sum over spikes and channels.
    x, home = groups[0]
    y = np.stack([(s - x.mean(axis=0)) @ whitener.spatial(home).T for s in x])
    s_t = sum(y[m] @ y[m].T for m in range(len(y))) / (len(y) * n_local)
    assert np.allclose(np.linalg.inv(whitener.temporal @ whitener.temporal), s_t, rtol=1e-6)
    # A snippet whitened is (W_t (x) W_c) vec(x), row-major.
    out = whitener(x[:5], home)
    kron = np.kron(whitener.temporal, whitener.spatial(home))
    assert np.allclose(out, x[:5].reshape(5, -1) @ kron.T, rtol=1e-10, atol=1e-12)
    chans = local[home][[0, 2, 3]]
    out = whitener.on_channels(x[:5][:, :, [0, 2, 3]], chans)
    kron = np.kron(whitener.temporal, whitener._spatial[tuple(int(c) for c in chans)])
    assert np.allclose(out.reshape(5, -1), x[:5][:, :, [0, 2, 3]].reshape(5, -1) @ kron.T,
                       rtol=1e-10, atol=1e-12)


def test_snippet_comparison_joins_a_weak_units_residual_events_but_not_another_unit():
    # A weak unit (trough 3x the noise on channel 0, 1.5x on channel 1) in white noise.
    rng = np.random.default_rng(1)
    p = RefineParameters()
    n_t = 30
    positions = np.c_[np.zeros(4), 20.0 * np.arange(4)]
    local = local_channels(positions, 4)
    whitener = SnippetWhitener(None, np.ones(4), local)
    whitener.temporal = np.eye(n_t)
    shape = np.zeros((n_t, 4))
    shape[8:13, 0] = [-1.0, -2.5, -3.0, -2.5, -1.0]
    shape[8:13, 1] = shape[8:13, 0] / 2
    shape[14:20, 0] = 1.0

    def events(n, waveform=shape):
        return waveform + rng.standard_normal((n, n_t, 4))

    matched = events(80)
    # The same unit's events of a fair sample: indistinct by the test.
    same, cos, ratio = _compare_snippets(matched, 0, events(30), 0, 0, whitener, local, p)
    assert same and cos > 0.8
    # The 8 deepest of 40 (residual events are chosen by their troughs): their mean is
    # biased, yet alike in shape and amplitude, which is what joins them to the template.
    pool = events(40)
    deepest = pool[np.argsort(pool[:, 10, 0])[:8]]
    same, cos, ratio = _compare_snippets(matched, 0, deepest, 0, 0, whitener, local, p)
    assert cos >= p.fragment_similarity
    assert 1 / p.merge_amplitude_ratio <= ratio <= p.merge_amplitude_ratio
    # Another unit of the same amplitude on the channels next to it: neither.
    other = np.zeros_like(shape)
    other[:, 2], other[:, 3] = shape[:, 0], shape[:, 1]
    same, cos, ratio = _compare_snippets(matched, 0, events(8, other), 0, 0, whitener, local, p)
    assert not same and cos < p.fragment_similarity


def test_means_differing_by_a_scale_and_a_fraction_of_a_sample_are_one_unit():
    # Means of 50 events each (noise variance 2/50 per dimension of the difference):
    # the same waveform 1.15x larger and 0.3 sample later is one unit; a waveform
    # with a second trough, or 3 samples later, is not.
    p = RefineParameters()
    n_t, n = 40, 50
    t = np.arange(n_t)[:, None]

    def waveform(shift=0.0, scale=1.0, second=0.0):
        trough = -6 * np.exp(-0.5 * ((t - 15 - shift) / 1.5) ** 2)
        return (scale * trough * np.array([1.0, 0.5, 0.2])
                + second * np.exp(-0.5 * ((t - 28) / 1.5) ** 2) * np.array([0, 1.0, 0]))

    rng = np.random.default_rng(2)
    noise = 2.0 / n

    def verdict(b):
        a = waveform().reshape(-1) + rng.standard_normal(n_t * 3) * np.sqrt(1 / n)
        b = b.reshape(-1) + rng.standard_normal(n_t * 3) * np.sqrt(1 / n)
        dims = np.argsort(-np.maximum(np.abs(a), np.abs(b)))[:30]
        stat, bar = _beyond_scale_and_shift(a, b, n_t, dims, noise, p)
        return stat < bar

    assert verdict(waveform())
    assert verdict(waveform(shift=0.3, scale=1.15))
    assert not verdict(waveform(second=-3.0))
    assert not verdict(waveform(shift=3.0))
    assert not verdict(waveform(scale=2.0))


def test_means_one_sample_apart_are_one_unit_with_a_whole_shift():
    # The pursuit dates a spike to a whole sample: a unit whose trough falls between two
    # samples has parts one sample apart, which only the whole shift calls one unit; a
    # second trough stays a second unit.
    p = RefineParameters()
    n_t, n = 40, 200
    t = np.arange(n_t)[:, None]

    def waveform(shift=0.0, second=0.0):
        trough = -6 * np.exp(-0.5 * ((t - 15 - shift) / 1.5) ** 2)
        return (trough * np.array([1.0, 0.5, 0.2])
                + second * np.exp(-0.5 * ((t - 28) / 1.5) ** 2) * np.array([0, 1.0, 0]))

    rng = np.random.default_rng(3)

    def verdict(b, whole_shift):
        a = waveform().reshape(-1) + rng.standard_normal(n_t * 3) * np.sqrt(1 / n)
        b = b.reshape(-1) + rng.standard_normal(n_t * 3) * np.sqrt(1 / n)
        dims = np.argsort(-np.maximum(np.abs(a), np.abs(b)))[:30]
        stat, bar = _beyond_scale_and_shift(a, b, n_t, dims, 2.0 / n, p, whole_shift)
        return stat < bar

    for shift in (1.0, -1.0, 1.3):
        assert not verdict(waveform(shift=shift), 0)
        assert verdict(waveform(shift=shift), 1)
    assert verdict(waveform(), 1)
    assert not verdict(waveform(shift=1.0, second=-3.0), 1)
    assert not verdict(waveform(shift=3.0), 1)


def _group(samples, home, parent=-1, residual=False):
    """A refinement group with what `_duplicates` reads (n, home, samples, parent, residual)."""
    return [None, len(samples), None, home, np.asarray(samples), parent, len(samples), 1.0,
            np.arange(0), home, residual, 1.0]


def test_a_group_of_another_templates_spikes_seen_again_is_dropped():
    # Two templates of independent units (homes 0 and 1, 20 um apart), and groups of
    # residual events: at template 0's spikes (a misfit: dropped), independent of every
    # spike (a unit: kept), at template 0's spikes but 200 um away (another unit: kept).
    rng = np.random.default_rng(4)
    duration, same = 600_000, 6
    t0 = np.sort(rng.choice(duration, 200, replace=False))
    t1 = np.sort(rng.choice(duration, 150, replace=False))
    positions = np.array([[0.0, 0.0], [0.0, 20.0], [0.0, 200.0]])
    homes = np.array([0, 1, 2])
    # Only every other spike of template 0 among the events (a sample, as the workers
    # keep), standing for two.
    samples = np.concatenate([t0[::2], t1])
    labels = np.concatenate([np.zeros(100, np.int64), np.ones(150, np.int64)])
    counts = np.array([200, 150, 0])
    p = RefineParameters(drop_duplicates=True)
    misfit = t0[:60] + rng.integers(-3, 4, 60)
    independent = np.sort(rng.choice(duration, 60, replace=False))
    groups = [_group(t0[::2], 0), _group(t1, 1), _group(misfit, 1, residual=True),
              _group(independent, 1, residual=True), _group(misfit, 2, residual=True)]
    owners = [{0}, {1}, set(), set(), set()]
    assert _duplicates(groups, owners, samples, labels, counts, homes, positions, same,
                       p) == [2]
    # The matched spikes of a group's own template are not another template's.
    assert _duplicates([groups[2]], [{0}], samples, labels, counts, homes, positions, same,
                       p) == []
    # Two templates of the same spikes: the smaller is dropped, and no longer counts
    # against the larger.
    samples2 = np.concatenate([t0, t0[:150]])
    labels2 = np.concatenate([np.zeros(200, np.int64), np.ones(150, np.int64)])
    copies = [_group(t0, 0), _group(t0[:150], 1)]
    assert _duplicates(copies, [{0}, {1}], samples2, labels2, np.array([200, 150, 0]), homes,
                       positions, same, p) == [1]


def test_refractory_conflict_counts_pairs_but_not_one_spike_seen_twice():
    rate = 30000
    a = np.arange(100) * rate // 10  # 10 Hz
    assert not _refractory_conflict(a, a + 3, 45, 6, 100 * rate)  # the same spikes
    assert not _refractory_conflict(a, a + rate // 20, 45, 6, 100 * rate)  # interleaved
    assert _refractory_conflict(a, a + 20, 45, 6, 100 * rate)  # 0.7 ms apart: two units


def test_residual_troughs_are_local_minima_over_channels_and_time():
    positions = np.c_[np.zeros(6), 20.0 * np.arange(6)]
    local = local_channels(positions, 3)
    assert local[0].tolist() == [0, 1, 2] and local[3][0] == 3
    z = np.zeros((6, 200), dtype=np.float32)
    z[2, 50], z[3, 51] = -8.0, -6.0  # one event spreading over two channels
    z[5, 150] = -4.0  # below threshold
    troughs = residual_troughs(z, np.float32(5.0), local, 10, 0, 200, 100)
    assert troughs.tolist() == [[50, 2]]
    # Weights discount the noise shared by neighbours: with independent noise they are
    # a normalized Gaussian footprint; with shared noise, not.
    sigma = np.ones(6)
    w = pooling_weights(positions, local, 3, 25.0, sigma)
    assert np.allclose(w[:, 0], 1.0) and np.all(w[:, 1:] < 1)
    shared = np.eye(6) + 0.8 * (1 - np.eye(6))
    ws = pooling_weights(positions, local, 3, 25.0, sigma, shared)
    assert np.all(ws[:, 1:] < w[:, 1:])


def test_clear_errors_for_refinement_options(recording, truth, tmp_path):
    s, c = truth["spike_samples"], truth["spike_clusters"]
    with pytest.raises(TemplateMatchingError, match="refine"):
        match_spikes(recording / "rec.prm", s, c, tmp_path / "a", executor=SerialExecutor(),
                     refine_rounds=1, refine=dict(min_spike=3))
    with pytest.raises(TemplateMatchingError, match="refine_rounds"):
        match_spikes(recording / "rec.prm", s, c, tmp_path / "b", executor=SerialExecutor(),
                     refine_rounds=-1)
    with pytest.raises(TemplateMatchingError, match="consolidate"):
        match_spikes(recording / "rec.prm", s, c, tmp_path / "c", executor=SerialExecutor(),
                     refine_rounds=1, consolidate=dict(merge_similarty=0.9))


# -- Rescaling a template to its spikes' amplitude ------------------------------------------

N_T, N_CHANNELS, HOME = 40, 16, 8


def _spike(shift: float = 0.0) -> np.ndarray:
    """A unit's waveform ``(N_T, N_CHANNELS)`` in noise units, delayed by `shift` samples."""
    t = np.arange(N_T)[:, None] - 15.0 - shift
    shape = -np.exp(-0.5 * (t / 2.0) ** 2) + 0.4 * np.exp(-0.5 * ((t - 6.0) / 4.0) ** 2)
    footprint = np.exp(-0.5 * ((np.arange(N_CHANNELS) - HOME) / 2.0) ** 2)
    return 8.0 * shape * footprint[None, :]


def _spikes(rng, n: int, amplitude: float) -> np.ndarray:
    """`n` spikes of amplitudes ``amplitude * (1 +- 10 %)``, misaligned by up to half a
    sample, in white noise of unit variance: ``(n, N_T, N_CHANNELS)``."""
    shifts = rng.uniform(-0.5, 0.5, n)
    amplitudes = amplitude * (1.0 + 0.1 * rng.standard_normal(n))
    return np.stack([a * _spike(d) for a, d in zip(amplitudes, shifts)]) + \
        rng.standard_normal((n, N_T, N_CHANNELS))


def test_mean_amplitude_is_the_spikes_amplitude_whatever_their_alignment():
    rng = np.random.default_rng(3)
    template = _spike().reshape(-1)
    slope = np.gradient(_spike(), axis=0).reshape(-1)
    x = _spikes(rng, 400, 0.6).reshape(400, -1)
    mean, error = _mean_amplitude(x, template, slope)
    assert abs(mean - 0.6) < 3 * error and error < 0.01
    assert abs(_mean_amplitude(x[:40], template, slope)[0] - 0.6) < 0.05


def _refine_one(template_scale: float, rng) -> tuple:
    """Refine one template, `template_scale` times the unit's mean waveform, from 80 of the
    unit's spikes (white noise, independent channels)."""
    positions = np.c_[np.zeros(N_CHANNELS), 20.0 * np.arange(N_CHANNELS)]
    templates = build_templates((template_scale * _spike())[None], np.array([80]),
                                np.array([7]), np.ones(N_CHANNELS))
    local = local_channels(positions, N_CHANNELS)
    snippets = _spikes(rng, 80, 1.0)[:, :, local[HOME]]
    events = dict(samples=np.arange(80) * 3000, labels=np.zeros(80, np.int64),
                  homes=np.full(80, HOME), snippets=snippets.astype(np.float32))
    from phy_core.bunch import Bunch

    out = refine(templates, Bunch(events), np.array([80]), np.ones(N_CHANNELS), local,
                 positions, 80 * 3000, 30000.0, next_id=8)
    return out, templates


def test_a_template_larger_than_its_spikes_is_rescaled_to_their_mean():
    rng = np.random.default_rng(4)
    # A weak unit's cluster holds the spikes that crossed the detection threshold: its
    # mean is too large.
    out, templates = _refine_one(1.2, rng)
    assert out.changed and out.n_rescaled == 1 and out.n_split == 0
    assert out.cluster_ids.tolist() == [7]  # the same cluster, rescaled
    ratio = np.linalg.norm(out.means[0]) / np.linalg.norm(_spike())
    assert 0.95 < ratio < 1.05
    # A template that is its spikes' mean is left alone, and so is one whose spikes are
    # beyond `rescale_max_change` from it.
    for scale in (1.0, 1.6):
        out, _ = _refine_one(scale, rng)
        assert not out.changed and out.n_rescaled == 0


# -- Amplitude modes: two co-located units of one shape ------------------------------------


def _two_unit_amplitudes(rng, n_small: int, n_large: int, ratio: float,
                         noise_sd: float) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes on a template of two units' mixed spikes (the smaller unit at 1), 10 %
    jitter plus the estimate's noise; (amplitudes, true labels: 1 for the larger unit)."""
    truth = np.r_[np.zeros(n_small, np.int64), np.ones(n_large, np.int64)]
    means = np.where(truth == 1, ratio, 1.0)
    a = means * (1 + 0.1 * rng.standard_normal(len(truth))) + noise_sd * rng.standard_normal(
        len(truth))
    return a, truth


def test_amplitudes_of_two_units_form_two_modes_and_of_one_unit_one():
    p = RefineParameters(amplitude_split=True, amplitude_jitter=0.1)
    rng = np.random.default_rng(11)
    # Seed 0's units 24 and 39 (384 channels): 17 and 32 spikes, amplitude ratio 1.42,
    # estimate noise 0.09 of the template's amplitude (here of the smaller unit's).
    found = 0
    for _ in range(20):
        a, truth = _two_unit_amplitudes(rng, 17, 32, 1.42, 0.09)
        labels = _amplitude_modes(a, 0.09 ** 2, p)
        if labels is not None:
            found += 1
            # The modes overlap: the next matching pass, not these labels, assigns spikes.
            assert (labels == truth).mean() >= 0.7
    assert found >= 12
    # One unit: 10 % jitter and the estimate's noise, whatever the count.
    false = 0
    for n in (20, 49, 100, 300):
        for _ in range(25):
            a = 1 + 0.1 * rng.standard_normal(n) + 0.09 * rng.standard_normal(n)
            false += _amplitude_modes(a, 0.09 ** 2, p) is not None
    assert false <= 2
    # Two modes closer than `amplitude_split_ratio`, or a mode of a few spikes, are one unit.
    a, _ = _two_unit_amplitudes(rng, 100, 100, 1.2, 0.02)
    assert _amplitude_modes(a, 0.02 ** 2, p) is None
    a, _ = _two_unit_amplitudes(rng, 5, 95, 1.6, 0.02)
    assert _amplitude_modes(a, 0.02 ** 2, p) is None


def _refine_two_modes(p: RefineParameters, n_small: int, n_large: int, ratio: float,
                      rng) -> tuple:
    """Refine one template, the mean of two units' spikes (`_spike` times 1 and `ratio`)."""
    from phy_core.bunch import Bunch

    n = n_small + n_large
    positions = np.c_[np.zeros(N_CHANNELS), 20.0 * np.arange(N_CHANNELS)]
    mean = (n_small + ratio * n_large) / n * _spike()
    templates = build_templates(mean[None], np.array([n]), np.array([7]), np.ones(N_CHANNELS))
    local = local_channels(positions, N_CHANNELS)
    snippets = np.concatenate([_spikes(rng, n_small, 1.0), _spikes(rng, n_large, ratio)])
    # Two units fire independently: their spikes interleave in time.
    events = dict(samples=rng.permutation(n) * 3000, labels=np.zeros(n, np.int64),
                  homes=np.full(n, HOME), snippets=snippets[:, :, local[HOME]].astype(
                      np.float32))
    out = refine(templates, Bunch(events), np.array([n]), np.ones(N_CHANNELS), local,
                 positions, n * 3000, 30000.0, next_id=8, p=p)
    return out, templates


def test_a_template_of_two_amplitude_modes_is_split_in_two_scaled_copies():
    rng = np.random.default_rng(12)
    # The jitter given: one template is too few to measure it on.
    p = RefineParameters(amplitude_split=True, amplitude_jitter=0.1)
    out, _ = _refine_two_modes(p, 30, 40, 1.5, rng)
    assert out.n_split == 1 and len(out.means) == 2 and 7 not in out.cluster_ids.tolist()
    # Scaled copies of the template: the unit's waveform at each unit's amplitude.
    scales = sorted(float(np.linalg.norm(m) / np.linalg.norm(_spike())) for m in out.means)
    assert abs(scales[0] - 1.0) < 0.1 and abs(scales[1] - 1.5) < 0.15
    cos = float((out.means[0] * out.means[1]).sum()) / np.prod(
        [np.linalg.norm(m) for m in out.means])
    assert cos > 0.9999
    # Counted as clean as their parent's mean, both copies keep its channels.
    copies = build_templates(out.means, out.n_spikes, out.cluster_ids,
                             np.full(N_CHANNELS, 4.0))
    assert np.array_equal(copies.channels(0), copies.channels(1))
    # Without the option the shape test sees one unit whose amplitudes vary, and one
    # unit's spikes are not split with it.
    out, _ = _refine_two_modes(RefineParameters(), 30, 40, 1.5, rng)
    assert out.n_split == 0 and len(out.means) == 1
    out, _ = _refine_two_modes(p, 35, 35, 1.0, rng)
    assert out.n_split == 0 and len(out.means) == 1


def _refine_proportional_pair(p: RefineParameters, seed: int) -> Bunch:
    """Refine two templates of one shape, 1.42 apart (units 24 and 39 of 384-channel seed 0),
    from their 17 and 32 matched spikes."""
    rng = np.random.default_rng(seed)
    n_small, n_large, ratio = 17, 32, 1.42
    n = n_small + n_large
    positions = np.c_[np.zeros(N_CHANNELS), 20.0 * np.arange(N_CHANNELS)]
    templates = build_templates(np.stack([_spike(), ratio * _spike()]), np.array([200, 200]),
                                np.array([7, 9]), np.ones(N_CHANNELS))
    local = local_channels(positions, N_CHANNELS)
    snippets = np.concatenate([_spikes(rng, n_small, 1.0), _spikes(rng, n_large, ratio)])
    events = Bunch(samples=rng.permutation(n) * 3000,
                   labels=np.r_[np.zeros(n_small, np.int64), np.ones(n_large, np.int64)],
                   homes=np.full(n, HOME),
                   snippets=snippets[:, :, local[HOME]].astype(np.float32))
    return refine(templates, events, np.array([n_small, n_large]), np.ones(N_CHANNELS), local,
                  positions, n * 3000, 30000.0, next_id=10, p=p)


def test_two_templates_of_one_shape_whose_amplitudes_form_two_modes_are_not_merged():
    # Without the option, the snippet comparison joins them in most draws (the copies of
    # an amplitude split would be joined in the next round); with it, never.
    seeds = range(10)
    merged = [len(_refine_proportional_pair(RefineParameters(), s).cluster_ids) == 1
              for s in seeds]
    assert sum(merged) >= 5
    p = RefineParameters(amplitude_split=True, amplitude_jitter=0.1)
    for s, joined in zip(seeds, merged):
        out = _refine_proportional_pair(p, s)
        assert out.cluster_ids.tolist() == [7, 9]
        # Kept apart by their amplitudes, they are built with the spikes their means
        # averaged (not their 17 and 32 matched spikes), and keep the same channels
        # (`_counted`).
        if joined:
            assert out.n_spikes.tolist() == [200, 200]


# -- Amplitude modes: one unit whose amplitude varies more, drifts or bursts -------------------

HOMES = (2, 6, 10, 14)  # 80 um apart: beyond the merge radius


def _spike_at(home: int, shift: float = 0.0) -> np.ndarray:
    """`_spike` on another home channel."""
    return np.roll(_spike(shift), home - HOME, axis=1)


def _units_spikes(rng, amplitudes: list[np.ndarray]) -> np.ndarray:
    """One template's spikes per entry of `amplitudes` (one per home of `HOMES`), misaligned
    by up to half a sample, in white noise: ``(n, N_T, N_CHANNELS)``."""
    out = []
    for home, amps in zip(HOMES, amplitudes):
        shifts = rng.uniform(-0.5, 0.5, len(amps))
        out += [a * _spike_at(home, d) for a, d in zip(amps, shifts)]
    return np.stack(out) + rng.standard_normal((len(out), N_T, N_CHANNELS))


def _refine_units(p: RefineParameters, amplitudes: list[np.ndarray],
                  samples: list[np.ndarray], rng) -> Bunch:
    """Refine one template per home of `HOMES`, each the mean of the spikes of amplitudes
    `amplitudes[k]` (relative to the template) at `samples[k]`."""
    positions = np.c_[np.zeros(N_CHANNELS), 20.0 * np.arange(N_CHANNELS)]
    k = len(amplitudes)
    means = np.stack([_spike_at(h) for h in HOMES[:k]])
    counts = np.array([len(a) for a in amplitudes])
    templates = build_templates(means, counts, np.arange(k) + 7, np.ones(N_CHANNELS))
    local = local_channels(positions, N_CHANNELS)
    snippets = _units_spikes(rng, amplitudes)
    homes = np.repeat(np.array(HOMES[:k]), counts)
    events = Bunch(samples=np.concatenate(samples), labels=np.repeat(np.arange(k), counts),
                   homes=homes, snippets=np.stack([s[:, local[h]] for s, h in
                                                   zip(snippets, homes)]).astype(np.float32))
    duration = int(max(s.max() for s in samples)) + 3000
    return refine(templates, events, counts, np.ones(N_CHANNELS), local, positions, duration,
                  30000.0, next_id=7 + k, p=p)


def _interleaved(rng, n: int) -> np.ndarray:
    """`n` spike samples at random times over 20 s, at least 3 ms apart."""
    return np.sort(rng.choice(20 * 30000 // 90, n, replace=False)) * 90


def test_recording_jitter_is_the_median_of_the_templates_spread_beyond_the_noise():
    rng = np.random.default_rng(21)
    sets = [(1 + 0.15 * rng.standard_normal(200) + 0.05 * rng.standard_normal(200), 0.05 ** 2)
            for _ in range(6)]
    # A template of two units (two modes 1.4 apart) spreads more: the median ignores it.
    sets.append((np.r_[np.ones(100), 1.4 * np.ones(100)] + 0.05 * rng.standard_normal(200),
                 0.05 ** 2))
    assert abs(_recording_jitter(sets, 30) - 0.15) < 0.02
    # Too few spikes or too few templates: nothing measured.
    assert _recording_jitter(sets[:2], 30) is None
    assert _recording_jitter([(a[:20], v) for a, v in sets], 30) is None


def test_single_units_with_a_wider_jitter_are_not_split_by_amplitude():
    # Units whose amplitudes vary by 18 %: with the synthetic units' 10 % assumed, their
    # spread looks like two modes; with the jitter measured on the recording, it does not,
    # and one Gaussian of free variance explains most of them even at 10 %.
    measured = fixed = unguarded = 0
    for seed in range(4):
        amps = [1 + 0.18 * np.random.default_rng([seed, k]).standard_normal(60)
                for k in range(len(HOMES))]
        samples = [_interleaved(np.random.default_rng(seed), 60) for _ in HOMES]
        counts = [_refine_units(RefineParameters(amplitude_split=True, **options), amps,
                                samples, np.random.default_rng(seed)).n_split
                  for options in ({}, dict(amplitude_jitter=0.1),
                                  dict(amplitude_jitter=0.1,
                                       amplitude_split_free_margin=-np.inf))]
        measured, fixed, unguarded = (a + b for a, b in zip((measured, fixed, unguarded),
                                                            counts))
    assert measured == 0
    assert unguarded >= 4 and fixed < unguarded


def test_two_units_of_one_shape_are_split_with_the_jitter_measured_on_the_recording():
    # Three single units (10 % jitter) and one template holding two units of one shape,
    # amplitudes 1 and 1.45 (25 and 40 spikes): the pair is split, the units are not.
    split = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        pair = np.r_[0.8 * (1 + 0.1 * rng.standard_normal(25)),
                     1.16 * (1 + 0.1 * rng.standard_normal(40))]
        amps = [1 + 0.1 * rng.standard_normal(80) for _ in range(3)] + [pair]
        samples = [rng.permutation(_interleaved(rng, len(a))) for a in amps]
        out = _refine_units(RefineParameters(amplitude_split=True), amps, samples, rng)
        assert set(out.cluster_ids.tolist()) >= {7, 8, 9}  # the single units kept whole
        split += out.n_split == 1 and 10 not in out.cluster_ids.tolist()
    assert split >= 4


def test_a_unit_whose_amplitude_drifts_is_one_unit():
    p = RefineParameters(amplitude_split=True, amplitude_jitter=0.1)
    drift = shuffled = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        # A slow drift: from 0.7 to 1.3 of the mean over the recording.
        samples = _interleaved(rng, 80)
        amps = np.linspace(0.7, 1.3, 80) * (1 + 0.1 * rng.standard_normal(80))
        drift += _refine_units(p, [amps], [samples], rng).n_split
        # The same amplitudes in an order independent of time: two modes, split.
        shuffled += _refine_units(p, [rng.permutation(amps)], [samples], rng).n_split
    assert drift == 0
    assert shuffled >= 3


def test_amplitude_modes_of_two_units_are_independent_of_time_and_intervals():
    p = RefineParameters()
    rng = np.random.default_rng(5)
    independent = 0
    for _ in range(20):
        # Two units: which one fired is independent of when, and of the interval before.
        labels = rng.integers(0, 2, 60)
        independent += _modes_independent(labels, _interleaved(rng, 60), p)
        # A bursting unit: its smaller spikes (label 0) come 4-8 ms after another.
        first = rng.permutation(_interleaved(rng, 40))
        samples = np.r_[first, first[:20] + rng.integers(120, 240, 20)]
        assert not _modes_independent(np.r_[np.ones(40), np.zeros(20)].astype(int), samples, p)
        # A drifting unit: its larger spikes (label 1) late in the recording.
        samples = _interleaved(rng, 60)
        labels = (np.arange(60) + 15 * rng.standard_normal(60) > 30).astype(int)
        assert not _modes_independent(labels, samples, p)
    assert independent >= 19


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
    out = _with_far_field(part, parent, chans, p)
    assert np.array_equal(out[:, chans], part[:, chans])
    far = np.setdiff1d(np.arange(N_CHANNELS), chans)
    assert np.allclose(out[:, far], 1.2 * parent[:, far], rtol=0.02, atol=1e-3)
    # A part of another unit (centred elsewhere) is left as it is.
    other = np.zeros_like(parent)
    other[:, chans] = np.roll(parent, 5, axis=1)[:, chans]
    assert np.array_equal(_with_far_field(other, parent, chans, p), other)
