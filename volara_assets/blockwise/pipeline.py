"""Chained steps (``a + b``) and running them: one Dagster run over every block of every step.

A run builds the pipeline's assets with
:func:`volara_assets.orchestration.assets.build_pipeline_assets` (the factory the
YAML pipelines use), checks that the assets the steps read and
do not write are materialized, records the pipeline (see
:mod:`volara_assets.blockwise.record`) and materializes the steps' assets for
ALL partitions in one run, so a rerun always recomputes from the current inputs;
or, when steps are given a ``roi`` inside the volume, the partitions that roi
touches (see :meth:`Pipeline.run_blockwise`).

The Dagster instance is ``$DAGSTER_HOME``'s when that is set, else a persistent
one in ``$XDG_DATA_HOME/volara_assets/dagster_home`` (default
``~/.local/share/volara_assets/dagster_home``): run history and lineage outlive
the notebook, nothing is written to the working directory, and ``dagster dev``
with ``DAGSTER_HOME`` pointing there shows the runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetsDefinition,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    materialize,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from volara_assets.config import PipelineConfig
from volara_assets.definitions import build_definitions
from volara_assets.orchestration.assets import PipelineAssets, build_pipeline_assets
from volara_assets.orchestration.resources import BlockExecutor

from .record import read_db_record, write_array_record, write_db_record
from .steps import BlockwiseStep

__all__ = ["BlockwiseError", "Pipeline", "dagster_home", "dagster_instance"]

DAGSTER_YAML = "telemetry:\n  enabled: false\n"
_INSTANCES: dict[Path, DagsterInstance] = {}
# Which step materializes an asset, for messages about missing prerequisites.
_PRODUCER = {
    "fragments": "ExtractFrags",
    "fragment_nodes": "ExtractFrags",
    "edges": "AffAgglom",
    "lut": "GraphMWS",
    "segments": "Relabel",
}


class BlockwiseError(RuntimeError):
    """A step's run failed (e.g. some blocks raised); the message names the failures."""


def dagster_home() -> Path:
    """The folder of the Dagster instance steps run in (see the module docstring)."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"]).expanduser().resolve()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser().resolve() / "volara_assets" / "dagster_home"


def dagster_instance() -> DagsterInstance:
    """The persistent Dagster instance in :func:`dagster_home` (created with telemetry off)."""
    home = dagster_home()
    instance = _INSTANCES.get(home)
    if instance is None:
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dagster.yaml"
        if not config.exists():
            config.write_text(DAGSTER_YAML)
        instance = _INSTANCES[home] = DagsterInstance.from_config(str(home))
    return instance


class Pipeline:
    """Steps run in order, as one Dagster run over one pipeline's assets.

    Parameters
    ----------
    steps : sequence of BlockwiseStep
        In order; each later step continues the config the earlier ones built.
    """

    def __init__(self, steps: Sequence[BlockwiseStep] = ()) -> None:
        self.steps: list[BlockwiseStep] = list(steps)

    def __repr__(self) -> str:
        return " + ".join(type(s).__name__ for s in self.steps) or "Pipeline()"

    def __add__(self, other: BlockwiseStep | Pipeline) -> Pipeline:
        if isinstance(other, Pipeline):
            return Pipeline(self.steps + other.steps)
        if isinstance(other, BlockwiseStep):
            return Pipeline([*self.steps, other])
        return NotImplemented

    # -- config and definitions ---------------------------------------------------
    def config(self) -> PipelineConfig:
        """The pipeline config: each step's section merged, in order, onto what is recorded."""
        if not self.steps:
            raise ValueError("Pipeline: no steps")
        config: PipelineConfig | None = None
        for step in self.steps:
            config = step.apply(config if config is not None else step.locate())
        assert config is not None
        return config

    def build(self) -> PipelineAssets:
        """The pipeline's assets and IO managers, from the shared asset factory."""
        return build_pipeline_assets(self.config())

    def to_definitions(self, block_executor: BlockExecutor | None = None) -> Definitions:
        """Dagster ``Definitions`` serving this pipeline's assets (e.g. for ``dagster dev``).

        The same code location :mod:`volara_assets.definitions` serves for YAML files.
        """
        return build_definitions([self.config()], block_executor)

    # -- running ----------------------------------------------------------------
    def _num_workers(self) -> int:
        chosen = [s.num_workers for s in self.steps if "num_workers" in s.model_fields_set]
        return max(chosen) if chosen else max(2, os.cpu_count() or 1)

    def run_blockwise(self, multiprocessing: bool = False) -> ExecuteInProcessResult:
        """Materialize every step's assets for all blocks, in one Dagster run, or for a sub-volume.

        Without a ``roi`` (or with one containing the volume) every step covers every
        block, in one run. With a ``roi`` inside the volume, each step in turn
        materializes only some partitions (one run per z-major range of them):

        * ``ExtractFrags``: the partitions with a block whose write ROI the roi touches;
        * ``AffAgglom``: those and their neighbours (their edges to new fragments
          change), each only once its own and its neighbours' fragments exist; the
          others wait for the run that makes the missing fragments;
        * ``GraphMWS``: the LUT is global, solved over every node and edge stored so
          far (volara solves the roi's sub-graph; one LUT keeps segment ids consistent
          from run to run); the fragments of the roi's partitions must exist;
        * ``Relabel``: the roi's partitions and every segments partition already
          materialized (relabelled through the new LUT: one consistent labelling).

        So runs over rois that together cover the volume give what one whole-volume
        run gives.

        Parameters
        ----------
        multiprocessing : bool
            Run blocks in a process pool (``num_workers`` of the steps, else one
            per CPU) instead of one after another in this process.

        Returns
        -------
        ExecuteInProcessResult
            The successful Dagster run (of a sub-volume run, the last one).

        Raises
        ------
        ValueError
            Before anything is written, if the config is incomplete, a roi misses
            the volume, or a prerequisite (an asset the steps read but do not write)
            is not materialized; the message names it and the step producing it. (In
            a sub-volume run, a later step's prerequisites are checked when its turn
            comes, after the earlier steps ran.)
        BlockwiseError
            If the run failed, e.g. some blocks raised (named with their errors).
        """
        built = self.build()
        config = built.config
        selected = [built.key(name) for step in self.steps for name in step.outputs]
        instance = dagster_instance()
        grid = built.pipeline.grid
        whole_volume = all(step.roi_partitions(grid) is None for step in self.steps)
        if whole_volume:
            _check_prerequisites(instance, built, selected, self)
        names = {key.path[-1] for key in selected}
        if "fragments" in names:
            built.pipeline.create_label_array(built.pipeline.fragments)
            previous = read_db_record(config.db_url)
            if previous is not None and (
                previous.fragments_array != config.fragments_array
                or previous.block_size != config.block_size
            ):
                # Rows are replaced per block index; another grid's blocks would
                # leave stale fragments behind (or collide), so start the graph anew.
                built.pipeline.graph.store().drop()
        # Every block of a selected step is recomputed, so a table about to be
        # rewritten may change its columns (e.g. AffAgglom's score names).
        built.pipeline.graph.store().drop_mismatched(
            [t for asset, t in (("fragment_nodes", "nodes"), ("edges", "edges")) if asset in names]
        )
        if Path(config.fragments_array).exists():
            write_array_record(config)
        write_db_record(config)

        executor = (
            BlockExecutor(kind="processes", num_workers=self._num_workers())
            if multiprocessing
            else BlockExecutor(kind="serial")
        )
        resources = {"block_executor": executor, **built.resources}
        tags = {"volara_assets/steps": repr(self)}
        if whole_volume:
            if any(_partitioned(built, key) for key in selected):
                keys = built.partitions.get_partition_keys()
                tags[ASSET_PARTITION_RANGE_START_TAG] = keys[0]
                tags[ASSET_PARTITION_RANGE_END_TAG] = keys[-1]
            return self._materialize(built, selected, instance, resources, tags)
        result = None
        for step in self.steps:
            step_keys = [built.key(name) for name in step.outputs]
            partitions = _sub_volume_partitions(step, built, instance)
            if partitions is None:  # the LUT: one run, not partitioned
                result = self._materialize(built, step_keys, instance, resources, tags)
                continue
            for first, last in _key_ranges(grid.partition_keys, partitions):
                range_tags = {
                    **tags,
                    ASSET_PARTITION_RANGE_START_TAG: first,
                    ASSET_PARTITION_RANGE_END_TAG: last,
                }
                result = self._materialize(built, step_keys, instance, resources, range_tags)
        if result is None:
            raise ValueError(
                f"{self!r}: nothing to materialize: the edges of the roi's blocks need the "
                "fragments of their neighbours too; run ExtractFrags over a larger roi"
            )
        return result

    def _materialize(
        self,
        built: PipelineAssets,
        selected: list[AssetKey],
        instance: DagsterInstance,
        resources: dict[str, Any],
        tags: dict[str, str],
    ) -> ExecuteInProcessResult:
        result = materialize(
            built.assets,
            selection=selected,
            instance=instance,
            resources=resources,
            tags=tags,
            raise_on_error=False,
        )
        if not result.success:
            raise BlockwiseError(f"{self!r} failed (run {result.run_id}):\n{_failures(result)}")
        return result


def _key_ranges(order: Sequence[str], keys: Iterable[str]) -> list[tuple[str, str]]:
    """``keys`` as maximal runs of consecutive keys of ``order``: one Dagster run each
    (a run covers a partition range, and a box of blocks is several z-major ranges)."""
    wanted = set(keys)
    ranges: list[tuple[str, str]] = []
    start: str | None = None
    for i, key in enumerate(order):
        if key in wanted and start is None:
            start = key
        if start is not None and (i + 1 == len(order) or order[i + 1] not in wanted):
            ranges.append((start, key))
            start = None
    return ranges


def _sub_volume_partitions(
    step: BlockwiseStep, built: PipelineAssets, instance: DagsterInstance
) -> list[str] | None:
    """The partitions ``step`` materializes in a sub-volume run (``None``: the LUT, global).

    Decided when the step's turn comes, from what is materialized by then:

    * ``ExtractFrags``: the partitions the step's ROI writes;
    * ``AffAgglom``: those and their neighbours (whose edges to the new fragments
      change), as far as their fragments and their neighbours' fragments exist;
      the others wait for a run that makes the missing fragments;
    * ``GraphMWS``: the whole stored graph (segment ids stay consistent across
      runs); the fragments of the ROI's partitions must exist;
    * ``Relabel``: the ROI's partitions, plus every segments partition already
      materialized, relabelled through the new LUT so that the segmentation stays
      one consistent labelling.
    """
    grid = built.pipeline.grid
    roi_keys = step.roi_partitions(grid) or list(grid.partition_keys)
    name = type(step).__name__

    def done(asset: str) -> set[str]:
        return set(instance.get_materialized_partitions(built.key(asset)))

    def require(asset: str, keys: Iterable[str]) -> None:
        missing = sorted(set(keys) - done(asset))
        if missing:
            raise ValueError(
                f"{name}: pipeline {built.config.name!r} needs {asset} of partitions "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)} missing; "
                f"run {_PRODUCER[asset]} over a roi covering them first)"
            )

    if "fragments" in step.outputs:
        return roi_keys
    if "edges" in step.outputs:
        fragments = done("fragments")
        require("fragments", roi_keys)
        candidates = set(roi_keys).union(*(grid.partition_neighbours(k) for k in roi_keys))
        return [
            k
            for k in grid.partition_keys
            if k in candidates and {k, *grid.partition_neighbours(k)} <= fragments
        ]
    if "lut" in step.outputs:
        require("fragment_nodes", roi_keys)
        return None
    require("fragments", roi_keys)
    if instance.get_latest_materialization_event(built.key("lut")) is None:
        raise ValueError(f"{name}: needs lut (never materialized; run GraphMWS)")
    wanted = set(roi_keys) | done("segments")
    return [k for k in grid.partition_keys if k in wanted]


def _definition(built: PipelineAssets, key: AssetKey) -> AssetsDefinition | None:
    for asset in built.assets:
        if isinstance(asset, AssetsDefinition) and key in asset.keys:
            return asset
    return None


def _partitioned(built: PipelineAssets, key: AssetKey) -> bool:
    asset = _definition(built, key)
    return asset is not None and asset.partitions_def is not None


def _check_prerequisites(
    instance: DagsterInstance, built: PipelineAssets, selected: list[AssetKey], steps: Pipeline
) -> None:
    """Raise unless every asset the selection reads (and does not write) is fully materialized."""
    upstream: set[AssetKey] = set()
    for key in selected:
        asset = _definition(built, key)
        deps: Iterable[AssetKey] = asset.asset_deps.get(key, ()) if asset is not None else ()
        # Observed assets (segment_ids, recorded by the lut step) are no step's output.
        upstream.update(
            d for d in deps if (a := _definition(built, d)) is not None and not a.is_observable
        )
    missing = []
    for key in sorted(upstream - set(selected), key=lambda k: k.to_user_string()):
        name = key.path[-1]
        if _partitioned(built, key):
            total = built.partitions.get_partition_keys()
            done = instance.get_materialized_partitions(key)
            if not set(total) <= set(done):
                missing.append(
                    f"{name} ({len(set(total) - set(done))} of {len(total)} blocks missing; "
                    f"run {_PRODUCER.get(name, name)})"
                )
        elif instance.get_latest_materialization_event(key) is None:
            missing.append(f"{name} (never materialized; run {_PRODUCER.get(name, name)})")
    if missing:
        raise ValueError(
            f"{steps!r}: pipeline {built.config.name!r} needs "
            + ", ".join(missing)
            + f" first, in the Dagster instance at {dagster_home()}; or chain the steps "
            "(e.g. extract_frags + aff_agglom + graph_mws + relabel)"
        )


def _failures(result: ExecuteInProcessResult) -> str:
    lines: list[Any] = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.user_failure_data
            text = error.description if error is not None and error.description else None
            if text is None and event.step_failure_data.error is not None:
                err = event.step_failure_data.error
                while err.cause is not None and "DagsterExecutionStepExecutionError" in (
                    err.cls_name or ""
                ):
                    err = err.cause
                text = f"{err.cls_name}: {err.message.strip()}"
            lines.append(f"  step {event.step_key}: {text}")
    return "\n".join(lines) or "  (no step failure recorded)"
