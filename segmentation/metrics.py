"""Segmentation metrics against ground truth: VOI split/merge (bits) and adapted Rand error.

Ground-truth id 0 is ignored: voxels labelled 0 in the ground truth do not count. The numbers
equal ``skimage.metrics.variation_of_information(gt, seg, ignore_labels=[0])`` and
``adapted_rand_error(gt, seg, ignore_labels=[0])``; the tests check that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import fastremap
import numpy as np


@dataclass(frozen=True)
class Scores:
    voi_split: float  # H(seg | gt): a neuron cut into pieces
    voi_merge: float  # H(gt | seg): neurons glued together
    arand: float  # adapted Rand error, 1 - F-score of the Rand precision and recall
    rand_precision: float
    rand_recall: float

    @property
    def voi(self) -> float:
        return self.voi_split + self.voi_merge

    def as_dict(self) -> dict:
        return {**asdict(self), "voi": self.voi}


def contingency(gt: np.ndarray, seg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt index, seg index, voxel count) of every overlapping pair, gt 0 left out."""
    if gt.shape != seg.shape:
        raise ValueError(f"ground truth {gt.shape} and segmentation {seg.shape} differ in shape")
    keep = gt.ravel() != 0
    g, _ = fastremap.renumber(gt.ravel()[keep], in_place=False, preserve_zero=False)
    s, _ = fastremap.renumber(seg.ravel()[keep], in_place=False, preserve_zero=False)
    g = g.astype(np.int64) - 1
    s = s.astype(np.int64) - 1
    pairs, counts = np.unique(g * (int(s.max(initial=0)) + 1) + s, return_counts=True)
    width = int(s.max(initial=0)) + 1
    return pairs // width, pairs % width, counts.astype(np.float64)


def scores(gt: np.ndarray, seg: np.ndarray) -> Scores:
    gi, si, n = contingency(gt, seg)
    total = n.sum()
    if total == 0:
        return Scores(0.0, 0.0, 0.0, 1.0, 1.0)
    p = n / total
    p_gt = np.bincount(gi, weights=p)
    p_seg = np.bincount(si, weights=p)
    h_joint = -np.sum(p * np.log2(p))
    h_gt = -np.sum(_nonzero(p_gt) * np.log2(_nonzero(p_gt)))
    h_seg = -np.sum(_nonzero(p_seg) * np.log2(_nonzero(p_seg)))
    split, merge = h_joint - h_gt, h_joint - h_seg
    # Adapted Rand: pairs of voxels together in both, over pairs together in each.
    sum_joint = np.sum(n * n) - total
    sum_gt = np.sum(np.bincount(gi, weights=n) ** 2) - total
    sum_seg = np.sum(np.bincount(si, weights=n) ** 2) - total
    # named as skimage.metrics.adapted_rand_error names them
    precision = sum_joint / sum_gt if sum_gt else 1.0
    recall = sum_joint / sum_seg if sum_seg else 1.0
    arand = 1.0 - 2.0 * precision * recall / (precision + recall) if precision + recall else 1.0
    return Scores(max(split, 0.0), max(merge, 0.0), arand, precision, recall)


def _nonzero(p: np.ndarray) -> np.ndarray:
    return p[p > 0]


def best_merge(gt: np.ndarray, supervoxels: np.ndarray) -> np.ndarray:
    """Each supervoxel given to the ground-truth neuron it overlaps most: the best that merging
    alone can reach, and so the ceiling that a supervoxel set puts on proofreading."""
    ids, inverse = np.unique(supervoxels.ravel(), return_inverse=True)
    g, gt_ids = fastremap.renumber(gt.ravel(), in_place=False, preserve_zero=False)
    width = int(g.max(initial=0)) + 1
    pairs, counts = np.unique(inverse.astype(np.int64) * width + g, return_counts=True)
    sv_index, gt_index = pairs // width, pairs % width
    counts = np.where(gt_index == 0, 0, counts)  # unlabelled voxels vote for nobody
    order = np.lexsort((-counts, sv_index))
    first = np.ones(len(order), bool)
    first[1:] = sv_index[order][1:] != sv_index[order][:-1]
    winner = np.zeros(len(ids), np.int64)
    winner[sv_index[order][first]] = gt_index[order][first]
    back = {v: k for k, v in gt_ids.items()}
    lookup = np.array([back.get(int(i), 0) for i in range(width)], dtype=np.uint64)
    result = lookup[winner][inverse].reshape(supervoxels.shape)
    result[supervoxels == 0] = 0
    return result
