"""Block executors: run one step's blocks serially, in a process pool, or on a Dask cluster."""

from __future__ import annotations

import atexit
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..config import ExecutorConfig


@dataclass
class BlockOutcome:
    """What happened to one item: its result, or the error text when it failed."""

    item: Any
    result: Any = None
    error: str | None = None
    seconds: float = 0.0


class _SerialExecutor(Executor):
    """Runs each task at submit time in this process (the default; easiest to debug)."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller via the future
            future.set_exception(exc)
        return future


def _timed(fn: Callable, item: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(item)
    return result, time.perf_counter() - start


# Started pools and clusters, kept for the life of the process: the steps of a run
# (fragments, edges, segments) share the workers instead of paying their start-up
# (interpreter, imports, numba cache load, Dask scheduler) once per step.
_SHARED: dict[ExecutorConfig, tuple[Executor, Callable[[], None]]] = {}


def _start(config: ExecutorConfig) -> tuple[Executor, Callable[[], None]]:
    """A new executor for ``config`` and the function that shuts it down."""
    if config.kind == "processes":
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["volara_assets.runtime.jobs"])
        pool = ProcessPoolExecutor(config.num_workers, mp_context=ctx)
        return pool, lambda: pool.shutdown(wait=True, cancel_futures=True)
    if config.kind == "dask":
        from distributed import Client, LocalCluster

        if config.dask_address:
            client = Client(config.dask_address)
            return client.get_executor(pure=False), client.close
        cluster = LocalCluster(
            n_workers=config.num_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
        client = Client(cluster)

        def close() -> None:
            client.close()
            cluster.close()

        # pure=False: a rerun of a block must run again, never reuse a cached result.
        return client.get_executor(pure=False), close
    raise ValueError(f"executor.kind: unknown kind {config.kind!r}")  # pragma: no cover


def _healthy(executor: Executor) -> bool:
    if isinstance(executor, ProcessPoolExecutor):
        return not getattr(executor, "_broken", False) and not getattr(
            executor, "_shutdown_thread", False
        )
    client = getattr(executor, "_client", None)
    return client is None or client.status == "running"


def shutdown_executors() -> None:
    """Shut down every shared pool and cluster (also run at interpreter exit)."""
    while _SHARED:
        _, (_, close) = _SHARED.popitem()
        try:
            close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(shutdown_executors)


@contextmanager
def open_executor(config: ExecutorConfig, *, shared: bool = True) -> Iterator[Executor]:
    """An executor for ``config``.

    ``processes`` uses the ``forkserver`` start method: workers do not inherit
    the Dagster process's threads and locks, and each worker imports the
    kernels once for all of its blocks. ``dask`` starts a ``LocalCluster`` of
    single-threaded worker processes, or connects to ``dask_address``.

    With ``shared`` (the default) the pool or cluster outlives the ``with``
    block and is reused by the next step with the same config, until
    :func:`shutdown_executors` or interpreter exit; a broken pool is replaced.
    Without it, the workers are shut down on exit.
    """
    if config.kind == "serial" or (config.kind == "processes" and config.num_workers == 1):
        yield _SerialExecutor()
        return
    if not shared:
        executor, close = _start(config)
        try:
            yield executor
        finally:
            close()
        return
    entry = _SHARED.get(config)
    if entry is not None and not _healthy(entry[0]):
        _SHARED.pop(config)
        entry[1]()
        entry = None
    if entry is None:
        entry = _SHARED[config] = _start(config)
    yield entry[0]


def run_blocks(
    executor: Executor,
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    max_in_flight: int = 8,
) -> Iterator[BlockOutcome]:
    """Run ``fn(item)`` for every item, yielding outcomes as they finish.

    At most ``max_in_flight`` items are submitted at a time, so memory is bounded
    by a few blocks whatever the number of items. A failing item does not stop
    the others: its outcome carries the error, and the caller decides.
    """
    pending: dict[Future, Any] = {}
    it = iter(items)
    exhausted = False
    while True:
        while not exhausted and len(pending) < max_in_flight:
            try:
                item = next(it)
            except StopIteration:
                exhausted = True
                break
            pending[executor.submit(_timed, fn, item)] = item
        if not pending:
            return
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            item = pending.pop(future)
            try:
                result, seconds = future.result()
                yield BlockOutcome(item, result=result, seconds=seconds)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - reported per block
                # BaseException: a kernel's Rust panic (pyo3's PanicException) is not an
                # Exception, and must fail its block, not the whole step.
                yield BlockOutcome(item, error=f"{type(exc).__name__}: {exc}")
