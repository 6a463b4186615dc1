r"""The asset factory: one pipeline config becomes block-partitioned Dagster assets.

Asset graph (keys under the pipeline's name)::

    affinities --> fragments, fragment_nodes --reads--> edges --> lut --> segment_ids
         \___________________________________________/           |   (observed)
                                          fragments, lut, segment_ids --> segments

Every partitioned asset shares one ``StaticPartitionsDefinition`` whose keys are
the block grid's partitions; ``edges`` declares the fragments partitions it
reads (:meth:`BlockGrid.pair_read`, the decision the edges job reads by) with a
``StaticPartitionMapping`` (serialized, so the UI and daemon see it).

The ``affinities`` partition of a block stands for everything the block reads,
its read ROI (write ROI plus context): its observed data version hashes exactly
those voxels (:mod:`volara_assets.storage.fingerprints`). So ``fragments`` and
``edges`` depend on it one to one, and a changed region makes stale exactly the
fragments whose read ROI holds a changed voxel, the edges that read those
fragments, the LUT, and the segments whose segment ids changed.

Data versions and provenance. Steps cover many partitions in one run
(``BackfillPolicy.single_run``); Dagster then writes the same provenance tags on
every partition of the run (one data version per asset and run, since the assets
have no ``code_version``). Staleness is still per partition: for a partitioned
dependency Dagster compares, partition by partition, the dependency's latest
data version before and after the storage id recorded in the provenance. A
``code_version`` would break this: the data version would become a hash of the
code version and of the inputs' versions, and Dagster hashes observed
(source) partitions as empty, so a rematerialized ``fragments`` partition would
keep its version and its ``edges`` would never turn stale.

The LUT is one file, and an unpartitioned dependency's version is compared as
a whole, so the LUT's data version hashes only its parameters and each
partition's share of it (its fragments' segment ids) is versioned by the
observed ``segment_ids`` asset, recorded by the LUT step where it changed
(:func:`_segment_ids_asset` says why observed): after a LUT update, a segments
partition is stale only if one of its fragments maps to another segment id.
"""

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetOut,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    BetaWarning,
    DataVersion,
    MetadataValue,
    Output,
    StaticPartitionMapping,
    StaticPartitionsDefinition,
    asset,
    multi_asset,
    multi_observable_source_asset,
)

from ..config import PipelineConfig
from ..ops.agglomerate import agglomerate_stream
from ..runtime.bound import BoundPipeline, bound_pipeline
from ..runtime.jobs import EdgesJob, FragmentsJob, SegmentsJob
from ..storage.handles import ArrayHandle, LutHandle
from ..tables import NodeTable
from .automation import (
    build_affinities_asset,
    build_automation_sensor,
    build_input_sensor,
    build_observe_job,
    build_observe_schedule,
    observe_segment_ids,
    pipeline_automation_conditions,
)
from .checks import build_pipeline_checks, evaluation_result
from .io_managers import LutIOManager, SqlIOManager, ZarrIOManager
from .metadata import lut_metadata
from .resources import BlockExecutor
from .steps import materialize_blocks

__all__ = ["AssetsDefinition", "PipelineAssets", "build_pipeline_assets"]

# Beta features with no stable alternative, used on purpose: `backfill_policy`
# (a partition range becomes one run; `--partition-range` requires it),
# `Output(data_version=...)` (the LUT's version) and `multi_observable_source_asset`
# (segment_ids: one observed data version per partition). Dagster would warn on every
# code location load.
warnings.filterwarnings(
    "ignore", message=r"Parameter `(backfill_policy|data_version)` of ", category=BetaWarning
)
warnings.filterwarnings(
    "ignore", message=r"Function `multi_observable_source_asset` is ", category=BetaWarning
)


@dataclass
class PipelineAssets:
    """What one pipeline contributes to ``Definitions``."""

    config: PipelineConfig
    pipeline: BoundPipeline
    partitions: StaticPartitionsDefinition
    assets: list[Any]
    asset_checks: list[Any] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    sensors: list[Any] = field(default_factory=list)
    schedules: list[Any] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)

    def key(self, name: str) -> AssetKey:
        return AssetKey([self.config.name, name])


@dataclass(frozen=True)
class _Wiring:
    """What every asset of one pipeline shares: names, partitions, IO managers."""

    pipeline: BoundPipeline
    partitions: StaticPartitionsDefinition
    zarr: ZarrIOManager
    sql: SqlIOManager
    lut: LutIOManager

    @property
    def config(self) -> PipelineConfig:
        return self.pipeline.config

    @property
    def name(self) -> str:
        return self.config.name

    def key(self, asset_name: str) -> AssetKey:
        return AssetKey([self.name, asset_name])

    def io_key(self, kind: str) -> str:
        """The resource key of the pipeline's ``zarr``, ``sql`` or ``lut`` IO manager."""
        return f"{self.name}__{kind}_io"

    @property
    def resources(self) -> dict[str, Any]:
        return {
            self.io_key("zarr"): self.zarr,
            self.io_key("sql"): self.sql,
            self.io_key("lut"): self.lut,
        }


def _fragments_asset(w: _Wiring, automation: dict[str, Any]) -> AssetsDefinition:
    key, grid = w.key, w.pipeline.grid

    @multi_asset(
        name=f"{w.name}__fragments",
        outs={
            "fragments": AssetOut(
                key=key("fragments"),
                io_manager_key=w.io_key("zarr"),
                description="Fragment ids (uint64 zarr), unique across blocks.",
                automation_condition=automation["fragments"],
            ),
            "fragment_nodes": AssetOut(
                key=key("fragment_nodes"),
                io_manager_key=w.io_key("sql"),
                description="One SQL node per fragment: world centroid and voxel count.",
                automation_condition=automation["fragment_nodes"],
            ),
        },
        # One to one: the affinities partition is the block's read ROI (see module doc).
        ins={"affinities": AssetIn(key("affinities"))},
        partitions_def=w.partitions,
        backfill_policy=BackfillPolicy.single_run(),
        group_name=w.name,
        required_resource_keys={"block_executor", w.io_key("zarr"), w.io_key("sql")},
    )
    def fragments(context: AssetExecutionContext, affinities: ArrayHandle):
        zarr_io = getattr(context.resources, w.io_key("zarr"))
        sql_io = getattr(context.resources, w.io_key("sql"))
        job = FragmentsJob(
            w.config,
            grid,
            affinities,
            zarr_io.writer("fragments"),
            sql_io.writer("fragment_nodes"),
            mask=w.pipeline.mask,
        )
        yield from materialize_blocks(
            context,
            grid,
            job,
            {"fragments": key("fragments"), "fragment_nodes": key("fragment_nodes")},
            {"fragments": zarr_io, "fragment_nodes": sql_io},
            ("fragments", "voxels"),
        )

    return fragments


def _edges_asset(w: _Wiring, automation: dict[str, Any]) -> AssetsDefinition:
    key, grid = w.key, w.pipeline.grid
    # The partitions whose fragments an edges partition reads, from the very decision the
    # edges job reads by (BlockGrid.pair_read); Dagster wants them upstream -> downstream.
    offsets = [o for group in w.config.score_groups.values() for o in group]
    read_by: dict[str, set[str]] = {k: set() for k in grid.partition_keys}
    for edges_key, fragment_keys in grid.partition_pair_reads(offsets).items():
        for fragments_key in fragment_keys:
            read_by[fragments_key].add(edges_key)
    reads = StaticPartitionMapping(read_by)

    @asset(
        key=key("edges"),
        ins={
            "fragments": AssetIn(key("fragments"), partition_mapping=reads),
            "affinities": AssetIn(key("affinities")),
        },
        deps=[key("fragment_nodes")],
        io_manager_key=w.io_key("sql"),
        partitions_def=w.partitions,
        backfill_policy=BackfillPolicy.single_run(),
        group_name=w.name,
        required_resource_keys={"block_executor", w.io_key("sql")},
        automation_condition=automation["edges"],
        description="One SQL edge per touching fragment pair, a mean affinity per score group.",
    )
    def edges(context: AssetExecutionContext, fragments: ArrayHandle, affinities: ArrayHandle):
        sql_io = getattr(context.resources, w.io_key("sql"))
        job = EdgesJob(w.config, grid, affinities, fragments, sql_io.writer("edges"))
        yield from materialize_blocks(
            context, grid, job, {"result": key("edges")}, {"result": sql_io}, ("edges", "voxels")
        )

    return edges


def _lut_asset(w: _Wiring, automation: dict[str, Any]) -> AssetsDefinition:
    """The global LUT; its data version hashes its parameters, not its content.

    Every segments partition reads the one LUT file, and Dagster compares an
    unpartitioned dependency's version as a whole: a content hash would make
    every segments partition stale on any change anywhere. So the LUT's
    version says only what changes every segment id at once (the agglomeration
    parameters), its content hash is metadata, and the per-partition part of
    the content, each partition's fragment -> segment entries, is versioned by
    ``segment_ids``, which the LUT step records where it changed.
    """

    @asset(
        key=w.key("lut"),
        ins={"fragment_nodes": AssetIn(w.key("fragment_nodes"))},
        # Edges are not loaded as an input: they are streamed from the graph store in
        # score order (memory per node, not per edge; see ops.agglomerate).
        deps=[w.key("edges")],
        io_manager_key=w.io_key("lut"),
        # Lets one CLI call with --partition-range run the whole pipeline.
        backfill_policy=BackfillPolicy.single_run(),
        group_name=w.name,
        automation_condition=automation["lut"],
        description="Fragment -> segment lookup table (global mutex watershed), volara .npz.",
    )
    def lut(context: AssetExecutionContext, fragment_nodes: NodeTable):
        start = time.perf_counter()
        params = w.config.require("lut")
        store = w.pipeline.graph.store()
        table = agglomerate_stream(
            store.graph_node_ids(), store.edges_by_score(params.weights, params.edge_per_attr)
        )
        metadata = lut_metadata(table, fragment_nodes, store.count_edges())
        metadata["seconds"] = MetadataValue.float(round(time.perf_counter() - start, 3))
        context.log.info(
            f"LUT: {metadata['fragments']} fragments, {metadata['edges']} edges -> "
            f"{metadata['segments']} segments"
        )
        canonical = table[:, np.argsort(table[0], kind="stable")].astype(np.uint64)
        metadata["content_hash"] = hashlib.sha256(canonical.tobytes()).hexdigest()[:32]
        parameters = [params.model_dump(mode="json"), w.config.score_groups]
        version = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()
        yield Output(table, metadata=metadata, data_version=DataVersion(version[:32]))
        # After the LUT file is written: the partitions whose segment ids changed get a new
        # `segment_ids` version, and only their segments turn stale.
        changed = observe_segment_ids(
            context,
            w.key("segment_ids"),
            w.key("fragments"),
            w.pipeline.grid,
            fragment_nodes.ids,
            canonical,
            observed_by="lut",
        )
        context.log.info(f"segment ids changed in {len(changed)} partitions")

    return lut


def _segment_ids_asset(w: _Wiring) -> AssetsDefinition:
    """Per-partition versions of the LUT's entries for the partition's fragments.

    Why an observed asset between ``lut`` and ``segments``: Dagster compares data
    versions per partition only for a partitioned dependency, and the LUT is one
    file with one version, so every segments partition used to turn stale on
    any LUT change. ``segment_ids`` gives each partition a version of what its
    segments are made of (its fragment ids, their segment ids and the fragments'
    version: :func:`volara_assets.runtime.segment_ids.segment_id_digests`), and
    ``segments`` depends on it partition by partition. It stores nothing: its
    values live in the LUT file. It is an *observed* asset, not a materialized
    one, because a materialization records one data version per run for every
    partition, while observations carry one per partition, and because only the
    partitions whose digest changed need an event: the ``lut`` step records them
    right after writing the LUT (a wave over every partition would cost Dagster
    bookkeeping per partition on every LUT change). Observing it by hand
    recomputes the digests from the stored LUT and nodes.
    """
    key = w.key("segment_ids")

    @multi_observable_source_asset(
        name=f"{w.name}__segment_ids",
        specs=[
            AssetSpec(
                key,
                deps=[w.key("lut"), w.key("fragments")],
                partitions_def=w.partitions,
                group_name=w.name,
                description=(
                    "Per partition: a digest of its fragments' segment ids in the LUT (and of "
                    "the fragments' version). Recorded by the lut step where it changed; "
                    "segments turn stale only where it did."
                ),
            )
        ],
        partitions_def=w.partitions,
        group_name=w.name,
    )
    def segment_ids(context: AssetExecutionContext) -> None:
        nodes = w.pipeline.graph.store().read_nodes()
        lut = w.pipeline.lut.load()
        changed = observe_segment_ids(
            context,
            key,
            w.key("fragments"),
            w.pipeline.grid,
            nodes.ids,
            lut,
            observed_by="observe",
        )
        context.log.info(f"segment ids changed in {len(changed)} partitions")

    return segment_ids


def _segments_asset(w: _Wiring, automation: dict[str, Any]) -> AssetsDefinition:
    key, grid, config = w.key, w.pipeline.grid, w.config
    check_specs = []
    if config.ground_truth:
        check_specs.append(AssetCheckSpec("evaluation", asset=key("segments"), blocking=False))

    @multi_asset(
        name=f"{w.name}__segments",
        outs={
            "segments": AssetOut(
                key=key("segments"),
                io_manager_key=w.io_key("zarr"),
                description="Segment ids (uint64 zarr): fragments relabelled through the LUT.",
                automation_condition=automation["segments"],
            )
        },
        # The LUT is read (and runs first in a run holding both); which partitions it makes
        # stale is segment_ids' business, partition by partition (see _lut_asset).
        ins={"fragments": AssetIn(key("fragments")), "lut": AssetIn(key("lut"))},
        deps=[key("segment_ids")],
        partitions_def=w.partitions,
        backfill_policy=BackfillPolicy.single_run(),
        group_name=w.name,
        required_resource_keys={"block_executor", w.io_key("zarr")},
        check_specs=check_specs,
    )
    def segments(context: AssetExecutionContext, fragments: ArrayHandle, lut: LutHandle):
        zarr_io = getattr(context.resources, w.io_key("zarr"))
        job = SegmentsJob(grid, fragments, zarr_io.writer("segments"), lut)
        yield from materialize_blocks(
            context,
            grid,
            job,
            {"segments": key("segments")},
            {"segments": zarr_io},
            ("segments", "voxels"),
        )
        if config.ground_truth:
            # VOI and ARE (sampled on large volumes); see volara_assets.runtime.verify.
            yield evaluation_result(
                w.pipeline, config.eval_warn_voi, config.eval_warn_are, config.eval_sample_blocks
            )

    return segments


def build_pipeline_assets(config: PipelineConfig) -> PipelineAssets:
    """Assets, checks, sensors, schedule and resources for one pipeline.

    Inputs are checked here, at load (the process's bound pipeline for ``config``).
    """
    pipeline = bound_pipeline(config)
    grid = pipeline.grid
    config_json = config.model_dump_json()
    w = _Wiring(
        pipeline=pipeline,
        partitions=StaticPartitionsDefinition(grid.partition_keys),
        zarr=ZarrIOManager(pipeline_config=config_json),
        sql=SqlIOManager(pipeline_config=config_json),
        lut=LutIOManager(pipeline_config=config_json),
    )
    automation = pipeline_automation_conditions(w.name)
    affinities = build_affinities_asset(
        config, w.key("affinities"), grid, w.partitions, w.io_key("zarr")
    )
    assets = [
        affinities,
        _fragments_asset(w, automation),
        _edges_asset(w, automation),
        _lut_asset(w, automation),
        _segment_ids_asset(w),
        _segments_asset(w, automation),
    ]
    computed = [w.key(n) for n in ("fragments", "fragment_nodes", "edges", "lut", "segments")]
    observe_job = build_observe_job(config, w.key("affinities"))
    return PipelineAssets(
        config=config,
        pipeline=pipeline,
        partitions=w.partitions,
        assets=assets,
        asset_checks=build_pipeline_checks(pipeline),
        resources=w.resources,
        sensors=[
            build_input_sensor(config, w.key("affinities"), grid),
            build_automation_sensor(
                config,
                assets,
                computed,
                grid.partition_keys,
                {**w.resources, "block_executor": BlockExecutor()},
            ),
        ],
        schedules=[build_observe_schedule(config, observe_job)],
        jobs=[observe_job],
    )
