"""The one edit service: every edit of a project, from keys or the HTTP API, goes through here.

It owns the proofreading session (and with it the edit log), the model worker that a prompt
cut consults, the membership the served chunks apply, and the list of those who want to know
about a change (the viewers). Nothing else writes the log.

A listener that fails (a viewer whose layers a proofreader removed, say) is logged and
skipped: the edit is saved and acknowledged whatever a viewer does with it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from segmentation.errors import InputError
from segmentation.export import export_segmentation
from segmentation.focus import Ask, FocusQueue
from segmentation.membership import rows_of
from segmentation.session import EditError, OperationResult, Preview, ProofreadingSession
from segmentation.volume import Volume
from server.model_worker import ModelWorker
from server.segments import MembershipView

log = logging.getLogger(__name__)
Point = Sequence[int]  # z, y, x voxel
Listener = Callable[[OperationResult], None]


@dataclass
class SegmentDescription:
    segment: int
    supervoxel: int
    voxels: int
    supervoxels: int
    voxel: tuple[int, int, int]  # z, y, x

    def message(self) -> str:
        z, y, x = self.voxel
        return (f"segment {self.segment}: {self.voxels:,} voxels, {self.supervoxels} supervoxel"
                f"{'s' if self.supervoxels != 1 else ''} (at z {z}, y {y}, x {x})")


class EditService:
    def __init__(self, session: ProofreadingSession, models: ModelWorker,
                 membership: MembershipView, exports: Path,
                 questions: Optional[Callable[[], FocusQueue]] = None,
                 image: Optional[Volume] = None):
        self.session = session
        self.image = image  # the EM, exported beside the labels
        # focused proofreading's queue, built on first use (its graph and classifier take a
        # while to load, and most sessions never ask); None: no edge classifier
        self._make_questions = questions
        self._questions: Optional[FocusQueue] = None
        self._questions_lock = threading.Lock()
        self.models = models
        self.exports = exports  # where exports go by default
        self.membership = membership  # as the viewers draw it
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        # the served membership changes with each edit, in order, inside the session's lock
        session.on_applied(lambda result: membership.apply(result.delta, result.retired))
        # every edit, whoever made it, re-ranks the questions (once there are any)
        session.on_applied(lambda result: self._questions and self._questions.invalidate())

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    # -- edits ----------------------------------------------------------------------------------
    def merge(self, user: str, first: Point, second: Point) -> OperationResult:
        return self._publish(self.session.merge(user, first, second))

    def split(self, user: str, sources: Sequence[Point], sinks: Sequence[Point]
              ) -> OperationResult:
        return self._publish(self.session.split(user, sources, sinks))

    def split_supervoxel(self, user: str, sources: Sequence[Point], sinks: Sequence[Point]
                         ) -> OperationResult:
        return self._publish(self.session.split_supervoxel(user, sources, sinks))

    def prompt_cut(self, user: str, positives: Sequence[Point],
                   negatives: Sequence[Point] = ()) -> OperationResult:
        """The prompt cut, weighted by a SAM2 mask when a checkpoint is configured, on edge
        weights that FGNet re-predicted around the click when it is. The segments involved are
        held for the user while the models work."""
        session = self.session
        if not positives:
            raise EditError("a prompt cut needs at least one positive point")
        held = sorted({session.segment_of(session.supervoxel_at(p, "positive point"))
                       for p in positives})
        with session.reserve(held, user):
            evidence = self._evidence(positives, negatives)
            result = session.prompt_cut(user, positives, negatives, evidence.mask)
        result.message = f"{result.message} (from {evidence.used})"
        return self._publish(result)

    def _evidence(self, positives: Sequence[Point], negatives: Sequence[Point]):
        """The models' word on a prompt: a mask, and fresh affinities of the contacts near it
        (taken into the graph at once: they are evidence, not an edit)."""
        evidence = self.models.prompt_evidence(positives, negatives)
        if evidence.edges is not None:
            self.session.reweight(evidence.edges.pairs, evidence.edges.faces,
                                  evidence.edges.affinity)
        return evidence

    def preview(self, kind: str, first: Sequence, second: Sequence) -> Preview:
        """What an edit would do (merge: two points; split and split-supervoxel: sources and
        sinks; prompt-cut: positives and negatives), with nothing logged."""
        if kind == "prompt-cut":
            if not first:
                raise EditError("a prompt cut needs at least one positive point")
            evidence = self._evidence(first, second)
            return self.session.preview(kind, first, second, evidence.mask)
        return self.session.preview(kind, first, second)

    def review(self, user: str, segment: int, reviewed: bool = True) -> OperationResult:
        return self._publish(self.session.review(user, segment, reviewed))

    # -- focused proofreading -------------------------------------------------------------------
    def question(self, user: str) -> Optional[Ask]:
        """The user's open question, or the most valuable one no one else holds (None: no
        question left)."""
        return self._queue().next(user)

    def answer(self, user: str, yes: bool) -> OperationResult:
        """Answer the user's open question: yes merges the two segments (their contact
        confirmed), no keeps them apart for good. Logged and undoable like any edit."""
        queue, session = self._queue(), self.session
        ask = queue.current(user)
        if ask is None:
            raise EditError("no question is open: ask for one first (F, or GET "
                            "/api/v1/question)")
        with session.exclusive():  # the segments checked and edited with no edit between
            at = tuple(session.segment_of(session.supervoxel_at(p)) for p in ask.points)
            if at != ask.segments:  # another edit cut or divided one of them meanwhile
                queue.drop(user)
                raise EditError(f"the question changed since it was asked (segments "
                                f"{ask.segments[0]} and {ask.segments[1]} were edited): "
                                f"ask again for the next one")
            result = session.merge(user, *ask.points) if yes else \
                session.separate(user, *ask.points)
        queue.answered(user, ask, result.operation)
        return self._publish(result)

    def skip(self, user: str) -> Optional[Ask]:
        """Put the open question aside and ask the next one."""
        return self._queue().skip(user)

    def back(self, user: str) -> tuple[Ask, Optional[OperationResult]]:
        """Go back to the user's previous question: its answer is undone (it must still be
        their last edit) and it is their open question again."""
        queue = self._queue()
        previous = queue.previous(user)
        if previous is None:
            raise EditError(f"{user} has no earlier question to go back to")
        _, operation = previous
        undone = None
        if operation is not None and self.session.in_effect(operation):  # else skipped, or U
            last = self.session.last_undoable(user)
            if last != operation:
                raise EditError(f"cannot go back: operation {operation} answered that "
                                f"question, but your last edit is {last}; undo with U instead")
            undone = self.undo(user)
        return queue.reopen(user), undone

    @property
    def questions(self) -> Optional[FocusQueue]:
        with self._questions_lock:
            if self._questions is None and self._make_questions is not None:
                self._questions = self._make_questions()
            return self._questions

    def _queue(self) -> FocusQueue:
        queue = self.questions
        if queue is None:
            raise EditError("focused proofreading needs an edge classifier, and this server "
                            "has none")
        return queue

    def forget_prompts(self, user: str, point: Point) -> OperationResult:
        return self._publish(self.session.clear_prompts(user, point))

    def undo(self, user: str) -> OperationResult:
        return self._publish(self.session.undo(user))

    def redo(self, user: str) -> OperationResult:
        return self._publish(self.session.redo(user))

    def export(self, output: Optional[Path] = None, overwrite: bool = False) -> Path:
        """The corrected segmentation as it is now: edits wait until it is written (a
        consistent snapshot of membership, divisions and log)."""
        folder = output or self.exports / (time.strftime("%Y%m%d-%H%M%S-") +
                                           uuid.uuid4().hex[:6])
        with self.session.exclusive():
            ids, segments = self.session.membership()
            return export_segmentation(self.session.supervoxels, ids, segments,
                                       self.session.log, folder, overwrite=overwrite,
                                       image=self.image)

    def _publish(self, result: OperationResult) -> OperationResult:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(result)
            except Exception:  # noqa: BLE001 - a viewer's trouble must not unsave an edit
                log.exception("a listener failed after operation %d (the edit is saved)",
                              result.operation)
        return result

    # -- questions ------------------------------------------------------------------------------
    def supervoxel_at(self, zyx: Point) -> int:
        """The supervoxel at a voxel, divisions included (0: background)."""
        return int(self.session.locate(zyx))

    def segment_of(self, supervoxel: int) -> int:
        return self.session.segment_of(supervoxel)

    def members(self, segment: int) -> np.ndarray:
        members = self.session.members_of(segment)
        if len(members) == 0:
            raise InputError(f"there is no segment {segment}")
        return members

    def describe(self, zyx: Point) -> SegmentDescription:
        """The segment at a voxel: its id, size and supervoxels."""
        zyx = tuple(int(v) for v in zyx)
        supervoxel = self.supervoxel_at(zyx)
        if supervoxel == 0:
            raise InputError(f"no segment at z {zyx[0]}, y {zyx[1]}, x {zyx[2]} (background)")
        segment = self.session.segment_of(supervoxel)
        members = self.session.members_of(segment)
        voxels = int(self.session.graph.size[self.session.graph.node_index(members)].sum())
        return SegmentDescription(segment, supervoxel, voxels, len(members), zyx)

    def summary(self, segment: int) -> dict:
        """Size, supervoxel count and bounding box (z, y, x, end exclusive) of a segment."""
        members = self.members(segment)
        graph = self.session.graph
        rows = graph.node_index(members)
        box = graph.bbox[rows]
        return {"segment": int(segment), "supervoxels": int(len(members)),
                "voxels": int(graph.size[rows].sum()),
                "bbox_zyx": {"start": box[:, :3].min(axis=0).astype(int).tolist(),
                             "stop": box[:, 3:].max(axis=0).astype(int).tolist()}}

    def segment_list(self, limit: int = 50) -> list[dict]:
        """The largest segments and every reviewed one: size, supervoxels, last edit and the
        review mark (for the dashboard)."""
        session = self.session
        with session.exclusive():
            live = session.segment != 0
            segments, sizes = session.segment[live], session.graph.size[live]
            reviewed = session.reviewed()
        ids, inverse = np.unique(segments, return_inverse=True)
        voxels = np.bincount(inverse, weights=sizes)
        counts = np.bincount(inverse)
        rows = set(np.argsort(-voxels, kind="stable")[:limit].tolist())
        found = rows_of(ids, list(reviewed))
        rows |= set(found[found >= 0].tolist())
        listed = []
        for row in sorted(rows, key=lambda r: -voxels[r]):
            segment = int(ids[row])
            edit = session.last_edit(segment)
            review = reviewed.get(segment)
            listed.append({
                "segment": segment, "voxels": int(voxels[row]),
                "supervoxels": int(counts[row]),
                "last_edit": {"operation": edit.id, "user": edit.user, "time": edit.time,
                              "type": edit.kind} if edit else None,
                "reviewed": {"user": review.user, "time": review.time,
                             "operation": review.id} if review else None})
        return listed

    def operations(self, after: int = 0, limit: int = 100) -> list[dict]:
        """The operation history after operation ``after``, oldest first."""
        rows = []
        for entry in self.session.log.entries(after, limit):
            delta = entry.delta
            changed = np.unique(delta[:, 1:][delta[:, 1:] != 0]).astype(np.int64).tolist() \
                if len(delta) else []
            rows.append({"id": entry.id, "user": entry.user, "time": entry.time,
                         "type": entry.kind, "inputs": entry.inputs, "target": entry.target,
                         "segments": changed})
        return rows
