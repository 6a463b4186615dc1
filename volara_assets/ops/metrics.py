"""Segmentation quality against ground truth: VOI, adapted Rand error, tutorial accuracy."""

from __future__ import annotations

import numpy as np

from ._common import unique_pairs


def evaluate(segmentation: np.ndarray, ground_truth: np.ndarray) -> dict:
    """Variation of information and adapted Rand error, CREMI conventions.

    Voxels where ``ground_truth == 0`` are ignored; a segmentation id of 0 is
    an ordinary label there (so unsegmented foreground counts as one merged
    object). Entropies use log base 2, as CREMI does.

    Parameters
    ----------
    segmentation, ground_truth : (...) integer arrays of the same shape

    Returns
    -------
    dict
        ``voi_split`` = H(segmentation | ground_truth) (bits; grows when a true
        object is cut into several segments), ``voi_merge`` = H(ground_truth |
        segmentation), ``voi`` = their sum, ``are`` = 1 - F-score of Rand
        precision and recall (0 is perfect), ``n_segments`` = distinct non-zero
        segment ids and ``n_labels`` = distinct ground-truth labels among the
        evaluated voxels. With no ground-truth voxel the scores are NaN.
    """
    segmentation = np.asarray(segmentation)
    ground_truth = np.asarray(ground_truth)
    if segmentation.shape != ground_truth.shape:
        raise ValueError(
            f"segmentation: shape {segmentation.shape} differs from ground_truth "
            f"shape {ground_truth.shape}"
        )
    inside = ground_truth != 0
    seg = segmentation[inside]
    gt = ground_truth[inside]
    n = seg.size
    if n == 0:
        nan = float("nan")
        return {
            "voi_split": nan,
            "voi_merge": nan,
            "voi": nan,
            "are": nan,
            "n_segments": 0,
            "n_labels": 0,
        }
    # Sparse contingency table: one row per (segment, label) pair that occurs.
    seg_ids, gt_ids, _, n_ij = unique_pairs(seg, gt)
    _, seg_inverse = np.unique(seg_ids, return_inverse=True)
    _, gt_inverse = np.unique(gt_ids, return_inverse=True)
    n_seg = np.bincount(seg_inverse, weights=n_ij)  # segment sizes
    n_gt = np.bincount(gt_inverse, weights=n_ij)  # label sizes

    p_ij = n_ij / n
    # H(S|G) = -sum p_ij log(p_ij / p_j); H(G|S) = -sum p_ij log(p_ij / p_i)
    voi_split = float(-np.sum(p_ij * np.log2(n_ij / n_gt[gt_inverse])))
    voi_merge = float(-np.sum(p_ij * np.log2(n_ij / n_seg[seg_inverse])))
    # Avoid -0.0 for perfect results.
    voi_split = abs(voi_split) if voi_split == 0 else voi_split
    voi_merge = abs(voi_merge) if voi_merge == 0 else voi_merge

    # Rand precision/recall on pairs of voxels (with self pairs, as CREMI counts).
    sum_ij = float(np.sum(n_ij.astype(np.float64) ** 2))
    precision = sum_ij / float(np.sum(n_seg**2))
    recall = sum_ij / float(np.sum(n_gt**2))
    are = 1.0 - 2.0 * precision * recall / (precision + recall)

    return {
        "voi_split": voi_split,
        "voi_merge": voi_merge,
        "voi": voi_split + voi_merge,
        "are": float(are),
        "n_segments": int(np.count_nonzero(np.unique(seg_ids))),
        "n_labels": len(n_gt),
    }


def tutorial_accuracy(segments_2d: np.ndarray, labels_2d: np.ndarray) -> tuple[int, int, float]:
    """The volara tutorial's accuracy check, vectorised.

    Walking the voxels in C order, each segment is mapped to the label of its
    first voxel and each label to the segment of its first voxel; every later
    voxel disagreeing with its segment's mapping is a false merge, every voxel
    disagreeing with its label's mapping a false split. Background is not
    excluded. ``accuracy = (n_segments - (false_merges + false_splits)) /
    n_segments`` with ``n_segments`` counting 0 if present; it can be negative,
    since mistakes are counted per voxel.

    Parameters
    ----------
    segments_2d, labels_2d : (...) integer arrays of the same shape
        (the tutorial passes one z-section).

    Returns
    -------
    (false_merges, false_splits, accuracy) : (int, int, float)
    """
    segments = np.asarray(segments_2d).reshape(-1)
    labels = np.asarray(labels_2d).reshape(-1)
    if segments.shape != labels.shape:
        raise ValueError(
            f"segments_2d: {segments.size} voxels differ from labels_2d's {labels.size}"
        )
    if segments.size == 0:
        raise ValueError("segments_2d: empty array, accuracy is undefined")
    # np.unique's return_index gives each value's first occurrence in flat order,
    # which is exactly what the first-seen dictionaries record.
    seg_ids, seg_first, seg_inverse = np.unique(segments, return_index=True, return_inverse=True)
    _, lab_first, lab_inverse = np.unique(labels, return_index=True, return_inverse=True)
    false_merges = int(np.count_nonzero(labels != labels[seg_first][seg_inverse.reshape(-1)]))
    false_splits = int(np.count_nonzero(segments != segments[lab_first][lab_inverse.reshape(-1)]))
    n = len(seg_ids)
    return false_merges, false_splits, (n - (false_merges + false_splits)) / n
