"""Where chunk jobs run: in this process, in local processes, or on a Dask cluster.

Every executor has one method, `imap(func, jobs)`, which yields the results
in job order while keeping at most `max_in_flight` jobs submitted: results
are consumed (written to disk) as they come, so memory stays bounded
however long the recording is.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from phy_core.errors import PhyError


def _init_worker() -> None:
    # One numba thread per process: the processes already use every core, and
    # oversubscribing threads makes each chunk slower.
    os.environ["NUMBA_NUM_THREADS"] = "1"
    try:
        import numba

        numba.set_num_threads(1)
    except Exception:  # numba missing or already initialised: leave it
        pass


def _ordered(submit: Callable, wait: Callable, func, jobs, max_in_flight: int) -> Iterator:
    pending: deque = deque()
    for job in jobs:
        pending.append(submit(func, job))
        if len(pending) >= max_in_flight:
            yield wait(pending.popleft())
    while pending:
        yield wait(pending.popleft())


class SerialExecutor:
    """Run jobs one after the other in this process (for debugging and tests)."""

    name = "serial"

    def imap(self, func: Callable, jobs: Iterable) -> Iterator:
        for job in jobs:
            yield func(job)

    def close(self) -> None:
        pass


class ProcessExecutor:
    """Run jobs in local worker processes (all cores by default)."""

    name = "processes"

    def __init__(self, n_workers: int | None = None) -> None:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        self.n_workers = n_workers or os.cpu_count() or 1
        # 'spawn' does not inherit the parent's threads (numba, HDF5) in a forked state.
        self._pool = ProcessPoolExecutor(self.n_workers, mp_context=get_context("spawn"),
                                         initializer=_init_worker)

    def imap(self, func: Callable, jobs: Iterable) -> Iterator:
        return _ordered(self._pool.submit, lambda f: f.result(), func, jobs,
                        max_in_flight=2 * self.n_workers)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Run jobs on a Dask cluster (``dask.distributed``), or on a local one.

    Parameters
    ----------
    scheduler : str or None
        The scheduler's address (``tcp://host:8786``). None starts a local
        cluster in this process (threads), which tests use.
    client : dask.distributed.Client or None
        An existing client to use instead.

    Workers must see the recording's files at the same paths.
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, client: Any = None,
                 n_workers: int | None = None) -> None:
        try:
            from dask.distributed import Client
        except ImportError:
            raise PhyError(
                "Dask is not installed: `pip install phy[dask]` (dask.distributed) to run on "
                "a cluster."
            ) from None
        self._own_client = client is None
        if client is not None:
            self.client = client
        elif scheduler:
            self.client = Client(scheduler)
        else:
            self.client = Client(processes=False, n_workers=1,
                                 threads_per_worker=n_workers or os.cpu_count() or 1)
        n = sum(self.client.nthreads().values()) or 1
        self.max_in_flight = 2 * n

    def imap(self, func: Callable, jobs: Iterable) -> Iterator:
        return _ordered(lambda f, job: self.client.submit(f, job, pure=False),
                        lambda future: future.result(), func, jobs, self.max_in_flight)

    def close(self) -> None:
        if self._own_client:
            self.client.close()


def make_executor(kind: str = "processes", n_workers: int | None = None,
                  scheduler: str | None = None):
    """An executor by name: ``'processes'`` (default), ``'serial'``, or ``'dask'``.

    A `scheduler` address implies ``'dask'``.
    """
    if scheduler:
        kind = "dask"
    if kind == "serial":
        return SerialExecutor()
    if kind == "processes":
        if n_workers == 1:
            return SerialExecutor()
        return ProcessExecutor(n_workers)
    if kind == "dask":
        return DaskExecutor(scheduler, n_workers=n_workers)
    raise PhyError(f"Unknown executor {kind!r}: use 'processes', 'serial' or 'dask'.")
