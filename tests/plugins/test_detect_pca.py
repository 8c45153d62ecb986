"""Per-channel PCA of waveforms."""

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from phy_detect.pca import PCA, STAGES, PCAError, compute_pcs


def _synthetic(n_spikes=600, n_samples=24, n_channels=5, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n_samples)
    # A different 3D subspace per channel.
    bases = []
    for c in range(n_channels):
        b = np.stack([np.sin(np.pi * (k + 1) * t + 0.3 * c) for k in range(3)], axis=1)
        bases.append(b)
    coefs = rng.normal(0, [3.0, 2.0, 1.0], (n_spikes, n_channels, 3))
    w = np.einsum("ncf,csf->nsc", coefs, np.array(bases))
    w += rng.normal(0, noise, w.shape)
    return w.astype(np.float32), bases


def test_pcs_span_the_components():
    waveforms, bases = _synthetic()
    pca = PCA(n_pcs=3)
    pcs = pca.fit(waveforms, np.ones((waveforms.shape[0], waveforms.shape[2])))
    assert pcs.shape == (3, 24, 5) and pcs.dtype == np.float32
    for c, basis in enumerate(bases):
        assert np.max(subspace_angles(pcs[:, :, c].T, basis)) < 0.05
        # Orthonormal.
        np.testing.assert_allclose(pcs[:, :, c] @ pcs[:, :, c].T, np.eye(3), atol=1e-5)


def test_masked_spikes_are_ignored_per_channel():
    waveforms, bases = _synthetic(seed=1)
    rng = np.random.default_rng(2)
    masks = (rng.random((waveforms.shape[0], waveforms.shape[2])) < 0.5).astype(np.float32)
    # Masked (spike, channel) waveforms are huge garbage in another direction.
    garbage = (
        100
        * rng.normal(size=(waveforms.shape[0], waveforms.shape[1], 1))
        * np.cos(np.linspace(0, 9, waveforms.shape[1]))[None, :, None] ** 3
    )
    waveforms = np.where(masks[:, None, :] > 0, waveforms, garbage).astype(np.float32)
    pcs = PCA(3).fit(waveforms, masks)
    for c, basis in enumerate(bases):
        assert np.max(subspace_angles(pcs[:, :, c].T, basis)) < 0.1
    # Without the masks the garbage dominates.
    pcs_nomask = PCA(3).fit(waveforms)
    assert np.max(subspace_angles(pcs_nomask[:, :, 0].T, bases[0])) > 0.3


@pytest.mark.parametrize("sparse", [False, True])
def test_pcs_match_independent_eigh(sparse):
    waveforms, _ = _synthetic(n_spikes=200, seed=4)
    masks = np.ones((200, 5))
    masks[:150, 2] = 0
    if sparse:  # < 20% unmasked: the sparse-pairs accumulation
        masks = np.random.default_rng(0).random((200, 5)) * 0.1
        masks[masks < 0.09] = 0
    pcs = compute_pcs(waveforms, 2, masks)
    x = waveforms.astype(np.float64)
    pooled = np.cov(np.concatenate([x[masks[:, c] > 0, :, c] for c in range(5)]), rowvar=False)
    for c in range(5):
        cov = np.cov(x[masks[:, c] > 0, :, c], rowvar=False) + pooled / 200
        vals, vecs = np.linalg.eigh(cov)
        top = vecs[:, ::-1][:, :2]
        for f in range(2):
            assert abs(abs(top[:, f] @ pcs[f, :, c]) - 1) < 1e-5


def test_transform_shape_and_order():
    waveforms, _ = _synthetic(n_spikes=50, seed=5)
    pca = PCA(3)
    pca.fit(waveforms)
    features = pca.transform(waveforms)
    assert features.shape == (50, 5, 3) and features.dtype == np.float32
    pcs = pca.pcs
    expected = np.einsum("nsc,fsc->ncf", waveforms.astype(np.float64), pcs.astype(np.float64))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    # .kwx layout: channel-major.
    flat = features.reshape(50, -1)
    np.testing.assert_array_equal(flat[:, 2 * 3 + 1], features[:, 2, 1])
    # Explicit PCs.
    np.testing.assert_array_equal(PCA(3).transform(waveforms, pcs), features)


def test_fit_subsample_bounded_and_reproducible():
    waveforms, bases = _synthetic(n_spikes=1000, seed=6)
    a = PCA(3, pca_n_waveforms_max=200, seed=1).fit(waveforms)
    b = PCA(3, pca_n_waveforms_max=200, seed=1).fit(waveforms)
    np.testing.assert_array_equal(a, b)
    idx = np.sort(np.random.default_rng(1).choice(1000, 200, replace=False))
    np.testing.assert_allclose(a, compute_pcs(waveforms[idx], 3), atol=1e-6)
    assert not np.allclose(a, PCA(3, pca_n_waveforms_max=2000).fit(waveforms), atol=1e-6)
    assert np.max(subspace_angles(a[:, :, 0].T, bases[0])) < 0.05


def test_pca_errors_and_edge_cases():
    with pytest.raises(PCAError, match="fit"):
        PCA(3).transform(np.zeros((2, 10, 2)))
    with pytest.raises(PCAError, match="masks"):
        PCA(3).fit(np.zeros((4, 10, 2)), np.zeros((4, 3)))
    with pytest.raises(PCAError, match="n_spikes, n_samples, n_channels"):
        PCA(3).fit(np.zeros((4, 10)))
    with pytest.raises(PCAError, match="n_pcs"):
        PCA(0)
    with pytest.raises(PCAError, match="do not match"):
        PCA(3).transform(np.zeros((2, 10, 2)), np.zeros((3, 9, 2)))
    # A channel with no unmasked spike still gets orthonormal PCs.
    waveforms, _ = _synthetic(n_spikes=30, seed=7)
    masks = np.ones((30, 5))
    masks[:, 3] = 0
    pcs = PCA(3).fit(waveforms, masks)
    assert np.all(np.isfinite(pcs))
    np.testing.assert_allclose(pcs[:, :, 3] @ pcs[:, :, 3].T, np.eye(3), atol=1e-5)


def test_pca_stage():
    (stage,) = STAGES
    assert (stage.name, stage.kind) == ("pca", "features")
    assert isinstance(stage.factory(**stage.parameters), PCA)


def _sparse_masks(n_spikes, n_channels, p=0.1, seed=0):
    rng = np.random.default_rng(seed)
    masks = (rng.random((n_spikes, n_channels)) < p) * rng.uniform(0.1, 1, (n_spikes, n_channels))
    return masks.astype(np.float32)


@pytest.mark.parametrize("p", [0.1, 0.6])  # the sparse and the dense moments
def test_fit_statistics_equals_fit(p):
    waveforms, _ = _synthetic(n_spikes=500, n_channels=12, seed=7)
    masks = _sparse_masks(500, 12, p=p, seed=8)
    expected = PCA(3).fit(waveforms, masks)
    # One batch: exactly the same PCs.
    pca = PCA(3)
    np.testing.assert_array_equal(pca.fit_statistics([PCA.statistics(waveforms, masks)]),
                                  expected)
    np.testing.assert_array_equal(pca.pcs, expected)
    # Several batches: the same up to the rounding of the summed float64 moments.
    parts = [PCA.statistics(waveforms[a:b], masks[a:b]) for a, b in [(0, 7), (7, 300), (300, 500)]]
    assert sum(s.n_spikes for s in parts) == 500
    assert parts[0].s2.nbytes == 12 * 24 * 24 * 8  # independent of the number of spikes
    np.testing.assert_allclose(PCA(3).fit_statistics(parts), expected, atol=1e-5)
    # With the same subsample as `fit`.
    pca = PCA(3, pca_n_waveforms_max=200, seed=4)
    idx = pca.subsample(500)
    assert len(idx) == 200 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(pca.subsample(500), idx)
    assert pca.subsample(200) is None
    np.testing.assert_array_equal(
        pca.fit_statistics(PCA.statistics(waveforms[idx], masks[idx])),
        PCA(3, pca_n_waveforms_max=200, seed=4).fit(waveforms, masks))


@pytest.mark.parametrize("parallel", [False, True])
def test_statistics_from_pairs_equal_the_sparse_moments(parallel, monkeypatch):
    from phy_detect import pca as pca_module
    from phy_detect.pca import compute_statistics, statistics_from_pairs

    # The parallel kernel (channels on all cores) must give the same sums, bit for bit.
    monkeypatch.setattr(pca_module, "_PARALLEL_MIN_PAIRS", 0 if parallel else 10**9)

    waveforms, _ = _synthetic(n_spikes=300, n_channels=20, seed=9)
    masks = _sparse_masks(300, 20, p=0.1, seed=10)
    spikes, channels = np.nonzero(masks > 0)
    pairs = statistics_from_pairs(waveforms[spikes, :, channels], channels, 20, 300)
    full = compute_statistics(waveforms, masks)
    assert pairs.n_spikes == full.n_spikes == 300
    for name in ("count", "s1", "s2"):
        np.testing.assert_array_equal(getattr(pairs, name), getattr(full, name))
    np.testing.assert_array_equal(PCA(3).fit_statistics(pairs), PCA(3).fit(waveforms, masks))


def test_fit_statistics_errors():
    from phy_detect.pca import statistics_from_pairs

    waveforms, _ = _synthetic(n_spikes=50, n_channels=4)
    with pytest.raises(PCAError, match="at least one"):
        PCA(3).fit_statistics([])
    with pytest.raises(PCAError, match="cannot add"):
        PCA.statistics(waveforms) + PCA.statistics(waveforms[:, :, :3])
    with pytest.raises(PCAError, match="n_pcs"):
        PCA(30).fit_statistics(PCA.statistics(waveforms))
    with pytest.raises(PCAError, match="channels must be"):
        statistics_from_pairs(np.zeros((2, 24)), np.array([0, 4]), 4, 2)


@pytest.mark.parametrize("subsample", [False, True])
def test_pair_batches_equal_the_pairs_concatenated(subsample):
    from phy_detect.pca import compute_statistics, statistics_from_pair_batches

    # Three batches of spikes (one with none), their pairs in np.nonzero order: the
    # sums must be those of the concatenated spikes' sparse moments, bit for bit, also
    # when only a subsample of the spikes counts.
    waveforms, _ = _synthetic(n_spikes=300, n_channels=20, seed=11)
    masks = _sparse_masks(300, 20, p=0.1, seed=12)
    pca = PCA(3, pca_n_waveforms_max=120 if subsample else 10000, seed=5)
    selected = pca.subsample(300)
    assert (selected is not None) == subsample
    batches = []
    for a, b in ((0, 130), (130, 130), (130, 300)):
        spikes, channels = np.nonzero(masks[a:b] > 0)
        batches.append((waveforms[a:b][spikes, :, channels], channels, spikes, b - a))
    stats = statistics_from_pair_batches(iter(batches), 20, 300, selected)
    chosen = slice(None) if selected is None else selected
    full = compute_statistics(waveforms[chosen], masks[chosen])
    assert stats.n_spikes == full.n_spikes == (120 if subsample else 300)
    for name in ("count", "s1", "s2"):
        np.testing.assert_array_equal(getattr(stats, name), getattr(full, name))
    np.testing.assert_array_equal(pca.fit_statistics(stats), pca.fit(waveforms, masks))
    with pytest.raises(PCAError, match="more than"):
        statistics_from_pair_batches(iter(batches), 20, 299)
    with pytest.raises(PCAError, match="spikes must be"):
        statistics_from_pair_batches([(np.zeros((1, 24)), [0], [3], 3)], 20, 3)


def test_pair_batch_moments_added_as_they_arrive_equal_the_concatenated_pairs():
    from phy_detect.pca import PairBatchMoments, compute_statistics, statistics_from_pair_batches

    # Batches added one at a time, their number of spikes not known in advance (the
    # runner's fit while the excerpts arrive): the sparse moments of the concatenated
    # spikes, bit for bit, and those of `statistics_from_pair_batches`.
    waveforms, _ = _synthetic(n_spikes=250, n_channels=16, seed=21)
    masks = _sparse_masks(250, 16, p=0.15, seed=22)
    batches = []
    for a, b in ((0, 90), (90, 90), (90, 250)):
        spikes, channels = np.nonzero(masks[a:b] > 0)
        batches.append((waveforms[a:b][spikes, :, channels], channels, spikes, b - a))
    moments = PairBatchMoments(16)
    for batch in batches:
        moments.add(*batch)
    stats = moments.statistics()
    full = compute_statistics(waveforms, masks)
    whole = statistics_from_pair_batches(iter(batches), 16, 250)
    assert stats.n_spikes == full.n_spikes == whole.n_spikes == 250
    for name in ("count", "s1", "s2"):
        np.testing.assert_array_equal(getattr(stats, name), getattr(full, name))
        np.testing.assert_array_equal(getattr(stats, name), getattr(whole, name))
    with pytest.raises(PCAError, match="needs their number"):
        PairBatchMoments(16, selected=np.arange(3))
    with pytest.raises(PCAError, match="at least one batch"):
        PairBatchMoments(16).statistics()
    with pytest.raises(PCAError, match="samples"):
        moments.add(np.zeros((1, 5), np.float32), [0], [0], 1)


@pytest.mark.parametrize("n_threads", [2, 3, 40])
@pytest.mark.parametrize("subsample", [False, True])
def test_pair_batches_summed_by_channel_ranges_on_threads(n_threads, subsample):
    from phy_detect.pca import compute_statistics, statistics_from_pair_batches

    # Threads on ranges of channels (more threads than channels too): the sums of the
    # concatenated spikes' sparse moments, bit for bit, with or without a subsample.
    waveforms, _ = _synthetic(n_spikes=260, n_channels=24, seed=31)
    masks = _sparse_masks(260, 24, p=0.12, seed=32)
    pca = PCA(3, pca_n_waveforms_max=100 if subsample else 10000, seed=7)
    selected = pca.subsample(260)
    batches = []
    for a, b in ((0, 70), (70, 70), (70, 200), (200, 260)):
        spikes, channels = np.nonzero(masks[a:b] > 0)
        batches.append((waveforms[a:b][spikes, :, channels], channels, spikes, b - a))
    stats = statistics_from_pair_batches(iter(batches), 24, 260, selected,
                                         n_threads=n_threads)
    chosen = slice(None) if selected is None else selected
    full = compute_statistics(waveforms[chosen], masks[chosen])
    assert stats.n_spikes == full.n_spikes
    for name in ("count", "s1", "s2"):
        np.testing.assert_array_equal(getattr(stats, name), getattr(full, name))
    with pytest.raises(PCAError, match="more than"):
        statistics_from_pair_batches(iter(batches), 24, 259, n_threads=n_threads)
