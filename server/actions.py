"""Keyboard actions that run off the viewer's IOLoop and report in its status bar.

neuroglancer calls action handlers on its server thread; anything slow there freezes every
connected browser. The router only captures the mouse state there and hands the work to its own
worker thread, which reports the outcome (or the domain error) as a status message.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import neuroglancer

from segmentation.errors import PromptcutError
from server.viewer import Pointer, show_status

log = logging.getLogger(__name__)
STATUS_KEY = "promptcut"


# keys neuroglancer binds on its data panels (Enter finishes an annotation): bound there too
PANEL_KEYS = {"enter"}


@dataclass(frozen=True)
class Action:
    name: str  # promptcut's id for it, e.g. "promptcut-info"
    key: str  # neuroglancer key name, e.g. "keyi"
    label: str  # for the help and the README
    run: Callable[[Pointer], str] = field(compare=False)

    @property
    def title(self) -> str:
        """What neuroglancer binds and its help panel (H) lists: a sentence, not an id."""
        return f"promptcut: {self.label}"


@dataclass
class ActionReport:
    action: str
    ok: bool
    message: str
    pointer: Pointer
    milliseconds: float
    sequence: int
    finished: float = 0.0  # time.perf_counter() when done, to time what follows


class ActionRouter:
    """Binds actions to keys and runs them, in order, on one worker thread."""

    def __init__(self, viewer: neuroglancer.Viewer, history: int = 200):
        self.viewer = viewer
        self.actions: dict[str, Action] = {}
        self.reports: collections.deque[ActionReport] = collections.deque(maxlen=history)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptcut-action")
        self._changed = threading.Condition()
        self._sequence = 0
        self._last_pointer: Optional[Pointer] = None
        self._last_pointer_at = 0.0

    def register(self, action: Action) -> None:
        self.actions[action.name] = action
        self.viewer.actions.add(action.title, lambda state: self.dispatch(action.name, state))
        with self.viewer.config_state.txn() as s:
            s.input_event_bindings.viewer[action.key] = action.title
            if action.key in PANEL_KEYS:  # else a focused panel's own binding takes the key
                s.input_event_bindings.data_view[action.key] = action.title

    def dispatch(self, name: str, state) -> Future:
        """Called on the viewer's IOLoop: capture the pointer, queue the work, return at once.

        A key pressed after the server changed the viewer's state, with the mouse not moved
        since, comes without coordinates (the browser rebuilt its panels): it acts where the
        mouse was at the last key, which is where it still is."""
        pointer = Pointer.from_action_state(state)
        now = time.monotonic()
        if pointer.voxel is not None:
            self._last_pointer, self._last_pointer_at = pointer, now
        elif self._last_pointer is not None and \
                getattr(self.viewer, "pushed_at", 0.0) > self._last_pointer_at:
            pointer = self._last_pointer
        return self.submit(name, pointer)

    def submit(self, name: str, pointer: Pointer) -> Future:
        action = self.actions[name]
        return self._worker.submit(self._run, action, pointer)

    def _run(self, action: Action, pointer: Pointer) -> ActionReport:
        started = time.perf_counter()
        try:
            message, ok = action.run(pointer), True
        except PromptcutError as exc:
            message, ok = f"{action.label}: {exc}", False
        except Exception as exc:  # a bug must not kill the worker or go unseen
            log.exception("action %s failed", action.name)
            message, ok = f"{action.label}: internal error ({type(exc).__name__}: {exc})", False
        elapsed = (time.perf_counter() - started) * 1000
        with self._changed:
            self._sequence += 1
            report = ActionReport(action.name, ok, message, pointer, elapsed, self._sequence,
                                  time.perf_counter())
            self.reports.append(report)
            self._changed.notify_all()
        show_status(self.viewer, STATUS_KEY, message)
        return report

    def wait_for_report(self, after: int, timeout: float) -> Optional[ActionReport]:
        """The first report with a sequence number above ``after`` (for tests and the API)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                newer = [r for r in self.reports if r.sequence > after]
                if newer:
                    return newer[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def reports_after(self, after: int) -> list[ActionReport]:
        """The reports with a sequence number above ``after``, oldest first."""
        with self._changed:
            return [r for r in self.reports if r.sequence > after]

    @property
    def last_sequence(self) -> int:
        return self._sequence

    def key_reference(self) -> list[dict[str, str]]:
        return [{"key": describe_key(a.key), "binding": a.key, "action": a.label}
                for a in self.actions.values()]

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


def describe_key(binding: str) -> str:
    """'shift+keyp' -> 'Shift+P', as a person would write it."""
    parts = binding.split("+")
    words = [p.capitalize() for p in parts[:-1]]
    last = parts[-1]
    words.append(last[3:].upper() if last.startswith("key") else last.capitalize())
    return "+".join(words)
