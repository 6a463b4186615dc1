"""The IO managers own storage: writers, per-partition storage metadata, verification on output."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import build_pipeline, write_pipeline_yaml
from dagster import AssetKey, DagsterInstance, materialize

from volara_assets.runtime.bound import bound_pipeline
from volara_assets.runtime.step import StepReport
from volara_assets.storage.fingerprints import ChunkFiles


def test_each_partition_records_where_and_what_its_blocks_stored(
    demo_volume: Path, tmp_path: Path
) -> None:
    bp = build_pipeline(write_pipeline_yaml(tmp_path / "out", demo_volume))
    pipeline = bp.built.pipeline
    # The factory and the IO managers share the process's one bound pipeline.
    assert bound_pipeline(bp.config) is pipeline
    assert bp.built.resources["demo__zarr_io"].pipeline is pipeline
    instance = DagsterInstance.ephemeral()
    keys = bp.partition_keys
    for key in keys[3:6]:
        result = materialize(
            bp.assets,
            selection=bp.keys("fragments", "fragment_nodes"),
            partition_key=key,
            resources=bp.resources,
            instance=instance,
        )
        assert result.success
    store = pipeline.graph.store()
    grid = pipeline.grid
    files = ChunkFiles(pipeline.fragments.path)
    records = instance.fetch_materializations(AssetKey(["demo", "fragments"]), limit=100).records
    by_partition = {r.partition_key: r.asset_materialization.metadata for r in records}
    # Partitions never materialized have no record.
    assert set(by_partition) == set(keys[3:6])
    for key in keys[3:6]:
        (block,) = grid.partition_blocks(key)
        md = by_partition[key]
        rows = store.rows_per_block("nodes", [block.index])[block.index]
        assert rows > 0
        assert md["fragments"].value == rows
        assert md["blocks"].value == 1
        assert md["path"].value == pipeline.fragments.path
        assert md["stored_chunks"].value == files.stored(block.write_roi)[0] == 1
        assert md["stored_bytes"].value == files.file(block.coords).stat().st_size


def test_sql_io_manager_refuses_a_report_the_stored_rows_contradict(
    demo_volume: Path, tmp_path: Path
) -> None:
    bp = build_pipeline(write_pipeline_yaml(tmp_path / "out", demo_volume))
    result = materialize(
        bp.assets,
        selection=bp.keys("fragments", "fragment_nodes"),
        partition_key=bp.partition_keys[0],
        resources=bp.resources,
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success
    sql = bp.built.resources["demo__sql_io"]
    rows = bp.built.pipeline.graph.store().rows_per_block("nodes", [0])[0]
    honest = StepReport(
        [bp.partition_keys[0]],
        {bp.partition_keys[0]: [0]},
        {bp.partition_keys[0]: {"blocks": 1, "fragments": rows}},
    )
    sql.verify("fragment_nodes", honest)
    lying = StepReport(
        [bp.partition_keys[0]],
        {bp.partition_keys[0]: [0]},
        {bp.partition_keys[0]: {"blocks": 1, "fragments": rows + 1}},
    )
    with pytest.raises(
        RuntimeError,
        match=rf"{bp.partition_keys[0]}: {rows} nodes rows stored, "
        rf"{rows + 1} written",
    ):
        sql.verify("fragment_nodes", lying)
