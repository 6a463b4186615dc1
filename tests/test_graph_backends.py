"""The SQL fragment graph on both backends: an SQLite file and a real PostgreSQL server.

Every test runs once per backend (``[sqlite]``, ``[postgres]``; ``pytest -k postgres``
selects the PostgreSQL cases). The PostgreSQL cases fail, not skip, when the
session's server cannot start (see ``conftest.postgres_server``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import re
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from graph_writers import (
    BARRIER_TIMEOUT_S,
    BLOCKS_PER_WRITER,
    N_BLOCKS,
    N_WRITERS,
    ROUNDS,
    concurrent_writer,
    make_store,
    version_edges,
    version_nodes,
    write_and_hang,
    writer_blocks,
    writer_tag,
)

from volara_assets.storage import GraphStore
from volara_assets.tables import EdgeTable, NodeTable

MAX_ID = 2**63 - 1

def writer_context() -> Any:
    """``forkserver`` processes; a server started here has the graph store loaded, so
    that starting 8 writers costs a fork each, not 8 imports of NumPy and SQLAlchemy
    (no effect when the server runs already). Not ``graph_writers`` itself: Python
    3.11's server does not see the tests folder on its path."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["volara_assets.storage.graph"])
    return ctx


def node_rows(nodes: NodeTable) -> set[tuple[Any, ...]]:
    """Rows as a set of tuples; NaN/NULL as None so that equal rows compare equal."""
    columns = [nodes.ids.tolist(), *nodes.positions.T.tolist(), nodes.sizes.tolist()]
    columns += [c.tolist() for c in nodes.attrs.values()]
    return {tuple(None if _null(x) else x for x in row) for row in zip(*columns, strict=True)}


def edge_rows(edges: EdgeTable) -> set[tuple[Any, ...]]:
    columns = [edges.u.tolist(), edges.v.tolist(), *(c.tolist() for c in edges.scores.values())]
    return {tuple(None if _null(x) else x for x in row) for row in zip(*columns, strict=True)}


def _null(x: Any) -> bool:
    return x is None or (isinstance(x, float) and x != x)


def all_rows(store: GraphStore) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    return node_rows(store.read_nodes()), edge_rows(store.read_edges())


def other_db_url(request: pytest.FixtureRequest, url: str, tmp_path: Any, name: str) -> str:
    """A second empty database on the same backend as ``url``."""
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / f'{name}.sqlite'}"
    return request.getfixturevalue("postgres_server").new_url(name)


# ----------------------------------------------------------------------------- block replace


def test_block_replace_keeps_other_blocks_and_rolls_back_on_error(db_url: str) -> None:
    store = make_store(db_url)
    store.create()
    for block in range(4):
        store.write_nodes(block, version_nodes(block, 1))
        store.write_edges(block, version_edges(block, 1))
    # Values come back as written: NULL for NaN/None, bools, strings, reserved-word columns.
    nodes = store.block_nodes(2)
    assert nodes.ids.dtype == np.uint64
    np.testing.assert_array_equal(nodes.ids, [2001, 2002, 2003, 2004, 2005])
    assert nodes.attrs["Label"].tolist() == [None, "w1", None, "w1", None]
    assert nodes.attrs["ok"].tolist() == [True, False, True, False, True]
    assert nodes.attrs["order"].tolist() == [0, 1, 2, 3, 4]
    assert np.isnan(nodes.attrs["user"][0]) and nodes.attrs["user"][1] == 1 / 7
    assert (2001, 3001, None, 1) in edge_rows(store.block_edges(2))  # NaN score: NULL
    before_nodes, before_edges = all_rows(store)
    assert (len(before_nodes), store.count_nodes()) == (3 + 4 + 5 + 6, 18)

    # Replacing block 1 with another version changes exactly its rows.
    store.write_nodes(1, version_nodes(1, 7))
    store.write_edges(1, version_edges(1, 7))
    nodes_after, edges_after = all_rows(store)
    keep_nodes = before_nodes - node_rows(version_nodes(1, 1))
    keep_edges = before_edges - edge_rows(version_edges(1, 1))
    assert nodes_after == keep_nodes | node_rows(version_nodes(1, 7))
    assert edges_after == keep_edges | edge_rows(version_edges(1, 7))
    assert store.count_nodes() == 18 - 4 + 5

    # A failing replace leaves the block as it was: an id of block 0, an id >= 2**63,
    # a NaN position (SQLite would refuse it as NULL, PostgreSQL would store NaN).
    colliding = NodeTable([1001, 1], np.zeros((2, 3)), [1, 1])
    with pytest.raises(ValueError, match="collide"):
        store.write_nodes(1, colliding)
    with pytest.raises(ValueError, match="2\\*\\*63"):
        store.write_nodes(1, NodeTable(np.array([2**63], np.uint64), [[0, 0, 0]], [1]))
    with pytest.raises(ValueError, match="finite"):
        store.write_nodes(1, NodeTable([1001], [[np.nan, 0, 0]], [1]))
    assert all_rows(store) == (nodes_after, edges_after)

    # The largest storable id survives both ways; delete_block removes one block.
    big = NodeTable(np.array([MAX_ID - 1, MAX_ID], np.uint64), [[0, 0, 0], [1, 1, 1]], [1, 2])
    store.write_nodes(9, big)
    store.write_edges(9, EdgeTable(big.ids[:1], big.ids[1:], {"score": [0.5]}))
    np.testing.assert_array_equal(store.block_nodes(9).ids, big.ids)
    assert store.read_node_ids()[-2:].tolist() == [MAX_ID - 1, MAX_ID]
    edges9 = store.block_edges(9)
    assert (edges9.u.tolist(), edges9.v.tolist()) == ([MAX_ID - 1], [MAX_ID])
    store.delete_block(9)
    assert all_rows(store) == (nodes_after, edges_after)


def test_bulk_reads_equal_the_written_rows(db_url: str) -> None:
    """A few thousand rows, read whole and by ROI, against a NumPy reference."""
    store = GraphStore(db_url, node_attrs={"writer": "int"}, edge_attrs={"score": "float"})
    rng = np.random.default_rng(0)
    all_nodes, all_edges = [], []
    for block in range(40):
        n = 100
        ids = (block * 10_000 + 1 + np.arange(n)).astype(np.uint64)
        positions = rng.uniform(0, 100, size=(n, 3)).round(3)
        nodes = NodeTable(ids, positions, rng.integers(1, 1000, n), {"writer": np.full(n, block)})
        u = rng.choice(ids, 150)
        v = u + rng.integers(1, 5_000_000, 150).astype(np.uint64)
        pairs = np.unique(np.stack([u, v], axis=1), axis=0)
        scores = rng.uniform(0, 1, len(pairs))
        scores[::7] = np.nan
        edges = EdgeTable(pairs[:, 0], pairs[:, 1], {"score": scores})
        store.write_nodes(block, nodes)
        store.write_edges(block, edges)
        all_nodes.append(nodes)
        all_edges.append(edges)
    ids = np.concatenate([t.ids for t in all_nodes])
    positions = np.concatenate([t.positions for t in all_nodes])
    sizes = np.concatenate([t.sizes for t in all_nodes])
    u = np.concatenate([t.u for t in all_edges])
    v = np.concatenate([t.v for t in all_edges])
    scores = np.concatenate([t.scores["score"] for t in all_edges])

    nodes = store.read_nodes()
    np.testing.assert_array_equal(nodes.ids, np.sort(ids))
    order = np.argsort(ids)
    np.testing.assert_array_equal(nodes.positions, positions[order])
    np.testing.assert_array_equal(nodes.sizes, sizes[order])
    np.testing.assert_array_equal(nodes.attrs["writer"], (np.sort(ids) // 10_000).astype(int))
    edges = store.read_edges()
    order = np.lexsort((v, u))
    np.testing.assert_array_equal(edges.u, u[order])
    np.testing.assert_array_equal(edges.v, v[order])
    np.testing.assert_array_equal(edges.scores["score"], scores[order])
    assert (store.count_nodes(), store.count_edges()) == (4000, len(u))

    offset, shape = np.array([20.0, 0.0, 50.0]), np.array([30.0, 100.0, 25.5])
    inside = np.all((positions >= offset) & (positions < offset + shape), axis=1)
    assert 0 < inside.sum() < 4000
    roi = (tuple(offset), tuple(shape))
    np.testing.assert_array_equal(store.read_nodes(roi).ids, np.sort(ids[inside]))
    roi_edges = store.read_edges(roi)
    in_u = np.isin(u, ids[inside])
    assert edge_rows(roi_edges) == edge_rows(EdgeTable(u[in_u], v[in_u], {"score": scores[in_u]}))
    graph = store.read_graph(roi)
    assert graph.number_of_edges() == in_u.sum()
    assert {n for n in graph.nodes if "size" in graph.nodes[n]} == set(ids[inside].tolist())


def test_long_names_are_rejected_before_a_server_truncates_them(db_url: str) -> None:
    # PostgreSQL cuts identifiers at 63 bytes: a longer column would be created
    # under another name (and two long names could become one).
    with pytest.raises(ValueError, match="63"):
        GraphStore(db_url, edge_attrs={"s" * 64: "float"})
    with pytest.raises(ValueError, match="prefix"):
        GraphStore(db_url, edge_attrs={}, prefix="p" * 59)
    store = GraphStore(db_url, edge_attrs={"s" * 63: "float"}, prefix="p" * 58)
    store.write_edges(0, EdgeTable([1], [2], {"s" * 63: [0.25]}))
    assert store.read_edges().scores["s" * 63].tolist() == [0.25]
    store.create()  # the stored columns are the configured ones


# ----------------------------------------------------------------------------- concurrent writers

def last_error(trace: str) -> str:
    """The last ``SomeError: message`` line of a traceback."""
    lines = [ln for ln in trace.splitlines() if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
    return lines[-1] if lines else trace.strip().splitlines()[-1]


def test_concurrent_writers_replace_overlapping_blocks(
    db_url: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    ctx = writer_context()
    # start together; pause (the parent looks); go on
    barriers = [ctx.Barrier(N_WRITERS + 1) for _ in range(3)]
    results = ctx.Queue()
    procs = [
        ctx.Process(target=concurrent_writer, args=(p, db_url, barriers, results))
        for p in range(N_WRITERS)
    ]
    try:
        for proc in procs:
            proc.start()
        try:
            barriers[0].wait(BARRIER_TIMEOUT_S)
            start = time.perf_counter()
            barriers[1].wait(BARRIER_TIMEOUT_S)
        except threading.BrokenBarrierError:
            for proc in procs:
                proc.join(30)
            errors = []
            while len(errors) < N_WRITERS:
                try:
                    errors.append(results.get(timeout=1)[3])
                except queue.Empty:
                    break
            errors = [last_error(e) for e in errors if e]
            pytest.fail(f"a writer failed or hung (deadlock?) in the first phase: {errors}")
        phase1 = time.perf_counter() - start

        # Every writer is paused: each block holds exactly one complete version,
        # written by one of the writers that own the block.
        store = make_store(db_url)
        for block in range(N_BLOCKS):
            owners = [p for p in range(N_WRITERS) if block in writer_blocks(p)]
            assert len(owners) == 3
            tags = {writer_tag(p, r) for p in owners for r in range(ROUNDS)}
            nodes = store.block_nodes(block)
            [tag] = set(nodes.attrs["writer"].tolist())
            assert tag in tags
            assert node_rows(nodes) == node_rows(version_nodes(block, tag))
            edges = store.block_edges(block)
            [tag] = {int(t) for t in edges.scores["writer"]}  # scores read back as float64
            assert tag in tags
            assert edge_rows(edges) == edge_rows(version_edges(block, tag))
        barriers[2].wait(BARRIER_TIMEOUT_S)

        reports = [results.get(timeout=BARRIER_TIMEOUT_S) for _ in range(N_WRITERS)]
        for proc in procs:
            proc.join(BARRIER_TIMEOUT_S)
        wall = time.perf_counter() - start
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    errors = [last_error(r[3]) for r in reports if r[3]]
    assert errors == []
    assert [proc.exitcode for proc in procs] == [0] * N_WRITERS
    replaces = sum(r[1] for r in reports)
    assert replaces == N_WRITERS * BLOCKS_PER_WRITER * 2 * (ROUNDS + 1)

    # The final rows are those of one serial pass writing the canonical versions.
    serial = make_store(other_db_url(request, db_url, tmp_path, "serial"))
    for block in range(N_BLOCKS):
        serial.write_nodes(block, version_nodes(block, 0))
        serial.write_edges(block, version_edges(block, 0))
    final = all_rows(store)
    assert final == all_rows(serial)
    assert (store.count_nodes(), store.count_edges()) == (len(final[0]), len(final[1]))
    assert len(final[0]) == sum(2 + b % 5 for b in range(N_BLOCKS))
    backend = sa.engine.make_url(db_url).get_backend_name()
    print(
        f"\nconcurrent writers [{backend}]: {N_WRITERS} processes, {replaces} block replaces "
        f"({replaces // 2} nodes + {replaces // 2} edges transactions), 0 retries; "
        f"first phase (rounds 1-{ROUNDS}) {phase1:.2f} s (writers' own "
        f"{min(r[2] for r in reports):.2f}-{max(r[2] for r in reports):.2f} s), "
        f"wall from start to exit {wall:.2f} s"
    )


# ----------------------------------------------------------------------------- killed writer


@pytest.mark.parametrize(("table", "statement"), [("nodes", "DELETE"), ("edges", "INSERT")])
def test_writer_killed_inside_a_block_replace_leaves_the_previous_rows(
    db_url: str, table: str, statement: str
) -> None:
    store = make_store(db_url)
    for block in range(3):
        store.write_nodes(block, version_nodes(block, 1))
        store.write_edges(block, version_edges(block, 1))
    before = all_rows(store)

    ctx = writer_context()
    ready = ctx.Event()
    proc = ctx.Process(target=write_and_hang, args=(db_url, 1, table, statement, ready))
    proc.start()
    try:
        assert ready.wait(60), f"the writer never ran its {statement}"
        os.kill(proc.pid, signal.SIGKILL)  # inside the open transaction
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert all_rows(store) == before

    # The rerun of the block gives the clean result (no stale lock, nothing half-written).
    store.write_nodes(1, version_nodes(1, 99))
    store.write_edges(1, version_edges(1, 99))
    nodes, edges = all_rows(store)
    assert nodes == (before[0] - node_rows(version_nodes(1, 1))) | node_rows(version_nodes(1, 99))
    assert edges == (before[1] - edge_rows(version_edges(1, 1))) | edge_rows(version_edges(1, 99))
    assert store.count_nodes() == len(nodes)


# ----------------------------------------------------------------------------- tutorial API


def test_tutorial_postgresql_db_on_a_postgres_server(postgres_server: Any) -> None:
    """volara's ``PostgreSQL`` db class (host, port, name, user) against the real server."""
    from volara_assets.dbs import PostgreSQL

    db = PostgreSQL(
        host=postgres_server.host,
        port=postgres_server.port,
        name=postgres_server.create_database("tutorial"),
        user="postgres",
        node_attrs={"Label": "str", "ok": "bool"},
        edge_attrs={"zyx_aff": "float"},
    )
    assert not db.exists()
    with pytest.raises(FileNotFoundError, match="no fragment graph"):
        db.open("r")
    graph = db.open("r+")
    graph.store.write_nodes(0, NodeTable([1, 2], [[0, 0, 0], [1, 1, 1]], [3, 4],
                                         attrs={"Label": ["a", None], "ok": [True, False]}))
    graph.store.write_edges(0, EdgeTable([1], [2], {"zyx_aff": [0.75]}))
    assert db.exists()
    # Declared nothing, a second handle reads the column types back from the server.
    undeclared = db.model_copy(update={"node_attrs": None, "edge_attrs": None})
    assert undeclared.stored_attrs() == ({"Label": "str", "ok": "bool"}, {"zyx_aff": "float"})
    reread = undeclared.open("r")
    assert dict(reread.read_graph().nodes(data=True)) == {
        1: {"position": (0.0, 0.0, 0.0), "size": 3, "Label": "a", "ok": True},
        2: {"position": (1.0, 1.0, 1.0), "size": 4, "ok": False},
    }
    assert (reread.count_nodes(), reread.count_edges()) == (2, 1)
    assert db.open("w").count_nodes() == 0  # "w" starts over
    db.drop()
    assert not db.exists()
