"""Focused proofreading: yes/no questions about touching segments, most valuable first.

Each contact between two current segments is a question, "are these one neuron?". Its value
is the chance the answer is yes (the edge classifier's merge probability, on the segments as
they are now) times what a yes would repair: the bits of split that joining the two removes,
(a + b) log(a + b) - a log a - b log b for segments of a and b voxels. A yes merges them, a no
keeps them apart for good; either way the queue is ranked again, because a merge changes the
merged segment's contacts and sizes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from segmentation.agglomerate import dense_histograms
from segmentation.edge_classifier import LearnedScore
from segmentation.rag import Rag
from segmentation.session import EditError

Pair = tuple[int, int]
Point = tuple[int, int, int]  # z, y, x voxel


@dataclass(frozen=True)
class Question:
    segments: Pair  # the two segments, smaller id first
    probability: float  # that they are one neuron
    value: float  # probability x bits a yes would repair (in voxel-weighted bits)


def merge_gain(size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """Voxel-weighted bits of split that joining two pieces of one neuron removes."""
    a, b = np.asarray(size_a, np.float64), np.asarray(size_b, np.float64)
    return (a + b) * np.log2(a + b) - a * np.log2(a) - b * np.log2(b)


def ranked_questions(rag: Rag, segment_of_node: np.ndarray, booster,
                     decided: Iterable[Pair] = (), within: Optional[Callable] = None,
                     limit: int = 50) -> list[Question]:
    """The ``limit`` most valuable undecided questions. ``segment_of_node`` is the current
    segment of every RAG node; ``within(segment_graph, a, b)`` may restrict the contacts asked
    about (e.g. to a region), as a boolean per contact."""
    graph = rag.relabelled(np.asarray(segment_of_node, np.uint64))
    if graph.num_edges == 0:
        return []
    hist = dense_histograms(graph)
    scorer = LearnedScore(booster)
    scorer.start(graph, hist)
    a, b = graph.edge_index()
    probability = 1.0 - scorer.scores(hist, np.arange(graph.num_edges), a, b)
    value = probability * merge_gain(graph.size[a], graph.size[b])
    if within is not None:
        value = np.where(within(graph, a, b), value, -1.0)
    done = {tuple(sorted(p)) for p in decided}
    questions = []
    for e in np.argsort(-value, kind="stable"):
        if value[e] < 0 or len(questions) == limit:
            break
        pair = (int(graph.ids[a[e]]), int(graph.ids[b[e]]))
        if pair not in done:
            questions.append(Question(pair, float(probability[e]), float(value[e])))
    return questions


@dataclass(frozen=True)
class Ask:
    """A question put to one proofreader: the two segments, a voxel of each where they
    touch (what a yes merges and a no keeps apart), and where to look."""

    question: Question
    points: tuple[Point, Point]  # z, y, x voxels: one in each segment, face to face

    @property
    def segments(self) -> Pair:
        return self.question.segments

    @property
    def contact(self) -> Point:
        """Where to look: between the two points (the middle of the largest contact)."""
        return tuple((p + q) // 2 for p, q in zip(*self.points))


def contact_points(read: Callable[..., np.ndarray], bbox_a: np.ndarray, bbox_b: np.ndarray,
                   sv_a: int, sv_b: int, shape: Sequence[int]) -> tuple[Point, Point]:
    """A voxel of supervoxel ``sv_a`` and its neighbour in ``sv_b``, near the middle of their
    shared face. ``read(z, y, x)`` reads labels; the boxes are (z0, y0, x0, z1, y1, x1),
    ends inclusive."""
    lo = np.maximum(np.maximum(bbox_a[:3], bbox_b[:3]) - 1, 0)
    hi = np.minimum(np.minimum(bbox_a[3:], bbox_b[3:]) + 2, np.asarray(shape))
    labels = read(*(slice(int(l), int(h)) for l, h in zip(lo, hi)))
    in_a, in_b = labels == np.uint64(sv_a), labels == np.uint64(sv_b)
    faces = []
    for axis in range(3):
        for step in (1, -1):
            facing = in_a & np.roll(in_b, -step, axis=axis)
            edge = [slice(None)] * 3  # np.roll wraps around: the far face is no neighbour
            edge[axis] = slice(-1, None) if step == 1 else slice(0, 1)
            facing[tuple(edge)] = False
            offset = np.zeros(3, np.int64)
            offset[axis] = step
            faces += [(v, offset) for v in np.argwhere(facing)]
    if not faces:
        raise ValueError(f"supervoxels {sv_a} and {sv_b} do not touch")
    voxels = np.array([v for v, _ in faces])
    middle = int(np.argmin(np.abs(voxels - np.median(voxels, axis=0)).sum(axis=1)))
    voxel, offset = faces[middle]
    point_a = tuple(int(v) for v in voxel + lo)
    return point_a, tuple(int(v) for v in voxel + lo + offset)


class FocusQueue:
    """The session's questions, most valuable first, each put to one proofreader at a time.

    The ranking is worked out again after every edit (``invalidate``) on the graph with the
    current membership. A question is not put to a proofreader while another one holds a
    question about either of its segments (their answers would edit the same segment). Each
    proofreader has a current question, the ones they skipped, and a history for "back"."""

    def __init__(self, rag: Rag, session, booster, batch: int = 200):
        self.rag = rag
        self.session = session  # a ProofreadingSession
        self.booster = booster
        self.batch = batch
        self._lock = threading.RLock()
        self._ranked: Optional[list[Question]] = None
        self._edits = 0  # edits seen: the ranking is of the segmentation after this many
        self._ranked_after = -1
        self._current: dict[str, Ask] = {}
        self._skipped: dict[str, set[Pair]] = {}
        self._history: dict[str, list[tuple[Ask, Optional[int]]]] = {}

    def invalidate(self) -> None:
        """The segmentation changed: rank again before the next question. Called inside the
        session's lock (its applied-edit hook), so it takes no lock of its own: the queue's
        methods take the session's lock inside theirs, and the other order would deadlock."""
        self._edits += 1

    def current(self, user: str) -> Optional[Ask]:
        """The user's open question, if it is still a question (another edit may have
        merged its segments or kept them apart)."""
        with self._lock:
            ask = self._current.get(user)
            if ask is not None and not self._open(ask.segments):
                del self._current[user]
                ask = None
            return ask

    def next(self, user: str) -> Optional[Ask]:
        """The user's open question, or the most valuable one nobody else holds."""
        with self._lock:
            ask = self.current(user)
            if ask is not None:
                return ask
            separated = self._separated()
            held = self._held_by_others(user, separated)
            skipped = self._skipped.get(user, set())
            for question in self._ranking():
                a, b = question.segments
                if a in held or b in held or question.segments in skipped or \
                        not self._open(question.segments, separated):
                    continue
                ask = self._ask(question)
                if ask is not None:
                    self._current[user] = ask
                    return ask
            return None

    def skip(self, user: str) -> Optional[Ask]:
        """Put the open question aside (not asked of this user again) and ask the next."""
        with self._lock:
            ask = self._current.pop(user, None)
            if ask is not None:
                self._skipped.setdefault(user, set()).add(ask.segments)
                self._history.setdefault(user, []).append((ask, None))
            return self.next(user)

    def drop(self, user: str) -> None:
        """Forget the user's open question (it no longer holds)."""
        with self._lock:
            self._current.pop(user, None)

    def answered(self, user: str, ask: Ask, operation: int) -> None:
        with self._lock:
            if self._current.get(user) == ask:
                del self._current[user]
            self._history.setdefault(user, []).append((ask, operation))

    def previous(self, user: str) -> Optional[tuple[Ask, Optional[int]]]:
        """The user's previous question and the operation that answered it (None: skipped),
        changing nothing: the caller undoes the answer, then ``reopen``s it. Refused while
        another proofreader holds a question about either segment."""
        with self._lock:
            history = self._history.get(user)
            if not history:
                return None
            ask, operation = history[-1]
            held = self._held_by_others(user)
            holder = next((held[s] for s in ask.segments if s in held), None)
            if holder is not None:
                raise EditError(f"cannot go back: {holder} holds a question about segment "
                                f"{ask.segments[0]} or {ask.segments[1]} now")
            return ask, operation

    def reopen(self, user: str) -> Ask:
        """The user's previous question (``previous``) is their open question again."""
        with self._lock:
            ask, _ = self._history[user].pop()
            self._skipped.get(user, set()).discard(ask.segments)
            self._current[user] = ask
            return ask

    def holders(self) -> dict[str, Pair]:
        with self._lock:
            return {user: ask.segments for user, ask in self._current.items()}

    # -- inside ---------------------------------------------------------------------------------
    def _ranking(self) -> list[Question]:
        if self._ranked is None or self._ranked_after != self._edits:
            edits = self._edits
            session = self.session
            with session.exclusive():
                membership = session.segments_before_divisions(self.rag.ids)
                separated = session.decisions()[1]
                decided = {tuple(sorted(int(s) for s in session.segments_of(
                    np.array(pair, np.uint64)))) for pair in separated}
            self._ranked = ranked_questions(self.rag, membership, self.booster, decided,
                                            limit=self.batch)
            self._ranked_after = edits
        return self._ranked

    def _held_by_others(self, user: str, separated: Optional[set[Pair]] = None
                        ) -> dict[int, str]:
        """Segment -> the other proofreader whose open question names it. A question that is
        no longer open (its segments merged, kept apart or gone) holds nothing, for asking and
        for going back alike."""
        if separated is None:
            separated = self._separated()
        return {s: other for other, a in self._current.items() if other != user and
                self._open(a.segments, separated) for s in a.segments}

    def _separated(self) -> set[Pair]:
        """The supervoxel contacts kept apart now (smaller id first)."""
        return {tuple(sorted(p)) for p in self.session.decisions()[1]}

    def _open(self, pair: Pair, separated: Optional[set[Pair]] = None) -> bool:
        """Both segments exist, differ and touch, and nobody kept them apart."""
        with self.session.exclusive():  # decisions change with every undo
            contacts = self.session.contacts(*pair)
            if separated is None:
                separated = self._separated()
        return bool(contacts) and not any(tuple(sorted(p)) in separated for p in contacts)

    def _ask(self, question: Question) -> Optional[Ask]:
        session = self.session
        with session.exclusive():
            contacts = session.contacts(*question.segments)
            if not contacts or session.supervoxels is None:
                return None
            sv_a, sv_b = contacts[0]
            graph = session.graph
            rows = graph.node_index([sv_a, sv_b])
            labels = session.supervoxels
            try:
                points = contact_points(labels.read, graph.bbox[rows[0]], graph.bbox[rows[1]],
                                        sv_a, sv_b, labels.shape)
            except ValueError:
                return None
        return Ask(question, points)
