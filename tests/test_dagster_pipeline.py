"""The pipeline as Dagster assets, run with ``dagster.materialize`` on real zarr and SQLite.

Every test writes into its own output folder with its own Dagster instance; the
reference run (all partitions in one run) is shared by the tests in this module.
"""

from __future__ import annotations

import json
import logging
import random
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import STEPS, BuiltPipeline, build_pipeline, copy_volume, write_pipeline_yaml
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    materialize,
)
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.automation_tick_evaluation_context import (
    build_run_requests_with_backfill_policies,
)
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from volara_assets.geometry import Roi
from volara_assets.ops.metrics import evaluate
from volara_assets.storage.arrays import open_array
from volara_assets.tables import EdgeTable, NodeTable

#: The demo grid: (24, 64, 64) voxels in (8, 32, 32) blocks.
EXPECTED_KEYS = [f"z{z}_y{y}_x{x}" for z in range(3) for y in range(2) for x in range(2)]


# ----------------------------------------------------------------------------- helpers


def run_range(
    bp: BuiltPipeline,
    instance: DagsterInstance,
    names: tuple[str, ...] | list[str],
    first: str,
    last: str,
    *,
    raise_on_error: bool = True,
) -> ExecuteInProcessResult:
    """One run over partitions ``first...last`` (what ``--partition-range`` launches)."""
    return materialize(
        bp.assets,
        selection=bp.keys(*names),
        resources=bp.resources,
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
        raise_on_error=raise_on_error,
    )


def run_all(
    bp: BuiltPipeline, instance: DagsterInstance, names: tuple[str, ...] | list[str] = STEPS
) -> ExecuteInProcessResult:
    keys = bp.partition_keys
    return run_range(bp, instance, names, keys[0], keys[-1])


def run_one(
    bp: BuiltPipeline, instance: DagsterInstance, names: list[str], key: str | None
) -> ExecuteInProcessResult:
    return materialize(
        bp.assets,
        selection=bp.keys(*names),
        resources=bp.resources,
        instance=instance,
        partition_key=key,
    )


@dataclass
class Outputs:
    fragments: np.ndarray
    segments: np.ndarray
    nodes: NodeTable
    edges: EdgeTable


def sorted_nodes(nodes: NodeTable) -> NodeTable:
    order = np.argsort(nodes.ids, kind="stable")
    return NodeTable(nodes.ids[order], nodes.positions[order], nodes.sizes[order])


def sorted_edges(edges: EdgeTable) -> EdgeTable:
    order = np.lexsort((edges.v, edges.u))
    return EdgeTable(edges.u[order], edges.v[order], {k: c[order] for k, c in edges.scores.items()})


def read_outputs(bp: BuiltPipeline) -> Outputs:
    """Everything the pipeline wrote, read back from disk and SQL (not from Dagster)."""
    config = bp.config
    store = bp.built.pipeline.graph.store()
    return Outputs(
        fragments=open_array(config.fragments_array).read(bp.built.pipeline.grid.volume_roi),
        segments=open_array(config.segments_array).read(bp.built.pipeline.grid.volume_roi),
        nodes=sorted_nodes(store.read_nodes()),
        edges=sorted_edges(store.read_edges()),
    )


def assert_same_tables(a: Outputs, b: Outputs) -> None:
    assert len(a.nodes) == len(b.nodes) > 0
    np.testing.assert_array_equal(a.nodes.ids, b.nodes.ids)
    np.testing.assert_array_equal(a.nodes.positions, b.nodes.positions)
    np.testing.assert_array_equal(a.nodes.sizes, b.nodes.sizes)
    assert len(a.edges) == len(b.edges) > 0
    np.testing.assert_array_equal(a.edges.u, b.edges.u)
    np.testing.assert_array_equal(a.edges.v, b.edges.v)
    assert a.edges.scores.keys() == b.edges.scores.keys() == {"zyx_aff"}
    for name in a.edges.scores:
        np.testing.assert_array_equal(a.edges.scores[name], b.edges.scores[name])


def sql(db_url: str, query: str) -> list[tuple]:
    """Run ``query`` on the pipeline's SQLite file with the stdlib driver (no ORM)."""
    path = db_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


def assert_sql_consistent(bp: BuiltPipeline) -> None:
    """No duplicate node id or edge, and every row is filed under the block that owns it."""
    url = bp.config.db_url
    vpb = bp.built.pipeline.grid.voxels_per_block
    assert sql(url, "SELECT id FROM nodes GROUP BY id HAVING COUNT(*) > 1") == []
    assert sql(url, "SELECT u, v FROM edges GROUP BY u, v HAVING COUNT(*) > 1") == []
    [(n, n_distinct)] = sql(url, "SELECT COUNT(*), COUNT(DISTINCT id) FROM nodes")
    assert n == n_distinct > 0
    # A node belongs to the block whose id range holds it; an edge to the block of u.
    assert sql(url, f"SELECT id, block FROM nodes WHERE (id - 1) / {vpb} != block") == []
    assert sql(url, f"SELECT u, v, block FROM edges WHERE (u - 1) / {vpb} != block") == []
    assert sql(url, "SELECT u, v FROM edges WHERE u >= v") == []
    # Every edge joins two stored nodes.
    dangling = (
        "SELECT COUNT(*) FROM edges "
        "WHERE u NOT IN (SELECT id FROM nodes) OR v NOT IN (SELECT id FROM nodes)"
    )
    assert sql(url, dangling) == [(0,)]


def partition_records(instance: DagsterInstance, key: AssetKey) -> dict[str, list]:
    """Materialization records of ``key`` per partition, oldest first."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key), limit=10_000, ascending=True
    ).records
    out: dict[str, list] = {}
    for r in records:
        out.setdefault(r.asset_materialization.partition, []).append(r)
    return out


def block_index(bp: BuiltPipeline, key: str) -> int:
    [block] = bp.built.pipeline.grid.partition_blocks(key)
    return block.index


# ----------------------------------------------------------------------------- the reference run


@dataclass
class ReferenceRun:
    bp: BuiltPipeline
    instance: DagsterInstance
    result: ExecuteInProcessResult
    outputs: Outputs
    labels: np.ndarray


@pytest.fixture(scope="module")
def reference(demo_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    """Every step over every partition in one run (``--partition-range FIRST...LAST``)."""
    bp = build_pipeline(write_pipeline_yaml(tmp_path_factory.mktemp("reference"), demo_volume))
    assert bp.partition_keys == EXPECTED_KEYS
    instance = DagsterInstance.ephemeral()
    result = run_all(bp, instance)
    assert result.success
    labels = open_array(demo_volume / "labels").read(Roi((0, 0, 0), (24, 64, 64)))
    return ReferenceRun(bp, instance, result, read_outputs(bp), labels)


def test_all_partitions_in_one_run_reproduce_ground_truth(reference: ReferenceRun) -> None:
    bp, out, labels = reference.bp, reference.outputs, reference.labels

    # One run covered all 12 partitions of every step.
    runs = reference.instance.get_runs()
    assert len(runs) == 1
    assert runs[0].tags[ASSET_PARTITION_RANGE_START_TAG] == "z0_y0_x0"
    assert runs[0].tags[ASSET_PARTITION_RANGE_END_TAG] == "z2_y1_x1"
    for name in ("fragments", "fragment_nodes", "edges", "segments"):
        assert reference.instance.get_materialized_partitions(bp.key(name)) == set(EXPECTED_KEYS)

    scores = evaluate(out.segments, labels)
    assert scores["voi_split"] == pytest.approx(0.0, abs=1e-12)
    assert scores["voi_merge"] == pytest.approx(0.0, abs=1e-12)
    assert scores["are"] == pytest.approx(0.0, abs=1e-12)
    n_labels = len(np.unique(labels[labels != 0]))
    assert scores["n_segments"] == scores["n_labels"] == n_labels > 10

    # Segments are the labels up to a bijective relabelling, background (0) included.
    pairs = np.unique(np.stack([labels.ravel(), out.segments.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    mapping = dict(zip(pairs[0].tolist(), pairs[1].tolist(), strict=True))
    assert mapping[0] == 0
    assert 0 not in {s for label, s in mapping.items() if label != 0}

    # Fragments over-segment (a cell crossing a block border is cut) but never merge cells,
    # and ids come from their block's id range.
    frag_pairs = np.unique(np.stack([out.fragments.ravel(), labels.ravel()]), axis=1)
    assert len(np.unique(frag_pairs[0])) == frag_pairs.shape[1]
    assert len(out.nodes) > n_labels
    np.testing.assert_array_equal(np.unique(out.fragments[out.fragments != 0]), out.nodes.ids)

    # The evaluation check of the same run saw the same scores.
    [check] = [
        e.event_specific_data
        for e in reference.result.all_events
        if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
        and e.event_specific_data.asset_check_key.name == "evaluation"
    ]
    assert check.asset_check_key.asset_key == bp.key("segments")
    assert check.passed
    assert check.metadata["voi_split"].value == pytest.approx(0.0, abs=1e-12)
    assert check.metadata["are"].value == pytest.approx(0.0, abs=1e-12)


def test_each_partition_records_its_own_metadata(reference: ReferenceRun) -> None:
    bp, instance, out = reference.bp, reference.instance, reference.outputs
    grid = bp.built.pipeline.grid
    node_block = (out.nodes.ids - 1) // np.uint64(grid.voxels_per_block)
    edge_block = (out.edges.u - 1) // np.uint64(grid.voxels_per_block)
    per_asset = {
        name: partition_records(instance, bp.key(name))
        for name in ("fragments", "fragment_nodes", "edges", "segments")
    }
    for name, records in per_asset.items():
        assert set(records) == set(EXPECTED_KEYS), name
        assert all(len(r) == 1 for r in records.values()), name

    total_fragments = 0
    for key in EXPECTED_KEYS:
        index = block_index(bp, key)
        block = grid.block(index)
        n_fragments = int(np.sum(node_block == index))
        n_edges = int(np.sum(edge_block == index))
        seg_block = out.segments[block.write_roi.slices]
        n_segments = len(np.unique(seg_block[seg_block != 0]))
        for name in ("fragments", "fragment_nodes"):
            md = per_asset[name][key][0].asset_materialization.metadata
            assert md["fragments"].value == n_fragments > 0, (name, key)
            assert md["voxels"].value == block.write_roi.size == 8 * 32 * 32
            assert md["blocks"].value == 1
            assert isinstance(md["seconds"].value, float) and 0 <= md["seconds"].value < 60
        md = per_asset["edges"][key][0].asset_materialization.metadata
        assert md["edges"].value == n_edges, key
        assert isinstance(md["seconds"].value, float)
        md = per_asset["segments"][key][0].asset_materialization.metadata
        assert md["segments"].value == n_segments > 0, key
        total_fragments += n_fragments
    assert total_fragments == len(out.nodes)

    # The partitions differ (a metadata copied from one partition to all would not).
    counts = {
        per_asset["fragments"][k][0].asset_materialization.metadata["fragments"].value
        for k in EXPECTED_KEYS
    }
    assert len(counts) > 1

    [lut] = instance.fetch_materializations(bp.key("lut"), limit=10).records
    md = lut.asset_materialization.metadata
    assert md["fragments"].value == len(out.nodes)
    assert md["edges"].value == len(out.edges)
    assert md["segments"].value == len(np.unique(reference.labels[reference.labels != 0]))


def test_one_partition_at_a_time_in_shuffled_order_is_identical(
    reference: ReferenceRun, demo_volume: Path, tmp_path: Path
) -> None:
    bp = build_pipeline(write_pipeline_yaml(tmp_path / "shuffled", demo_volume))
    instance = DagsterInstance.ephemeral()
    rng = random.Random(3)
    keys = list(bp.partition_keys)
    for names in (["fragments", "fragment_nodes"], ["edges"], ["lut"], ["segments"]):
        if names == ["lut"]:
            run_one(bp, instance, names, None)
            continue
        rng.shuffle(keys)
        assert keys != EXPECTED_KEYS
        for key in keys:
            run_one(bp, instance, names, key)

    # One run per partition per step, plus one for the LUT.
    assert len(instance.get_runs()) == 3 * 12 + 1
    out = read_outputs(bp)
    ref = reference.outputs
    assert out.fragments.dtype == ref.fragments.dtype == np.uint64
    np.testing.assert_array_equal(out.fragments, ref.fragments)
    np.testing.assert_array_equal(out.segments, ref.segments)
    assert_same_tables(out, ref)
    assert_sql_consistent(bp)


def test_rematerializing_a_subset_keeps_every_row_once(
    demo_volume: Path, tmp_path: Path, reference: ReferenceRun
) -> None:
    bp = build_pipeline(write_pipeline_yaml(tmp_path / "subset", demo_volume))
    instance = DagsterInstance.ephemeral()
    run_all(bp, instance)
    before = read_outputs(bp)
    assert_sql_consistent(bp)

    # Three neighbouring partitions of fragments and edges again (one run), then lut+segments.
    subset = ["z1_y0_x0", "z1_y0_x1", "z1_y1_x0"]
    result = run_range(bp, instance, ["fragments", "fragment_nodes", "edges"], *subset[::2])
    assert result.success
    run_all(bp, instance, ["lut", "segments"])

    after = read_outputs(bp)
    assert_same_tables(after, before)
    assert_same_tables(after, reference.outputs)
    assert set(after.nodes.ids.tolist()) == set(before.nodes.ids.tolist())
    assert set(zip(after.edges.u.tolist(), after.edges.v.tolist(), strict=True)) == set(
        zip(before.edges.u.tolist(), before.edges.v.tolist(), strict=True)
    )
    url = bp.config.db_url
    assert sql(url, "SELECT COUNT(*) FROM nodes") == [(len(before.nodes),)]
    assert sql(url, "SELECT COUNT(*) FROM edges") == [(len(before.edges),)]
    assert_sql_consistent(bp)
    np.testing.assert_array_equal(after.segments, before.segments)
    np.testing.assert_array_equal(after.fragments, before.fragments)

    # Dagster recorded the subset twice and the rest once.
    for name in ("fragments", "fragment_nodes", "edges"):
        counts = {k: len(v) for k, v in partition_records(instance, bp.key(name)).items()}
        assert counts == {k: (2 if k in subset else 1) for k in EXPECTED_KEYS}, name


# ----------------------------------------------------------------------------- failures


def chunk_file(array_dir: Path, voxel: tuple[int, int, int]) -> Path:
    """The chunk file holding spatial ``voxel`` of a zarr v3 array with channels first."""
    meta = json.loads((array_dir / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    encoding = meta["chunk_key_encoding"]
    assert encoding["name"] == "default"
    sep = encoding.get("configuration", {}).get("separator", "/")
    chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    n_channel_axes = len(chunks) - 3
    # Channels are never split, so the channel chunk index is 0.
    index = [0] * n_channel_axes + [v // c for v, c in zip(voxel, chunks[-3:], strict=True)]
    path = array_dir / ("c" + sep + sep.join(str(i) for i in index))
    assert path.is_file(), path
    return path


def test_failing_blocks_fail_the_run_and_resume_only_recomputes_them(
    demo_volume: Path, tmp_path: Path, reference: ReferenceRun
) -> None:
    volume = copy_volume(demo_volume, tmp_path)
    bp = build_pipeline(write_pipeline_yaml(tmp_path / "failing", volume))
    instance = DagsterInstance.ephemeral()

    # Garbage in the two corner chunks of the input: (4, 16, 16) chunks are reached only
    # by the read ROI (block + 2 voxels of context) of the corner block that holds them.
    corrupt = [chunk_file(volume / "affs", (0, 0, 0)), chunk_file(volume / "affs", (23, 63, 63))]
    saved = [p.read_bytes() for p in corrupt]
    for p in corrupt:
        p.write_bytes(b"\x00garbage, not zstd\xff" * 7)
    failing = {"z0_y0_x0", "z2_y1_x1"}
    succeeded = set(EXPECTED_KEYS) - failing

    result = run_range(
        bp, instance, STEPS, EXPECTED_KEYS[0], EXPECTED_KEYS[-1], raise_on_error=False
    )
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert failure.step_key == "demo__fragments"
    user = failure.step_failure_data.user_failure_data
    assert user is not None
    assert "2 of 12 blocks failed" in user.description
    assert "10 of 12 partitions completed" in user.description
    for key in failing:
        assert f"{key}: " in user.description
    # ... each naming the chunk file that could not be decoded.
    for chunk, key in zip(corrupt, ("z0_y0_x0", "z2_y1_x1"), strict=True):
        line = next(x for x in user.description.splitlines() if x.strip().startswith(key))
        assert f"chunk file {chunk} cannot be decoded" in line
    assert sorted(user.metadata["failed_blocks"].value) == sorted(failing)
    # ... and each failing block was logged as an error with its key, as it happened.
    logged = {
        key
        for e in instance.all_logs(result.run_id)
        if e.level >= logging.ERROR
        for key in re.findall(r"block (\S+) failed: ", e.user_message or "")
    }
    assert logged == failing

    # The partitions whose blocks all succeeded are recorded; the failing ones are not.
    for name in ("fragments", "fragment_nodes"):
        assert instance.get_materialized_partitions(bp.key(name)) == succeeded, name
    # Downstream steps did not run on partial input.
    started = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START}
    assert started == {"demo__fragments"}
    for name in ("edges", "segments"):
        assert instance.get_materialized_partitions(bp.key(name)) == set(), name
    assert instance.fetch_materializations(bp.key("lut"), limit=1).records == []
    assert not Path(bp.config.lut_path).exists()
    assert not (Path(bp.config.segments_array) / "c").exists()
    # No rows from the failing blocks.
    blocks_in_sql = {b for (b,) in sql(bp.config.db_url, "SELECT DISTINCT block FROM nodes")}
    assert blocks_in_sql == {block_index(bp, k) for k in succeeded}

    # The fragments of the succeeded blocks (one chunk each) must not be rewritten on resume.
    frag_dir = Path(bp.config.fragments_array)
    stamps = {k: chunk_file(frag_dir, grid_begin(bp, k)).stat().st_mtime_ns for k in succeeded}

    # Resume: restore the input and materialize only the missing partitions, with the
    # runs Dagster's backfill planner makes for them (a UI "materialize missing"
    # backfill): with BackfillPolicy.single_run, one run per contiguous range of keys.
    for p, data in zip(corrupt, saved, strict=True):
        p.write_bytes(data)
    step = ("fragments", "fragment_nodes")
    missing = {
        AssetKeyPartitionKey(bp.key(name), k)
        for name in step
        for k in set(bp.partition_keys) - instance.get_materialized_partitions(bp.key(name))
    }
    assert {ap.partition_key for ap in missing} == failing
    requests = build_run_requests_with_backfill_policies(
        missing, AssetGraph.from_assets(bp.assets), instance
    )
    ranges = sorted(
        (r.tags[ASSET_PARTITION_RANGE_START_TAG], r.tags[ASSET_PARTITION_RANGE_END_TAG])
        for r in requests
    )
    assert ranges == [("z0_y0_x0", "z0_y0_x0"), ("z2_y1_x1", "z2_y1_x1")]
    resume_runs = {}
    for request in requests:
        assert set(request.asset_selection) == set(bp.keys(*step))
        r = materialize(
            bp.assets,
            selection=request.asset_selection,
            resources=bp.resources,
            instance=instance,
            tags=request.tags,
        )
        resume_runs[request.tags[ASSET_PARTITION_RANGE_START_TAG]] = r.run_id
    for name in ("fragments", "fragment_nodes"):
        assert instance.get_materialized_partitions(bp.key(name)) == set(EXPECTED_KEYS)
        records = partition_records(instance, bp.key(name))
        for key in EXPECTED_KEYS:
            [record] = records[key]  # exactly one materialization: nothing was recomputed
            expected_run = resume_runs.get(key, result.run_id)
            assert record.run_id == expected_run, (name, key)
    assert {k: chunk_file(frag_dir, grid_begin(bp, k)).stat().st_mtime_ns for k in succeeded} == (
        stamps
    )
    assert run_all(bp, instance, ["edges", "lut", "segments"]).success

    out = read_outputs(bp)
    np.testing.assert_array_equal(out.fragments, reference.outputs.fragments)
    np.testing.assert_array_equal(out.segments, reference.outputs.segments)
    assert_same_tables(out, reference.outputs)
    assert_sql_consistent(bp)
    assert evaluate(out.segments, reference.labels)["voi"] == pytest.approx(0.0, abs=1e-12)
    # The failed run is on record as failed, the others succeeded.
    statuses = Counter(r.status.value for r in instance.get_runs())
    assert statuses == {"FAILURE": 1, "SUCCESS": 3}


def grid_begin(bp: BuiltPipeline, key: str) -> tuple[int, int, int]:
    [block] = bp.built.pipeline.grid.partition_blocks(key)
    return block.write_roi.begin
