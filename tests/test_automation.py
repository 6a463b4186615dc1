"""Input observation, staleness, partial recomputation, the input sensor, the schedule, the daemon.

The volume is (24, 64, 64) voxels in blocks of (8, 32, 32) with context 2: a
3 x 2 x 2 grid of 12 partitions. Inputs are chunked (4, 16, 16), so a change in
the chunk at the volume's corner reaches only block ``z0_y0_x0``'s read ROI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from conftest import (
    STEPS,
    build_defs,
    build_pipeline,
    copy_volume,
    dagster_bin,
    make_dagster_home,
    subprocess_env,
    write_pipeline_yaml,
)
from dagster import (
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    materialize,
)
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.data_version import (
    CachingStaleStatusResolver,
    StaleStatus,
)
from dagster._core.loader import LoadingContextForTest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from volara_assets.geometry import BlockGrid, Roi
from volara_assets.storage.arrays import create_array, open_array
from volara_assets.storage.fingerprints import (
    input_state,
    observe_input,
    partition_data_versions,
)

COMPUTED = ("fragments", "fragment_nodes", "edges", "lut", "segments")
#: A corner region of block z0_y0_x0, inside one input chunk (4, 16, 16).
CHANGED = Roi((1, 4, 4), (2, 8, 8))


# ----------------------------------------------------------------------------- helpers


def change_affinities(path: Path, roi: Roi = CHANGED, value: int = 0) -> None:
    """Set every affinity in ``roi``: 0 cuts (a wall of background), 255 joins."""
    array = open_array(path, "r+")
    data = array.read(roi)
    data[...] = value
    array.write(roi, data)


def changed_chunk_roi(roi: Roi, chunks: tuple[int, int, int]) -> Roi:
    """``roi`` grown to whole chunks: what a file-level fingerprint can resolve."""
    begin = tuple(b // c * c for b, c in zip(roi.begin, chunks, strict=True))
    end = tuple(-(-e // c) * c for e, c in zip(roi.end, chunks, strict=True))
    return Roi(begin, tuple(e - b for b, e in zip(begin, end, strict=True)))  # type: ignore[arg-type]


def partitions_touching(grid: BlockGrid, roi: Roi) -> set[str]:
    return {grid.partition_of_block(i) for i in grid.blocks_touching(roi)}


def with_automation(yaml_path: Path, **automation: Any) -> Path:
    doc = yaml.safe_load(yaml_path.read_text())
    doc["automation"] = automation
    yaml_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return yaml_path


def observe(defs: Definitions, key: AssetKey, instance: DagsterInstance) -> None:
    """Observe the affinities in process, as the UI's "Observe sources" does."""
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(asset_selection=[key], instance=instance).success


def automation_tick(defs: Definitions, instance: DagsterInstance, cursor: str | None):
    """One tick of the pipeline's automation sensor, as the daemon evaluates it."""
    sensor_def = defs.resolve_sensor_def("demo__automation")
    with build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as ctx:
        result = sensor_def(ctx)
    assert isinstance(result, SensorResult)
    return result


def launch(bp, instance: DagsterInstance, request: RunRequest) -> None:
    """Execute a run request in process (the daemon would launch it as a run)."""
    result = materialize(
        bp.assets + list(bp.built.asset_checks),
        selection=request.asset_selection,
        resources=bp.resources,
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
    )
    assert result.success


def requested_partitions(bp, request: RunRequest) -> dict[str, set]:
    """Asset name -> the partitions ``request`` materializes."""
    tags = request.tags
    if ASSET_PARTITION_RANGE_START_TAG in tags:
        keys = bp.partition_keys
        first = keys.index(tags[ASSET_PARTITION_RANGE_START_TAG])
        last = keys.index(tags[ASSET_PARTITION_RANGE_END_TAG])
        partitions = set(keys[first : last + 1])
    else:
        partitions = {request.partition_key}
    return {k.path[-1]: partitions for k in request.asset_selection}


def stale_partitions(bp, instance: DagsterInstance) -> dict[str, set]:
    """What the UI shows as stale, from the same resolver the webserver uses."""
    resolver = CachingStaleStatusResolver(
        instance, AssetGraph.from_assets(bp.assets), LoadingContextForTest(instance)
    )
    out: dict[str, set] = {}
    for name in COMPUTED:
        keys = [None] if name == "lut" else bp.partition_keys
        out[name] = {k for k in keys if resolver.get_status(bp.key(name), k) == StaleStatus.STALE}
    return out


def materialized_after(bp, instance: DagsterInstance, name: str, storage_id: int) -> list:
    """Partitions (``None`` for the LUT) of ``name`` materialized after ``storage_id``."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=bp.key(name), after_storage_id=storage_id), limit=1000
    ).records
    return [r.partition_key for r in records]


def full_run(bp, instance: DagsterInstance) -> None:
    keys = bp.partition_keys
    result = materialize(
        bp.assets + list(bp.built.asset_checks),
        selection=bp.keys(*STEPS),
        resources=bp.resources,
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )
    assert result.success


def read_all(bp) -> dict[str, np.ndarray]:
    p = bp.built.pipeline
    roi = p.grid.volume_roi
    store = p.graph.store()
    nodes, edges = store.read_nodes(), store.read_edges()
    return {
        "fragments": p.fragments.read(roi),
        "segments": p.segments.read(roi),
        "node_ids": nodes.ids,
        "node_sizes": nodes.sizes,
        "edges": np.stack([edges.u, edges.v]),
        "lut": p.lut.load(),
    }


# ----------------------------------------------------------------------------- data versions


def test_versions_change_for_exactly_the_partitions_whose_read_roi_changed(
    demo_volume: Path, tmp_path: Path
) -> None:
    volume = copy_volume(demo_volume, tmp_path)
    grid = BlockGrid((24, 64, 64), (8, 32, 32), (2, 2, 2))
    cache = tmp_path / "versions.json"
    first = observe_input(volume / "affs", grid, cache)
    before = first.versions
    assert len(before) == 12 and len(set(before.values())) == 12
    assert first.chunks == 6 * 4 * 4 and first.chunks_read == first.chunks  # no cache yet
    again = observe_input(volume / "affs", grid, cache)
    assert again.versions == before and again.chunks_read == 0 and again.partitions_rehashed == 0
    # Without the cache the same versions are computed from scratch.
    assert partition_data_versions(volume / "affs", grid) == before

    # Voxels z 6..8 at the y/x centre: read by every z0 block (write ROI) and z1 block
    # (context). Its chunk (4..8, 16..32, 16..32) also reaches the z1 blocks at other
    # voxels, but only the changed voxels count.
    boundary = Roi((6, 30, 30), (2, 4, 4))
    change_affinities(volume / "affs", boundary)
    obs = observe_input(volume / "affs", grid, cache)
    changed = {k for k in before if before[k] != obs.versions[k]}
    assert changed == partitions_touching(grid, boundary)
    assert len(changed) == 8
    assert obs.chunks_read == 4  # the 4 chunk files the change wrote, nothing else
    assert obs.versions == partition_data_versions(volume / "affs", grid)

    # Inside one chunk read by 2 partitions' context, but 3 voxels from their read ROIs.
    before = obs.versions
    far = Roi((12, 16, 16), (1, 4, 4))  # chunk (12..16, 16..32, 16..32): z1 blocks only
    change_affinities(volume / "affs", far)
    obs = observe_input(volume / "affs", grid, cache)
    assert {k for k in before if before[k] != obs.versions[k]} == {"z1_y0_x0"}
    assert partitions_touching(grid, changed_chunk_roi(far, (4, 16, 16))) != {"z1_y0_x0"}

    before = obs.versions
    change_affinities(volume / "affs", CHANGED)
    after = observe_input(volume / "affs", grid, cache).versions
    assert {k for k in before if before[k] != after[k]} == {"z0_y0_x0"}
    assert input_state(after) != input_state(before)


def test_versions_ignore_a_rewrite_with_the_same_values(demo_volume: Path, tmp_path: Path) -> None:
    volume = copy_volume(demo_volume, tmp_path)
    grid = BlockGrid((24, 64, 64), (8, 32, 32), (2, 2, 2))
    cache = tmp_path / "versions.json"
    array = open_array(volume / "affs", "r+")
    before = observe_input(volume / "affs", grid, cache)
    time.sleep(0.01)
    array.write(CHANGED, array.read(CHANGED))  # same values, chunk file rewritten
    after = observe_input(volume / "affs", grid, cache)
    assert after.chunks_read == 1  # its stat changed: read once...
    assert after.versions == before.versions  # ... and found equal
    assert observe_input(volume / "affs", grid, cache).chunks_read == 0  # and remembered
    # A torn cache is never trusted: everything is read again, same versions.
    cache.write_text("{not json")
    rebuilt = observe_input(volume / "affs", grid, cache)
    assert rebuilt.versions == before.versions and rebuilt.chunks_read == rebuilt.chunks


# ----------------------------------------------------------------------------- staleness


def drive_automation(
    bp, defs: Definitions, instance: DagsterInstance, cursor: str | None
) -> tuple[dict[str, set], list[dict[str, int]], str]:
    """Let the automation conditions drive, one tick at a time, running what they request.

    Returns the union of the stale partitions seen before every tick, the waves
    (requested partitions per asset and runs, per tick) and the sensor's cursor.
    """
    ever_stale: dict[str, set] = {n: set() for n in COMPUTED}
    requested: dict[str, list] = {n: [] for n in COMPUTED}
    waves: list[dict[str, int]] = []
    for _ in range(10):
        for name, keys in stale_partitions(bp, instance).items():
            ever_stale[name] |= keys
        result = automation_tick(defs, instance, cursor)
        cursor = result.cursor
        if not result.run_requests:
            break
        tick: dict[str, set] = {}
        for request in result.run_requests:
            for name, keys in requested_partitions(bp, request).items():
                tick.setdefault(name, set()).update(keys)
        waves.append(
            {n: len(tick[n]) for n in COMPUTED if n in tick} | {"runs": len(result.run_requests)}
        )
        for name, keys in tick.items():
            requested[name].extend(keys)
        for request in result.run_requests:
            launch(bp, instance, request)
    assert all(not v for v in stale_partitions(bp, instance).values())
    # Each partition requested once: nothing recomputed twice.
    for name, keys in requested.items():
        assert len(keys) == len(set(keys)), (name, sorted(keys, key=str))
    return ever_stale, waves, cursor


def shifted(key: str, delta: tuple[int, int, int]) -> str:
    """The key of the block ``delta`` blocks further along (z, y, x), written out by hand."""
    z, y, x = (int(part[1:]) for part in key.split("_"))
    return f"z{z + delta[0]}_y{y + delta[1]}_x{x + delta[2]}"


def segment_ids_changed(grid: BlockGrid, before: np.ndarray, after: np.ndarray) -> set[str]:
    """Partitions holding a fragment whose segment id differs between two LUTs (or that one
    of them lacks): the segments partitions whose voxels can differ."""
    old = dict(zip(before[0].tolist(), before[1].tolist(), strict=True))
    new = dict(zip(after[0].tolist(), after[1].tolist(), strict=True))
    ids = [f for f in set(old) | set(new) if old.get(f) != new.get(f)]
    blocks = grid.block_of_fragment(np.array(ids, dtype=np.uint64)) if ids else []
    return {grid.partition_of_block(int(b)) for b in blocks}


#: A 4 x 4 x 4 grid on the (24, 64, 64) demo volume: blocks (6, 16, 16), context 2. Input
#: chunks (4, 16, 16) do not align with the blocks in z, so versions must be exact.
GRID_4 = {"block_size": (6, 16, 16), "context": (2, 2, 2)}
#: Changes: a region, the value every affinity in it gets (0 cuts, 255 joins) and the
#: fragments partitions whose read ROI it meets.
CHANGES = {
    # Inside block z1_y1_x1 (z 6..12, y/x 16..32), >= 2 voxels from every face; all of it
    # lies in one large object, so no segment id changes outside the block.
    "interior": (Roi((8, 20, 20), (2, 8, 8)), 0, {"z1_y1_x1"}),
    # Inside block z1_y2_x2, joining the objects that meet there: a far larger segment now
    # takes the smallest fragment id of the merged one, in every block it spans.
    "interior join": (Roi((8, 34, 34), (2, 12, 12)), 255, {"z1_y2_x2"}),
    # Across the x face between z1_y1_x1 and z1_y1_x2 (x = 32).
    "face": (Roi((8, 20, 31), (2, 8, 2)), 0, {"z1_y1_x1", "z1_y1_x2"}),
    # Around the corner shared by z1..z2, y1..y2, x1..x2 (12, 32, 32).
    "corner": (
        Roi((11, 31, 31), (2, 2, 2)),
        0,
        {f"z{z}_y{y}_x{x}" for z in (1, 2) for y in (1, 2) for x in (1, 2)},
    ),
}


def test_a_change_recomputes_exactly_what_depends_on_it(demo_volume: Path, tmp_path: Path) -> None:
    """Interior, face and corner changes on a 4 x 4 x 4 grid, one after another on one
    instance: what turns stale and what is recomputed, per asset, and the result equals a
    from-scratch run after each."""
    volume = copy_volume(demo_volume, tmp_path)
    bp = build_pipeline(write_pipeline_yaml(tmp_path / "incremental", volume, **GRID_4))
    defs = build_defs(tmp_path / "incremental" / "pipeline.yaml")
    grid = bp.built.pipeline.grid
    assert grid.grid_shape == (4, 4, 4)
    instance = DagsterInstance.ephemeral()
    affinities = bp.key("affinities")

    observe(defs, affinities, instance)
    full_run(bp, instance)
    assert all(not v for v in stale_partitions(bp, instance).values())
    # Provenance of a single run over every partition: each partition's event points at
    # the affinities' latest observation, which lets Dagster compare versions partition by
    # partition. No code_version: with one, a rematerialized partition would keep its data
    # version (Dagster hashes observed inputs as empty) and its dependants never go stale.
    for name in ("fragments", "edges", "segments"):
        assert set(bp.asset_def(name).code_versions_by_key.values()) == {None}
    records = instance.fetch_materializations(bp.key("fragments"), limit=100).records
    assert sorted(r.partition_key for r in records) == bp.partition_keys
    pointer = "dagster/input_event_pointer/demo/affinities"
    assert all(r.event_log_entry.tags.get(pointer, "").isdigit() for r in records)
    # The automation sensor's first tick: nothing to do, and it sets its cursor.
    first = automation_tick(defs, instance, None)
    assert first.run_requests == []
    cursor = first.cursor

    report = []
    for case, (roi, value, reading) in CHANGES.items():
        before = read_all(bp)
        mark = max(r.asset_entry.last_event_storage_id or 0 for r in instance.get_asset_records())
        change_affinities(volume / "affs", roi, value)
        observe(defs, affinities, instance)

        # Exactly the partitions whose read ROI holds a changed voxel get a new version,
        # although the changed input chunks reach further.
        assert partitions_touching(grid, roi) == reading
        assert partitions_touching(grid, changed_chunk_roi(roi, (4, 16, 16))) > reading
        assert stale_partitions(bp, instance)["fragments"] == reading

        ever_stale, waves, cursor = drive_automation(bp, defs, instance, cursor)
        after = read_all(bp)
        rematerialized = {n: set(materialized_after(bp, instance, n, mark)) for n in COMPUTED}

        # Edges read their own block and the three upper faces: an edges partition is
        # recomputed when its own fragments or those of its +z, +y or +x neighbour changed.
        forward = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
        edges = {k for k in bp.partition_keys if any(shifted(k, d) in reading for d in forward)}
        assert len(edges) == {"interior": 4, "interior join": 4, "face": 7, "corner": 20}[case]
        # Segments: the changed blocks, and the blocks holding a fragment whose segment id
        # moved (segment ids are smallest fragment ids, so a split or merge can reach far).
        segments = reading | segment_ids_changed(grid, before["lut"], after["lut"])
        assert len(segments) < len(bp.partition_keys), case
        if case == "interior join":
            assert len(segments) > 1  # ids moved in blocks the change never reached
        expected = {
            "fragments": reading,
            "fragment_nodes": reading,
            "edges": edges,
            "lut": {None},
            "segments": segments,
        }
        for name in COMPUTED:
            assert ever_stale[name] == expected[name], (case, name, ever_stale[name])
            assert rematerialized[name] == expected[name], (case, name, rematerialized[name])
        # One wave per step, each one run per contiguous range of partitions.
        assert [set(w) - {"runs"} for w in waves] == [
            {"fragments", "fragment_nodes"},
            {"edges"},
            {"lut"},
            {"segments"},
        ], waves
        # Fragments differ from before the change only inside the changed blocks.
        diff = np.argwhere(after["fragments"] != before["fragments"])
        assert len(diff) > 0
        changed_blocks = {
            grid.partition_of_block(
                grid.block_index([int(c) // b for c, b in zip(voxel, grid.block_size, strict=True)])
            )
            for voxel in diff
        }
        assert changed_blocks <= reading
        report.append(
            f"{case:>13}: stale "
            + ", ".join(f"{n} {len(ever_stale[n])}" for n in COMPUTED)
            + " | rematerialized "
            + ", ".join(f"{n} {len(rematerialized[n])}" for n in COMPUTED)
            + f" | waves {waves}"
        )
        if case not in ("interior join", "corner"):
            continue  # a from-scratch run costs a minute: where segments were skipped, and last
        # Segments partitions left alone hold what they would after a full run.
        scratch = build_pipeline(
            write_pipeline_yaml(tmp_path / f"scratch_{case.replace(' ', '_')}", volume, **GRID_4)
        )
        full_run(scratch, DagsterInstance.ephemeral())
        want = read_all(scratch)
        for name in want:
            np.testing.assert_array_equal(after[name], want[name], err_msg=f"{case}: {name}")
    print("\n" + "\n".join(report))


# ----------------------------------------------------------------------------- sensor, schedule


def test_input_sensor_fires_once_per_input_state(demo_volume: Path, tmp_path: Path) -> None:
    # The affinities array is declared (metadata, no chunk written yet): the code
    # location loads, and the sensor sees the data appear later.
    source = open_array(demo_volume / "affs")
    volume = tmp_path / "later.zarr"
    create_array(
        volume / "affs",
        source.spatial_shape,
        source.dtype,
        offset=source.offset,
        voxel_size=source.voxel_size,
        chunks=source.spatial_chunks,
        axis_names=source.axis_names,
        units=source.units,
        num_channels=source.num_channels,
        channel_axis_name=source.axis_names[0],
    )
    yaml_path = with_automation(
        write_pipeline_yaml(tmp_path / "out", volume, ground_truth=False),
        input_sensor_interval=7,
    )
    defs = build_defs(yaml_path)
    sensor_def = defs.resolve_sensor_def("demo__input_sensor")
    assert sensor_def.minimum_interval_seconds == 7
    assert sensor_def.default_status == DefaultSensorStatus.RUNNING
    keys = build_pipeline(yaml_path).partition_keys
    instance = DagsterInstance.ephemeral()

    def tick(cursor: str | None) -> SensorResult | SkipReason:
        with build_sensor_context(instance=instance, cursor=cursor, definitions=defs) as ctx:
            result = sensor_def(ctx)
        if isinstance(result, SensorResult):
            assert all(isinstance(e, AssetObservation) for e in result.asset_events)
            for event in result.asset_events:  # what the daemon stores
                instance.report_runless_asset_event(event)
        return result

    def observed(result: SensorResult) -> list[str]:
        return sorted(e.partition for e in result.asset_events)

    empty = tick(None)
    assert isinstance(empty, SensorResult) and observed(empty) == keys
    assert isinstance(tick(empty.cursor), SkipReason)

    # The data appears: every partition has a new version, reported once.
    open_array(volume / "affs", "r+").write(source.volume_roi, source.read(source.volume_roi))
    appeared = tick(empty.cursor)
    assert isinstance(appeared, SensorResult) and observed(appeared) == keys
    assert appeared.cursor != empty.cursor
    assert isinstance(tick(appeared.cursor), SkipReason)
    # A restarted daemon (no cursor) compares with what the instance recorded: nothing new.
    restarted = tick(None)
    assert isinstance(restarted, SensorResult) and restarted.asset_events == []
    assert restarted.cursor == appeared.cursor

    # A change: observations for exactly the partitions that read it, once.
    change_affinities(volume / "affs", CHANGED)
    changed = tick(appeared.cursor)
    assert isinstance(changed, SensorResult) and observed(changed) == ["z0_y0_x0"]
    assert isinstance(tick(changed.cursor), SkipReason)

    # The input goes away (moved, being rewritten): skip, say why.
    shutil.rmtree(volume / "affs")
    gone = tick(changed.cursor)
    assert isinstance(gone, SkipReason) and "no affinities" in gone.skip_message


def test_observe_schedule_is_stopped_by_default_and_observes(
    demo_volume: Path, tmp_path: Path
) -> None:
    yaml_path = write_pipeline_yaml(tmp_path / "out", demo_volume)
    defs = build_defs(yaml_path)
    schedule_def = defs.resolve_schedule_def("demo__observe_schedule")
    assert schedule_def.default_status == DefaultScheduleStatus.STOPPED
    assert schedule_def.cron_schedule == "0 * * * *"

    custom = build_defs(
        with_automation(yaml_path, observe_cron="*/5 * * * *", observe_schedule_running=True)
    ).resolve_schedule_def("demo__observe_schedule")
    assert custom.cron_schedule == "*/5 * * * *"
    assert custom.default_status == DefaultScheduleStatus.RUNNING

    instance = DagsterInstance.ephemeral()
    with build_schedule_context(instance=instance) as ctx:
        [request] = schedule_def.evaluate_tick(ctx).run_requests
    assert isinstance(request, RunRequest)
    job = defs.resolve_job_def(schedule_def.job_name)
    assert job.execute_in_process(instance=instance, tags=request.tags).success
    observed = instance.fetch_observations(
        AssetRecordsFilter(asset_key=AssetKey(["demo", "affinities"])), limit=100
    ).records
    assert {r.partition_key for r in observed} == {
        f"z{z}_y{y}_x{x}" for z in range(3) for y in range(2) for x in range(2)
    }


# ----------------------------------------------------------------------------- the daemon


def _ticked(instance: DagsterInstance, name: str) -> bool:
    for state in instance.all_instigator_state():
        if state.name == name:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5)
            return any(t.status.value in ("SUCCESS", "SKIPPED") for t in ticks)
    return False


def test_daemon_recomputes_the_stale_partitions_after_an_input_change(
    demo_volume: Path, tmp_path: Path
) -> None:
    from dagster._core.instance.ref import InstanceRef

    volume = copy_volume(demo_volume, tmp_path)
    yaml_path = with_automation(
        write_pipeline_yaml(tmp_path / "out", volume),
        input_sensor_interval=1,
        automation_interval=1,
    )
    bp = build_pipeline(yaml_path)
    defs = build_defs(yaml_path)
    home = make_dagster_home(tmp_path / "dagster_home")
    with open(home / "dagster.yaml", "a") as f:
        # Launch runs when submitted instead of queueing them for the next dequeue tick.
        f.write(
            "\nrun_coordinator:\n  module: dagster._core.run_coordinator\n"
            "  class: DefaultRunCoordinator\n"
        )
    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: volara_assets.definitions\n"
        "      attribute: defs\n"
    )
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    observe(defs, bp.key("affinities"), instance)
    full_run(bp, instance)

    env = subprocess_env(yaml_path, home)
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115 - closed in finally
    daemon = subprocess.Popen(
        [dagster_bin("dagster-daemon"), "run", "-w", str(tmp_path / "workspace.yaml")],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    start = time.monotonic()
    try:
        # Wait until both sensors have ticked once on the unchanged input.
        deadline = time.monotonic() + 60
        while not (
            _ticked(instance, "demo__input_sensor") and _ticked(instance, "demo__automation")
        ):
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(0.5)
        mark = max(r.asset_entry.last_event_storage_id or 0 for r in instance.get_asset_records())
        before = read_all(bp)
        change_affinities(volume / "affs", CHANGED)
        changed_at = time.monotonic()

        deadline = time.monotonic() + 240
        while True:
            done = {n: materialized_after(bp, instance, n, mark) for n in COMPUTED}
            finished = done["lut"] and "z0_y0_x0" in done["segments"]
            if finished and not any(stale_partitions(bp, instance).values()):
                break
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (
                done,
                (tmp_path / "daemon.log").read_text()[-3000:],
            )
            time.sleep(1)
        print(
            f"\ndaemon: up {changed_at - start:.0f} s before the change, caught up "
            f"{time.monotonic() - changed_at:.0f} s after it; rematerialized "
            + ", ".join(f"{n} {len(v)}" for n, v in done.items())
        )
        assert sorted(done["fragments"]) == ["z0_y0_x0"]
        assert sorted(done["edges"]) == ["z0_y0_x0"] and done["lut"] == [None]
        # The segments of the changed block, and of blocks whose fragments changed segment id.
        grid = bp.built.pipeline.grid
        moved = segment_ids_changed(grid, before["lut"], read_all(bp)["lut"])
        assert sorted(done["segments"]) == sorted({"z0_y0_x0"} | moved)
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=10)
        log.close()
