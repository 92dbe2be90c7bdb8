"""Agglomeration of supervoxels into neurons on the RAG, as waterz does it.

Regions merge greedily, lowest score first, while the score stays at or below a threshold. The
score of two touching regions is one minus a quantile (the median by default) of the affinities
on all faces between them; when regions merge, the histograms of their edges to a common
neighbour add up and that neighbour's score is recomputed. One run serves every threshold: the
membership is recorded each time the next threshold is passed.

Proofreaders' decisions constrain it: ``merge_pairs`` (confirmed edges) are merged first, and
``split_pairs`` (separated edges) are never merged, not even through a third region.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from segmentation.errors import InputError
from segmentation.rag import BINS, Rag


@dataclass
class Agglomeration:
    thresholds: list[float]
    memberships: list[np.ndarray]  # per threshold: segment id of each RAG node (its first
    # member's id)


def save_segments(path: Path, ids: np.ndarray, result: Agglomeration,
                  default_threshold: float) -> None:
    """Write an agglomeration as ``segments.npz`` (atomically: a reader never sees half)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, ids=ids, thresholds=np.array(result.thresholds, np.float64),
             membership=np.stack(result.memberships) if result.memberships else
             np.zeros((0, len(ids)), np.uint64),
             default_threshold=np.float64(default_threshold))
    tmp.replace(path)


@dataclass
class Segments:
    """The saved agglomeration: which segment every supervoxel belongs to, per threshold."""

    ids: np.ndarray
    thresholds: np.ndarray
    membership: np.ndarray  # (T, N)
    default_threshold: float

    @classmethod
    def load(cls, path: Path) -> Optional["Segments"]:
        if not Path(path).is_file():
            return None
        with np.load(path) as data:
            return cls(data["ids"], data["thresholds"], data["membership"],
                       float(data["default_threshold"]))

    def at(self, threshold: Optional[float] = None) -> np.ndarray:
        threshold = self.default_threshold if threshold is None else threshold
        return self.membership[int(np.argmin(np.abs(self.thresholds - threshold)))]


def check_thresholds(thresholds: Sequence[float]) -> list[float]:
    values = [float(t) for t in thresholds]
    if not values:
        raise InputError("give at least one agglomeration threshold")
    for t in values:
        if not 0.0 <= t <= 1.0 or np.isnan(t):
            raise InputError(f"agglomeration thresholds must lie in [0, 1], got {t}")
    return sorted(values)


class QuantileScore:
    """waterz's score: one minus a quantile of the contact's affinities."""

    # which edges a merge rescores: "grown" (those whose histogram grew: a score of the
    # contact alone), "moved" (every edge of the region that joined another) or "all" (every
    # edge of the merged region)
    rescores = "grown"

    def __init__(self, quantile: float = 0.5):
        if not 0.0 <= quantile <= 1.0:
            raise InputError(f"the agglomeration quantile must lie in [0, 1], got {quantile}")
        self.quantile = quantile

    def start(self, rag: Rag, hist: np.ndarray) -> None:
        """Called once before the first score, with the dense edge histograms."""

    def scores(self, hist: np.ndarray, edges: np.ndarray, a: np.ndarray,
               b: np.ndarray) -> np.ndarray:
        """Scores of ``edges`` (rows of ``hist``) between regions ``a`` and ``b``."""
        return initial_scores(hist[edges], self.quantile)

    def merged(self, keep: int, gone: int, edge: int, hist: np.ndarray) -> None:
        """Region ``gone`` joined ``keep`` across ``edge`` (before histograms are added)."""


def agglomerate(rag: Rag, thresholds: Sequence[float], quantile: float = 0.5,
                merge_pairs: Iterable[tuple[int, int]] = (),
                split_pairs: Iterable[tuple[int, int]] = (),
                score: Optional[QuantileScore] = None) -> Agglomeration:
    """Merge lowest score first while it stays at or below each threshold in turn; ``score``
    (default: the ``quantile`` of affinities) rescores the edges a merge changes (its
    ``rescores``)."""
    thresholds = check_thresholds(thresholds)
    scorer = score if score is not None else QuantileScore(quantile)
    n = rag.num_nodes
    parent = list(range(n))
    a_index, b_index = rag.edge_index()
    hist = dense_histograms(rag)
    scorer.start(rag, hist)
    neighbours: list[dict[int, int]] = [dict() for _ in range(n)]
    for e, (a, b) in enumerate(zip(a_index.tolist(), b_index.tolist())):
        neighbours[a][b] = e
        neighbours[b][a] = e
    forbidden: list[set[int]] = [set() for _ in range(n)]
    for a, b in split_pairs:
        ia, ib = (int(i) for i in rag.node_index([a, b]))
        if ia >= 0 and ib >= 0:
            forbidden[ia].add(ib)
            forbidden[ib].add(ia)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    version = [0] * len(hist)
    queue = list(zip(scorer.scores(hist, np.arange(len(hist)), a_index, b_index).tolist(),
                     range(len(hist)), version, a_index.tolist(), b_index.tolist()))
    heapq.heapify(queue)

    def merge(keep: int, gone: int) -> None:
        # the side with more neighbours stays (fewer contacts move), the lower node on a tie:
        # which side a queue entry names first must not matter (a moved contact's entry
        # keeps the names it was queued with)
        if (len(neighbours[keep]), -keep) < (len(neighbours[gone]), -gone):
            keep, gone = gone, keep
        parent[gone] = keep
        mine, theirs = neighbours[keep], neighbours[gone]
        scorer.merged(keep, gone, mine.get(gone, -1), hist)
        mine.pop(gone, None)
        theirs.pop(keep, None)
        into, added, grown = [], [], []  # contacts with a common neighbour: histograms add
        for other, e in theirs.items():
            across = neighbours[other]
            del across[gone]
            existing = mine.get(other)
            if existing is None:
                mine[other] = e
                across[keep] = e
            else:
                into.append(existing)
                added.append(e)
                grown.append(other)
                version[e] += 1  # retired
        if into:
            hist[into] += hist[added]
        neighbours[gone] = {}
        if scorer.rescores == "grown":  # a moved edge keeps its histogram, score and entry
            others = grown
        elif scorer.rescores == "all":
            others = list(mine)
        else:  # "moved": every edge that came from the joined region
            others = list(theirs)
        if others:
            targets = [mine[o] for o in others]
            for t in targets:
                version[t] += 1
            rescored = scorer.scores(hist, np.array(targets), np.full(len(others), keep),
                                     np.array(others))
            for t, other, value in zip(targets, others, rescored.tolist()):
                heapq.heappush(queue, (value, t, version[t], keep, other))
        for other in forbidden[gone]:
            forbidden[other].discard(gone)
            forbidden[other].add(keep)
        forbidden[keep] |= forbidden[gone]
        forbidden[gone] = set()

    for a, b in merge_pairs:
        ia, ib = (int(i) for i in rag.node_index([a, b]))
        if ia >= 0 and ib >= 0:
            ra, rb = find(ia), find(ib)
            if ra != rb and rb not in forbidden[ra]:
                merge(ra, rb)

    memberships = []
    for threshold in thresholds:
        while queue and queue[0][0] <= threshold + 1e-12:
            _, e, stamp, a, b = heapq.heappop(queue)
            if stamp != version[e]:
                continue
            ra, rb = find(a), find(b)
            if ra == rb or rb in forbidden[ra]:
                continue
            merge(ra, rb)
        roots = np.array([find(i) for i in range(n)], np.int64)
        # named after its first node, whichever side of each merge was kept
        _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
        memberships.append(rag.ids[first[inverse]] if n else np.zeros(0, np.uint64))
    return Agglomeration(thresholds, memberships)


def initial_scores(hist: np.ndarray, quantile: float) -> np.ndarray:
    """Score of every edge at once: one minus the centre of its quantile bin."""
    if len(hist) == 0:
        return np.zeros(0)
    cumulative = hist.cumsum(axis=1)
    index = (cumulative < quantile * cumulative[:, -1:] - 1e-9).sum(axis=1)
    return 1.0 - (index + 0.5) / BINS


def dense_histograms(rag: Rag) -> np.ndarray:
    """(E, BINS) face counts per edge: merging regions adds rows."""
    hist = np.zeros((rag.num_edges, BINS), np.int32)
    hist[rag.hist_edge, rag.hist_bin] = rag.hist_count
    return hist
