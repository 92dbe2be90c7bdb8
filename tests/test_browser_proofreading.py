"""Proofreading with the keyboard in headless Chromium: merge, undo, split and prompt cut on the
segmented demo, checked against the server's membership and edit log."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from server.viewer import to_viewer
from tests.browser_util import PANEL, coloured_fraction, wait_for_panel

pytestmark = pytest.mark.browser


def inside(labels: np.ndarray, sv: int) -> tuple[int, int, int]:
    """A voxel deep inside supervoxel ``sv``, in the section where it is largest."""
    mask = labels == sv
    z = int(np.argmax(mask.sum(axis=(1, 2))))
    depth = ndimage.distance_transform_edt(np.pad(mask[z], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    return z, int(y), int(x)


class Driver:
    """Puts the mouse on a voxel (by centring the view on it) and presses keys."""

    def __init__(self, page, session):
        self.page, self.session = page, session
        self.router = session.router

    def hover(self, voxel) -> None:
        with self.session.viewer.txn() as s:
            s.position = [v + 0.5 for v in to_viewer(voxel)]
        box = None
        deadline = time.monotonic() + 20
        while box is None and time.monotonic() < deadline:  # panels are rebuilt now and then
            box = self.page.locator(PANEL).first.bounding_box(timeout=5000)
        assert box is not None, "the data panel is gone"
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self.page.mouse.move(cx + 3, cy + 3)
        self.page.mouse.move(cx, cy)
        time.sleep(0.6)

    def press(self, key: str, voxel):
        self.hover(voxel)
        seen = self.router.last_sequence
        self.page.keyboard.press(key)
        report = self.router.wait_for_report(seen, 30)
        assert report is not None, f"no report for {key}"
        return report

    def segment_seen_at(self, voxel, expected: int, timeout: float = 30) -> int:
        """The id the browser shows under the mouse, waiting for it to become ``expected``."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            report = self.press("i", voxel)
            seen = report.pointer.selected.get("supervoxels")
            if seen == expected:
                return seen
            time.sleep(0.5)
        return seen


def test_merge_undo_split_and_prompt_cut_from_the_keyboard(browser, segmented_session):
    session = segmented_session
    proof = session.proofreading
    labels = session.project.volume("segmentation").read(slice(None), slice(None), slice(None))
    with session.viewer.txn() as s:
        s.layout = "xy"
        s.cross_section_scale = 0.5
    page = browser.new_page()
    driver = Driver(page, session)
    try:
        page.goto(session.viewer_url)
        wait_for_panel(page, lambda p: coloured_fraction(p) > 0.3)
        # two touching supervoxels of different segments, both large
        rag = proof.rag
        a, b = rag.edge_index()
        big = (rag.size[a] > 2000) & (rag.size[b] > 2000) & (proof.segment[a] != proof.segment[b])
        edge = int(np.flatnonzero(big)[0])
        sv_a, sv_b = int(rag.ids[a[edge]]), int(rag.ids[b[edge]])
        at_a, at_b = inside(labels, sv_a), inside(labels, sv_b)
        seg_a, seg_b = proof.segment_of(sv_a), proof.segment_of(sv_b)
        operations = len(proof.log)

        # merge: M on one segment, M on the other
        assert driver.press("m", at_a).ok
        report = driver.press("m", at_b)
        assert report.ok and report.message.startswith("merged"), report.message
        merged = proof.segment_of(sv_a)
        assert proof.segment_of(sv_b) == merged
        assert driver.segment_seen_at(at_b, merged) == merged  # the browser shows the merge
        assert [e.kind for e in proof.log.entries()][operations:] == ["merge"]

        # undo
        report = driver.press("u", at_b)
        assert report.ok and "undid merge" in report.message
        assert (proof.segment_of(sv_a), proof.segment_of(sv_b)) == (seg_a, seg_b)
        assert driver.segment_seen_at(at_b, seg_b) == seg_b

        # split: a segment of several supervoxels, P on one member, Shift+P on another
        members = proof.members_of(seg_a)
        if len(members) < 2:
            members = proof.members_of(seg_b)
        sizes = rag.size[rag.node_index(members)]
        first, second = (int(v) for v in members[np.argsort(-sizes)[:2]])
        at_first, at_second = inside(labels, first), inside(labels, second)
        assert driver.press("p", at_first).ok
        assert driver.press("Shift+P", at_second).ok
        report = driver.press("k", at_second)
        assert report.ok and report.message.startswith("split"), report.message
        assert proof.segment_of(first) != proof.segment_of(second)
        assert driver.segment_seen_at(at_second, proof.segment_of(second)) == \
            proof.segment_of(second)

        # prompt cut: positives on both pieces bring them back together
        assert driver.press("p", at_first).ok
        assert driver.press("p", at_second).ok
        report = driver.press("c", at_first)
        assert report.ok and report.message.startswith("prompt-cut"), report.message
        assert proof.segment_of(first) == proof.segment_of(second)
        assert driver.segment_seen_at(at_second, proof.segment_of(first)) == \
            proof.segment_of(first)

        kinds = [e.kind for e in proof.log.entries()][operations:]
        assert kinds == ["merge", "undo", "split", "prompt-cut"]
        # the log replays to the membership the server holds
        replayed = proof.segment.copy()
        for entry in reversed(list(proof.log.entries())):
            replayed[rag.node_index(entry.delta[:, 0])] = entry.delta[:, 1]
        for entry in proof.log.entries():
            replayed[rag.node_index(entry.delta[:, 0])] = entry.delta[:, 2]
        np.testing.assert_array_equal(replayed, proof.segment)
    finally:
        page.close()
        session.reset_view()
