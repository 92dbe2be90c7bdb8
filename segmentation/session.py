"""The proofreading session: a live RAG, the membership, and the operations that change it.

The graph is a :class:`~segmentation.live_graph.LiveGraph`; the membership is a segment id per
supervoxel (0: a supervoxel divided away, no longer in the volume) plus the member set of every
segment. Each operation is worked out first, written to the edit log, and only then applied
and acknowledged; replaying the log on start-up gives back the identical membership.

What an edit may change:

- merge: the two segments named by its points.
- split: the segment both points lie in; every piece cut off is a segment of its own.
- prompt cut: the segments that hold a positive point become one segment whose extent the cut
  decides; a supervoxel of another segment moves only when the cut says so, and a segment
  that gives one away is regrouped by connectivity over its whole membership. A segment that
  neither holds a point nor gives or receives keeps exactly its supervoxels. The points stay
  with the segment as constraints of later cuts until cleared, so a later cut never re-joins
  what an earlier one separated.
- a split or prompt cut whose opposite points share a supervoxel first divides it at voxel
  level (see segmentation/supervoxel_split.py), as does ``split_supervoxel``.

Proofreaders' decisions are kept for re-agglomeration: a merge confirms the edge between its
points, a cut separates the edges it cut and confirms the edges it kept between positive
points.

Points are z, y, x voxels. Segments are named by one of their supervoxels.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from segmentation.editlog import EditLog, Entry, LogError
from segmentation.errors import PromptcutError
from segmentation.graphcut import HARD, CutProblem, connect_terminals, keep_connected, solve
from segmentation.live_graph import Column, LiveGraph
from segmentation.membership import lookup
from segmentation.rag import Rag
from segmentation.supervoxel_split import LiveSupervoxels, VoxelSplit, divide, graph_patch

Point = Sequence[int]
Pair = tuple[int, int]


class EditError(PromptcutError):
    """An edit that cannot be done as asked; the state and the log are left unchanged."""


class SegmentBusy(EditError):
    """Another user holds the segment for a long edit (a model prompt); try again later."""


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
    created: list[int] = field(default_factory=list)  # supervoxels that came into being
    retired: dict[int, int] = field(default_factory=dict)  # gone supervoxel -> a successor


@dataclass
class Preview:
    """What an edit would do, worked out and shown before it is committed: nothing is logged,
    the graph is as it was."""

    kind: str
    delta: np.ndarray  # (k, 3): supervoxel, old segment, new segment
    segments: list[int]  # segments that would exist after it and change
    removed: list[int]
    sizes: dict[int, tuple[int, int]]  # segment after -> (voxels, supervoxels)
    divided: int  # the supervoxel it would divide at voxel level (0: none)
    after: int  # operations in the log when it was worked out
    message: str

    def stale(self, log: EditLog) -> bool:
        """Whether an edit since then touched the segments it involves (then its picture
        no longer holds; work it out again)."""
        involved = (set(self.segments) | set(self.removed) |
                    {int(v) for v in np.unique(self.delta[:, 1])}) - {0}
        return any(involved & {int(v) for v in np.unique(entry.delta[:, 1:])}
                   for entry in log.entries(self.after))


@dataclass
class PromptWeights:
    """How prompts become unary terms of the prompt cut (see _plan_prompt_cut), each in units
    of a supervoxel's total bond (sum of its edge capacities) to the region."""

    keep: float = 0.6  # with a mask: preference to stay where it is
    mask: float = 2.0  # weight of a mask probability
    mask_edge: float = 0.9  # how much a mask boundary lowers the cost of cutting an edge


@dataclass
class _Division:
    """A supervoxel division as the graph holds it, to switch on and off with undo / redo."""

    split: VoxelSplit
    node: int  # the divided supervoxel's row
    old_edges: np.ndarray  # its edges, retired while the division is in effect
    pieces: np.ndarray  # rows of the new supervoxels
    new_edges: np.ndarray


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
    division: Optional[_Division] = None


class ProofreadingSession:
    def __init__(self, rag: Rag, segments: np.ndarray, log: EditLog,
                 locate: Optional[Callable[[Point], int]] = None,
                 weights: Optional[PromptWeights] = None,
                 supervoxels: Optional[LiveSupervoxels] = None,
                 affinities: Optional[Callable[[tuple], np.ndarray]] = None):
        """``supervoxels`` (the labels) and ``affinities`` (uint8 (3, ...) for a region) are
        what dividing a supervoxel needs; without them, divisions are refused. ``locate``
        defaults to reading the labels."""
        self.graph = LiveGraph(rag)
        self.log = log
        self.supervoxels = supervoxels
        self._affinities = affinities
        if locate is None and supervoxels is None:
            raise ValueError("a session needs supervoxels or a locate function")
        self.locate = locate or supervoxels.value_at
        self.weights = weights or PromptWeights()
        self._segment = Column(np.asarray(segments, np.uint64))
        self.members: dict[int, set[int]] = {}
        for index, seg in enumerate(self.segment.tolist()):
            self.members.setdefault(seg, set()).add(index)
        # one edit at a time; readers (members_of, membership) take it too. Re-entrant: the
        # planning code reads under it
        self._lock = threading.RLock()
        self._applied_hooks: list[Callable[[OperationResult], None]] = []
        self._busy: dict[int, str] = {}
        self._entries: dict[int, Entry] = {}
        self._undo: dict[str, list[int]] = {}
        self._redo: dict[str, list[int]] = {}
        # each segment's version: the operation whose application left it as it is. An edit
        # remembers the versions before and after it; undo needs the "after" ones (nothing
        # changed since), redo the "before" ones, and each puts the other back, so edits undo
        # and redo in order to any depth while anyone else's change in between blocks them
        self._version: dict[int, int] = {}
        self._versions: dict[int, tuple[dict[int, int], dict[int, int]]] = {}
        self._applied_by: dict[int, int] = {}  # operation -> the entry that last applied it
        self._undone_by: dict[int, int] = {}  # operation -> the undo that reversed it
        self._decided: dict[int, dict] = {}  # operation in effect -> its decisions
        self._prompts: dict[int, tuple[list, list]] = {}  # prompt cut in effect -> its points
        self._divisions: dict[int, _Division] = {}  # operation -> the division it made
        self._located: dict[tuple[int, int, int], int] = {}  # prompt point -> supervoxel
        for entry in log.entries():
            self._replay(entry)

    # -- queries --------------------------------------------------------------------------------
    @property
    def segment(self) -> np.ndarray:
        """Segment of every graph node (0: a supervoxel that no longer exists)."""
        return self._segment.view

    def node(self, supervoxel: int) -> int:
        index = int(self.graph.node_index([supervoxel])[0])
        if index < 0 or self.segment[index] == 0:
            raise EditError(f"supervoxel {supervoxel} is not in the graph")
        return index

    def segment_of(self, supervoxel: int) -> int:
        return int(self.segment[self.node(supervoxel)])

    def segments_of(self, supervoxels: np.ndarray) -> np.ndarray:
        """Segment of each supervoxel id (0 for ids that are not, or no longer, supervoxels)."""
        return lookup(self.graph.ids, self.segment, supervoxels)

    def segments_before_divisions(self, supervoxels: np.ndarray) -> np.ndarray:
        """Segment of each supervoxel id of the graph as it was built (a RAG's nodes): one
        divided since counts in the segment of its first piece."""
        segment = self.segments_of(supervoxels)
        gone = np.flatnonzero(segment == 0)
        if len(gone):
            successor = self.successors()
            pieces = np.array([successor.get(int(sv), 0) for sv in
                               np.asarray(supervoxels)[gone]], np.uint64)
            segment[gone] = self.segments_of(pieces)
        return segment

    def members_of(self, segment: int) -> np.ndarray:
        """Supervoxel ids of a segment."""
        with self._lock:
            nodes = self.members.get(int(segment)) if int(segment) != 0 else None
            if not nodes:
                raise EditError(f"there is no segment {segment}")
            return self.graph.ids[np.fromiter(nodes, np.int64, len(nodes))]

    def successors(self) -> dict[int, int]:
        """Each supervoxel divided by an edit in effect -> a live supervoxel it became (what
        views at coarser scales, which still hold the old id, show in its place)."""
        first = {d.split.supervoxel: int(d.split.pieces[0]) for op, d in
                 self._divisions.items() if self._in_effect(op)}
        result = {}
        for gone, piece in first.items():
            while piece in first:
                piece = first[piece]
            result[gone] = piece
        return result

    def active_divisions(self) -> list[VoxelSplit]:
        """The supervoxel divisions in effect, in the order they were made."""
        return [d.split for op, d in sorted(self._divisions.items()) if self._in_effect(op)]

    def membership(self) -> tuple[np.ndarray, np.ndarray]:
        """(supervoxel ids, segment ids) of every supervoxel in the volume now."""
        with self._lock:
            live = self.segment != 0
            return self.graph.ids[live].copy(), self.segment[live].copy()

    def on_applied(self, hook: Callable[["OperationResult"], None]) -> None:
        """Call ``hook`` with each applied edit, in order, before the next edit can start
        (a view of the membership kept in step with it)."""
        self._applied_hooks.append(hook)

    def exclusive(self):
        """Hold off edits (a consistent snapshot: an export)."""
        return self._lock

    def supervoxel_at(self, point: Point, what: str = "point") -> int:
        supervoxel = int(self.locate(point))
        if supervoxel == 0:
            raise EditError(f"the {what} at z {point[0]}, y {point[1]}, x {point[2]} is on "
                            f"background")
        return supervoxel

    def decisions(self) -> tuple[list[Pair], list[Pair]]:
        """Supervoxel pairs that proofreaders joined (confirmed) and cut apart (separated), for
        the edits still in effect."""
        confirmed, separated = [], []
        for operation in sorted(self._decided):
            decided = self._decided[operation]
            confirmed += [tuple(p) for p in decided.get("confirmed", ())]
            separated += [tuple(p) for p in decided.get("separated", ())]
        return confirmed, separated

    def kept_prompts(self) -> list[tuple[Point, int]]:
        """Every prompt point that cuts in effect keep as a constraint: (point, +1 or -1)."""
        with self._lock:
            kept = [self._prompts[op] for op in sorted(self._prompts)]
        return [(p, 1) for pos, _ in kept for p in pos] + [(p, -1) for _, neg in kept
                                                           for p in neg]

    def constraints_of(self, segment: int) -> tuple[list[Point], list[Point], list[int]]:
        """What earlier prompt cuts left on ``segment``: their positive and negative points,
        and the supervoxels they cut off it (the far ends of the edges they separated), which
        later cuts keep out. A point or supervoxel that a later merge brought into the
        segment no longer counts: the merge was the proofreader's later word."""
        positives, negatives, cut_off = [], [], []
        for operation in sorted(self._prompts):
            pos, neg = self._prompts[operation]
            if not any(self._segment_at(p) == segment for p in pos):
                continue
            positives += [p for p in pos if self._segment_at(p) == segment]
            negatives += [p for p in neg if self._segment_at(p) not in (segment, 0)]
            for pair in self._decided.get(operation, {}).get("separated", ()):
                owners = self.segments_of(np.array(pair, np.uint64))
                if (owners == segment).sum() == 1 and (owners != 0).all():
                    cut_off.append(int(pair[0] if owners[1] == segment else pair[1]))
        return positives, negatives, cut_off

    def _supervoxel_of(self, point: Point) -> int:
        """The supervoxel at a prompt point, remembered until that supervoxel is divided."""
        point = tuple(int(v) for v in point)
        supervoxel = self._located.get(point)
        if supervoxel is None or self.segments_of(np.array([supervoxel]))[0] == 0:
            supervoxel = self._located[point] = int(self.locate(point))
        return supervoxel

    def _segment_at(self, point: Point) -> int:
        supervoxel = self._supervoxel_of(point)
        return int(self.segments_of(np.array([supervoxel]))[0]) if supervoxel else 0

    # -- operations -----------------------------------------------------------------------------
    def merge(self, user: str, point_a: Point, point_b: Point) -> OperationResult:
        return self._run(user, lambda: self._plan_merge(point_a, point_b))

    def split(self, user: str, sources: Sequence[Point], sinks: Sequence[Point]
              ) -> OperationResult:
        return self._run(user, lambda: self._plan_split(sources, sinks))

    def prompt_cut(self, user: str, positives: Sequence[Point], negatives: Sequence[Point] = (),
                   mask: Optional[dict[int, float]] = None) -> OperationResult:
        return self._run(user, lambda: self._plan_prompt_cut(positives, negatives, mask))

    def split_supervoxel(self, user: str, sources: Sequence[Point], sinks: Sequence[Point]
                         ) -> OperationResult:
        """Divide the supervoxel under the points at voxel level; the pieces holding sink
        points leave the segment."""
        return self._run(user, lambda: self._plan_split_supervoxel(sources, sinks))

    def clear_prompts(self, user: str, point: Point) -> OperationResult:
        """Forget the prompt points earlier cuts left on the segment at ``point``."""
        return self._run(user, lambda: self._plan_clear(point))

    def separate(self, user: str, point_a: Point, point_b: Point) -> OperationResult:
        """Keep the segments at two points apart for good (a "no" to "are these one
        neuron?"): every contact between them is recorded as separated, which later
        agglomerations honour and focused proofreading never asks about again. Logged,
        undoable; no supervoxel moves."""
        return self._run(user, lambda: self._plan_separate(point_a, point_b))

    def review(self, user: str, segment: int, reviewed: bool = True) -> OperationResult:
        """Mark a segment reviewed (done), or no longer: logged, undoable."""
        return self._run(user, lambda: self._plan_review(segment, reviewed))

    def last_edit(self, segment: int) -> Optional[Entry]:
        """The last operation that changed a segment's supervoxels (None: none since the
        agglomeration)."""
        with self._lock:
            return self._entries.get(self._version.get(int(segment), 0))

    def reviewed(self) -> dict[int, Entry]:
        """Segments marked reviewed now, each with the review that marked it (the latest
        review in effect of a segment decides; a segment id an edit removed is dropped)."""
        latest: dict[int, Entry] = {}
        with self._lock:
            for op in sorted(self._entries):
                entry = self._entries[op]
                if entry.kind == "review" and self._in_effect(op):
                    latest[int(entry.inputs["segment"])] = entry
            return {seg: entry for seg, entry in latest.items()
                    if entry.inputs["reviewed"] and self.members.get(seg)}

    def in_effect(self, operation: int) -> bool:
        """Whether a logged operation is in effect now (not undone)."""
        with self._lock:
            return self._in_effect(operation)

    def last_undoable(self, user: str) -> Optional[int]:
        """The operation U would undo for ``user`` (None: nothing)."""
        with self._lock:
            stack = self._undo.get(user)
            return stack[-1] if stack else None

    def undo(self, user: str) -> OperationResult:
        return self._run(user, lambda: self._plan_reverse(user, undo=True))

    def redo(self, user: str) -> OperationResult:
        return self._run(user, lambda: self._plan_reverse(user, undo=False))

    def _run(self, user: str, plan_fn: Callable[[], _Plan]) -> OperationResult:
        started = time.perf_counter()
        with self._lock:
            mark = self.graph.mark()
            try:
                plan = plan_fn()
                busy = [s for s in plan.segments + plan.removed
                        if self._busy.get(s, user) != user]
                if busy:
                    raise SegmentBusy(f"segment {busy[0]} is being edited by "
                                    f"{self._busy[busy[0]]}; try again in a moment")
                inputs = {**plan.inputs, "decisions": plan.decisions} if plan.decisions else \
                    plan.inputs
                division = plan.division.split.to_bytes() if plan.division else None
                entry = self.log.append(user, plan.kind, inputs, plan.delta,
                                        plan.inputs.get("target"), division)
            except BaseException:
                self.graph.rollback(mark)
                self._segment.size = self.graph.num_nodes
                raise
            self._apply(entry, plan.division)
            self.graph.commit()
            created, retired = self._structural(plan.delta)
            result = OperationResult(entry.id, plan.kind, user, plan.segments, plan.removed,
                                     plan.message, (time.perf_counter() - started) * 1000,
                                     len(plan.delta), entry.delta, created, retired)
            for hook in self._applied_hooks:
                hook(result)
        return result

    def preview(self, kind: str, *args) -> Preview:
        """What ``kind`` (merge, split, prompt-cut, split-supervoxel) with these arguments
        would do now, without doing it."""
        planners = {"merge": self._plan_merge, "split": self._plan_split,
                    "prompt-cut": self._plan_prompt_cut,
                    "split-supervoxel": self._plan_split_supervoxel}
        with self._lock:
            mark = self.graph.mark()
            try:
                plan = planners[kind](*args)
                sizes = {seg: self._size_after(seg, plan.delta) for seg in plan.segments}
                after = len(self.log)
            finally:
                self.graph.rollback(mark)
                self._segment.size = self.graph.num_nodes
        divided = int(plan.division.split.supervoxel) if plan.division else 0
        return Preview(kind, plan.delta, list(plan.segments), list(plan.removed), sizes,
                       divided, after, plan.message)

    def _size_after(self, segment: int, delta: np.ndarray) -> tuple[int, int]:
        """(voxels, supervoxels) of a segment once ``delta`` is applied."""
        leaving = self.graph.node_index(delta[(delta[:, 1] == segment) &
                                              (delta[:, 2] != segment), 0])
        coming = self.graph.node_index(delta[delta[:, 2] == segment, 0])
        rows = (self.members.get(segment, set()) - set(leaving.tolist())) | \
            set(coming.tolist())
        rows.discard(-1)
        nodes = np.fromiter(rows, np.int64, len(rows))
        return int(self.graph.size[nodes].sum()), len(rows)

    def reserve(self, segments: Sequence[int], user: str):
        """Hold segments for a long edit (a model prompt): others' edits of them are refused."""
        session = self

        class _Held:
            def __enter__(self):
                with session._lock:
                    taken = [s for s in segments if s in session._busy]
                    if taken:
                        raise SegmentBusy(f"segment {taken[0]} is being edited by "
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
        changed = 0
        with self._lock:
            rows = self.graph.node_index(np.asarray(pairs, np.uint64).reshape(-1))
            for (a, b), seen, value in zip(rows.reshape(-1, 2).tolist(), faces, affinity):
                edge = self.graph.edge_between(a, b) if a >= 0 and b >= 0 else -1
                if edge < 0:
                    continue  # a contact the graph does not have (a cut-off window edge)
                area = float(self.graph.area[edge])
                seen = min(float(seen), area)
                blended = (self.graph.affinity[edge] * (area - seen) + float(value) * seen) / area
                self.graph.set_affinity(np.array([edge]), np.array([blended]))
                changed += 1
            self.graph.commit()
        return changed

    # -- planning -------------------------------------------------------------------------------
    def _two_segments(self, point_a: Point, point_b: Point, what: str
                      ) -> tuple[int, int, int, int]:
        """(supervoxel, segment) at each of two points, which must be in different segments:
        (sv_a, sv_b, seg_a, seg_b)."""
        sv_a, sv_b = self.supervoxel_at(point_a, "first point"), self.supervoxel_at(point_b,
                                                                                   "second point")
        seg_a, seg_b = self.segment_of(sv_a), self.segment_of(sv_b)
        if seg_a == seg_b:
            raise EditError(f"both points are in segment {seg_a}: nothing to {what}")
        return sv_a, sv_b, seg_a, seg_b

    def _plan_merge(self, point_a: Point, point_b: Point) -> _Plan:
        sv_a, sv_b, seg_a, seg_b = self._two_segments(point_a, point_b, "merge")
        keep, gone = (seg_a, seg_b) if len(self.members[seg_a]) >= len(self.members[seg_b]) \
            else (seg_b, seg_a)
        moved = self.members_of(gone)
        delta = np.stack([moved, np.full(len(moved), gone, np.uint64),
                          np.full(len(moved), keep, np.uint64)], axis=1)
        inputs = {"points": [list(map(int, point_a)), list(map(int, point_b))],
                  "supervoxels": [sv_a, sv_b]}
        return _Plan("merge", inputs, delta, [keep], [gone],
                     f"merged segment {gone} into {keep} ({len(moved)} supervoxels)",
                     {"confirmed": [(sv_a, sv_b)]})

    def _plan_split(self, sources: Sequence[Point], sinks: Sequence[Point]) -> _Plan:
        if not sources or not sinks:
            raise EditError("a split needs at least one point on each side")
        source_svs = [self.supervoxel_at(p, "source point") for p in sources]
        sink_svs = [self.supervoxel_at(p, "sink point") for p in sinks]
        segments = {self.segment_of(s) for s in source_svs + sink_svs}
        if len(segments) != 1:
            raise EditError(f"split points lie in different segments ({sorted(segments)}); "
                            f"a split works inside one segment")
        (segment,) = segments
        division, source_svs, sink_svs = self._divide_shared(sources, sinks, source_svs,
                                                             sink_svs)
        region, current = self._with_division(self._rows(segment), division)
        problem, local = self._local_problem(region)
        source_local, sink_local = local(self._nodes(source_svs)), local(self._nodes(sink_svs))
        kept = connect_terminals(problem, source_local)
        connect_terminals(problem, sink_local)
        problem.to_source[source_local] = HARD
        problem.to_sink[sink_local] = HARD
        side = self._cut(problem, source_local, sink_local)
        inputs = {"sources": [list(map(int, p)) for p in sources],
                  "sinks": [list(map(int, p)) for p in sinks],
                  "supervoxels": {"sources": source_svs, "sinks": sink_svs}}
        return self._regroup("split", inputs, region, current, side, {segment}, segment,
                             problem, kept, division)

    def _plan_prompt_cut(self, positives: Sequence[Point], negatives: Sequence[Point],
                         mask: Optional[dict[int, float]]) -> _Plan:
        if not positives:
            raise EditError("a prompt cut needs at least one positive point")
        positives = [tuple(int(v) for v in p) for p in positives]
        negatives = [tuple(int(v) for v in p) for p in negatives]
        positive_svs = [self.supervoxel_at(p, "positive point") for p in positives]
        negative_svs = [self.supervoxel_at(p, "negative point") for p in negatives]
        segment = self.segment_of(positive_svs[0])
        decided = {self.segment_of(s) for s in positive_svs}
        # what earlier cuts left on these segments holds too (see constraints_of)
        kept_pos, kept_neg, kept_out = [], [], []
        for seg in sorted(decided):
            pos, neg, out = self.constraints_of(seg)
            kept_pos += pos
            kept_neg += neg
            kept_out += out
        all_pos = list(dict.fromkeys(positives + kept_pos))
        all_neg = list(dict.fromkeys(negatives + kept_neg))
        all_neg = [p for p in all_neg if p not in all_pos]
        pos_svs = positive_svs + [self._supervoxel_of(p) for p in all_pos[len(positives):]]
        neg_svs = negative_svs + [self._supervoxel_of(p) for p in all_neg[len(negatives):]]
        division, pos_svs, neg_svs = self._divide_shared(all_pos, all_neg, pos_svs, neg_svs)
        # the cut decides the prompted segments. A neighbour (even one a negative point lies
        # on: that point says it is not this segment, which it is not) takes part only on
        # evidence about it, a mask that covers it; never because its strongest contact
        # happens to be with the prompted segment
        rows = np.concatenate([self._rows(s) for s in sorted(decided)])
        if mask:
            ring = self.graph.neighbours(np.concatenate([self._rows(s) for s in
                                                         sorted(decided)]))
            ring = ring[self.segment[ring] != 0]
            covered = np.array([mask.get(int(s), 0.0) > 0 for s in self.graph.ids[ring]], bool)
            rows = np.unique(np.concatenate([rows, ring[covered]]))
        region, current = self._with_division(rows, division)
        problem, local = self._local_problem(region)
        w = self.weights
        # soft terms are in units of each node's own bond to the region, so they weigh the
        # same against the pairwise terms whatever the size of the contacts
        strength = np.bincount(problem.a, problem.capacity, len(region)) + \
            np.bincount(problem.b, problem.capacity, len(region)) + 1e-6
        inside = np.isin(current, list(decided))
        positive_local = local(self._nodes(pos_svs))
        taking_part = np.isin(self._nodes(neg_svs), region)
        negative_local = local(self._nodes(neg_svs)[taking_part])
        if mask:
            # a mask's evidence is weighed against staying put. Without one, the points alone
            # decide (hard terms): a hold on every supervoxel made cuts as small as they could
            # be (one supervoxel where whole neurons were merged: on the simulated proofreader,
            # gala_train from threshold 0.9 stayed at VOI 0.53 where the plain cut reached
            # 0.23), and other node weights tried (distance to the prompts, a random walk)
            # did no better than none (see the benchmark's notes)
            problem.to_source += strength * np.where(inside, w.keep, 0.0)
            problem.to_sink += strength * np.where(inside, 0.0, w.keep)
            probability = np.array([mask.get(int(s), 0.0) for s in self.graph.ids[region]])
            problem.to_source += strength * w.mask * probability
            problem.to_sink += strength * w.mask * (1.0 - probability)
            crossing = np.abs(probability[problem.a] - probability[problem.b])
            problem.capacity *= 1.0 - w.mask_edge * crossing
        kept = connect_terminals(problem, positive_local)
        problem.to_source[positive_local] = HARD
        problem.to_sink[negative_local] = HARD
        out = np.isin(self.graph.ids[region], np.asarray(kept_out, np.uint64)) & ~inside
        problem.to_sink[out] = HARD  # what earlier cuts took off stays off
        try:
            side = self._cut(problem, positive_local, negative_local, np.zeros(0, np.int64))
        except EditError as refused:
            remembered = len(all_pos) + len(all_neg) - len(positives) - len(negatives)
            if remembered or kept_out:
                raise EditError(f"{refused} (with the {remembered} point(s) earlier cuts of "
                                f"this segment keep; Shift+Q forgets them)") from None
            raise
        # what the cut strands on the far side away from every negative point (a part a
        # merge joined without contact, say) is not cut off: it stays with the prompted
        # segment, as a split keeps it; other segments' supervoxels stay where they are
        stranded = keep_connected(~side, problem, negative_local, np.zeros(0, np.int64))
        side |= ~stranded & ~side & inside
        inputs = {"positives": [list(map(int, p)) for p in positives],
                  "negatives": [list(map(int, p)) for p in negatives],
                  "constraints": {"positives": [list(map(int, p)) for p in all_pos[
                      len(positives):]], "negatives": [list(map(int, p)) for p in all_neg[
                          len(negatives):]]},
                  "mask": {str(k): float(v) for k, v in (mask or {}).items()}}
        return self._regroup("prompt-cut", inputs, region, current, side, decided, segment,
                             problem, kept, division)

    def _plan_split_supervoxel(self, sources: Sequence[Point], sinks: Sequence[Point]
                               ) -> _Plan:
        if not sources or not sinks:
            raise EditError("dividing a supervoxel needs at least one point on each side")
        source_svs = [self.supervoxel_at(p, "source point") for p in sources]
        sink_svs = [self.supervoxel_at(p, "sink point") for p in sinks]
        target = source_svs[0]
        if target not in sink_svs:
            raise EditError(f"no sink point lies in supervoxel {target}, the one under the "
                            f"first source point: place both kinds of point in the supervoxel "
                            f"to divide")
        inside = [(p, s) for p, s in zip(sources, source_svs) if s == target]
        outside = [(p, s) for p, s in zip(sinks, sink_svs) if s == target]
        division, pieces_src, pieces_sink = self._divide_shared(
            [p for p, _ in inside], [p for p, _ in outside], [target] * len(inside),
            [target] * len(outside))
        segment = self.segment_of(target)
        region, current = self._with_division(self._rows(segment), division)
        problem, local = self._local_problem(region)
        side = np.ones(len(region), bool)
        side[local(division.pieces[~division.split.sides])] = False
        side = keep_connected(side, problem, local(self._nodes(pieces_src)),
                              local(self._nodes(pieces_sink)))
        inputs = {"sources": [list(map(int, p)) for p in sources],
                  "sinks": [list(map(int, p)) for p in sinks], "supervoxel": target}
        return self._regroup("split-supervoxel", inputs, region, current, side, {segment},
                             segment, problem, [], division)

    def _plan_separate(self, point_a: Point, point_b: Point) -> _Plan:
        sv_a, sv_b, seg_a, seg_b = self._two_segments(point_a, point_b, "keep apart")
        pairs = self.contacts(seg_a, seg_b)
        if not pairs:
            raise EditError(f"segments {seg_a} and {seg_b} do not touch: nothing to keep apart")
        inputs = {"points": [list(map(int, point_a)), list(map(int, point_b))],
                  "supervoxels": [sv_a, sv_b]}
        return _Plan("separate", inputs, np.zeros((0, 3), np.uint64), [seg_a, seg_b], [],
                     f"kept segments {seg_a} and {seg_b} apart ({len(pairs)} contact"
                     f"{'s' if len(pairs) != 1 else ''})", {"separated": pairs})

    def contacts(self, segment_a: int, segment_b: int) -> list[Pair]:
        """The supervoxel pairs (in a, in b) where two segments touch, largest contact
        first."""
        with self._lock:
            if not self.members.get(int(segment_a)):
                return []
            rows = self._rows(int(segment_a))
            position, edges, other = self.graph.incident(rows)
            there = self.segment[other] == np.uint64(segment_b)
            mine, edges, other = rows[position[there]], edges[there], other[there]
            order = np.argsort(-self.graph.area[edges], kind="stable")
            ids = self.graph.ids
            return [(int(ids[mine[i]]), int(ids[other[i]])) for i in order]

    def _plan_review(self, segment: int, reviewed: bool) -> _Plan:
        segment = int(segment)
        if not self.members.get(segment):
            raise EditError(f"there is no segment {segment}")
        inputs = {"segment": segment, "reviewed": bool(reviewed)}
        word = "marked reviewed" if reviewed else "no longer marked reviewed"
        return _Plan("review", inputs, np.zeros((0, 3), np.uint64), [segment], [],
                     f"segment {segment} {word}")

    def _plan_clear(self, point: Point) -> _Plan:
        segment = self.segment_of(self.supervoxel_at(point))
        cleared = [op for op in sorted(self._prompts)
                   if any(self._segment_at(p) == segment for p in self._prompts[op][0])]
        if not cleared:
            raise EditError(f"segment {segment} holds no prompt points of earlier cuts")
        count = sum(len(self._prompts[op][0]) + len(self._prompts[op][1]) for op in cleared)
        return _Plan("clear-prompts", {"point": list(map(int, point)), "cleared": cleared},
                     np.zeros((0, 3), np.uint64), [], [],
                     f"cleared {count} prompt point(s) of segment {segment}")

    def _plan_reverse(self, user: str, undo: bool) -> _Plan:
        stack = (self._undo if undo else self._redo).get(user, [])
        if not stack:
            raise EditError(f"nothing to {'undo' if undo else 'redo'} for {user}")
        target = self._entries[stack[-1]]
        sv, old, new = target.delta[:, 0], target.delta[:, 1], target.delta[:, 2]
        expected, wanted = (new, old) if undo else (old, new)
        current = self.segments_of(sv)
        before, after = self._versions[target.id]
        needed = after if undo else before
        word = "undo" if undo else "redo"
        changed = [self._version.get(seg, 0) for seg, version in needed.items()
                   if self._version.get(seg, 0) != version]
        if not np.array_equal(current, expected) or changed:
            by = self._entries.get(max(changed, default=0))
            who = f" (by {by.user}, operation {by.id})" if by is not None else ""
            raise EditError(f"cannot {word} operation {target.id}: its supervoxels have been "
                            f"edited since{who}")
        division = self._divisions.get(target.id)
        if division is not None:
            edges = division.old_edges if undo else division.new_edges
            ends = np.concatenate([self.graph.edge_a[edges], self.graph.edge_b[edges]])
            ends = ends[~np.isin(ends, np.concatenate([[division.node], division.pieces]))]
            if (self.segment[ends] == 0).any():
                raise EditError(f"cannot {word} operation {target.id}: a supervoxel next to "
                                f"the one it divided has been divided since")
        delta = np.stack([sv, expected, wanted], axis=1)
        segments, removed = self._after(delta)
        word = "undid" if undo else "redid"
        return _Plan("undo" if undo else "redo", {"target": target.id}, delta, segments,
                     removed, f"{word} {target.kind} {target.id}")

    def _after(self, delta: np.ndarray) -> tuple[list[int], list[int]]:
        """(segments that exist after ``delta`` and changed, segment ids it removes)."""
        old, new = delta[:, 1].astype(np.int64), delta[:, 2].astype(np.int64)
        touched = (set(old.tolist()) | set(new.tolist())) - {0}
        leaving = dict(zip(*(v.tolist() for v in np.unique(old, return_counts=True))))
        arriving = dict(zip(*(v.tolist() for v in np.unique(new, return_counts=True))))
        alive, gone = [], []
        for segment in sorted(touched):
            size = len(self.members.get(segment, ())) - leaving.get(segment, 0) + \
                arriving.get(segment, 0)
            (alive if size > 0 else gone).append(int(segment))
        return alive, gone

    # -- supervoxel division --------------------------------------------------------------------
    def _divide_shared(self, sources: Sequence[Point], sinks: Sequence[Point],
                       source_svs: list[int], sink_svs: list[int]):
        """Where a source and a sink point share a supervoxel, divide it (on the graph, to be
        kept or rolled back with the plan) and name each point's piece instead."""
        shared = set(source_svs) & set(sink_svs)
        if not shared:
            return None, source_svs, sink_svs
        if len(shared) > 1:
            raise EditError(f"source and sink points share {len(shared)} supervoxels; divide "
                            f"one supervoxel at a time")
        (target,) = shared
        division = self._divide(target, [p for p, s in zip(sources, source_svs) if s == target],
                                [p for p, s in zip(sinks, sink_svs) if s == target])
        piece_at = self._piece_locator(division)
        return (division, [piece_at(p) if s == target else s for p, s in zip(sources,
                                                                             source_svs)],
                [piece_at(p) if s == target else s for p, s in zip(sinks, sink_svs)])

    def _divide(self, supervoxel: int, sources: Sequence[Point], sinks: Sequence[Point]
                ) -> _Division:
        if self.supervoxels is None or self._affinities is None:
            raise EditError("a source and a sink point are in the same supervoxel, and this "
                            "session has no voxel data to divide it")
        row = self.node(supervoxel)
        box = tuple(slice(int(a), int(b)) for a, b in zip(self.graph.bbox[row][:3],
                                                         self.graph.bbox[row][3:]))
        shape = self.supervoxels.shape
        lower = [1 if s.start > 0 else 0 for s in box]
        upper = [1 if s.stop < n else 0 for s, n in zip(box, shape)]
        region = tuple(slice(s.start - lo, s.stop + up) for s, lo, up in zip(box, lower, upper))
        labels = self.supervoxels.read(*region)
        affinities = self._affinities(region)
        inner = tuple(slice(lo, lo + s.stop - s.start) for s, lo in zip(box, lower))

        def relative(point):
            return tuple(int(v) - s.start for v, s in zip(point, box))

        pieces = divide(labels[inner], affinities[(slice(None),) + inner], supervoxel,
                        [relative(p) for p in sources], [relative(p) for p in sinks])
        count = int(pieces.max())
        first = int(self.graph.ids[-1]) + 1
        ids = np.arange(first, first + count, dtype=np.uint64)
        sides = np.zeros(count, bool)
        sides[np.unique(pieces[tuple(np.array([relative(p) for p in sources]).T)]) - 1] = True
        relabelled = labels.copy()
        view = relabelled[inner]
        view[pieces > 0] = ids[pieces[pieces > 0].astype(np.int64) - 1]
        above = tuple(slice(lo, None) for lo in lower)
        patch = graph_patch(relabelled, affinities[(slice(None),) + above], lower,
                            [s.start for s in box], ids)
        split = VoxelSplit(supervoxel, ids, sides, tuple(s.start for s in box), pieces, patch)
        return self._divide_graph(split)

    def _divide_graph(self, split: VoxelSplit) -> _Division:
        """Put a division into the graph: the pieces and their contacts in, the old
        supervoxel's contacts out."""
        row = int(self.graph.node_index([split.supervoxel])[0])
        if row < 0:
            raise EditError(f"supervoxel {split.supervoxel} is not in the graph")
        _, old_edges, _ = self.graph.incident(np.array([row]))
        self.graph.set_alive(old_edges, False)
        patch = split.patch
        pieces = self.graph.add_nodes(split.pieces, patch.size, patch.bbox, patch.centroid)
        self._segment.append(np.zeros(len(pieces), np.uint64))
        a, b = self.graph.node_index(patch.edges[:, 0]), self.graph.node_index(patch.edges[:, 1])
        if (a < 0).any() or (b < 0).any():
            raise EditError(f"the division of supervoxel {split.supervoxel} touches a "
                            f"supervoxel the graph does not have")
        new_edges = self.graph.add_edges(a, b, patch.area, patch.quantiles[:, 1])
        return _Division(split, row, old_edges, pieces, new_edges)

    def _piece_locator(self, division: _Division) -> Callable[[Point], int]:
        split = division.split

        def piece_at(point: Point) -> int:
            local = tuple(int(v) - o for v, o in zip(point, split.origin))
            return int(split.pieces[int(split.labels[local]) - 1])

        return piece_at

    def _with_division(self, rows: np.ndarray, division: Optional[_Division]
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Region rows with a division's pieces in place of the supervoxel it divides, and the
        segment each counts as belonging to (a piece: its supervoxel's)."""
        current = self.segment[rows].copy()
        if division is None:
            return rows, current
        keep = rows != division.node
        owner = self.segment[division.node]
        return (np.concatenate([rows[keep], division.pieces]),
                np.concatenate([current[keep], np.full(len(division.pieces), owner,
                                                       np.uint64)]))

    # -- shared machinery -----------------------------------------------------------------------
    def _rows(self, segment: int) -> np.ndarray:
        members = self.members[segment]
        return np.fromiter(members, np.int64, len(members))

    def _nodes(self, supervoxels: Sequence[int]) -> np.ndarray:
        rows = self.graph.node_index(list(supervoxels))
        if (rows < 0).any():
            raise EditError("a point lies in a supervoxel the graph does not have")
        return rows

    def _local_problem(self, nodes: np.ndarray):
        """The subgraph on ``nodes``: edges with both ends inside, capacities, zero unaries."""
        a, b, edges = self.graph.subgraph(nodes)
        problem = CutProblem(len(nodes), a, b, self.graph.capacity[edges].copy(),
                             np.zeros(len(nodes)), np.zeros(len(nodes)))
        order = np.argsort(nodes)

        def local(global_nodes: np.ndarray) -> np.ndarray:
            wanted = np.asarray(global_nodes, np.int64)
            return order[np.searchsorted(nodes[order], wanted)].astype(np.int64)

        return problem, local

    @staticmethod
    def _cut(problem: CutProblem, sources: np.ndarray, sinks: np.ndarray,
             connected_sinks: Optional[np.ndarray] = None) -> np.ndarray:
        """The minimum cut, each side kept in one piece with its terminals (the sink side
        only around ``connected_sinks``, all sinks by default)."""
        anchors = sinks if connected_sinks is None else connected_sinks
        side = keep_connected(solve(problem), problem, sources, anchors)
        if not side[sources].all() or (len(sinks) and side[sinks].any()):
            raise EditError("the points cannot be separated: every cut between them would "
                            "also cut through a point's own side")
        return side

    def _regroup(self, kind: str, inputs: dict, region: np.ndarray, current: np.ndarray,
                 side: np.ndarray, decided: set[int], preferred: int, problem: CutProblem,
                 kept: list[int], division: Optional[_Division]) -> _Plan:
        """The new membership after a cut of ``region``.

        The source side becomes one segment. Of the segments whose extent the cut decides
        (``decided``), whatever fell on the other side is cut off: each connected piece of
        that, within one old segment, becomes a segment of its own. Any other segment keeps
        its supervoxels except those the cut gave to the source side; if it gave some, it is
        regrouped by connectivity over its whole remaining membership.
        """
        decided_mask = np.isin(current, np.fromiter(decided, np.uint64, len(decided)))
        if not side.any() or (side.all() and len(decided) == 1 and decided_mask.all()):
            # (a cut that joins prompted segments, or takes in neighbours, cuts nothing off)
            raise EditError("the cut would leave one side empty: nothing changes")
        groups: list[np.ndarray] = [region[side]]
        prefer: list[Optional[int]] = [preferred]
        off = np.flatnonzero(~side & decided_mask)
        if len(off):
            both = np.isin(problem.a, off) & np.isin(problem.b, off) & (
                current[problem.a] == current[problem.b])
            groups += _components(len(region), problem.a[both], problem.b[both], off, region)
            prefer += [None] * (len(groups) - len(prefer))
        received = side & ~decided_mask
        for loser in sorted(set(current[received].tolist())):
            gone = set(region[received & (current == loser)].tolist())
            remaining = np.fromiter(self.members[loser] - gone, np.int64)
            if len(remaining) == 0:
                continue
            a, b, _ = self.graph.subgraph(remaining)
            groups += _components(len(remaining), a, b, np.arange(len(remaining)), remaining)
            prefer += [loser] * (len(groups) - len(prefer))
        delta_rows, names = [], []
        for nodes, wish in zip(groups, prefer):
            name = self._name(nodes, wish)
            names.append(name)
            old = self.segment[nodes]
            moved = old != np.uint64(name)
            delta_rows.append(np.stack([self.graph.ids[nodes[moved]], old[moved],
                                        np.full(int(moved.sum()), name, np.uint64)], axis=1))
        if division is not None:
            gone = division.node
            delta_rows.append(np.array([[self.graph.ids[gone], self.segment[gone], 0]],
                                       np.uint64))
        delta = np.concatenate(delta_rows)
        if len(delta) == 0:
            raise EditError("the cut leaves every segment as it is")
        after, removed = self._after(delta)
        cut = side[problem.a] != side[problem.b]
        together = current[problem.a] == current[problem.b]
        ids = self.graph.ids[region]
        decisions = {"separated": [(int(ids[i]), int(ids[j])) for i, j in
                                   zip(problem.a[cut & together], problem.b[cut & together])]}
        confirmed = [(int(ids[problem.a[e]]), int(ids[problem.b[e]])) for e in kept]
        if confirmed:
            decisions["confirmed"] = confirmed
        word = {"split-supervoxel": "divided supervoxel"}.get(kind, kind)
        message = (f"{word}: segment {names[0]} now has {int(side.sum())} of these "
                   f"{len(region)} supervoxels; {len(after)} segment(s) changed")
        if division is not None:
            message += (f"; supervoxel {division.split.supervoxel} divided into "
                        f"{len(division.pieces)} pieces")
        return _Plan(kind, inputs, delta, after, removed, message, decisions, division)

    def _name(self, nodes: np.ndarray, wish: Optional[int]) -> int:
        """A segment keeps the name of an old segment whose namesake supervoxel it holds (the
        wished one first); else it is named after its smallest supervoxel."""
        ids = self.graph.ids[nodes]
        if wish is not None and np.any(ids == np.uint64(wish)):
            return int(wish)
        namesakes = ids[ids == self.segment[nodes]]
        return int(namesakes.min()) if len(namesakes) else int(ids.min())

    # -- applying -------------------------------------------------------------------------------
    def _apply(self, entry: Entry, division: Optional[_Division] = None) -> None:
        """An entry that is in the log, into the live state."""
        delta = entry.delta
        nodes = self.graph.node_index(delta[:, 0])
        old, new = delta[:, 1], delta[:, 2]
        leaving, arriving = _distinct(old), _distinct(new)

        def rows(segments: list[int], column: np.ndarray, seg: int) -> list[int]:
            return (nodes if len(segments) == 1 else nodes[column == seg]).tolist()

        for seg in leaving:
            members = self.members.get(seg)
            if seg == 0 or members is None:
                continue
            members.difference_update(rows(leaving, old, seg))
            if not members:
                del self.members[seg]
        for seg in arriving:
            if seg != 0:
                self.members.setdefault(seg, set()).update(rows(arriving, new, seg))
        self.segment[nodes] = new
        self._entries[entry.id] = entry
        if entry.kind in ("undo", "redo"):
            before, after = self._versions[entry.target]
            self._version.update(before if entry.kind == "undo" else after)
        else:
            touched = [seg for seg in set(leaving) | set(arriving) if seg != 0]
            self._versions[entry.id] = ({seg: self._version.get(seg, 0) for seg in touched},
                                        {seg: entry.id for seg in touched})
            self._version.update(self._versions[entry.id][1])
        user = entry.user
        if entry.kind in ("undo", "redo"):
            target = self._entries[entry.target]
            undo = entry.kind == "undo"
            (self._undo if undo else self._redo)[user].pop()
            (self._redo if undo else self._undo).setdefault(user, []).append(entry.target)
            if undo:
                self._undone_by[entry.target] = entry.id
            else:
                self._applied_by[entry.target] = entry.id
            self._effects(target, active=not undo)
        else:
            self._undo.setdefault(user, []).append(entry.id)
            self._redo[user] = []
            self._applied_by[entry.id] = entry.id
            if division is not None:
                self._divisions[entry.id] = division
            self._effects(entry, active=True, fresh=True)

    def _effects(self, entry: Entry, active: bool, fresh: bool = False) -> None:
        """What an operation leaves besides the membership: decisions, prompt constraints,
        cleared constraints and its supervoxel division, switched on or off."""
        decisions = entry.inputs.get("decisions")
        if decisions:
            if active:
                self._decided[entry.id] = decisions
            else:
                self._decided.pop(entry.id, None)
        if entry.kind == "prompt-cut":  # its own points; the constraints it used are kept
            both = ([tuple(p) for p in entry.inputs["positives"]],  # by the cuts that made them
                    [tuple(p) for p in entry.inputs["negatives"]])
            if active:
                self._prompts[entry.id] = both
            else:
                self._prompts.pop(entry.id, None)
        if entry.kind == "clear-prompts":
            for operation in entry.inputs["cleared"]:
                if active:
                    self._prompts.pop(operation, None)
                elif self._in_effect(operation):
                    self._effects(self._entries[operation], active=True)
        division = self._divisions.get(entry.id)
        if division is not None:
            if not fresh:
                self.graph.set_alive(division.new_edges, active)
                self.graph.set_alive(division.old_edges, not active)
            if self.supervoxels is not None:
                if active:
                    self.supervoxels.activate(entry.id, division.split)
                else:
                    self.supervoxels.deactivate(entry.id)

    def _in_effect(self, operation: int) -> bool:
        return self._applied_by.get(operation, 0) > self._undone_by.get(operation, 0)

    def _structural(self, delta: np.ndarray) -> tuple[list[int], dict[int, int]]:
        """Supervoxels an applied delta created, and those it retired with a successor."""
        created = delta[delta[:, 1] == 0, 0].astype(np.int64).tolist()
        retired = delta[delta[:, 2] == 0, 0].astype(np.int64).tolist()
        successor = created[0] if created else 0
        return created, {sv: successor for sv in retired}

    def _replay(self, entry: Entry) -> None:
        """Apply a logged operation at start-up, after checking that it fits: every delta row
        names a supervoxel of the graph that is in the segment the row says it leaves."""
        division = None
        try:
            if entry.division is not None:
                division = self._divide_graph(VoxelSplit.from_bytes(entry.division))
            if entry.kind in ("undo", "redo") and entry.target not in self._entries:
                raise EditError(f"it reverses operation {entry.target}, which is not before it")
        except (EditError, ValueError) as exc:
            raise LogError(f"edit log {self.log.path} does not fit this segmentation at "
                           f"operation {entry.id} ({exc}); move it aside to start afresh") \
                from None
        rows = self.graph.node_index(entry.delta[:, 0])
        unknown = rows < 0
        if unknown.any() or not np.array_equal(self.segment[rows], entry.delta[:, 1]):
            what = f"supervoxel {int(entry.delta[unknown][0, 0])} is not in the graph" \
                if unknown.any() else "its supervoxels are not in the segments it moves " \
                "them from"
            raise LogError(f"edit log {self.log.path} does not fit this segmentation at "
                           f"operation {entry.id} ({what}); move it aside to start afresh")
        self._apply(entry, division)
        self.graph.commit()


def _distinct(values: np.ndarray) -> list[int]:
    """Distinct values; a merge's delta holds one old and one new segment, checked at once."""
    if len(values) == 0:
        return []
    if values[0] == values[-1] and (values == values[0]).all():
        return [int(values[0])]
    return np.unique(values).tolist()


def _components(n: int, a: np.ndarray, b: np.ndarray, subset: np.ndarray, rows: np.ndarray
                ) -> list[np.ndarray]:
    """Connected pieces of ``subset`` (local indices) over edges (a, b), as rows."""
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    pieces = label[subset]
    return [rows[subset[pieces == p]] for p in np.unique(pieces)]
