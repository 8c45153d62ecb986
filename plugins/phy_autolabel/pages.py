"""A bound on the file pages that reads of a memory map leave mapped in this process.

Reading a memory-mapped file maps its pages into the process (resident,
file-backed: they count in its RSS) until they are unmapped
(`phy_core.arrays.release_pages`; the data stay in the page cache). How much a
read maps is not how many bytes it asks for: on a page fault Linux also maps the
neighbouring pages already in the page cache ("fault-around", 64 KB by
default; more with large folios). Gathering 96 bytes of each of 16,384 spikes
spread over the 4.4 GB ``.kwx`` of a 200 s, 1024-channel recording mapped
1.2 GB (74 KB per spike, where an estimate from the bytes read said 8 KB):
`PageBudget` therefore measures what is mapped (``/proc/self/statm``) instead
of estimating it, and releases the pages once they exceed a budget.
"""

from __future__ import annotations

import mmap

from phy_core.arrays import release_pages

_PAGE_BYTES = mmap.PAGESIZE


def mapped_file_bytes() -> int | None:
    """Bytes of file-backed (and shared) pages mapped in this process, resident; None where
    ``/proc/self/statm`` cannot be read (not Linux)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


class PageBudget:
    """Release the pages of a memory map once reads have mapped `limit` bytes more than this
    process had mapped after the last release.

    Call `read` after each read of `array` (in blocks small enough that one block maps
    much less than `limit`): the process then maps at most about `limit` plus one block
    more file pages than its lowest count since the last release. A small file stays
    mapped whole (its pages are read again and again: each release costs page faults).
    Where the mapped pages cannot be measured, the reads' estimates count instead.

    Parameters
    ----------
    array : array
        What `release_pages` releases (a `numpy.memmap`, or arrays over one).
    limit : int
        Bytes of mapped pages allowed before they are released.
    """

    def __init__(self, array, limit: int) -> None:
        self.array = array
        self.limit = int(limit)
        self.n_releases = 0
        self._low = mapped_file_bytes()
        self._estimated = 0

    def read(self, estimate: int = 0) -> None:
        """After a read of `array`; `estimate`: the bytes it mapped, when they cannot be
        measured."""
        now = mapped_file_bytes()
        if now is None or self._low is None:
            self._estimated += int(estimate)
            over = self._estimated > self.limit
        else:
            # The lowest count since the release: other mappings' pages released
            # meanwhile (e.g. the raw traces' after reading waveforms) do not count.
            self._low = min(self._low, now)
            over = now - self._low > self.limit
        if over:
            self.release()

    def release(self) -> None:
        """Unmap the pages of `array` now."""
        release_pages(self.array)
        self.n_releases += 1
        self._estimated = 0
        self._low = mapped_file_bytes()
