"""The proofreading session: a live RAG, the membership, and the operations that change it.

The RAG is held as CSR arrays (neighbours of a supervoxel are one slice), the membership as a
segment id per supervoxel plus the member set of every segment. Every operation touches only the
supervoxels of the segments it edits (and, for a prompt cut, their immediate neighbours): nothing
is recomputed globally. Each operation is written to the edit log before it is applied and
acknowledged; replaying the log on start-up gives back the identical membership.

Points are z, y, x voxels; ``locate`` turns one into the supervoxel there (0: background).
Segments are named by one of their supervoxels.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from segmentation.editlog import EditLog, Entry
from segmentation.errors import PromptcutError
from segmentation.graphcut import (HARD, CutProblem, affinity_capacity, connect_terminals,
                                   keep_connected, solve)
from segmentation.rag import Rag

Point = Sequence[int]


class EditError(PromptcutError):
    """An edit that cannot be done as asked; the state and the log are left unchanged."""


@dataclass
class OperationResult:
    operation: int
    kind: str
    user: str
    segments: list[int]  # segments that exist after the edit and changed
    removed: list[int]  # segment ids that no longer exist
    message: str
    milliseconds: float
    supervoxels_changed: int
    delta: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 3), np.uint64))


@dataclass
class PromptWeights:
    """How prompts become unary terms of the prompt cut."""

    # each in units of a supervoxel's total bond (sum of its edge capacities) to the region
    keep: float = 0.6  # preference to stay where it is
    distance_scale: float = 30.0  # voxels: how far a prompt's pull reaches
    pull: float = 0.5  # pull of the nearest prompt, at the prompt
    mask: float = 2.0  # weight of a mask probability
    mask_edge: float = 0.9  # how much a mask boundary lowers the cost of cutting an edge


@dataclass
class _Plan:
    """What an operation will do, worked out before anything is written."""

    kind: str
    inputs: dict
    delta: np.ndarray  # (k, 3): supervoxel, old segment, new segment
    segments: list[int]
    removed: list[int]
    message: str
    decisions: dict = field(default_factory=dict)


class ProofreadingSession:
    def __init__(self, rag: Rag, segments: np.ndarray, log: EditLog,
                 locate: Callable[[Point], int], weights: Optional[PromptWeights] = None):
        self.rag = rag
        self.log = log
        self.locate = locate
        self.weights = weights or PromptWeights()
        n = rag.num_nodes
        a, b = rag.edge_index()
        order = np.argsort(np.concatenate([a, b]), kind="stable")
        self._neighbour = np.concatenate([b, a])[order].astype(np.int64)
        self._edge_of = np.concatenate([np.arange(len(a))] * 2)[order].astype(np.int64)
        self._indptr = np.concatenate([[0], np.cumsum(np.bincount(np.concatenate([a, b]),
                                                                  minlength=n))])
        self._affinity = rag.quantiles[:, 1].astype(np.float64)  # median, as the cut sees it
        self._capacity = affinity_capacity(self._affinity, rag.area)
        self.segment = np.asarray(segments, np.uint64).copy()
        self.members: dict[int, set[int]] = {}
        for index, seg in enumerate(self.segment.tolist()):
            self.members.setdefault(seg, set()).add(index)
        self._slot = np.full(n, -1, np.int64)
        self._lock = threading.Lock()
        self._busy: dict[int, str] = {}
        self._entries: dict[int, Entry] = {}
        self._undo: dict[str, list[int]] = {}
        self._redo: dict[str, list[int]] = {}
        self._last_change: dict[int, int] = {}  # segment -> last operation that changed it
        self._undone_by: dict[int, int] = {}  # operation -> the undo that reversed it
        self.confirmed: dict[int, tuple[int, int]] = {}  # operation -> supervoxel pair
        self.separated: dict[int, list[tuple[int, int]]] = {}
        for entry in log.entries():
            self._replay(entry)

    # -- queries --------------------------------------------------------------------------------
    def node(self, supervoxel: int) -> int:
        index = int(self.rag.node_index([supervoxel])[0])
        if index < 0:
            raise EditError(f"supervoxel {supervoxel} is not in the graph")
        return index

    def segment_of(self, supervoxel: int) -> int:
        return int(self.segment[self.node(supervoxel)])

    def members_of(self, segment: int) -> np.ndarray:
        """Supervoxel ids of a segment."""
        nodes = self.members.get(int(segment))
        if not nodes:
            raise EditError(f"there is no segment {segment}")
        return self.rag.ids[np.fromiter(nodes, np.int64, len(nodes))]

    def supervoxel_at(self, point: Point, what: str = "point") -> int:
        supervoxel = int(self.locate(point))
        if supervoxel == 0:
            raise EditError(f"the {what} at z {point[0]}, y {point[1]}, x {point[2]} is on "
                            f"background")
        return supervoxel

    def decisions(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Supervoxel pairs that proofreaders joined (confirmed) and cut apart (separated), for
        the edits still in effect."""
        return (list(self.confirmed.values()),
                [pair for pairs in self.separated.values() for pair in pairs])

    # -- operations -----------------------------------------------------------------------------
    def merge(self, user: str, point_a: Point, point_b: Point) -> OperationResult:
        return self._run(user, lambda: self._plan_merge(point_a, point_b))

    def split(self, user: str, sources: Sequence[Point], sinks: Sequence[Point]
              ) -> OperationResult:
        return self._run(user, lambda: self._plan_split(sources, sinks))

    def prompt_cut(self, user: str, positives: Sequence[Point], negatives: Sequence[Point] = (),
                   mask: Optional[dict[int, float]] = None) -> OperationResult:
        return self._run(user, lambda: self._plan_prompt_cut(positives, negatives, mask))

    def undo(self, user: str) -> OperationResult:
        return self._run(user, lambda: self._plan_reverse(user, undo=True))

    def redo(self, user: str) -> OperationResult:
        return self._run(user, lambda: self._plan_reverse(user, undo=False))

    def _run(self, user: str, plan_fn: Callable[[], _Plan]) -> OperationResult:
        started = time.perf_counter()
        with self._lock:
            plan = plan_fn()
            busy = [s for s in plan.segments + plan.removed if self._busy.get(s, user) != user]
            if busy:
                raise EditError(f"segment {busy[0]} is being edited by {self._busy[busy[0]]}; "
                                f"try again in a moment")
            inputs = {**plan.inputs, "decisions": plan.decisions} if plan.decisions else \
                plan.inputs
            entry = self.log.append(user, plan.kind, inputs, plan.delta, plan.inputs.get(
                "target"))
            self._apply(entry, plan.decisions)
        return OperationResult(entry.id, plan.kind, user, plan.segments, plan.removed,
                               plan.message, (time.perf_counter() - started) * 1000,
                               len(plan.delta), entry.delta)

    def reserve(self, segments: Sequence[int], user: str):
        """Hold segments for a long edit (a model prompt): others' edits of them are refused."""
        session = self

        class _Held:
            def __enter__(self):
                with session._lock:
                    taken = [s for s in segments if s in session._busy]
                    if taken:
                        raise EditError(f"segment {taken[0]} is being edited by "
                                        f"{session._busy[taken[0]]}; try again in a moment")
                    for s in segments:
                        session._busy[int(s)] = user

            def __exit__(self, *exc):
                with session._lock:
                    for s in segments:
                        session._busy.pop(int(s), None)

        return _Held()

    def reweight(self, pairs: np.ndarray, faces: np.ndarray, affinity: np.ndarray) -> int:
        """Fresh affinities for some contacts (a model's re-prediction around a prompt): each
        edge's affinity becomes the face-weighted blend of the graph's and the new one, and its
        cut cost follows. Live state only: the cuts it shapes are logged as deltas, so replaying
        the log never needs it. Returns how many graph edges changed."""
        edges = self.rag.edges
        changed = 0
        with self._lock:
            for (a, b), seen, value in zip(np.asarray(pairs, np.uint64), faces, affinity):
                lo = int(np.searchsorted(edges[:, 0], a, side="left"))
                hi = int(np.searchsorted(edges[:, 0], a, side="right"))
                row = lo + int(np.searchsorted(edges[lo:hi, 1], b))
                if row >= hi or edges[row, 1] != b:
                    continue  # a contact the graph does not have (a cut-off window edge)
                area = float(self.rag.area[row])
                seen = min(float(seen), area)
                blended = (self._affinity[row] * (area - seen) + float(value) * seen) / area
                self._affinity[row] = blended
                self._capacity[row] = affinity_capacity(np.array([blended]),
                                                        self.rag.area[row:row + 1])[0]
                changed += 1
        return changed

    # -- planning -------------------------------------------------------------------------------
    def _plan_merge(self, point_a: Point, point_b: Point) -> _Plan:
        sv_a, sv_b = self.supervoxel_at(point_a, "first point"), self.supervoxel_at(point_b,
                                                                                   "second point")
        seg_a, seg_b = self.segment_of(sv_a), self.segment_of(sv_b)
        if seg_a == seg_b:
            raise EditError(f"both points are in segment {seg_a}: nothing to merge")
        keep, gone = (seg_a, seg_b) if len(self.members[seg_a]) >= len(self.members[seg_b]) \
            else (seg_b, seg_a)
        moved = self.members_of(gone)
        delta = np.stack([moved, np.full(len(moved), gone, np.uint64),
                          np.full(len(moved), keep, np.uint64)], axis=1)
        inputs = {"points": [list(map(int, point_a)), list(map(int, point_b))],
                  "supervoxels": [sv_a, sv_b]}
        return _Plan("merge", inputs, delta, [keep], [gone],
                     f"merged segment {gone} into {keep} ({len(moved)} supervoxels)",
                     {"confirmed": (sv_a, sv_b)})

    def _plan_split(self, sources: Sequence[Point], sinks: Sequence[Point]) -> _Plan:
        if not sources or not sinks:
            raise EditError("a split needs at least one point on each side")
        source_svs = [self.supervoxel_at(p, "source point") for p in sources]
        sink_svs = [self.supervoxel_at(p, "sink point") for p in sinks]
        segments = {self.segment_of(s) for s in source_svs + sink_svs}
        if len(segments) != 1:
            raise EditError(f"split points lie in different segments ({sorted(segments)}); "
                            f"a split works inside one segment")
        if set(source_svs) & set(sink_svs):
            raise EditError("a source and a sink point are in the same supervoxel, which "
                            "cannot be divided")
        (segment,) = segments
        nodes = np.fromiter(self.members[segment], np.int64, len(self.members[segment]))
        problem, local = self._local_problem(nodes)
        sources_local = local(self._nodes(source_svs))
        sinks_local = local(self._nodes(sink_svs))
        connect_terminals(problem, sources_local)
        connect_terminals(problem, sinks_local)
        problem.to_source[sources_local] = HARD
        problem.to_sink[sinks_local] = HARD
        side = self._cut(problem, sources_local, sinks_local)
        inputs = {"sources": [list(map(int, p)) for p in sources],
                  "sinks": [list(map(int, p)) for p in sinks],
                  "supervoxels": {"sources": source_svs, "sinks": sink_svs}}
        plan = self._regroup(nodes, side, segment, "split", inputs)
        cut = side[problem.a] != side[problem.b]
        plan.decisions = {"separated": [
            (int(self.rag.ids[nodes[i]]), int(self.rag.ids[nodes[j]]))
            for i, j in zip(problem.a[cut], problem.b[cut])]}
        return plan

    def _plan_prompt_cut(self, positives: Sequence[Point], negatives: Sequence[Point],
                         mask: Optional[dict[int, float]]) -> _Plan:
        if not positives:
            raise EditError("a prompt cut needs at least one positive point")
        positive_svs = [self.supervoxel_at(p, "positive point") for p in positives]
        negative_svs = [self.supervoxel_at(p, "negative point") for p in negatives]
        if set(positive_svs) & set(negative_svs):
            raise EditError("a positive and a negative point are in the same supervoxel")
        segment = self.segment_of(positive_svs[0])
        region = set(self.members[segment])
        for sv in positive_svs[1:] + negative_svs:  # segments named by a prompt take part
            region |= self.members[self.segment_of(sv)]
        core = np.fromiter(self.members[segment], np.int64, len(self.members[segment]))
        ring = self._neighbours(core)
        region |= set(ring.tolist())
        nodes = np.fromiter(region, np.int64, len(region))
        problem, local = self._local_problem(nodes)
        w = self.weights
        # soft terms are in units of each node's own bond to the region, so they weigh the
        # same against the pairwise terms whatever the size of the contacts
        strength = np.bincount(problem.a, problem.capacity, len(nodes)) + \
            np.bincount(problem.b, problem.capacity, len(nodes)) + 1e-6
        inside = self.segment[nodes] == np.uint64(segment)
        problem.to_source += strength * np.where(inside, w.keep, 0.0)
        problem.to_sink += strength * np.where(inside, 0.0, w.keep)
        centroids = self.rag.centroid[nodes].astype(np.float64)
        for points, terms in ((positives, problem.to_source), (negatives, problem.to_sink)):
            if len(points):
                gap = np.min(np.linalg.norm(centroids[:, None, :] - np.asarray(
                    points, np.float64)[None], axis=2), axis=1)
                terms += strength * w.pull * np.exp(-gap / w.distance_scale)
        if mask:
            probability = np.array([mask.get(int(s), 0.0) for s in self.rag.ids[nodes]])
            problem.to_source += strength * w.mask * probability
            problem.to_sink += strength * w.mask * (1.0 - probability)
            crossing = np.abs(probability[problem.a] - probability[problem.b])
            problem.capacity *= 1.0 - w.mask_edge * crossing
        positive_local = local(self._nodes(positive_svs))
        negative_local = local(self._nodes(negative_svs))
        connect_terminals(problem, positive_local)
        problem.to_source[positive_local] = HARD
        problem.to_sink[negative_local] = HARD
        side = self._cut(problem, positive_local, negative_local)
        inputs = {"positives": [list(map(int, p)) for p in positives],
                  "negatives": [list(map(int, p)) for p in negatives],
                  "mask": {str(k): float(v) for k, v in (mask or {}).items()}}
        return self._regroup(nodes, side, segment, "prompt-cut", inputs)

    def _plan_reverse(self, user: str, undo: bool) -> _Plan:
        stack = (self._undo if undo else self._redo).get(user, [])
        if not stack:
            raise EditError(f"nothing to {'undo' if undo else 'redo'} for {user}")
        target = self._entries[stack[-1]]
        sv, old, new = target.delta[:, 0], target.delta[:, 1], target.delta[:, 2]
        expected, wanted = (new, old) if undo else (old, new)
        current = self.segment[self.rag.node_index(sv)]
        since = target.id if undo else self._undone_by[target.id]
        later = [self._last_change.get(int(seg), 0) for seg in np.concatenate([old, new])]
        if not np.array_equal(current, expected) or max(later, default=0) > since:
            raise EditError(f"cannot {'undo' if undo else 'redo'} operation {target.id}: its "
                            f"supervoxels have been edited since")
        delta = np.stack([sv, expected, wanted], axis=1)
        segments, removed = self._after(delta)
        word = "undid" if undo else "redid"
        return _Plan("undo" if undo else "redo", {"target": target.id}, delta, segments,
                     removed, f"{word} {target.kind} {target.id}")

    def _after(self, delta: np.ndarray) -> tuple[list[int], list[int]]:
        """(segments that exist after ``delta`` and changed, segment ids it removes)."""
        old, new = delta[:, 1].astype(np.int64), delta[:, 2].astype(np.int64)
        touched = set(old.tolist()) | set(new.tolist())
        leaving = dict(zip(*(v.tolist() for v in np.unique(old, return_counts=True))))
        arriving = dict(zip(*(v.tolist() for v in np.unique(new, return_counts=True))))
        alive, gone = [], []
        for segment in sorted(touched):
            size = len(self.members.get(segment, ())) - leaving.get(segment, 0) + \
                arriving.get(segment, 0)
            (alive if size > 0 else gone).append(int(segment))
        return alive, gone

    # -- shared machinery -----------------------------------------------------------------------
    def _nodes(self, supervoxels: Sequence[int]) -> np.ndarray:
        return np.array([self.node(s) for s in supervoxels], np.int64)

    def _neighbours(self, nodes: np.ndarray) -> np.ndarray:
        starts, ends = self._indptr[nodes], self._indptr[nodes + 1]
        counts = ends - starts
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return np.unique(self._neighbour[offsets + np.arange(counts.sum())])

    def _local_problem(self, nodes: np.ndarray):
        """The subgraph on ``nodes``: edges with both ends inside, capacities, zero unaries."""
        self._slot[nodes] = np.arange(len(nodes))
        try:
            starts, ends = self._indptr[nodes], self._indptr[nodes + 1]
            counts = ends - starts
            offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            flat = offsets + np.arange(counts.sum())
            here = np.repeat(np.arange(len(nodes)), counts)
            there = self._slot[self._neighbour[flat]]
            keep = (there > here)
            a, b, edges = here[keep], there[keep], self._edge_of[flat][keep]
        finally:
            self._slot[nodes] = -1
        problem = CutProblem(len(nodes), a, b, self._capacity[edges].copy(),
                             np.zeros(len(nodes)), np.zeros(len(nodes)))
        position = {int(n): i for i, n in enumerate(nodes)}

        def local(global_nodes: np.ndarray) -> np.ndarray:
            return np.array([position[int(n)] for n in global_nodes], np.int64)

        return problem, local

    @staticmethod
    def _cut(problem: CutProblem, sources: np.ndarray, sinks: np.ndarray) -> np.ndarray:
        side = keep_connected(solve(problem), problem, sources, sinks)
        if not side[sources].all() or (len(sinks) and side[sinks].any()):
            raise EditError("the points cannot be separated: every cut between them would "
                            "also cut through a point's own side")
        return side

    def _regroup(self, nodes: np.ndarray, side: np.ndarray, segment: int, kind: str,
                 inputs: dict) -> _Plan:
        """New membership of ``nodes``: the source side is ``segment``, every other connected
        piece of what was cut off is a segment of its own."""
        if side.all() or not side.any():
            raise EditError("the cut would leave one side empty: nothing changes")
        new = np.empty(len(nodes), np.uint64)
        old = self.segment[nodes]
        ids = self.rag.ids[nodes]
        source_name = segment if np.any((ids == np.uint64(segment)) & side) else \
            int(ids[side].min())
        new[side] = source_name
        rest = np.flatnonzero(~side)
        problem, _ = self._local_problem(nodes)
        both = ~side[problem.a] & ~side[problem.b] & (old[problem.a] == old[problem.b])
        graph = coo_matrix((np.ones(int(both.sum())), (problem.a[both], problem.b[both])),
                           shape=(len(nodes), len(nodes)))
        _, piece = connected_components(graph, directed=False)
        for p in np.unique(piece[rest]):
            members = rest[piece[rest] == p]
            name = old[members[0]]
            new[members] = name if np.any(ids[members] == name) else ids[members].min()
        changed = old != new
        if not changed.any():
            raise EditError("the cut leaves every segment as it is")
        delta = np.stack([ids[changed], old[changed], new[changed]], axis=1)
        delta = np.concatenate([delta, self._rename_outside(nodes, ids, new, old[changed])])
        after, removed = self._after(delta)
        message = (f"{kind}: segment {source_name} now has {int(side.sum())} of these "
                   f"{len(nodes)} supervoxels; {len(after)} segment(s) changed")
        return _Plan(kind, inputs, delta, after, removed, message)

    def _rename_outside(self, nodes: np.ndarray, ids: np.ndarray, new: np.ndarray,
                        losers: np.ndarray) -> np.ndarray:
        """A segment whose namesake supervoxel left it, but which keeps members outside the cut
        region, is renamed there after one of them (a segment always contains its name)."""
        rows = []
        inside = set(nodes.tolist())
        for segment in set(int(v) for v in losers):
            if np.any((ids == np.uint64(segment)) & (new == np.uint64(segment))):
                continue
            if int(self.rag.node_index([segment])[0]) not in inside:
                continue  # the namesake was not in the region: it did not move
            outside = [n for n in self.members.get(segment, ()) if n not in inside]
            if outside:
                svs = self.rag.ids[np.array(outside, np.int64)]
                name = svs.min()
                rows.append(np.stack([svs, np.full(len(svs), segment, np.uint64),
                                      np.full(len(svs), name, np.uint64)], axis=1))
        return np.concatenate(rows) if rows else np.zeros((0, 3), np.uint64)

    def _apply(self, entry: Entry, decisions: dict) -> None:
        nodes = self.rag.node_index(entry.delta[:, 0])
        for node, old, new in zip(nodes.tolist(), entry.delta[:, 1].tolist(),
                                  entry.delta[:, 2].tolist()):
            members = self.members.get(old)
            if members is not None:
                members.discard(node)
                if not members:
                    del self.members[old]
            self.members.setdefault(new, set()).add(node)
        self.segment[nodes] = entry.delta[:, 2]
        self._entries[entry.id] = entry
        for seg in np.concatenate([entry.delta[:, 1], entry.delta[:, 2]]).tolist():
            self._last_change[seg] = entry.id
        user = entry.user
        if entry.kind == "undo":
            self._undone_by[entry.target] = entry.id
            self._undo[user].pop()
            self._redo.setdefault(user, []).append(entry.target)
            self.confirmed.pop(entry.target, None)
            self.separated.pop(entry.target, None)
        elif entry.kind == "redo":
            self._redo[user].pop()
            self._undo.setdefault(user, []).append(entry.target)
            self._record_decisions(entry.target, self._entries[entry.target].inputs.get(
                "decisions", {}))
        else:
            self._undo.setdefault(user, []).append(entry.id)
            self._redo[user] = []
            self._record_decisions(entry.id, decisions)

    def _record_decisions(self, operation: int, decisions: dict) -> None:
        if "confirmed" in decisions:
            self.confirmed[operation] = tuple(decisions["confirmed"])
        if "separated" in decisions:
            self.separated[operation] = [tuple(p) for p in decisions["separated"]]

    def _replay(self, entry: Entry) -> None:
        self._apply(entry, entry.inputs.get("decisions", {}))
