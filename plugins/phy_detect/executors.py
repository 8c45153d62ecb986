"""Where chunk jobs run: in this process, in local processes, or on a Dask cluster.

Every executor has `imap(func, jobs)`, which yields the results in job
order while keeping at most `max_in_flight` jobs submitted: results are
consumed (written to disk) as they come, so memory stays bounded however
long the recording is. `warm_up(func, *args)` asks every worker to run
``func(*args)`` once, in the background, before the jobs submitted after
it: the workers' cold start (imports, numba caches, opening the recording)
then overlaps with the caller's own preparation.

Local worker processes are forked from a forkserver (where available) that
has imported the detection modules and loaded their numba kernels once
(`phy_detect.preload`): each worker no longer spends ~1 s of CPU loading
them itself. The workers are started from a background thread, so the
caller goes on with its own preparation while they start.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from phy_core.errors import PhyError


def _init_worker() -> None:
    # One numba thread per process: the processes already use every core, and
    # oversubscribing threads makes each chunk slower.
    import sys

    # Before numba's import only: once imported (e.g. by a script re-imported under
    # 'spawn'), changing the variable breaks its next compilation; set_num_threads suffices.
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = "1"
    try:
        import numba

        numba.set_num_threads(1)
    except Exception:  # numba missing or already initialised: leave it
        pass
    # One BLAS thread too (the projection on the PCs): threads that spin while the
    # other workers hold the cores only slow every process down.
    import numpy  # noqa: F401  (loads the BLAS library, so it can be found)

    for _, set_threads in _openblas_thread_controls():
        set_threads(1)


_BLAS_THREADS = (("openblas_get_num_threads", "openblas_set_num_threads"),
                 ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                 ("openblas_get_num_threads64_", "openblas_set_num_threads64_"))


def _openblas_thread_controls() -> list[tuple[Callable, Callable]]:
    """(get, set) thread-count functions of the OpenBLAS libraries loaded in this process."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:  # not Linux: leave BLAS alone
        return []
    controls = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _BLAS_THREADS:
            get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and set_ is not None:
                controls.append((get, set_))
                break
    return controls


@contextlib.contextmanager
def single_blas_thread():
    """Run the block with one OpenBLAS thread (Linux; elsewhere a no-op).

    Small LAPACK calls in the parent (the batched per-channel ``eigh`` of the
    PCA fit) gain nothing from threads, and while the workers keep every core
    busy, OpenBLAS's spinning threads made one such call take seconds
    instead of tens of milliseconds.
    """
    controls = _openblas_thread_controls()
    previous = [get() for get, _ in controls]
    for _, set_ in controls:
        set_(1)
    try:
        yield
    finally:
        for (_, set_), n in zip(controls, previous, strict=True):
            set_(n)


def _ordered(submit: Callable, wait: Callable, func, jobs, max_in_flight: int) -> Iterator:
    pending: deque = deque()
    try:
        for job in jobs:
            pending.append(submit(func, job))
            if len(pending) >= max_in_flight:
                yield wait(pending.popleft())
        while pending:
            yield wait(pending.popleft())
    finally:
        # The caller stopped early (the PCA fit has its spikes): cancel the jobs not
        # started yet, so they do not hold the workers back from the next pass.
        for future in pending:
            future.cancel()


class SerialExecutor:
    """Run jobs one after the other in this process (for debugging and tests)."""

    name = "serial"
    #: Jobs run on this machine: they can hand results over in shared memory.
    local_workers = True
    #: At most this many jobs are submitted and not yet consumed.
    max_in_flight = 1

    def imap(self, func: Callable, jobs: Iterable) -> Iterator:
        for job in jobs:
            yield func(job)

    def warm_up(self, func: Callable, *args: Any) -> list:
        """Nothing to do: this process is warmed up by the first job."""
        return []

    def close(self) -> None:
        pass


def _init_and_warm_up(func: Callable, args: tuple) -> None:
    _init_worker()
    try:
        func(*args)
    except Exception:  # best effort: a failing initializer would break the pool
        pass


def _nothing() -> None:
    pass


#: The module the forkserver imports before forking workers (`phy_detect.preload`).
PRELOAD_MODULE = "phy_detect.preload"


def _process_context():
    """The multiprocessing context of the workers: 'forkserver' if available, else 'spawn'.

    Neither forks this process: a fork would inherit its threads (numba, HDF5,
    BLAS) in whatever state they are. The forkserver is a fresh, single-threaded
    interpreter that preloads `PRELOAD_MODULE` (once per process: it is shared
    by every pool and stays up) and forks each worker from there.
    """
    from multiprocessing import get_all_start_methods, get_context

    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    context.set_forkserver_preload([PRELOAD_MODULE])  # applies when the server starts
    return context


class ProcessExecutor:
    """Run jobs in local worker processes (all cores by default)."""

    name = "processes"
    local_workers = True

    def __init__(self, n_workers: int | None = None) -> None:
        self.n_workers = n_workers or os.cpu_count() or 1
        self.max_in_flight = 2 * self.n_workers
        self._pool = self._make_pool(_init_worker, ())
        self._started = False  # the pool starts its processes at the first submission
        self._starter: threading.Thread | None = None

    def _make_pool(self, initializer: Callable, initargs: tuple):
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(self.n_workers, mp_context=_process_context(),
                                   initializer=initializer, initargs=initargs)

    def warm_up(self, func: Callable, *args: Any) -> list:
        """Run ``func(*args)`` once in every worker, without waiting; its futures.

        Before the first job, it becomes part of the workers' initializer and
        the workers start now (one empty job each), so every worker runs it
        exactly once; on running workers, it is submitted once per worker.
        Starting a worker waits for the forkserver to be ready (its preload,
        the first time): a background thread does it, and jobs submitted
        meanwhile queue behind it.
        """
        if not self._started:
            self._pool.shutdown(wait=False)  # no process was started: nothing to wait for
            self._pool = self._make_pool(_init_and_warm_up, (func, args))
            self._started = True
            futures = [Future() for _ in range(self.n_workers)]
            self._starter = threading.Thread(target=_start_workers, args=(self._pool, futures),
                                             name="phy-start-workers", daemon=True)
            self._starter.start()
            return futures
        return [self._pool.submit(func, *args) for _ in range(self.n_workers)]

    def imap(self, func: Callable, jobs: Iterable) -> Iterator:
        self._started = True
        return _ordered(self._pool.submit, lambda f: f.result(), func, jobs,
                        max_in_flight=self.max_in_flight)

    def close(self) -> None:
        if self._starter is not None:
            self._starter.join()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _start_workers(pool, futures: list[Future]) -> None:
    """Start `pool`'s workers with one empty job each; `futures` follow those jobs."""
    for future in futures:
        try:
            submitted = pool.submit(_nothing)
        except Exception as e:  # the pool was shut down, or a worker could not start
            future.set_exception(e)
            continue
        submitted.add_done_callback(lambda done, future=future: _copy_result(done, future))


def _copy_result(source: Future, target: Future) -> None:
    if source.cancelled():
        target.cancel()
        target.set_running_or_notify_cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


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
    #: Jobs may run on threads of this process (a local cluster): the parent must not
    #: change process-wide settings such as the BLAS thread count while they run.
    runs_jobs_in_threads = True

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

    def warm_up(self, func: Callable, *args: Any) -> list:
        """No-op: Dask workers are long-lived and warm after their first job."""
        return []

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
