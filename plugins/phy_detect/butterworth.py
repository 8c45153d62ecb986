"""A Butterworth band-pass designed in numpy: `scipy.signal`'s design without its import.

Importing ``scipy.signal`` costs ~0.7 s of CPU (it imports ``scipy.stats``),
which the detection runner paid only to design one filter, while its workers
start on the same two cores. This module gives what `filtering.Filter` uses
of it, for the band-pass only, with the names and calling conventions of
``scipy.signal`` (so ``from . import butterworth as signal`` stands in):

- `butter` ``(N, (low, high), btype='bandpass', fs=rate, output='sos')``:
  the analog prototype's poles, the low-pass to band-pass transform, the
  bilinear transform (cut-offs pre-warped), then second-order sections paired
  as scipy's ``zpk2sos`` pairs them by default: from the last section to the
  first, the remaining pole nearest the unit circle with its conjugate (or the
  real pole next nearest it), and the zeros (all at +1 or -1) nearest it; the
  gain in the first section. The same sections in the same order, to float64
  rounding (tested against scipy).
- `sosfilt_zi`, `sosfilt` (1D: the impulse response for the chunk margin) and
  `sosfreqz` (the check of the fast sections' zeros).
"""

from __future__ import annotations

import numpy as np


def _digital_poles(order: int, low: float, high: float, rate: float):
    """The band-pass's 2 * `order` z-plane poles and its gain (zeros: `order` at +1, at -1)."""
    # Analog Butterworth prototype: poles on the left half of the unit circle.
    m = np.arange(-order + 1, order, 2)
    prototype = -np.exp(1j * np.pi * m / (2 * order))
    # Cut-offs normalised to Nyquist, pre-warped for the bilinear transform (fs = 2).
    warped = 4.0 * np.tan(np.pi * (2.0 * np.array([low, high]) / rate) / 2.0)
    bandwidth = warped[1] - warped[0]
    centre = np.sqrt(warped[0] * warped[1])
    # Low-pass to band-pass: each pole becomes two; `order` zeros at s = 0.
    scaled = (prototype * bandwidth / 2).astype(complex)
    root = np.sqrt(scaled ** 2 - centre ** 2)
    analog = np.concatenate((scaled + root, scaled - root))
    gain = bandwidth ** order
    # Bilinear transform: s = 0 -> z = 1; s = infinity -> z = -1.
    poles = (4.0 + analog) / (4.0 - analog)
    gain = gain * np.real(np.prod(4.0 - np.zeros(order)) / np.prod(4.0 - analog))
    return poles, gain


def _one_per_pair(poles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(complex poles, one per conjugate pair, imaginary part > 0; real poles), sorted."""
    tol = 100 * np.finfo(float).eps * np.abs(poles)
    real = np.sort(poles[np.abs(poles.imag) <= tol].real)
    rest = poles[np.abs(poles.imag) > tol]
    upper, lower = rest[rest.imag > 0], rest[rest.imag < 0]
    upper = upper[np.lexsort((np.abs(upper.imag), upper.real))]
    lower = lower[np.lexsort((np.abs(lower.imag), lower.real))]
    if len(upper) != len(lower):
        raise ValueError("butter: the poles do not come in conjugate pairs.")
    # A pair's two poles agree to rounding: their mean represents both.
    return (upper + lower.conj()) / 2, real


def _nearest(values: np.ndarray, target) -> int:
    return int(np.argmin(np.abs(values - target)))


def butter(N: int, Wn, btype: str = "bandpass", fs: float | None = None,
           output: str = "sos") -> np.ndarray:
    """Second-order sections ``(N, 6)`` of an order-`N` Butterworth band-pass.

    As ``scipy.signal.butter(N, Wn, btype='bandpass', fs=fs, output='sos')``;
    only that case (digital band-pass, ``Wn = (low, high)`` in Hz, `fs` given).
    """
    if btype not in ("bandpass", "band", "pass", "bp") or output != "sos" or fs is None:
        raise ValueError("butterworth.butter: only a band-pass, output='sos', with fs.")
    order = int(N)
    low, high = (float(w) for w in Wn)
    if not (order >= 1 and 0 < low < high < fs / 2):
        raise ValueError(f"butter: need order >= 1 and 0 < low < high < fs / 2, got {order}, "
                         f"{low}, {high}, fs={fs}.")
    poles, gain = _digital_poles(order, low, high, float(fs))
    complex_poles, real_poles = _one_per_pair(poles)
    candidates = list(complex_poles) + list(real_poles)
    zeros = [-1.0] * order + [1.0] * order  # sorted, as the pairing scans them
    sos = np.zeros((order, 6))
    for section in range(order - 1, -1, -1):
        # The remaining pole nearest the unit circle goes last.
        values = np.array(candidates)
        p1 = candidates.pop(int(np.argmin(np.abs(1 - np.abs(values)))))
        if np.isreal(p1):
            reals = [i for i, p in enumerate(candidates) if np.isreal(p)]
            if not reals:
                raise ValueError("butter: an odd number of real poles (not a band-pass).")
            distance = np.abs(1 - np.abs(np.array([candidates[i] for i in reals])))
            p2 = candidates.pop(reals[int(np.argmin(distance))])
        else:
            p2 = np.conj(p1)
        z1 = zeros.pop(_nearest(np.array(zeros), p1))
        z2 = zeros.pop(_nearest(np.array(zeros), p1))
        sos[section, :3] = np.real(np.poly([z1, z2]))
        sos[section, 3:] = np.real(np.poly([p1, p2]))
    sos[0, :3] *= gain
    return sos


def sosfilt_zi(sos: np.ndarray) -> np.ndarray:
    """Steady-state initial conditions ``(n_sections, 2)`` for a unit step (scipy's)."""
    sos = np.asarray(sos, dtype=np.float64)
    zi = np.empty((len(sos), 2))
    scale = 1.0
    for s, (b, a) in enumerate(zip(sos[:, :3], sos[:, 3:], strict=True)):
        b, a = b / a[0], a / a[0]
        # Transposed direct form II at rest under a constant input: z = A z + B.
        companion = np.array([[-a[1], 1.0], [-a[2], 0.0]])
        zi[s] = np.linalg.solve(np.eye(2) - companion, b[1:] - a[1:] * b[0]) * scale
        scale *= b.sum() / a.sum()
    return zi


def sosfilt(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Filter a 1D signal through the sections (from rest), transposed direct form II."""
    y = np.asarray(x, dtype=np.float64).copy()
    for b0, b1, b2, a0, a1, a2 in np.asarray(sos, dtype=np.float64):
        b0, b1, b2, a1, a2 = b0 / a0, b1 / a0, b2 / a0, a1 / a0, a2 / a0
        z1 = z2 = 0.0
        out = np.empty_like(y)
        for i, u in enumerate(y.tolist()):
            v = b0 * u + z1
            z1 = b1 * u - a1 * v + z2
            z2 = b2 * u - a2 * v
            out[i] = v
        y = out
    return y


def sosfreqz(sos: np.ndarray, worN: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """``(w, h)``: the response at `worN` frequencies in [0, pi), as scipy's default."""
    w = np.pi * np.arange(worN) / worN
    z = np.exp(-1j * w)
    h = np.ones(worN, dtype=complex)
    for b0, b1, b2, a0, a1, a2 in np.asarray(sos, dtype=np.float64):
        h *= (b0 + b1 * z + b2 * z * z) / (a0 + a1 * z + a2 * z * z)
    return w, h
