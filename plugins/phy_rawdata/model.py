"""`RawRecordingModel`: a recording described by a PRM file, as a `DataModel`.

Channel mapping
---------------
``model.raw_traces`` is the whole file: ``(n_samples, n_channels_in_file)``,
every channel the acquisition system wrote, in file order.
``model.channel_order`` lists the file columns of the probe's current channel
group, in the probe's order; ``model.n_channels`` is its length, and
``traces`` (a lazy view), ``waveforms``, ``masks`` and ``channel_positions``
follow that order: column ``j`` of ``traces`` is
``raw_traces[:, channel_order[j]]``. When the probe uses every channel of the
file in order (the usual case), the two coincide.

Spikes
------
A raw recording has no spikes until it is sorted, unless a ground truth
``<experiment_name>.groundtruth.npz`` (written by ``phy_synthetic``) sits
beside the PRM: its ``spike_samples`` and ``spike_clusters`` (the true units)
then become the model's spikes, so the views and statistics can be checked
against a known answer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from phy_core.arrays import ChannelSubset, ConcatenatedArrays, SpikeWindows
from phy_core.errors import PhyError
from phy_core.model import summary

from .dat import RawDataError, read_dat
from .groundtruth import read_ground_truth
from .prm import read_prm

logger = logging.getLogger("phy")

KWD_SUFFIX = ".raw.kwd"


def open_traces(prm) -> Any:
    """The traces of every raw data file of the PRM, concatenated in time."""
    t = prm.traces
    arrays = []
    for f in t.raw_data_files:
        if f.name.endswith(KWD_SUFFIX):
            from .kwd import read_kwd

            array = read_kwd(f)
            if array.shape[1] != t.n_channels:
                raise RawDataError(f"{f}: has {array.shape[1]} channels, but {prm.path} "
                                   f"says n_channels={t.n_channels}.")
        else:
            array = read_dat(f, dtype=t.dtype, offset=t.offset, n_channels=t.n_channels)
        arrays.append(array)
    return arrays[0] if len(arrays) == 1 else ConcatenatedArrays(arrays)


def _load_probe(prm, n_channels: int, channel_group) -> Any:
    """The probe of the PRM (a path or a built-in name), checked against the data."""
    if prm.prb_file is None:
        return None
    from phy_probes.builtin import list_probes, load_probe

    prb = prm.prb_file
    if not prb.exists() and prb.name in list_probes():
        probe = load_probe(prb.name)
    elif not prb.exists():
        raise RawDataError(f"{prm.path}: prb_file {prb} does not exist "
                           f"(nor is {prb.name!r} a built-in probe: {', '.join(list_probes())}).")
    else:
        probe = load_probe(prb)
    used = np.asarray(probe.all_channels)
    if len(used) and used.max() >= n_channels:
        outside = sorted(int(c) for c in used[used >= n_channels])
        raise RawDataError(
            f"{prb}: the probe names channel(s) {outside[:10]}{' ...' if len(outside) > 10 else ''}"
            f", but the data of {prm.path} has only {n_channels} channels (0 .. "
            f"{n_channels - 1}): wrong probe, or wrong n_channels in the PRM."
        )
    if channel_group is not None:
        if channel_group not in probe.channel_groups:
            raise RawDataError(f"{prb}: no channel group {channel_group!r} (groups: "
                               f"{', '.join(map(str, probe.channel_groups))}).")
        probe.change_channel_group(channel_group)
    return probe


def _load_ground_truth(path: Path, n_samples: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(spike_samples, spike_clusters, n_units)`` from a ``.groundtruth.npz``, validated."""
    arrays = read_ground_truth(path)
    samples, clusters = arrays["spike_samples"], arrays["spike_clusters"]
    if len(samples):
        if np.any(np.diff(samples.astype(np.int64)) < 0):
            raise RawDataError(f"{path}: spike_samples are not sorted.")
        if samples[0] < 0 or samples[-1] >= n_samples:
            raise RawDataError(f"{path}: spike_samples span {samples[0]} .. {samples[-1]}, "
                               f"outside the recording (0 .. {n_samples - 1}).")
    return samples, clusters, len(np.unique(clusters))


class RawRecordingModel:
    """A raw recording (``.dat``/``.bin``/``.raw.kwd`` + ``.prb`` + ``.prm``) as a `DataModel`.

    Parameters
    ----------
    prm_path : path
        The ``.prm`` file (see `phy_rawdata.prm.read_prm`).
    channel_group : int or None
        The probe's channel group (shank) to expose; the first by default.

    Attributes
    ----------
    prm : Bunch
        The validated parameters.
    raw_traces : array-like
        ``(n_samples, n_channels_in_file)``: the whole file (see the module
        docstring for the channel mapping).
    traces : ChannelSubset
        ``(n_samples, n_channels)``: the current channel group's columns.
    channel_order : int64 array
        File columns of the current channel group, in probe order.
    """

    def __init__(self, prm_path: str | os.PathLike, channel_group: int | None = None) -> None:
        self.prm = read_prm(prm_path)
        self.path = self.prm.path
        self.sample_rate = self.prm.traces.sample_rate
        self.raw_traces = open_traces(self.prm)
        n_file_channels = int(self.raw_traces.shape[1])
        self.probe = _load_probe(self.prm, n_file_channels, channel_group)
        if self.probe is None:
            if channel_group not in (None, 0):
                raise RawDataError(f"{self.path}: no prb_file, so the only channel group is 0.")
            # Without a probe, every channel, on a line 20 um apart.
            self.channel_group = 0
            self.channel_order = np.arange(n_file_channels, dtype=np.int64)
            self.channel_positions = np.c_[np.zeros(n_file_channels),
                                           20. * np.arange(n_file_channels)]
        else:
            self.channel_group = self.probe.channel_group
            self.channel_order = np.asarray(self.probe.channels, dtype=np.int64)
            self.channel_positions = np.asarray(self.probe.positions, dtype=np.float64)
        self.n_channels = len(self.channel_order)
        # The protocol's traces are the probe's channels, aligned with channel_positions.
        self.traces = ChannelSubset(self.raw_traces, self.channel_order)

        gt_path = self.path.parent / f"{self.prm.experiment_name}.groundtruth.npz"
        self.ground_truth_path = gt_path if gt_path.exists() else None
        if self.ground_truth_path is not None:
            self.spike_samples, self.spike_clusters, self.n_units = _load_ground_truth(
                gt_path, int(self.traces.shape[0]))
        else:
            self.spike_samples = np.zeros(0, dtype=np.int64)
            self.spike_clusters = np.zeros(0, dtype=np.int64)
            self.n_units = 0
        self.n_spikes = len(self.spike_samples)
        self.spike_times = self.spike_samples / self.sample_rate

        sd = self.prm.spikedetekt
        self.waveforms = SpikeWindows(self.raw_traces, self.spike_samples,
                                      sd["extract_s_before"], sd["extract_s_after"],
                                      channels=self.channel_order)
        self.n_samples_waveforms = self.waveforms.shape[1]
        self.n_features_per_channel = 0
        self.features = np.zeros((self.n_spikes, 0), dtype=np.float32)
        # A read-only broadcast view: no memory per spike and channel.
        self.masks = np.broadcast_to(np.ones(1, dtype=np.float32),
                                     (self.n_spikes, self.n_channels))
        self.cluster_groups: dict[int, int] = {}

    @property
    def duration(self) -> float:
        """Duration of the recording, in seconds."""
        return self.traces.shape[0] / self.sample_rate

    def save(self, spike_clusters, cluster_groups, labels=None) -> None:
        """Refuse: a raw recording has no clustering to save into."""
        raise PhyError(
            f"{self.path}: a raw recording carries no clustering, so there is nothing to save "
            "into. Sort it first (spike detection and automatic clustering), then open the "
            "result."
        )

    def describe(self) -> str:
        s = summary(self)
        t = self.prm.traces
        files = ", ".join(f.name for f in t.raw_data_files)
        probe = "none (all channels, linear)" if self.probe is None else \
            (self.probe.name or str(self.prm.prb_file))
        lines = [
            f"Raw recording {self.prm.experiment_name} ({self.path})",
            f"  files             {files}",
            f"  duration          {s.duration_s:.1f} s ({int(self.traces.shape[0]):,} samples)",
            f"  sample rate       {s.sample_rate:g} Hz",
            f"  channels          {s.n_channels} (group {self.channel_group}; "
            f"{int(self.raw_traces.shape[1])} in the file)",
            f"  dtype             {t.dtype}",
            f"  probe             {probe}",
        ]
        if self.ground_truth_path is not None:
            lines += [
                f"  units (true)      {self.n_units}",
                f"  spikes            {s.n_spikes:,}",
            ]
        else:
            lines.append("  spikes            none (not sorted yet)")
        return "\n".join(lines)

    def close(self) -> None:
        """Close the HDF5 files that `read_kwd` opened (memmaps close with the model)."""
        arrays = self.raw_traces.arrays if isinstance(self.raw_traces, ConcatenatedArrays) \
            else [self.raw_traces]
        for array in arrays:
            inner = array.arrays if isinstance(array, ConcatenatedArrays) else [array]
            for a in inner:
                if not isinstance(a, np.ndarray) and callable(getattr(a, "close", None)):
                    a.close()
