"""Keyboard proofreading in the viewer: prompts, merge, split, prompt cut, undo, redo, export.

Each proofreader has their own neuroglancer viewer (their own URL), prompt points and undo
history; all of them edit through the one edit service, which tells every viewer what changed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import neuroglancer

from segmentation.errors import InputError
from segmentation.session import OperationResult, Preview
from server.actions import STATUS_KEY, Action
from server.edit_service import EditService
from server.segments import Picture
from server.viewer import (Pointer, draw_membership, require_voxel, segmentation_layer,
                           show_status, to_viewer)

PROMPT_LAYER = "prompts"
PROMPT_SHADER = """
void main() {
  // positive green, negative red, the first point of a pending merge yellow
  setColor(prop_sign() > 0 ? vec3(0.15, 0.9, 0.3) :
           prop_sign() < 0 ? vec3(1.0, 0.25, 0.2) : vec3(1.0, 0.85, 0.1));
  setPointMarkerSize(prop_kept() > 0 ? 7.0 : (prop_sign() == 0 ? 16.0 : 12.0));
}
"""
MODE_STATUS = "promptcut-mode"  # status line of a pending merge or a preview
# what the mode line says otherwise: the line stays, so the panels keep their size (neuroglancer
# gives its status lines room of their own; a line coming and going moved the whole view)
IDLE_MODE = "ready: M merges, K, C or Shift+K preview a cut (Enter commits), Shift+H lists " \
    "all keys"
USER_STATUS = "promptcut-user"  # status line that says who the proofreader is
# the sides of a previewed edit: colours far from neuroglancer's random segment colours' mean
SIDE_COLOURS = [("cyan", "#00e5ff"), ("magenta", "#ff2bd6"), ("orange", "#ff8c00"),
                ("lime", "#a6ff00")]


@dataclass
class PendingEdit:
    """An edit shown but not yet committed: what to commit, and how to work it out again."""

    kind: str
    first: list
    second: list
    preview: Preview
    commit: Callable[[], OperationResult]
    shown_before: set[int] = field(default_factory=set)


@dataclass
class UserState:
    """One proofreader's prompt points, the first point of a pending merge and a previewed
    edit."""

    positives: list[tuple[int, int, int]] = field(default_factory=list)
    negatives: list[tuple[int, int, int]] = field(default_factory=list)
    merge_from: Optional[tuple[int, int, int]] = None
    pending: Optional[PendingEdit] = None


def prompt_layer(dimensions) -> neuroglancer.LocalAnnotationLayer:
    return neuroglancer.LocalAnnotationLayer(
        dimensions=dimensions,
        annotation_properties=[
            neuroglancer.AnnotationPropertySpec(id="sign", type="int8", default=1),
            # 1: a point an earlier cut left on its segment as a constraint (drawn smaller)
            neuroglancer.AnnotationPropertySpec(id="kept", type="int8", default=0)],
        shader=PROMPT_SHADER)


class Proofreading:
    """The keys of one proofreader, and what they do to the session and the viewers."""

    def __init__(self, service: EditService, user: str, viewer: neuroglancer.Viewer,
                 key_reference: Callable[[], list[dict]], merge_timeout: float = 60.0):
        self.service = service
        self.user = user
        self.viewer = viewer
        self.key_reference = key_reference
        self.merge_timeout = merge_timeout  # seconds a pending merge stays armed
        self.state = UserState()
        self._lock = threading.Lock()
        self._expiry: Optional[threading.Timer] = None
        show_status(viewer, USER_STATUS, f"promptcut: you are {user}")
        show_status(viewer, MODE_STATUS, IDLE_MODE)

    def actions(self) -> list[Action]:
        spec: list[tuple[str, str, str, Callable[[Pointer], str]]] = [
            ("promptcut-positive", "keyp", "add a positive prompt point", self.positive),
            ("promptcut-negative", "shift+keyp", "add a negative prompt point", self.negative),
            ("promptcut-cut", "keyc", "preview a prompt cut: the segment reshaped from the "
             "prompts (Enter commits)", self.prompt_cut),
            ("promptcut-merge", "keym", "merge: press on one segment, then on the other",
             self.merge),
            ("promptcut-merge-preview", "shift+keym", "merge with a preview: M on one "
             "segment, Shift+M on the other shows the result (Enter commits)",
             self.merge_preview),
            ("promptcut-split", "keyk", "preview a split of the segment between positive "
             "(source) and negative (sink) prompts (Enter commits)", self.split),
            ("promptcut-divide", "shift+keyk", "preview dividing the supervoxel under your "
             "prompts at voxel level; the negative side leaves the segment (Enter commits)",
             self.divide),
            ("promptcut-commit", "enter", "commit the previewed edit", self.commit),
            ("promptcut-ask", "keyf", "focused proofreading: show the next question (two "
             "segments that may be one neuron, most valuable first)", self.ask),
            ("promptcut-yes", "keyy", "answer the question yes: merge the two segments",
             self.yes),
            ("promptcut-no", "keyw", "answer the question no (wrong pair): keep the two "
             "segments apart", self.no),
            ("promptcut-skip", "shift+keyf", "skip the question: show the next one",
             self.skip),
            ("promptcut-back", "keyg", "go back to the previous question (its answer undone)",
             self.back),
            ("promptcut-review", "keyd", "mark the segment under the mouse reviewed (done); "
             "again unmarks it", self.review),
            ("promptcut-undo", "keyu", "undo your last edit", self.undo),
            ("promptcut-redo", "shift+keyu", "redo your last undone edit", self.redo),
            ("promptcut-clear", "keyq", "clear your prompt points", self.clear),
            ("promptcut-forget", "shift+keyq", "forget the prompt points earlier cuts kept on "
             "the segment under the mouse", self.forget),
            ("promptcut-export", "shift+keye", "export the corrected segmentation",
             self.export),
            ("promptcut-cancel", "escape", "discard a preview, or cancel a pending merge",
             self.cancel),
            ("promptcut-help", "shift+keyh", "show promptcut's keys (Esc closes them)",
             self.help),
        ]
        return [Action(name, key, label, run) for name, key, label, run in spec]

    # -- prompts --------------------------------------------------------------------------------
    def positive(self, pointer: Pointer) -> str:
        return self._add_prompt(pointer, +1)

    def negative(self, pointer: Pointer) -> str:
        return self._add_prompt(pointer, -1)

    def _add_prompt(self, pointer: Pointer, sign: int) -> str:
        voxel = require_voxel(pointer)
        self.service.session.supervoxel_at(voxel, "point")  # refuse background early
        with self._lock:
            (self.state.positives if sign > 0 else self.state.negatives).append(voxel)
            count = len(self.state.positives), len(self.state.negatives)
        self.show_prompts()
        self.service.models.prefetch_around(voxel)  # the cut that follows finds them encoded
        word = "positive" if sign > 0 else "negative"
        return f"{word} point at z {voxel[0]}, y {voxel[1]}, x {voxel[2]} ({count[0]} +, " \
               f"{count[1]} -)"

    def clear(self, pointer: Pointer) -> str:
        with self._lock:
            self.state.positives, self.state.negatives = [], []
        self.show_prompts()
        return "prompt points cleared"

    def show_prompts(self) -> None:
        with self.viewer.txn() as s:
            self.draw_prompts(s)

    def draw_prompts(self, state) -> None:
        """This proofreader's pending points (and the first point of a pending merge), and
        the points earlier cuts kept as constraints (anyone's), into a viewer state being
        changed. Each says, on hover, its sign and the segment it constrains."""
        with self._lock:
            points = [(p, 1, 0) for p in self.state.positives] + \
                [(p, -1, 0) for p in self.state.negatives]
            if self.state.merge_from is not None:
                points.append((self.state.merge_from, 0, 0))
        points += [(p, sign, 1) for p, sign in self.service.session.kept_prompts()]
        state.layers[PROMPT_LAYER].annotations = [
            neuroglancer.PointAnnotation(id=f"prompt{i}", point=[v + 0.5 for v in to_viewer(p)],
                                         props=[sign, kept],
                                         description=self._describe_point(p, sign, kept))
            for i, (p, sign, kept) in enumerate(points)]

    def _describe_point(self, point, sign: int, kept: int) -> str:
        segment = self.service.session._segment_at(point)  # cached per point: a redraw per edit
        if sign == 0:
            return f"merge from segment {segment}"
        word = "positive" if sign > 0 else "negative"
        return f"{word}{' (kept by an earlier cut)' if kept else ''}: segment {segment}"

    # -- edits ----------------------------------------------------------------------------------
    def merge(self, pointer: Pointer) -> str:
        return self._merge(pointer, preview=False)

    def merge_preview(self, pointer: Pointer) -> str:
        return self._merge(pointer, preview=True)

    def _merge(self, pointer: Pointer, preview: bool) -> str:
        voxel = require_voxel(pointer)
        session = self.service.session
        with self._lock:
            first = self.state.merge_from
            if first is None:
                segment = session.segment_of(session.supervoxel_at(voxel, "point"))
                self.state.merge_from = voxel
        if first is None:
            self._arm(segment)
            return f"merge: segment {segment} chosen; press M over the segment to join"
        if preview:
            self._disarm()
            return self._propose("merge", first, voxel,
                                 lambda: self.service.merge(self.user, first, voxel))
        self._disarm(redraw=False)  # the merge's own redraw takes the yellow point off
        try:
            return self._report(self.service.merge(self.user, first, voxel))
        except Exception:
            self.show_prompts()  # refused: take it off here
            raise

    def cancel(self, pointer: Pointer) -> str:
        if self._end_preview(restore=True):
            return "preview discarded: nothing changed"
        return "merge cancelled" if self._disarm() else "nothing pending"

    def _arm(self, segment: int) -> None:
        """A pending merge shows: its first point (yellow) and a status line, until it is
        completed, cancelled (Esc) or expires."""
        self.show_prompts()
        show_status(self.viewer, MODE_STATUS,
                    f"merge pending from segment {segment}: M over the other segment joins "
                    f"them (Shift+M shows the result first), Esc cancels (expires in "
                    f"{self.merge_timeout:.0f} s)")
        timer = threading.Timer(self.merge_timeout, self._expire)
        timer.daemon = True
        with self._lock:
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry = timer
        timer.start()

    def _expire(self) -> None:
        if self._disarm():
            show_status(self.viewer, STATUS_KEY, "the pending merge expired")

    def _disarm(self, redraw: bool = True) -> bool:
        """Forget a pending merge (``redraw``: take its point off the screen now, else the
        caller's next redraw does); whether there was one."""
        with self._lock:
            pending = self.state.merge_from is not None
            self.state.merge_from = None
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None
        show_status(self.viewer, MODE_STATUS, IDLE_MODE)
        if pending and redraw:
            self.show_prompts()
        return pending

    def split(self, pointer: Pointer) -> str:
        sources, sinks = self._both_signs("a split needs positive (P) and negative (Shift+P) "
                                          "points")
        return self._propose("split", sources, sinks,
                             lambda: self.service.split(self.user, sources, sinks))

    def divide(self, pointer: Pointer) -> str:
        sources, sinks = self._both_signs("dividing a supervoxel needs a positive (P) and a "
                                          "negative (Shift+P) point in it")
        return self._propose("split-supervoxel", sources, sinks,
                             lambda: self.service.split_supervoxel(self.user, sources, sinks))

    def prompt_cut(self, pointer: Pointer) -> str:
        with self._lock:
            positives, negatives = list(self.state.positives), list(self.state.negatives)
        if not positives:
            raise InputError("add a positive point (P) over the segment first")
        return self._propose("prompt-cut", positives, negatives,
                             lambda: self.service.prompt_cut(self.user, positives, negatives))

    def _both_signs(self, refusal: str) -> tuple[list, list]:
        with self._lock:
            sources, sinks = list(self.state.positives), list(self.state.negatives)
        if not sources or not sinks:
            raise InputError(refusal)
        return sources, sinks

    # -- previews -------------------------------------------------------------------------------
    def _propose(self, kind: str, first, second, commit: Callable[[], OperationResult]) -> str:
        """Work an edit out and show it (this viewer only); Enter commits it, Esc discards."""
        preview = self.service.preview(kind, first, second)
        self._end_preview(restore=False)
        pending = PendingEdit(kind, first, second, preview, commit)
        with self.viewer.txn() as s:
            layer = segmentation_layer(s)
            if layer is not None:
                pending.shown_before = {int(v) for v in layer.segments}
            with self._lock:
                self.state.pending = pending
            self.draw_preview(s)
        show_status(self.viewer, MODE_STATUS, "a preview is shown (nothing is changed yet): "
                                              "Enter commits it, Esc discards it")
        return self._describe_preview(preview)

    def pending_picture(self) -> Optional[Picture]:
        """The membership as this proofreader's preview shows it (None: no preview)."""
        with self._lock:
            pending = self.state.pending
        return self.service.membership.picture_with(pending.preview.delta) if pending else None

    def draw_preview(self, state) -> None:
        """A pending preview's sides, in their colours and in 3D, into a viewer state being
        changed (also after others' edits, which would otherwise draw over it)."""
        with self._lock:
            pending = self.state.pending
        if pending is None or segmentation_layer(state) is None:
            return
        picture = self.pending_picture()
        preview = pending.preview
        sides = self._side_ids(preview, picture)
        draw_membership(state, picture.groups, set(sides.values()))
        segmentation_layer(state).segment_colors = {
            shown: SIDE_COLOURS[i % len(SIDE_COLOURS)][1] for i, shown in enumerate(
                sides.values())}

    def _side_ids(self, preview: Preview, picture: Picture) -> dict[int, int]:
        """segment after the edit -> the id neuroglancer shows it by in the preview; a
        division's sides are not drawn apart (its pieces have no voxels served yet): the
        segment that holds the supervoxel is."""
        segments = preview.segments
        if preview.divided:
            segments = [self.service.session.segment_of(preview.divided)]
        return {seg: picture.representative.get(seg, seg) for seg in segments}

    def _describe_preview(self, preview: Preview) -> str:
        sides = ", ".join(
            f"segment {seg} {voxels:,} voxels in {count} supervoxel{'s' if count != 1 else ''}"
            f" ({SIDE_COLOURS[i % len(SIDE_COLOURS)][0]})"
            for i, (seg, (voxels, count)) in enumerate(preview.sizes.items()))
        what = {"merge": "merge", "split": "split", "prompt-cut": "prompt cut",
                "split-supervoxel": f"divide supervoxel {preview.divided}"}[preview.kind]
        removed = f"; segment{'s' if len(preview.removed) > 1 else ''} " \
            f"{', '.join(map(str, preview.removed))} would go" if preview.removed else ""
        return f"preview of {what}: {sides}{removed}"

    def _end_preview(self, restore: bool) -> bool:
        """Drop a pending preview (``restore``: redraw the membership as it is); whether there
        was one."""
        with self._lock:
            pending, self.state.pending = self.state.pending, None
        if pending is not None:
            self._undraw(pending, restore)
        return pending is not None

    def _undraw(self, pending: PendingEdit, restore: bool) -> None:
        """Take a preview off the screen: its colours and status line, and with ``restore``
        its picture too (what was shown in 3D before comes back). The prompt points are
        drawn again in the same push (a commit clears them)."""
        show_status(self.viewer, MODE_STATUS, IDLE_MODE)
        with self.viewer.txn() as s:
            self.draw_prompts(s)
            layer = segmentation_layer(s)
            if layer is None:
                return
            layer.segment_colors = {}
            if restore:
                view = self.service.membership
                picture = view.picture()
                shown = {view.segment_of(v) for v in pending.shown_before} - {0}
                draw_membership(s, picture.groups,
                                {picture.representative.get(v, v) for v in shown})

    def commit(self, pointer: Pointer) -> str:
        with self._lock:
            pending, self.state.pending = self.state.pending, None
        if pending is None:
            raise InputError("nothing to commit: K, C, Shift+K or Shift+M show an edit first")
        if pending.preview.stale(self.service.session.log):
            message = self._propose(pending.kind, pending.first, pending.second, pending.commit)
            return f"the segments changed since the preview; {message}: Enter commits it"
        try:
            result = pending.commit()  # the viewers redraw with it (no preview on top now)
        except Exception:
            with self._lock:  # refused (a busy segment, say): the preview stays
                if self.state.pending is None:
                    self.state.pending = pending
            raise
        if pending.kind != "merge":  # the points did their work (drawn off just below)
            with self._lock:
                self.state.positives, self.state.negatives = [], []
        self._undraw(pending, restore=False)
        return self._report(result)

    def review(self, pointer: Pointer) -> str:
        voxel = require_voxel(pointer)
        session = self.service.session
        segment = session.segment_of(session.supervoxel_at(voxel, "point"))
        return self._report(self.service.review(self.user, segment,
                                                segment not in session.reviewed()))

    def forget(self, pointer: Pointer) -> str:
        return self._report(self.service.forget_prompts(self.user, require_voxel(pointer)))

    def undo(self, pointer: Pointer) -> str:
        return self._report(self.service.undo(self.user))

    def redo(self, pointer: Pointer) -> str:
        return self._report(self.service.redo(self.user))

    def export(self, pointer: Pointer) -> str:
        return f"exported to {self.service.export()}"

    # -- focused proofreading -------------------------------------------------------------------
    def ask(self, pointer: Pointer) -> str:
        return self.show_question(self.service.question(self.user))

    def yes(self, pointer: Pointer) -> str:
        return self._answer(True)

    def no(self, pointer: Pointer) -> str:
        return self._answer(False)

    def skip(self, pointer: Pointer) -> str:
        return self.show_question(self.service.skip(self.user), "skipped; ")

    def back(self, pointer: Pointer) -> str:
        ask, undone = self.service.back(self.user)
        return self.show_question(ask, f"{undone.message}; " if undone else "")

    def _answer(self, yes: bool) -> str:
        result = self.service.answer(self.user, yes)
        return self.show_question(self.service.question(self.user),
                                   f"{self._report(result)}; ")

    def show_question(self, ask, done: str = "") -> str:
        """Centre the view on the question's contact and show its two segments in the side
        colours (selected: in 3D, and brighter in 2D); the mode line says what the keys do.
        The dashboard's questions come here too, through the API."""
        if ask is None:
            show_status(self.viewer, MODE_STATUS, IDLE_MODE)
            with self.viewer.txn() as s:
                layer = segmentation_layer(s)
                if layer is not None:
                    layer.segment_colors = {}
            return f"{done}no question left to ask"
        membership = self.service.membership
        shown = [membership.shown_as(segment) for segment in ask.segments]
        with self.viewer.txn() as s:
            s.position = [v + 0.5 for v in to_viewer(ask.contact)]
            layer = segmentation_layer(s)
            if layer is not None:
                layer.segments = set(shown)
                layer.segment_colors = {i: colour for i, (_, colour) in zip(shown,
                                                                            SIDE_COLOURS)}
        (a, first), (b, second) = zip(ask.segments, (name for name, _ in SIDE_COLOURS))
        show_status(self.viewer, MODE_STATUS,
                    f"question: are segments {a} ({first}) and {b} ({second}) one neuron? "
                    f"Y yes (merge), W no (keep apart), Shift+F skip, G back")
        return f"{done}question: segments {a} and {b} (model: {ask.question.probability:.0%} " \
            f"one neuron)"

    def help(self, pointer: Pointer) -> str:
        """The overlay itself is drawn in the page (static/promptcut_keys.js)."""
        return (f"you are {self.user}: promptcut's {len(self.key_reference())} keys are in the "
                f"overlay (Esc closes it); H lists neuroglancer's own")

    @staticmethod
    def _report(result: OperationResult) -> str:
        return f"{result.message} [operation {result.operation}, {result.milliseconds:.0f} ms]"
