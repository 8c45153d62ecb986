"""Quality metrics of every cluster of a sorting (see `phy_autolabel.metrics`).

Per cluster, on its `n_isolation_channels` principal channels (where it is
strongest):

- ``n_spikes``, ``firing_rate_hz``;
- ``n_violations`` and ``contamination`` (refractory period);
- ``isolation_distance`` and ``l_ratio`` against the spikes of other
  clusters whose mask is non-zero on any of those channels (the only spikes
  that can be confused with it), in the sorting's features there, or without
  features in the principal components of band-passed waveforms (one basis
  for the whole sorting, as detection computes features);
  ``nearest_cluster``: the other cluster contributing most to the L-ratio;
- ``amplitude_cutoff`` of the sorter's per-spike amplitudes (template
  directories), else of each spike's largest band-passed |value| on the
  principal channels near the mean waveform's peak time (what a detection
  threshold cuts), else of the projection of each spike's features on the
  cluster's mean features;
- ``split_separation``: how well the cluster's features split in two
  (Ashman's D along their first principal component);
- ``snr`` (peak of the mean band-passed waveform over the noise of its
  channel) and ``peak_channel``, when there are raw traces;
- ``coincidence`` and ``coincident_cluster``: the largest fraction of the
  cluster's spikes that one other cluster near it also has within
  `coincidence_window_ms` (the same spikes seen twice).

Subsamples (taken at regular intervals) bound the cost per cluster; other
spikes left out of a subsample are counted through weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .metrics import (
    amplitude_cutoff,
    coincidence,
    isolation,
    peak_snr,
    refractory_violations,
    split_separation,
)
from .sources import SortingSource

#: Clusters whose features and waveforms are read together (one pass over the ``.kwx`` and
#: one over the raw traces for them all, `_read_together`: each spike read maps 64 KB or
#: more of a file, so that clusters reading their spikes one after the other mapped the
#: 4.4 GB ``.kwx`` of a 200 s, 1024-channel recording about 60 times over). What they read
#: takes up to ~70 MB of features (22,000 spikes x 12 float64 each) and ~55 MB of windows.
GATHER_CLUSTERS = 32

#: Order and format of the metrics in tables.
METRIC_COLUMNS = (
    ("n_spikes", "{:d}"), ("firing_rate_hz", "{:.2f}"), ("n_violations", "{:d}"),
    ("contamination", "{:.3f}"), ("isolation_distance", "{:.1f}"), ("l_ratio", "{:.4f}"),
    ("amplitude_cutoff", "{:.3f}"), ("split_separation", "{:.2f}"), ("snr", "{:.1f}"),
    ("peak_channel", "{:d}"), ("nearest_cluster", "{:d}"), ("coincidence", "{:.3f}"),
)


@dataclass(frozen=True)
class MetricParameters:
    """How the metrics are computed.

    Attributes
    ----------
    refractory_period_ms : float
        Inter-spike intervals shorter than this are violations. 1.5 ms suits
        most real units; the synthetic units have a 2 ms dead time.
    censored_period_ms : float
        Intervals shorter than this cannot be observed (not counted).
    n_isolation_channels : int
        Principal channels of a cluster used for the isolation metrics.
    max_cluster_spikes : int
        Spikes of a cluster used for features and amplitudes (subsample).
    max_other_spikes : int
        Other spikes used for the isolation metrics (subsample, weighted).
    max_waveform_spikes : int
        Spikes of a cluster whose waveforms are read (mean waveform; and
        without features, the isolation metrics).
    max_other_waveform_spikes : int
        Without features: other spikes whose waveforms are read for the
        isolation metrics (subsample, weighted). Their band-passed windows are
        most of the cost of a template directory's metrics; 400 labels the
        benchmark sortings (32, 384 and 1024 channels) as 1000 did.
    n_waveform_pcs : int
        Principal components per channel when features come from waveforms.
    peak_jitter_ms : float
        Per-spike amplitudes (with raw traces) are the largest |value| within
        this much of the mean waveform's peak time, on the principal channels.
    coincidence_window_ms : float
        Two spikes of different clusters this close are the same event seen
        twice (`phy_autolabel.metrics.coincidence`). 1.5 ms: with the local
        reference, a very large spike's after-phase can be detected again 1.2 ms
        later on its own channels; on the 1024-channel benchmark recording such
        echoes of one unit made a masked EM cluster that passed every other test.
    """

    refractory_period_ms: float = 1.5
    censored_period_ms: float = 0.0
    n_isolation_channels: int = 4
    max_cluster_spikes: int = 2000
    max_other_spikes: int = 20000
    max_waveform_spikes: int = 300
    max_other_waveform_spikes: int = 400
    n_waveform_pcs: int = 3
    peak_jitter_ms: float = 0.15
    coincidence_window_ms: float = 1.5


@dataclass(frozen=True)
class ClusterQuality:
    """The metrics of one cluster (NaN / -1 where they cannot be computed)."""

    cluster_id: int
    n_spikes: int
    firing_rate_hz: float
    n_violations: int
    contamination: float
    isolation_distance: float
    l_ratio: float
    amplitude_cutoff: float
    split_separation: float
    snr: float
    peak_channel: int
    nearest_cluster: int
    coincidence: float
    coincident_cluster: int

    def as_dict(self) -> dict:
        return asdict(self)


def _subsample(ids: np.ndarray, n_max: int) -> np.ndarray:
    if len(ids) <= n_max:
        return ids
    return ids[np.linspace(0, len(ids) - 1, n_max).astype(np.int64)]


def _waveform_features(source: SortingSource, ids_in, ids_out, channels,
                       n_pcs: int, windows: tuple | None = None,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Waveforms projected on the sorting's waveform principal components, channel by channel.

    One basis for every channel and cluster (`SortingSource.waveform_basis`), as
    detection computes features: the cost per cluster is a projection. Returns
    ``(f_in, f_out, waveforms_in)``: the cluster's waveforms serve its SNR too.
    `windows`: ``(waveforms_in, waveforms_out)`` when they were read already.
    """
    basis = source.waveform_basis(n_pcs)
    w_in, w_out = windows if windows is not None else \
        (source.waveforms(ids_in, channels), source.waveforms(ids_out, channels))
    n_dims = w_in.shape[2] * basis.shape[1]
    f_in = np.einsum("nsc,sk->nck", w_in, basis).reshape(len(w_in), n_dims)
    f_out = np.einsum("nsc,sk->nck", w_out, basis).reshape(len(w_out), n_dims)
    return f_in, f_out, w_in


@dataclass(frozen=True)
class _Selection:
    """Which spikes and channels a cluster's metrics read."""

    spikes: np.ndarray  # the cluster's
    channels: np.ndarray  # its principal channels
    others: np.ndarray  # the other spikes unmasked there
    ids_in: np.ndarray  # subsamples of `spikes` and `others`
    ids_out: np.ndarray


def _select(source: SortingSource, cluster_id: int, p: MetricParameters) -> _Selection:
    spikes = source.spikes_per_cluster[cluster_id]
    channels = source.principal_channels(cluster_id, p.n_isolation_channels)
    others = np.setdiff1d(source.spikes_near(channels), spikes, assume_unique=True)
    use_waveforms = source.n_features_per_channel == 0
    max_in = p.max_waveform_spikes if use_waveforms else p.max_cluster_spikes
    max_out = p.max_other_waveform_spikes if use_waveforms else p.max_other_spikes
    return _Selection(spikes, channels, others, _subsample(spikes, max_in),
                      _subsample(others, max_out))


def cluster_quality(source: SortingSource, cluster_id: int,
                    parameters: MetricParameters = MetricParameters(),
                    read: dict | None = None) -> ClusterQuality:
    """The metrics of one cluster (see the module docstring).

    `read`: what `compute_quality` read already for several clusters together
    (`_read_together`): the ``selection`` of spikes and channels, ``features``
    (of its spikes and of the others), ``windows`` (their waveforms, without
    features) and ``snr_windows``.
    """
    read = read or {}
    p = parameters
    cluster_id = int(cluster_id)
    selection = read.get("selection") or _select(source, cluster_id, p)
    spikes, channels, others = selection.spikes, selection.channels, selection.others
    n = len(spikes)
    n_violations, contamination = refractory_violations(
        source.spike_samples[spikes], source.sample_rate, source.duration_s,
        p.refractory_period_ms, p.censored_period_ms)
    together, together_with = coincidence(
        source.spike_samples[spikes], source.spike_samples[others],
        source.spike_clusters[others],
        int(round(p.coincidence_window_ms * source.sample_rate / 1000)))

    use_waveforms = source.n_features_per_channel == 0
    ids_in, ids_out = selection.ids_in, selection.ids_out
    weights = np.full(len(ids_out), len(others) / max(len(ids_out), 1))

    f_in = f_out = w_in = None
    if not use_waveforms:
        f_in, f_out = read["features"] if "features" in read else \
            (source.features(ids_in, channels), source.features(ids_out, channels))
    elif source.has_traces:
        f_in, f_out, w_in = _waveform_features(source, ids_in, ids_out, channels,
                                               p.n_waveform_pcs, read.get("windows"))

    distance = l_ratio = separation = math.nan
    nearest = -1
    if f_in is not None:
        separation = split_separation(f_in)
        distance, l_ratio = isolation(f_in, f_out, weights, n_in=n)
        if len(f_out) and np.isfinite(l_ratio):
            nearest = _nearest_cluster(source, f_in, f_out, ids_out)

    snr, peak_channel = math.nan, int(channels[0]) if len(channels) else -1
    amplitudes = source.template_amplitudes(ids_in)
    noise = source.noise_std(channels)
    if noise is not None and n:
        ids_snr = _subsample(spikes, p.max_waveform_spikes)
        if w_in is not None and np.array_equal(ids_snr, ids_in):
            waveforms = w_in.copy()
        else:
            waveforms = read["snr_windows"] if "snr_windows" in read else \
                source.waveforms(ids_snr, channels)
        waveforms /= np.where(noise > 0, noise, 1.0)
        mean = waveforms.mean(axis=0)
        snr, column = peak_snr(mean, np.ones(len(channels)))
        peak_channel = int(channels[column])
        if amplitudes is None:
            amplitudes = _peak_amplitudes(waveforms, mean, column, source.sample_rate,
                                          p.peak_jitter_ms)
    if amplitudes is None and f_in is not None:
        mean = f_in.mean(axis=0)
        amplitudes = f_in @ mean / max(float(mean @ mean), 1e-12)
    cutoff = amplitude_cutoff(amplitudes) if amplitudes is not None else math.nan

    return ClusterQuality(
        cluster_id=cluster_id, n_spikes=int(n),
        firing_rate_hz=n / source.duration_s if source.duration_s > 0 else math.nan,
        n_violations=n_violations, contamination=contamination,
        isolation_distance=distance, l_ratio=l_ratio, amplitude_cutoff=cutoff,
        split_separation=separation, snr=snr,
        peak_channel=peak_channel, nearest_cluster=nearest, coincidence=together,
        coincident_cluster=together_with)


def _peak_amplitudes(waveforms, mean, column, sample_rate: float, jitter_ms: float):
    """Each spike's largest |value| (in noise units) on any channel near the mean's peak time.

    That is the quantity a detection threshold cuts, so a truncated
    distribution shows missed spikes.
    """
    t = int(np.argmax(np.abs(mean[:, column])))
    jitter = max(int(round(jitter_ms * sample_rate / 1000)), 0)
    window = waveforms[:, max(t - jitter, 0):t + jitter + 1, :]
    return np.abs(window).max(axis=(1, 2))


def _nearest_cluster(source: SortingSource, f_in, f_out, ids_out) -> int:
    """The cluster of the other spikes that weighs most in the L-ratio."""
    from .metrics import chi2_sf

    mean = f_in.mean(axis=0)
    cov = np.cov(f_in, rowvar=False) + 1e-6 * np.eye(f_in.shape[1])
    d = f_out - mean
    d2 = np.einsum("ij,ij->i", d @ np.linalg.pinv(cov), d)
    score = chi2_sf(d2, f_in.shape[1])
    clusters = source.spike_clusters[ids_out]
    unique, inverse = np.unique(clusters, return_inverse=True)
    return int(unique[np.argmax(np.bincount(inverse, weights=score))])


def compute_quality(source: SortingSource, cluster_ids=None,
                    parameters: MetricParameters = MetricParameters(),
                    reporter=None) -> dict[int, ClusterQuality]:
    """The metrics of every cluster (or of `cluster_ids`), ``{cluster_id: ClusterQuality}``.

    `reporter` (a `ProgressReporter`), if given, advances once per cluster.
    """
    cluster_ids = source.cluster_ids if cluster_ids is None else np.asarray(cluster_ids)
    if reporter is not None:
        reporter.value_max = len(cluster_ids)
    # The noise of every channel some cluster needs, in one pass over the excerpts.
    channels = [source.principal_channels(int(c), parameters.n_isolation_channels)
                for c in cluster_ids]
    if channels:
        source.noise_std(np.unique(np.concatenate(channels)))
    out = {}
    for start in range(0, len(cluster_ids), GATHER_CLUSTERS):
        batch = [int(c) for c in cluster_ids[start:start + GATHER_CLUSTERS]]
        read = _read_together(source, batch, parameters)
        for cluster_id in batch:
            out[cluster_id] = cluster_quality(source, cluster_id, parameters,
                                              read=read.pop(cluster_id))
            if reporter is not None:
                reporter.increment()
    return out


def _read_together(source: SortingSource, cluster_ids: list[int],
                   parameters: MetricParameters) -> dict[int, dict]:
    """What `cluster_quality` reads for each of `cluster_ids` (its `read` argument), read
    for all of them in one pass over the ``.kwx`` (`SortingSource.gather_features`) and
    one over the raw traces (`SortingSource.gather_waveforms`): the same numbers."""
    p = parameters
    selections = {c: _select(source, c, p) for c in cluster_ids}
    read: dict[int, dict] = {c: {"selection": selections[c]} for c in cluster_ids}
    if source.n_features_per_channel and source.gathers_in_one_pass:
        requests = [(ids, selections[c].channels) for c in cluster_ids
                    for ids in (selections[c].ids_in, selections[c].ids_out)]
        gathered = iter(source.gather_features(requests))
        for c in cluster_ids:
            read[c]["features"] = (next(gathered), next(gathered))
    if not source.has_traces:
        return read
    requests, where = [], []
    for c in cluster_ids:
        s = selections[c]
        if not len(s.spikes):
            continue
        if source.n_features_per_channel == 0:
            requests += [(s.ids_in, s.channels), (s.ids_out, s.channels)]
            where.append((c, "windows", 2))
        ids_snr = _subsample(s.spikes, p.max_waveform_spikes)
        if source.n_features_per_channel or not np.array_equal(ids_snr, s.ids_in):
            requests.append((ids_snr, s.channels))
            where.append((c, "snr_windows", 1))
    gathered = iter(source.gather_waveforms(requests))
    for c, key, n in where:
        read[c][key] = (next(gathered), next(gathered)) if n == 2 else next(gathered)
    return read
