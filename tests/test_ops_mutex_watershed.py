"""Our mutex watershed: mwatershed's partition without ties, a fixed tie rule with them."""

import mwatershed as mws
import numpy as np
import pytest

from volara_assets.ops import extract_fragments
from volara_assets.ops.mutex_watershed import mutex_watershed

DIRECT = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
# Long range, negative components, mixed signs: everything extract_fragments may pass.
MIXED = [*DIRECT, [0, -2, 0], [3, 0, -1], [-1, -1, 2], [0, 0, 4]]


def assert_partition_of_mwatershed(ours: np.ndarray, ref: np.ndarray) -> None:
    """``ours`` (0 = background) partitions the voxels exactly as mwatershed's ``ref``.

    mwatershed names a cluster by its union-find root, so a cluster whose root
    is voxel 0 comes out as 0 like the background; ours gives it an id. Such
    voxels must form one cluster of ours, the one holding voxel 0.
    """
    ours = ours.reshape(-1).astype(np.int64)
    ref = ref.reshape(-1).astype(np.int64)
    assert (ref[ours == 0] == 0).all(), "our background must be mwatershed's"
    rooted_at_zero = (ref == 0) & (ours != 0)
    if rooted_at_zero.any():
        assert set(ours[rooted_at_zero].tolist()) == {int(ours[0])}
        ref = np.where(rooted_at_zero, -1, ref)
    pairs = set(zip(ours.tolist(), ref.tolist(), strict=True))
    assert len(pairs) == len(set(ours.tolist())) == len(set(ref.tolist()))


def distinct_case(rng: np.random.Generator, n_offsets: int) -> tuple[np.ndarray, np.ndarray]:
    shape = tuple(int(s) for s in rng.integers(4, 10, 3))
    affs = rng.random((n_offsets, *shape))
    bias = rng.uniform(-0.8, -0.2, n_offsets)
    return affs, bias


@pytest.mark.parametrize("case", range(12))
def test_same_partition_as_mwatershed_without_ties(case):
    rng = np.random.default_rng(case)
    offsets = MIXED[: 3 + case % 5]
    affs, bias = distinct_case(rng, len(offsets))
    strides = None
    if case % 3 == 1:
        strides = rng.integers(1, 4, (len(offsets), 3)).tolist()
    ours = mutex_watershed(affs, offsets, bias, strides=strides)
    ref = mws.agglom(affs + bias[:, None, None, None], offsets=offsets, strides=strides)
    assert ours.dtype == np.uint64 and ours.shape == affs.shape[1:]
    assert_partition_of_mwatershed(ours, np.asarray(ref))


@pytest.mark.parametrize("ndim", [1, 2])
def test_fewer_spatial_axes(ndim):
    rng = np.random.default_rng(ndim)
    shape = (40,) if ndim == 1 else (9, 11)
    offsets = [[1], [-3]] if ndim == 1 else [[1, 0], [0, 1], [-2, 3]]
    affs = rng.random((len(offsets), *shape))
    bias = np.full(len(offsets), -0.5)
    ours = mutex_watershed(affs, offsets, bias)
    ref = mws.agglom(affs + bias.reshape(-1, *(1,) * ndim), offsets=offsets)
    assert_partition_of_mwatershed(ours, np.asarray(ref))


@pytest.mark.parametrize("case", range(4))
def test_extract_fragments_engines_agree_without_ties(case):
    """Mask, smoothing and both filters around the kernel: the same fragments either way."""
    rng = np.random.default_rng(100 + case)
    affs = rng.random((5, 8, 9, 10))
    mask = rng.random((8, 9, 10)) > 0.2
    kwargs = dict(
        mask=mask,
        sigma=(0.5, 1.0, 1.0) if case % 2 else None,
        filter_fragments=0.45 if case >= 2 else 0.0,
        remove_debris=3 if case >= 1 else 0,
        strides=[[1, 1, 1]] * 3 + [[1, 2, 2], [2, 1, 1]],
    )
    nhood, bias = MIXED[:5], [-0.5, -0.5, -0.5, -0.7, -0.7]
    ours = extract_fragments(affs, nhood, bias, engine="numba", **kwargs)
    ref = extract_fragments(affs, nhood, bias, engine="mwatershed", **kwargs)
    assert ours.dtype == np.uint64
    assert_partition_of_mwatershed(ours, ref)


# -- ties: the documented rule -------------------------------------------------
# Bias -0.5: affinity 255 weighs +0.5 and affinity 0 weighs -0.5, a tie in |w|.


def test_tie_repulsive_before_attractive():
    # Voxels 0..3 on x; (0, 2) is repulsive (-0.5), (0, 1), (1, 2), (2, 3) attractive
    # (+0.5), (1, 3) weakly attractive. The mutex comes first, so 1 and 2 never meet.
    affs = np.zeros((2, 1, 1, 4), np.uint8)
    affs[0, 0, 0] = [255, 255, 255, 0]  # offset (0, 0, 1)
    affs[1, 0, 0] = [0, 128, 0, 0]  # offset (0, 0, 2)
    labels = mutex_watershed(affs, [[0, 0, 1], [0, 0, 2]], [-0.5, -0.5])
    # Clusters are 1 + their root; union by size keeps the first voxel's root on ties.
    np.testing.assert_array_equal(labels, [[[1, 1, 3, 3]]])


def test_tie_lower_raster_index_first():
    # Mutex (0, 2); (0, 1) and (1, 2) have the same weight: the edge at voxel 0 wins.
    affs = np.zeros((2, 1, 1, 3), np.uint8)
    affs[0, 0, 0] = [200, 200, 0]  # offset (0, 0, 1)
    affs[1, 0, 0] = [0, 0, 0]  # offset (0, 0, 2): repulsive
    labels = mutex_watershed(affs, [[0, 0, 1], [0, 0, 2]], [-0.5, -0.5])
    np.testing.assert_array_equal(labels, [[[1, 1, 3]]])


def test_tie_lower_offset_index_first():
    # Mutex (1, 2); (0, 2) on offset 0 and (0, 1) on offset 1 weigh the same: offset 0 wins.
    affs = np.zeros((2, 1, 1, 3), np.uint8)
    affs[0, 0, 0] = [200, 0, 0]  # offset (0, 0, 2): (0, 2)
    affs[1, 0, 0] = [200, 0, 0]  # offset (0, 0, 1): (0, 1), (1, 2) repulsive
    labels = mutex_watershed(affs, [[0, 0, 2], [0, 0, 1]], [-0.5, -0.5])
    np.testing.assert_array_equal(labels, [[[1, 2, 1]]])
    # Swapping the channels swaps the winner.
    swapped = mutex_watershed(affs[::-1], [[0, 0, 1], [0, 0, 2]], [-0.5, -0.5])
    np.testing.assert_array_equal(swapped, [[[1, 1, 3]]])


def test_uint8_and_float_orderings_are_the_same_rule():
    """Counting sort (uint8) and radix sort (float) visit tied edges alike."""
    rng = np.random.default_rng(7)
    affs = rng.choice(np.array([0, 40, 128, 200, 255], np.uint8), size=(4, 6, 12, 12))
    nhood = [*DIRECT, [0, -2, 1]]
    bias = [-0.5, -0.5, -0.5, -0.6]
    quantized = mutex_watershed(affs, nhood, bias)
    floats = mutex_watershed(affs.astype(np.float64) / 255 + np.reshape(bias, (-1, 1, 1, 1)), nhood)
    np.testing.assert_array_equal(quantized, floats)
    np.testing.assert_array_equal(quantized, mutex_watershed(affs, nhood, bias))


def test_background_and_singletons():
    # Voxel 0 has only a repulsive edge: background. Voxel 3's attractive edge to 2
    # is blocked by a mutex: still foreground, a cluster of its own.
    affs = np.zeros((2, 1, 1, 4), np.uint8)
    affs[0, 0, 0] = [0, 255, 200, 0]  # offset (0, 0, 1)
    affs[1, 0, 0] = [0, 0, 0, 0]  # offset (0, 0, 2): (1, 3) repulsive
    labels = mutex_watershed(affs, [[0, 0, 1], [0, 0, 2]], [-0.5, -0.5])
    np.testing.assert_array_equal(labels, [[[0, 2, 2, 4]]])


def test_offsets_longer_than_the_array_have_no_edges():
    affs = np.full((2, 2, 3, 3), 255, np.uint8)
    labels = mutex_watershed(affs, [[0, 0, 1], [5, 0, 0]], [-0.5, -0.5])
    np.testing.assert_array_equal(labels.reshape(-1), np.repeat([1, 4, 7, 10, 13, 16], 3))


def test_randomized_strides_are_seeded():
    rng = np.random.default_rng(3)
    affs = (rng.random((4, 6, 16, 16)) * 255).astype(np.uint8)
    nhood = [*DIRECT, [0, 0, 3]]
    strides = [[1, 1, 1]] * 3 + [[1, 2, 2]]
    bias = [-0.5, -0.5, -0.5, -0.5]
    a = mutex_watershed(affs, nhood, bias, strides=strides, randomized_strides=True, seed=1)
    b = mutex_watershed(affs, nhood, bias, strides=strides, randomized_strides=True, seed=1)
    c = mutex_watershed(affs, nhood, bias, strides=strides, randomized_strides=True, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_errors_name_the_argument():
    affs = np.zeros((3, 2, 2, 2))
    with pytest.raises(ValueError, match="offsets"):
        mutex_watershed(affs, DIRECT[:2], None)
    with pytest.raises(ValueError, match="bias"):
        mutex_watershed(affs, DIRECT, [0.0])
    with pytest.raises(ValueError, match="NaN"):
        mutex_watershed(np.full((3, 2, 2, 2), np.nan), DIRECT, None)
    with pytest.raises(ValueError, match="engine"):
        extract_fragments(affs + 0.9, DIRECT, [-0.5] * 3, engine="affogato")
