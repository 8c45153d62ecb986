"""Templates of the units: mean filtered waveforms, made sparse and low rank.

For each cluster (its spikes given by sample and cluster id), the template is
the mean of the band-passed traces around at most `max_spikes` of its spikes
(evenly spread over its spikes, so the choice is deterministic and covers the
whole recording), on every channel of the group. It is computed out of core:
the chunks of the recording that hold chosen spikes are read and filtered in
the workers (`template_sums`), each returning the sums of its spikes' windows;
the parent adds them up. Memory does not grow with the recording.

Then each template keeps only its *significant* channels: those whose peak
``|mean|`` reaches `channel_fraction` of the template's peak and stands out of
the noise of a mean (``significance * sigma_c / sqrt(n_spikes)``, ``sigma_c``
the channel's noise), at most `max_channels` of them (the strongest); and it is
replaced by its best rank-`rank` approximation on those channels (SVD: a few
temporal components, each with a spatial profile). The matching computes its
projections from that form, at ``rank * (n_channels_k + n_t)`` operations per
sample and template instead of ``n_channels_k * n_t``; the approximation is
the template, everywhere (written to the output, subtracted from the traces),
so the model is consistent.

A template's *trough* is the sample of its largest ``|value|`` on its peak
channel: a matched spike's time is its start plus the trough, the convention
of the ground truth (the trough on the peak channel) and close to detection's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from phy_core.bunch import Bunch
from phy_core.errors import PhyError

logger = logging.getLogger("phy")

_MAD_TO_STD = 0.6744897501960817


class TemplateMatchingError(PhyError, ValueError):
    """The template matching cannot run with these inputs or parameters."""


@dataclass
class TemplateSet:
    """Sparse, low-rank templates (see `phy_tmatch.kernels` for the layout).

    Attributes
    ----------
    cluster_ids : (K,) int64
        The cluster each template was made from.
    ptr, idx : int64 arrays
        Template ``k``'s channels (columns of the group) are ``idx[ptr[k]:ptr[k+1]]``.
    spatial : (ptr[-1], R) float32
        The spatial profile of each temporal component, per channel.
    temporal : (K, R, n_t) float32
        The temporal components.
    trough : (K,) int64
        Sample of the spike time within the template window.
    n_spikes : (K,) int64
        Spikes averaged.
    n_channels : int
        Channels of the group.
    explained : (K,) float64
        Fraction of the mean waveform's energy (on the kept channels) that the
        low-rank template keeps.
    pptr, pidx, pspatial : arrays or None
        The *projection* templates, same layout and temporal components: what
        the traces are projected on (`phy_tmatch.whitening`: the templates
        times the inverse noise covariance, on a neighbourhood). None: the
        templates themselves.

    Derived: ``norm2[k] = <P_k, T_k>`` (the energy of a unit spike in the
    metric of the projections), ``nbr_ptr``/``nbr_idx`` the templates that
    interact with each (a channel of one's template is a channel of the
    other's projection, either way; itself included).
    """

    cluster_ids: np.ndarray
    ptr: np.ndarray
    idx: np.ndarray
    spatial: np.ndarray
    temporal: np.ndarray
    trough: np.ndarray
    n_spikes: np.ndarray
    n_channels: int
    explained: np.ndarray
    pptr: np.ndarray | None = None
    pidx: np.ndarray | None = None
    pspatial: np.ndarray | None = None
    norm2: np.ndarray = field(init=False)
    nbr_ptr: np.ndarray = field(init=False)
    nbr_idx: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.pptr is None:
            self.pptr, self.pidx, self.pspatial = self.ptr, self.idx, self.spatial
        t = self.spatial_dense()
        p = self.spatial_dense(projection=True)
        # <P_k, T_k> = sum_{r, r'} <p_r, t_r'> <u_r, u_r'>.
        gram = np.einsum("krt,kst->krs", self.temporal.astype(np.float64),
                         self.temporal.astype(np.float64))
        cross = np.einsum("kcr,kcs->krs", p.astype(np.float64), t.astype(np.float64))
        self.norm2 = (gram * cross).sum(axis=(1, 2)).astype(np.float32)
        if np.any(self.norm2 <= 0):
            raise TemplateMatchingError("A projection template has a non-positive energy "
                                        "(degenerate noise covariance?).")
        incidence_t = (np.abs(t).sum(axis=2) > 0).astype(np.float32)
        incidence_p = (np.abs(p).sum(axis=2) > 0).astype(np.float32)
        a = incidence_t @ incidence_p.T
        self.nbr_ptr, self.nbr_idx = _csr((a + a.T) > 0)

    @property
    def n_templates(self) -> int:
        return len(self.cluster_ids)

    @property
    def n_samples(self) -> int:
        return int(self.temporal.shape[2])

    @property
    def rank(self) -> int:
        return int(self.temporal.shape[1])

    def channels(self, k: int) -> np.ndarray:
        return self.idx[self.ptr[k]:self.ptr[k + 1]]

    def spatial_dense(self, projection: bool = False) -> np.ndarray:
        """``(K, n_channels, R)`` float32: the spatial components on every channel."""
        ptr, idx, spatial = (self.pptr, self.pidx, self.pspatial) if projection else \
            (self.ptr, self.idx, self.spatial)
        out = np.zeros((self.n_templates, self.n_channels, self.rank), dtype=np.float32)
        for k in range(self.n_templates):
            out[k, idx[ptr[k]:ptr[k + 1]]] = spatial[ptr[k]:ptr[k + 1]]
        return out

    def subset(self, keep) -> TemplateSet:
        """The templates `keep` (indices, in that order), with their projection templates."""
        return gather_templates([(self, int(k)) for k in keep], n_channels=self.n_channels,
                                rank=self.rank, n_t=self.n_samples)

    def digests(self) -> list[bytes]:
        """A digest of each template's arrays (template and projection template).

        Equal digests: the same template, whose measured noise (the spread of its
        projection, `phy_tmatch.runner`) need not be measured again.
        """
        import hashlib

        out = []
        for k in range(self.n_templates):
            h = hashlib.blake2b(digest_size=16)
            for array in (self.temporal[k], self.trough[k:k + 1],
                          self.idx[self.ptr[k]:self.ptr[k + 1]],
                          self.spatial[self.ptr[k]:self.ptr[k + 1]],
                          self.pidx[self.pptr[k]:self.pptr[k + 1]],
                          self.pspatial[self.pptr[k]:self.pptr[k + 1]]):
                h.update(np.ascontiguousarray(array).tobytes())
            out.append(h.digest())
        return out

    def dense(self) -> np.ndarray:
        """``(K, n_t, n_channels)`` float32: the templates on every channel (zeros elsewhere)."""
        return np.einsum("krt,kcr->ktc", self.temporal, self.spatial_dense()).astype(
            np.float32)


def gather_templates(sources: list, n_channels: int, rank: int, n_t: int) -> TemplateSet:
    """A template set made of ``(template_set, k)`` pairs: template ``k`` of each set, in order.

    The arrays are copied as they are (templates and projection templates).
    """
    def rows(which: str):
        ptr_name, idx_name, spatial_name = (("pptr", "pidx", "pspatial") if which == "p"
                                            else ("ptr", "idx", "spatial"))
        idx, spatial, ptr = [], [], [0]
        for t, k in sources:
            a, b = getattr(t, ptr_name)[k], getattr(t, ptr_name)[k + 1]
            idx.append(getattr(t, idx_name)[a:b])
            spatial.append(getattr(t, spatial_name)[a:b])
            ptr.append(ptr[-1] + b - a)
        return (np.asarray(ptr, dtype=np.int64),
                np.concatenate(idx).astype(np.int64) if idx else np.zeros(0, np.int64),
                np.ascontiguousarray(np.concatenate(spatial) if spatial
                                     else np.zeros((0, rank)), dtype=np.float32))

    ptr, idx, spatial = rows("t")
    pptr, pidx, pspatial = rows("p")

    def take(name: str, dtype, empty_shape=(0,)):
        values = [getattr(t, name)[k] for t, k in sources]
        return np.asarray(values, dtype=dtype) if values else np.zeros(empty_shape, dtype)

    return TemplateSet(
        cluster_ids=take("cluster_ids", np.int64), ptr=ptr, idx=idx, spatial=spatial,
        temporal=np.ascontiguousarray(take("temporal", np.float32, (0, rank, n_t))),
        trough=take("trough", np.int64), n_spikes=take("n_spikes", np.int64),
        n_channels=int(n_channels), explained=take("explained", np.float64),
        pptr=pptr, pidx=pidx, pspatial=pspatial)


def _csr(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The True entries of a square boolean matrix, row by row (CSR pointers, indices)."""
    ptr = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(mask.sum(axis=1), out=ptr[1:])
    return ptr, np.nonzero(mask)[1].astype(np.int64)


def select_spikes(spike_samples: np.ndarray, spike_clusters: np.ndarray,
                  cluster_ids: np.ndarray, max_spikes: int, n_samples: int, before: int,
                  after: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_spikes` spikes per cluster, evenly spread; whole windows only.

    Returns
    -------
    samples, templates : int64 arrays
        Sorted by sample; ``templates`` indexes `cluster_ids`.
    """
    samples = np.asarray(spike_samples, dtype=np.int64)
    clusters = np.asarray(spike_clusters, dtype=np.int64)
    inside = (samples - before >= 0) & (samples + after <= n_samples)
    out_s, out_k = [], []
    for k, cluster in enumerate(cluster_ids):
        spikes = np.flatnonzero((clusters == cluster) & inside)
        if len(spikes) > max_spikes:
            spikes = spikes[np.linspace(0, len(spikes) - 1, max_spikes).round().astype(int)]
        out_s.append(samples[spikes])
        out_k.append(np.full(len(spikes), k, dtype=np.int64))
    s = np.concatenate(out_s) if out_s else np.zeros(0, np.int64)
    k = np.concatenate(out_k) if out_k else np.zeros(0, np.int64)
    order = np.argsort(s, kind="stable")
    return s[order], k[order]


def template_sums(filtered: np.ndarray, offset: int, samples: np.ndarray,
                  templates: np.ndarray, before: int, n_t: int) -> Bunch:
    """Sum the windows of a chunk's chosen spikes, per template.

    `filtered` is the chunk (n, C) float32 whose row 0 is sample `offset`.

    Returns
    -------
    Bunch
        ``templates`` (P,) the templates present, ``sums`` (P, n_t, C) float64,
        ``counts`` (P,).
    """
    present, inverse = np.unique(templates, return_inverse=True)
    sums = np.zeros((len(present), n_t, filtered.shape[1]), dtype=np.float64)
    starts = samples - before - offset
    for i, p in enumerate(inverse):
        sums[p] += filtered[starts[i]:starts[i] + n_t]
    return Bunch(templates=present, sums=sums,
                 counts=np.bincount(inverse, minlength=len(present)).astype(np.int64))


def channel_noise(filtered: np.ndarray, step: int = 4) -> np.ndarray:
    """Median ``|x|`` per channel of a filtered chunk (every `step`-th sample)."""
    from .kernels import abs_medians, transpose

    # Channel-major first, then the median of each row (`abs_medians`: the same values
    # as ``np.median(np.abs(filtered[::step]), axis=0)``, in a fifth of the time).
    sub = np.ascontiguousarray(np.asarray(filtered, dtype=np.float32)[::step])
    rows = np.empty(sub.shape[::-1], dtype=np.float32)
    transpose(sub, rows)
    return abs_medians(rows, 1)


def build_templates(means: np.ndarray, n_spikes: np.ndarray, cluster_ids: np.ndarray,
                    noise_std: np.ndarray, channel_fraction: float = 0.1,
                    significance: float = 4.0, max_channels: int = 64,
                    rank: int = 3) -> TemplateSet:
    """Sparse low-rank templates from mean waveforms ``(K, n_t, C)``; see the module docstring.

    A template with no significant channel (a cluster of noise) is dropped.
    """
    means = np.asarray(means, dtype=np.float64)
    n_templates, n_t, n_channels = means.shape
    ptr, idx, spatial, temporal, trough = [0], [], [], [], []
    kept, explained = [], []
    for k in range(n_templates):
        peak = np.abs(means[k]).max(axis=0)  # (C,)
        floor = significance * noise_std / np.sqrt(max(int(n_spikes[k]), 1))
        significant = (peak >= channel_fraction * peak.max()) & (peak >= floor)
        chans = np.flatnonzero(significant)
        if len(chans) == 0:
            logger.info("Cluster %d: no channel stands out of the noise; no template.",
                        cluster_ids[k])
            continue
        if len(chans) > max_channels:
            chans = np.sort(chans[np.argsort(-peak[chans], kind="stable")[:max_channels]])
        m = means[k][:, chans]  # (n_t, n_k)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        r = min(rank, len(s))
        tmp = np.zeros((rank, n_t))
        tmp[:r] = u[:, :r].T
        sp = np.zeros((len(chans), rank))
        sp[:, :r] = (s[:r, None] * vt[:r]).T
        approx = tmp.T @ sp.T  # (n_t, n_k)
        explained.append(float((approx ** 2).sum() / max((m ** 2).sum(), 1e-30)))
        peak_channel = int(np.argmax(np.abs(approx).max(axis=0)))
        trough.append(int(np.argmax(np.abs(approx[:, peak_channel]))))
        temporal.append(tmp)
        spatial.append(sp)
        idx.extend(chans.tolist())
        ptr.append(len(idx))
        kept.append(k)
    if not kept:
        raise TemplateMatchingError("No cluster has a template that stands out of the noise: "
                                    "nothing to match.")
    return TemplateSet(
        cluster_ids=np.asarray(cluster_ids, dtype=np.int64)[kept],
        ptr=np.asarray(ptr, dtype=np.int64),
        idx=np.asarray(idx, dtype=np.int64),
        spatial=np.ascontiguousarray(np.concatenate(spatial), dtype=np.float32),
        temporal=np.ascontiguousarray(np.stack(temporal), dtype=np.float32),
        trough=np.asarray(trough, dtype=np.int64),
        n_spikes=np.asarray(n_spikes, dtype=np.int64)[kept],
        n_channels=int(n_channels),
        explained=np.asarray(explained),
    )


def noise_std_from_medians(medians: list[np.ndarray]) -> np.ndarray:
    """Per-channel noise standard deviation from per-chunk median ``|x|``."""
    return np.median(np.stack(medians), axis=0) / _MAD_TO_STD
