"""The template stage's debug log names what it drops, splits and merges.

Each event of the refinement (`phy_tmatch.refine`) and of the consolidation
(`phy_tmatch.consolidate`) is one debug line naming its templates by a stable
identity (``c7``: the cluster a template came from; ``c7.s0``: a part of its
split; ``c7+c9``: a merge; ``r8.0``: residual events) and their spike counts.
Synthetic cases with a known answer; the counts in the lines are checked
against it. At the INFO level, the output is the summary line alone.
"""

from __future__ import annotations

import logging
import re

import numpy as np
from tmatch_spikes import HOME, N_CHANNELS, N_T
from tmatch_spikes import spike as _spike
from tmatch_spikes import spikes as _spikes

from phy_core.bunch import Bunch
from phy_tmatch.consolidate import consolidate
from phy_tmatch.merging import merged_origin
from phy_tmatch.refine import refine
from phy_tmatch.residual import local_channels
from phy_tmatch.templates import build_templates

POSITIONS = np.c_[np.zeros(N_CHANNELS), 20.0 * np.arange(N_CHANNELS)]
RATE = 30000.0


def _debug_lines(caplog, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.DEBUG and r.getMessage().startswith(prefix)]


def _elsewhere(rng, n: int, home: int) -> np.ndarray:
    """`n` spikes of a unit of another shape (narrower, later trough) centred on `home`."""
    t = np.arange(N_T)[:, None] - 19.0
    shape = -np.exp(-0.5 * (t / 1.2) ** 2)
    footprint = np.exp(-0.5 * ((np.arange(N_CHANNELS) - home) / 1.5) ** 2)
    waveform = 9.0 * shape * footprint[None, :]
    return waveform[None] * (1.0 + 0.1 * rng.standard_normal((n, 1, 1))) + \
        rng.standard_normal((n, N_T, N_CHANNELS))


def _refine(means: list, counts: list, labels: np.ndarray, snippets: np.ndarray,
            samples: np.ndarray, ids: list, next_id: int) -> Bunch:
    templates = build_templates(np.stack(means), np.array(counts), np.array(ids),
                                np.ones(N_CHANNELS))
    local = local_channels(POSITIONS, N_CHANNELS)
    events = Bunch(samples=samples, labels=labels, homes=np.full(len(labels), HOME),
                   snippets=snippets[:, :, local[HOME]].astype(np.float32))
    return refine(templates, events, np.array(counts), np.ones(N_CHANNELS), local, POSITIONS,
                  int(samples.max()) + 3000, RATE, next_id=next_id)


def test_a_merge_and_a_drop_are_named_by_their_clusters_and_counts(caplog):
    rng = np.random.default_rng(0)
    # One unit given as two templates (c7: 50 spikes, c9: 30, its train interleaved and
    # refractory) and a template that matched 3 spikes (c5).
    samples = np.arange(83) * 3000
    labels = np.r_[np.zeros(50, np.int64), np.ones(30, np.int64), np.full(3, 2)]
    snippets = np.concatenate([_spikes(rng, 80, 1.0), _elsewhere(rng, 3, 3)])
    order = rng.permutation(80)
    samples = np.r_[samples[:80][order], samples[80:]]
    with caplog.at_level(logging.DEBUG, logger="phy"):
        out = _refine([_spike(), _spike(), 9.0 * _spike()], [50, 30, 3], labels, snippets,
                      samples, [7, 9, 5], next_id=12)
    assert out.cluster_ids.tolist() == [12] and out.n_merged == 1 and out.n_dropped == 1
    lines = _debug_lines(caplog, "Refinement: ")
    assert "Refinement: drop c5 (n=3): fewer than 6 spikes matched." in lines
    merges = [s for s in lines if s.startswith("Refinement: merge ")]
    assert len(merges) == 1
    assert merges[0].startswith("Refinement: merge c9 (n=30) into c7 (n=50) (similarity ")
    # The merge's new template, named by what it was made of and all its spikes.
    assert "Refinement: c7+c9 (n=80) -> template c12." in lines


def test_a_split_names_its_parts_and_their_new_templates(caplog):
    rng = np.random.default_rng(1)
    # Two units of different shapes in one template (c7): 70 and 50 spikes.
    snippets = np.concatenate([_spikes(rng, 70, 1.0), _elsewhere(rng, 50, HOME + 2)])
    mean = snippets.mean(axis=0)
    samples = rng.permutation(120) * 3000
    with caplog.at_level(logging.DEBUG, logger="phy"):
        out = _refine([mean], [120], np.zeros(120, np.int64), snippets, samples, [7],
                      next_id=8)
    assert out.n_split == 1 and sorted(out.cluster_ids.tolist()) == [8, 9]
    lines = _debug_lines(caplog, "Refinement: ")
    split = [s for s in lines if s.startswith("Refinement: split c7 ")]
    assert len(split) == 1
    parts = re.findall(r"(c7\.s\d) \(n=(\d+)\)", split[0])
    assert sorted(int(n) for _, n in parts) == [50, 70]
    # Each part's new template: its name, its count, its cluster id.
    made = {int(c): (name, int(n)) for name, n, c in re.findall(
        r"^Refinement: (c7\.s\d) \(n=(\d+)\) -> template c(\d+)\.$", "\n".join(lines), re.M)}
    assert sorted(made) == [8, 9] and sorted(made.values()) == sorted(
        (name, int(n)) for name, n in parts)


def test_the_info_output_is_the_summary_alone(caplog):
    rng = np.random.default_rng(0)
    samples = np.arange(83) * 3000
    labels = np.r_[np.zeros(50, np.int64), np.ones(30, np.int64), np.full(3, 2)]
    snippets = np.concatenate([_spikes(rng, 80, 1.0), _elsewhere(rng, 3, 3)])
    with caplog.at_level(logging.INFO, logger="phy"):
        _refine([_spike(), _spike(), 9.0 * _spike()], [50, 30, 3], labels, snippets, samples,
                [7, 9, 5], next_id=12)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["Template refinement"]


def test_merged_origins_list_few_members_and_count_many():
    assert merged_origin("c7", "c9") == "c7+c9"
    assert merged_origin("c7+c9", "r8.0") == "c7+c9+r8.0"
    assert merged_origin("c7+c9+r8.0", "m3.1") == "c7+...(4)"
    assert merged_origin("c7+...(4)", "c2+c3") == "c7+...(6)"
    assert merged_origin("c2+c3", "c7+...(4)") == "c2+...(6)"


# -- The consolidation ---------------------------------------------------------------------


def _train(rng, n: int, duration: int, dead: int = 60) -> np.ndarray:
    gaps = dead + rng.exponential((duration - n * dead) / n, n)
    return np.cumsum(gaps).astype(np.int64)[np.cumsum(gaps) < duration - 100]


def _wave(home: int, peak: float, shift: int = 0) -> np.ndarray:
    t = np.arange(N_T)[:, None] - 15.0 - shift
    shape = -np.exp(-0.5 * (t / 2.0) ** 2) + 0.4 * np.exp(-0.5 * ((t - 6.0) / 4.0) ** 2)
    footprint = np.exp(-0.5 * ((np.arange(N_CHANNELS) - home) / 2.0) ** 2)
    return peak * shape * footprint[None, :]


def test_the_consolidation_names_its_removals_and_merges(caplog):
    rng = np.random.default_rng(2)
    duration = int(100 * RATE)
    # c10 a strong unit; c11 a weak template that matched 300 of c10's spikes again, at
    # the bottom of its amplitude range, and nothing else: removed, then dropped. c12 and
    # c13 one unit dated on either of two samples: merged into the one with more spikes.
    strong = _train(rng, 400, duration)
    again = np.sort(rng.choice(strong, 300, replace=False)) + rng.integers(-3, 4, 300)
    unit = _train(rng, 300, duration)
    half = rng.random(len(unit)) < 0.4
    trains = [strong, again, unit[~half], unit[half]]
    samples = np.concatenate(trains)
    kinds = np.concatenate([np.full(len(t), k) for k, t in enumerate(trains)])
    amplitudes = np.where(kinds == 1, 0.75, 1.0).astype(np.float32)
    order = np.argsort(samples, kind="stable")
    result = Bunch(spike_samples=samples[order], spike_templates=kinds[order],
                   amplitudes=amplitudes[order])
    templates = build_templates(
        np.stack([_wave(3, 40.0), _wave(6, 5.0), _wave(12, 10.0),
                  _wave(12, 10.0, shift=1)]),
        np.full(4, 200), np.array([10, 11, 12, 13]), np.ones(N_CHANNELS))
    with caplog.at_level(logging.DEBUG, logger="phy"):
        out, info = consolidate(result, templates, np.ones(N_CHANNELS), POSITIONS, duration,
                                RATE)
    assert info["n_dropped"] == 1 and info["n_merged"] == 1
    lines = _debug_lines(caplog, "Consolidation: ")
    assert any(s.startswith("Consolidation: c11 (peak ") and " matched 300 spikes of c10 " in s
               for s in lines)
    assert "Consolidation: drop c11 (n=300): 0 spikes left after those matched again." in lines
    assert any(s.startswith(f"Consolidation: merge c13 (n={half.sum()}) into c12 (cosine ")
               for s in lines)
