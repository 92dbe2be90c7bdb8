"""Focused proofreading from the keyboard in headless Chromium: F asks, W keeps apart, Y
merges, G goes back, Shift+F skips; the mouse never moves between keys."""

from __future__ import annotations

import numpy as np
import pytest

from server.proofreading import MODE_STATUS
from server.viewer import segmentation_layer, to_viewer
from tests.browser_util import panel_box
from tests.test_browser_proofreading import proofreading_page

pytestmark = pytest.mark.browser


def test_questions_are_asked_answered_skipped_and_taken_back_from_the_keyboard(
        browser, segmented_session):
    session = segmented_session
    proof, service = session.proofreading, session.service
    with proofreading_page(browser, session) as (page, driver):
        operations = len(proof.log)
        box = panel_box(page)  # the mouse rests on the data panel, as a person's does: the
        page.mouse.move(box["x"] + box["width"] / 2,  # panel's own key bindings come first
                        box["y"] + box["height"] / 2)

        def shown() -> tuple[str, set, list]:
            state = session.viewer.state
            return (session.viewer.config_state.state.status_messages[MODE_STATUS],
                    set(segmentation_layer(state).segments), list(state.position))

        report = driver.press("f")
        first = service.questions.current("proofreader")
        assert report.ok and first is not None, report.message
        a, b = first.segments
        mode, segments, position = shown()
        assert f"are segments {a} (cyan) and {b} (magenta) one neuron" in mode
        assert segments == {service.membership.shown_as(a), service.membership.shown_as(b)}
        assert np.allclose(position, [v + 0.5 for v in to_viewer(first.contact)])

        report = driver.press("w")  # no: kept apart, and the next question is shown
        assert report.ok and "apart" in report.message, report.message
        assert [e.kind for e in proof.log.entries(operations)] == ["separate"]
        second = service.questions.current("proofreader")
        assert second is not None and second.segments != first.segments
        assert f"are segments {second.segments[0]} (cyan) and {second.segments[1]} (magenta)" in shown()[0]

        report = driver.press("y")  # yes: merged
        assert report.ok and "merged" in report.message, report.message
        merged = {proof.segment_of(proof.supervoxel_at(p)) for p in second.points}
        assert len(merged) == 1

        report = driver.press("g")  # back: the merge undone, its question again
        assert report.ok and "undid merge" in report.message, report.message
        assert service.questions.current("proofreader") == second
        assert len({proof.segment_of(proof.supervoxel_at(p)) for p in second.points}) == 2

        report = driver.press("Shift+F")  # skipped: another question
        assert report.ok and report.message.startswith("skipped"), report.message
        assert service.questions.current("proofreader").segments != second.segments
        page.screenshot(path=str(session.project.root / "focus.png"))
        for _ in range(2):  # the skip, then the "no": the session as it was
            assert driver.press("g").ok
        assert service.questions.current("proofreader") == first
        kinds = [e.kind for e in proof.log.entries(operations)]
        assert kinds == ["separate", "merge", "undo", "undo"]
        contacts = {tuple(sorted(p)) for p in proof.contacts(a, b)}
        assert contacts and not {tuple(sorted(p)) for p in proof.decisions()[1]} & contacts
        session.reset_view()
