import itertools

import numpy as np
import pytest

from volara_assets.ops import edge_scores

X_POS = (0, 0, 1)
X_NEG_LONG = (0, 4, -1)


def two_columns(rows):
    """Fragment 1 in column x=0, fragment 2 in column x=1, ``rows`` rows."""
    fragments = np.zeros((1, rows, 2), dtype=np.uint64)
    fragments[..., 0] = 1
    fragments[..., 1] = 2
    return fragments


def test_pooled_mean_of_equal_counts():
    # (0, 0, 1) pairs the 5 rows with base in column 0; (0, 0, -1) pairs them
    # with base in column 1. 5 pairs at 0.2 and 5 at 0.6 pool to 0.4.
    fragments = two_columns(5)
    affs = np.zeros((2, 1, 5, 2), dtype=np.uint8)
    affs[0, ..., 0] = 51  # 0.2
    affs[1, ..., 1] = 153  # 0.6
    edges = edge_scores(fragments, affs, [X_POS, (0, 0, -1)], {"x": [X_POS, (0, 0, -1)]})
    assert edges.u.tolist() == [1] and edges.v.tolist() == [2]
    assert edges.scores["x"][0] == pytest.approx(0.4, abs=1e-12)


def test_pooled_mean_weighs_offsets_by_their_pair_count():
    # 6 pairs at 0.2 from (0, 0, 1), 2 pairs at 0.6 from (0, 4, -1): the pooled
    # mean is 0.3, whereas the mean of the two per-offset means would be 0.4.
    fragments = two_columns(6)
    affs = np.zeros((2, 1, 6, 2), dtype=np.float64)
    affs[0] = 0.2
    affs[1] = 0.6
    groups = {"both": [X_POS, X_NEG_LONG], "near": [X_POS], "far": [X_NEG_LONG]}
    edges = edge_scores(fragments, affs, [X_POS, X_NEG_LONG], groups)
    assert edges.scores["both"][0] == pytest.approx(0.3, abs=1e-12)
    assert edges.scores["near"][0] == pytest.approx(0.2, abs=1e-12)
    assert edges.scores["far"][0] == pytest.approx(0.6, abs=1e-12)


def test_unseen_group_is_nan_not_zero():
    fragments = two_columns(3)
    affs = np.full((2, 1, 3, 2), 0.8)
    edges = edge_scores(fragments, affs, [X_POS, (1, 0, 0)], {"x": [X_POS], "z": [(1, 0, 0)]})
    assert len(edges) == 1
    assert edges.scores["x"][0] == pytest.approx(0.8)
    assert np.isnan(edges.scores["z"][0])


def test_background_never_makes_an_edge():
    fragments = np.array([[[1, 0, 2, 2, 0]]], dtype=np.uint64)
    affs = np.full((1, 1, 1, 5), 0.9)
    assert len(edge_scores(fragments, affs, [X_POS], {"x": [X_POS]})) == 0
    # A long-range offset jumps over the background and does link 1 and 2.
    edges = edge_scores(fragments, affs, [(0, 0, 2)], {"x": [(0, 0, 2)]})
    assert (edges.u.tolist(), edges.v.tolist()) == ([1], [2])


def test_affinity_is_read_at_the_base_voxel():
    fragments = np.array([[[3, 8]]], dtype=np.uint64)
    affs = np.array([[[[0.25, 0.75]]]])
    edges = edge_scores(fragments, affs, [X_POS], {"x": [X_POS]})
    assert edges.scores["x"].tolist() == [0.25]
    edges = edge_scores(fragments, affs, [(0, 0, -1)], {"x": [(0, 0, -1)]})
    assert edges.scores["x"].tolist() == [0.75]


def test_owned_ids_keeps_edges_of_the_lower_id_inclusive():
    fragments = np.array([[[1, 2, 3, 1]]], dtype=np.uint64)
    affs = np.full((2, 1, 1, 4), 0.5)
    nhood = [X_POS, (0, 0, 2)]  # edges (1,2), (2,3), (1,3), (2,1)
    everything = edge_scores(fragments, affs, nhood, {"x": nhood})
    assert list(zip(everything.u.tolist(), everything.v.tolist(), strict=True)) == [
        (1, 2),
        (1, 3),
        (2, 3),
    ]
    owned = edge_scores(fragments, affs, nhood, {"x": nhood}, owned_ids=(2, 2))
    assert (owned.u.tolist(), owned.v.tolist()) == ([2], [3])
    owned = edge_scores(fragments, affs, nhood, {"x": nhood}, owned_ids=(1, 1))
    assert (owned.u.tolist(), owned.v.tolist()) == ([1, 1], [2, 3])


def test_ids_near_2_63_are_exact():
    a, b, c = 2**63 + 2**40 + 1, 2**63 + 2**40 + 2, 2**32 + 7
    fragments = np.array([[[a, b, c]]], dtype=np.uint64)
    affs = np.full((1, 1, 1, 3), 0.5)
    edges = edge_scores(fragments, affs, [X_POS], {"x": [X_POS]})
    assert edges.u.tolist() == [c, a] and edges.v.tolist() == [b, b]


def test_offset_outside_neighborhood_names_group_and_offset():
    with pytest.raises(ValueError, match=r"score_groups\['z'\]: offset \(1, 0, 0\)"):
        edge_scores(two_columns(2), np.zeros((1, 1, 2, 2)), [X_POS], {"z": [(1, 0, 0)]})


@pytest.mark.parametrize("seed", range(4))
def test_matches_per_voxel_reference(seed):
    rng = np.random.default_rng(seed)
    fragments = rng.integers(0, 5, (4, 5, 6)).astype(np.uint64) + np.uint64(2**62)
    fragments[rng.random(fragments.shape) < 0.2] = 0
    nhood = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, -2, 0), (2, 0, 3)]
    groups = {"direct": nhood[:3], "long": nhood[3:], "y": [(0, 1, 0), (0, -2, 0)]}
    affs = rng.integers(0, 256, (5, 4, 5, 6)).astype(np.uint8)
    sums: dict = {}
    for c, offset in enumerate(nhood):
        for i in itertools.product(*(range(s) for s in fragments.shape)):
            j = tuple(p + o for p, o in zip(i, offset, strict=True))
            if not all(0 <= x < s for x, s in zip(j, fragments.shape, strict=True)):
                continue
            f, g = int(fragments[i]), int(fragments[j])
            if f == 0 or g == 0 or f == g:
                continue
            for name, group in groups.items():
                if offset in group:
                    entry = sums.setdefault((min(f, g), max(f, g)), {}).setdefault(name, [])
                    entry.append(affs[(c, *i)] / 255)
    edges = edge_scores(fragments, affs, nhood, groups)
    keys = list(zip(edges.u.tolist(), edges.v.tolist(), strict=True))
    assert keys == sorted(sums)
    for k, key in enumerate(keys):
        for name in groups:
            if name in sums[key]:
                assert edges.scores[name][k] == pytest.approx(np.mean(sums[key][name]))
            else:
                assert np.isnan(edges.scores[name][k])
