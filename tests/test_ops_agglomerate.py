import numpy as np
import pytest

from volara_assets.ops import agglomerate, edge_scores, relabel
from volara_assets.ops.agglomerate import agglomerate_stream, scored_edges
from volara_assets.tables import EdgeTable


def table(rows, attrs):
    """EdgeTable from (u, v, {attr: value}) rows; missing attrs are NaN."""
    return EdgeTable(
        [r[0] for r in rows],
        [r[1] for r in rows],
        {a: [r[2].get(a, np.nan) for r in rows] for a in attrs},
    )


def as_dict(lut):
    return dict(zip(lut[0].tolist(), lut[1].tolist(), strict=True))


@pytest.mark.parametrize(
    ("affinity", "merged"), [(0.49, False), (0.5, False), (0.51, True), (0.9, True)]
)
def test_two_fragments_merge_iff_score_positive(affinity, merged):
    edges = table([(10, 20, {"aff": affinity})], ["aff"])
    lut = agglomerate(np.array([10, 20]), edges, {"aff": (1.0, -0.5)})
    seg = as_dict(lut)
    assert (seg[10] == seg[20]) == merged


@pytest.mark.parametrize(("weight", "bias", "merged"), [(2.0, -0.79, True), (2.0, -0.81, False)])
def test_weight_and_bias_are_applied(weight, bias, merged):
    edges = table([(1, 2, {"aff": 0.4})], ["aff"])
    seg = as_dict(agglomerate(np.array([1, 2]), edges, {"aff": (weight, bias)}))
    assert (seg[1] == seg[2]) == merged


def test_lut_shape_dtype_isolated_nodes_and_segment_ids():
    edges = table([(1, 2, {"aff": 0.9}), (2, 3, {"aff": 0.1})], ["aff"])
    lut = agglomerate(np.array([3, 1, 2, 7]), edges, {"aff": (1.0, -0.5)})
    assert lut.dtype == np.uint64 and lut.shape == (2, 4)
    assert lut[0].tolist() == [1, 2, 3, 7]
    seg = as_dict(lut)
    assert seg[1] == seg[2] == 1  # a segment is named after its smallest fragment
    assert seg[3] == 3 and seg[7] == 7


def test_nan_attributes_are_skipped():
    edges = table([(1, 2, {"b": 0.9}), (2, 3, {"a": 0.9})], ["a", "b"])
    # (1, 2) has no "a": only its "b" score counts, and it merges.
    seg = as_dict(agglomerate(np.array([1, 2, 3]), edges, {"a": (-1.0, 0.0), "b": (1.0, 0.0)}))
    assert seg[1] == seg[2] != seg[3]


def test_edge_per_attr_versus_summed_scores():
    # Raw attributes are the scores (w=1, b=0).
    rows = [
        (1, 2, {"a": 0.9, "b": -0.85}),
        (1, 3, {"a": -0.8}),
        (2, 3, {"a": 0.7}),
    ]
    edges = table(rows, ["a", "b"])
    weights = {"a": (1.0, 0.0), "b": (1.0, 0.0)}
    nodes = np.array([1, 2, 3])
    # Per attribute: +0.9 merges 1-2 first, -0.8 then forbids 1-3, blocking +0.7.
    seg = as_dict(agglomerate(nodes, edges, weights, edge_per_attr=True))
    assert seg[1] == seg[2] != seg[3]
    # Summed: 1-2 scores +0.05, so -0.8 and +0.7 come first: 2-3 merge, 1 alone.
    seg = as_dict(agglomerate(nodes, edges, weights, edge_per_attr=False))
    assert seg[2] == seg[3] != seg[1]


def test_edge_order_does_not_change_the_lut():
    rng = np.random.default_rng(0)
    u = rng.integers(1, 30, 200)
    v = u + rng.integers(1, 10, 200)
    key = np.unique(np.stack([u, v], 1), axis=0)
    # Quantised scores make many ties: they must break the same way every time.
    scores = np.round(rng.random(len(key)), 1)
    edges = EdgeTable(key[:, 0], key[:, 1], {"aff": scores})
    reference = agglomerate(np.arange(1, 40), edges, {"aff": (1.0, -0.5)})
    for _ in range(3):
        p = rng.permutation(len(key))
        shuffled = EdgeTable(key[p, 0], key[p, 1], {"aff": scores[p]})
        lut = agglomerate(np.arange(1, 40), shuffled, {"aff": (1.0, -0.5)})
        np.testing.assert_array_equal(lut, reference)


def test_missing_weight_attribute_names_it_and_the_available_ones():
    edges = table([(1, 2, {"aff": 0.9})], ["aff"])
    with pytest.raises(ValueError, match=r"'zyx_aff'.*available: \['aff'\]"):
        agglomerate(np.array([1, 2]), edges, {"zyx_aff": (1.0, -0.5)})


def test_no_edges_maps_every_node_to_itself():
    nodes = np.array([5, 2**62 + 1], dtype=np.uint64)
    lut = agglomerate(nodes, EdgeTable.empty(["aff"]), {"aff": (1, 0)})
    assert lut.tolist() == [[5, 2**62 + 1], [5, 2**62 + 1]]


def test_large_ids_survive_edges_lut_and_relabel():
    a, b, c = 2**62 + 1, 2**62 + 2, 2**32 + 5
    fragments = np.array([[[a, a, b, b, c, c]]], dtype=np.uint64)
    affs = np.zeros((1, 1, 1, 6))
    affs[0, 0, 0, 1] = 0.9  # a -> b: strong
    affs[0, 0, 0, 3] = 0.1  # b -> c: weak
    edges = edge_scores(fragments, affs, [(0, 0, 1)], {"aff": [(0, 0, 1)]})
    assert set(zip(edges.u.tolist(), edges.v.tolist(), strict=True)) == {(a, b), (c, b)}
    lut = agglomerate(np.array([a, b, c], dtype=np.uint64), edges, {"aff": (1.0, -0.5)})
    seg = as_dict(lut)
    assert seg[a] == seg[b] == a and seg[c] == c
    segments = relabel(fragments, lut)
    assert segments.ravel().tolist() == [seg[a]] * 4 + [c, c]


# -- streaming kernel -----------------------------------------------------------------------


def random_graph(seed: int, n: int = 300, m: int = 2500) -> tuple[np.ndarray, EdgeTable]:
    """Node ids 1..n and edges to nearby ids; two score groups, some NaN; no score ties."""
    rng = np.random.default_rng(seed)
    u = rng.integers(1, n, m)
    v = np.minimum(u + rng.integers(1, 20, m), n)
    pairs = np.unique(np.stack([u, v], axis=1), axis=0)
    pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    scores = {"a": rng.random(len(pairs)), "b": rng.random(len(pairs))}
    scores["b"][rng.random(len(pairs)) < 0.3] = np.nan
    scores["a"][rng.random(len(pairs)) < 0.1] = np.nan
    return np.arange(1, n + 1, dtype=np.uint64), EdgeTable(pairs[:, 0], pairs[:, 1], scores)


def chunks(u, v, score, size):
    return [(u[i : i + size], v[i : i + size], score[i : i + size]) for i in range(0, len(u), size)]


@pytest.mark.parametrize("edge_per_attr", [True, False])
@pytest.mark.parametrize("seed", range(8))
def test_streamed_kernel_gives_the_lut_of_mwatershed_cluster(seed, edge_per_attr):
    nodes, edges = random_graph(seed)
    weights = {"a": (1.0, -0.5), "b": (-2.0, 1.1)}
    expected = agglomerate(nodes, edges, weights, edge_per_attr)
    u, v, score = scored_edges(edges, weights, edge_per_attr)
    got = agglomerate_stream(nodes, chunks(u, v, score, 97))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.uint64
    # Some merges and some mutexes happened, so the comparison says something.
    assert 1 < len(np.unique(got[1])) < len(nodes)


def test_a_mutex_blocks_a_later_merge_and_segments_take_the_smallest_id():
    # 2-3 repulsive first, then 1-2 and 1-3 attractive: 1 joins 2, then 3 may not
    # join {1, 2}. 4-5 attractive, 4 isolated from the rest.
    u = np.array([2, 1, 1, 4], dtype=np.uint64)
    v = np.array([3, 2, 3, 5], dtype=np.uint64)
    score = np.array([-0.9, 0.8, 0.7, 0.1])
    lut = agglomerate_stream(np.arange(1, 7, dtype=np.uint64), [(u, v, score)])
    assert as_dict(lut) == {1: 1, 2: 1, 3: 3, 4: 4, 5: 4, 6: 6}


def test_mutexes_follow_merged_clusters():
    # 1-2 mutex; then 2 joins 3 and 1 joins 4: 3-4 must not merge (their clusters hold
    # the 1-2 mutex), though neither 3 nor 4 was in a repulsive edge.
    u = np.array([1, 2, 1, 3], dtype=np.uint64)
    v = np.array([2, 3, 4, 4], dtype=np.uint64)
    score = np.array([-1.0, 0.9, 0.8, 0.7])
    lut = agglomerate_stream(np.arange(1, 5, dtype=np.uint64), chunks(u, v, score, 1))
    assert as_dict(lut) == {1: 1, 2: 2, 3: 2, 4: 1}


def test_kernel_grows_its_mutex_storage_exactly_as_needed():
    from volara_assets.ops.agglomerate import MutexWatershed

    n = 3000
    state = MutexWatershed(n)
    u = np.arange(0, n - 1)
    state.add_edges(u, u + 1, np.zeros(n - 1, dtype=bool))  # a chain of mutexes
    assert state.mutex_entries == 2 * (n - 1)
    state.add_edges(u, u + 1, np.ones(n - 1, dtype=bool))  # all blocked
    assert state.mutex_entries == 2 * (n - 1)
    ids = np.arange(1, n + 1, dtype=np.uint64)
    np.testing.assert_array_equal(state.smallest_member(ids), ids)


def test_stream_rejects_an_endpoint_that_is_not_a_node():
    u, v = np.array([1], dtype=np.uint64), np.array([9], dtype=np.uint64)
    with pytest.raises(ValueError, match="edge endpoint 9 is not in node_ids"):
        agglomerate_stream(np.array([1, 2], dtype=np.uint64), [(u, v, np.array([0.5]))])
