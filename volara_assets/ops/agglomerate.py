"""Global agglomeration: mutex watershed on the fragment graph, giving the LUT."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import mwatershed as mws
import numba
import numpy as np

from ..tables import EdgeTable


def scored_edges(
    edges: EdgeTable, weights: Mapping[str, tuple[float, float]], edge_per_attr: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mutex-watershed edges of ``edges`` in processing order: ``(u, v, score)``.

    ``score = w * attr + b`` per weighted attribute (NaN: not observed, skipped);
    with ``edge_per_attr`` one edge per observed attribute, else one edge with the
    sum of its observed attribute scores (left to right in ``weights`` order).
    Order: decreasing ``|score|``; ties by ``(u, v)``, then by ``weights`` order.
    ``GraphStore.edges_by_score`` yields the same sequence from SQL.
    """
    missing = [attr for attr in weights if attr not in edges.scores]
    if missing:
        raise ValueError(
            f"weights: attribute {missing[0]!r} is not an edge score; "
            f"available: {sorted(edges.scores)}"
        )
    # (u, v) order first, so that the stable sort below breaks ties the same way
    # whatever order the edges were read from storage in.
    order = np.lexsort((edges.v, edges.u))
    u = edges.u[order]
    v = edges.v[order]
    attrs = list(weights)
    if not attrs or not len(u):
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0)
    raw = np.stack([edges.scores[a][order] for a in attrs], axis=1)  # (E, A)
    w = np.array([weights[a][0] for a in attrs], dtype=np.float64)
    b = np.array([weights[a][1] for a in attrs], dtype=np.float64)
    observed = ~np.isnan(raw)
    score = raw * w + b
    if edge_per_attr:
        # C order of (E, A): an edge's attributes stay together, in weights order.
        keep = observed.reshape(-1)
        score = score.reshape(-1)[keep]
        u_all = np.repeat(u, len(attrs))[keep]
        v_all = np.repeat(v, len(attrs))[keep]
    else:
        keep = observed.any(axis=1)
        score = np.where(observed, score, 0.0).sum(axis=1)[keep]
        u_all = u[keep]
        v_all = v[keep]
    by_magnitude = np.argsort(-np.abs(score), kind="stable")
    return u_all[by_magnitude], v_all[by_magnitude], score[by_magnitude]


def agglomerate(
    node_ids: np.ndarray,
    edges: EdgeTable,
    weights: Mapping[str, tuple[float, float]],
    edge_per_attr: bool = True,
) -> np.ndarray:
    """Cluster fragments into segments with mutex watershed on the fragment graph.

    Every weighted score attribute ``attr`` with ``(w, b) = weights[attr]``
    turns an edge into the score ``w * attr + b`` (positive merges, negative
    splits); NaN attributes (not observed) are skipped. Edges are processed in
    order of decreasing ``|score|``; ties keep ``(u, v)`` order, then the order
    of ``weights``, so the result is deterministic.

    Parameters
    ----------
    node_ids : (N,) integer array
        All fragment ids; ids without edges map to themselves. 0 (background)
        is ignored.
    edges : EdgeTable
        The fragment graph; its ``scores`` must hold every key of ``weights``.
    weights : mapping of attr -> (w, b)
    edge_per_attr : bool
        True: one mutex-watershed edge per observed attribute. False: one edge
        with the sum of the edge's observed attribute scores; an edge with no
        observed attribute is left out (volara adds it with score 0, i.e. a
        mutex constraint after every merge, which cannot change the result).

    Returns
    -------
    lut : (2, K) uint64
        Row 0: fragment ids (sorted, every node id and every edge endpoint);
        row 1: their segment ids. A segment's id is its smallest fragment id
        (``mwatershed.cluster`` itself names it after a union-find root that
        changes between runs), so segment ids are fragment ids: distinct
        segments never share an id and an unmerged fragment keeps its own.
    """
    node_ids = np.asarray(node_ids, dtype=np.uint64).reshape(-1)
    node_ids = node_ids[node_ids != 0]
    u_all, v_all, score = scored_edges(edges, weights, edge_per_attr)
    mws_edges = list(zip((score > 0).tolist(), u_all.tolist(), v_all.tolist(), strict=True))
    pairs = mws.cluster(mws_edges) if mws_edges else []
    if pairs:
        clustered = np.array(pairs, dtype=np.uint64).reshape(-1, 2)
    else:
        clustered = np.zeros((0, 2), dtype=np.uint64)
    # Endpoints of edges that had no weighted score are nodes too.
    everything = np.unique(np.concatenate([node_ids, edges.u, edges.v, clustered[:, 0]]))
    segments = everything.copy()
    if len(clustered):
        # cluster() names a segment after its union-find root, which varies from
        # run to run (Rust hash map order) even for identical input. Renaming each
        # segment to its smallest fragment id makes the LUT reproducible.
        roots, members = np.unique(clustered[:, 1], return_inverse=True)
        smallest = np.full(len(roots), np.iinfo(np.uint64).max, dtype=np.uint64)
        np.minimum.at(smallest, members.reshape(-1), clustered[:, 0])
        pos = np.searchsorted(everything, clustered[:, 0])
        segments[pos] = smallest[members.reshape(-1)]
    return np.stack([everything, segments]).astype(np.uint64)


# -- streaming mutex watershed ------------------------------------------------------------
#
# ``agglomerate`` hands every edge to ``mwatershed.cluster`` at once: ~490 bytes per edge
# (Python tuples, the sort, Rust's copy). The kernel below takes the edges already in
# processing order, chunk by chunk, and keeps only per-node state (union-find, mutex list
# heads) and one 16-byte entry per each end of an accepted mutex, so a 10^9-edge graph
# needs memory for its nodes and mutexes, not for its edges.

_NO_ENTRY = -1


@numba.njit(cache=True)
def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return x


@numba.njit(cache=True)
def _mutex(parent, head, count, partner, following, ra, rb) -> bool:
    """Whether clusters ``ra`` and ``rb`` (roots) hold a mutex: walk the shorter list."""
    if count[ra] > count[rb]:
        ra, rb = rb, ra
    entry = head[ra]
    while entry != _NO_ENTRY:
        if _find(parent, partner[entry]) == rb:
            return True
        entry = following[entry]
    return False


@numba.njit(cache=True)
def _process(u, v, merge, start, parent, size, head, tail, count, partner, following, used):
    """Apply edges ``start:`` in order; return where it stopped (entries full) and ``used``."""
    capacity = len(partner)
    for i in range(start, len(u)):
        ra = _find(parent, u[i])
        rb = _find(parent, v[i])
        if ra == rb:
            continue
        if _mutex(parent, head, count, partner, following, ra, rb):
            continue
        if merge[i]:
            # Union by size; the mutex lists are concatenated in O(1).
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
            if head[rb] != _NO_ENTRY:
                if head[ra] == _NO_ENTRY:
                    head[ra] = head[rb]
                else:
                    following[tail[ra]] = head[rb]
                tail[ra] = tail[rb]
                count[ra] += count[rb]
        else:
            if used + 2 > capacity:
                return i, used
            for a, b in ((ra, rb), (rb, ra)):
                partner[used] = b
                following[used] = _NO_ENTRY
                if head[a] == _NO_ENTRY:
                    head[a] = used
                else:
                    following[tail[a]] = used
                tail[a] = used
                count[a] += 1
                used += 1
    return len(u), used


@numba.njit(cache=True)
def _smallest_member(parent: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per node, the smallest id of its cluster (``ids`` ascending: the first one seen)."""
    out = np.empty(len(ids), dtype=np.uint64)
    first = np.full(len(ids), -1, dtype=np.int64)
    for i in range(len(ids)):
        r = _find(parent, i)
        if first[r] < 0:
            first[r] = i
        out[i] = ids[first[r]]
    return out


class MutexWatershed:
    """Mutex watershed over a graph whose edges arrive in chunks, already in processing order.

    Semantics of ``mwatershed.cluster``: edges are taken in the given order; an
    attractive edge joins its two clusters unless they are already joined or
    hold a mutex; a repulsive edge puts a mutex between them unless they are
    already joined.

    Memory: 5 int64 per node (union-find parent and size, a mutex list's head,
    tail and length) and 2 int64 per end of each accepted mutex (a cluster's
    mutexes are a linked list; a union concatenates the two lists). A mutex
    test walks the shorter of the two lists.

    Parameters
    ----------
    num_nodes : int
        Nodes are the indices ``0 .. num_nodes - 1``.
    """

    def __init__(self, num_nodes: int) -> None:
        self.parent = np.arange(num_nodes, dtype=np.int64)
        self.size = np.ones(num_nodes, dtype=np.int64)
        self.head = np.full(num_nodes, _NO_ENTRY, dtype=np.int64)
        self.tail = np.full(num_nodes, _NO_ENTRY, dtype=np.int64)
        self.count = np.zeros(num_nodes, dtype=np.int64)
        self.partner = np.zeros(1024, dtype=np.int64)
        self.following = np.zeros(1024, dtype=np.int64)
        self.used = 0

    def add_edges(self, u: np.ndarray, v: np.ndarray, merge: np.ndarray) -> None:
        """Apply edges ``(u[i], v[i])`` (node indices) in order; ``merge[i]``: attractive."""
        u = np.ascontiguousarray(u, dtype=np.int64)
        v = np.ascontiguousarray(v, dtype=np.int64)
        merge = np.ascontiguousarray(merge, dtype=np.bool_)
        start = 0
        while start < len(u):
            start, self.used = _process(
                u, v, merge, start, self.parent, self.size, self.head, self.tail,
                self.count, self.partner, self.following, self.used,
            )
            if start < len(u):  # mutex entries full: grow by half, keep going
                grown = len(self.partner) + len(self.partner) // 2 + 2
                self.partner = np.resize(self.partner, grown)
                self.following = np.resize(self.following, grown)

    @property
    def mutex_entries(self) -> int:
        return self.used

    def smallest_member(self, ids: np.ndarray) -> np.ndarray:
        """Segment id per node: the smallest of ``ids`` (ascending, one per node) in its cluster."""
        return _smallest_member(self.parent, np.ascontiguousarray(ids, dtype=np.uint64))


def agglomerate_stream(
    node_ids: np.ndarray, edge_chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> np.ndarray:
    """:func:`agglomerate` on edges streamed in processing order, in memory per node.

    Parameters
    ----------
    node_ids : (N,) integer array
        Every fragment id, including every edge endpoint (e.g.
        ``GraphStore.graph_node_ids``); 0 is ignored.
    edge_chunks : iterable of (u, v, score)
        ``(E_i,)`` arrays: uint64 ends and float64 scores ``w * attr + b``, in
        processing order over all chunks: decreasing ``|score|``, ties by
        ``(u, v)`` then by the order of the weights (what
        ``GraphStore.edges_by_score`` yields). ``score > 0`` merges.

    Returns
    -------
    lut : (2, N) uint64
        As :func:`agglomerate`: sorted fragment ids and their segment ids (the
        smallest fragment id of each segment). For the same edges in the same
        order it is the same array.

    Raises
    ------
    ValueError
        If an edge endpoint is not in ``node_ids``.
    """
    ids = np.unique(np.asarray(node_ids, dtype=np.uint64).reshape(-1))
    ids = ids[ids != 0]
    mws_state = MutexWatershed(len(ids))
    for u, v, score in edge_chunks:
        if not len(u):
            continue
        iu = np.searchsorted(ids, u)
        iv = np.searchsorted(ids, v)
        for end, index in ((u, iu), (v, iv)):
            found = index < len(ids)
            found[found] = ids[index[found]] == end[found]
            if not found.all():
                raise ValueError(f"edge endpoint {int(end[~found][0])} is not in node_ids")
        mws_state.add_edges(iu, iv, np.asarray(score) > 0)
    return np.stack([ids, mws_state.smallest_member(ids)]).astype(np.uint64)
