"""The MUA cluster after the masked EM: what goes there, and what leaves it.

Left-overs spanning the probe go there. On a dense probe, the spikes that fit no
cluster of their own (false detections, spikes of many units) gather in one or two
Gaussian clusters: in hundreds of dimensions a Gaussian around their blurred mean
fits them far better than the uniform noise cluster does. No feature is unmasked in
half of such a cluster's spikes (its mean waveform is nowhere), which no unit's
cluster is like. Their spikes are multi-unit activity: `weak_to_mua` moves them to
the MUA cluster, where the user and the wizard see them as such, not as a unit.

A clear unit leaves it. The MUA cluster of the masked EM is a Gaussian cluster like
the others (with its own prior), and it sometimes ends up holding one clean unit
(SNR 14-20 on the synthetic recordings). A MUA cluster whose mean waveform peaks at
`MIN_PEAK_STD` or more becomes a cluster of its own.

Clusters of false detections that do share some features have weak means too: on
the synthetic recordings (384 and 1024 channels, two seeds each) their largest mean
feature is 2.1-3.2 noise standard deviations, while every cluster that sorts a unit
at accuracy >= 0.8 peaks at 3.5 or more. `weak_to_mua` with ``min_peak_std=3`` moves
them too (false clusters 15 -> 10, 15 -> 10, 12 -> 5, 13 -> 7, no unit lost), but
the default keeps them: a recording of weak units only (all below 3) would lose
them all.
"""

from __future__ import annotations

import numpy as np

from .data import MaskedData
from .merge import WaveformStats
from .model import FIRST_GAUSSIAN, MUA

#: A MUA cluster whose mean waveform peaks at this many noise standard deviations or more
#: (on the features unmasked in at least half its spikes) is a unit.
MIN_PEAK_STD = 3.0


def _fully_unmasked_counts(data: MaskedData, block: int = 1 << 20) -> np.ndarray:
    """Spikes with mask 1 on each feature (in blocks of entries: small temporaries)."""
    counts = np.zeros(data.n_features, dtype=np.int64)
    for start in range(0, len(data.indices), block):
        full = data.masks[start:start + block] >= 1
        counts += np.bincount(data.indices[start:start + block][full],
                              minlength=data.n_features)
    return counts


def peak_std(stats: WaveformStats, c: int, referenced: np.ndarray | None = None) -> float:
    """Largest absolute mean feature of cluster `c`, in noise standard deviations, on
    its features unmasked in at least half its spikes (0 if there are none); infinite
    if one of them is not `referenced` (bool per feature: its offset means nothing)."""
    strong = stats.strong(c)
    if not strong.any():
        return 0.0
    if referenced is not None and not referenced[strong].all():
        return np.inf
    return float(np.abs(stats.mean(c)[strong]).max())


def weak_to_mua(data: MaskedData, labels: np.ndarray, min_peak_std: float = 0.0
                ) -> tuple[np.ndarray, int]:
    """Give the MUA cluster a new id if its mean peaks at `MIN_PEAK_STD` or more, then
    move to it the Gaussian clusters without a mean waveform (or, with `min_peak_std`,
    those whose mean peaks below it). Returns the new labels and the number of
    clusters moved."""
    if not len(labels):
        return labels, 0
    stats = WaveformStats(data, labels)
    # A feature never masked has no noise reference (`data`: its noise statistics are
    # those of all its values), so a mean offset there means nothing.
    referenced = _fully_unmasked_counts(data) < data.n_spikes
    clusters = np.flatnonzero(stats.n[FIRST_GAUSSIAN:] > 0) + FIRST_GAUSSIAN
    weak = [c for c in clusters if
            (peak_std(stats, int(c), referenced) < min_peak_std or not stats.strong(c).any())]
    if stats.n[MUA] > 0 and peak_std(stats, MUA, referenced) >= MIN_PEAK_STD:
        labels = np.where(labels == MUA, max(len(stats.n), FIRST_GAUSSIAN), labels)
    if not weak:
        return labels, 0
    return np.where(np.isin(labels, weak), MUA, labels), len(weak)
