"""Synthetic raw recordings with ground truth: ``.dat``, ``.prb``, ``.prm``, ``.groundtruth.npz``.

`synthesize_recording` writes, for a name ``N`` in an output folder, the files
described in the interfaces (section 3): ``N.dat`` (int16, (n_samples,
n_channels) interleaved), ``N.prb``, ``N.prm`` (klusta style) and
``N.groundtruth.npz``. It is what every test and benchmark of detection and
sorting runs on, so it aims at realism where a sorter notices it, and at speed.

Design choices, and why (the units are described in `templates`, the noise in
`noise`):

- Units: placed on the probe geometry, Poisson trains with a 2 ms dead time,
  log-uniform rates (0.5-20 Hz) and log-uniform SNRs (2.5-20: some units near
  the noise floor), narrow and broad bi/triphasic waveforms decaying and
  broadening with distance. Default count ``max(8, n_channels // 6)``: about
  one unit per six channels, as dense probes typically yield.
- Noise: independent band-limited thermal noise + spatially correlated
  "biological background" (low-rank, smooth profiles over the geometry) + a
  slow LFP-like drift. ``noise_std_uv`` is the noise level *after the
  detection band-pass* (500 Hz - 0.475 fs), computed analytically from the
  spectra, so ``unit_snr`` (the band-passed peak of the unit on its peak
  channel divided by that noise std: signal and noise as detection sees
  them) is exact, and the raw data carries extra low-frequency power, as
  real recordings do.
- Scale: the ``.dat`` holds ``round(uV / uv_per_bit)`` as int16; the default
  0.195 uV/bit is the Intan RHD2000 step. It is recorded as ``voltage_gain``
  in the PRM's ``traces`` (klusta's key; here it means uV per bit: multiply a
  sample by it to get microvolts). Templates in the ground truth are in .dat
  units (bits), float32. Samples beyond the int16 range are clipped, counted
  and reported with a warning.
- Streaming: the recording is generated chunk by chunk in order and written as
  it goes, so memory is proportional to ``chunk_s * n_channels``, not to the
  duration (the spike list itself, needed for the ground truth, is the only
  thing that grows with duration). Chunks are rounded to a multiple of
  `noise.SEGMENT_ROWS` samples. A spike's template is added to every chunk its
  window overlaps, so spikes straddling chunk boundaries are exact.
- Determinism: every random number is a function of the seed and its place:
  the white noise of sample ``t``, channel ``c`` is number ``(t mod 1024) *
  n_channels + c`` of a counter-based stream keyed by (seed, t // 1024); each
  unit's placement, shape and train come from generators keyed by (seed,
  unit); the recursive filters of the shared sources run in order with their
  state carried across chunks. So the bytes depend on the seed and the
  parameters, never on ``chunk_s`` or on the number of threads (and no BLAS
  call, whose summation order may depend on shapes and threads, is involved).
- Safety: the ``.dat`` is written to a temporary file renamed at the end, so an
  interrupted run (error, Ctrl-C) never leaves a complete-looking ``.dat``; the
  ``.prb``, ``.npz`` and the ``.prm`` (last) are written atomically after it.
- Speed: the work per sample (the white Gaussian, its FIR, the spikes, the
  shared-noise mixing, the int16 rounding and clipping) is one fused numba
  kernel per row range, run on a small thread pool (it releases the GIL), so
  that only the int16 output goes through memory; a background thread writes
  chunk ``k`` while chunk ``k + 1`` is computed, asking the kernel to start
  writing it back to disk at once. See ``benchmarks/synth.py``: 0.2-0.3 CPU
  second per second of 1024-channel data on the development VM.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from phy_core.atomic import atomic_write, atomic_writer
from phy_core.bunch import Bunch
from phy_core.errors import PhyError

from . import noise as noise_mod
from .templates import bandpassed_peak, make_units, spike_trains, window

logger = logging.getLogger("phy")

LFP_STD_UV = 40.0


class SynthError(PhyError, ValueError):
    """Invalid parameters for a synthetic recording."""


class _BackgroundWriter:
    """Write chunks on a thread while the next one is computed (double buffering).

    After each chunk, the kernel is asked to start writing it back to disk
    (``posix_fadvise(DONTNEED)`` starts an asynchronous writeback on Linux and
    keeps our pages from crowding the page cache); otherwise a large file
    would be written only at the final fsync, after all the computing.
    """

    def __init__(self, f, shape: tuple[int, int], n_buffers: int = 2) -> None:
        self._f = f
        self._free: queue.Queue = queue.Queue()
        for _ in range(n_buffers):
            self._free.put(np.empty(shape, dtype=np.int16))
        self._todo: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._offset = 0
        self._thread = threading.Thread(target=self._run, name="phy-synth-writer", daemon=True)
        self._thread.start()

    def buffer(self) -> np.ndarray:
        """A free buffer to fill (blocks while both are being written)."""
        self._raise()
        return self._free.get()

    def write(self, chunk: np.ndarray) -> None:
        """Queue `chunk` (a view of a buffer from `buffer()`) for writing."""
        self._raise()
        self._todo.put(chunk)

    def close(self) -> None:
        """Wait for the queued chunks; re-raise a write error."""
        self._todo.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (chunk := self._todo.get()) is not None:
            try:
                if self._error is None:
                    data = memoryview(chunk.base if chunk.base is not None else chunk)
                    self._f.write(data[:len(chunk)].cast("B"))
                    self._f.flush()
                    self._writeback(chunk.nbytes)
            except BaseException as e:  # reported to the generating thread
                self._error = e
            finally:
                self._free.put(chunk.base if chunk.base is not None else chunk)

    def _writeback(self, n_bytes: int) -> None:
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self._f.fileno(), self._offset, n_bytes,
                                 os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
        self._offset += n_bytes


def _probe_layout(probe: Any) -> tuple[Any, dict, np.ndarray, list[np.ndarray]]:
    """(probe object, channel_groups, positions (n_channels, 2) with NaN, groups)."""
    if isinstance(probe, (str, os.PathLike)):
        from phy_probes.builtin import load_probe

        probe = load_probe(probe)
    channel_groups = probe.to_channel_groups() if hasattr(probe, "to_channel_groups") \
        else probe
    from phy_probes.prb import validate_channel_groups

    channel_groups = validate_channel_groups(channel_groups, "probe")
    n_channels = 1 + max(c for g in channel_groups.values() for c in g["channels"])
    positions = np.full((n_channels, 2), np.nan)
    groups = []
    for i, (_, spec) in enumerate(sorted(channel_groups.items())):
        channels = np.asarray(spec["channels"], dtype=np.int64)
        geometry = spec["geometry"]
        if geometry:
            positions[channels] = [geometry[int(c)] for c in channels]
        else:  # No geometry: a linear shank, 20 um pitch, shanks 200 um apart.
            positions[channels] = np.c_[np.full(len(channels), 200.0 * i),
                                        20.0 * np.arange(len(channels))]
        groups.append(channels)
    return probe, channel_groups, positions, groups


def _footprints(templates_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each unit's nonzero channels and its template restricted to them."""
    support = np.abs(templates_uv).max(axis=1) > 0
    counts = support.sum(axis=1)
    m = max(int(counts.max()) if len(counts) else 0, 1)
    n_units, n_t, _ = templates_uv.shape
    channels = np.zeros((n_units, m), dtype=np.int64)
    footprints = np.zeros((n_units, n_t, m), dtype=np.float32)
    for u in range(n_units):
        chans = np.flatnonzero(support[u])
        channels[u, :len(chans)] = chans
        footprints[u, :, :len(chans)] = templates_uv[u][:, chans]
    return footprints, channels, counts.astype(np.int64)


# Synthetic templates last 2 ms: a wider waveform window than klusta's 10 + 10 samples.
_DETECTION_OVERRIDES = dict(extract_s_before=16, extract_s_after=16)


def _section(name: str, values: dict) -> str:
    lines = [f"    {key}={value!r}," for key, value in values.items() if value is not None]
    return f"{name} = dict(\n" + "\n".join(lines) + "\n)\n"


def _prm_text(name: str, n_channels: int, sample_rate: float, dtype: str,
              uv_per_bit: float) -> str:
    # The detection parameters are klusta's defaults (one list, in phy_rawdata.prm), written
    # out so that users see and can edit every one of them.
    from phy_rawdata.prm import SPIKEDETEKT_DEFAULTS

    traces = dict(raw_data_files=[name + ".dat"], voltage_gain=float(uv_per_bit),
                  sample_rate=float(sample_rate), n_channels=int(n_channels), dtype=dtype)
    header = ("# Parameters written by `phy synth` (klusta style; read as literals, never "
              "executed).\n# voltage_gain: microvolts per .dat unit (multiply a sample by it "
              "to get uV).\n\n")
    return (header + f"experiment_name = {name!r}\nprb_file = {name + '.prb'!r}\n\n"
            + _section("traces", traces) + "\n"
            + _section("spikedetekt", dict(SPIKEDETEKT_DEFAULTS, **_DETECTION_OVERRIDES)) + "\n"
            + _section("klustakwik2", dict(num_starting_clusters=100)))


def _check_parameters(name: str, duration_s: float, n_units: int | None, sample_rate: float,
                      seed: int, dtype: str, chunk_s: float, noise_std_uv: float,
                      uv_per_bit: float) -> None:
    if not name or any(ch in name for ch in "/\\") or name in (".", ".."):
        raise SynthError(f"The recording name must be a plain file stem, got {name!r}.")
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise SynthError(f"The seed must be a non-negative integer, got {seed!r}.")
    checks = [(duration_s, "duration_s"), (sample_rate, "sample_rate"), (chunk_s, "chunk_s"),
              (uv_per_bit, "uv_per_bit")]
    for value, label in checks:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise SynthError(f"{label} must be a positive number, got {value!r}.")
    if not (math.isfinite(noise_std_uv) and noise_std_uv >= 0):
        raise SynthError(f"noise_std_uv must be >= 0, got {noise_std_uv!r}.")
    if sample_rate < 2000:
        raise SynthError(f"sample_rate must be at least 2000 Hz (the spike band starts at "
                         f"500 Hz), got {sample_rate!r}.")
    if n_units is not None and not (isinstance(n_units, (int, np.integer)) and n_units >= 0):
        raise SynthError(f"n_units must be a non-negative integer, got {n_units!r}.")
    if np.dtype(dtype) != np.int16:
        raise SynthError(f"Only int16 .dat files are written, got dtype={dtype!r}.")


def synthesize_recording(
    out_dir: str | os.PathLike,
    name: str = "synthetic",
    probe: Any = "linear32",
    duration_s: float = 10.0,
    n_units: int | None = None,
    sample_rate: float = 30000.0,
    seed: int = 0,
    dtype: str = "int16",
    chunk_s: float = 1.0,
    noise_std_uv: float = 10.0,
    uv_per_bit: float = 0.195,
    reporter: Any = None,
    overwrite: bool = False,
    lfp_std_uv: float = LFP_STD_UV,
    n_threads: int | None = None,
) -> Bunch:
    """Write a synthetic recording with ground truth; see the module docstring.

    Parameters
    ----------
    out_dir : path
        Output folder (created if needed).
    name : str
        File stem of the outputs.
    probe : str, path, MEA or channel_groups dict
        A built-in probe name, a ``.prb``/``.json`` path, or a probe object with
        ``to_channel_groups()``.
    duration_s, sample_rate : float
        Length (s) and sampling rate (Hz).
    n_units : int or None
        True units; ``max(8, n_channels // 6)`` by default.
    seed : int
        Everything is a function of the seed and the parameters.
    dtype : str
        Only ``'int16'``.
    chunk_s : float
        Chunk length used while generating (memory), rounded to 1024 samples;
        the output does not depend on it.
    noise_std_uv : float
        Noise standard deviation after the spike band-pass, on every channel.
    uv_per_bit : float
        Microvolts per .dat unit (``voltage_gain`` in the PRM).
    reporter : ProgressReporter or None
        Advanced once per chunk; ``value_max`` is the number of chunks.
    overwrite : bool
        Replace existing output files instead of raising `SynthError`.
    lfp_std_uv : float
        Raw standard deviation of the LFP-like drift (0 disables it).
    n_threads : int or None
        Worker threads of the numba kernels (default: up to 4 CPUs).

    Returns
    -------
    Bunch
        ``dat_path, prb_path, prm_path, groundtruth_path, n_units, n_spikes,
        n_channels, n_samples, sample_rate, duration_s, n_clipped, unit_snr,
        elapsed_s``.

    Raises
    ------
    SynthError
        Bad parameters, or outputs exist and `overwrite` is False.
    """
    t0 = time.perf_counter()
    _check_parameters(name, duration_s, n_units, sample_rate, seed, dtype, chunk_s,
                      noise_std_uv, uv_per_bit)
    seed = int(seed)
    sample_rate = float(sample_rate)
    out_dir = Path(out_dir)
    paths = Bunch(dat_path=out_dir / f"{name}.dat", prb_path=out_dir / f"{name}.prb",
                  prm_path=out_dir / f"{name}.prm",
                  groundtruth_path=out_dir / f"{name}.groundtruth.npz")
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise SynthError(f"Output files exist: {', '.join(existing)} "
                         "(use overwrite=True / --overwrite to replace them).")
    out_dir.mkdir(parents=True, exist_ok=True)

    probe_obj, channel_groups, positions, groups = _probe_layout(probe)
    n_channels = len(positions)
    n_probe_channels = int(sum(len(g) for g in groups))
    if n_units is None:
        n_units = max(8, n_probe_channels // 6)
    n_samples = int(round(duration_s * sample_rate))
    if n_samples < 1:
        raise SynthError(f"duration_s={duration_s!r} gives no sample at {sample_rate} Hz.")

    noise = noise_mod.NoiseModel(positions, sample_rate, seed, noise_std_uv, lfp_std_uv,
                                 uv_per_bit)
    units = make_units(positions, groups, n_units, sample_rate, noise.noise_std_bp, seed)
    samples, clusters, scales = spike_trains(units["rates_hz"], n_samples, sample_rate, seed)
    templates_uv = units["templates_uv"]
    footprints, fp_channels, fp_counts = _footprints(templates_uv)
    n_before, n_after = window(sample_rate)

    seg = noise_mod.SEGMENT_ROWS
    chunk_rows = max(seg, int(round(chunk_s * sample_rate / seg)) * seg)
    starts = list(range(0, n_samples, chunk_rows))
    if reporter is not None:
        reporter.reset(len(starts) + 1)  # the last step: the ground truth and parameters
    n_clipped = 0
    n_workers = n_threads or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as executor, \
            atomic_writer(paths.dat_path, "wb") as f:
        writer = _BackgroundWriter(f, (min(chunk_rows, n_samples), n_channels))
        try:
            for row0 in starts:
                n_rows = min(chunk_rows, n_samples - row0)
                # Spikes whose window [s - n_before, s + n_after) overlaps the chunk.
                i0 = np.searchsorted(samples, row0 - n_after, side="right")
                i1 = np.searchsorted(samples, row0 + n_rows + n_before, side="left")
                spikes = (samples[i0:i1] - n_before, clusters[i0:i1], scales[i0:i1],
                          footprints, fp_channels, fp_counts)
                out = writer.buffer()[:n_rows]
                clipped = noise.render(out, row0, spikes, uv_per_bit, executor)
                n_clipped += clipped
                writer.write(out)
                if reporter is not None:
                    reporter.increment(n_spikes=int(i1))
        finally:
            writer.close()
    if n_clipped:
        logger.warning("%s: %d samples (%.3g%%) were clipped to the int16 range; lower "
                       "noise_std_uv or raise uv_per_bit.", paths.dat_path, n_clipped,
                       100.0 * n_clipped / (n_samples * n_channels))

    from phy_probes.prb import write_prb

    write_prb(paths.prb_path, channel_groups)
    templates = (templates_uv / uv_per_bit).astype(np.float32)
    peak_channels = np.abs(templates).max(axis=1).argmax(axis=1).astype(np.int64) \
        if n_units else np.zeros(0, np.int64)
    peak_uv = np.array([bandpassed_peak(templates_uv[u, :, peak_channels[u]], sample_rate)
                        for u in range(n_units)])
    unit_snr = (peak_uv / noise.noise_std_bp[peak_channels]).astype(np.float64)
    with atomic_writer(paths.groundtruth_path, "wb") as f:
        np.savez(
            f,
            spike_samples=samples.astype(np.int64),
            spike_clusters=clusters.astype(np.int64),
            spike_amplitudes=scales.astype(np.float32),
            templates=templates,
            template_trough=np.int64(n_before),
            unit_peak_channels=peak_channels,
            unit_snr=unit_snr,
            unit_positions_um=units["positions"],
            unit_rates_hz=units["rates_hz"],
            unit_narrow=units["narrow"],
            channel_positions_um=positions,
            noise_std_uv=noise.noise_std_bp,
            uv_per_bit=np.float64(uv_per_bit),
            sample_rate=np.float64(sample_rate),
            n_samples=np.int64(n_samples),
            seed=np.int64(seed),
        )
    atomic_write(paths.prm_path, _prm_text(name, n_channels, sample_rate, "int16", uv_per_bit))
    if reporter is not None:
        reporter.increment(n_spikes=len(samples))
    return Bunch(
        **paths,
        probe=probe_obj,
        n_units=int(n_units),
        n_spikes=int(len(samples)),
        n_channels=int(n_channels),
        n_samples=n_samples,
        sample_rate=sample_rate,
        duration_s=n_samples / sample_rate,
        n_clipped=int(n_clipped),
        unit_snr=unit_snr,
        noise_std_uv=noise.noise_std_bp,
        elapsed_s=time.perf_counter() - t0,
    )
