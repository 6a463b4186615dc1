"""Unattended operation: per-block input versions, the input sensor, the schedule, automation.

How an input change reaches the segmentation:

1. the affinities are *observed* (by the input sensor, the schedule, or the UI's
   "Observe" button): every partition gets a data version that hashes the voxels
   under its blocks' read ROIs, recomputed only where a chunk file changed
   (:func:`observe_input`);
2. Dagster marks stale the ``fragments`` partitions whose version changed;
3. the automation sensor evaluates the assets' declarative conditions
   (:func:`pipeline_automation_conditions`) and launches, one wave per step,
   exactly those fragments partitions, then the ``edges`` partitions that read
   them, which Dagster shows stale once the fragments changed, then the
   ``lut``, which records a new ``segment_ids`` version for the partitions
   whose segment ids changed (:func:`observe_segment_ids`), then exactly those
   ``segments`` partitions.

Dagster's staleness is one level deep: right after the observation only the
direct dependants of the changed affinities are stale; each later step turns
stale when the step before it rematerialized.
"""

import warnings
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    AssetSelection,
    AutomationCondition,
    BetaWarning,
    DagsterInstance,
    DataVersionsByPartition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    JobDefinition,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    SourceAsset,
    StaticPartitionsDefinition,
    define_asset_job,
    deserialize_value,
    evaluate_automation_conditions,
    observable_source_asset,
    schedule,
    sensor,
    serialize_value,
)
from dagster._core.definitions.asset_daemon_cursor import AssetDaemonCursor
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.events import DagsterEventType
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from ..config import PipelineConfig
from ..geometry import BlockGrid
from ..runtime.segment_ids import segment_id_digests
from ..storage.fingerprints import array_exists, input_state, observe_input

# Per-partition data versions of an observed input exist only as these beta APIs
# (an observable source asset returning DataVersionsByPartition); we depend on them
# on purpose, so Dagster need not warn on every code location load and run.
warnings.filterwarnings(
    "ignore",
    message=r"(Function `observable_source_asset`|Class `DataVersionsByPartition`) is ",
    category=BetaWarning,
)

__all__ = [
    "build_affinities_asset",
    "build_automation_sensor",
    "build_input_sensor",
    "build_observe_job",
    "build_observe_schedule",
    "observe_segment_ids",
    "pipeline_automation_conditions",
    "ranged_run_requests",
]

# -- the observable input -------------------------------------------------------------


def build_affinities_asset(
    config: PipelineConfig,
    key: AssetKey,
    grid: BlockGrid,
    partitions: StaticPartitionsDefinition,
    io_manager_key: str,
) -> SourceAsset:
    """The ``affinities`` source asset, observable per partition.

    Observing it records, for every partition, the exact version of the voxels
    its blocks read (:func:`observe_input`: only changed chunk files are read).
    """
    path = config.affinities
    cache = config.input_versions_path

    @observable_source_asset(
        key=key,
        partitions_def=partitions,
        io_manager_key=io_manager_key,
        group_name=config.name,
        description=(
            f"Input affinities {path}, one partition per block (brick). A partition's "
            "data version hashes the voxels of its read ROI (block + context)."
        ),
        metadata={"path": path},
    )
    def affinities(context: AssetExecutionContext) -> DataVersionsByPartition:
        obs = observe_input(path, grid, cache)
        context.log.info(
            f"observed {len(obs.versions)} partitions of {path}: {obs.chunks} chunk files, "
            f"{obs.chunks_read} read ({obs.bytes_read} bytes), in {obs.seconds:.2f} s"
        )
        return DataVersionsByPartition(obs.versions)

    return affinities


# -- sensor, schedule, automation -----------------------------------------------------


def _latest_versions(
    instance: DagsterInstance, key: AssetKey, kind: DagsterEventType
) -> dict[str, str]:
    """Partition -> data version of ``key``'s latest event of ``kind`` (one query)."""
    storage = instance.event_log_storage
    tags = storage.get_latest_tags_by_partition(key, kind, [DATA_VERSION_TAG])
    return {p: t[DATA_VERSION_TAG] for p, t in tags.items() if DATA_VERSION_TAG in t}


def _latest_observed_versions(context: SensorEvaluationContext, key: AssetKey) -> dict[str, str]:
    return _latest_versions(context.instance, key, DagsterEventType.ASSET_OBSERVATION)


def observe_segment_ids(
    context: AssetExecutionContext,
    key: AssetKey,
    fragments_key: AssetKey,
    grid: BlockGrid,
    fragment_ids: np.ndarray,
    lut: np.ndarray,
    observed_by: str,
) -> list[str]:
    """Record a new ``segment_ids`` version for every partition whose digest changed.

    The digest (:func:`segment_id_digests`) covers the partition's fragment ids,
    their segment ids in ``lut`` and, as salt, the fragments partition's latest
    data version: rewritten fragments count even when their ids are the same.
    Partitions whose digest equals their last recorded version get no event, so
    the cost in Dagster events is proportional to what changed. Returns the
    changed partition keys.
    """
    salts = _latest_versions(
        context.instance, fragments_key, DagsterEventType.ASSET_MATERIALIZATION
    )
    digests = segment_id_digests(grid, fragment_ids, lut, salts)
    known = _latest_versions(context.instance, key, DagsterEventType.ASSET_OBSERVATION)
    changed = [k for k, v in digests.items() if known.get(k) != v]
    for k in changed:
        context.log_event(
            AssetObservation(
                asset_key=key,
                partition=k,
                tags={DATA_VERSION_TAG: digests[k]},
                metadata={"observed_by": observed_by},
            )
        )
    return changed


def build_input_sensor(config: PipelineConfig, key: AssetKey, grid: BlockGrid) -> SensorDefinition:
    """A sensor that observes the affinities when they appear or change.

    Every ``automation.input_sensor_interval`` seconds it fingerprints the input
    (one ``stat`` per chunk file, a read of the changed ones). If the fingerprint
    equals the cursor it skips; otherwise it records an observation for every
    partition whose version differs from the last one recorded, and moves the
    cursor, so one state of the input is never reported twice. The observations are what the assets'
    automation conditions react to: they start the pipeline on exactly the
    changed blocks.
    """
    path = config.affinities
    auto = config.automation

    @sensor(
        name=f"{config.name}__input_sensor",
        minimum_interval_seconds=auto.input_sensor_interval,
        default_status=(
            DefaultSensorStatus.RUNNING
            if auto.input_sensor_running
            else DefaultSensorStatus.STOPPED
        ),
        asset_selection=AssetSelection.assets(key),
        description=f"Observes {path} when it appears or changes (per-block data versions).",
    )
    def input_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        if not array_exists(path):
            return SkipReason(f"no affinities at {path} yet")
        obs = observe_input(path, grid, config.input_versions_path)
        versions = obs.versions
        state = input_state(versions)
        if state == context.cursor:
            return SkipReason("affinities unchanged since the last observation")
        known = _latest_observed_versions(context, key)
        changed = sorted(k for k, v in versions.items() if known.get(k) != v)
        context.log.info(f"{len(changed)} of {len(versions)} partitions of {path} changed")
        events = [
            AssetObservation(
                asset_key=key,
                partition=k,
                tags={DATA_VERSION_TAG: versions[k]},
                metadata={"observed_by": "input sensor"},
            )
            for k in changed
        ]
        return SensorResult(asset_events=events, cursor=state)

    return input_sensor


def build_observe_job(config: PipelineConfig, key: AssetKey) -> JobDefinition:
    """A job that observes the affinities (every partition, one step)."""
    return define_asset_job(
        f"{config.name}__observe_affinities",
        selection=AssetSelection.assets(key),
        description=f"Observe {config.affinities}: a data version per partition.",
    )


def build_observe_schedule(config: PipelineConfig, job: JobDefinition) -> ScheduleDefinition:
    """Re-observe the affinities on ``automation.observe_cron`` (stopped unless configured)."""
    auto = config.automation

    @schedule(
        name=f"{config.name}__observe_schedule",
        cron_schedule=auto.observe_cron,
        job=job,
        default_status=(
            DefaultScheduleStatus.RUNNING
            if auto.observe_schedule_running
            else DefaultScheduleStatus.STOPPED
        ),
        description=f"Re-observe {config.affinities} on '{auto.observe_cron}'.",
    )
    def observe_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        if not array_exists(config.affinities):
            return SkipReason(f"no affinities at {config.affinities}")
        return RunRequest(tags={"volara/trigger": "observe_schedule"})

    return observe_schedule


def _requested(trigger: AutomationCondition) -> AutomationCondition:
    """``eager()`` with another trigger: requested once per trigger, when nothing it needs is
    missing or running."""
    return (
        AutomationCondition.in_latest_time_window()
        & (AutomationCondition.newly_missing() | trigger).since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    )


def pipeline_automation_conditions(name: str) -> dict[str, AutomationCondition]:
    """The automation condition of every computed asset of pipeline ``name``, by asset name.

    Each is ``eager()`` (requested when missing or when a dependency was updated,
    never while a dependency is missing or running) plus one rule: *wait while
    an upstream step is about to run*. Dagster only sees an upstream request of
    the same tick when both can share a run (identity mapping, same partitions);
    through the edges' read mapping or into the unpartitioned LUT it cannot, so each
    condition asks its dependencies' own conditions instead. The result is one
    wave per step: ``fragments`` of the changed blocks, then the ``edges`` that
    read them, then the ``lut``, then the ``segments`` partitions whose segment
    ids changed, each once.

    * ``fragments`` / ``fragment_nodes``: ``eager()``. The trigger is the
      observed affinities partition; Dagster counts an observation as an update
      only when its data version changed, so only changed blocks run.
    * ``edges``: ``eager()``, waiting while a fragments partition it reads
      is about to be requested.
    * ``lut``: ``eager()``, waiting while any edges or nodes partition is about
      to be requested.
    * ``segments``: requested when missing or when its ``segment_ids``
      partition has a new version. The ``lut`` step records those versions
      right after writing the LUT, only where a fragment of the partition maps
      to another segment id or the fragments were rewritten (their version is
      part of the digest), or when the LUT's data version changed (its
      parameters: every segment id may move). A new LUT alone is no trigger;
      segments still wait while the LUT or their fragments are about to be
      requested.
    """

    def keys(*names: str) -> AssetSelection:
        return AssetSelection.assets(*(AssetKey([name, n]) for n in names))

    def waiting_for(condition: AutomationCondition, *names: str) -> AutomationCondition:
        return ~AutomationCondition.any_deps_match(condition).allow(keys(*names))

    fragments = AutomationCondition.eager()
    edges = AutomationCondition.eager() & waiting_for(fragments, "fragments", "fragment_nodes")
    lut = AutomationCondition.eager() & waiting_for(edges, "edges", "fragment_nodes")
    # segment_ids is observed, so it counts as updated only where its version changed; the
    # LUT's version changes only with its parameters, and then every segment id may move.
    ids_changed = AutomationCondition.any_deps_updated().allow(keys("segment_ids"))
    parameters_changed = AutomationCondition.any_deps_match(
        AutomationCondition.data_version_changed()
    ).allow(keys("lut"))
    segments = (
        _requested(ids_changed | parameters_changed)
        & waiting_for(lut, "lut")
        & waiting_for(fragments, "fragments")
    )
    return {
        "fragments": fragments.with_label("eager"),
        "fragment_nodes": fragments.with_label("eager"),
        "edges": edges.with_label("eager, after its fragments"),
        "lut": lut.with_label("eager, after the edges"),
        "segments": segments.with_label("after the LUT"),
    }


def ranged_run_requests(
    requested: Mapping[AssetKey, AbstractSet[str | None]],
    partition_keys: Sequence[str],
    run_key_prefix: str,
) -> list[RunRequest]:
    """One run per group of assets requested for the same partitions, per contiguous range.

    Parameters
    ----------
    requested : mapping
        Asset key -> requested partition keys (``{None}`` for an unpartitioned asset).
    partition_keys : sequence of str
        All partition keys in order; a range is a run of consecutive keys in it.
    run_key_prefix : str
        Makes the run keys unique per tick, so a retried tick launches nothing twice.

    Returns
    -------
    list of RunRequest
        Assets requested for the same partitions share a run (``fragments`` and
        ``fragment_nodes``); a set of partitions becomes one run per contiguous
        range (``dagster/asset_partition_range_*`` tags, what the assets'
        single-run backfill policy executes), a single partition one run.
    """
    groups: dict[frozenset, list[AssetKey]] = {}
    for key, partitions in requested.items():
        if partitions:
            groups.setdefault(frozenset(partitions), []).append(key)
    index = {k: i for i, k in enumerate(partition_keys)}
    requests: list[RunRequest] = []
    # Upstream groups first: a run's assets and their order come from the selection.
    for partitions, keys in sorted(groups.items(), key=lambda g: sorted(map(str, g[1]))):
        selection = sorted(keys, key=lambda k: k.to_user_string())
        if partitions == {None}:
            requests.append(
                RunRequest(run_key=f"{run_key_prefix}:{len(requests)}", asset_selection=selection)
            )
            continue
        ordered = sorted(partitions, key=lambda k: index[k])
        runs: list[list[str]] = []
        for k in ordered:
            if runs and index[k] == index[runs[-1][-1]] + 1:
                runs[-1].append(k)
            else:
                runs.append([k])
        for run in runs:
            run_key = f"{run_key_prefix}:{len(requests)}"
            if len(run) == 1:
                requests.append(
                    RunRequest(run_key=run_key, asset_selection=selection, partition_key=run[0])
                )
            else:
                requests.append(
                    RunRequest(
                        run_key=run_key,
                        asset_selection=selection,
                        tags={
                            ASSET_PARTITION_RANGE_START_TAG: run[0],
                            ASSET_PARTITION_RANGE_END_TAG: run[-1],
                        },
                    )
                )
    return requests


def build_automation_sensor(
    config: PipelineConfig,
    assets: Sequence[Any],
    targets: Sequence[AssetKey],
    partition_keys: Sequence[str],
    resources: Mapping[str, Any],
) -> SensorDefinition:
    """The sensor that evaluates the assets' automation conditions and launches their runs.

    Each tick evaluates :func:`pipeline_automation_conditions` with Dagster's own
    evaluator (``evaluate_automation_conditions``; its cursor is the sensor's
    cursor) and launches one run per group of assets requested for the same
    partitions and per contiguous partition range.

    Why not Dagster's ``AutomationConditionSensorDefinition``: it launches one run
    per partition (thousands for the ``segments`` wave) or, with backfills, waits
    for the backfill daemon's 30 s cycle at every wave. Dagster still creates its
    ``default_automation_condition_sensor`` for these assets, stopped: leave it
    stopped, or the two would launch the same work.
    """
    auto = config.automation
    keys = list(targets)
    graph: list[Definitions] = []  # built on the first tick, then reused

    @sensor(
        name=f"{config.name}__automation",
        minimum_interval_seconds=auto.automation_interval,
        default_status=(
            DefaultSensorStatus.RUNNING if auto.automation_running else DefaultSensorStatus.STOPPED
        ),
        asset_selection=AssetSelection.assets(*keys),
        description="Materializes stale or missing partitions (the assets' automation "
        "conditions), then the LUT and the segments: one run per step and partition range.",
    )
    def automation(context: SensorEvaluationContext) -> SensorResult:
        cursor = None
        if context.cursor:
            try:
                cursor = deserialize_value(context.cursor, AssetDaemonCursor)
            except Exception:  # noqa: BLE001 - an unreadable cursor (new Dagster): start over
                context.log.warning("automation cursor unreadable; starting from a new one")
        if not graph:
            graph.append(Definitions(assets=list(assets), resources=dict(resources)))
        result = evaluate_automation_conditions(
            defs=graph[0],
            instance=context.instance,
            asset_selection=AssetSelection.assets(*keys),
            cursor=cursor,
        )
        requested = {k: set(result.get_requested_partitions(k)) for k in keys}
        requests = ranged_run_requests(
            requested, partition_keys, f"{config.name}:{result.cursor.evaluation_id}"
        )
        if requests:
            context.log.info(
                "requested "
                + ", ".join(f"{k.path[-1]} {len(v)}" for k, v in requested.items() if v)
                + f" in {len(requests)} runs"
            )
        return SensorResult(run_requests=requests, cursor=serialize_value(result.cursor))

    return automation
