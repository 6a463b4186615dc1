"""The real CLI: ``dagster asset materialize`` in a subprocess with a temporary DAGSTER_HOME."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import (
    BLOCK_SIZE,
    dagster_bin,
    make_dagster_home,
    subprocess_env,
    write_pipeline_yaml,
)
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

FRAGMENTS = AssetKey(["demo", "fragments"])
FRAGMENT_NODES = AssetKey(["demo", "fragment_nodes"])
EDGES = AssetKey(["demo", "edges"])


def materialize_cli(
    args: list[str], pipeline_yaml: Path, home: Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    cmd = [
        dagster_bin("dagster"),
        "asset",
        "materialize",
        "-m",
        "volara_assets.definitions",
        "--select",
        "demo/fragments,demo/fragment_nodes",
        *args,
    ]
    proc = subprocess.run(
        cmd,
        env=subprocess_env(pipeline_yaml, home),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return proc


def blocks_in_sql(db_url: str) -> set[int]:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        return {b for (b,) in conn.execute("SELECT DISTINCT block FROM nodes")}


def block_of(key: str) -> int:
    """Block index of a partition key of the (3, 2, 2) demo grid, z-major."""
    z, y, x = (int(part[1:]) for part in key.split("_"))
    return (z * 2 + y) * 2 + x


@pytest.fixture
def cli_setup(demo_volume: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    pipeline_yaml = write_pipeline_yaml(tmp_path / "pipeline", demo_volume)
    assert BLOCK_SIZE == (8, 32, 32)
    home = make_dagster_home(tmp_path / "dagster_home")
    db_url = f"sqlite:///{tmp_path / 'pipeline' / 'graph.sqlite'}"
    return pipeline_yaml, home, db_url


def test_cli_materializes_exactly_one_partition_then_a_range(
    cli_setup: tuple[Path, Path, str], tmp_path: Path
) -> None:
    pipeline_yaml, home, db_url = cli_setup

    one = "z0_y1_x0"
    proc = materialize_cli(["--partition", one], pipeline_yaml, home, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_materialized_partitions(FRAGMENTS) == {one}
        assert instance.get_materialized_partitions(FRAGMENT_NODES) == {one}
        assert instance.get_materialized_partitions(EDGES) == set()
        [run] = instance.get_runs()
        assert run.status == DagsterRunStatus.SUCCESS
        assert run.tags[PARTITION_NAME_TAG] == one
    # The data agrees with the bookkeeping: only that block's rows were written.
    assert blocks_in_sql(db_url) == {block_of(one)} == {2}

    first, last = "z1_y0_x1", "z2_y0_x0"
    proc = materialize_cli(
        ["--partition-range", f"{first}...{last}"], pipeline_yaml, home, tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    in_range = {"z1_y0_x1", "z1_y1_x0", "z1_y1_x1", "z2_y0_x0"}
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_materialized_partitions(FRAGMENTS) == {one} | in_range
        assert instance.get_materialized_partitions(FRAGMENT_NODES) == {one} | in_range
        runs = instance.get_runs()  # newest first
        assert len(runs) == 2, "a partition range must be one run (BackfillPolicy.single_run)"
        assert runs[0].status == DagsterRunStatus.SUCCESS
        assert runs[0].tags[ASSET_PARTITION_RANGE_START_TAG] == first
        assert runs[0].tags[ASSET_PARTITION_RANGE_END_TAG] == last
        per_partition = instance.fetch_materializations(FRAGMENTS, limit=100).records
        assert sorted(r.asset_materialization.partition for r in per_partition) == sorted(
            {one} | in_range
        )
        assert {
            r.run_id for r in per_partition if r.asset_materialization.partition in in_range
        } == {runs[0].run_id}
    assert blocks_in_sql(db_url) == {block_of(k) for k in {one} | in_range} == {2, 5, 6, 7, 8}


def test_cli_rejects_an_unknown_partition_without_recording_anything(
    cli_setup: tuple[Path, Path, str], tmp_path: Path
) -> None:
    pipeline_yaml, home, db_url = cli_setup
    proc = materialize_cli(["--partition", "z9_y9_x9"], pipeline_yaml, home, tmp_path)
    assert proc.returncode != 0
    assert "z9_y9_x9" in proc.stdout + proc.stderr
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_materialized_partitions(FRAGMENTS) == set()
        assert instance.get_runs() == []
    assert not Path(db_url.removeprefix("sqlite:///")).exists() or blocks_in_sql(db_url) == set()
