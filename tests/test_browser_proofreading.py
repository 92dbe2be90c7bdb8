"""Proofreading with the keyboard in headless Chromium: merge, undo, split and prompt cut on the
segmented demo, checked against the server's membership and edit log."""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from scipy import ndimage

from server.api import DEFAULT_USER
from server.viewer import segmentation_layer, voxels_loading
from tests.browser_util import (Driver, coloured_fraction, inside, panel_box, panel_pixels,
                                touching_pair, wait_for_panel)

pytestmark = pytest.mark.browser


@contextmanager
def proofreading_page(browser, session):
    """The session's viewer in a page, xy layout zoomed in on the volume's centre, segments
    drawn: (page, driver). (Earlier tests leave the view wherever their last edit was.)"""
    session.reset_view()
    with session.viewer.txn() as s:
        s.layout = "xy"
        s.cross_section_scale = 0.5
    page = browser.new_page()
    try:
        page.goto(session.viewer_url)
        wait_for_panel(page, lambda p: coloured_fraction(p) > 0.2)
        yield page, Driver(page, session)
    finally:
        page.close()


def largest_supervoxel(proof) -> int:
    graph = proof.graph
    live = proof.segment != 0
    return int(graph.ids[live][np.argmax(graph.size[live])])


def two_largest_members(proof, segments) -> tuple[int, int]:
    """The two largest supervoxels of the first of ``segments`` that has two or more."""
    graph = proof.graph
    for segment in segments:
        members = proof.members_of(segment)
        if len(members) >= 2:
            sizes = graph.size[graph.node_index(members)]
            first, second = members[np.argsort(-sizes)[:2]]
            return int(first), int(second)
    raise AssertionError("no segment of two supervoxels among these")


def test_merge_undo_split_and_prompt_cut_from_the_keyboard(browser, segmented_session):
    session = segmented_session
    proof = session.proofreading
    labels = proof.supervoxels.read(slice(None), slice(None), slice(None))
    graph = proof.graph
    with proofreading_page(browser, session) as (page, driver):
        sv_a, sv_b = touching_pair(proof, 0)
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
        first, second = two_largest_members(proof, (seg_a, seg_b))
        at_first, at_second = inside(labels, first), inside(labels, second)
        assert driver.press("p", at_first).ok
        assert driver.press("Shift+P", at_second).ok
        report = driver.press("k", at_second)
        assert report.ok and report.message.startswith("preview of split"), report.message
        assert len(proof.log) == operations + 2  # nothing logged before the commit
        report = driver.press("Enter")
        assert report.ok and report.message.startswith("split"), report.message
        assert proof.segment_of(first) != proof.segment_of(second)
        assert driver.segment_seen_at(at_second, proof.segment_of(second)) == \
            proof.segment_of(second)

        # prompt cut: positives on both pieces bring them back together
        assert driver.press("p", at_first).ok
        assert driver.press("p", at_second).ok
        report = driver.press("c", at_first)
        assert report.ok and report.message.startswith("preview of prompt cut"), report.message
        report = driver.press("Enter")
        assert report.ok and report.message.startswith("prompt-cut"), report.message
        assert proof.segment_of(first) == proof.segment_of(second)
        assert driver.segment_seen_at(at_second, proof.segment_of(first)) == \
            proof.segment_of(first)

        kinds = [e.kind for e in proof.log.entries()][operations:]
        assert kinds == ["merge", "undo", "split", "prompt-cut"]
        # the log replays to the membership the server holds
        replayed = proof.segment.copy()
        for entry in reversed(list(proof.log.entries())):
            replayed[graph.node_index(entry.delta[:, 0])] = entry.delta[:, 1]
        for entry in proof.log.entries():
            replayed[graph.node_index(entry.delta[:, 0])] = entry.delta[:, 2]
        np.testing.assert_array_equal(replayed, proof.segment)
        session.reset_view()


def test_keys_pressed_without_moving_the_mouse_all_arrive(browser, segmented_session):
    """As a person works: the mouse rests on a segment while several keys are pressed, each
    after the status line has answered the one before. The server changing the viewer's
    state after a key (prompt points, edits) must not make the next key lose the mouse."""
    session = segmented_session
    proof = session.proofreading
    labels = proof.supervoxels.read(slice(None), slice(None), slice(None))
    with proofreading_page(browser, session) as (page, driver):
        sv_a, sv_b = touching_pair(proof, -1)
        at_a, at_b = inside(labels, sv_a), inside(labels, sv_b)
        assert driver.press("m", at_a).ok
        merged = driver.press("m", at_b)  # the one mouse move; from here on it rests
        assert merged.ok and merged.message.startswith("merged"), merged.message
        operation = len(proof.log)
        expected = [("p", "positive point"), ("Shift+P", "negative point"),
                    ("q", "prompt points cleared"), ("p", "positive point"),
                    ("q", "prompt points cleared"), ("u", "undid merge"),
                    ("Shift+U", "redid merge"), ("u", "undid merge"),
                    ("Shift+U", "redid merge"), ("i", "segment")]
        for key, start in expected:
            time.sleep(0.5)  # reading the status line
            report = driver.press(key)
            assert report.ok and report.message.startswith(start), (key, report.message)
            assert report.pointer.voxel == at_b
        assert [e.kind for e in proof.log.entries()][operation:] == \
            ["undo", "redo", "undo", "redo"]
        assert proof.segment_of(sv_a) == proof.segment_of(sv_b)


def test_dividing_a_supervoxel_from_the_keyboard_redraws_it(browser, segmented_session):
    """P and Shift+P in one supervoxel, Shift+K: the supervoxel is divided at voxel level,
    the browser shows the negative piece in another segment than the positive one, and undo
    brings it back."""
    session = segmented_session
    proof = session.proofreading
    labels = proof.supervoxels.read(slice(None), slice(None), slice(None))
    big = largest_supervoxel(proof)
    first, second = _far_apart_in(labels, big)
    before = proof.segment_of(big)
    with proofreading_page(browser, session) as (page, driver):
        assert driver.press("p", first).ok
        assert driver.press("Shift+P", second).ok
        report = driver.press("Shift+K")
        assert report.ok and f"preview of divide supervoxel {big}" in report.message, \
            report.message
        report = driver.press("Enter")
        assert report.ok and f"supervoxel {big} divided into" in report.message, report.message
        piece, kept = int(proof.locate(second)), int(proof.locate(first))
        assert big not in (piece, kept) and proof.segment_of(piece) != proof.segment_of(kept)
        shown = proof.segment_of(piece)
        assert driver.segment_seen_at(second, shown) == shown  # chunks re-read, divided
        report = driver.press("u")
        assert report.ok and "undid split-supervoxel" in report.message, report.message
        assert int(proof.locate(second)) == big
        assert driver.segment_seen_at(second, before) == before


def test_keys_read_as_sentences_in_neuroglancer_s_help_and_shift_h_shows_them_all(
        browser, segmented_session):
    """H is neuroglancer's help panel: promptcut's keys appear there as sentences, not ids.
    It leaves out Shift+letter keys, so Shift+H opens promptcut's own overlay of every key;
    Esc closes it."""
    session = segmented_session
    with proofreading_page(browser, session) as (page, driver):
        report = driver.press("Shift+H", (80, 125, 125))
        assert report.ok and "overlay" in report.message and "proofreader" in report.message
        page.wait_for_selector("#promptcut-key-overlay", timeout=10000)
        page.screenshot(path=str(Path(tempfile.gettempdir()) / "promptcut-key-overlay.png"))
        overlay = " ".join(page.inner_text("#promptcut-key-overlay").split())
        for action in session.router.actions.values():
            assert action.label in overlay, action.label
        assert "Shift+K" in overlay and "promptcut-" not in overlay
        page.keyboard.press("Escape")
        page.wait_for_selector("#promptcut-key-overlay", state="detached", timeout=5000)
        page.keyboard.press("h")  # neuroglancer's own help panel
        page.wait_for_function("document.body.innerText.includes('promptcut: merge')",
                               timeout=20000)
        help_text = " ".join(page.inner_text("body").split())
        unshifted = [a for a in session.router.actions.values() if "shift" not in a.key]
        assert unshifted and all(a.title in help_text for a in unshifted)
        page.keyboard.press("h")


def test_a_pending_merge_shows_until_completed_cancelled_or_expired(browser,
                                                                    segmented_session):
    from server.proofreading import IDLE_MODE, MODE_STATUS, PROMPT_LAYER, USER_STATUS

    session = segmented_session
    proof = session.proofreading
    labels = proof.supervoxels.read(slice(None), slice(None), slice(None))
    keys = session.users[session.default_user]

    def pending_points():
        return [a for a in session.viewer.state.layers[PROMPT_LAYER].annotations
                if a.props[0] == 0]

    def status():
        return dict(session.viewer.config_state.state.status_messages)

    with proofreading_page(browser, session) as (page, driver):
        sv_a, sv_b = touching_pair(proof, 4)
        at_a = inside(labels, sv_a)
        assert status()[USER_STATUS] == "promptcut: you are proofreader"
        report = driver.press("m", at_a)
        assert report.ok and "chosen" in report.message
        assert len(pending_points()) == 1 and "merge from segment" in \
            pending_points()[0].description
        assert "merge pending" in status()[MODE_STATUS]
        page.wait_for_function("document.body.innerText.includes('merge pending')",
                               timeout=10000)  # the person sees it
        report = driver.press("Escape")
        assert report.message == "merge cancelled"
        assert pending_points() == [] and status()[MODE_STATUS] == IDLE_MODE
        operations = len(proof.log)
        keys.merge_timeout = 1.0
        try:
            driver.press("m", at_a)
            deadline = time.monotonic() + 10  # (the point goes, then the line says so)
            while (pending_points() or "expired" not in status().get("promptcut", "")) and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            assert pending_points() == [] and status()[MODE_STATUS] == IDLE_MODE
            assert "expired" in status()["promptcut"]
            report = driver.press("m", inside(labels, sv_b))  # starts afresh, merges nothing
            assert "chosen" in report.message and len(proof.log) == operations
            driver.press("Escape")
        finally:
            keys.merge_timeout = 60.0


STATUS_ROWS = 150  # of a data panel: neuroglancer draws up to ~8 status lines over them
EDGE = 4  # pixels at the panel's edge: neuroglancer's outline of the panel under the mouse


def _frames_after(page, key: str, box: dict, seconds: float, every: float = 0.1,
                  at_least: int = 8) -> list[np.ndarray]:
    """Press ``key`` where the mouse rests, then take the page within ``box`` (the data
    panel's place) every ``every`` seconds (a screenshot takes 100-250 ms in software WebGL,
    longer while the browser is busy loading)."""
    page.keyboard.press(key)
    start, frames = time.monotonic(), []
    while time.monotonic() - start < seconds or len(frames) < at_least:
        frames.append(panel_pixels(page, box))
        time.sleep(max(0.0, start + len(frames) * every - time.monotonic()))
    return frames


def _steady_pixels_that_moved(frames: list[np.ndarray], before: np.ndarray,
                              after: np.ndarray) -> list[float]:
    """Per frame, the fraction of segment pixels that are the same before and after the edit
    (those of segments it did not change, a margin away from the ones that changed) yet differ
    in that frame: a blank, recoloured, coarser or shifted unchanged segment shows up here.
    Segment pixels are those tinted with a segment's colour (EM alone is grey), which leaves
    out the background and neuroglancer's own controls in the panel's corners (re-made with
    the panel after every pushed state), the panel's bottom rows, where the status lines are
    drawn, and its edge, where neuroglancer outlines the panel under the mouse."""
    from scipy import ndimage

    inner = (slice(EDGE, -STATUS_ROWS), slice(EDGE, -EDGE))
    frames, before, after = [f[inner] for f in frames], before[inner], after[inner]
    changed = np.abs(after - before).max(axis=2) > 12
    tinted = _tinted(before) & _tinted(after)
    steady = ~ndimage.binary_dilation(changed, iterations=3) & tinted
    # enough unchanged segment pixels to watch (a division of the largest supervoxel recolours
    # about half of the panel's segments)
    assert steady.sum() > 0.3 * tinted.sum(), "the edit changed most of the segments shown"
    return [float((np.abs(frame - before).max(axis=2)[steady] > 12).mean()) for frame in frames]


def _tinted(pixels: np.ndarray) -> np.ndarray:
    """Pixels drawn in a colour (a segment over EM), not grey."""
    return (pixels.max(axis=2) - pixels.min(axis=2)) > 24


def _only_the_changed_redrawn(page, driver, key: str, done: str, settled) -> None:
    """Press ``key`` where the mouse rests and take frames every 100 ms: pixels of segments
    the edit did not touch never blank, change colour or shift, and the changed ones do
    change. ``settled()`` says when the browser has everything it will draw."""
    box = panel_box(page)  # frames of this place: neuroglancer replaces the element
    seen = driver.router.last_sequence
    before = panel_pixels(page, box)
    frames = _frames_after(page, key, box, seconds=3.0)
    report = driver.router.wait_for_report(seen, 30)
    assert report is not None and report.ok and done in report.message, report
    deadline = time.monotonic() + 30
    while not settled() and time.monotonic() < deadline:
        frames.append(panel_pixels(page, box))
    assert settled()
    time.sleep(2.0)
    after = panel_pixels(page, box)
    assert panel_box(page) == box  # the panel itself neither moved nor resized
    moved = _steady_pixels_that_moved(frames, before, after)
    assert max(moved) < 0.002, f"{key}: unchanged pixels moved in frames: " \
        f"{[round(m, 4) for m in moved]} (frames: {_save_frames(before, frames, after)})"
    redrawn = np.abs(after - before)[EDGE:-STATUS_ROWS, EDGE:-EDGE].max(axis=2) > 12
    assert redrawn.mean() > 0.001  # the changed segments did change colour


def _save_frames(before: np.ndarray, frames: list[np.ndarray], after: np.ndarray) -> str:
    """The frames as PNGs in a new folder (to look at when the test fails): its path."""
    from PIL import Image

    folder = tempfile.mkdtemp(prefix="promptcut-frames-")
    for name, pixels in [("before", before), ("after", after)] + \
            [(f"frame{i:02d}", f) for i, f in enumerate(frames)]:
        Image.fromarray(pixels.astype(np.uint8)).save(Path(folder) / f"{name}.png")
    return folder


def _off_the_segments(page) -> None:
    """The mouse to a corner of the panel (neuroglancer highlights the segment under it)."""
    box = panel_box(page)
    page.mouse.move(box["x"] + 30, box["y"] + 30)
    time.sleep(1.0)


def _voxels_loaded(session) -> Callable[[], bool]:
    """Whether no division's new voxels are still loading out of sight."""
    return lambda: not voxels_loading(session.viewer.state)


def test_an_edit_redraws_only_the_segments_it_changed(browser, segmented_session):
    """Frames every 100 ms after a merge and its undo: pixels of segments the edit did not
    touch never blank and never change colour (neuroglancer used to drop the whole layer)."""
    session = segmented_session
    proof = session.proofreading
    labels = proof.supervoxels.read(slice(None), slice(None), slice(None))
    voxels_loaded = _voxels_loaded(session)
    with proofreading_page(browser, session) as (page, driver):
        sv_a, sv_b = touching_pair(proof, 1)
        assert driver.press("m", inside(labels, sv_a)).ok
        driver.hover(inside(labels, sv_b))
        time.sleep(1.5)  # the pending merge's point drawn, the hovered segment highlighted
        _only_the_changed_redrawn(page, driver, "m", "merged", voxels_loaded)
        _off_the_segments(page)  # undo needs no pointer
        _only_the_changed_redrawn(page, driver, "u", "undid merge", voxels_loaded)
        session.reset_view()


def test_a_division_redraws_only_the_segments_it_changed(browser, segmented_session):
    """As above, for a supervoxel division and its undo (its new voxels load out of sight
    first)."""
    session = segmented_session
    proof = session.proofreading
    labels = proof.supervoxels.read(slice(None), slice(None), slice(None))
    voxels_loaded = _voxels_loaded(session)
    with proofreading_page(browser, session) as (page, driver):
        big = largest_supervoxel(proof)
        first, second = _far_apart_in(labels, big)
        assert driver.press("p", first).ok
        assert driver.press("Shift+P", second).ok
        assert driver.press("Shift+K").ok  # the preview, then Enter with the mouse not moved
        time.sleep(1.5)
        try:
            _only_the_changed_redrawn(page, driver, "Enter", f"supervoxel {big} divided",
                                      voxels_loaded)
            _off_the_segments(page)
            _only_the_changed_redrawn(page, driver, "u", "undid split-supervoxel",
                                      voxels_loaded)
        finally:  # later tests share the session: never leave it divided
            if not proof.segments_of(np.array([big], np.uint64))[0]:
                session.service.undo(DEFAULT_USER)
        session.reset_view()


def _far_apart_in(labels: np.ndarray, supervoxel: int) -> tuple[tuple, tuple]:
    """Two voxels of a supervoxel far apart in the section where it is largest, each inside it
    (its 4 neighbours too) and off the volume's edge, where a pointer on the panel's last pixel
    can read as the voxel beyond."""
    z = int(np.argmax((labels == supervoxel).sum(axis=(1, 2))))
    mask = ndimage.binary_erosion(labels[z] == supervoxel)
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = False, False, False, False
    voxels = np.argwhere(mask)
    assert len(voxels), f"supervoxel {supervoxel} has no inner voxel in section {z}"
    far = voxels[np.argmax(np.abs(voxels - voxels[0]).sum(1))]
    return (z,) + tuple(int(v) for v in voxels[0]), (z,) + tuple(int(v) for v in far)


def _side_masks(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels in the preview colours (cyan, magenta) blended over EM."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return (b - r > 80) & (g - r > 80), (r - g > 70) & (b - g > 50)


def _new_sides(pixels: np.ndarray, plain: np.ndarray) -> tuple[float, float]:
    """Fraction of the panel newly in each preview colour, against the panel without a
    preview (some segments' own random colours are close to them)."""
    return tuple(float((now & ~then).mean())
                 for now, then in zip(_side_masks(pixels), _side_masks(plain)))


def test_a_split_and_a_merge_are_previewed_before_they_are_committed(browser,
                                                                      segmented_session):
    """K shows the two sides of a split in cyan and magenta with their sizes and logs nothing;
    Esc discards it; K again and Enter commit. M then Shift+M previews a merge the same way."""

    session = segmented_session
    proof = session.proofreading
    labels = proof.supervoxels.read(slice(None), slice(None), slice(None))
    with proofreading_page(browser, session) as (page, driver):
        sv_a, sv_b = touching_pair(proof, 2)
        first, second = two_largest_members(proof, (proof.segment_of(sv_a),
                                                    proof.segment_of(sv_b)))
        at_first, at_second = inside(labels, first), inside(labels, second)
        segment = proof.segment_of(first)
        operations = len(proof.log)
        assert driver.press("p", at_first).ok
        assert driver.press("Shift+P", at_second).ok
        time.sleep(1.0)
        plain = wait_for_panel(page, lambda p: True)
        report = driver.press("k")
        assert report.ok and report.message.startswith("preview of split"), report.message
        assert "voxels" in report.message and "cyan" in report.message
        wait_for_panel(page, lambda p: min(_new_sides(p, plain)) > 0.002)
        assert len(proof.log) == operations and proof.segment_of(second) == segment
        page.wait_for_function("document.body.innerText.includes('Enter commits it')",
                               timeout=10000)
        report = driver.press("Escape")
        assert report.ok and "discarded" in report.message
        wait_for_panel(page, lambda p: max(_new_sides(p, plain)) < 0.0005)
        assert len(proof.log) == operations and proof.segment_of(second) == segment
        assert driver.press("k").ok
        page.wait_for_function("document.body.innerText.includes('Enter commits it')",
                               timeout=10000)  # read, as a person would, before committing
        report = driver.press("Enter")
        assert report.ok and report.message.startswith("split"), report.message
        assert len(proof.log) == operations + 1
        assert proof.segment_of(first) != proof.segment_of(second)
        assert not segmentation_layer(session.viewer.state).segment_colors
        time.sleep(1.5)  # the new segment drawn in its own colour
        plain = wait_for_panel(page, lambda p: True)

        # merge with a preview: M on one piece, Shift+M on the other, Enter
        assert driver.press("m", at_first).ok
        report = driver.press("Shift+M", at_second)
        assert report.ok and report.message.startswith("preview of merge"), report.message
        wait_for_panel(page, lambda p: max(_new_sides(p, plain)) > 0.002)
        assert len(proof.log) == operations + 1
        report = driver.press("Enter")
        assert report.ok and report.message.startswith("merged"), report.message
        assert proof.segment_of(first) == proof.segment_of(second)
        session.reset_view()


def test_d_marks_the_segment_under_the_mouse_reviewed_and_again_unmarks_it(browser,
                                                                          segmented_session):
    session = segmented_session
    proof = session.proofreading
    labels = proof.supervoxels.read(slice(None), slice(None), slice(None))
    big = largest_supervoxel(proof)
    segment = proof.segment_of(big)
    with proofreading_page(browser, session) as (page, driver):
        report = driver.press("d", inside(labels, big))
        assert report.ok and f"segment {segment} marked reviewed" in report.message
        assert segment in proof.reviewed()
        report = driver.press("d")  # again, the mouse not moved
        assert report.ok and "no longer marked reviewed" in report.message
        assert segment not in proof.reviewed()
