"""Tests of the masked EM automatic clustering (plugins/phy_masked_em)."""

import numpy as np
import pytest

from phy_masked_em.data import MaskedEMError, prepare_data
from phy_masked_em.loop import DEFAULT_PARAMETERS, masked_em
from phy_masked_em.starts import mask_starts

N_CHANNELS, N_FPC = 16, 3


def _adjusted_rand(a, b):
    """Adjusted Rand index, computed from the contingency table."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def comb(x):
        return (x * (x - 1) / 2).sum()

    index, rows, cols = comb(table), comb(table.sum(1)), comb(table.sum(0))
    expected = rows * cols / comb(np.array([len(a)]))
    return (index - expected) / ((rows + cols) / 2 - expected)


def _synthetic(n_clusters=6, n_per=120, seed=0):
    rng = np.random.default_rng(seed)
    features, masks, truth = [], [], []
    for k in range(n_clusters):
        width = 3 + k % 3
        channels = (2 * k + np.arange(width)) % N_CHANNELS
        m = np.zeros(N_CHANNELS)
        m[channels] = 1
        mu = rng.choice([-1, 1], (N_CHANNELS, N_FPC)) * rng.uniform(5, 9, (N_CHANNELS, N_FPC))
        x = rng.normal(0, 1, (n_per, N_CHANNELS, N_FPC))  # masked features: noise N(0, 1)
        x[:, channels, :] += mu[channels]
        features.append(x.reshape(n_per, -1))
        masks.append(np.tile(m, (n_per, 1)))
        truth += [k] * n_per
    return np.vstack(features), np.vstack(masks), np.array(truth)


def test_recovers_clusters_independent_of_order():
    features, masks, truth = _synthetic()
    labels = masked_em(features, masks, {})
    assert _adjusted_rand(truth, labels) >= 0.95
    assert abs(len(np.unique(labels[labels >= 2])) - 6) <= 1
    perm = np.random.default_rng(1).permutation(len(truth))
    labels_perm = masked_em(features[perm], masks[perm], {})
    assert _adjusted_rand(labels[perm], labels_perm) == pytest.approx(1.0)


def test_recovers_with_small_cluster_mask_threshold():
    # Full covariance blocks (points_for_cluster_mask below the cluster sizes).
    features, masks, truth = _synthetic(n_clusters=5, seed=3)
    labels = masked_em(features, masks, dict(points_for_cluster_mask=10))
    assert _adjusted_rand(truth, labels) >= 0.95


def test_corrected_statistics():
    x = np.array([[0., 2., 4.], [1., 0., 3.], [2., 1., 0.], [4., 3., 1.]])
    m = np.array([[1., 0., .5], [0., 1., 0.], [0., .5, 1.], [1., 0., 0.]])
    d = prepare_data(x, m)
    # Independent computation: scale to [0, 1], weighted noise moments.
    xs = (x - x.min(0)) / (x.max(0) - x.min(0))
    w = 1 - m
    mean = np.array([np.average(xs[:, f], weights=w[:, f]) for f in range(3)])
    var = np.array([np.average((xs[:, f] - mean[f]) ** 2, weights=w[:, f]) for f in range(3)])
    np.testing.assert_allclose(d.noise_mean, mean)
    np.testing.assert_allclose(d.noise_variance, var)
    for i in range(4):
        for f in range(3):
            y = m[i, f] * xs[i, f] + (1 - m[i, f]) * mean[f]
            second = m[i, f] * xs[i, f] ** 2 + (1 - m[i, f]) * (mean[f] ** 2 + var[f])
            assert d.corrected[i, f] == pytest.approx(y)
            assert d.correction[i, f] == pytest.approx(second - y ** 2, abs=1e-12)
    assert list(d.unmasked_indices[d.unmasked_indptr[0]:d.unmasked_indptr[1]]) == [0, 2]
    assert list(d.n_unmasked) == [2, 1, 2, 1]


def test_per_channel_masks_are_expanded():
    features, masks, _ = _synthetic(n_clusters=2, n_per=10)
    d = prepare_data(features, masks)
    np.testing.assert_array_equal(d.masks, np.repeat(masks, N_FPC, axis=1))
    with pytest.raises(MaskedEMError):
        prepare_data(features, masks[:, :5])
    with pytest.raises(MaskedEMError):
        prepare_data(features, masks * 2)


def test_penalty_merges_identical_clusters():
    # Two starting mask sets, same Gaussian on the same channels: one cluster.
    rng = np.random.default_rng(5)
    n = 400
    x = rng.normal(0, 1, (n, N_CHANNELS * N_FPC))
    x[:, :12] += 6
    masks = np.zeros((n, N_CHANNELS))
    masks[:, :4] = 1
    masks[n // 2:, 4] = 0.5  # second half: a different (weak) mask pattern
    labels = masked_em(x, masks, dict(points_for_cluster_mask=10))
    assert len(np.unique(labels[labels >= 2])) == 1
    assert np.count_nonzero(labels >= 2) >= 0.95 * n
    # Without the penalty, nothing stops the two starting clusters (and splits) surviving.
    unpenalised = masked_em(x, masks, dict(points_for_cluster_mask=10, penalty_k_log_n=0))
    assert len(np.unique(unpenalised[unpenalised >= 2])) > 1


def test_mask_starts_order_independent():
    unmasked = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1],
                         [1, 1, 1, 0]], dtype=bool)
    labels = mask_starts(unmasked, 2)
    assert labels[0] == labels[2] and len(np.unique(labels)) == 2
    perm = np.array([4, 3, 2, 1, 0])
    np.testing.assert_array_equal(mask_starts(unmasked[perm], 2), labels[perm])


def test_hooks(phy_plugin_manager):
    import phy_masked_em

    phy_plugin_manager.register_plugin(phy_masked_em, "masked_em")
    algorithms = [a for algs in phy_plugin_manager.hook.phy_register_clustering_algorithms()
                  for a in algs]
    assert [a.name for a in algorithms] == ["masked_em"]
    assert algorithms[0].parameters["penalty_k_log_n"] == 1.0
    features, masks, truth = _synthetic(n_clusters=3, n_per=60)
    labels = algorithms[0].run(features, masks, {}, None)
    assert _adjusted_rand(truth, labels) >= 0.95
    commands = [c for cs in phy_plugin_manager.hook.phy_commands() for c in cs]
    assert [c.name for c in commands] == ["cluster-auto"]


def test_cluster_auto_end_to_end(tmp_path, phy_plugin_manager):
    import phy_masked_em
    from phy_core.cli import build_parser
    from phy_core.descriptors import Services
    from phy_detect.executors import SerialExecutor
    from phy_detect.runner import detect
    from phy_evaluate.metrics import evaluate
    from phy_kwik.model import KwikModel
    from phy_synthetic.recording import synthesize_recording

    # 10 s rather than 3 s: in 3 s the SNR >= 8 units have 4 to 7 spikes (of 96), too few to
    # pay the BIC penalty of a cluster on ~20 unmasked features (3 s: 1 unit of 4 accurate).
    rec = synthesize_recording(tmp_path, name="rec", probe="linear32", duration_s=10, seed=2)
    kwik = detect(rec.prm_path, executor=SerialExecutor())
    with KwikModel(kwik) as model:
        assert "main" in model.clusterings
        old = model.spike_clusters.copy()
    phy_plugin_manager.register_plugin(phy_masked_em, "masked_em")
    commands = [c for cs in phy_plugin_manager.hook.phy_commands() for c in cs]
    args = build_parser(commands).parse_args(["cluster-auto", str(kwik)])
    assert args._command.run(args, Services(plugin_manager=phy_plugin_manager)) == 0

    with KwikModel(kwik) as model:
        assert model.clustering == "main"
        clusters = model.spike_clusters
        assert len(np.unique(clusters)) > 1
        assert "main_previous" in model.clusterings
        model.clustering = "main_previous"
        np.testing.assert_array_equal(model.spike_clusters, old)
        samples, rate = model.spike_samples, model.sample_rate
    gt = np.load(rec.groundtruth_path)
    result = evaluate(gt["spike_samples"], gt["spike_clusters"], samples, clusters, rate,
                      unit_snr=gt["unit_snr"])
    snr = np.asarray(gt["unit_snr"])[result.units]
    good = snr >= 8
    print("accuracy", np.round(result.accuracy, 2), "snr", np.round(snr, 1))
    assert good.sum() > 0
    assert np.mean(result.accuracy[good] >= 0.8) >= 0.5
    # A second run keeps the first result under the next free name.
    assert args._command.run(args, Services(plugin_manager=phy_plugin_manager)) == 0
    with KwikModel(kwik) as model:
        assert {"main", "main_previous", "main_previous_2"} <= set(model.clusterings)
        np.testing.assert_array_equal(model.spike_clusters, clusters)  # deterministic


def test_e_step_matches_dense_computation():
    from phy_masked_em.em import MaskedEM
    from phy_masked_em.loop import DEFAULT_PARAMETERS

    features, masks, _ = _synthetic(n_clusters=3, n_per=40, seed=7)
    masks = masks * np.random.default_rng(2).uniform(0.3, 1, masks.shape)  # partial masks
    d = prepare_data(features, masks)
    em = MaskedEM(d, dict(DEFAULT_PARAMETERS, points_for_cluster_mask=5))
    labels = np.repeat([2, 3, 4], 40)
    model = em.m_step(labels)
    for c in (1, 2, 3, 4):
        cl = model[c]
        assert (len(cl.unmasked) > 0) == (c >= 2)
        # Dense covariance: block on the unmasked features, diagonal elsewhere.
        cov = np.diag(cl.diag)
        u = cl.unmasked
        z = d.corrected[labels == c] - cl.mean if c >= 2 else None
        if c >= 2:
            n_c = len(z)
            y, eta = d.corrected[labels == c], d.correction[labels == c]
            np.testing.assert_allclose(cl.mean, (y.sum(0) + d.noise_mean) / (n_c + 1))
            expected_diag = ((z ** 2).sum(0) + eta.sum(0) + d.noise_variance) / n_c
            # Features the cluster masks: the noise variance (as KlustaKwik 2).
            off = np.setdiff1d(np.arange(d.n_features), u)
            expected_diag[off] = (n_c + 1) * d.noise_variance[off] / n_c
            np.testing.assert_allclose(cl.diag, expected_diag)
            block = z[:, u].T @ z[:, u] / n_c  # prior_point = 1: n_c + 1 - 1
            block[np.diag_indices_from(block)] = cl.diag[u]
            cov[np.ix_(u, u)] = block
        inv = np.linalg.inv(cov)
        diff = d.corrected - cl.mean
        expected = (0.5 * np.einsum("if,fg,ig->i", diff, inv, diff)
                    + 0.5 * d.correction @ np.diag(inv)
                    + 0.5 * np.linalg.slogdet(cov)[1] - np.log(cl.weight)
                    + 0.5 * d.n_features * np.log(2 * np.pi))
        np.testing.assert_allclose(em.cluster_log_p(cl), expected, rtol=1e-9, atol=1e-8)


def _soft_masked_clusters(n_clusters=12, n_per=60, n_channels=48, width=8, seed=0):
    """Many small clusters on many channels with soft masks (0.3-0.6), as on Neuropixels."""
    rng = np.random.default_rng(seed)
    features, masks, truth = [], [], []
    for k in range(n_clusters):
        channels = (4 * k + np.arange(width)) % n_channels
        x = rng.normal(0, 1, (n_per, n_channels, N_FPC))
        x[:, channels, :] += rng.normal(0, 3, (width, N_FPC))
        m = np.zeros((n_per, n_channels))
        m[:, channels] = rng.uniform(0.3, 0.6, (n_per, width))
        features.append(x.reshape(n_per, -1))
        masks.append(m)
        truth += [k] * n_per
    return np.vstack(features), np.vstack(masks), np.array(truth)


def test_soft_masks_many_small_clusters_not_merged():
    # Regression: the penalty counted the features with mask > 0 instead of the sum of
    # the masks (KlustaKwik 2's float number of unmasked features), overstating it
    # ~4-fold with soft masks: all 12 clusters of 60 spikes collapsed into 1.
    from phy_masked_em.em import MaskedEM

    features, masks, truth = _soft_masked_clusters()
    labels = masked_em(features, masks, {})
    assert len(np.unique(labels[labels >= 2])) == 12
    assert _adjusted_rand(truth, labels) >= 0.95
    em = MaskedEM(prepare_data(features, masks), dict(DEFAULT_PARAMETERS))
    np.testing.assert_allclose(em.n_unmasked, masks.sum(axis=1) * N_FPC)
