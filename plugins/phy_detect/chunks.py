"""Chunks of a recording: what each job loads and which of its spikes it keeps.

A job loads ``[load_start, load_stop)`` (its chunk plus a margin on each
side, clipped to the recording) and keeps only the spikes whose sample falls
in ``[keep_start, keep_stop)``. Consecutive keep ranges tile the recording
exactly, so every spike is counted once; the margin is wide enough that the
filtered signal, the thresholds crossings and the waveforms inside the keep
range are those of the whole recording, so the result does not depend on
the chunk size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    """One job's rows of the recording."""

    index: int
    keep_start: int
    keep_stop: int
    load_start: int
    load_stop: int

    @property
    def n_samples(self) -> int:
        return self.load_stop - self.load_start


def plan_chunks(n_samples: int, chunk_size: int, margin: int) -> list[Chunk]:
    """Cut ``[0, n_samples)`` into chunks of `chunk_size` samples with `margin` on each side.

    Raises
    ------
    ValueError
        If `chunk_size` < 1 or `margin` < 0.
    """
    if chunk_size < 1:
        raise ValueError(f"The chunk size must be at least 1 sample, got {chunk_size}.")
    if margin < 0:
        raise ValueError(f"The chunk margin must be >= 0 samples, got {margin}.")
    chunks = []
    for index, keep_start in enumerate(range(0, n_samples, chunk_size)):
        keep_stop = min(keep_start + chunk_size, n_samples)
        chunks.append(Chunk(index, keep_start, keep_stop, max(keep_start - margin, 0),
                            min(keep_stop + margin, n_samples)))
    return chunks



def plan_chunks_with(n_samples: int, chunk_size: int, margin: int,
                     ranges: Sequence[tuple[int, int]]) -> list[Chunk]:
    """Chunks as `plan_chunks`, whose keep ranges include each of `ranges` as one chunk.

    `ranges` (sorted, not overlapping, inside the recording: the PCA excerpts)
    become chunks of their own, so that a job that detected an excerpt's spikes
    has done a main-pass chunk's work too. Each gap between them is cut into
    the fewest equal pieces no longer than `chunk_size`. No chunk is longer
    than `chunk_size` or than the longest range.

    Raises
    ------
    ValueError
        As `plan_chunks`, or if `ranges` are not sorted, disjoint and inside
        ``[0, n_samples)``.
    """
    if chunk_size < 1:
        raise ValueError(f"The chunk size must be at least 1 sample, got {chunk_size}.")
    if margin < 0:
        raise ValueError(f"The chunk margin must be >= 0 samples, got {margin}.")
    bounds = [0]
    for start, stop in ranges:
        if not bounds[-1] <= start < stop <= n_samples:
            raise ValueError(f"Chunk ranges must be sorted, disjoint and inside [0, "
                             f"{n_samples}): got {list(ranges)}.")
        _cut_gap(bounds, start, chunk_size)
        bounds.append(stop)
    _cut_gap(bounds, n_samples, chunk_size)
    return [Chunk(index, keep_start, keep_stop, max(keep_start - margin, 0),
                  min(keep_stop + margin, n_samples))
            for index, (keep_start, keep_stop) in enumerate(zip(bounds[:-1], bounds[1:]))]


def _cut_gap(bounds: list[int], stop: int, chunk_size: int) -> None:
    """Append to `bounds` the ends of equal pieces <= `chunk_size` from ``bounds[-1]`` to `stop`."""
    start = bounds[-1]
    n_pieces = -(-(stop - start) // chunk_size)
    bounds.extend(start + (stop - start) * (i + 1) // n_pieces for i in range(n_pieces))
