"""Tests of the SQL fragment graph on real SQLite files."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import sqlite3

import numpy as np
import pytest

from volara_assets.storage import GraphStore
from volara_assets.tables import EdgeTable, NodeTable

EDGE_ATTRS = {"zyx_aff": "float", "adj_weight": "float"}


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'db' / 'graph.db'}"


@pytest.fixture
def store(url) -> GraphStore:
    store = GraphStore(url, node_attrs={"label": "int"}, edge_attrs=EDGE_ATTRS)
    store.create()
    return store


def nodes_of_block(block: int) -> NodeTable:
    """Three nodes with ids 10*block + 1..3 at z = 100*block + 0, 10, 20."""
    ids = 10 * block + np.arange(1, 4, dtype=np.uint64)
    positions = np.array([[100.0 * block + 10 * i, 5.0, 7.5] for i in range(3)])
    return NodeTable(ids, positions, [4, 5, 6], attrs={"label": np.array([1, 2, 3])})


def edges_of_block(block: int) -> EdgeTable:
    u = 10 * block + np.array([1, 1, 2], dtype=np.uint64)
    v = 10 * block + np.array([2, 3, 3], dtype=np.uint64)
    return EdgeTable(
        u, v, {"zyx_aff": [0.5, np.nan, 0.25], "adj_weight": [np.nan, np.nan, 1.0]}
    )


def assert_nodes_equal(a: NodeTable, b: NodeTable) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.sizes, b.sizes)
    assert a.attrs.keys() == b.attrs.keys()
    for k in a.attrs:
        np.testing.assert_array_equal(a.attrs[k], b.attrs[k])


def assert_edges_equal(a: EdgeTable, b: EdgeTable) -> None:
    np.testing.assert_array_equal(a.u, b.u)
    np.testing.assert_array_equal(a.v, b.v)
    assert a.scores.keys() == b.scores.keys()
    for k in a.scores:
        np.testing.assert_array_equal(a.scores[k], b.scores[k])  # NaN == NaN here


def test_write_read_round_trip_with_null_scores(store):
    store.write_nodes(0, nodes_of_block(0))
    store.write_edges(0, edges_of_block(0))
    nodes = store.read_nodes()
    assert nodes.ids.dtype == np.uint64
    np.testing.assert_array_equal(nodes.ids, [1, 2, 3])
    np.testing.assert_array_equal(nodes.positions, [[0, 5, 7.5], [10, 5, 7.5], [20, 5, 7.5]])
    np.testing.assert_array_equal(nodes.sizes, [4, 5, 6])
    np.testing.assert_array_equal(nodes.attrs["label"], [1, 2, 3])
    edges = store.read_edges()
    np.testing.assert_array_equal(edges.u, [1, 1, 2])
    np.testing.assert_array_equal(edges.v, [2, 3, 3])
    np.testing.assert_array_equal(edges.scores["zyx_aff"], [0.5, np.nan, 0.25])
    np.testing.assert_array_equal(edges.scores["adj_weight"], [np.nan, np.nan, 1.0])
    # NaN is stored as SQL NULL, not as a float.
    path = store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT u, v, zyx_aff, adj_weight FROM edges ORDER BY u, v").fetchall()
    assert rows == [(1, 2, 0.5, None), (1, 3, None, None), (2, 3, 0.25, 1.0)]


def test_rewrite_block_replaces_rows_and_leaves_others(store):
    for block in (0, 1):
        store.write_nodes(block, nodes_of_block(block))
        store.write_edges(block, edges_of_block(block))
    before_nodes, before_edges = store.read_nodes(), store.read_edges()
    # Rewriting the same rows is idempotent: no duplicates, nothing lost.
    store.write_nodes(1, nodes_of_block(1))
    store.write_edges(1, edges_of_block(1))
    assert_nodes_equal(store.read_nodes(), before_nodes)
    assert_edges_equal(store.read_edges(), before_edges)
    assert (store.count_nodes(), store.count_edges()) == (6, 6)
    # Different rows replace the block's old ones; block 0 is untouched.
    store.write_nodes(1, NodeTable([15], [[150.0, 0.0, 0.0]], [9]))
    store.write_edges(1, EdgeTable([11], [15], {"zyx_aff": [0.75]}))
    np.testing.assert_array_equal(store.block_nodes(1).ids, [15])
    np.testing.assert_array_equal(store.block_nodes(1).attrs["label"], [np.nan])
    assert_nodes_equal(store.block_nodes(0), nodes_of_block(0))
    assert_edges_equal(store.block_edges(0), edges_of_block(0))
    block1 = store.block_edges(1)
    assert (block1.u.tolist(), block1.v.tolist()) == ([11], [15])
    assert block1.scores["zyx_aff"].tolist() == [0.75]
    assert np.isnan(block1.scores["adj_weight"]).all()
    assert (store.count_nodes(), store.count_edges()) == (4, 4)
    ids = store.read_node_ids()
    assert ids.dtype == np.uint64
    np.testing.assert_array_equal(ids, store.read_nodes().ids)
    store.delete_block(0)
    assert (store.count_nodes(), store.count_edges()) == (1, 1)


def test_failed_write_rolls_back(store):
    store.write_nodes(0, nodes_of_block(0))
    store.write_nodes(1, nodes_of_block(1))
    # Id 3 belongs to block 0: the whole rewrite of block 1 fails and block 1 keeps its rows.
    with pytest.raises(ValueError, match="collide"):
        store.write_nodes(1, NodeTable([3, 16], np.zeros((2, 3)), [1, 1]))
    np.testing.assert_array_equal(store.block_nodes(1).ids, [11, 12, 13])
    with pytest.raises(ValueError, match="unknown node attributes"):
        store.write_nodes(2, NodeTable([21], [[0, 0, 0]], [1], attrs={"colour": [1]}))
    with pytest.raises(ValueError, match="2\\*\\*63"):
        store.write_nodes(2, NodeTable(np.array([2**63], np.uint64), [[0, 0, 0]], [1]))


def test_roi_queries(store):
    for block in (0, 1, 2):
        store.write_nodes(block, nodes_of_block(block))
        store.write_edges(block, edges_of_block(block))
    # z in [10, 110): nodes 2, 3 (z=10, 20) and 11 (z=100); 110 would be excluded.
    roi = ((10, 0, 0), (100, 10, 10))
    np.testing.assert_array_equal(store.read_nodes(roi).ids, [2, 3, 11])
    edges = store.read_edges(roi)
    pairs = list(zip(edges.u.tolist(), edges.v.tolist(), strict=True))
    assert pairs == [(2, 3), (11, 12), (11, 13)]
    # The y range excludes everything (all nodes have y = 5).
    assert len(store.read_nodes(((0, 6, 0), (1000, 10, 10)))) == 0
    assert len(store.read_edges(((0, 6, 0), (1000, 10, 10)))) == 0
    assert store.read_edges(((0, 6, 0), (1, 1, 1))).scores.keys() == EDGE_ATTRS.keys()


def test_read_graph_attributes(store):
    store.write_nodes(0, nodes_of_block(0))
    store.write_edges(0, edges_of_block(0))
    graph = store.read_graph()
    assert sorted(graph.nodes) == [1, 2, 3]
    assert graph.nodes[2] == {"position": (10.0, 5.0, 7.5), "size": 5, "label": 2}
    assert graph.edges[1, 2] == {"zyx_aff": 0.5}
    assert graph.edges[1, 3] == {}
    assert graph.edges[2, 3] == {"zyx_aff": 0.25, "adj_weight": 1.0}
    sub = store.read_graph(((5, 0, 0), (10, 10, 10)), node_attrs=[], edge_attrs=["adj_weight"])
    # Node 2 is inside; edge (2, 3) brings node 3 along without attributes.
    assert dict(sub.nodes(data=True)) == {2: {"position": (10.0, 5.0, 7.5), "size": 5}, 3: {}}
    assert list(sub.edges(data=True)) == [(2, 3, {"adj_weight": 1.0})]
    with pytest.raises(ValueError, match="unknown attributes"):
        store.read_graph(edge_attrs=["nope"])


def test_empty_reads(store):
    nodes = store.read_nodes()
    assert len(nodes) == 0 and nodes.ids.dtype == np.uint64 and nodes.positions.shape == (0, 3)
    edges = store.read_edges()
    assert len(edges) == 0 and set(edges.scores) == set(EDGE_ATTRS)
    store.write_nodes(0, NodeTable.empty())
    assert store.count_nodes() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"edge_attrs": {"zyx_aff; DROP TABLE nodes": "float"}}, "not a plain identifier"),
        ({"edge_attrs": {"1abc": "float"}}, "not a plain identifier"),
        ({"edge_attrs": {"u": "float"}}, "reserved"),
        ({"edge_attrs": {}, "node_attrs": {"Size": "int"}}, "reserved"),
        ({"edge_attrs": {}, "prefix": "x; DROP TABLE edges; --"}, "prefix"),
        ({"edge_attrs": {"zyx_aff": "double"}}, r"'zyx_aff' has type 'double'.*'float', 'int'"),
        ({"edge_attrs": {"label": "str"}}, "allowed types"),
    ],
)
def test_bad_config_rejected(url, kwargs, message):
    with pytest.raises(ValueError, match=message):
        GraphStore(url, **kwargs)


def test_existing_tables_with_other_columns(store, url):
    with pytest.raises(ValueError, match="'merge_score'"):
        GraphStore(url, node_attrs={"label": "int"}, edge_attrs={"merge_score": "float"}).create()
    # A prefix keeps separate tables in one database.
    other = GraphStore(url, edge_attrs={"merge_score": "float"}, prefix="run2_")
    other.create()
    other.create()  # idempotent
    other.write_edges(0, EdgeTable([1], [2], {"merge_score": [0.1]}))
    assert (other.count_edges(), store.count_edges()) == (1, 0)
    other.drop()
    store.write_nodes(0, nodes_of_block(0))
    assert store.count_nodes() == 3


def test_write_creates_tables_lazily(url):
    store = GraphStore(url, edge_attrs=EDGE_ATTRS)
    store.write_edges(3, edges_of_block(3))
    assert store.count_edges() == 3


def test_pickle_drops_engine(store):
    store.write_nodes(0, nodes_of_block(0))
    clone = pickle.loads(pickle.dumps(store))
    assert clone.url == store.url and clone.edge_attrs == EDGE_ATTRS
    assert clone.node_attrs == {"label": "int"}
    assert clone.count_nodes() == 3


def _write_blocks(args: tuple[GraphStore, list[int]]) -> None:
    store, blocks = args
    for block in blocks:
        store.write_nodes(block, nodes_of_block(block))
        store.write_edges(block, edges_of_block(block))
        store.write_nodes(block, nodes_of_block(block))  # a rewrite in the middle


def test_two_processes_write_concurrently(url):
    store = GraphStore(url, node_attrs={"label": "int"}, edge_attrs=EDGE_ATTRS)
    # Tables are created by the workers themselves, racing on create().
    ctx = mp.get_context("forkserver")
    procs = [
        ctx.Process(target=_write_blocks, args=((store, list(range(k, 40, 2))),)) for k in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (store.count_nodes(), store.count_edges()) == (120, 120)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    for block in (0, 17, 39):
        assert_nodes_equal(store.block_nodes(block), nodes_of_block(block))
        assert_edges_equal(store.block_edges(block), edges_of_block(block))


@pytest.mark.parametrize("edge_per_attr", [True, False])
def test_edges_by_score_streams_the_in_memory_order_bit_for_bit(store, edge_per_attr):
    from volara_assets.ops.agglomerate import scored_edges

    rng = np.random.default_rng(3)
    u = np.arange(1, 400, dtype=np.uint64)
    v = u + rng.integers(1, 9, len(u)).astype(np.uint64)
    aff = rng.random(len(u))
    adj = rng.random(len(u))
    adj[::3] = np.nan
    aff[::7] = np.nan
    # Equal |score| on both sides of zero (0.75 and 0.25 score +-0.25): ties by (u, v).
    aff[10], aff[20] = 0.75, 0.25
    store.write_edges(0, EdgeTable(u, v, {"zyx_aff": aff, "adj_weight": adj}))
    weights = {"adj_weight": (-2.0, 1.1), "zyx_aff": (1.0, -0.5)}
    expected = scored_edges(store.read_edges(), weights, edge_per_attr)
    got = list(store.edges_by_score(weights, edge_per_attr, chunk_size=50))
    assert len(got) > 1 and all(len(c[0]) <= 50 for c in got)
    for column, want in zip(zip(*got, strict=True), expected, strict=True):
        np.testing.assert_array_equal(np.concatenate(column), want)
    u_got = np.concatenate([c[0] for c in got])
    assert u_got.dtype == np.uint64
    scores = np.concatenate([c[2] for c in got])
    assert np.all(np.diff(np.abs(scores)) <= 0)


def test_edges_by_score_rejects_an_unknown_weight(store):
    with pytest.raises(ValueError, match="'adj' is not an edge score"):
        next(store.edges_by_score({"adj": (1.0, 0.0)}))


def test_graph_node_ids_are_the_nodes_and_every_edge_endpoint(store):
    store.write_nodes(0, nodes_of_block(0))  # ids 1, 2, 3
    # 3-12 and 12-40: 12 and 40 have no node row (a graph written by another tool).
    store.write_edges(0, EdgeTable([3, 12], [12, 40], {"zyx_aff": [0.1, 0.2]}))
    ids = store.graph_node_ids(chunk_size=2)
    assert ids.dtype == np.uint64
    assert ids.tolist() == [1, 2, 3, 12, 40]
