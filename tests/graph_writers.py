"""Row versions and writer processes for tests/test_graph_backends.py.

A plain module (no pytest), so that the writer processes, started with
``forkserver``, import little more than the graph store.
"""

from __future__ import annotations

import random
import time
import traceback
from typing import Any

import numpy as np
import sqlalchemy as sa

from volara_assets.storage import GraphStore
from volara_assets.tables import EdgeTable, NodeTable

# Names that need quoting somewhere: reserved words in PostgreSQL and SQLite, mixed case.
NODE_ATTRS = {"writer": "int", "Label": "str", "order": "int", "user": "float", "ok": "bool"}
EDGE_ATTRS = {"score": "float", "writer": "int"}


def make_store(url: str) -> GraphStore:
    return GraphStore(url, node_attrs=NODE_ATTRS, edge_attrs=EDGE_ATTRS)


def version_nodes(block: int, writer: int) -> NodeTable:
    """The nodes one write of ``block`` by ``writer`` stores: 2 to 6 of them, ids
    ``1000 * block + 1, ...``, every column a function of (block, writer)."""
    n = 2 + (block + writer) % 5
    i = np.arange(n)
    return NodeTable(
        ids=(1000 * block + 1 + i).astype(np.uint64),
        positions=np.stack([10.0 * block + i, np.full(n, float(writer)), 0.5 + i / 4], axis=1),
        sizes=writer + 1 + i,
        attrs={
            "writer": np.full(n, writer),
            "Label": np.array([f"w{writer}" if k % 2 else None for k in range(n)], dtype=object),
            "order": i,
            "user": np.where(i == 0, np.nan, writer / 7),
            "ok": i % 2 == 0,
        },
    )


def version_edges(block: int, writer: int) -> EdgeTable:
    """A chain over the block's nodes of that version, plus one edge to the next block."""
    ids = version_nodes(block, writer).ids
    u = np.append(ids[:-1], ids[0])
    v = np.append(ids[1:], np.uint64(1000 * (block + 1) + 1))
    score = writer + np.arange(len(u)) / 8
    score[-1] = np.nan  # stored as NULL
    return EdgeTable(u, v, {"score": score, "writer": np.full(len(u), writer)})


N_WRITERS = 8
N_BLOCKS = 16
BLOCKS_PER_WRITER = 6  # every block is replaced by 3 writers
ROUNDS = 6
BARRIER_TIMEOUT_S = 120


def writer_blocks(p: int) -> list[int]:
    return [(2 * p + k) % N_BLOCKS for k in range(BLOCKS_PER_WRITER)]


def writer_tag(p: int, r: int) -> int:
    return 1 + p * ROUNDS + r


def concurrent_writer(p: int, url: str, barriers: list[Any], results: Any) -> None:
    """Once every writer is up, replace this writer's blocks ``ROUNDS`` times each in
    shuffled order (versions tagged by writer and round), wait while the parent looks,
    then write the canonical version (tag 0) of each once more."""
    try:
        store = make_store(url)
        rng = random.Random(p)
        blocks = writer_blocks(p)
        barriers[0].wait(BARRIER_TIMEOUT_S)
        start = time.perf_counter()
        store.create()  # racing with the other writers
        replaces = 0
        for r in range(ROUNDS):
            rng.shuffle(blocks)
            for block in blocks:
                store.write_nodes(block, version_nodes(block, writer_tag(p, r)))
                store.write_edges(block, version_edges(block, writer_tag(p, r)))
                replaces += 2
        seconds = time.perf_counter() - start
        barriers[1].wait(BARRIER_TIMEOUT_S)
        barriers[2].wait(BARRIER_TIMEOUT_S)
        for block in blocks:
            store.write_nodes(block, version_nodes(block, 0))
            store.write_edges(block, version_edges(block, 0))
            replaces += 2
        results.put((p, replaces, seconds, None))
    except BaseException:  # the parent reports it
        for b in barriers:
            b.abort()
        results.put((p, 0, 0.0, traceback.format_exc()))
        raise


def write_and_hang(url: str, block: int, table: str, statement: str, ready: Any) -> None:
    """Replace ``block``'s ``table`` rows, stopping forever right after ``statement`` ran."""
    store = make_store(url)

    @sa.event.listens_for(store.engine, "after_cursor_execute")
    def _hang(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if sql.lstrip().upper().startswith(statement):
            ready.set()
            time.sleep(600)

    if table == "nodes":
        store.write_nodes(block, version_nodes(block, 99))
    else:
        store.write_edges(block, version_edges(block, 99))
