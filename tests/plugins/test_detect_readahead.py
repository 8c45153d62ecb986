"""The runner's read-ahead (`phy_detect.readahead`): real page-cache state, asked of the kernel."""

import mmap
import os
import time

import numpy as np
import pytest

from phy_detect import readahead
from phy_detect.chunks import Chunk
from phy_detect.readahead import ReadAhead

pytestmark = pytest.mark.skipif(readahead._MINCORE is None, reason="no posix_fadvise/mincore")

N_CHANNELS, CHUNK = 64, 4096  # 512 KB per chunk


def _uncached_recording(path, n_chunks=6):
    data = np.arange(n_chunks * CHUNK * N_CHANNELS, dtype=np.int16).reshape(-1, N_CHANNELS)
    with open(path, "wb") as f:
        f.write(data.tobytes())
        f.flush()
        os.fsync(f.fileno())  # clean pages can be dropped
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    traces = np.memmap(path, np.int16, "r", shape=data.shape)
    chunks = [Chunk(i, i * CHUNK, (i + 1) * CHUNK, max(0, i * CHUNK - 100),
                    min(len(data), (i + 1) * CHUNK + 100)) for i in range(n_chunks)]
    return data, traces, chunks


def _cached(ahead: ReadAhead, chunk: Chunk) -> float:
    return ahead._resident(chunk.load_start, chunk.load_stop)


def _wait_cached(ahead, chunk, timeout=5.0) -> float:
    t0 = time.monotonic()
    while (fraction := _cached(ahead, chunk)) < 1.0 and time.monotonic() - t0 < timeout:
        time.sleep(0.01)
    return fraction


def test_chunks_are_read_ahead_and_dropped_after_use(tmp_path):
    data, traces, chunks = _uncached_recording(tmp_path / "rec.dat")
    ahead = ReadAhead(traces, chunks, ahead=2)
    try:
        if max(_cached(ahead, c) for c in chunks) > 0:
            pytest.skip("this file system keeps its pages (tmpfs)")
        ahead.submitted(0)  # chunks 0, 1, 2 are read ahead, in the background
        assert [_wait_cached(ahead, c) for c in chunks[:3]] == [1.0, 1.0, 1.0]
        assert _cached(ahead, chunks[4]) < 0.5  # not asked for yet
        # Read as a worker does, its mapping released after (`phy_core.arrays.release_pages`):
        # mapped pages would not be dropped.
        first = chunks[0]
        np.testing.assert_array_equal(np.array(traces[first.load_start:first.load_stop]),
                                      data[first.load_start:first.load_stop])
        traces._mmap.madvise(mmap.MADV_DONTNEED)
        ahead.done(0)  # dropped, but for the margin chunk 1 also reads
        # (but for the page partly in the range: the kernel drops whole pages only)
        assert _cached(ahead, Chunk(0, 0, 0, 0, chunks[1].load_start - 8)) < 0.02
        assert _cached(ahead, chunks[1]) == 1.0
        ahead.submitted(1)
        assert _wait_cached(ahead, chunks[3]) == 1.0
    finally:
        ahead.close()


def test_a_recording_already_cached_stays_cached(tmp_path):
    data, traces, chunks = _uncached_recording(tmp_path / "rec.dat", n_chunks=3)
    assert int(np.asarray(traces).sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))
    ahead = ReadAhead(traces, chunks)
    try:
        assert _cached(ahead, chunks[0]) == 1.0  # read above
        ahead.submitted(0)
        for j in range(3):
            ahead.done(j)
        assert [_cached(ahead, c) for c in chunks] == [1.0, 1.0, 1.0]
    finally:
        ahead.close()


def test_no_advice_but_for_one_flat_file(tmp_path):
    _, traces, chunks = _uncached_recording(tmp_path / "rec.dat", n_chunks=2)
    for not_a_file in (np.asarray(traces), traces[:, :8], None):
        ahead = ReadAhead(not_a_file, chunks)
        assert ahead._fd is None and ahead._resident(0, 100) == 0.0
        ahead.submitted(0)
        ahead.done(0)  # no error, nothing to do
        ahead.close()
