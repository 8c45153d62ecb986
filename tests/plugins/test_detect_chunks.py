"""Chunk planning and executors of the detection runner."""

import numpy as np
import pytest

from phy_core.errors import PhyError
from phy_detect.chunks import plan_chunks
from phy_detect.executors import DaskExecutor, ProcessExecutor, SerialExecutor, make_executor


@pytest.mark.parametrize("n_samples, chunk_size, margin", [(100, 30, 5), (100, 100, 0),
                                                            (7, 3, 10), (0, 5, 1)])
def test_keep_ranges_tile_the_recording(n_samples, chunk_size, margin):
    chunks = plan_chunks(n_samples, chunk_size, margin)
    kept = np.concatenate([np.arange(c.keep_start, c.keep_stop) for c in chunks]) \
        if chunks else np.zeros(0)
    np.testing.assert_array_equal(kept, np.arange(n_samples))
    for c in chunks:
        assert c.load_start == max(c.keep_start - margin, 0)
        assert c.load_stop == min(c.keep_stop + margin, n_samples)
        assert c.n_samples == c.load_stop - c.load_start


def test_bad_chunk_parameters():
    with pytest.raises(ValueError, match="chunk size"):
        plan_chunks(10, 0, 1)
    with pytest.raises(ValueError, match="margin"):
        plan_chunks(10, 5, -1)


def _square(x):
    return x * x


def test_executors_give_results_in_order():
    jobs = list(range(20))
    expected = [j * j for j in jobs]
    assert list(SerialExecutor().imap(_square, jobs)) == expected
    executor = ProcessExecutor(2)
    try:
        assert list(executor.imap(_square, jobs)) == expected
    finally:
        executor.close()


def test_dask_executor_local_cluster():
    pytest.importorskip("dask.distributed")
    executor = DaskExecutor(n_workers=2)
    try:
        assert list(executor.imap(_square, range(10))) == [j * j for j in range(10)]
    finally:
        executor.close()


def test_make_executor():
    assert isinstance(make_executor("serial"), SerialExecutor)
    assert isinstance(make_executor("processes", n_workers=1), SerialExecutor)
    with pytest.raises(PhyError, match="Unknown executor"):
        make_executor("threads")


def _pid_after(path, delay):
    import os
    import time

    time.sleep(delay)
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return os.getpid()


def _log_job(job):
    return _pid_after(*job)


def _pid(_):
    import os

    return os.getpid()


def test_warm_up_runs_once_in_every_worker(tmp_path):
    log = tmp_path / "warm.txt"
    executor = ProcessExecutor(2)
    try:
        executor.warm_up(_pid_after, str(log), 0.3)
        pids = set(executor.imap(_pid, range(6)))
        # In the workers' initializer: done before any job of theirs.
        assert set(map(int, log.read_text().split())) >= pids
        # On running workers: submitted once per worker.
        for future in executor.warm_up(_pid_after, str(log), 0.3):
            future.result()
    finally:
        executor.close()
    warmed = log.read_text().split()
    # Both workers ran it in their initializer, plus the two submitted runs (which of
    # the workers takes those depends on the scheduling: under load, one may take both).
    assert len(warmed) == 4 and len(set(warmed)) == 2
    # No-ops elsewhere, and the jobs still run.
    serial = SerialExecutor()
    assert serial.warm_up(_pid_after, str(tmp_path / "never.txt"), 0) == []
    assert not (tmp_path / "never.txt").exists()
    assert list(serial.imap(_square, [3])) == [9]


def test_stopping_early_cancels_the_jobs_not_started(tmp_path):
    log = tmp_path / "ran.txt"
    executor = ProcessExecutor(1)
    try:
        results = executor.imap(_log_job, [(str(log), 0.2)] * 10)
        next(results)
        results.close()
        executor.close()
        # max_in_flight = 2: at most the call queue's jobs (n_workers + 1) ran after the
        # first; the other ones were cancelled.
        assert len(log.read_text().split()) <= 3
    finally:
        executor.close()


def test_single_blas_thread_restores_the_thread_count():
    from phy_detect.executors import _openblas_thread_controls, single_blas_thread

    controls = _openblas_thread_controls()
    before = [get() for get, _ in controls]
    a = np.random.default_rng(0).standard_normal((64, 8, 8))
    a = a @ a.transpose(0, 2, 1)
    expected = np.linalg.eigh(a)[1]
    with single_blas_thread():
        assert all(get() == 1 for get, _ in controls)
        # Same results with one thread.
        np.testing.assert_array_equal(np.linalg.eigh(a)[1], expected)
    assert [get() for get, _ in controls] == before


def _preloaded(_):
    import os
    import sys

    return os.getpid(), "phy_detect.preload" in sys.modules, "phy_detect.worker" in sys.modules


def test_workers_start_from_the_preloaded_forkserver():
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no forkserver on this platform")
    executor = ProcessExecutor(2)
    try:
        # Started in the background: warm_up returns at once, its futures complete.
        futures = executor.warm_up(_pid, None)
        assert len(futures) == 2
        for future in futures:
            future.result(timeout=60)
        results = list(executor.imap(_preloaded, range(4)))
    finally:
        executor.close()
    # Nothing in this job imports them: the workers were forked with them loaded.
    assert all(preload and worker for _, preload, worker in results)
    assert len({pid for pid, _, _ in results}) <= 2
