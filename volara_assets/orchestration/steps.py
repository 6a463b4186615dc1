"""A blockwise step as Dagster sees it: run the blocks, then outputs or a partial failure.

The block loop itself (:func:`volara_assets.runtime.step.run_step`) knows nothing
of Dagster; this module decides what Dagster records.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dagster import AssetExecutionContext, AssetKey, AssetMaterialization, Failure, Output

from ..geometry import BlockGrid
from ..runtime.step import run_step


def materialize_blocks(
    context: AssetExecutionContext,
    grid: BlockGrid,
    job: Any,
    outputs: Mapping[str, AssetKey],
    io_managers: Mapping[str, Any],
    summary_fields: Sequence[str],
) -> Iterator[Any]:
    """Run ``job`` on every block of the run's partitions; yield the outputs.

    Parameters
    ----------
    outputs : mapping
        Output name -> asset key.
    io_managers : mapping
        Output name -> its IO manager, which stores the per-partition metadata
        (and, on success, verifies the stored data in ``handle_output``).
    summary_fields : sequence of str
        The job's counts logged for the whole step.

    On success, each output gets the step's report (its IO manager records every
    partition). If any block fails, the partitions whose blocks all succeeded are
    still recorded as materialized, so a rerun of the missing partitions does not
    recompute them, then the step fails naming every failed block and its error.
    """
    executor = context.resources.block_executor
    keys = list(context.partition_keys)
    context.log.info(
        f"{sum(len(grid.partition_blocks(k)) for k in keys)} blocks in {len(keys)} partitions "
        f"on {executor.kind} x{executor.num_workers}"
    )
    with executor.open() as pool:
        report = run_step(
            grid,
            job,
            keys,
            pool,
            max_in_flight=max(2, 2 * executor.num_workers),
            log=context.log.info,
            log_error=context.log.error,
        )
    totals = report.totals(summary_fields)
    context.log.info(
        f"{report.total_blocks - len(report.failures)} of {report.total_blocks} blocks done: "
        + ", ".join(f"{v} {k}" for k, v in totals.items())
    )
    if report.failures:
        for k in report.complete:
            for name, asset_key in outputs.items():
                metadata = io_managers[name].partition_metadata(
                    asset_key.path[-1], k, report.stats[k]
                )
                yield AssetMaterialization(asset_key=asset_key, partition=k, metadata=metadata)
        raise Failure(
            description=report.failure_text(),
            metadata={"failed_blocks": [b for b, _ in report.failures]},
        )
    for name in outputs:
        yield Output(report, output_name=name)
