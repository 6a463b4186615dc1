"""Block executors: run one step's blocks serially, in a process pool, or on a Dask cluster."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .config import ExecutorConfig


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


@contextmanager
def open_executor(config: ExecutorConfig) -> Iterator[Executor]:
    """An executor for ``config``; shut down (workers joined) on exit.

    ``processes`` uses the ``forkserver`` start method: workers do not inherit
    the Dagster process's threads and locks, and each worker imports the
    kernels once for all of its blocks.
    """
    if config.kind == "serial" or (config.kind == "processes" and config.num_workers == 1):
        yield _SerialExecutor()
    elif config.kind == "processes":
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["volara_assets.blocks"])
        with ProcessPoolExecutor(config.num_workers, mp_context=ctx) as pool:
            yield pool
    elif config.kind == "dask":
        from distributed import Client, LocalCluster

        if config.dask_address:
            with Client(config.dask_address) as client:
                yield client.get_executor()
        else:
            with (
                LocalCluster(
                    n_workers=config.num_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                ) as cluster,
                Client(cluster) as client,
            ):
                yield client.get_executor()
    else:  # pragma: no cover - pydantic rejects other kinds
        raise ValueError(f"executor.kind: unknown kind {config.kind!r}")


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
            except Exception as exc:  # noqa: BLE001 - reported per block
                yield BlockOutcome(item, error=f"{type(exc).__name__}: {exc}")
