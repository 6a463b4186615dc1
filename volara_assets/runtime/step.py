"""One step over many blocks: scheduling on a block executor, progress, statistics, failures.

Nothing here knows Dagster: the Dagster layer turns a :class:`StepReport` into
materializations (:mod:`volara_assets.orchestration.steps`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from ..geometry import BlockGrid
from .executors import run_blocks

#: Seconds between two progress lines.
PROGRESS_EVERY_SECONDS = 10.0


@dataclass
class StepReport:
    """What a step did, per partition.

    ``stats[key]`` sums the counts the job returned for the partition's finished
    blocks (``blocks``, ``seconds`` and the job's own fields, e.g. ``fragments``);
    ``failures`` lists ``(block key, error)`` for every block that raised.
    """

    partitions: list[str]
    blocks_of: dict[str, list[int]]
    stats: dict[str, dict[str, float]]
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total_blocks(self) -> int:
        return sum(len(b) for b in self.blocks_of.values())

    @property
    def complete(self) -> list[str]:
        """Partitions all of whose blocks succeeded, in run order."""
        return [k for k in self.partitions if self.stats[k]["blocks"] == len(self.blocks_of[k])]

    def totals(self, fields: Sequence[str]) -> dict[str, int]:
        """The sum of each of ``fields`` over the partitions."""
        return {f: int(sum(self.stats[k].get(f, 0) for k in self.partitions)) for f in fields}

    def failure_text(self, shown: int = 20) -> str:
        """Every failed block with its error (the first ``shown``), for a run's failure message."""
        lines = "\n".join(f"  {b}: {e}" for b, e in self.failures[:shown])
        more = len(self.failures) - shown
        head = (
            f"{len(self.failures)} of {self.total_blocks} blocks failed; "
            f"{len(self.complete)} of {len(self.partitions)} partitions completed "
            "and were recorded."
        )
        return f"{head}\n{lines}" + (f"\n  ... and {more} more" if more > 0 else "")


def run_step(
    grid: BlockGrid,
    job: Callable[[int], dict[str, Any]],
    partition_keys: Sequence[str],
    executor: Executor,
    *,
    max_in_flight: int,
    log: Callable[[str], None] = lambda _: None,
    log_error: Callable[[str], None] | None = None,
    progress_every: float = PROGRESS_EVERY_SECONDS,
) -> StepReport:
    """Run ``job`` on every block of ``partition_keys``; never raises for a failing block.

    Parameters
    ----------
    grid : BlockGrid
        Gives the blocks of each partition.
    job : callable
        ``job(block_index) -> dict`` of counts; picklable for process and Dask executors.
    partition_keys : sequence of str
    executor : concurrent.futures.Executor
        Runs the blocks (serial, process pool or Dask).
    max_in_flight : int
        Blocks submitted at once (bounds memory).
    log : callable
        Receives progress lines (blocks done / total, blocks per second, time left)
        every ``progress_every`` seconds and at the end.
    log_error : callable, optional
        Receives one line per failed block (default: ``log``).

    Returns
    -------
    StepReport
    """
    keys = list(partition_keys)
    blocks_of = {k: [b.index for b in grid.partition_blocks(k)] for k in keys}
    key_of = {i: k for k, ids in blocks_of.items() for i in ids}
    report = StepReport(keys, blocks_of, {k: {"blocks": 0} for k in keys})
    items = [i for k in keys for i in blocks_of[k]]
    total, done = len(items), 0
    start = last_log = time.perf_counter()
    for outcome in run_blocks(executor, job, items, max_in_flight=max_in_flight):
        done += 1
        if outcome.error is not None:
            block_key = grid.block(outcome.item).key
            report.failures.append((block_key, outcome.error))
            (log_error or log)(f"block {block_key} failed: {outcome.error}")
        else:
            s = report.stats[key_of[outcome.item]]
            s["blocks"] += 1
            # Seconds come from the executor, which times every block the same way.
            for name, value in {**outcome.result, "seconds": outcome.seconds}.items():
                s[name] = s.get(name, 0) + value
        now = time.perf_counter()
        if now - last_log > progress_every or done == total:
            rate = done / max(now - start, 1e-9)
            eta = (total - done) / rate if rate else float("inf")
            failed = f", {len(report.failures)} failed" if report.failures else ""
            log(f"{done}/{total} blocks, {rate:.2f} blocks/s, ETA {eta:.0f} s{failed}")
            last_log = now
    return report
