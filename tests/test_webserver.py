"""What the web UI sees: the serialized asset graph and a real ``dagster-webserver``.

Both tests use a (3, 4, 4) block grid, so an interior ``edges`` partition has 27
upstream ``fragments`` partitions out of 48: a mapping that fell back to identity
(1 key) or to all partitions (48 keys) would fail.
"""

from __future__ import annotations

import ast
import itertools
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import (
    REPO,
    dagster_bin,
    free_port,
    make_dagster_home,
    subprocess_env,
    write_pipeline_yaml,
)
from dagster import AssetKey
from dagster._core.definitions.assets.graph.remote_asset_graph import (
    RemoteRepositoryAssetGraph,
)
from dagster._core.remote_representation.external import RemoteRepository
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._core.remote_representation.handle import RepositoryHandle
from dagster_shared.serdes import deserialize_value

GRID = (3, 4, 4)
BLOCK_SIZE = (8, 16, 16)  # (24, 64, 64) voxels -> (3, 4, 4) blocks
INTERIOR = "z1_y2_x1"
ALL_KEYS = [f"z{z}_y{y}_x{x}" for z, y, x in itertools.product(*(range(g) for g in GRID))]


def read_keys(key: str) -> set[str]:
    """The partition and its +z, +y, +x neighbours (what an edges block reads with forward
    offsets), computed here from the key."""
    c = [int(part[1:]) for part in key.split("_")]
    out = set()
    for d in ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)):
        n = [a + b for a, b in zip(c, d, strict=True)]
        if all(0 <= v < g for v, g in zip(n, GRID, strict=True)):
            out.add(f"z{n[0]}_y{n[1]}_x{n[2]}")
    return out


def key(name: str) -> AssetKey:
    return AssetKey(["demo", name])


@pytest.fixture(scope="module")
def grid_pipeline(demo_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline YAML over the demo volume with a (3, 4, 4) grid (nothing is run)."""
    return write_pipeline_yaml(tmp_path_factory.mktemp("grid"), demo_volume, block_size=BLOCK_SIZE)


def test_expected_reads_of_the_interior_partition() -> None:
    assert read_keys(INTERIOR) == {"z1_y2_x1", "z2_y2_x1", "z1_y3_x1", "z1_y2_x2"}
    assert read_keys("z2_y3_x3") == {"z2_y3_x3"}
    assert len(ALL_KEYS) == 48


def test_serialized_asset_graph_maps_edges_to_the_fragments_they_read(
    grid_pipeline: Path, tmp_path: Path
) -> None:
    # The code location serializes its repository snapshot in another process, as
    # the code server does for the webserver and the daemon.
    snap_file = tmp_path / "repository_snap.json"
    script = (
        "import sys\n"
        "from dagster._core.remote_representation.external_data import RepositorySnap\n"
        "from dagster_shared.serdes import serialize_value\n"
        "from dagster import Definitions\n"
        "from volara_assets import definitions\n"
        "defs = definitions.defs\n"
        "# A lazy @dagster.definitions function is built on load, as the code server does.\n"
        "defs = defs if isinstance(defs, Definitions) else defs()\n"
        "snap = RepositorySnap.from_def(defs.get_repository_def())\n"
        "open(sys.argv[1], 'w').write(serialize_value(snap))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(snap_file)],
        env=subprocess_env(grid_pipeline, make_dagster_home(tmp_path / "home")),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    snap = deserialize_value(snap_file.read_text(), RepositorySnap)
    repo = RemoteRepository(snap, RepositoryHandle.for_test(), auto_materialize_use_sensors=True)
    graph = RemoteRepositoryAssetGraph.build(repo)

    def parents(child: str, parent: str, partition: str | None) -> set[str]:
        result = graph.get_parent_partition_keys_for_child(partition, key(parent), key(child))
        assert len(result.required_but_nonexistent_subset) == 0
        return set(result.partitions_subset.get_partition_keys())

    # An edges block reads its own fragments and a slab of its +z, +y, +x neighbours'.
    assert parents("edges", "fragments", INTERIOR) == read_keys(INTERIOR)
    assert parents("edges", "fragments", "z0_y0_x0") == {
        "z0_y0_x0",
        "z1_y0_x0",
        "z0_y1_x0",
        "z0_y0_x1",
    }
    assert parents("edges", "fragments", "z2_y3_x3") == {"z2_y3_x3"}
    # Relabelling reads only its own block's fragments and segment ids; the LUT reads
    # every block's edges.
    assert parents("segments", "fragments", INTERIOR) == {INTERIOR}
    assert parents("segments", "segment_ids", INTERIOR) == {INTERIOR}
    assert parents("lut", "edges", None) == set(ALL_KEYS)

    # And the other direction, which the UI uses to show what a partition feeds: the edges
    # of the block and of its -z, -y, -x neighbours.
    children = graph.get_child_partition_keys_of_parent(INTERIOR, key("fragments"), key("edges"))
    assert set(children) == {"z1_y2_x1", "z0_y2_x1", "z1_y1_x1", "z1_y2_x0"}

    node = graph.get(key("edges"))
    assert node.partitions_def is not None
    assert node.partitions_def.get_partition_keys() == ALL_KEYS
    mapping = node.partition_mappings[key("fragments")]
    assert type(mapping).__name__ == "StaticPartitionMapping"


# ----------------------------------------------------------------------------- webserver


def post_graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body["errors"]
    return body["data"]


def wait_until_up(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"dagster-webserver exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"dagster-webserver not up after {timeout} s:\n{log.read_text()[-4000:]}")


def child_pids(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    out: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        out |= {int(c) for c in children.read_text().split()}
    return out


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Terminate the webserver by pid (SIGTERM, then SIGKILL after ``timeout``)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


ASSET_NODES = """
{
  assetNodes {
    assetKey { path }
    isPartitioned
    isObservable
    partitionKeysByDimension { name partitionKeys }
    dependencies {
      asset { assetKey { path } }
      partitionMapping { className description }
    }
  }
}
"""


def test_webserver_serves_the_partitioned_asset_graph(grid_pipeline: Path, tmp_path: Path) -> None:
    shutil.copy(REPO / "workspace.yaml", tmp_path / "workspace.yaml")
    home = make_dagster_home(tmp_path / "dagster_home")
    port = free_port()
    log = tmp_path / "webserver.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                dagster_bin("dagster-webserver"),
                "-w",
                str(tmp_path / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=subprocess_env(grid_pipeline, home),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    children: set[int] = set()
    try:
        info = wait_until_up(port, proc, log)
        assert "dagster_webserver_version" in info
        children = child_pids(proc.pid)  # the code server it started for workspace.yaml
        data = post_graphql(port, ASSET_NODES)
    finally:
        stop(proc)
    assert proc.returncode is not None
    assert children, "the webserver serves workspace.yaml from a code server subprocess"
    # Stopping the webserver stops the code server it spawned, and frees the port.
    deadline = time.monotonic() + 30
    while any(alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [c for c in children if alive(c)], "code server outlived the webserver"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)

    nodes = {tuple(n["assetKey"]["path"]): n for n in data["assetNodes"]}

    names = ("affinities", "fragments", "fragment_nodes", "edges", "lut", "segment_ids", "segments")
    assert {("demo", n) for n in names} <= set(nodes)
    for name in ("affinities", "fragments", "fragment_nodes", "edges", "segment_ids", "segments"):
        node = nodes[("demo", name)]
        assert node["isPartitioned"], name
        [dimension] = node["partitionKeysByDimension"]
        assert dimension["partitionKeys"] == ALL_KEYS, name  # 48 blocks, z-major
    assert not nodes[("demo", "lut")]["isPartitioned"]

    deps = {
        tuple(d["asset"]["assetKey"]["path"]): d["partitionMapping"]
        for d in nodes[("demo", "edges")]["dependencies"]
    }
    assert {("demo", "fragments"), ("demo", "affinities"), ("demo", "fragment_nodes")} <= set(deps)
    mapping = deps[("demo", "fragments")]
    assert mapping is not None and mapping["className"] == "StaticPartitionMapping"
    # The mapping the webserver holds, upstream key -> downstream keys, inverted for
    # the interior block: the 4 partitions it reads.
    table = ast.literal_eval(mapping["description"].split("mapping: \n", 1)[1])
    upstream_of_interior = {u for u, downs in table.items() if INTERIOR in downs}
    assert upstream_of_interior == read_keys(INTERIOR)
    assert set(table) == set(ALL_KEYS)
    segment_deps = {
        tuple(d["asset"]["assetKey"]["path"]): d["partitionMapping"]
        for d in nodes[("demo", "segments")]["dependencies"]
    }
    assert {("demo", "fragments"), ("demo", "lut"), ("demo", "segment_ids")} <= set(segment_deps)
    # Relabelling a block reads only that block's fragments (identity, no halo).
    assert segment_deps[("demo", "fragments")] is None or (
        segment_deps[("demo", "fragments")]["className"] != "StaticPartitionMapping"
    )
