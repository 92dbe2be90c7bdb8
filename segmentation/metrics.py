"""Segmentation metrics against ground truth: VOI split/merge (bits) and adapted Rand error.

Ground-truth id 0 is ignored: voxels labelled 0 in the ground truth do not count. The numbers
equal ``skimage.metrics.variation_of_information(gt, seg, ignore_labels=[0])`` and
``adapted_rand_error(gt, seg, ignore_labels=[0])``; the tests check that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import fastremap
import numpy as np

from segmentation.membership import lookup, rows_of


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


@dataclass
class Contingency:
    """Voxel counts of every (ground truth, segment) pair, ground-truth 0 left out.

    Tables add across blocks, and relabelling segments (an agglomeration, a best merge) only
    regroups the table, so one pass over the volumes serves every threshold.
    """

    gt: np.ndarray  # uint64 ids
    seg: np.ndarray  # uint64 ids
    count: np.ndarray  # int64

    @classmethod
    def of(cls, gt: np.ndarray, seg: np.ndarray) -> "Contingency":
        if gt.shape != seg.shape:
            raise ValueError(f"ground truth {gt.shape} and segmentation {seg.shape} differ "
                             f"in shape")
        keep = gt.ravel() != 0
        return cls(*_pair_counts(gt.ravel()[keep], seg.ravel()[keep]))

    @classmethod
    def concatenate(cls, parts: list["Contingency"]) -> "Contingency":
        merged = cls(np.concatenate([p.gt for p in parts]), np.concatenate([p.seg for p in parts]),
                     np.concatenate([p.count for p in parts]))
        return merged.regrouped(merged.seg)

    def regrouped(self, seg: np.ndarray) -> "Contingency":
        """The table with each row's segment replaced by ``seg`` (aligned with the rows)."""
        if len(self.gt) == 0:
            return self
        return Contingency(*_pair_counts(self.gt, np.asarray(seg, np.uint64), self.count))

    def relabelled(self, ids: np.ndarray, new_ids: np.ndarray) -> "Contingency":
        """Segments mapped through a table (``ids`` sorted); ids not in it stay as they are."""
        if len(ids) == 0:
            return self.regrouped(self.seg)
        row = rows_of(ids, self.seg)
        return self.regrouped(np.where(row >= 0, np.asarray(new_ids)[np.maximum(row, 0)],
                                       self.seg))

    def owners(self) -> tuple[np.ndarray, np.ndarray]:
        """Each segment (ascending) and the ground-truth id it overlaps most."""
        order = np.lexsort((-self.count, self.seg))
        first = np.ones(len(order), bool)
        first[1:] = self.seg[order][1:] != self.seg[order][:-1]
        winners = order[first]
        return self.seg[winners], self.gt[winners]

    def best_merge(self) -> "Contingency":
        """Each segment given to the ground-truth id it overlaps most."""
        return self.relabelled(*self.owners())

    def scores(self) -> Scores:
        _, gi = np.unique(self.gt, return_inverse=True)
        _, si = np.unique(self.seg, return_inverse=True)
        return _scores(gi.ravel(), si.ravel(), self.count.astype(np.float64))


def _pair_counts(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (a, b) pairs and how often (or how heavily) each occurs."""
    if len(a) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64)
    a_index, a_ids = _compact(a)
    b_index, b_ids = _compact(b)
    key = a_index * len(b_ids) + b_index
    if weights is None:  # volumes: fastremap's hashing beats sorting by far
        keys, counts = fastremap.unique(key, return_counts=True)
    else:
        keys, inverse = np.unique(key, return_inverse=True)
        counts = np.bincount(inverse.ravel(), weights=weights, minlength=len(keys))
    return (a_ids[keys // len(b_ids)], b_ids[keys % len(b_ids)], counts.astype(np.int64))


def _compact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each value in the sorted distinct values as int64, the distinct values)."""
    renumbered, mapping = fastremap.renumber(values, preserve_zero=False, in_place=False)
    ids = np.zeros(len(mapping), np.uint64)
    ids[np.fromiter(mapping.values(), np.int64) - 1] = np.fromiter(mapping.keys(), np.uint64)
    order = np.argsort(ids)
    rank = np.empty(len(ids), np.int64)
    rank[order] = np.arange(len(ids))
    return rank[renumbered.astype(np.int64) - 1], ids[order]


def scores(gt: np.ndarray, seg: np.ndarray) -> Scores:
    return Contingency.of(gt, seg).scores()


def _scores(gi: np.ndarray, si: np.ndarray, n: np.ndarray) -> Scores:
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
    ids, owners = Contingency.of(gt, supervoxels).owners()
    return lookup(ids, owners, supervoxels)
