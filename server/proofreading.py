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
from segmentation.session import OperationResult
from server.actions import STATUS_KEY, Action
from server.edit_service import EditService
from server.viewer import Pointer, require_voxel, show_status, to_viewer

PROMPT_LAYER = "prompts"
PROMPT_SHADER = """
void main() {
  // positive green, negative red, the first point of a pending merge yellow
  setColor(prop_sign() > 0 ? vec3(0.15, 0.9, 0.3) :
           prop_sign() < 0 ? vec3(1.0, 0.25, 0.2) : vec3(1.0, 0.85, 0.1));
  setPointMarkerSize(prop_kept() > 0 ? 7.0 : (prop_sign() == 0 ? 16.0 : 12.0));
}
"""
MODE_STATUS = "promptcut-mode"  # status line of a pending merge
USER_STATUS = "promptcut-user"  # status line that says who the proofreader is


@dataclass
class UserState:
    """One proofreader's prompt points and the first point of a pending merge."""

    positives: list[tuple[int, int, int]] = field(default_factory=list)
    negatives: list[tuple[int, int, int]] = field(default_factory=list)
    merge_from: Optional[tuple[int, int, int]] = None


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

    def actions(self) -> list[Action]:
        spec: list[tuple[str, str, str, Callable[[Pointer], str]]] = [
            ("promptcut-positive", "keyp", "add a positive prompt point", self.positive),
            ("promptcut-negative", "shift+keyp", "add a negative prompt point", self.negative),
            ("promptcut-cut", "keyc", "prompt cut: reshape the segment from the prompts",
             self.prompt_cut),
            ("promptcut-merge", "keym", "merge: press on one segment, then on the other",
             self.merge),
            ("promptcut-split", "keyk", "split the segment between positive (source) and "
             "negative (sink) prompts", self.split),
            ("promptcut-divide", "shift+keyk", "divide the supervoxel under your prompts at "
             "voxel level; the negative side leaves the segment", self.divide),
            ("promptcut-undo", "keyu", "undo your last edit", self.undo),
            ("promptcut-redo", "shift+keyu", "redo your last undone edit", self.redo),
            ("promptcut-clear", "keyq", "clear your prompt points", self.clear),
            ("promptcut-forget", "shift+keyq", "forget the prompt points earlier cuts kept on "
             "the segment under the mouse", self.forget),
            ("promptcut-export", "shift+keye", "export the corrected segmentation",
             self.export),
            ("promptcut-cancel", "escape", "cancel a pending merge", self.cancel),
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
        self._disarm()
        return self._report(self.service.merge(self.user, first, voxel))

    def cancel(self, pointer: Pointer) -> str:
        return "merge cancelled" if self._disarm() else "nothing pending"

    def _arm(self, segment: int) -> None:
        """A pending merge shows: its first point (yellow) and a status line, until it is
        completed, cancelled (Esc) or expires."""
        self.show_prompts()
        show_status(self.viewer, MODE_STATUS,
                    f"merge pending from segment {segment}: M over the other segment joins "
                    f"them, Esc cancels (expires in {self.merge_timeout:.0f} s)")
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

    def _disarm(self) -> bool:
        """Forget a pending merge; whether there was one."""
        with self._lock:
            pending = self.state.merge_from is not None
            self.state.merge_from = None
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None
        show_status(self.viewer, MODE_STATUS, None)
        if pending:
            self.show_prompts()
        return pending

    def split(self, pointer: Pointer) -> str:
        with self._lock:
            sources, sinks = list(self.state.positives), list(self.state.negatives)
        if not sources or not sinks:
            raise InputError("a split needs positive (P) and negative (Shift+P) points")
        result = self.service.split(self.user, sources, sinks)
        self.clear(pointer)
        return self._report(result)

    def divide(self, pointer: Pointer) -> str:
        with self._lock:
            sources, sinks = list(self.state.positives), list(self.state.negatives)
        if not sources or not sinks:
            raise InputError("dividing a supervoxel needs a positive (P) and a negative "
                             "(Shift+P) point in it")
        result = self.service.split_supervoxel(self.user, sources, sinks)
        self.clear(pointer)
        return self._report(result)

    def forget(self, pointer: Pointer) -> str:
        return self._report(self.service.forget_prompts(self.user, require_voxel(pointer)))

    def prompt_cut(self, pointer: Pointer) -> str:
        with self._lock:
            positives, negatives = list(self.state.positives), list(self.state.negatives)
        if not positives:
            raise InputError("add a positive point (P) over the segment first")
        result = self.service.prompt_cut(self.user, positives, negatives)
        self.clear(pointer)
        return self._report(result)

    def undo(self, pointer: Pointer) -> str:
        return self._report(self.service.undo(self.user))

    def redo(self, pointer: Pointer) -> str:
        return self._report(self.service.redo(self.user))

    def export(self, pointer: Pointer) -> str:
        return f"exported to {self.service.export()}"

    def help(self, pointer: Pointer) -> str:
        """The overlay itself is drawn in the page (static/promptcut_keys.js)."""
        return (f"you are {self.user}: promptcut's {len(self.key_reference())} keys are in the "
                f"overlay (Esc closes it); H lists neuroglancer's own")

    @staticmethod
    def _report(result: OperationResult) -> str:
        return f"{result.message} [operation {result.operation}, {result.milliseconds:.0f} ms]"
