"""Scale benchmark (issue 13): Dagster bookkeeping on 10^4-10^5 tiny blocks, and LUT memory.

``python benchmarks/scale.py volumes`` writes sparse affinities (tiny (8, 32, 32)
blocks, 8,000 and 64,000 of them; only the first z slab of chunks is stored, the
rest reads as the fill value, so generation takes seconds) and prints, for each
volume and each partitioning (``default``: the config without
``blocks_per_partition``; ``single``: one block per partition, the default before
issue 13; ``bricks``: an explicit brick), measured in fresh processes:

* code location load: building ``Definitions`` and the repository snapshot the
  webserver and CLI serialize (seconds, serialized bytes);
* the observation job (``dagster job execute``), wall seconds;
* a run of ``fragments`` + ``fragment_nodes`` through ``dagster asset materialize``
  over the first partitions covering ``--run-blocks`` blocks (or ``--run-partitions``
  partitions): wall, seconds per block and per partition;
* one tick of the input sensor and of the automation sensor (in process);
* the webserver (on a loopback port): start-up until ``/server_info`` answers,
  and the GraphQL query of the ``fragments`` asset's partition status.

``python benchmarks/scale.py lut --edges 1000000 10000000`` writes a synthetic
fragment graph per size into SQLite and measures the LUT step's peak RSS in a
fresh process (``VmHWM`` minus the RSS after imports), divided by the edges:
``stream`` (the asset's path: edges streamed in score order) and, up to
``--bulk-max`` edges, ``bulk`` (every edge in memory, then ``mwatershed.cluster``).

``DAGSTER_HOME``-free by default: every volume and config gets a fresh instance
directory with the repository's ``dagster.yaml``; ``--dagster-yaml FILE`` copies
that file instead (e.g. a PostgreSQL instance).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "scale"
BLOCK = (8, 32, 32)
NEIGHBORHOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
STEPS = ("load", "observe", "run", "sensors", "webserver")


# -- volumes -------------------------------------------------------------------------


def write_volume(path: Path, side: int) -> Path:
    """Affinities of ``side**3`` blocks of ``BLOCK`` voxels; only the first z slab is stored.

    The slab holds 16 x 16 voxel cells (affinity 1 inside a cell, 0 across its
    border); every other chunk is absent and reads as 0.
    """
    from volara_assets.geometry import Roi
    from volara_assets.storage.arrays import create_array

    shape = tuple(b * side for b in BLOCK)
    marker = path / "affs" / ".complete"
    if marker.exists():
        return path / "affs"
    shutil.rmtree(path, ignore_errors=True)
    affs = create_array(
        path / "affs",
        shape,
        np.uint8,
        offset=(0, 0, 0),
        voxel_size=(1, 1, 1),
        chunks=BLOCK,
        num_channels=3,
        axis_names=("offset^", "z", "y", "x"),
    )
    slab = (BLOCK[0], shape[1], shape[2])
    zz, yy, xx = np.indices(slab)
    cells = (yy // 16) * 100_000 + (xx // 16)
    data = np.zeros((3, *slab), dtype=np.uint8)
    for c, (dz, dy, dx) in enumerate(NEIGHBORHOOD):
        shifted = np.full(slab, -1, dtype=np.int64)
        shifted[: slab[0] - dz, : slab[1] - dy, : slab[2] - dx] = cells[dz:, dy:, dx:]
        data[c] = np.where(shifted == cells, 255, 0)
    affs.write(Roi((0, 0, 0), slab), data)
    marker.write_text("")
    return path / "affs"


def write_pipeline(name: str, affs: Path, out: Path, bricks: tuple[int, ...] | None) -> Path:
    """A pipeline YAML with the demo's parameters; ``bricks=None`` leaves the default."""
    import yaml

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config = {
        "name": name,
        "affinities": str(affs),
        "neighborhood": NEIGHBORHOOD,
        "fragments_array": str(out / "out.zarr" / "fragments"),
        "segments_array": str(out / "out.zarr" / "segments"),
        "lut_path": str(out / "lut.npz"),
        "db_url": f"sqlite:///{out / 'db.sqlite'}",
        "block_size": list(BLOCK),
        "context": [1, 1, 1],
        "fragments": {"bias": [-0.5, -0.5, -0.5]},
        "lut": {"weights": {"aff": [1.0, -0.5]}},
    }
    if bricks is not None:
        config["blocks_per_partition"] = list(bricks)
    path = out / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fresh_home(where: Path, dagster_yaml: Path) -> Path:
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    shutil.copy(dagster_yaml, where / "dagster.yaml")
    return where


# -- measurements in fresh processes ---------------------------------------------------


def _child(args: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"scale.py {args[0]} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_load() -> dict:
    """Definitions and the repository snapshot, as a code location server builds them."""
    t0 = time.perf_counter()
    import dagster  # noqa: F401
    from dagster import serialize_value
    from dagster._core.remote_representation.external_data import RepositorySnap

    from volara_assets.definitions import load_definitions

    t1 = time.perf_counter()
    defs = load_definitions()
    repo = defs.get_repository_def()
    repo.load_all_definitions()
    t2 = time.perf_counter()
    snap = RepositorySnap.from_def(repo)
    text = serialize_value(snap)
    t3 = time.perf_counter()
    return {
        "import_s": t1 - t0,
        "definitions_s": t2 - t1,
        "snapshot_s": t3 - t2,
        "load_s": t3 - t1,
        "snapshot_bytes": len(text),
    }


def child_sensors(name: str) -> dict:
    """One tick of each sensor (and a second one: the steady state)."""
    from dagster import DagsterInstance, build_sensor_context

    from volara_assets.definitions import load_definitions

    defs = load_definitions()
    instance = DagsterInstance.get()
    out = {}
    for sensor_name in (f"{name}__input_sensor", f"{name}__automation"):
        sensor = defs.get_sensor_def(sensor_name)
        cursor = None
        times = []
        for _ in range(2):
            context = build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
            start = time.perf_counter()
            result = sensor.evaluate_tick(context)
            times.append(time.perf_counter() - start)
            cursor = result.cursor
        out[sensor_name.split("__")[1]] = times
    return out


def child_last_run() -> dict:
    """Start to end of the instance's latest run (what Dagster shows as its duration)."""
    from dagster import DagsterInstance

    record = DagsterInstance.get().get_run_records(limit=1)[0]
    return {"run_s": record.end_time - record.start_time}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PARTITION_QUERY = """
query PartitionStatus($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions unmaterializedPartitions }
      }
    }
  }
}
"""


def webserver_timings(name: str, env: dict[str, str]) -> dict:
    """Webserver start-up and the GraphQL partition status query of ``name/fragments``."""
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
         "-m", "volara_assets.definitions"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        body = json.dumps(
            {"query": PARTITION_QUERY, "variables": {"path": [name, "fragments"]}}
        ).encode()
        up = None
        while time.perf_counter() - start < 600:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql", data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=600) as r:
                    payload = json.loads(r.read())
                if payload.get("data", {}).get("assetNodeOrError", {}).get("partitionStats"):
                    up = time.perf_counter() - start
                    break
            except OSError:
                pass
            time.sleep(0.5)
        queries = []
        for _ in range(3):
            t = time.perf_counter()
            with urllib.request.urlopen(request, timeout=600) as r:
                payload = json.loads(r.read())
            queries.append(time.perf_counter() - t)
        stats = payload["data"]["assetNodeOrError"]["partitionStats"]
        return {"webserver_ready_s": up, "graphql_s": statistics.median(queries), **stats}
    finally:
        proc.terminate()
        proc.wait(30)


def timed_cli(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"{cmd[1:3]} failed")
    return time.perf_counter() - start


def bench_volume(blocks: int, config: str, bricks: tuple[int, ...], args) -> dict:
    from volara_assets.config import PipelineConfig
    from volara_assets.runtime.bound import BoundPipeline

    side = round(blocks ** (1 / 3))
    affs = write_volume(DATA / f"affs_{side ** 3}.zarr", side)
    name = f"scale{side ** 3 // 1000}k_{config}"
    out = DATA / name
    chosen = {"default": None, "single": (1, 1, 1)}.get(config, bricks)
    pipeline = write_pipeline(name, affs, out, chosen)
    home = fresh_home(out / "dagster_home", args.dagster_yaml)
    env = {**os.environ, "DAGSTER_HOME": str(home), "VOLARA_PIPELINES": str(pipeline),
           "VOLARA_EXECUTOR": "serial"}
    grid = BoundPipeline(PipelineConfig.from_yaml(pipeline)).grid
    result: dict = {
        "volume": f"{grid.num_blocks} blocks", "config": config,
        "blocks_per_partition": grid.blocks_per_partition,
        "partitions": len(grid.partition_keys),
    }
    steps = set(args.steps)
    if "load" in steps:
        loads = [_child(["_load"], env) for _ in range(args.repeats)]
        for k in loads[0]:
            result[k] = statistics.median(x[k] for x in loads)
        print(json.dumps(result, default=str), flush=True)
    dagster = str(Path(sys.executable).parent / "dagster")
    if "observe" in steps:
        result["observe_s"] = timed_cli(
            [dagster, "job", "execute", "-m", "volara_assets.definitions",
             "-j", f"{name}__observe_affinities"], env,
        )
    if "run" not in steps:
        return result
    keys, covered = [], 0
    for key in grid.partition_keys:
        if (args.run_partitions and len(keys) >= args.run_partitions) or (
            not args.run_partitions and covered >= args.run_blocks
        ):
            break
        keys.append(key)
        covered += len(grid.partition_blocks(key))
    walls = []
    for _ in range(args.repeats):
        walls.append(timed_cli(
            [dagster, "asset", "materialize", "-m", "volara_assets.definitions",
             "--select", f"{name}/fragments,{name}/fragment_nodes",
             "--partition-range", f"{keys[0]}...{keys[-1]}"], env,
        ))
    wall = statistics.median(walls)
    inside = _child(["_lastrun"], env)["run_s"]
    result.update({
        "run_partitions": len(keys), "run_blocks": covered, "run_s": wall,
        "s_per_block": wall / covered, "s_per_partition": wall / len(keys),
        # The run as the instance records it (start to end): without process start-up.
        "run_in_instance_s": inside, "s_per_block_in_instance": inside / covered,
    })
    if "sensors" in steps:
        ticks = _child(["_sensors", name], env)
        result["input_sensor_s"] = ticks["input_sensor"]
        result["automation_sensor_s"] = ticks["automation"]
    if "webserver" in steps:
        result.update(webserver_timings(name, env))
    return result


# -- LUT memory --------------------------------------------------------------------------


def write_graph(path: Path, num_edges: int, seed: int = 0) -> Path:
    """A lattice-like fragment graph: node ``i`` touches ``i + d`` for d in 1, 7, 31, 113.

    ``num_edges // 4`` nodes, about ``num_edges`` edges (none repeated, by
    construction), one score group with uniform random affinities (no ties).
    """
    from volara_assets.storage.graph import GraphStore
    from volara_assets.tables import EdgeTable, NodeTable

    marker = path.with_suffix(".complete")
    if marker.exists():
        return path
    path.unlink(missing_ok=True)
    store = GraphStore(f"sqlite:///{path}", edge_attrs={"aff": "float"})
    store.create()
    rng = np.random.default_rng(seed)
    num_nodes = max(2, num_edges // 4)
    per_block = 250_000
    for block, start in enumerate(range(1, num_nodes + 1, per_block)):
        ids = np.arange(start, min(num_nodes, start + per_block - 1) + 1, dtype=np.uint64)
        store.write_nodes(block, NodeTable(ids, np.zeros((len(ids), 3)), np.ones(len(ids))))
        u = np.repeat(ids, 4)
        v = u + np.tile(np.array([1, 7, 31, 113], dtype=np.uint64), len(ids))
        keep = v <= num_nodes
        u, v = u[keep], v[keep]
        store.write_edges(block, EdgeTable(u, v, {"aff": rng.random(len(u))}))
    marker.write_text("")
    return path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child_lut(path: str, impl: str) -> dict:
    """The LUT of the graph at ``path``: streamed (the asset's path) or bulk (as before)."""
    from volara_assets.ops.agglomerate import agglomerate, agglomerate_stream
    from volara_assets.storage.graph import GraphStore

    store = GraphStore(f"sqlite:///{path}", edge_attrs={"aff": "float"})
    weights = {"aff": (1.0, -0.5)}
    store.count_edges()
    # Load the kernel's compiled code (numba, LLVM) first: a fixed cost, not per edge.
    tiny = np.array([1, 2], dtype=np.uint64)
    agglomerate_stream(tiny, [(tiny[:1], tiny[1:], np.array([1.0]))])
    base = _status("VmRSS")
    start = time.perf_counter()
    if impl == "bulk":
        lut = agglomerate(store.read_node_ids(), store.read_edges(), weights)
    else:
        lut = agglomerate_stream(store.graph_node_ids(), store.edges_by_score(weights))
    seconds = time.perf_counter() - start
    return {"peak_over_base": _status("VmHWM") - base, "seconds": seconds,
            "edges": store.count_edges(), "lut_entries": int(lut.shape[1]),
            "digest": hashlib.sha256(lut.tobytes()).hexdigest()[:16]}


def bench_lut(args) -> list[dict]:
    rows = []
    for n in args.edges:
        path = write_graph(DATA / f"graph_{n}.sqlite", n)
        for impl in ("stream", "bulk"):
            if impl == "bulk" and n > args.bulk_max:
                continue
            r = _child(["_lut", str(path), impl], dict(os.environ))
            r.update({"impl": impl, "bytes_per_edge": r["peak_over_base"] / r["edges"]})
            rows.append(r)
            print(f"  lut {impl:6s} {r['edges']:>10,} edges: {r['bytes_per_edge']:.0f} B/edge "
                  f"(peak +{r['peak_over_base'] / 2**20:.0f} MiB), {r['seconds']:.1f} s",
                  flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    vol = sub.add_parser("volumes")
    vol.add_argument("--blocks", type=int, nargs="+", default=[8000, 64000])
    vol.add_argument("--configs", nargs="+", default=["default", "bricks"],
                     choices=["default", "single", "bricks"],
                     help="default: no blocks_per_partition in the YAML; single: [1, 1, 1]; "
                     "bricks: --bricks")
    vol.add_argument("--bricks", type=int, nargs=3, default=[4, 4, 4])
    vol.add_argument("--run-blocks", type=int, default=200)
    vol.add_argument("--run-partitions", type=int, default=0,
                     help="run this many partitions instead of --run-blocks' worth")
    vol.add_argument("--repeats", type=int, default=1)
    vol.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS,
                     help="what to measure (default: everything)")
    vol.add_argument("--dagster-yaml", type=Path, default=ROOT / "dagster.yaml")
    lut = sub.add_parser("lut")
    lut.add_argument("--edges", type=int, nargs="+", default=[1_000_000, 10_000_000])
    lut.add_argument("--bulk-max", type=int, default=1_000_000)
    for name in ("_load", "_sensors", "_lut", "_lastrun"):
        hidden = sub.add_parser(name)
        hidden.add_argument("rest", nargs="*")
    args = parser.parse_args()
    if args.what == "_load":
        print(json.dumps(child_load()))
    elif args.what == "_sensors":
        print(json.dumps(child_sensors(args.rest[0])))
    elif args.what == "_lastrun":
        print(json.dumps(child_last_run()))
    elif args.what == "_lut":
        print(json.dumps(child_lut(*args.rest)))
    elif args.what == "lut":
        bench_lut(args)
    else:
        for blocks in args.blocks:
            for config in args.configs:
                r = bench_volume(blocks, config, tuple(args.bricks), args)
                print(json.dumps(r, default=str), flush=True)


if __name__ == "__main__":
    main()
