"""The data-model protocol: what every dataset reader provides.

A reader plugin (hook `phy_open_model`) returns any object with these
attributes and methods; views, statistics, the wizard and the CLI read
datasets only through them, so a new format works with all of phy.

Conventions
-----------
- Spikes are indexed ``0 .. n_spikes - 1`` in increasing time order.
- Arrays may be memory-mapped or lazy (anything indexable like a numpy array
  along its first axis): ``model.waveforms[spike_ids]`` must load only those
  spikes, so nothing needs to fit in RAM.
- Traces are ``(n_samples, n_channels)``, channels contiguous.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .bunch import Bunch


@runtime_checkable
class DataModel(Protocol):
    """What every reader provides.

    Attributes
    ----------
    path : Path or None
        Where the dataset lives (None for an in-memory dataset).
    sample_rate : float
        Sampling rate of the recording, in Hz.
    n_channels : int
        Number of channels of the (current channel group of the) probe.
    n_spikes : int
        Number of spikes.
    spike_samples : array, (n_spikes,), integer
        Spike times in samples, non-decreasing.
    spike_times : array, (n_spikes,), float64
        Spike times in seconds (``spike_samples / sample_rate``).
    spike_clusters : array, (n_spikes,), integer
        The cluster of every spike in the current clustering.
    n_features_per_channel : int
        Features per channel; feature ``j`` belongs to channel
        ``j // n_features_per_channel``.
    features : array-like, (n_spikes, n_channels * n_features_per_channel)
        Per-spike features (e.g. PCA projections), lazily indexable.
    masks : array-like, (n_spikes, n_channels), float in [0, 1]
        How much each channel takes part in each spike.
    waveforms : array-like, (n_spikes, n_samples_waveforms, n_channels)
        Filtered waveforms, extracted lazily on indexing.
    traces : array-like, (n_samples, n_channels), or None
        The raw recording, memory-mapped, or None if unavailable.
    channel_positions : array, (n_channels, 2), float
        Channel coordinates on the probe, in micrometres.
    probe : object or None
        The probe (channel groups, adjacency), as the reader knows it.
    cluster_groups : dict
        ``{cluster_id: group}`` with groups 0 noise, 1 mua, 2 good,
        3 unsorted, as saved in the dataset.
    """

    path: Path | None
    sample_rate: float
    n_channels: int
    n_spikes: int
    spike_samples: np.ndarray
    spike_times: np.ndarray
    spike_clusters: np.ndarray
    n_features_per_channel: int
    features: Any
    masks: Any
    waveforms: Any
    traces: Any
    channel_positions: np.ndarray
    probe: Any
    cluster_groups: dict

    def save(
        self,
        spike_clusters: np.ndarray,
        cluster_groups: Mapping[int, int],
        labels: Mapping[str, Mapping[int, Any]] | None = None,
    ) -> None:
        """Save a clustering, atomically: an interrupted save loses nothing."""

    def describe(self) -> str:
        """A short human-readable description of the dataset."""

    def close(self) -> None:
        """Release open files."""


REQUIRED = tuple(DataModel.__annotations__)


def check_model(model: Any) -> list[str]:
    """Check that `model` fulfils the protocol, with consistent shapes.

    Returns
    -------
    problems : list of str
        Empty if the model is consistent. Array attributes are checked on
        their shape only (lazy arrays are not loaded).
    """
    problems = [f"missing attribute {name!r}" for name in REQUIRED if not hasattr(model, name)]
    problems += [
        f"missing method {name}()" for name in ("save", "describe", "close")
        if not callable(getattr(model, name, None))
    ]
    if problems:
        return problems
    n = model.n_spikes
    n_channels = model.n_channels
    expected = {
        "spike_samples": (n,),
        "spike_times": (n,),
        "spike_clusters": (n,),
        "features": (n, n_channels * model.n_features_per_channel),
        "masks": (n, n_channels),
        "channel_positions": (n_channels, 2),
    }
    for name, shape in expected.items():
        actual = tuple(getattr(model, name).shape)
        if actual != shape:
            problems.append(f"{name} has shape {actual}, expected {shape}")
    waveforms_shape = tuple(model.waveforms.shape)
    if waveforms_shape[:1] != (n,) or waveforms_shape[2:] != (n_channels,):
        problems.append(f"waveforms has shape {waveforms_shape}, expected ({n}, *, {n_channels})")
    if model.traces is not None and tuple(model.traces.shape)[1:] != (n_channels,):
        problems.append(f"traces has shape {tuple(model.traces.shape)}, expected (*, {n_channels})")
    if n and np.any(np.diff(np.asarray(model.spike_samples)) < 0):
        problems.append("spike_samples are not sorted")
    if model.sample_rate <= 0:
        problems.append(f"sample_rate is {model.sample_rate}, expected > 0")
    return problems


def summary(model: DataModel) -> Bunch:
    """The numbers `phy describe` prints for any model."""
    n_samples = None if model.traces is None else int(model.traces.shape[0])
    if n_samples is not None:
        duration = n_samples / model.sample_rate
    elif model.n_spikes:
        duration = float(model.spike_samples[-1]) / model.sample_rate
    else:
        duration = 0.0
    return Bunch(
        path=str(model.path) if model.path is not None else "(in memory)",
        sample_rate=float(model.sample_rate),
        n_channels=int(model.n_channels),
        n_spikes=int(model.n_spikes),
        n_clusters=len(np.unique(model.spike_clusters)),
        n_features_per_channel=int(model.n_features_per_channel),
        duration_s=float(duration),
    )
