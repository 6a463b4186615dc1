"""The asset factory: one pipeline config becomes block-partitioned Dagster assets.

Asset graph (keys under the pipeline's name)::

    affinities --halo--> fragments, fragment_nodes --halo--> edges --> lut --> segments
         \\________________________halo______________________/           fragments --/

Every partitioned asset shares one ``StaticPartitionsDefinition`` whose keys are
the block grid's partitions; reads with a halo declare it with a
``StaticPartitionMapping`` (serialized, so the UI and daemon see it).
"""

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetMaterialization,
    AssetOut,
    AssetsDefinition,
    BackfillPolicy,
    Failure,
    MetadataValue,
    Output,
    SourceAsset,
    StaticPartitionMapping,
    StaticPartitionsDefinition,
    asset,
    multi_asset,
)

from .blocks import EdgesJob, FragmentsJob, SegmentsJob
from .config import PipelineConfig
from .executors import run_blocks
from .geometry import BlockGrid
from .io_managers import LutIOManager, SqlIOManager, ZarrIOManager
from .ops.agglomerate import agglomerate
from .ops.metrics import evaluate
from .pipeline import Pipeline
from .storage.handles import ArrayHandle, LutHandle
from .tables import EdgeTable, NodeTable

PROGRESS_EVERY_SECONDS = 10.0


@dataclass
class PipelineAssets:
    """What one pipeline contributes to ``Definitions``."""

    config: PipelineConfig
    pipeline: Pipeline
    partitions: StaticPartitionsDefinition
    assets: list[Any]
    asset_checks: list[Any] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)

    def key(self, name: str) -> AssetKey:
        return AssetKey([self.config.name, name])


def _run_step(
    context: AssetExecutionContext,
    grid: BlockGrid,
    job: Any,
    outputs: Mapping[str, AssetKey],
    summary_fields: tuple[str, ...],
) -> Iterator[Any]:
    """Run ``job`` on every block of the run's partitions; yield the outputs.

    Each partition gets its own metadata. If any block fails, the partitions
    whose blocks all succeeded are still recorded as materialized (so a rerun
    of the missing partitions does not recompute them), then the step fails
    naming every failed block and its error.
    """
    keys = list(context.partition_keys)
    blocks_of = {k: [b.index for b in grid.partition_blocks(k)] for k in keys}
    key_of = {i: k for k, ids in blocks_of.items() for i in ids}
    items = [i for k in keys for i in blocks_of[k]]
    stats: dict[str, dict[str, float]] = {k: {"blocks": 0} for k in keys}
    failures: list[tuple[str, str]] = []
    executor = context.resources.block_executor
    total, done = len(items), 0
    start = last_log = time.perf_counter()
    context.log.info(
        f"{total} blocks in {len(keys)} partitions on {executor.kind} x{executor.num_workers}"
    )
    with executor.open() as pool:
        in_flight = max(2, 2 * executor.num_workers)
        for outcome in run_blocks(pool, job, items, max_in_flight=in_flight):
            done += 1
            block_key = grid.block(outcome.item).key
            if outcome.error is not None:
                failures.append((block_key, outcome.error))
                context.log.error(f"block {block_key} failed: {outcome.error}")
            else:
                s = stats[key_of[outcome.item]]
                s["blocks"] += 1
                for name, value in outcome.result.items():
                    s[name] = s.get(name, 0) + value
            now = time.perf_counter()
            if now - last_log > PROGRESS_EVERY_SECONDS or done == total:
                rate = done / (now - start)
                eta = (total - done) / rate if rate else float("inf")
                context.log.info(
                    f"{done}/{total} blocks, {rate:.2f} blocks/s, ETA {eta:.0f} s"
                    + (f", {len(failures)} failed" if failures else "")
                )
                last_log = now

    def metadata(k: str) -> dict[str, Any]:
        s = stats[k]
        md: dict[str, Any] = {"blocks": int(s["blocks"])}
        for name in summary_fields:
            md[name] = int(s.get(name, 0))
        md["seconds"] = MetadataValue.float(round(float(s.get("seconds", 0.0)), 3))
        return md

    complete = [k for k in keys if stats[k]["blocks"] == len(blocks_of[k])]
    if failures:
        for k in complete:
            for asset_key in outputs.values():
                yield AssetMaterialization(asset_key=asset_key, partition=k, metadata=metadata(k))
        shown = "\n".join(f"  {b}: {e}" for b, e in failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        raise Failure(
            description=(
                f"{len(failures)} of {total} blocks failed; {len(complete)} of {len(keys)} "
                f"partitions completed and were recorded.\n{shown}{more}"
            ),
            metadata={"failed_blocks": [b for b, _ in failures]},
        )
    report = {"partitions": keys, "blocks": total}
    for name in summary_fields:
        report[name] = int(sum(stats[k].get(name, 0) for k in keys))
    for k in keys:
        for asset_key in outputs.values():
            context.add_asset_metadata(metadata(k), asset_key=asset_key, partition_key=k)
    for output_name in outputs:
        yield Output(report, output_name=output_name)


def build_pipeline_assets(config: PipelineConfig) -> PipelineAssets:
    """Assets, checks and resources for one pipeline; inputs are checked here, at load."""
    pipeline = Pipeline(config)
    grid = pipeline.grid
    name = config.name
    partitions = StaticPartitionsDefinition(grid.partition_keys)
    halo = StaticPartitionMapping(grid.partition_halo_mapping())
    policy = BackfillPolicy.single_run()
    zarr_io, sql_io, lut_io = f"{name}__zarr_io", f"{name}__sql_io", f"{name}__lut_io"
    config_json = config.model_dump_json()

    def key(asset: str) -> AssetKey:
        return AssetKey([name, asset])

    affinities = SourceAsset(
        key=key("affinities"),
        partitions_def=partitions,
        io_manager_key=zarr_io,
        group_name=name,
        description=f"Input affinities {config.affinities}, one partition per block.",
        metadata={"path": config.affinities},
    )

    @multi_asset(
        name=f"{name}__fragments",
        outs={
            "fragments": AssetOut(
                key=key("fragments"),
                io_manager_key=zarr_io,
                description="Fragment ids (uint64 zarr), unique across blocks.",
            ),
            "fragment_nodes": AssetOut(
                key=key("fragment_nodes"),
                io_manager_key=sql_io,
                description="One SQL node per fragment: world centroid and voxel count.",
            ),
        },
        ins={"affinities": AssetIn(key("affinities"), partition_mapping=halo)},
        partitions_def=partitions,
        backfill_policy=policy,
        group_name=name,
        required_resource_keys={"block_executor", zarr_io, sql_io},
    )
    def fragments(context: AssetExecutionContext, affinities: ArrayHandle):
        job = FragmentsJob(
            config,
            grid,
            affinities,
            getattr(context.resources, zarr_io).sink("fragments"),
            getattr(context.resources, sql_io).sink("fragment_nodes"),
            mask=pipeline.mask,
        )
        yield from _run_step(
            context,
            grid,
            job,
            {"fragments": key("fragments"), "fragment_nodes": key("fragment_nodes")},
            ("fragments", "voxels"),
        )

    @asset(
        key=key("edges"),
        ins={
            "fragments": AssetIn(key("fragments"), partition_mapping=halo),
            "affinities": AssetIn(key("affinities"), partition_mapping=halo),
        },
        deps=[key("fragment_nodes")],
        io_manager_key=sql_io,
        partitions_def=partitions,
        backfill_policy=policy,
        group_name=name,
        required_resource_keys={"block_executor", sql_io},
        description="One SQL edge per touching fragment pair, a mean affinity per score group.",
    )
    def edges(context: AssetExecutionContext, fragments: ArrayHandle, affinities: ArrayHandle):
        job = EdgesJob(
            config, grid, affinities, fragments, getattr(context.resources, sql_io).sink("edges")
        )
        yield from _run_step(context, grid, job, {"result": key("edges")}, ("edges", "voxels"))

    @asset(
        key=key("lut"),
        ins={
            "fragment_nodes": AssetIn(key("fragment_nodes")),
            "edges": AssetIn(key("edges")),
        },
        io_manager_key=lut_io,
        # Lets one CLI call with --partition-range run the whole pipeline.
        backfill_policy=policy,
        group_name=name,
        description="Fragment -> segment lookup table (global mutex watershed), volara .npz.",
    )
    def lut(context: AssetExecutionContext, fragment_nodes: NodeTable, edges: EdgeTable):
        start = time.perf_counter()
        params = config.require("lut")
        table = agglomerate(fragment_nodes.ids, edges, params.weights, params.edge_per_attr)
        context.add_output_metadata(
            {
                "fragments": int(table.shape[1]),
                "edges": len(edges),
                "segments": int(len(set(table[1].tolist()))),
                "seconds": MetadataValue.float(round(time.perf_counter() - start, 3)),
            }
        )
        return table

    check_specs = []
    if config.ground_truth:
        check_specs.append(AssetCheckSpec("evaluation", asset=key("segments"), blocking=False))

    @multi_asset(
        name=f"{name}__segments",
        outs={
            "segments": AssetOut(
                key=key("segments"),
                io_manager_key=zarr_io,
                description="Segment ids (uint64 zarr): fragments relabelled through the LUT.",
            )
        },
        ins={"fragments": AssetIn(key("fragments")), "lut": AssetIn(key("lut"))},
        partitions_def=partitions,
        backfill_policy=policy,
        group_name=name,
        required_resource_keys={"block_executor", zarr_io},
        check_specs=check_specs,
    )
    def segments(context: AssetExecutionContext, fragments: ArrayHandle, lut: LutHandle):
        sink = getattr(context.resources, zarr_io).sink("segments")
        job = SegmentsJob(grid, fragments, sink, lut)
        yield from _run_step(
            context, grid, job, {"segments": key("segments")}, ("segments", "voxels")
        )
        if config.ground_truth:
            yield _evaluation(pipeline, config.eval_warn_voi)

    resources = {
        zarr_io: ZarrIOManager(pipeline_config=config_json),
        sql_io: SqlIOManager(pipeline_config=config_json),
        lut_io: LutIOManager(pipeline_config=config_json),
    }
    return PipelineAssets(
        config=config,
        pipeline=pipeline,
        partitions=partitions,
        assets=[affinities, fragments, edges, lut, segments],
        resources=resources,
    )


def _evaluation(pipeline: Pipeline, warn_voi: float) -> AssetCheckResult:
    """VOI (split, merge) and ARE of the whole segmentation against the ground truth."""
    assert pipeline.ground_truth is not None
    roi = pipeline.grid.volume_roi
    scores = evaluate(pipeline.segments.read(roi), pipeline.ground_truth.read(roi))
    voi = scores["voi_split"] + scores["voi_merge"]
    return AssetCheckResult(
        check_name="evaluation",
        passed=bool(voi <= warn_voi),
        severity=AssetCheckSeverity.WARN,
        metadata={k: MetadataValue.float(float(v)) for k, v in scores.items()},
    )


__all__ = ["AssetsDefinition", "PipelineAssets", "build_pipeline_assets"]
