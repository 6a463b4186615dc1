"""The demo pipeline through Dagster on PostgreSQL: its fragment graph in a PostgreSQL
database, and a Dagster instance whose run, event and schedule storage is PostgreSQL.

Both are compared with a run on SQLite (graph and instance). The server is the
session's (``conftest.postgres_server``); these tests fail, not skip, without it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    REPO,
    STEPS,
    PostgresServer,
    build_pipeline,
    dagster_bin,
    make_dagster_home,
    subprocess_env,
    write_pipeline_yaml,
)
from dagster import DagsterInstance, DagsterRunStatus, materialize
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from test_dagster_pipeline import (
    EXPECTED_KEYS,
    Outputs,
    assert_same_tables,
    read_outputs,
    run_all,
    run_range,
)

from volara_assets.geometry import BlockGrid
from volara_assets.orchestration.resources import BlockExecutor
from volara_assets.storage import GraphStore

PARTITIONED = ("fragments", "fragment_nodes", "edges", "segments")


def assert_graph_consistent(db_url: str, grid: BlockGrid) -> None:
    """No duplicate node or edge, every row filed under its owner block, no dangling edge
    (the queries of ``test_dagster_pipeline.assert_sql_consistent``, on any backend)."""
    vpb = grid.voxels_per_block
    queries = {
        "SELECT id FROM nodes GROUP BY id HAVING COUNT(*) > 1": [],
        "SELECT u, v FROM edges GROUP BY u, v HAVING COUNT(*) > 1": [],
        f"SELECT id FROM nodes WHERE (id - 1) / {vpb} != block": [],
        f"SELECT u, v FROM edges WHERE (u - 1) / {vpb} != block": [],
        "SELECT u, v FROM edges WHERE u >= v": [],
        "SELECT COUNT(*) FROM edges "
        "WHERE u NOT IN (SELECT id FROM nodes) OR v NOT IN (SELECT id FROM nodes)": [(0,)],
    }
    engine = GraphStore(db_url, edge_attrs={}).engine
    try:
        with engine.connect() as conn:
            for query, expected in queries.items():
                assert [tuple(r) for r in conn.exec_driver_sql(query)] == expected, query
    finally:
        engine.dispose()


def assert_same_outputs(a: Outputs, b: Outputs) -> None:
    assert a.fragments.dtype == b.fragments.dtype == np.uint64
    np.testing.assert_array_equal(a.fragments, b.fragments)
    np.testing.assert_array_equal(a.segments, b.segments)
    assert_same_tables(a, b)


@pytest.fixture(scope="module")
def sqlite_run(demo_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    """Every step over every partition, graph in SQLite, on a SQLite Dagster instance."""
    out_dir = tmp_path_factory.mktemp("sqlite_run")
    bp = build_pipeline(write_pipeline_yaml(out_dir, demo_volume))
    home = make_dagster_home(out_dir / "dagster_home")
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert run_all(bp, instance).success
    assert_graph_consistent(bp.config.db_url, bp.built.pipeline.grid)
    return read_outputs(bp)


def test_demo_pipeline_with_a_postgres_graph_writes_the_sqlite_rows(
    sqlite_run: Outputs, demo_volume: Path, tmp_path: Path, postgres_url: str
) -> None:
    bp = build_pipeline(write_pipeline_yaml(tmp_path, demo_volume, db_url=postgres_url))
    assert bp.config.db_url.startswith("postgresql://")
    instance = DagsterInstance.ephemeral()
    # Blocks in two worker processes: two writers of the graph at a time.
    keys = bp.partition_keys
    pool = BlockExecutor(kind="processes", num_workers=2)
    result = materialize(
        bp.assets,
        selection=bp.keys(*STEPS),
        resources={**bp.resources, "block_executor": pool},
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )
    assert result.success
    out = read_outputs(bp)
    assert_same_outputs(out, sqlite_run)
    assert_graph_consistent(postgres_url, bp.built.pipeline.grid)

    # Rematerializing three neighbouring blocks replaces their rows: nothing doubled or lost.
    subset = ["z1_y0_x0", "z1_y0_x1", "z1_y1_x0"]
    assert run_range(bp, instance, ["fragments", "fragment_nodes", "edges"], *subset[::2]).success
    assert run_all(bp, instance, ["lut", "segments"]).success
    assert_same_outputs(read_outputs(bp), sqlite_run)
    assert_graph_consistent(postgres_url, bp.built.pipeline.grid)
    store = bp.built.pipeline.graph.store()
    assert (store.count_nodes(), store.count_edges()) == (
        len(sqlite_run.nodes),
        len(sqlite_run.edges),
    )


def readme_postgres_dagster_yaml() -> str:
    """The README's ``dagster.yaml`` for a PostgreSQL instance (the ```yaml block with
    ``postgres_db``), so that the documented example is the one tested."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    [block] = [b for b in blocks if "postgres_db:" in b]
    return block


def test_cli_run_on_a_postgres_dagster_instance(
    sqlite_run: Outputs,
    demo_volume: Path,
    tmp_path: Path,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graph_url = postgres_server.new_url("graph")
    dagster_db = postgres_server.create_database("dagster")
    pipeline_yaml = write_pipeline_yaml(tmp_path / "pipeline", demo_volume, db_url=graph_url)
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load(readme_postgres_dagster_yaml())
    # The README's example, on the test server's port and database.
    db = config["storage"]["postgres"]["postgres_db"]
    db.update(port=postgres_server.port, db_name=dagster_db)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name, value in (("USERNAME", "postgres"), ("PASSWORD", ""), ("HOST", postgres_server.host)):
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)  # read by the CLI and by this process

    select = ",".join(f"demo/{step}" for step in STEPS)
    proc = subprocess.run(
        [dagster_bin("dagster"), "asset", "materialize", "-m", "volara_assets.definitions",
         "--select", select, "--partition-range", f"{EXPECTED_KEYS[0]}...{EXPECTED_KEYS[-1]}"],
        env=subprocess_env(pipeline_yaml, home),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    bp = build_pipeline(pipeline_yaml)
    with DagsterInstance.from_config(str(home)) as instance:
        storages = (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
        assert [type(s).__name__ for s in storages] == [
            "PostgresRunStorage",
            "PostgresEventLogStorage",
            "PostgresScheduleStorage",
        ]
        [run] = instance.get_runs()
        assert run.status == DagsterRunStatus.SUCCESS
        for name in PARTITIONED:
            assert instance.get_materialized_partitions(bp.key(name)) == set(EXPECTED_KEYS)
        assert instance.get_latest_materialization_event(bp.key("lut")) is not None
    # Nothing went to SQLite files under DAGSTER_HOME.
    assert not list(home.rglob("*.db"))

    # The events are rows of the PostgreSQL database: one materialization per
    # partition of each partitioned step, and one of the LUT.
    engine = GraphStore(postgres_server.url(dagster_db), edge_attrs={}).engine
    try:
        with engine.connect() as conn:
            counts = dict(
                conn.exec_driver_sql(
                    "SELECT asset_key, COUNT(*) FROM event_logs "
                    "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY asset_key"
                ).fetchall()
            )
            [(n_runs, status)] = conn.exec_driver_sql(
                "SELECT COUNT(*), MIN(status) FROM runs"
            ).fetchall()
    finally:
        engine.dispose()
    assert counts == {
        **{f'["demo", "{name}"]': len(EXPECTED_KEYS) for name in PARTITIONED},
        '["demo", "lut"]': 1,
    }
    assert (n_runs, status) == (1, "SUCCESS")

    # The same outputs as the run on SQLite.
    assert_same_outputs(read_outputs(bp), sqlite_run)
    assert_graph_consistent(graph_url, bp.built.pipeline.grid)
