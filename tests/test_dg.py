"""The ``dg`` CLI from the project root: list and check the definitions, launch a partition.

``pyproject.toml``'s ``[tool.dg]`` makes the repository a dg project whose code
location is ``volara_assets.definitions``; these run the real ``dg`` in a subprocess.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, dagster_bin, make_dagster_home, subprocess_env, write_pipeline_yaml
from dagster import AssetKey, DagsterInstance

QUIET = json.dumps({"loggers": {"console": {"config": {"log_level": "INFO"}}}})
PROGRESS = re.compile(r"demo__fragments - (\d+)/(\d+) blocks, [0-9.]+ blocks/s, ETA \d+ s")


def dg(args: list[str], pipeline_yaml: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(pipeline_yaml, home)
    # dg compares the active venv with the project's; the tests run in that venv.
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    return subprocess.run(
        [dagster_bin("dg"), *args],
        env=env,
        cwd=REPO,  # dg finds the project by its pyproject.toml
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def setup(demo_volume: Path, tmp_path: Path) -> tuple[Path, Path]:
    pipeline_yaml = write_pipeline_yaml(tmp_path / "pipeline", demo_volume)
    return pipeline_yaml, make_dagster_home(tmp_path / "dagster_home")


def test_dg_list_defs_and_check_defs_see_the_pipeline(setup: tuple[Path, Path]) -> None:
    pipeline_yaml, home = setup
    listed = dg(["list", "defs", "--json"], pipeline_yaml, home)
    assert listed.returncode == 0, listed.stderr[-3000:]
    defs = json.loads(listed.stdout)
    assert {a["asset_key"] for a in defs["assets"]} == {
        f"demo/{n}"
        for n in (
            "affinities", "fragments", "fragment_nodes", "edges", "lut", "segment_ids", "segments"
        )
    }
    assert "demo__observe_affinities" in {j["name"] for j in defs["jobs"]}

    checked = dg(["check", "defs"], pipeline_yaml, home)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr


def test_dg_launch_materializes_one_partition_and_prints_progress_only(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    pipeline_yaml, home = setup
    one = "z0_y1_x0"  # block 2 of the (3, 2, 2) grid, z-major
    proc = dg(
        [
            "launch",
            "--assets",
            "demo/fragments,demo/fragment_nodes",
            "--partition",
            one,
            "--config-json",
            QUIET,
        ],
        pipeline_yaml,
        home,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_materialized_partitions(AssetKey(["demo", "fragments"])) == {one}
        assert instance.get_materialized_partitions(AssetKey(["demo", "fragment_nodes"])) == {one}
    db = tmp_path / "pipeline" / "graph.sqlite"
    with sqlite3.connect(db) as conn:
        assert {b for (b,) in conn.execute("SELECT DISTINCT block FROM nodes")} == {2}
    # Quiet: our progress line, none of Dagster's DEBUG events, no beta/supersession warnings.
    assert [m.groups() for m in PROGRESS.finditer(out)] == [("1", "1")]
    assert " - DEBUG - " not in out
    assert "Warning" not in out, out[-3000:]
