"""Lazy per-spike arrays of a `TemplateModel`: rows are computed on indexing.

`SparseFeatures` (``pc_features`` on the channels of ``pc_feature_ind``),
`SparseMasks` and `TemplateWaveforms` (template times amplitude, when there
is no raw data). The traces and their windows use the core's `ChannelSubset`
and `SpikeWindows`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SparseFeatures", "SparseMasks", "TemplateWaveforms"]


def _spike_index(item: Any, n: int) -> tuple[np.ndarray, bool, tuple]:
    """Spike ids selected by `item` (int, slice, array, bool mask, or a tuple)."""
    rest: tuple = ()
    if isinstance(item, tuple):
        item, rest = (item[0], item[1:]) if item else (slice(None), ())
    if isinstance(item, slice):
        return np.arange(*item.indices(n)), False, rest
    if isinstance(item, (int, np.integer)):
        i = int(item) + (n if item < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"spike {item} out of range for {n} spikes")
        return np.array([i]), True, rest
    ids = np.asarray(item)
    if ids.dtype == bool:
        if ids.shape != (n,):
            raise IndexError(f"boolean index of shape {ids.shape}, expected ({n},)")
        return np.nonzero(ids)[0], False, rest
    ids = ids.astype(np.int64).ravel()
    ids = np.where(ids < 0, ids + n, ids)
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise IndexError(f"spike ids out of range for {n} spikes")
    return ids, False, rest


class _Lazy:
    """Base of the lazy per-spike arrays: computes rows on indexing."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, ids: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, item: Any) -> np.ndarray:
        ids, scalar, rest = _spike_index(item, self.shape[0])
        out = self._rows(ids)
        if rest:
            out = out[(slice(None), *rest)]
        return out[0] if scalar else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class SparseFeatures(_Lazy):
    """``pc_features`` placed on the channels of ``pc_feature_ind``, zeros elsewhere."""

    def __init__(self, pc_features, pc_feature_ind, spike_templates, n_channels) -> None:
        self.pc_features = pc_features
        self.pc_feature_ind = pc_feature_ind
        self.spike_templates = spike_templates
        self.n_pcs = int(pc_features.shape[1])
        self.n_channels = n_channels
        self.shape = (int(pc_features.shape[0]), n_channels * self.n_pcs)
        self.dtype = np.dtype(np.float32)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        data = np.asarray(self.pc_features[ids], dtype=np.float32)  # (n, n_pcs, n_loc)
        channels = self.pc_feature_ind[self.spike_templates[ids]]  # (n, n_loc)
        out = np.zeros((len(ids), self.n_channels, self.n_pcs), dtype=np.float32)
        out[np.arange(len(ids))[:, None], channels] = data.transpose(0, 2, 1)
        return out.reshape(len(ids), -1)


class SparseMasks(_Lazy):
    """1 on the channels of each spike's template (``channel_sets``), 0 elsewhere."""

    def __init__(self, channel_sets: np.ndarray, spike_templates: np.ndarray,
                 n_channels: int) -> None:
        self.channel_sets = channel_sets  # (n_templates, n_channels) float32
        self.spike_templates = spike_templates
        self.shape = (len(spike_templates), n_channels)
        self.dtype = np.dtype(np.float32)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        return self.channel_sets[self.spike_templates[ids]]


class TemplateWaveforms(_Lazy):
    """Each spike's template times its amplitude (when there is no raw data)."""

    def __init__(self, templates, spike_templates, amplitudes, wmi=None) -> None:
        self.templates = templates
        self.spike_templates = spike_templates
        self.amplitudes = amplitudes
        self.wmi = wmi
        self.shape = (len(spike_templates), *templates.shape[1:])
        self.dtype = np.dtype(np.float32)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        templates = np.asarray(self.templates[self.spike_templates[ids]], dtype=np.float32)
        if self.wmi is not None:
            templates = templates @ self.wmi
        amplitudes = np.asarray(self.amplitudes[ids], dtype=np.float32)
        return (templates * amplitudes[:, None, None]).astype(np.float32)
