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
