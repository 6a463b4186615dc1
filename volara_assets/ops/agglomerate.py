"""Global agglomeration: mutex watershed on the fragment graph, giving the LUT."""

from __future__ import annotations

from collections.abc import Mapping

import mwatershed as mws
import numpy as np

from ..tables import EdgeTable


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
    missing = [attr for attr in weights if attr not in edges.scores]
    if missing:
        raise ValueError(
            f"weights: attribute {missing[0]!r} is not an edge score; "
            f"available: {sorted(edges.scores)}"
        )
    node_ids = np.asarray(node_ids, dtype=np.uint64).reshape(-1)
    node_ids = node_ids[node_ids != 0]

    # (u, v) order first, so that the stable sort below breaks ties the same way
    # whatever order the edges were read from storage in.
    order = np.lexsort((edges.v, edges.u))
    u = edges.u[order]
    v = edges.v[order]
    attrs = list(weights)
    if attrs and len(u):
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
        mws_edges = list(
            zip(
                (score[by_magnitude] > 0).tolist(),
                u_all[by_magnitude].tolist(),
                v_all[by_magnitude].tolist(),
                strict=True,
            )
        )
    else:
        mws_edges = []

    pairs = mws.cluster(mws_edges) if mws_edges else []
    if pairs:
        clustered = np.array(pairs, dtype=np.uint64).reshape(-1, 2)
    else:
        clustered = np.zeros((0, 2), dtype=np.uint64)
    # Endpoints of edges that had no weighted score are nodes too.
    everything = np.unique(np.concatenate([node_ids, u, v, clustered[:, 0]]))
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
