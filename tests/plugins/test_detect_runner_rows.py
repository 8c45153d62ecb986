"""The runner's PCA excerpts as main-pass chunks, and the .kwx rows in shared memory."""

import numpy as np
import pytest

from phy_detect.chunks import plan_chunks_with
from phy_detect.executors import SerialExecutor
from phy_detect.runner import _kwx_rows, detect
from phy_detect.shared_rows import RowSlots, remove_stale_slots, shared_memory_available
from phy_detect.threshold import excerpts
from phy_kwik.model import KwikModel
from phy_synthetic.recording import synthesize_recording


@pytest.mark.parametrize("n_samples, chunk_size, margin, ranges", [
    (100, 30, 5, [(0, 10), (40, 50), (90, 100)]),
    (100, 7, 3, [(13, 40)]),          # a range longer than the chunk size
    (50, 100, 0, [(5, 6)]),
    (10, 3, 20, []),
])
def test_ranges_become_chunks_and_the_keep_ranges_tile(n_samples, chunk_size, margin, ranges):
    chunks = plan_chunks_with(n_samples, chunk_size, margin, ranges)
    kept = np.concatenate([np.arange(c.keep_start, c.keep_stop) for c in chunks])
    np.testing.assert_array_equal(kept, np.arange(n_samples))
    keeps = [(c.keep_start, c.keep_stop) for c in chunks]
    assert all(r in keeps for r in ranges)
    longest = max([chunk_size] + [b - a for a, b in ranges])
    for i, c in enumerate(chunks):
        assert c.index == i and 0 < c.keep_stop - c.keep_start <= longest
        assert (c.load_start, c.load_stop) == (max(c.keep_start - margin, 0),
                                               min(c.keep_stop + margin, n_samples))
    # Each gap between ranges: the fewest pieces <= chunk_size, equal within a sample.
    edges = [0] + [x for r in ranges for x in r] + [n_samples]
    for start, stop in zip(edges[::2], edges[1::2]):
        pieces = [c.keep_stop - c.keep_start for c in chunks
                  if start <= c.keep_start < stop]
        assert sum(pieces) == stop - start
        assert len(pieces) == -(-(stop - start) // chunk_size)
        assert not pieces or max(pieces) - min(pieces) <= 1
    with pytest.raises(ValueError, match="sorted"):
        plan_chunks_with(100, 10, 0, [(50, 60), (10, 20)])
    with pytest.raises(ValueError, match="inside"):
        plan_chunks_with(100, 10, 0, [(90, 101)])


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory):
    """4 s recorded, 3 PCA excerpts of 14999 samples (0.5 s): the excerpts do not tile
    the recording, and the last chunk is 1 sample long (no spike)."""
    folder = tmp_path_factory.mktemp("rec")
    synthesize_recording(folder, name="rec", probe="linear32", duration_s=4.0, seed=5)
    prm = (folder / "rec.prm").read_text()
    prm = prm.replace("n_excerpts=50", "n_excerpts=3")
    prm = prm.replace("excerpt_size_seconds=1", f"excerpt_size_seconds={14999 / 30000!r}")
    assert "n_excerpts=3" in prm and "excerpt_size_seconds=0.49996" in prm
    (folder / "rec.prm").write_text(prm)
    return folder


def _run(folder, out, **kwargs):
    kwargs.setdefault("executor", SerialExecutor())
    return detect(folder / "rec.prm", output_dir=out, chunk_size_s=1.0, **kwargs)


def _features_masks(kwik) -> np.ndarray:
    import h5py

    with h5py.File(kwik.with_suffix(".kwx"), "r") as f:
        return f["/channel_groups/0/features_masks"][...]


def test_pca_excerpts_are_chunks_whose_detections_the_main_pass_reuses(long_recording,
                                                                       tmp_path, monkeypatch):
    from phy_detect import runner, worker

    assert excerpts(120000, 3, 14999)[-1] == (105000, 119999)
    reused = []
    features_at_times = worker.features_at_times
    monkeypatch.setattr(worker, "features_at_times",
                        lambda setup, chunk, *args: reused.append(
                            (chunk.keep_start, chunk.keep_stop))
                        or features_at_times(setup, chunk, *args))
    kwik = _run(long_recording, tmp_path / "a")
    # Every excerpt the fit used was a chunk: its spikes were not detected again.
    assert reused == excerpts(120000, 3, 14999)
    fit_pca = runner._fit_pca
    monkeypatch.setattr(runner, "_fit_pca", lambda *args: (fit_pca(*args)[0], {}))
    again = _run(long_recording, tmp_path / "b")  # every chunk detected in the main pass
    assert len(reused) == 3
    a, b = KwikModel(kwik), KwikModel(again)
    assert a.n_spikes > 50
    np.testing.assert_array_equal(a.spike_samples_fractional, b.spike_samples_fractional)
    np.testing.assert_array_equal(_features_masks(kwik), _features_masks(again))


def test_rows_in_shared_memory_equal_the_rows_sent_inline(long_recording, tmp_path,
                                                          monkeypatch):
    from phy_detect import runner, shared_rows

    if not shared_rows.shared_memory_available():
        pytest.skip("no /dev/shm")
    slots = []
    row_slots = runner._row_slots
    monkeypatch.setattr(runner, "_row_slots",
                        lambda *args: slots.append(row_slots(*args)) or slots[-1])
    shared = _features_masks(_run(long_recording, tmp_path / "shm"))
    assert slots[-1] is not None
    # Slots too small: chunks' rows come inline, and the slots grow.
    sizes = []
    release = shared_rows.RowSlots.release
    monkeypatch.setattr(shared_rows.RowSlots, "release", lambda self, job, needed=0: (
        sizes.append(needed), release(self, job, needed))[1])
    monkeypatch.setattr(runner, "_row_slots", lambda executor, *args: slots.append(
        shared_rows.RowSlots(executor.max_in_flight, 4096)) or slots[-1])
    grown = _features_masks(_run(long_recording, tmp_path / "grown"))
    assert max(sizes) > 4096  # at least one chunk's rows did not fit
    # No shared memory (as on Dask): features and masks inline, rows made here.
    monkeypatch.setattr(runner, "_row_slots", lambda *args: slots.append(row_slots(*args))
                        or slots[-1])
    monkeypatch.setattr(shared_rows, "shared_memory_available", lambda: False)
    inline = _features_masks(_run(long_recording, tmp_path / "inline"))
    assert slots[-1] is None and len(shared) > 50
    assert shared.tobytes() == inline.tobytes() == grown.tobytes()
    # Worker processes (slots mapped in other processes): test_detect_runner.py's
    # test_processes_and_dask_give_the_same_result.


class _NotBuiltinPCA:
    """A features stage other than the built-in PCA (the generic path)."""

    def __init__(self, pca):
        self.pca = pca

    def transform(self, waveforms):
        return self.pca.transform(waveforms)


@pytest.mark.parametrize("rows", [slice(2, 9), np.array([4, 3, 5, 8, 6, 7]),
                                  np.array([0, 39]), np.array([], dtype=np.int64)])
def test_worker_rows_equal_the_runner_rows(rows):
    from phy_core.bunch import Bunch
    from phy_detect.pca import PCA
    from phy_detect.shared_rows import RowSlots, shared_memory_available
    from phy_detect.worker import write_kwx_rows

    rng = np.random.default_rng(4)
    waveforms = rng.standard_normal((40, 12, 5)).astype(np.float32)
    pca = PCA(3)
    pca.fit(waveforms)
    n = len(np.arange(40)[rows])
    masks = rng.uniform(0, 1, (n, 5)).astype(np.float32) * (rng.uniform(0, 1, (n, 5)) > 0.5)
    expected = np.frombuffer(_kwx_rows(pca.transform(waveforms[rows]).reshape(n, 15), masks,
                                       5, 3), np.float32).reshape(n, 15, 2) \
        if n else np.zeros((0, 15, 2), np.float32)
    for stage in (pca, _NotBuiltinPCA(pca)):
        out = write_kwx_rows(Bunch(), stage, waveforms, rows, masks, None)
        assert out.rows.tobytes() == expected.tobytes()
        if not shared_memory_available():
            continue
        slots = RowSlots(1, 4096)
        try:
            slot = slots.take(0)
            assert slots.take(1) is None  # job 0 has not released the only slot
            out = write_kwx_rows(Bunch(), stage, waveforms, rows, masks, slot)
            assert out.n_rows == n and "rows" not in out
            assert bytes(slots.rows(0, slot, n * 15 * 2 * 4)) == expected.tobytes()
            slots.release(0)
            assert slots.take(1) == slot
        finally:
            slots.close()


@pytest.mark.skipif(not shared_memory_available(), reason="no /dev/shm")
def test_slots_of_a_killed_run_are_removed_by_the_next_run():
    import os
    import signal
    import subprocess
    import sys

    # A real process makes its slots, then is killed as SIGKILL would (no clean-up).
    code = ("import sys, time\nfrom phy_detect.shared_rows import RowSlots\n"
            "slots = RowSlots(2, 4096)\nprint(slots.directory, flush=True)\ntime.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        directory = child.stdout.readline().strip()
        assert os.path.isdir(directory) and os.listdir(directory)
        assert directory not in remove_stale_slots()  # its process is alive: kept
        assert os.path.isdir(directory)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert os.path.isdir(directory)  # left behind by the kill
    ours = RowSlots(1, 4096)  # the next run cleans up
    try:
        assert not os.path.exists(directory)
        assert os.path.isdir(ours.directory)
    finally:
        ours.close()
