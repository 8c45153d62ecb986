"""Masked EM at scale: lazy row-block input, bounded memory, resuming, splits and merges."""

import tracemalloc

import numpy as np
import pytest

from phy_masked_em.data import MaskedEMError, prepare_data
from phy_masked_em.loop import masked_em


class RowView:
    """A minimal lazily row-sliceable array: a shape and row slices (counts its reads)."""

    def __init__(self, array):
        self._array = array
        self.shape = array.shape
        self.reads = 0

    def __getitem__(self, item):
        assert isinstance(item, slice)
        self.reads += 1
        return np.array(self._array[item])


def _units(n_spikes, n_channels, n_units=12, width=5, fpc=3, seed=0, out=None, masks_out=None):
    """Spikes of `n_units` units, each on `width` neighbouring channels (masks 1 there),
    the other features noise; written in chunks into `out` / `masks_out` if given."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n_channels - width, n_units)
    templates = rng.choice([-1, 1], (n_units, width, fpc)) * rng.uniform(6, 10, (n_units, width,
                                                                                  fpc))
    truth = rng.integers(0, n_units, n_spikes)
    features = out if out is not None else np.empty((n_spikes, n_channels * fpc), np.float32)
    masks = masks_out if masks_out is not None else np.empty((n_spikes, n_channels), np.float32)
    for start in range(0, n_spikes, 2000):
        t = truth[start:start + 2000]
        x = rng.normal(0, 1, (len(t), n_channels, fpc)).astype(np.float32)
        m = np.zeros((len(t), n_channels), np.float32)
        for k, (c, u) in enumerate(zip(first[t], t)):
            x[k, c:c + width] += templates[u]
            m[k, c:c + width] = 1
        features[start:start + len(t)] = x.reshape(len(t), -1)
        masks[start:start + len(t)] = m
    return features, masks, truth


def _purity(truth, labels):
    """Fraction of spikes in the majority unit of their cluster, and of units' majority cluster."""
    table = np.zeros((truth.max() + 1, labels.max() + 1))
    np.add.at(table, (truth, labels), 1)
    return table.max(0).sum() / len(truth), table.max(1).sum() / len(truth)


def test_lazy_input_gives_the_same_data_and_labels(tmp_path):
    features, masks, truth = _units(1500, 48, seed=1)
    fmap = np.lib.format.open_memmap(tmp_path / "f.npy", "w+", np.float32, features.shape)
    fmap[:] = features
    view = RowView(masks)
    # Small blocks: the statistics gathered block by block equal those of one pass.
    lazy = prepare_data(fmap, view, block_bytes=30_000)
    whole = prepare_data(features, masks)
    assert view.reads > 10
    for name in ("noise_mean", "noise_variance", "indptr", "indices", "dy", "deta", "masks",
                 "float_num_unmasked"):
        np.testing.assert_allclose(getattr(lazy, name), getattr(whole, name), rtol=1e-6,
                                   atol=1e-12, err_msg=name)
    labels = masked_em(fmap, RowView(masks), {})
    np.testing.assert_array_equal(labels, masked_em(features, masks, {}))
    assert min(_purity(truth, labels)) >= 0.95


def test_lazy_input_with_wrong_rows_is_reported():
    features, masks, _ = _units(100, 16)

    class Short(RowView):
        def __getitem__(self, item):
            return super().__getitem__(item)[:-1]

    with pytest.raises(MaskedEMError, match="expected"):
        prepare_data(Short(features), masks)


def test_memory_is_bounded_by_the_unmasked_entries(tmp_path):
    # 10,000 spikes x 1536 features: 123 MB as a dense float64 array; 5 of 512 channels
    # unmasked per spike. Inputs are memory maps (not counted by tracemalloc).
    n, n_channels = 10_000, 512
    features = np.lib.format.open_memmap(tmp_path / "f.npy", "w+", np.float32,
                                         (n, 3 * n_channels))
    masks = np.lib.format.open_memmap(tmp_path / "m.npy", "w+", np.float32, (n, n_channels))
    _, _, truth = _units(n, n_channels, n_units=20, seed=3, out=features, masks_out=masks)
    dense_bytes = n * 3 * n_channels * 8
    masked_em(features[:50], masks[:50], {})  # imports and compilation are not counted
    tracemalloc.start()
    try:
        labels = masked_em(features, masks, dict(num_starting_clusters=40))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < dense_bytes / 5, f"peak {peak / 1e6:.0f} MB"
    assert min(_purity(truth, labels)) >= 0.95


def test_resuming_gives_the_same_labels():
    features, masks, _ = _units(1200, 40, n_units=10, seed=5)
    p = dict(num_starting_clusters=3, split_first=2, split_every=3)
    seen = []
    labels = masked_em(features, masks, p, on_iteration=lambda i, lab: seen.append((i, lab)))
    assert len(seen) >= 4
    for iteration, checkpoint in seen[1:-1]:
        resumed = masked_em(features, masks, p, initial_labels=checkpoint,
                            start_iteration=iteration + 1)
        np.testing.assert_array_equal(resumed, labels)
    with pytest.raises(MaskedEMError, match="initial_labels"):
        masked_em(features, masks, p, initial_labels=seen[0][1][:-1])


def test_one_starting_cluster_is_split_into_the_units():
    features, masks, truth = _units(1500, 48, n_units=8, seed=7)
    labels = masked_em(features, masks, dict(num_starting_clusters=1))
    assert min(_purity(truth, labels)) >= 0.95
    # (All spikes went to the MUA cluster first: it keeps one unit, the others left it.)
    assert len(np.unique(labels)) == 8


def test_merge_joins_a_unit_split_by_its_masks():
    from phy_masked_em.merge import WaveformStats, merge_similar

    rng = np.random.default_rng(11)
    n, n_channels, fpc = 240, 12, 3
    template = rng.uniform(4, 8, (n_channels, fpc)) * (np.arange(n_channels) < 5)[:, None]
    template[4] = 2.0  # a weak channel, unmasked in half the spikes only
    other = template[[1, 0, 3, 2, 4]].copy() * [[1], [-1], [1], [-1], [1]]  # same channels
    x = rng.normal(0, 1, (n, n_channels, fpc))
    x[:160, :5] += template[:5]
    x[160:, :5] += other
    m = np.zeros((n, n_channels))
    m[:, :4] = 1
    m[:80, 4] = 0.4
    features, masks = x.reshape(n, -1), m
    labels = np.repeat([2, 3, 4], 80)  # unit A split by its masks (2, 3), unit B (4)
    d = prepare_data(features, masks)
    stats = WaveformStats(d, labels)
    # Independent similarity: means of x - noise mean over the unmasked entries, in noise
    # standard deviations, on the features unmasked in at least half the spikes of both.
    scaled = (features - features.min(0)) / (features.max(0) - features.min(0))
    per_feature = np.repeat(masks, fpc, axis=1)

    def mean(c):
        sel = (labels == c)[:, None] & (per_feature > 0)
        off = (scaled - d.noise_mean) / np.sqrt(d.noise_variance)
        return np.where(sel, off, 0).sum(0) / np.maximum(sel.sum(0), 1), sel.sum(0)

    (ma, ca), (mb, cb) = mean(2), mean(3)
    common = (ca >= 40) & (cb >= 40)
    expected = 2 * ma[common] @ mb[common] / (ma[common] @ ma[common] + mb[common] @ mb[common])
    assert stats.similarity(2, 3) == pytest.approx(expected, rel=1e-5)
    assert stats.similarity(2, 3) > 0.95 and stats.similarity(2, 4) < 0.5
    merged, n_merged = merge_similar(d, labels, 0.9)
    assert n_merged == 1
    assert len(np.unique(merged[:160])) == 1 and len(np.unique(merged[160:])) == 1
    assert merged[0] != merged[-1]
    assert merge_similar(d, labels, None) == (labels, 0)
    # The whole algorithm finds the two units.
    found = masked_em(features, masks, {})
    assert _purity(np.repeat([0, 1], [160, 80]), found) == (1.0, 1.0)


def test_parallel_e_step_equals_serial():
    from phy_masked_em.em import MaskedEM
    from phy_masked_em.kernels import _e_step_chunk, e_step_parallel
    from phy_masked_em.loop import DEFAULT_PARAMETERS

    features, masks, truth = _units(3000, 40, seed=13)
    d = prepare_data(features, masks)
    em = MaskedEM(d, dict(DEFAULT_PARAMETERS))
    model = em.fit(truth + 2)
    features_, slots = np.nonzero(model.support.T)
    feat_ptr = np.searchsorted(features_, np.arange(d.n_features + 1))
    outs = []
    for run in (e_step_parallel, lambda *a: _e_step_chunk(0, d.n_spikes, *a)):
        out = (np.empty(d.n_spikes, np.int64), np.empty(d.n_spikes),
               np.empty(d.n_spikes, np.int64), np.empty(d.n_spikes))
        run(d.indptr, d.indices, d.dy, d.deta, 1 / d.noise_variance, model.ids, model.const,
            model.inv_scale, model.is_const, feat_ptr, slots.astype(np.int64),
            model.g[slots, features_], *out)
        outs.append(out)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(outs[0][0], truth + 2)


def test_split_cache_gives_the_same_labels(monkeypatch):
    """The split trials reused from one split step to the next (`SplitCache`) change
    nothing: the same labels as trials recomputed every time, with fewer trials run."""
    import phy_masked_em.loop as loop
    from phy_masked_em.splits import SplitCache

    caches = []

    class Recorded(SplitCache):
        def __init__(self):
            super().__init__()
            self.reused_halves = 0
            caches.append(self)

        def get(self, key):
            trial = super().get(key)
            self.reused_halves += trial is not None and trial.halves is not None
            return trial

    class Forgetful(Recorded):
        def get(self, key):  # never reuses a trial: every one is recomputed
            self.misses += 1
            return None

    features, masks, truth = _units(2000, 48, n_units=12, seed=3)
    # Three units with amplitudes spread over a factor 4: their halves are split
    # candidates, vetoed (alike, one mode) at every split step.
    rng = np.random.default_rng(0)
    unit_features = features.reshape(len(features), 48, 3)
    for unit in range(3):
        spikes = np.flatnonzero(truth == unit)
        unmasked = masks[spikes] > 0
        x = unit_features[spikes]
        x[unmasked] *= np.repeat(rng.uniform(0.4, 1.6, len(spikes)), unmasked.sum(1))[:, None]
        unit_features[spikes] = x
    p = dict(num_starting_clusters=20, split_first=1, split_every=1)
    monkeypatch.setattr(loop, "SplitCache", Forgetful)
    recomputed = masked_em(features, masks, p)
    monkeypatch.setattr(loop, "SplitCache", Recorded)
    cached = masked_em(features, masks, p)
    np.testing.assert_array_equal(cached, recomputed)
    forgetful, recorded = caches
    assert forgetful.hits == 0 and forgetful.misses > 40
    assert recorded.hits + recorded.misses == forgetful.misses
    # Most clusters keep their spikes between split steps: their trials are reused,
    # rejected split candidates included.
    assert recorded.hits > recorded.misses / 2 and recorded.reused_halves >= 2
