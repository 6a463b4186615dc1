"""The asset factory: one pipeline config becomes block-partitioned Dagster assets.

Asset graph (keys under the pipeline's name)::

    affinities --> fragments, fragment_nodes --halo--> edges --> lut --> segments
         \\___________________________________________/            fragments --/

Every partitioned asset shares one ``StaticPartitionsDefinition`` whose keys are
the block grid's partitions; reads with a halo declare it with a
``StaticPartitionMapping`` (serialized, so the UI and daemon see it).

The ``affinities`` partition of a block stands for everything the block reads,
its read ROI (write ROI plus context): its observed data version fingerprints
exactly those chunks (:mod:`volara_assets.automation`). So ``fragments`` and
``edges`` depend on it one to one, and a changed region makes stale exactly the
fragments whose read ROI touches it, the edges that read those fragments (halo),
the LUT and the segments.

Data versions and provenance. Steps cover many partitions in one run
(``BackfillPolicy.single_run``); Dagster then writes the same provenance tags on
every partition of the run (one data version per asset and run, since the assets
have no ``code_version``). Staleness is still per partition: for a partitioned
dependency Dagster compares, partition by partition, the dependency's latest
data version before and after the storage id recorded in the provenance. A
``code_version`` would break this: the data version would become a hash of the
code version and of the inputs' versions, and Dagster hashes observed
(source) partitions as empty, so a rematerialized ``fragments`` partition would
keep its version and its ``edges`` would never turn stale. The LUT, one file,
reports a content hash as its data version: an identical LUT leaves the
segments fresh.
"""

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetMaterialization,
    AssetOut,
    AssetsDefinition,
    BackfillPolicy,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    StaticPartitionMapping,
    StaticPartitionsDefinition,
    asset,
    multi_asset,
)

from .automation import (
    build_affinities_asset,
    build_automation_sensor,
    build_input_sensor,
    build_observe_job,
    build_observe_schedule,
    pipeline_automation_conditions,
)
from .blocks import EdgesJob, FragmentsJob, SegmentsJob
from .checks import build_pipeline_checks, check_evaluation
from .config import PipelineConfig
from .executors import run_blocks
from .geometry import BlockGrid, Roi
from .io_managers import LutIOManager, SqlIOManager, ZarrIOManager
from .ops.agglomerate import agglomerate
from .ops.relabel import relabel
from .pipeline import Pipeline
from .resources import BlockExecutor
from .storage.handles import ArrayHandle, LutHandle
from .tables import EdgeTable, NodeTable
from .thumbnails import histogram_image, label_slice_image, markdown_image

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
    sensors: list[Any] = field(default_factory=list)
    schedules: list[Any] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)

    def key(self, name: str) -> AssetKey:
        return AssetKey([self.config.name, name])


def _run_step(
    context: AssetExecutionContext,
    grid: BlockGrid,
    job: Any,
    outputs: Mapping[str, AssetKey],
    summary_fields: tuple[str, ...],
    preview: Callable[[str], dict[str, Any]] | None = None,
) -> Iterator[Any]:
    """Run ``job`` on every block of the run's partitions; yield the outputs.

    Each partition gets its own metadata (plus ``preview(key)``, e.g. a
    thumbnail, for the first output). If any block fails, the partitions
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
                # Seconds come from the executor, which times every block the same way.
                for name, value in {**outcome.result, "seconds": outcome.seconds}.items():
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

    first_output = next(iter(outputs.values()))

    def metadata(k: str, asset_key: AssetKey) -> dict[str, Any]:
        s = stats[k]
        md: dict[str, Any] = {"blocks": int(s["blocks"])}
        for name in summary_fields:
            md[name] = int(s.get(name, 0))
        md["seconds"] = MetadataValue.float(round(float(s.get("seconds", 0.0)), 3))
        if preview is not None and asset_key == first_output:
            try:
                md.update(preview(k))
            except Exception as exc:  # noqa: BLE001 - a picture must never fail a step
                context.log.warning(f"no preview for partition {k}: {exc}")
        return md

    complete = [k for k in keys if stats[k]["blocks"] == len(blocks_of[k])]
    if failures:
        for k in complete:
            for asset_key in outputs.values():
                yield AssetMaterialization(
                    asset_key=asset_key, partition=k, metadata=metadata(k, asset_key)
                )
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
            context.add_asset_metadata(metadata(k, asset_key), asset_key=asset_key, partition_key=k)
    for output_name in outputs:
        yield Output(report, output_name=output_name)


def _partition_roi(grid: BlockGrid, key: str) -> Roi:
    """The bounding box of a partition's write ROIs."""
    blocks = grid.partition_blocks(key)
    begin = tuple(min(b.write_roi.begin[d] for b in blocks) for d in range(3))
    end = tuple(max(b.write_roi.end[d] for b in blocks) for d in range(3))
    return Roi(begin, tuple(e - b for b, e in zip(begin, end, strict=True)))  # type: ignore[arg-type]


def _slice_preview(grid: BlockGrid, handle: ArrayHandle, what: str) -> Callable[[str], dict]:
    """Metadata with a PNG of a partition's middle z-slice of ``handle``, coloured by id."""

    def preview(key: str) -> dict[str, Any]:
        roi = _partition_roi(grid, key)
        z = roi.begin[0] + roi.shape[0] // 2
        section = handle.read(Roi((z, *roi.begin[1:]), (1, *roi.shape[1:])))  # type: ignore[arg-type]
        png = label_slice_image(section, grid.voxel_size)
        ids = np.unique(section)
        caption = f"z = {z} (voxels), {int(np.count_nonzero(ids))} {what} in this section"
        return {"preview": markdown_image(png, f"{what} {key}", caption)}

    return preview


def _lut_metadata(table: np.ndarray, nodes: NodeTable, edges: EdgeTable) -> dict[str, Any]:
    """Counts and a histogram of segment sizes (voxels) for the LUT's materialization."""
    _, inverse = np.unique(relabel(nodes.ids, table), return_inverse=True)
    sizes = np.bincount(inverse, weights=nodes.sizes, minlength=0).astype(np.int64)
    segments = int(sizes.size)
    md: dict[str, Any] = {
        "fragments": int(table.shape[1]),
        "edges": len(edges),
        "segments": segments,
        "merged_fragments": int(table.shape[1]) - segments,
        "largest_segment_voxels": int(sizes.max()) if segments else 0,
        "median_segment_voxels": int(np.median(sizes)) if segments else 0,
    }
    if segments:
        md["segment_sizes"] = markdown_image(
            histogram_image(sizes),
            "segment size histogram",
            f"Segment sizes in voxels, {sizes.min()} to {sizes.max()}, log-spaced bins; "
            "bar height ~ log(1 + count).",
        )
    return md


def build_pipeline_assets(config: PipelineConfig) -> PipelineAssets:
    """Assets, checks, sensors, schedule and resources for one pipeline.

    Inputs are checked here, at load.
    """
    pipeline = Pipeline(config)
    grid = pipeline.grid
    name = config.name
    partitions = StaticPartitionsDefinition(grid.partition_keys)
    halo = StaticPartitionMapping(grid.partition_halo_mapping())
    policy = BackfillPolicy.single_run()
    automation = pipeline_automation_conditions(name)
    zarr_io, sql_io, lut_io = f"{name}__zarr_io", f"{name}__sql_io", f"{name}__lut_io"
    config_json = config.model_dump_json()

    def key(asset: str) -> AssetKey:
        return AssetKey([name, asset])

    affinities = build_affinities_asset(config, key("affinities"), grid, partitions, zarr_io)

    @multi_asset(
        name=f"{name}__fragments",
        outs={
            "fragments": AssetOut(
                key=key("fragments"),
                io_manager_key=zarr_io,
                description="Fragment ids (uint64 zarr), unique across blocks.",
                automation_condition=automation["fragments"],
            ),
            "fragment_nodes": AssetOut(
                key=key("fragment_nodes"),
                io_manager_key=sql_io,
                description="One SQL node per fragment: world centroid and voxel count.",
                automation_condition=automation["fragment_nodes"],
            ),
        },
        # One to one: the affinities partition is the block's read ROI (see module doc).
        ins={"affinities": AssetIn(key("affinities"))},
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
            preview=_slice_preview(grid, job.fragments, "fragments"),
        )

    @asset(
        key=key("edges"),
        ins={
            "fragments": AssetIn(key("fragments"), partition_mapping=halo),
            "affinities": AssetIn(key("affinities")),
        },
        deps=[key("fragment_nodes")],
        io_manager_key=sql_io,
        partitions_def=partitions,
        backfill_policy=policy,
        group_name=name,
        required_resource_keys={"block_executor", sql_io},
        automation_condition=automation["edges"],
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
        automation_condition=automation["lut"],
        description="Fragment -> segment lookup table (global mutex watershed), volara .npz.",
    )
    def lut(context: AssetExecutionContext, fragment_nodes: NodeTable, edges: EdgeTable):
        start = time.perf_counter()
        params = config.require("lut")
        table = agglomerate(fragment_nodes.ids, edges, params.weights, params.edge_per_attr)
        table = np.asarray(table)
        metadata = _lut_metadata(table, fragment_nodes, edges)
        metadata["seconds"] = MetadataValue.float(round(time.perf_counter() - start, 3))
        context.log.info(
            f"LUT: {metadata['fragments']} fragments, {metadata['edges']} edges -> "
            f"{metadata['segments']} segments"
        )
        # Content hash: segments turn stale only if the mapping actually changed.
        canonical = table[:, np.argsort(table[0], kind="stable")].astype(np.uint64)
        version = hashlib.sha256(canonical.tobytes()).hexdigest()[:32]
        return Output(table, metadata=metadata, data_version=DataVersion(version))

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
                automation_condition=automation["segments"],
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
            context,
            grid,
            job,
            {"segments": key("segments")},
            ("segments", "voxels"),
            preview=_slice_preview(grid, sink, "segments"),
        )
        if config.ground_truth:
            # VOI and ARE (sampled on large volumes); see volara_assets.checks.
            yield check_evaluation(
                pipeline, config.eval_warn_voi, config.eval_warn_are, config.eval_sample_blocks
            )

    resources = {
        zarr_io: ZarrIOManager(pipeline_config=config_json),
        sql_io: SqlIOManager(pipeline_config=config_json),
        lut_io: LutIOManager(pipeline_config=config_json),
    }
    computed = [key(n) for n in ("fragments", "fragment_nodes", "edges", "lut", "segments")]
    observe_job = build_observe_job(config, key("affinities"))
    return PipelineAssets(
        config=config,
        pipeline=pipeline,
        partitions=partitions,
        assets=[affinities, fragments, edges, lut, segments],
        asset_checks=build_pipeline_checks(pipeline),
        resources=resources,
        sensors=[
            build_input_sensor(config, key("affinities"), grid),
            build_automation_sensor(
                config,
                [affinities, fragments, edges, lut, segments],
                computed,
                grid.partition_keys,
                {**resources, "block_executor": BlockExecutor()},
            ),
        ],
        schedules=[build_observe_schedule(config, observe_job)],
        jobs=[observe_job],
    )


__all__ = ["AssetsDefinition", "PipelineAssets", "build_pipeline_assets"]
