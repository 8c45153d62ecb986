"""What a sorting provides to the quality metrics, read out of core from any phy model.

`SortingSource` wraps a model that fulfils the `DataModel` protocol (a
`KwikModel`, a `TemplateModel`, ...) and gives the metrics what they need,
reading only the rows and columns asked:

- spike times and clusters, the spikes of each cluster;
- one pass over the masks (numba kernels on the ``.kwx`` memory map, else
  blocks of spikes) gives each cluster's mean masks and mean features, and
  for each channel the spikes whose mask is non-zero there (to find the
  spikes near a cluster);
- features of chosen spikes on chosen channels (from the ``.kwx`` memory map
  directly when there is one, touching only those columns; for several
  clusters at once in one pass over it, `gather_features`), the pages it maps
  kept within `KWX_RESIDENT_BYTES` (`phy_autolabel.pages`);
- per-spike template amplitudes when the sorting has them (template
  directories), band-passed waveforms of chosen spikes on chosen channels,
  and the noise of chosen channels, from the raw traces when there are any
  (a `NoiseCache` shares the noise between sortings of one recording).
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from phy_core.arrays import ChannelSubset, SpikeWindows, flat_binary_source, release_pages

logger = logging.getLogger("phy")

#: Spikes read at once in the pass over the masks and features.
BLOCK_SPIKES = 4096
#: Spikes per block of the `.kwx` passes (`_scan_kwx`): 100 MB at 1024 channels, 3 features.
KWX_BLOCK_SPIKES = 4096
#: Spikes per block of the `.kwx` feature gathers (`SortingSource.features`): each spike read
#: maps up to ~64-128 KB of the file (fault-around), so a block maps at most ~130 MB.
KWX_GATHER_SPIKES = 1024
#: The `.kwx` pages a source keeps mapped before it releases them (`pages.PageBudget`,
#: measured): a small file stays mapped whole, a large one costs at most this much.
KWX_RESIDENT_BYTES = 512 * 2 ** 20
#: Samples of the recording per block of `SortingSource.gather_waveforms` (64 MB of
#: int16 rows at 1024 channels: the pages it keeps mapped).
WAVEFORM_BLOCK_SAMPLES = 32768
#: Band-pass of waveforms and noise: the detection band.
FILTER_LOW_HZ = 500.0
FILTER_HIGH_FACTOR = 0.475
FILTER_ORDER = 3
#: Noise estimate: this many excerpts of this length spread over the recording.
NOISE_EXCERPTS = 10
NOISE_EXCERPT_S = 0.2


@functools.lru_cache(maxsize=8)
def _bandpass(sample_rate: float):
    """``(sos, margin)`` of the band-pass (designed once per sample rate: the design costs
    more than filtering a cluster's windows).

    Designed by `phy_detect.butterworth` (scipy's ``butter``, the same sections to the
    last bit at the usual sample rates, tested), which spares the sort's process the
    import of ``scipy.signal``.
    """
    from phy_detect.butterworth import butter

    high = min(FILTER_HIGH_FACTOR * sample_rate, 0.49 * sample_rate)
    sos = butter(FILTER_ORDER, [FILTER_LOW_HZ, high], btype="bandpass", fs=sample_rate,
                 output="sos")
    margin = int(np.ceil(2 * sample_rate / FILTER_LOW_HZ))
    return sos, margin


def _columns(traces, channels: np.ndarray):
    """``(array, columns)`` to read `channels` of `traces` from, copying only those columns.

    A `ChannelSubset` of an in-memory or memory-mapped array copies whole rows
    before keeping its channels (1024 of them for the 4 we need): read the
    array beneath it directly instead.
    """
    if isinstance(traces, ChannelSubset) and isinstance(traces.array, np.ndarray):
        return traces.array, traces.channels[channels]
    return traces, channels


@functools.lru_cache(maxsize=8)
def _filtfilt_constants(sample_rate: float) -> tuple[np.ndarray, int]:
    """``(zi, padding)`` of scipy's ``sosfiltfilt`` with the band-pass: the sections'
    steady states (``sosfilt_zi``) and the odd padding at each end."""
    from phy_detect.butterworth import sosfilt_zi

    sos, _ = _bandpass(sample_rate)
    n_taps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return sosfilt_zi(sos), 3 * n_taps


#: Trace types the window kernel reads (numba has no float16; native byte order only).
_NUMBA_DTYPES = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8,
                                            np.uint16, np.uint32, np.uint64, np.float32,
                                            np.float64))


def _numba_windows(traces, n_before: int, n_after: int, sample_rate: float) -> bool:
    """Whether `_filtered_windows` reads windows of `traces` (else it returns None)."""
    if not isinstance(traces, np.ndarray) or traces.ndim != 2 \
            or traces.dtype.newbyteorder("=") != traces.dtype or traces.dtype not in _NUMBA_DTYPES:
        return False
    _, margin = _bandpass(sample_rate)
    _, padding = _filtfilt_constants(sample_rate)
    return n_before + n_after + 2 * margin > padding  # else too short to pad: scipy says why


def _filtered_windows(traces, columns: np.ndarray, samples: np.ndarray, n_before: int,
                      n_after: int, sample_rate: float) -> np.ndarray | None:
    """Band-passed windows ``(n, n_before + n_after, len(columns))`` of an in-memory or
    memory-mapped array (None for other arrays), as `SpikeWindows` with the
    ``sosfiltfilt`` band-pass gives them (the same numbers, float32).

    Only these rows and columns are read (`SpikeWindows` reads whole rows, spike by
    spike), and numba filters all the windows' columns together.
    """
    if not _numba_windows(traces, n_before, n_after, sample_rate):
        return None
    from .kernels import filtered_windows

    sos, margin = _bandpass(sample_rate)
    zi, padding = _filtfilt_constants(sample_rate)
    starts = np.asarray(samples, dtype=np.int64) - n_before
    return filtered_windows(traces, starts, np.asarray(columns, dtype=np.int64),
                            n_before + n_after, margin, sos, zi, padding)


def _add_by_row(sums: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``sums[rows[i]] += values[i]`` for every i (a sort and a segmented sum)."""
    order = np.argsort(rows, kind="stable")
    unique, starts = np.unique(rows[order], return_index=True)
    if len(unique):
        sums[unique] += np.add.reduceat(values[order], starts, axis=0)


class NoiseCache:
    """Noise estimates of the columns of raw data files, shared by several sortings.

    A Kwik file and the template directory made from it read the same
    recording: with one `NoiseCache` given to both `SortingSource` objects, each
    channel's noise is estimated once. Keyed by the files, their layout and the
    column, so sortings of other recordings (or channel maps) never mix.
    """

    def __init__(self) -> None:
        self._values: dict[tuple, float] = {}

    @staticmethod
    def recording_key(traces, sample_rate: float) -> tuple | None:
        """What identifies the raw data of `traces`, with its file columns; None if the
        traces are not flat binary files."""
        source = flat_binary_source(traces)
        if source is None:
            return None
        return (tuple(source["files"]), source["dtype"], source["offset"],
                source["n_channels"], int(traces.shape[0]), float(sample_rate)), \
            np.asarray(source["channels"], dtype=np.int64)

    def get(self, recording: tuple, columns: np.ndarray) -> np.ndarray:
        """The cached noise of `columns` (NaN where unknown)."""
        return np.array([self._values.get((recording, int(c)), np.nan) for c in columns])

    def put(self, recording: tuple, columns: np.ndarray, values: np.ndarray) -> None:
        for c, v in zip(columns, values):
            self._values[(recording, int(c))] = float(v)

    def copy(self) -> NoiseCache:
        """A cache with the same estimates (e.g. to send to worker processes)."""
        out = NoiseCache()
        out._values = dict(self._values)
        return out

    def update(self, other: NoiseCache) -> None:
        """Add the estimates of `other` (e.g. a copy filled by a worker process)."""
        self._values.update(other._values)


class SortingSource:
    """Read what the quality metrics need from a phy model.

    Parameters
    ----------
    model : DataModel
        Needs ``spike_samples``, ``spike_clusters``, ``sample_rate``,
        ``n_channels``, ``masks``; uses ``features`` /
        ``n_features_per_channel``, ``features_masks`` (a Kwik memory map),
        ``amplitudes`` and ``templates``, ``traces`` and ``duration`` when
        present.
    waveform_ms : (float, float)
        Milliseconds before and after the spike time in waveform windows.
    noise_cache : NoiseCache or None
        Noise estimates shared with other sortings of the same recording.
    """

    def __init__(self, model, waveform_ms: tuple[float, float] = (1.0, 1.5),
                 noise_cache: NoiseCache | None = None) -> None:
        self.model = model
        self.noise_cache = noise_cache
        self.sample_rate = float(model.sample_rate)
        self.spike_samples = np.asarray(model.spike_samples, dtype=np.int64)
        self.spike_clusters = np.asarray(model.spike_clusters, dtype=np.int64)
        self.n_spikes = len(self.spike_samples)
        self.n_channels = int(model.n_channels)
        self.n_features_per_channel = int(getattr(model, "n_features_per_channel", 0) or 0)
        duration = getattr(model, "duration", None)
        if not duration:
            duration = (self.spike_samples[-1] + 1) / self.sample_rate if self.n_spikes else 0.0
        self.duration_s = float(duration)
        order = np.argsort(self.spike_clusters, kind="stable")
        ids, starts = np.unique(self.spike_clusters[order], return_index=True)
        self.cluster_ids = ids
        self.spikes_per_cluster = dict(zip(ids.tolist(), np.split(order, starts[1:])))
        self._index = {int(c): i for i, c in enumerate(ids)}
        self.n_before = int(round(waveform_ms[0] * self.sample_rate / 1000))
        self.n_after = int(round(waveform_ms[1] * self.sample_rate / 1000))
        self.traces = getattr(model, "traces", None)
        self._kwx_pages = None  # the `.kwx` pages' budget (`_kwx_budget`)
        self._scan_masks()
        self._noise = None
        self._basis = None

    # -- the pass over masks and features ---------------------------------------------

    def _scan_masks(self) -> None:
        """Mean masks and features per cluster; the spikes unmasked on each channel."""
        fm = getattr(self.model, "features_masks", None)
        if (isinstance(fm, np.ndarray) and fm.ndim == 3 and fm.dtype == np.float32
                and self.n_features_per_channel
                and fm.shape[1] == self.n_channels * self.n_features_per_channel):
            self._scan_kwx(fm)
            return
        n_clusters, nc, nfpc = len(self.cluster_ids), self.n_channels, self.n_features_per_channel
        mask_sums = np.zeros((n_clusters, nc))
        feature_sums = np.zeros((n_clusters, nc * nfpc))
        rows, cols = [], []
        cluster_rows = np.searchsorted(self.cluster_ids, self.spike_clusters)
        for start in range(0, self.n_spikes, BLOCK_SPIKES):
            stop = min(start + BLOCK_SPIKES, self.n_spikes)
            masks = np.asarray(self.model.masks[start:stop], dtype=np.float64)
            k = cluster_rows[start:stop]
            _add_by_row(mask_sums, k, masks)
            if nfpc:
                features = np.asarray(self.model.features[start:stop], dtype=np.float64)
                _add_by_row(feature_sums, k, features)
            spike, channel = np.nonzero(masks > 0)
            rows.append(spike + start)
            cols.append(channel)
        counts = np.bincount(cluster_rows, minlength=n_clusters).astype(np.float64)
        counts = np.maximum(counts, 1.0)[:, None]
        self.mean_masks = mask_sums / counts
        self.mean_features = feature_sums / counts
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        order = np.argsort(cols, kind="stable")
        self._channel_spikes = np.split(rows[order], np.searchsorted(cols[order],
                                                                     np.arange(1, nc)))

    def _scan_kwx(self, fm: np.ndarray) -> None:
        """`_scan_masks` on the ``.kwx`` memory map: read in place by numba kernels.

        Two passes of `KWX_BLOCK_SPIKES` spikes at a time, the file's pages released
        whenever they add up to `KWX_RESIDENT_BYTES` (`pages.PageBudget`): a 200 s,
        1024-channel ``.kwx`` (4.4 GB) stayed resident whole otherwise; a small one
        stays mapped for the feature gathers that follow.
        """
        from .kernels import add_cluster_sums, fill_channel_spikes

        pages = self._kwx_budget(fm)

        cluster_rows = np.searchsorted(self.cluster_ids, self.spike_clusters)
        nfpc, n_clusters = self.n_features_per_channel, len(self.cluster_ids)
        mask_sums = np.zeros((n_clusters, self.n_channels))
        feature_sums = np.zeros((n_clusters, self.n_channels * nfpc))
        counts = np.zeros(self.n_channels, np.int64)
        blocks = [(start, min(start + KWX_BLOCK_SPIKES, self.n_spikes))
                  for start in range(0, self.n_spikes, KWX_BLOCK_SPIKES)]
        for start, stop in blocks:
            add_cluster_sums(fm[start:stop], cluster_rows[start:stop], mask_sums,
                             feature_sums, counts)
            pages.read((stop - start) * fm.strides[0])
        n = np.bincount(cluster_rows, minlength=n_clusters).astype(np.float64)
        n = np.maximum(n, 1.0)[:, None]
        self.mean_masks = mask_sums / n
        self.mean_features = feature_sums / n
        offsets = np.concatenate([[0], np.cumsum(counts)])
        fill, spikes = offsets[:-1].copy(), np.empty(offsets[-1], np.int64)
        for start, stop in blocks:
            fill_channel_spikes(fm[start:stop], nfpc, start, fill, spikes)
            pages.read((stop - start) * fm.strides[0])
        self._channel_spikes = [spikes[offsets[c]:offsets[c + 1]]
                                for c in range(self.n_channels)]

    def channel_strength(self, cluster_id: int) -> np.ndarray:
        """How strongly a cluster is seen on each channel, ``(n_channels,)``.

        The norm of its mean features on the channel times its mean mask there
        (phy's masked amplitude); without features, its templates' peak on the
        channel (weighted by the spikes' template use) times the mean mask;
        else the mean mask.
        """
        i = self._index[int(cluster_id)]
        masks = self.mean_masks[i]
        nfpc = self.n_features_per_channel
        if nfpc:
            norm = np.linalg.norm(self.mean_features[i].reshape(-1, nfpc), axis=1)
            return norm * masks
        templates = getattr(self.model, "templates", None)
        spike_templates = getattr(self.model, "spike_templates", None)
        if templates is not None and spike_templates is not None:
            used = np.bincount(np.asarray(spike_templates)[self.spikes_per_cluster[cluster_id]],
                               minlength=len(templates))
            peaks = np.zeros(self.n_channels)
            for t in np.nonzero(used)[0]:
                peaks += used[t] * np.abs(np.asarray(templates[t], dtype=np.float64)).max(axis=0)
            return peaks / used.sum() * np.maximum(masks, 1e-3)
        return masks

    def principal_channels(self, cluster_id: int, n: int) -> np.ndarray:
        """The `n` channels where a cluster is strongest, strongest first."""
        strength = self.channel_strength(cluster_id)
        return np.argsort(-strength, kind="stable")[:n]

    def spikes_near(self, channels) -> np.ndarray:
        """Sorted ids of the spikes whose mask is non-zero on any of `channels`."""
        parts = [self._channel_spikes[int(c)] for c in channels]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    # -- per-spike data -----------------------------------------------------------------

    def features(self, spike_ids, channels) -> np.ndarray:
        """Features of `spike_ids` on `channels`, channel-major.

        Shape ``(n, len(channels) * n_features_per_channel)``.
        """
        nfpc = self.n_features_per_channel
        spike_ids = np.asarray(spike_ids, dtype=np.int64)
        columns = (np.asarray(channels)[:, None] * nfpc + np.arange(nfpc)).ravel()
        fm = self._kwx_map()
        if fm is not None:
            # A memory map of the .kwx: gather only these columns, block by block, the
            # pages unmapped once they add up to `KWX_RESIDENT_BYTES` (a cluster's
            # neighbourhood may span most of the file: 2.7 GB at once at 200 s, 1024
            # channels; each spike maps 64 KB or more of it: `pages`).
            pages = self._kwx_budget(fm)
            out = np.empty((len(spike_ids), len(columns)))
            for start in range(0, len(spike_ids), KWX_GATHER_SPIKES):
                ids = spike_ids[start:start + KWX_GATHER_SPIKES]
                out[start:start + len(ids)] = fm[ids[:, None], columns[None, :], 0]
                pages.read(len(ids) * max(fm.strides[0], 64 * 1024))
            return out
        out = np.empty((len(spike_ids), len(columns)))
        for start in range(0, len(spike_ids), BLOCK_SPIKES):
            block = np.asarray(self.model.features[spike_ids[start:start + BLOCK_SPIKES]])
            out[start:start + len(block)] = block[:, columns]
        return out

    @property
    def gathers_in_one_pass(self) -> bool:
        """Whether `gather_features` reads a ``.kwx`` memory map in one pass."""
        return self._kwx_map() is not None

    def _kwx_map(self) -> np.ndarray | None:
        """The model's ``.kwx`` array when it is in memory or memory-mapped, else None."""
        fm = getattr(self.model, "features_masks", None)
        return fm if isinstance(fm, np.ndarray) and fm.ndim == 3 else None

    def _kwx_budget(self, fm: np.ndarray):
        """The `pages.PageBudget` of the ``.kwx`` pages, one for all the reads of `fm`."""
        from .pages import PageBudget

        if self._kwx_pages is None or self._kwx_pages.array is not fm:
            self._kwx_pages = PageBudget(fm, KWX_RESIDENT_BYTES)
        return self._kwx_pages

    def gather_features(self, requests) -> list[np.ndarray]:
        """`features` of several ``(spike_ids, channels)`` requests, the same numbers.

        From a ``.kwx`` memory map, in one pass over the file, block by block: every
        page is mapped once (read one request after the other, each spike maps 64 KB
        or more around it, again for each request that reads it once the pages were
        released), and released as `features` releases them.
        """
        fm = self._kwx_map()
        if fm is None:
            return [self.features(ids, channels) for ids, channels in requests]
        pages = self._kwx_budget(fm)
        nfpc = self.n_features_per_channel
        plans = []
        for ids, channels in requests:
            ids = np.asarray(ids, dtype=np.int64)
            order = np.argsort(ids, kind="stable")
            columns = (np.asarray(channels)[:, None] * nfpc + np.arange(nfpc)).ravel()
            plans.append((ids[order], order, columns,
                          np.empty((len(ids), len(columns)))))
        stops = [int(ids[-1]) + 1 for ids, _, _, _ in plans if len(ids)]
        end = max(stops, default=0)
        for start in range(0, end, KWX_BLOCK_SPIKES):
            stop = start + KWX_BLOCK_SPIKES
            n_read = 0
            for ids, order, columns, out in plans:
                a, b = np.searchsorted(ids, [start, stop])
                if b > a:
                    out[order[a:b]] = fm[ids[a:b, None], columns[None, :], 0]
                    n_read += b - a
            if n_read:
                pages.read(min(n_read, stop - start) * max(fm.strides[0], 64 * 1024))
        return [out for _, _, _, out in plans]

    def template_amplitudes(self, spike_ids) -> np.ndarray | None:
        """The sorter's per-spike amplitudes (template scaling), or None if it has none."""
        amplitudes = getattr(self.model, "amplitudes", None)
        if amplitudes is None:
            return None
        values = np.asarray(amplitudes[np.asarray(spike_ids, dtype=np.int64)], dtype=np.float64)
        # A template directory without amplitudes.npy reads as ones: no information.
        return None if np.all(values == 1.0) else values

    @property
    def has_traces(self) -> bool:
        return self.traces is not None

    def waveforms(self, spike_ids, channels) -> np.ndarray:
        """Band-passed windows ``(n, n_before + n_after, len(channels))`` (float64).

        The memory-mapped pages read are released after (`release_pages`): the spikes of
        all clusters span the whole recording, whose every page would otherwise stay in
        this process's resident memory (12 GB for a 200 s, 1024-channel recording).
        """
        traces, columns = _columns(self.traces, np.asarray(channels, dtype=np.int64))
        spike_ids = np.asarray(spike_ids, dtype=np.int64)
        try:
            block = _filtered_windows(traces, columns, self.spike_samples[spike_ids],
                                      self.n_before, self.n_after, self.sample_rate)
            if block is not None:
                return block.astype(np.float64)
            from scipy.signal import sosfiltfilt

            sos, margin = _bandpass(self.sample_rate)
            windows = SpikeWindows(traces, self.spike_samples, self.n_before, self.n_after,
                                   channels=columns,
                                   filter=lambda x: sosfiltfilt(sos, x, axis=-2),
                                   margin=margin)
            return np.asarray(windows[spike_ids], dtype=np.float64)
        finally:
            release_pages(self.traces)

    def gather_waveforms(self, requests) -> list[np.ndarray]:
        """`waveforms` of several ``(spike_ids, channels)`` requests, the same numbers.

        In one pass over the recording, `WAVEFORM_BLOCK_SAMPLES` at a time: at 1024
        channels a window's rows span ~160 pages (all its channels), which each request
        mapped anew once `waveforms` had released them (14 M pages mapped for the
        ~110 k windows of a 20 s template directory's metrics, most of their CPU time,
        in the kernel); here each page is mapped once for all the requests, and
        released after its block.
        """
        if not requests:
            return []
        traces, _ = _columns(self.traces, np.zeros(0, np.int64))
        if not _numba_windows(traces, self.n_before, self.n_after, self.sample_rate):
            return [self.waveforms(ids, channels) for ids, channels in requests]
        plans = []
        for ids, channels in requests:
            ids = np.asarray(ids, dtype=np.int64)
            _, columns = _columns(self.traces, np.asarray(channels, dtype=np.int64))
            samples = self.spike_samples[ids]
            order = np.argsort(samples, kind="stable")
            plans.append((samples[order], order, columns,
                          np.empty((len(ids), self.n_before + self.n_after, len(columns)))))
        try:
            end = max((int(s[-1]) + 1 for s, _, _, _ in plans if len(s)), default=0)
            for start in range(0, end, WAVEFORM_BLOCK_SAMPLES):
                stop = start + WAVEFORM_BLOCK_SAMPLES
                for samples, order, columns, out in plans:
                    a, b = np.searchsorted(samples, [start, stop])
                    if b > a:
                        out[order[a:b]] = _filtered_windows(
                            traces, columns, samples[a:b], self.n_before, self.n_after,
                            self.sample_rate)
                release_pages(self.traces)
        finally:
            release_pages(self.traces)
        return [out for _, _, _, out in plans]

    def waveform_basis(self, n_pcs: int, n_spikes: int = 2000) -> np.ndarray:
        """Principal components of the band-passed waveforms, ``(n_samples, n_pcs)``.

        Computed once, on up to `n_spikes` spikes taken at regular intervals,
        each on the principal channel of its cluster.
        """
        if self._basis is None or self._basis.shape[1] < n_pcs:
            ids = np.unique(np.linspace(0, self.n_spikes - 1, min(n_spikes, self.n_spikes))
                            .astype(np.int64))
            peak = {int(c): int(self.principal_channels(c, 1)[0]) for c in self.cluster_ids}
            channels = np.array([peak[int(c)] for c in self.spike_clusters[ids]])
            rows = []
            for channel in np.unique(channels):
                rows.append(self.waveforms(ids[channels == channel], [channel])[:, :, 0])
            x = np.concatenate(rows)
            # Eigenvectors of the small (n_samples, n_samples) covariance, largest first.
            _, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
            self._basis = vectors[:, ::-1][:, :n_pcs].copy()
        return self._basis[:, :n_pcs]

    def noise_std(self, channels=None) -> np.ndarray | None:
        """Noise std of channels of the band-passed traces (None without traces).

        Of every channel by default, else of `channels` only: each channel's
        estimate is its own (the same number whichever others are asked with),
        so only the channels not estimated yet are read and filtered.
        """
        if self.traces is None:
            return None
        all_channels = channels is None
        channels = np.arange(self.n_channels) if all_channels else \
            np.asarray(channels, dtype=np.int64).ravel()
        if self._noise is None:
            self._noise = np.full(self.n_channels, np.nan)
        missing = np.unique(channels[np.isnan(self._noise[channels])])
        shared = NoiseCache.recording_key(self.traces, self.sample_rate) \
            if self.noise_cache is not None and len(missing) else None
        if shared is not None:
            recording, file_columns = shared
            self._noise[missing] = self.noise_cache.get(recording, file_columns[missing])
            missing = missing[np.isnan(self._noise[missing])]
        if len(missing):
            self._noise[missing] = self._estimate_noise(missing)
            if shared is not None:
                self.noise_cache.put(recording, file_columns[missing], self._noise[missing])
        return self._noise.copy() if all_channels else self._noise[channels]

    def _estimate_noise(self, channels: np.ndarray) -> np.ndarray:
        """The median over excerpts of each channel's median-based noise std."""
        traces, columns = _columns(self.traces, channels)
        return estimate_noise(traces, columns, self.sample_rate)


def estimate_noise(traces, columns: np.ndarray, sample_rate: float) -> np.ndarray:
    """The median over `NOISE_EXCERPTS` excerpts of the median-based noise std of each
    column of the band-passed `traces` ``(n_samples, n_columns)``.

    Each column's estimate is its own: the same number whichever columns are asked
    with it (what lets `NoiseCache` share them).
    """
    from .kernels import sosfiltfilt_columns
    from .metrics import noise_std

    sos, margin = _bandpass(sample_rate)
    zi, padding = _filtfilt_constants(sample_rate)
    n_samples = int(traces.shape[0])
    length = min(int(NOISE_EXCERPT_S * sample_rate), n_samples)
    starts = np.unique(np.linspace(0, max(n_samples - length, 0), NOISE_EXCERPTS)
                       .astype(np.int64))
    estimates = []
    for start in starts:
        lo, hi = max(int(start) - margin, 0), min(int(start) + length + margin, n_samples)
        chunk = np.asarray(np.asarray(traces[lo:hi])[:, columns], dtype=np.float64)
        if chunk.shape[0] > padding:  # else scipy explains why it cannot filter
            chunk = sosfiltfilt_columns(sos, zi, np.ascontiguousarray(chunk), padding)
        else:
            from scipy.signal import sosfiltfilt

            chunk = sosfiltfilt(sos, chunk, axis=0)
        estimates.append(noise_std(chunk[start - lo:start - lo + length]))
    release_pages(traces)
    return np.median(estimates, axis=0)


def recording_noise(prm_path) -> tuple | None:
    """The noise (`estimate_noise`) of every channel of a PRM file's recording, as
    ``(recording, file_columns, values)`` for `NoiseCache.put`; None when the traces are
    not flat binary files.

    `phy spikesort` runs it in a worker process while the masked EM runs, so that the
    labels find the noise estimated.
    """
    from phy_rawdata.model import open_traces
    from phy_rawdata.prm import read_prm

    prm = read_prm(prm_path)
    traces = open_traces(prm)
    sample_rate = float(prm.traces.sample_rate)
    shared = NoiseCache.recording_key(traces, sample_rate)
    if shared is None:
        return None
    recording, file_columns = shared
    array, columns = _columns(traces, np.arange(traces.shape[1]))
    return recording, file_columns, estimate_noise(array, columns, sample_rate)
