"""Masked EM on long recordings: the fit on a subset of the spikes (`max_spikes`), the cluster
mask of large clusters (`fraction_for_cluster_mask`), splits that a merge would undo, cycles
of the labels, and the release of the pages of a memory-mapped ``.kwx``."""

import numpy as np
import pytest
from test_masked_em_scale import _purity, _units

from phy_masked_em.data import MaskedEMError, prepare_data, prepare_rows, subset
from phy_masked_em.loop import DEFAULT_PARAMETERS, fitted_rows, masked_em, n_fitted


def _same_partition(a, b, tolerance=0.0):
    """Whether labels `a` and `b` are the same clusters up to relabelling (all but a
    fraction `tolerance` of the spikes)."""
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    # Each cluster of `a` and of `b` has one partner holding (nearly) all its spikes.
    agree = min(table.max(axis=1).sum(), table.max(axis=0).sum())
    return agree >= (1 - tolerance) * len(a)


def test_fitted_rows_are_spread_and_counted():
    assert fitted_rows(100, None) is None and fitted_rows(100, 100) is None
    assert fitted_rows(100, 0) is None  # 0: no limit
    rows = fitted_rows(1000, 10)
    np.testing.assert_array_equal(rows, np.round(np.linspace(0, 999, 10)).astype(int))
    assert n_fitted(1000, 10) == 10 and n_fitted(5, 10) == 5 and n_fitted(5, None) == 5


def test_kept_rows_and_later_rows_are_prepared_as_the_whole():
    features, masks, _ = _units(700, 30, seed=2)
    masks[::7] *= 0.5  # partial masks too
    whole = prepare_data(features, masks)
    rows = fitted_rows(700, 90)
    # Small blocks: rows kept across block boundaries.
    kept = prepare_data(features, masks, block_bytes=30 * 8 * 120, rows=rows)
    expected = subset(whole, rows)
    np.testing.assert_array_equal(kept.noise_mean, whole.noise_mean)
    np.testing.assert_array_equal(kept.noise_variance, whole.noise_variance)
    for name in ("indptr", "indices", "dy", "deta", "masks", "float_num_unmasked"):
        np.testing.assert_array_equal(getattr(kept, name), getattr(expected, name), name)
    later = prepare_rows(features, masks, 250, 400, kept)
    expected = subset(whole, np.arange(250, 400))
    for name in ("indptr", "indices", "dy", "deta", "masks", "float_num_unmasked"):
        np.testing.assert_array_equal(getattr(later, name), getattr(expected, name), name)
    with pytest.raises(MaskedEMError, match="increasing"):
        prepare_data(features, masks, rows=rows[::-1])


def test_subset_fit_assigns_every_spike_as_the_full_fit():
    features, masks, truth = _units(4000, 48, n_units=10, seed=11)
    full = masked_em(features, masks, {})
    seen = []
    part = masked_em(features, masks, dict(max_spikes=1500),
                     on_iteration=lambda i, lab: seen.append((i, lab)))
    assert part.shape == (4000,) and part.min() >= 0
    # The labels seen during the fit are those of the 1500 spikes fitted.
    assert all(lab.shape == (1500,) for _, lab in seen)
    assert min(_purity(truth, full)) >= 0.99
    assert _same_partition(full, part)
    assert len(np.unique(part)) == len(np.unique(full))


def test_subset_fit_resumes_as_uninterrupted():
    features, masks, _ = _units(2400, 40, n_units=10, seed=5)
    p = dict(num_starting_clusters=3, split_first=2, split_every=3, max_spikes=1000)
    seen = []
    labels = masked_em(features, masks, p, on_iteration=lambda i, lab: seen.append((i, lab)))
    assert len(seen) >= 4
    for iteration, checkpoint in seen[1:-1:2]:
        resumed = masked_em(features, masks, p, initial_labels=checkpoint,
                            start_iteration=iteration + 1)
        np.testing.assert_array_equal(resumed, labels)
    with pytest.raises(MaskedEMError, match="initial_labels"):
        masked_em(features, masks, p, initial_labels=np.zeros(2400, dtype=np.int64))


def test_cluster_mask_leaves_out_features_of_a_few_spikes():
    from phy_masked_em.model import fit

    # One cluster of 1000 spikes on channels 0-2; channel 5 unmasked in 10 of them (1%),
    # channel 6 in 40 (4%).
    rng = np.random.default_rng(0)
    n, n_channels = 1000, 10
    masks = np.zeros((n, n_channels), np.float32)
    masks[:, :3] = 1
    masks[:10, 5] = 1
    masks[100:140, 6] = 1
    features = rng.normal(0, 1, (n, 3 * n_channels)).astype(np.float32)
    features[:, :9] += 8
    data = prepare_data(features, masks)
    labels = np.full(n, 2)
    channels_of = {}
    for fraction in (0.0, 0.02, 0.05):
        model = fit(data, labels, dict(DEFAULT_PARAMETERS, fraction_for_cluster_mask=fraction))
        support = model.support[list(model.ids).index(2)].reshape(n_channels, 3).all(axis=1)
        channels_of[fraction] = list(np.flatnonzero(support))
    assert channels_of == {0.0: [0, 1, 2, 5, 6], 0.02: [0, 1, 2, 6], 0.05: [0, 1, 2]}


def test_a_split_whose_half_would_merge_back_is_vetoed():
    from phy_masked_em.merge import WaveformStats, joining_cluster

    # Units 0 and 1 on channels 0-4, different waveforms; the spikes of unit 0 in two
    # clusters (2 and 3), unit 1 in cluster 4.
    rng = np.random.default_rng(4)
    n_channels, per = 12, 300
    templates = rng.choice([-1, 1], (2, 15)) * rng.uniform(6, 10, (2, 15))
    features = rng.normal(0, 1, (3 * per, 3 * n_channels)).astype(np.float32)
    features[:2 * per, :15] += templates[0]
    features[2 * per:, :15] += templates[1]
    masks = np.zeros((3 * per, n_channels), np.float32)
    masks[:, :5] = 1
    data = prepare_data(features, masks)
    labels = np.repeat([2, 3, 4], per)
    stats = WaveformStats(data, labels, 6)  # one spare slot
    members = {2: np.arange(per), 4: np.arange(2 * per, 3 * per)}
    group = WaveformStats(data, labels, 5)
    # Cluster 3 is the same unit as cluster 2: a split making it would be undone.
    rows3 = np.arange(per, 2 * per)
    assert joining_cluster(data, stats, members, rows3, group, 3, 0.9) == 2
    # Cluster 4 joins nothing once it is not a candidate itself.
    rows4 = np.arange(2 * per, 3 * per)
    assert joining_cluster(data, stats, {2: members[2]}, rows4, group, 4, 0.9) is None
    assert joining_cluster(data, stats, members, rows3, group, 3, None) is None


def test_pages_of_a_memory_map_are_released_without_changing_reads(tmp_path):
    from phy_masked_em.command import KwxPlane

    rng = np.random.default_rng(1)
    fm = rng.normal(0, 1, (5000, 96, 2)).astype(np.float32)
    fm[:, :, 1] = rng.uniform(0, 1, (5000, 96))
    path = tmp_path / "fm.bin"
    fm.tofile(path)
    mapped = np.memmap(path, np.float32, "r", offset=0, shape=fm.shape)
    features, masks = KwxPlane(mapped, 0), KwxPlane(mapped, 1, step=3)
    # Blocks not aligned to pages, read twice (the second read after the release).
    for _ in range(2):
        for start in range(0, 5000, 777):
            np.testing.assert_array_equal(features[start:start + 777], fm[start:start + 777, :, 0])
            np.testing.assert_array_equal(masks[start:start + 777], fm[start:start + 777, ::3, 1])


def _cycle_states():
    """Labels of 6 spikes: states A, B, C, D, then B, C, D, ... forever (scores 5, 3, 1, 2)."""
    a = np.array([0, 2, 2, 3, 3, 1])
    b = np.array([0, 2, 2, 3, 4, 1])
    c = np.array([0, 2, 3, 3, 4, 1])
    d = np.array([0, 2, 2, 2, 4, 1])
    return [(a, 5.0), (b, 3.0), (c, 1.0), (d, 2.0)], 1


def _run_cycle(start):
    from phy_masked_em.loop import CycleStop

    states, loop_start = _cycle_states()
    cycle, k = CycleStop(), start
    for iteration in range(100):
        labels, score = states[k]
        # Renumbered clusters are the same state.
        labels = np.where(labels >= 2, labels + 10 * iteration, labels)
        if cycle.stop(iteration, labels, score):
            return k, iteration
        k = k + 1 if k + 1 < len(states) else loop_start
    return None, None


def test_a_cycle_stops_at_its_lowest_score_wherever_it_was_entered():
    # From A (not in the cycle), or resumed at B, C or D: it stops at C (score 1).
    for start in range(4):
        state, iteration = _run_cycle(start)
        assert state == 2, start
        assert iteration < 12


def test_cycle_digest_ignores_the_numbering_but_not_the_partition():
    from phy_masked_em.loop import CycleStop

    labels = np.array([0, 5, 5, 9, 1, 9])
    assert CycleStop.digest(labels) == CycleStop.digest(np.array([0, 3, 3, 2, 1, 2]))
    assert CycleStop.digest(labels) != CycleStop.digest(np.array([0, 5, 5, 9, 9, 9]))
    # The noise and MUA clusters are not renumbered.
    assert CycleStop.digest(labels) != CycleStop.digest(np.array([1, 5, 5, 9, 0, 9]))


def test_cluster_kwik_with_a_subset_checkpoints_the_fitted_labels(tmp_path):
    from test_cluster_auto import N_SPIKES, _make_kwik

    from phy_kwik.model import KwikModel
    from phy_masked_em.command import (
        checkpoint_path,
        cluster_kwik,
        input_identity,
        kwik_parameters,
        load_checkpoint,
        save_checkpoint,
    )

    path = tmp_path / "x.kwik"
    _make_kwik(path)
    overrides = dict(max_spikes=600)
    with KwikModel(path) as model:
        identity = input_identity(model, kwik_parameters(model, overrides))
    assert identity["n_fitted"] == 600
    ckpt = checkpoint_path(path, 0)
    labels = np.arange(N_SPIKES) % 5
    save_checkpoint(ckpt, identity, 3, labels[:600])
    assert load_checkpoint(ckpt, identity)["labels"].shape == (600,)
    save_checkpoint(ckpt, identity, 3, labels)  # a running fit has 600 labels, not all
    assert load_checkpoint(ckpt, identity) is None
    save_checkpoint(ckpt, identity, 3, labels, complete=True)  # a finished one has all
    assert load_checkpoint(ckpt, identity)["labels"].shape == (N_SPIKES,)
    ckpt.unlink()
    info = cluster_kwik(path, parameters=overrides, checkpoint_every_s=0)
    with KwikModel(path) as model:
        clusters = np.asarray(model.spike_clusters)
    assert clusters.shape == (N_SPIKES,) and info["n_clusters"] == len(np.unique(clusters)) > 1
