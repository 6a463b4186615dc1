import numpy as np
import pytest

from volara_assets.ops import evaluate, tutorial_accuracy


def test_identical_up_to_relabelling_is_perfect():
    gt = np.array([[1, 1, 2], [2, 3, 3]])
    seg = np.array([[7, 7, 2**40], [2**40, 1, 1]], dtype=np.uint64)
    scores = evaluate(seg, gt)
    assert scores["voi_split"] == 0 and scores["voi_merge"] == 0 and scores["voi"] == 0
    assert scores["are"] == pytest.approx(0.0, abs=1e-12)
    assert scores["n_segments"] == 3 and scores["n_labels"] == 3


def test_simple_split():
    # One true object of 4 voxels cut in half: H(S|G) = 1 bit, H(G|S) = 0.
    # Rand: sum n_ij^2 = 8, segments 2^2 + 2^2 = 8, labels 4^2 = 16 ->
    # precision 1, recall 1/2, F = 2/3, ARE = 1/3.
    gt = np.array([1, 1, 1, 1, 0, 0])
    seg = np.array([1, 1, 2, 2, 1, 3])  # the ignored background would merge/split more
    scores = evaluate(seg, gt)
    assert scores["voi_split"] == pytest.approx(1.0)
    assert scores["voi_merge"] == pytest.approx(0.0)
    assert scores["voi"] == pytest.approx(1.0)
    assert scores["are"] == pytest.approx(1 / 3)
    assert scores["n_segments"] == 2 and scores["n_labels"] == 1


def test_simple_merge():
    gt = np.array([1, 1, 2, 2])
    seg = np.array([5, 5, 5, 5])
    scores = evaluate(seg, gt)
    assert scores["voi_split"] == pytest.approx(0.0)
    assert scores["voi_merge"] == pytest.approx(1.0)
    assert scores["are"] == pytest.approx(1 / 3)


def test_unequal_split_in_bits():
    gt = np.array([1, 1, 1, 1])
    seg = np.array([1, 1, 1, 2])
    expected = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))  # 0.811 bits
    assert evaluate(seg, gt)["voi_split"] == pytest.approx(expected)
    # Rand: sum n_ij^2 = 10, segments 9 + 1, labels 16 -> P = 1, R = 10/16.
    assert evaluate(seg, gt)["are"] == pytest.approx(1 - 2 * (10 / 16) / (1 + 10 / 16))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="segmentation"):
        evaluate(np.zeros(3), np.zeros(4))


def literal_tutorial_loop(segments, labels):
    s_to_l, l_to_s = {}, {}
    false_merges = false_splits = 0
    for s, lab in zip(segments.flat, labels.flat, strict=True):
        if s not in s_to_l:
            s_to_l[s] = lab
        elif s_to_l[s] != lab:
            false_merges += 1
        if lab not in l_to_s:
            l_to_s[lab] = s
        elif l_to_s[lab] != s:
            false_splits += 1
    return false_merges, false_splits, (len(s_to_l) - (false_merges + false_splits)) / len(s_to_l)


@pytest.mark.parametrize("seed", range(6))
def test_tutorial_accuracy_equals_the_per_voxel_loop(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (9, 11))
    noise = rng.integers(0, 6, labels.shape)
    segments = np.where(rng.random(labels.shape) < 0.8, labels * 3, noise)
    assert tutorial_accuracy(segments, labels) == literal_tutorial_loop(segments, labels)


def test_tutorial_accuracy_perfect():
    labels = np.array([[0, 1, 1], [2, 2, 0]])
    assert tutorial_accuracy(labels + 10 * (labels > 0), labels) == (0, 0, 1.0)
