"""A simulated proofreader: an oracle that reads the ground truth and fixes the largest error
with one edit at a time, through the same session operations that the keys call.

Errors are ranked by what they cost in VOI: a segment that glues neurons together costs
p(segment) H(gt | segment) bits of VOI merge, a neuron cut into pieces costs
p(neuron) H(segment | neuron) bits of VOI split. The largest one is fixed first:

- a neuron in pieces: merge its two largest pieces (each a segment that is mostly this neuron),
  one point deep inside each;
- a segment holding two neurons: cut it (a plain split or a prompt cut, by policy), a positive
  point deep inside its main neuron and a negative point deep inside another, each inside
  supervoxels that are mostly that neuron (only those can change sides); where one supervoxel
  holds more of a second neuron than any cut could move, both points go into that supervoxel,
  so the cut divides it at voxel level.

"Deep inside" is the voxel farthest from the region's surface. An error whose edit was refused
or did not help is tried at most ``patience`` times, then left for later ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import edt
import numpy as np

from segmentation.errors import PromptcutError
from segmentation.focus import ranked_questions
from segmentation.membership import lookup
from segmentation.metrics import Contingency, Scores

Point = tuple[int, int, int]
POLICIES = ("split", "prompt-cut")


@dataclass
class PlannedEdit:
    kind: str  # merge | split | prompt-cut
    key: tuple  # what error it fixes, to count attempts
    first: list[Point]  # merge: first point; cuts: positive / source points
    second: list[Point]  # merge: second point; cuts: negative / sink points
    voxel_level: bool = False  # both points in one supervoxel


@dataclass
class EditRecord:
    edit: int
    kind: str
    voxel_level: bool
    refused: bool
    message: str
    milliseconds: float
    voi: float
    worse: bool


@dataclass
class Simulation:
    policy: str
    scores: list[Scores] = field(default_factory=list)  # after 0, 1, 2, ... edits
    records: list[EditRecord] = field(default_factory=list)


class GroundTruthOracle:
    """Reads the current segmentation (supervoxels and their segments) against ``truth``.

    ``supervoxels`` returns the current supervoxel labels of the whole volume (they change
    when a supervoxel is divided); ``segment_of`` maps supervoxel ids to segment ids.
    """

    def __init__(self, truth: np.ndarray, supervoxels: Callable[[], np.ndarray],
                 segment_of: Callable[[np.ndarray], np.ndarray],
                 voxel_size: Sequence[float] = (1.0, 1.0, 1.0), patience: int = 2,
                 min_division: int = 200):
        self.truth = np.asarray(truth)
        self._read_supervoxels = supervoxels
        self.segment_of = segment_of
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.patience = patience
        self.min_division = min_division  # voxels of a second neuron worth dividing for
        self.attempts: dict[tuple, int] = {}
        self.refresh_supervoxels()

    def refresh_supervoxels(self) -> None:
        """Read the supervoxels again (after an edit divided one)."""
        self.supervoxels = self._read_supervoxels()
        self._sv_table = Contingency.of(self.truth, self.supervoxels)
        self._sv_ids = np.unique(self.supervoxels)

    # -- the state ------------------------------------------------------------------------------
    def table(self) -> Contingency:
        """(ground truth, segment, voxels) for the current membership."""
        return self._sv_table.regrouped(self.segment_of(self._sv_table.seg))

    def scores(self) -> Scores:
        return self.table().scores()

    def segment_volume(self) -> np.ndarray:
        ids = self._sv_ids[self._sv_ids != 0]
        lut = np.zeros(int(ids.max(initial=0)) + 1, np.uint64)
        lut[ids.astype(np.int64)] = self.segment_of(ids)
        return lut[self.supervoxels.astype(np.int64)]

    # -- choosing the next edit -----------------------------------------------------------------
    def errors(self) -> list[tuple[float, str, int]]:
        """(bits of VOI, 'merge' | 'split', segment or neuron id), largest first."""
        table = self.table()
        total = float(table.count.sum())
        if total == 0:
            return []
        rows = []
        for kind, own, other in (("merge", table.seg, table.gt), ("split", table.gt, table.seg)):
            ids, inverse = np.unique(own, return_inverse=True)
            size = np.bincount(inverse, weights=table.count)
            p = table.count / total
            cost = -np.bincount(inverse, weights=p * np.log2(table.count / size[inverse]),
                                minlength=len(ids))
            pieces = np.bincount(inverse, minlength=len(ids))
            for i in np.flatnonzero((pieces > 1) & (cost > 1e-9)):
                rows.append((float(cost[i]), kind, int(ids[i])))
        return sorted(rows, reverse=True)

    def next_edit(self, policy: str) -> Optional[PlannedEdit]:
        """The edit for the largest error not yet tried ``patience`` times."""
        table = self.table()
        owner = _majority(table)
        sv_segment = self.segment_of(self._sv_table.seg)
        for _, kind, which in self.errors():
            target = self._merge_target(table, owner, which) if kind == "split" else \
                self._cut_target(sv_segment, which, policy)
            if target is not None and self.attempts.get(target[0], 0) < self.patience:
                return self._place_points(target)
        return None

    def _merge_target(self, table: Contingency, owner: dict[int, int], neuron: int):
        """The two largest pieces of ``neuron`` that are each mostly this neuron."""
        rows = np.flatnonzero(table.gt == np.uint64(neuron))
        rows = rows[np.argsort(-table.count[rows], kind="stable")]
        pieces = [int(table.seg[r]) for r in rows if owner.get(int(table.seg[r])) == neuron]
        if len(pieces) < 2:
            return None
        a, b = pieces[:2]
        return ("merge", neuron, a, b), "merge", ("segment", a, neuron), \
            ("segment", b, neuron), False

    def _cut_target(self, sv_segment: np.ndarray, segment: int, policy: str):
        """How to take the most out of a segment that holds several neurons.

        A cut between whole supervoxels can only move supervoxels that are mostly the other
        neuron: the neuron with the most voxels in such supervoxels is cut off the one with
        the most, points deep inside those supervoxels. Where one supervoxel holds more of a
        second neuron than that, the supervoxel is divided instead, points inside it.
        """
        t = self._sv_table
        mine = sv_segment == np.uint64(segment)
        svs, truth, counts = t.seg[mine], t.gt[mine], t.count[mine]
        order = np.lexsort((-counts, svs))
        svs, truth, counts = svs[order], truth[order], counts[order]
        first = np.ones(len(svs), bool)
        first[1:] = svs[1:] != svs[:-1]
        owner = dict(zip(svs[first].tolist(), truth[first].tolist()))
        separable: dict[int, int] = {}
        for sv, gt, n in zip(svs[first].tolist(), truth[first].tolist(), counts[first].tolist()):
            separable[gt] = separable.get(gt, 0) + n
        ranked = sorted(separable, key=separable.get, reverse=True)
        cut_gain = separable[ranked[1]] if len(ranked) > 1 else 0
        second = ~first & np.concatenate([[False], first[:-1]])  # each sv's second neuron
        division_gain, mixed = 0, None
        if second.any():
            best = int(np.argmax(np.where(second, counts, -1)))
            division_gain = int(counts[best])
            mixed = (int(svs[best]), int(truth[best - 1]), int(truth[best]))
        if mixed is not None and division_gain > max(cut_gain, self.min_division):
            sv, keep, away = mixed
            return ("voxel", policy, keep, away), policy, ("supervoxels", [sv], keep), \
                ("supervoxels", [sv], away), True
        if cut_gain == 0:
            return None
        keep, away = ranked[0], ranked[1]
        own = [sv for sv, gt in owner.items() if gt == keep]
        other = [sv for sv, gt in owner.items() if gt == away]
        return ("cut", policy, segment, keep, away), policy, ("supervoxels", own, keep), \
            ("supervoxels", other, away), False

    def _place_points(self, target) -> PlannedEdit:
        key, kind, first, second, voxel_level = target
        segments = None
        points = []
        for where, ids, neuron in (first, second):
            if where == "segment":
                if segments is None:
                    segments = self.segment_volume()
                region = segments == np.uint64(ids)
            else:
                region = np.isin(self.supervoxels, np.asarray(ids, np.uint64))
            points.append(self._deepest(region & (self.truth == neuron)))
        return PlannedEdit(kind, key, [points[0]], [points[1]], voxel_level=voxel_level)

    def _deepest(self, mask: np.ndarray) -> Point:
        """The voxel of ``mask`` farthest from its surface."""
        box = tuple(_extent(mask.any(axis=tuple(a for a in range(3) if a != axis)))
                    for axis in range(3))
        crop = np.pad(mask[box], 1)
        distance = edt.edt(crop, anisotropy=self.voxel_size, parallel=1)
        z, y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
        return (int(z) - 1 + box[0].start, int(y) - 1 + box[1].start,
                int(x) - 1 + box[2].start)


def _extent(flags: np.ndarray) -> slice:
    where = np.flatnonzero(flags)
    return slice(int(where[0]), int(where[-1]) + 1)


def _majority(table: Contingency) -> dict[int, int]:
    """Segment -> the neuron it overlaps most."""
    segments, neurons = table.owners()
    return dict(zip(segments.tolist(), neurons.tolist()))


def session_operations(session, user: str) -> dict[str, Callable[[PlannedEdit], object]]:
    """What each key does, called as the keys call it on a ProofreadingSession."""
    return {
        "merge": lambda e: session.merge(user, e.first[0], e.second[0]),
        "split": lambda e: session.split(user, e.first, e.second),
        "prompt-cut": lambda e: session.prompt_cut(user, e.first, e.second),
    }


def simulate(oracle: GroundTruthOracle, operations: dict[str, Callable[[PlannedEdit], object]],
             policy: str, edits: int, progress: Optional[Callable[[int, Scores], None]] = None
             ) -> Simulation:
    """Up to ``edits`` oracle edits; ``operations[kind](edit)`` performs one (and raises a
    PromptcutError when it is refused). Scores are recorded after every edit."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {POLICIES}")
    run = Simulation(policy, [oracle.scores()])
    for number in range(1, edits + 1):
        plan = oracle.next_edit(policy)
        if plan is None:
            break
        oracle.attempts[plan.key] = oracle.attempts.get(plan.key, 0) + 1
        before = run.scores[-1]
        started = time.perf_counter()
        try:
            result = operations[plan.kind](plan)
            refused, message = False, getattr(result, "message", "")
        except PromptcutError as exc:
            refused, message = True, str(exc)
        elapsed = (time.perf_counter() - started) * 1000
        if not refused and (getattr(result, "created", None) or getattr(result, "retired",
                                                                          None)):
            oracle.refresh_supervoxels()  # a supervoxel was divided (or its division undone)
        after = oracle.scores()
        run.scores.append(after)
        run.records.append(EditRecord(number, plan.kind, plan.voxel_level, refused, message,
                                      elapsed, float(after.voi),
                                      bool(after.voi > before.voi + 1e-9)))
        if progress is not None:
            progress(number, after)
    return run


def connected_pieces_floor(truth: np.ndarray) -> Scores:
    """The ground truth scored against its own 6-connected pieces: splits no supervoxel-based
    proofreading can undo when a neuron leaves the volume and comes back."""
    import cc3d

    pieces = cc3d.connected_components(truth, connectivity=6, out_dtype=np.uint64)
    return Contingency.of(truth, pieces).scores()


def yes_floor(rag, segment_of_node: np.ndarray, table: Contingency) -> Scores:
    """The best that "yes" answers can do from a start: every pair of touching segments that
    are mostly one neuron merged, again until none is left. What it leaves is beyond the reach
    of yes/no questions about contacts: the start's merge errors, and neurons whose pieces do not
    touch (e.g. leaving the volume and coming back)."""
    import scipy.sparse
    from scipy.sparse.csgraph import connected_components

    membership = np.asarray(segment_of_node, np.uint64).copy()
    a, b = rag.edge_index()
    while True:
        current = table.relabelled(rag.ids, membership)
        owner = lookup(*current.owners(), membership)  # each node's segment's neuron (0: none)
        join = (membership[a] != membership[b]) & (owner[a] == owner[b]) & (owner[a] != 0)
        if not join.any():
            return current.scores()
        _, ids = np.unique(membership, return_inverse=True)
        n = int(ids.max()) + 1
        graph = scipy.sparse.coo_matrix((np.ones(int(join.sum())), (ids[a[join]], ids[b[join]])),
                                        shape=(n, n))
        _, component = connected_components(graph, directed=False)
        membership = (component[ids] + 1).astype(np.uint64)


def simulate_focused(rag, segment_of_node: np.ndarray, booster, table: Contingency,
                     decisions: int, within=None) -> list[Scores]:
    """The focused policy: an oracle answers the queue's questions from the ground truth
    (yes when both segments are mostly one neuron), ``decisions`` times. ``table`` holds the
    (ground truth, supervoxel) overlaps to score and to answer from; returns the scores after
    0, 1, 2, ... decisions."""
    membership = np.asarray(segment_of_node, np.uint64).copy()
    decided: set = set()

    def current() -> Contingency:
        return table.relabelled(rag.ids, membership)

    scores = [current().scores()]
    for _ in range(decisions):
        questions = ranked_questions(rag, membership, booster, decided, within, limit=1)
        if not questions:
            break
        first, second = questions[0].segments
        owner = _majority(current())
        if owner.get(first, 0) == owner.get(second, -1) != 0:
            membership[membership == np.uint64(second)] = first  # yes: merged
        else:
            decided.add((first, second))  # no: kept apart, never asked again
        scores.append(current().scores())
    return scores
