"""Background noise of a synthetic recording: model, fast kernels, analytic spike-band level.

The noise of channel ``c`` (microvolts) is the sum of three parts:

``a_c * fir(w_c)``
    Independent "thermal" noise: white Gaussian noise per channel, band-limited
    by the binomial FIR ``[1/4, 1/2, 1/4]``, whose response ``cos^2(pi f / fs)``
    is -3 dB at ``fs/4`` (7.5 kHz at 30 kHz), like the anti-aliasing filter of
    an acquisition system. A 3-tap FIR costs two multiply-adds per sample, which
    matters at 1024 channels; its state (the last two white rows) is carried
    from chunk to chunk.
``sum_k P[k, c] * s_k(t)``
    Shared "biological background" (far-away spiking, "hash"): ``k`` latent
    sources, white noise band-passed 300-3000 Hz (2nd-order Butterworth), each
    with a smooth Gaussian spatial profile (width `SHARED_WIDTH_UM`, 200 um)
    centred on a grid of that spacing covering the probe. Neighbouring channels
    share most of their sources, distant ones none: the spatial correlation
    decays with distance. A low-rank mixture costs ``k`` multiply-adds per
    sample, unlike a full channel covariance (``n_channels``).
``sum_l Q[l, c] * lfp_l(t)``
    LFP-like slow drift: a few sources low-passed at `LFP_CORNER_HZ` (1st
    order, so a ``1/f^2`` spectrum above the corner), with very broad spatial
    profiles, of raw standard deviation ``lfp_std_uv`` on every channel. It is
    essentially invisible after the spike band-pass, like a real LFP.

The recursive filters run with their state carried across chunks, and every
random number is a function of the seed and its place: the white Gaussian of
sample ``t``, channel ``c`` is number ``(t mod SEGMENT_ROWS) * n_channels + c``
of a counter-based stream (splitmix64 of a counter, so any number is computed
on its own) keyed by ``(seed, stream, t // SEGMENT_ROWS)``. The output is the
same whatever the chunk size and the threads. Gaussians come from a 256-layer
ziggurat (exact tails, which matter for threshold crossings), written so that
its fast path vectorises: numpy's generator would cost more than everything
else together at 1024 channels.

Rendering (`NoiseModel.render`) fuses, per row, the white noise, its FIR,
the spikes, the mixing of the shared sources and the int16 rounding: at 1024
channels the cost is memory traffic, and this way only the int16 output is
written. The mixing weights below `MIXING_CUTOFF` of a source's largest are
zeroed, so a source touches a contiguous range of channels (a small part of a
long probe).

Spike-band level. ``unit_snr`` needs the noise standard deviation after the
detection band-pass (3rd-order Butterworth, 500 Hz - 0.475 fs, applied forward
and backward as SpikeDetekt does, so its power response is ``|H|^4``). The
noise is a sum of independent stationary Gaussian processes, so that variance
is computed exactly from the spectra: ``var = sum_i g_i^2 * mean_f(|F_i|^2
|H|^4)`` over a dense frequency grid (plus the quantisation noise, ``q^2/12``
white). There is no estimation error, and the mixing weights are chosen so
that this band-passed standard deviation equals ``noise_std_uv`` on every
channel, with a fraction `SHARED_FRACTION` of the variance shared.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SEGMENT_ROWS = 1024
SHARED_FRACTION = 0.35  # of the spike-band noise variance
SHARED_WIDTH_UM = 200.0
SHARED_BAND_HZ = (300.0, 3000.0)
MAX_SHARED_SOURCES = 64
MIXING_CUTOFF = 1e-3  # relative to a source's largest weight
N_LFP_SOURCES = 3
LFP_CORNER_HZ = 8.0
LFP_WIDTH_UM = 600.0
FIR = (0.25, 0.5, 0.25)
DETECTION_LOW_HZ = 500.0
DETECTION_HIGH_FACTOR = 0.475
DETECTION_ORDER = 3

# Stream ids: the first word after the seed in every SeedSequence.
STREAM_WHITE, STREAM_SOURCES, STREAM_LAYOUT = 0, 1, 3

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_S8, _S11, _S12 = np.uint64(8), np.uint64(11), np.uint64(12)
_LOW8, _ONE = np.uint64(0xFF), np.uint64(1)
_INV53 = 2.0 ** -53


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # 256-layer ziggurat for the half-normal exp(-x^2/2) (Marsaglia & Tsang
    # 2000, Doornik's constants). x[0] is the pseudo-width of the base layer
    # (which includes the tail), x[1] = R, ..., x[256] = 0; layer i spans
    # [0, x[i]] in x and [f(x[i]), f(x[i+1])] in y, all of area V.
    r, v = 3.6541528853610088, 0.00492867323399
    x = np.zeros(257)
    x[0], x[1] = v / math.exp(-0.5 * r * r), r
    for i in range(1, 255):
        x[i + 1] = math.sqrt(-2.0 * math.log(v / x[i] + math.exp(-0.5 * x[i] ** 2)))
    k = np.floor(x[1:] / x[:-1] * 2.0 ** 52).astype(np.int64)  # accept if bits < k[i]
    w = x[:-1] / 2.0 ** 52
    f = np.exp(-0.5 * x ** 2)
    return k, w, f


_ZIG_K, _ZIG_W, _ZIG_F = _ziggurat_tables()
_ZIG_R = 3.6541528853610088


@njit(inline="always")
def _mix(z):  # pragma: no cover - compiled
    # The splitmix64 output function: the n-th number of a stream is
    # _mix(state + n * golden), so loop iterations are independent (SIMD).
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(inline="always")
def _uniform(z):  # pragma: no cover - compiled
    return (float(np.int64(z >> _S11)) + 0.5) * _INV53  # in (0, 1)


@njit
def _finish_slow(state, index, z):  # pragma: no cover - compiled
    # The ziggurat attempt `z` of sample `index` fell outside the inner
    # rectangles: wedge test, tail, or new attempts, from a second stream of
    # that sample alone (counter-based: any sample is computable on its own).
    s = _mix((state ^ _MIX2) + np.uint64(index + 1) * _MIX1)
    layer = np.int64(z & _LOW8)
    bits = np.int64(z >> _S12)
    x = float(bits) * _ZIG_W[layer]
    while True:
        if layer == 0:  # the tail beyond R (Marsaglia's method)
            while True:
                s += _GOLDEN
                u1 = _uniform(_mix(s))
                s += _GOLDEN
                u2 = _uniform(_mix(s))
                xx = -math.log(u1) / _ZIG_R
                if -2.0 * math.log(u2) > xx * xx:
                    break
            x = _ZIG_R + xx
            break
        s += _GOLDEN
        y = _ZIG_F[layer] + _uniform(_mix(s)) * (_ZIG_F[layer + 1] - _ZIG_F[layer])
        if y < math.exp(-0.5 * x * x):
            break
        s += _GOLDEN  # rejected: a new attempt
        z = _mix(s)
        layer = np.int64(z & _LOW8)
        bits = np.int64(z >> _S12)
        x = float(bits) * _ZIG_W[layer]
        if bits < _ZIG_K[layer]:
            break
    return -x if (z >> _S8) & _ONE else x


@njit(nogil=True, cache=True)
def _gaussians(buf, state, first):  # pragma: no cover - compiled
    # buf[j] = Gaussian number `first + j` of the stream `state`.
    # A 256-layer ziggurat on counter-based splitmix64 bits: exact Gaussian
    # tails (they matter for threshold crossings), and several times faster
    # than numpy's generator. Pass 1 is branch-light so that it vectorises:
    # every sample takes the fast path (one table look-up, one multiply).
    # Pass 2 finishes the ~1.5% of attempts that fell outside the inner
    # rectangles: still exactly the ziggurat algorithm.
    n = buf.size
    n_slow = 0
    for j in range(n):
        z = _mix(state + np.uint64(first + j + 1) * _GOLDEN)
        layer = np.int64(z & _LOW8)
        bits = np.int64(z >> _S12)
        x = float(bits) * _ZIG_W[layer]
        if (z >> _S8) & _ONE:
            x = -x
        if bits >= _ZIG_K[layer]:
            x = np.nan  # finished in pass 2
            n_slow += 1
        buf[j] = x
    if n_slow == 0:
        return
    for j in range(n):
        if buf[j] == buf[j]:  # not NaN
            continue
        z = _mix(state + np.uint64(first + j + 1) * _GOLDEN)
        buf[j] = _finish_slow(state, first + j, z)


@njit(nogil=True, cache=True)
def _sosfilt_inplace(x, sos, zi):  # pragma: no cover - compiled
    # x: (n, k) float64 filtered in place along axis 0; zi: (n_sections, k, 2).
    n, k = x.shape
    for j in range(k):
        for s in range(sos.shape[0]):
            b0, b1, b2 = sos[s, 0], sos[s, 1], sos[s, 2]
            a1, a2 = sos[s, 4], sos[s, 5]
            z0, z1 = zi[s, j, 0], zi[s, j, 1]
            for t in range(n):
                xi = x[t, j]
                y = b0 * xi + z0
                z0 = b1 * xi - a1 * y + z1
                z1 = b2 * xi - a2 * y
                x[t, j] = y
            zi[s, j, 0], zi[s, j, 1] = z0, z1


@njit(nogil=True)
def _white_row(buf, row, states, first_segment):  # pragma: no cover - compiled
    # White row `row` (global sample index; may be -1 or -2) of the stream.
    segment = row // SEGMENT_ROWS  # floor division: row -1 is in segment -1
    n = buf.size
    _gaussians(buf, states[segment - first_segment], (row - segment * SEGMENT_ROWS) * n)


@njit(nogil=True, cache=True)
def _render_rows(out, r0, r1, row0, states, first_segment, gains, sources, mixing,
                 mix_lo, mix_hi, inv_uv_per_bit, starts, units, scales, footprints, fp_channels,
                 fp_counts):  # pragma: no cover - compiled
    # Rows [r0, r1) of a chunk starting at global sample `row0`, fused in one
    # pass per row so that nothing but the int16 output goes through memory:
    #   x = gains * fir(white) + spikes + sources @ mixing   (uV)
    #   out = clip(round(x / uv_per_bit))
    # The white rows are regenerated from their counters (two rows before r0
    # included), spikes are swept in order of their start (all have the same
    # length, so the active ones are a contiguous range of `starts`). Returns
    # the number of clipped samples. A row's value depends only on its global
    # index: the output is the same whatever the chunks and the threads.
    n_channels = out.shape[1]
    n_sources = sources.shape[1]
    n_t = footprints.shape[1]
    white = np.empty((3, n_channels), dtype=np.float32)
    acc = np.empty(n_channels, dtype=np.float32)
    g0 = row0 + r0
    _white_row(white[(g0 - 2) % 3], g0 - 2, states, first_segment)
    _white_row(white[(g0 - 1) % 3], g0 - 1, states, first_segment)
    lo = 0
    hi = 0
    n_spikes = starts.shape[0]
    n_clipped = 0
    for t in range(r0, r1):
        g = row0 + t
        w0, w1, w2 = white[(g - 2) % 3], white[(g - 1) % 3], white[g % 3]
        _white_row(w2, g, states, first_segment)
        for c in range(n_channels):
            acc[c] = gains[c] * (np.float32(0.25) * w0[c] + np.float32(0.5) * w1[c]
                                 + np.float32(0.25) * w2[c])
        while hi < n_spikes and starts[hi] <= g:
            hi += 1
        while lo < hi and starts[lo] + n_t <= g:
            lo += 1
        for i in range(lo, hi):
            u = units[i]
            k = g - starts[i]
            a = scales[i]
            for j in range(fp_counts[u]):
                acc[fp_channels[u, j]] += a * footprints[u, k, j]
        for k in range(n_sources):
            sk = sources[t, k]
            c0, c1 = mix_lo[k], mix_hi[k]  # locals: lets LLVM vectorise the loop
            a_part = acc[c0:c1]
            w_part = mixing[k, c0:c1]
            for c in range(c1 - c0):
                a_part[c] += sk * w_part[c]
        for c in range(n_channels):
            x = math.floor(acc[c] * inv_uv_per_bit + np.float32(0.5))
            if x > 32767.0:
                x = 32767.0
                n_clipped += 1
            elif x < -32768.0:
                x = -32768.0
                n_clipped += 1
            out[t, c] = np.int16(x)
    return n_clipped


def segment_states(seed: int, stream: int, first: int, last: int) -> np.ndarray:
    """The 64-bit generator states of segments ``first..last`` (inclusive) of a stream.

    Segment ``k`` covers samples ``[k * SEGMENT_ROWS, (k + 1) * SEGMENT_ROWS)``;
    segment -1 holds the two rows before the recording that the FIR needs.
    """
    return np.array([np.random.SeedSequence([seed, stream, k + 1]).generate_state(1, np.uint64)[0]
                     for k in range(first, last + 1)], dtype=np.uint64)


def gaussian_rows(seed: int, stream: int, row0: int, n_rows: int, n_cols: int) -> np.ndarray:
    """Rows ``[row0, row0 + n_rows)`` of a stream of white Gaussian rows (float32).

    Row ``r`` depends only on (seed, stream, r): it is number ``r % SEGMENT_ROWS``
    of the row-major counter-based stream of segment ``r // SEGMENT_ROWS``.
    """
    out = np.empty((n_rows, n_cols), dtype=np.float32)
    if n_rows == 0:
        return out
    first, last = row0 // SEGMENT_ROWS, (row0 + n_rows - 1) // SEGMENT_ROWS
    states = segment_states(seed, stream, first, last)
    for segment, state in zip(range(first, last + 1), states):
        lo = max(row0, segment * SEGMENT_ROWS)
        hi = min(row0 + n_rows, (segment + 1) * SEGMENT_ROWS)
        _gaussians(out[lo - row0:hi - row0].reshape(-1), state,
                   (lo - segment * SEGMENT_ROWS) * n_cols)
    return out


def _grid_centres(positions: np.ndarray, spacing: float) -> np.ndarray:
    """Points of a square grid of `spacing` over the probe, near some channel."""
    lo, hi = positions.min(axis=0), positions.max(axis=0)
    axes = [np.arange(lo[i], hi[i] + spacing / 2, spacing) + ((hi[i] - lo[i]) % spacing) / 2
            for i in range(2)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)
    d = np.linalg.norm(grid[:, None, :] - positions[None, :, :], axis=-1).min(axis=1)
    return grid[d <= spacing]


def _profiles(centres: np.ndarray, positions: np.ndarray, width: float) -> np.ndarray:
    """(n_sources, n_channels) Gaussian profiles, each channel's column of unit norm."""
    d2 = ((centres[:, None, :] - positions[None, :, :]) ** 2).sum(axis=-1)
    p = np.exp(-d2 / (2 * width ** 2))
    return p / np.maximum(np.linalg.norm(p, axis=0, keepdims=True), 1e-12)


def _power_gain(sos, sample_rate: float, band_power: np.ndarray | None, n_freqs: int) -> float:
    """Variance of unit white noise through `sos` (then the detection band, if given)."""
    from scipy.signal import sosfreqz

    w, h = sosfreqz(sos, worN=n_freqs) if sos is not None else (None, np.ones(n_freqs))
    power = np.abs(h) ** 2
    if band_power is not None:
        power = power * band_power
    return float(power.mean())


class NoiseModel:
    """The noise of one recording: mixing weights, filters, and their running state.

    Parameters
    ----------
    positions : array (n_channels, 2)
        Channel positions in um; NaN rows for channels that are not on the probe
        (they get independent noise only).
    sample_rate : float
    seed : int
    noise_std_uv : float
        Standard deviation of the noise after the detection band-pass, every channel.
    lfp_std_uv : float
        Raw standard deviation of the LFP-like drift (0 to disable).
    uv_per_bit : float
        Quantisation step, included in the spike-band noise level.
    """

    def __init__(self, positions: np.ndarray, sample_rate: float, seed: int,
                 noise_std_uv: float, lfp_std_uv: float, uv_per_bit: float) -> None:
        from scipy.signal import butter, sosfreqz

        self.seed = seed
        self.n_channels = len(positions)
        on_probe = ~np.isnan(positions).any(axis=1)
        fs = float(sample_rate)
        n_freqs = 1 << 16
        bp = butter(DETECTION_ORDER, (DETECTION_LOW_HZ, DETECTION_HIGH_FACTOR * fs),
                    btype="bandpass", fs=fs, output="sos")
        band_power = np.abs(sosfreqz(bp, worN=n_freqs)[1]) ** 4  # forward-backward
        fir = np.array([[FIR[0], FIR[1], FIR[2], 1.0, 0.0, 0.0]])
        shared_high = min(SHARED_BAND_HZ[1], 0.45 * fs)
        self.shared_sos = butter(2, (SHARED_BAND_HZ[0], shared_high), btype="bandpass",
                                 fs=fs, output="sos")
        self.lfp_sos = butter(1, LFP_CORNER_HZ, btype="lowpass", fs=fs, output="sos")
        g_white = _power_gain(fir, fs, band_power, n_freqs)
        g_shared = _power_gain(self.shared_sos, fs, band_power, n_freqs)
        g_lfp = _power_gain(self.lfp_sos, fs, band_power, n_freqs)
        g_quant = float(band_power.mean())
        raw_lfp = _power_gain(self.lfp_sos, fs, None, n_freqs)

        pos = positions[on_probe]
        rng = np.random.default_rng([seed, STREAM_LAYOUT])
        width = SHARED_WIDTH_UM
        centres = _grid_centres(pos, width)
        while len(centres) > MAX_SHARED_SOURCES:  # huge probes: coarser, wider sources
            width *= 1.25
            centres = _grid_centres(pos, width)
        lfp_centres = pos[rng.choice(len(pos), size=min(N_LFP_SOURCES, len(pos)),
                                     replace=False)]
        self.n_shared, self.n_lfp = len(centres), len(lfp_centres) if lfp_std_uv > 0 else 0
        var = noise_std_uv ** 2
        mixing = np.zeros((self.n_shared + self.n_lfp, self.n_channels))
        mixing[:self.n_shared, on_probe] = (_profiles(centres, pos, width)
                                            * math.sqrt(SHARED_FRACTION * var / g_shared))
        if self.n_lfp:
            mixing[self.n_shared:, on_probe] = (_profiles(lfp_centres, pos, LFP_WIDTH_UM)
                                                * lfp_std_uv / math.sqrt(raw_lfp))
        # Negligible weights are zeroed (before the noise level is computed, so it
        # stays exact): each source then touches a contiguous range of channels,
        # a fraction of the probe on long probes, which the kernel loops over.
        mixing[np.abs(mixing) < MIXING_CUTOFF * np.abs(mixing).max(axis=1, keepdims=True)] = 0
        nonzero = mixing != 0
        self.mix_lo = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 0).astype(np.int64)
        self.mix_hi = np.where(nonzero.any(axis=1),
                               self.n_channels - nonzero[:, ::-1].argmax(axis=1), 0
                               ).astype(np.int64)
        shared_var = (mixing[:self.n_shared] ** 2).sum(axis=0) * g_shared
        lfp_var = (mixing[self.n_shared:] ** 2).sum(axis=0) * g_lfp
        quant_var = uv_per_bit ** 2 / 12 * g_quant
        white_var = np.maximum(var - shared_var - lfp_var - quant_var, 0.0)
        self.gains = np.sqrt(white_var / g_white)
        self.mixing = mixing.astype(np.float32)
        #: Standard deviation (uV) of the noise after the detection band-pass, per channel.
        self.noise_std_bp = np.sqrt(self.gains ** 2 * g_white + shared_var + lfp_var
                                    + quant_var)
        self.shared_width_um = width
        self._zi_shared = np.zeros((self.shared_sos.shape[0], self.n_shared, 2))
        self._zi_lfp = np.zeros((self.lfp_sos.shape[0], self.n_lfp, 2))

    def sources(self, row0: int, n_rows: int) -> np.ndarray:
        """The next chunk's filtered shared and LFP sources (n_rows, n_sources), float32.

        Chunks must come in order: the filter states are carried over.
        """
        sources = gaussian_rows(self.seed, STREAM_SOURCES, row0, n_rows,
                                self.n_shared + self.n_lfp).astype(np.float64)
        _sosfilt_inplace(sources[:, :self.n_shared], self.shared_sos, self._zi_shared)
        if self.n_lfp:
            _sosfilt_inplace(sources[:, self.n_shared:], self.lfp_sos, self._zi_lfp)
        return sources.astype(np.float32)

    def render(self, out: np.ndarray, row0: int, spikes: tuple, uv_per_bit: float,
               executor=None) -> int:
        """Fill `out` (n_rows, n_channels) int16 with the chunk at `row0`; returns clips.

        `spikes` is ``(starts, units, scales, footprints, channels, counts)``:
        the spikes overlapping the chunk, by start sample (trough - n_before),
        and every unit's footprint template (uV) on its channels.
        """
        n_rows = len(out)
        sources = self.sources(row0, n_rows)
        first, last = (row0 - 2) // SEGMENT_ROWS, (row0 + n_rows - 1) // SEGMENT_ROWS
        states = segment_states(self.seed, STREAM_WHITE, first, last)
        args = (row0, states, first, self.gains.astype(np.float32), sources, self.mixing,
                self.mix_lo, self.mix_hi, np.float32(1.0 / uv_per_bit), *spikes)
        n_tasks = 1 if executor is None else max(1, min(8, n_rows // 2048))
        bounds = np.linspace(0, n_rows, n_tasks + 1).astype(int)
        if n_tasks == 1:
            return int(_render_rows(out, 0, n_rows, *args))
        clipped = executor.map(lambda r: _render_rows(out, r[0], r[1], *args),
                               zip(bounds[:-1], bounds[1:]))
        return int(sum(clipped))
