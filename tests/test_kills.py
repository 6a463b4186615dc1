"""Killed anywhere, still right: SIGKILL at seeded random moments, then check what is on disk.

* The whole CLI (``dagster asset materialize``, process-pool blocks) is killed with
  its process group at random moments of its work (drawn over the clean run's time
  from its first step to its end); a rerun must then give bitwise the arrays and
  exactly the rows of a clean run.
* Inside the LUT write (temp file + rename): the LUT is the old one or the new one.
* Inside a SQL block replace (one transaction): the block's rows are the old set or
  the new set, the other blocks' rows untouched. ``graph_url`` is the database
  under test; add a PostgreSQL parameter there to run the same trials on a server.
* Inside an array metadata update (zarr writes ``zarr.json`` by temp file + rename):
  the attributes are the old ones or the new ones.

``VOLARA_KILL_TRIALS`` (default 3) and ``VOLARA_KILL_SEED`` set the number of CLI
kill trials and their seed.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import dagster_bin, make_dagster_home, subprocess_env, write_pipeline_yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import RunsFilter
from dagster._daemon.monitoring.run_monitoring import check_run_timeout

from volara_assets.geometry import Roi
from volara_assets.storage.arrays import open_array
from volara_assets.storage.graph import GraphStore
from volara_assets.storage.lut import load_lut

KILL_TRIALS = int(os.environ.get("VOLARA_KILL_TRIALS", "3"))
KILL_SEED = int(os.environ.get("VOLARA_KILL_SEED", "2026"))
#: Kills inside one write loop (LUT, SQL, metadata): cheap, so many.
WRITE_KILLS = 8
STEPS = "demo/fragments,demo/fragment_nodes,demo/edges,demo/lut,demo/segments"
FIRST, LAST = "z0_y0_x0", "z2_y1_x1"


# ----------------------------------------------------------------------------- helpers


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (it was started in its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it had already finished
    proc.wait(timeout=60)


def kill_while_writing(script: str, seed: int, kills: int = WRITE_KILLS) -> Iterator[int]:
    """Run ``script`` (a loop of writes printing ``ready`` after its first) ``kills`` times,
    each time SIGKILLed at a random moment of its loop; yields after each kill."""
    rng = random.Random(seed)
    for trial in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        kill_group(proc)
        assert proc.returncode == -signal.SIGKILL, "the writer must still have been writing"
        yield trial


# ----------------------------------------------------------------------------- inside one write


LUT_WRITER = """
import numpy as np
from volara_assets.storage.lut import save_lut
rng = np.random.default_rng(0)
luts = [np.stack([np.arange(1, 300_001), rng.integers(1, 1000, 300_000)]) + k for k in (0, 1)]
save_lut({path!r}, luts[0])
print("ready", flush=True)
i = 1
while True:
    save_lut({path!r}, luts[i % 2])
    i += 1
"""


def test_a_kill_inside_the_lut_write_leaves_the_old_or_the_new_lut(tmp_path: Path) -> None:
    path = tmp_path / "lut.npz"
    rng = np.random.default_rng(0)
    luts = [np.stack([np.arange(1, 300_001), rng.integers(1, 1000, 300_000)]) + k for k in (0, 1)]
    seen = []
    for _ in kill_while_writing(LUT_WRITER.format(path=str(path)), KILL_SEED):
        lut = load_lut(path)  # never torn: a torn .npz would not load
        [which] = [k for k, ref in enumerate(luts) if np.array_equal(lut, ref)]
        seen.append(which)
    assert len(seen) == WRITE_KILLS
    # Only hidden temp files of interrupted writes may lie beside it, never a second LUT.
    others = [p.name for p in tmp_path.iterdir() if p.name != "lut.npz"]
    assert all(n.startswith(".lut.npz.") and n.endswith(".partial") for n in others), others


@pytest.fixture(params=["sqlite"])
def graph_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database the SQL kill trials run on (add a ``postgresql`` parameter for a server)."""
    return f"sqlite:///{tmp_path / 'graph.sqlite'}"


SQL_WRITER = """
import numpy as np
from volara_assets.storage.graph import GraphStore
from volara_assets.tables import EdgeTable, NodeTable

def tables(k):
    ids = np.arange(1, 40_001, 1 + k, dtype=np.uint64)
    n = len(ids)
    nodes = NodeTable(ids, np.full((n, 3), float(k)), np.full(n, 10 + k))
    edges = EdgeTable(ids[:-1], ids[1:], {{"aff": np.full(n - 1, 0.25 + k / 2)}})
    return nodes, edges

store = GraphStore({url!r}, edge_attrs={{"aff": "float"}})
store.create()
other = NodeTable(np.array([10**6 + 1], dtype=np.uint64), np.zeros((1, 3)), np.array([5]))
store.write_nodes(7, other)
store.write_nodes(0, tables(0)[0])
store.write_edges(0, tables(0)[1])
print("ready", flush=True)
i = 1
while True:
    nodes, edges = tables(i % 2)
    store.write_nodes(0, nodes)
    store.write_edges(0, edges)
    i += 1
"""


def block_rows(store: GraphStore, block: int) -> tuple[set, set]:
    nodes = store.block_nodes(block)
    edges = store.block_edges(block)
    return (
        set(zip(nodes.ids.tolist(), nodes.positions[:, 0].tolist(), nodes.sizes.tolist(),
                strict=True)),
        set(zip(edges.u.tolist(), edges.v.tolist(), edges.scores["aff"].tolist(), strict=True)),
    )


def test_a_kill_inside_a_sql_block_replace_leaves_the_old_or_the_new_rows(graph_url: str) -> None:
    expected_nodes, expected_edges = [], []
    for k in (0, 1):
        ids = list(range(1, 40_001, 1 + k))
        expected_nodes.append({(i, float(k), 10 + k) for i in ids})
        pairs = zip(ids[:-1], ids[1:], strict=True)
        expected_edges.append({(u, v, 0.25 + k / 2) for u, v in pairs})
    for _ in kill_while_writing(SQL_WRITER.format(url=graph_url), KILL_SEED + 1):
        store = GraphStore(graph_url, edge_attrs={"aff": "float"})
        nodes, edges = block_rows(store, 0)
        assert nodes in expected_nodes  # one whole transaction or the other, never a mix
        assert edges in expected_edges
        assert block_rows(store, 7)[0] == {(10**6 + 1, 0.0, 5)}  # other blocks untouched
        store.dispose()


METADATA_WRITER = """
import zarr
array = zarr.open_array({path!r}, mode="r+")
notes = [{{"run": k, "blob": [k] * 20_000}} for k in (0, 1)]
array.attrs["note"] = notes[0]
print("ready", flush=True)
i = 1
while True:
    array.attrs["note"] = notes[i % 2]
    i += 1
"""


def test_a_kill_inside_an_array_metadata_update_leaves_old_or_new_metadata(
    tmp_path: Path,
) -> None:
    from volara_assets.storage.arrays import create_array

    path = tmp_path / "out.zarr" / "fragments"
    create_array(path, (8, 8, 8), np.uint64, offset=(0, 0, 0), voxel_size=(1, 1, 1),
                 chunks=(8, 8, 8))
    for _ in kill_while_writing(METADATA_WRITER.format(path=str(path)), KILL_SEED + 2):
        array = open_array(path)  # zarr.json parses: never torn
        note = array.zarr_array.attrs["note"]
        assert note["run"] in (0, 1) and note["blob"] == [note["run"]] * 20_000
        assert array.voxel_size == (1, 1, 1) and array.chunks == (8, 8, 8)


# ----------------------------------------------------------------------------- the whole CLI


def test_the_instance_config_enables_run_monitoring(tmp_path: Path) -> None:
    """dagster 1.13 reads dagster.yaml's run monitoring settings as written (see README)."""
    with DagsterInstance.from_config(str(make_dagster_home(tmp_path))) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_runtime_seconds == 86400
        assert instance.run_monitoring_start_timeout_seconds == 180
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_monitoring_poll_interval_seconds == 30


def cli(yaml_path: Path, home: Path, cwd: Path) -> list[str]:
    return [
        dagster_bin("dagster"), "asset", "materialize", "-m", "volara_assets.definitions",
        "--select", STEPS, "--partition-range", f"{FIRST}...{LAST}",
    ]


def cli_env(yaml_path: Path, home: Path) -> dict[str, str]:
    env = subprocess_env(yaml_path, home)
    env.update(VOLARA_EXECUTOR="processes", VOLARA_NUM_WORKERS="2")
    return env


#: The CLI's log line that starts the work; kill moments are drawn from here on (before it,
#: the CLI only loads the code location, which writes nothing).
WORK_STARTS = 'Started execution of step "demo__fragments"'


def start_cli(yaml_path: Path, home: Path, cwd: Path, log: Path) -> subprocess.Popen:
    """Start the CLI in its own session; return once it starts the fragments step.

    Its output goes to ``log`` (a thread keeps draining the pipe, so the CLI never
    blocks on a full pipe).
    """
    proc = subprocess.Popen(
        cli(yaml_path, home, cwd), env=cli_env(yaml_path, home), cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    assert proc.stdout is not None
    sink = open(log, "w")  # noqa: SIM115 - closed by the draining thread
    for line in proc.stdout:
        sink.write(line)
        if WORK_STARTS in line:
            break
    else:
        sink.close()
        raise AssertionError(f"the CLI ended before its first step: {log.read_text()[-3000:]}")

    def drain() -> None:
        with sink:
            for rest in proc.stdout:
                sink.write(rest)

    threading.Thread(target=drain, daemon=True).start()
    return proc


def snapshot(out: Path) -> dict[str, Any]:
    """Everything the pipeline wrote: arrays (bytes), rows (sets), LUT (pairs)."""
    with sqlite3.connect(out / "graph.sqlite") as conn:
        nodes = set(conn.execute("SELECT * FROM nodes"))
        edges = set(conn.execute("SELECT * FROM edges"))
    whole = Roi((0, 0, 0), (24, 64, 64))
    lut = load_lut(out / "out.zarr" / "lut.npz")
    return {
        "fragments": open_array(out / "out.zarr" / "fragments").read(whole).tobytes(),
        "segments": open_array(out / "out.zarr" / "segments").read(whole).tobytes(),
        "nodes": nodes,
        "edges": edges,
        "lut": set(zip(lut[0].tolist(), lut[1].tolist(), strict=True)),
    }


def test_cli_killed_at_random_moments_then_rerun_equals_a_clean_run(
    demo_volume: Path, tmp_path: Path
) -> None:
    clean_dir = tmp_path / "clean"
    yaml_path = write_pipeline_yaml(clean_dir, demo_volume)
    proc = start_cli(yaml_path, make_dagster_home(tmp_path / "clean_home"), tmp_path,
                     tmp_path / "clean.log")
    start = time.perf_counter()
    assert proc.wait(timeout=900) == 0, (tmp_path / "clean.log").read_text()[-3000:]
    wall = time.perf_counter() - start  # kill moments are drawn over the clean run's work
    clean = snapshot(clean_dir)
    assert len(clean["nodes"]) > 10 and len(clean["edges"]) > 10

    rng = random.Random(KILL_SEED)
    identical, killed, moments = 0, 0, []
    for trial in range(KILL_TRIALS):
        out = tmp_path / f"trial{trial}"
        yaml_path = write_pipeline_yaml(out, demo_volume)
        home = make_dagster_home(tmp_path / f"home{trial}")
        moment = rng.uniform(0.0, wall)
        proc = start_cli(yaml_path, home, tmp_path, tmp_path / f"trial{trial}.log")
        time.sleep(moment)
        kill_group(proc)
        with DagsterInstance.from_config(str(home)) as instance:
            done = {
                name: len(instance.get_materialized_partitions(AssetKey(["demo", name])))
                for name in ("fragments", "edges", "segments")
            }
            chunks = out / "out.zarr" / "fragments" / "c"
            done["fragment chunk files"] = sum(p.is_file() for p in chunks.rglob("*"))
            # A run faster than the clean one may have finished before its moment.
            killed += proc.returncode == -signal.SIGKILL
            moments.append((round(moment, 1), done))
            # What the monitoring daemon does to a run left STARTED by the kill once it
            # exceeds max_runtime_seconds (dagster.yaml): it marks it failed.
            for record in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED])):
                check_run_timeout(instance, record, logging.getLogger("monitor"), 1e-3)
                assert instance.get_run_by_id(record.dagster_run.run_id).status == (
                    DagsterRunStatus.FAILURE
                )
        # The rerun, into the same outputs and instance.
        rerun = subprocess.run(
            cli(yaml_path, home, tmp_path), env=cli_env(yaml_path, home), cwd=tmp_path,
            capture_output=True, text=True, timeout=900,
        )
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        after = snapshot(out)
        for name in clean:
            assert after[name] == clean[name], (trial, moment, name)
        identical += 1
    print(f"\nkill trials: {identical} of {KILL_TRIALS} identical to the clean run, "
          f"{killed} of them killed before they finished "
          f"(seed {KILL_SEED}, moments in s after the fragments step started, of the clean run's "
          f"{wall:.1f} s); kills (s; materialized partitions "
          f"and fragment chunk files on disk before the rerun): {moments}")
    assert identical == KILL_TRIALS
