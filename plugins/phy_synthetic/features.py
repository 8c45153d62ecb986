"""An in-memory synthetic dataset at the level of features, with ground truth.

Each true unit sits on a channel of a linear probe; its masks decay with the
distance to that channel, its features are a unit-specific mean plus
Gaussian noise on its unmasked channels, and pure noise elsewhere (as
SpikeDetekt's masked features are). The clustering given as
``spike_clusters`` splits every unit into ``oversplit`` random parts, so
curation (merging) has something to do and a known right answer.

Recordings at the level of raw voltage (``.dat`` + ``.prb``) come with the
data-format plugins; this model is for exercising clustering, the wizard
and statistics quickly.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

import numpy as np

from phy_core.model import summary


class LazyWaveforms:
    """Waveforms made on indexing, deterministic per spike (never all in RAM)."""

    def __init__(self, model: SyntheticFeatureModel, n_samples: int = 32) -> None:
        self._model = model
        self.shape = (model.n_spikes, n_samples, model.n_channels)
        self.dtype = np.dtype(np.float32)
        t = np.linspace(-1, 1, n_samples)
        # A negative spike followed by a small positive rebound.
        self._template = (-np.exp(-(t / 0.15) ** 2) + 0.3 * np.exp(-((t - 0.35) / 0.2) ** 2))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, spike_ids) -> np.ndarray:
        spike_ids = np.arange(self.shape[0])[spike_ids]
        scalar = spike_ids.ndim == 0  # an int index drops the first axis, as in numpy
        spike_ids = np.atleast_1d(spike_ids)
        model = self._model
        units = model.spike_units[spike_ids]
        amplitudes = model.unit_amplitudes[units][:, None] * model.masks[spike_ids]
        out = amplitudes[:, None, :] * self._template[None, :, None]
        for i, spike in enumerate(spike_ids):
            noise = np.random.default_rng([model.seed, int(spike)])
            out[i] += 0.05 * noise.standard_normal(out.shape[1:])
        out = out.astype(np.float32)
        return out[0] if scalar else out


class SyntheticFeatureModel:
    """A dataset fulfilling `phy_core.model.DataModel`, with ground truth.

    Parameters
    ----------
    n_units : int
        Number of true units.
    n_channels : int
        Channels of a linear probe (20 um pitch).
    n_spikes : int
        Total number of spikes.
    n_features_per_channel : int
        Features per channel.
    oversplit : int
        Each unit is split at random into this many clusters.
    seed : int
        Everything is deterministic given the seed.
    sample_rate : float
        In Hz.
    duration_s : float
        Spikes are spread uniformly over this duration.

    Attributes
    ----------
    spike_units : array
        The true unit of every spike (ground truth).
    """

    def __init__(
        self,
        n_units: int = 10,
        n_channels: int = 32,
        n_spikes: int = 20_000,
        n_features_per_channel: int = 3,
        oversplit: int = 2,
        seed: int = 0,
        sample_rate: float = 25_000.0,
        duration_s: float = 60.0,
    ) -> None:
        if min(n_units, n_channels, n_spikes, n_features_per_channel, oversplit) < 1:
            raise ValueError("synthetic: every count must be at least 1")
        if sample_rate <= 0 or duration_s <= 0:
            raise ValueError("synthetic: sample_rate and duration_s must be positive")
        rng = np.random.default_rng(seed)
        self.path = None
        self.seed = seed
        self.sample_rate = float(sample_rate)
        self.n_channels = n_channels
        self.n_spikes = n_spikes
        self.n_features_per_channel = n_features_per_channel
        self.channel_positions = np.c_[np.zeros(n_channels), 20.0 * np.arange(n_channels)]
        self.probe = None
        self.traces = None

        self.spike_samples = np.sort(rng.integers(0, int(duration_s * sample_rate), n_spikes))
        self.spike_times = self.spike_samples / self.sample_rate
        self.spike_units = rng.integers(0, n_units, n_spikes)
        unit_channels = rng.integers(0, n_channels, n_units)
        self.unit_channels = unit_channels
        self.unit_amplitudes = rng.uniform(3.0, 10.0, n_units)

        # Masks decay with the distance to the unit's channel (about 2 channels wide).
        distance = np.abs(np.arange(n_channels)[None, :] - unit_channels[self.spike_units][:, None])
        masks = np.exp(-(distance / 2.0) ** 2)
        masks[masks < 0.1] = 0.0
        self.masks = masks.astype(np.float32)

        unit_means = rng.normal(0, 1, (n_units, n_channels * n_features_per_channel))
        unit_means *= self.unit_amplitudes[:, None]
        features = rng.standard_normal((n_spikes, n_channels * n_features_per_channel))
        feature_masks = np.repeat(self.masks, n_features_per_channel, axis=1)
        features += feature_masks * unit_means[self.spike_units]
        self.features = features.astype(np.float32)
        self.waveforms = LazyWaveforms(self)

        parts = rng.integers(0, oversplit, n_spikes)
        self.spike_clusters = (self.spike_units * oversplit + parts).astype(np.int64)
        self.cluster_groups: dict[int, int] = {}
        self.saved: dict[str, Any] | None = None

    def save(self, spike_clusters, cluster_groups, labels=None) -> None:
        """Keep the saved clustering in memory (this dataset has no file)."""
        self.saved = dict(
            spike_clusters=np.array(spike_clusters, copy=True),
            cluster_groups=dict(cluster_groups),
            labels={k: dict(v) for k, v in (labels or {}).items()},
        )

    def describe(self) -> str:
        s = summary(self)
        return "\n".join([
            "Synthetic feature-level dataset (in memory, with ground truth)",
            f"  units (true)      {len(np.unique(self.spike_units))}",
            f"  clusters          {s.n_clusters}",
            f"  spikes            {s.n_spikes:,}",
            f"  channels          {s.n_channels}",
            f"  features/channel  {s.n_features_per_channel}",
            f"  sample rate       {s.sample_rate:g} Hz",
            f"  duration          {s.duration_s:.1f} s",
        ])

    def close(self) -> None:
        pass


PREFIX = "synthetic:"
_PARAMETERS = {
    "n_units": int, "n_channels": int, "n_spikes": int, "n_features_per_channel": int,
    "oversplit": int, "seed": int, "sample_rate": float, "duration_s": float,
}


def parse_synthetic_path(text: str) -> dict[str, Any]:
    """Parse ``synthetic:key=value,...`` into keyword arguments (literals only).

    Raises
    ------
    ValueError
        For an unknown key or a value of the wrong type.
    """
    params: dict[str, Any] = {}
    body = text[len(PREFIX):]
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or key not in _PARAMETERS:
            raise ValueError(
                f"{text}: cannot understand {item!r}; expected key=value with key in "
                f"{', '.join(_PARAMETERS)}"
            )
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise ValueError(f"{text}: {key} must be a number, got {raw!r}") from None
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or (isinstance(value, float) and not np.isfinite(value))):
            raise ValueError(f"{text}: {key} must be a number, got {raw!r}")
        if _PARAMETERS[key] is int and value != int(value):
            raise ValueError(f"{text}: {key} must be an integer, got {raw!r}")
        params[key] = _PARAMETERS[key](value)
    return params


def open_synthetic(path: str, options: Mapping[str, Any] | None = None) -> SyntheticFeatureModel:
    """Build the model described by a ``synthetic:...`` pseudo-path."""
    return SyntheticFeatureModel(**parse_synthetic_path(path))
