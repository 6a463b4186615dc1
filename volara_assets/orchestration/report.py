"""Command-line helpers around a pipeline: its partition range and a run summary.

``python -m volara_assets.orchestration.report range PIPELINE.yaml`` prints ``FIRST...LAST`` for
``dagster asset materialize --partition-range``; ``summary`` prints blocks,
fragments, edges, segments, VOI/ARE against the ground truth (when configured)
and the seconds each step took in the latest runs of the Dagster instance.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from ..config import PipelineConfig
from ..ops.metrics import evaluate
from ..runtime.bound import BoundPipeline


def partition_range(config: PipelineConfig) -> str:
    keys = BoundPipeline(config).grid.partition_keys
    return f"{keys[0]}...{keys[-1]}"


def step_seconds(pipeline_name: str, runs: int = 20) -> dict[str, float]:
    """Seconds per step (asset op) summed over the instance's latest successful runs.

    Only the newest run of each step counts, so rerunning a step does not add up.
    """
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    instance = DagsterInstance.get()
    seen: dict[str, float] = {}
    records = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.SUCCESS]), limit=runs)
    for run in records:  # newest first
        for stat in instance.get_run_step_stats(run.run_id):
            step = stat.step_key
            if stat.start_time is None or stat.end_time is None or step in seen:
                continue
            if step.startswith(f"{pipeline_name}__"):
                seen[step] = stat.end_time - stat.start_time
    return seen


def summary(config: PipelineConfig) -> dict[str, Any]:
    pipeline = BoundPipeline(config)
    store = pipeline.graph.store()
    out: dict[str, Any] = {
        "blocks": pipeline.grid.num_blocks,
        "partitions": len(pipeline.grid.partition_keys),
        "fragments": store.count_nodes(),
        "edges": store.count_edges(),
    }
    roi = pipeline.grid.volume_roi
    segments = pipeline.segments.read(roi)
    out["segments"] = int(np.unique(segments[segments != 0]).size)
    if pipeline.ground_truth is not None:
        out.update(evaluate(segments, pipeline.ground_truth.read(roi)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m volara_assets.orchestration.report")
    parser.add_argument("command", choices=["range", "summary"])
    parser.add_argument("pipeline", help="pipeline YAML file")
    args = parser.parse_args(argv)
    config = PipelineConfig.from_yaml(args.pipeline)
    if args.command == "range":
        print(partition_range(config))
        return 0
    result = summary(config)
    print(f"pipeline {config.name}: {config.affinities}")
    for name, value in result.items():
        print(
            f"  {name:>12}: {value:.4f}" if isinstance(value, float) else f"  {name:>12}: {value}"
        )
    seconds = step_seconds(config.name)
    for step, value in sorted(seconds.items()):
        print(f"  {step:>12}: {value:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
