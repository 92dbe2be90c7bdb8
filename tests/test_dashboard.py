"""The dashboard in headless Chromium: live history, others' edits, segment list that moves the
viewer, the review mark and undo from a button (the D key: test_browser_proofreading)."""

from __future__ import annotations

import time

import pytest

from server.viewer import from_viewer, segmentation_layer
from tests.browser_util import inside, touching_pair

pytestmark = pytest.mark.browser


def _wait(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}")


def test_the_dashboard_follows_edits_live_moves_the_viewer_and_marks_reviews(browser,
                                                                              segmented_session):
    session = segmented_session
    proof = session.proofreading
    labels = proof.supervoxels.read(slice(None), slice(None), slice(None))
    page = browser.new_page()
    try:
        page.goto(f"{session.base_url}/static/dashboard.html#token={session.access.token}"
                  f"&user=alice")
        page.wait_for_selector("#segments tbody tr", timeout=30000)
        assert "token" not in page.url  # out of the address bar once read
        assert page.inner_text("#me") == "alice"

        # another proofreader's edit appears without a reload, in the history and as news
        sv_a, sv_b = touching_pair(proof, 3)
        merged = session.service.merge("bob", inside(labels, sv_a), inside(labels, sv_b))
        page.wait_for_selector(f"#history tr[data-operation='{merged.operation}']",
                               timeout=10000)
        assert "bob" in page.inner_text("#others")

        # a segment row takes alice's viewer there and shows it in 3D
        row = page.locator("#segments tbody tr").nth(1)
        segment = int(row.get_attribute("data-segment"))
        row.locator("td").first.click()
        viewer = session.viewers["alice"]
        _wait(lambda: proof.segment_of(int(labels[from_viewer(viewer.state.position)]))
              == segment, what="the viewer at the segment")
        shown = {int(v) for v in segmentation_layer(viewer.state).segments}
        assert shown == {session.membership_view.shown_as(segment)}

        # the review box is a logged edit; undo from the dashboard takes it back
        row.locator("input[type=checkbox]").click()
        _wait(lambda: segment in proof.reviewed(), what="the review mark")
        assert proof.reviewed()[segment].user == "alice"
        page.wait_for_selector(f"#segments tr[data-segment='{segment}'].reviewed",
                               timeout=10000)
        page.click("#undo")
        _wait(lambda: segment not in proof.reviewed(), what="the undo")
        assert [e.kind for e in proof.log.entries()][-2:] == ["review", "undo"]
    finally:
        page.close()


def test_the_dashboard_steps_through_questions_and_takes_the_viewer_to_each(browser,
                                                                            segmented_session):
    from server.viewer import to_viewer

    session = segmented_session
    proof, queue = session.proofreading, session.service.questions
    page = browser.new_page()
    try:
        page.goto(f"{session.base_url}/static/dashboard.html#token={session.access.token}"
                  f"&user=carol")
        page.wait_for_selector("#segments tbody tr", timeout=30000)
        assert page.is_disabled("#yes")  # nothing to answer before a question
        page.click("#ask")
        _wait(lambda: queue.current("carol") is not None, what="a question")
        ask = queue.current("carol")
        a, b = ask.segments
        page.wait_for_function("t => document.getElementById('question').innerText"
                               ".includes(t)", arg=f"segments {a} (cyan) and {b} (magenta)",
                               timeout=10000)
        viewer = session.viewers["carol"]
        _wait(lambda: list(viewer.state.position) == [v + 0.5 for v in to_viewer(ask.contact)],
              what="carol's viewer at the contact")
        operations = len(proof.log)
        page.click("#no")
        _wait(lambda: len(proof.log) == operations + 1, what="the answer logged")
        assert [e.kind for e in proof.log.entries(operations)] == ["separate"]
        _wait(lambda: queue.current("carol") not in (None, ask), what="the next question")
        page.click("#back")
        try:
            _wait(lambda: queue.current("carol") == ask, what="back to the first question")
        except AssertionError as failed:  # say what the proofreader was told
            raise AssertionError(f"{failed}; the dashboard says "
                                 f"{page.inner_text('#question-result')!r}; questions held: "
                                 f"{queue.holders()}") from None
        assert [e.kind for e in proof.log.entries(operations)] == ["separate", "undo"]
        page.wait_for_function("t => document.getElementById('question-result').innerText"
                               ".includes(t)", arg="undid separate", timeout=10000)
    finally:
        page.close()
