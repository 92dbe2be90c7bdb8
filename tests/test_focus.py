"""Focused proofreading in a session: the question queue, yes / no / skip / back, shared
between proofreaders, on a private copy of the segmented demo."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from segmentation import edge_classifier
from segmentation.editlog import remove_log
from segmentation.focus import FocusQueue, contact_points
from segmentation.project import Project
from segmentation.proofread import LOG_NAME, open_session
from segmentation.rag import Rag
from segmentation.session import EditError


@pytest.fixture
def queue(tmp_path, segmented_config):
    shutil.copytree(segmented_config.project_dir, tmp_path / "project")
    remove_log(tmp_path / "project" / LOG_NAME)
    project = Project.open(tmp_path / "project")
    session = open_session(project)
    rag = Rag.load(project.root / "rag.npz")
    booster = edge_classifier.load(edge_classifier.SHIPPED_EDGE_MODEL)
    yield FocusQueue(rag, session, booster, batch=20)
    session.log.close()


def test_a_question_names_two_touching_segments_and_a_voxel_of_each_face_to_face(queue):
    session = queue.session
    ask = queue.next("alice")
    assert ask is not None and queue.next("alice") == ask  # open until answered
    a, b = ask.segments
    first, second = ask.points
    assert session.segment_of(session.supervoxel_at(first)) == a
    assert session.segment_of(session.supervoxel_at(second)) == b
    assert sum(abs(p - q) for p, q in zip(first, second)) == 1  # neighbours
    assert 0 < ask.question.probability < 1


def test_two_proofreaders_never_hold_questions_about_the_same_segment(queue):
    held = [queue.next(user) for user in ("alice", "bob", "carol")]
    segments = [s for ask in held for s in ask.segments]
    assert len(set(segments)) == len(segments)
    assert queue.holders() == {u: a.segments for u, a in zip(("alice", "bob", "carol"), held)}


def test_yes_merges_no_keeps_apart_and_neither_is_asked_again(queue):
    session = queue.session
    ask = queue.next("alice")
    result = session.merge("alice", *ask.points)
    queue.answered("alice", ask, result.operation)
    assert session.segment_of(session.supervoxel_at(ask.points[0])) == \
        session.segment_of(session.supervoxel_at(ask.points[1]))
    second = queue.next("alice")
    assert second.segments != ask.segments
    operations = len(session.log)
    result = session.separate("alice", *second.points)
    assert len(session.log) == operations + 1 and len(result.delta) == 0  # nothing moved
    a, b = second.segments
    separated = {tuple(sorted(p)) for p in session.decisions()[1]}
    contacts = {tuple(sorted(p)) for p in session.contacts(a, b)}
    assert contacts and contacts <= separated
    queue.answered("alice", second, result.operation)
    asked = {queue.next(user).segments for user in ("alice", "bob")}
    assert second.segments not in asked  # kept apart: not asked again
    session.undo("alice")  # the no undone: its contacts are open again
    assert not contacts & {tuple(sorted(p)) for p in session.decisions()[1]}


def test_skip_asks_another_and_back_returns_to_the_skipped_one(queue):
    first = queue.next("alice")
    second = queue.skip("alice")
    assert second is not None and second.segments != first.segments
    assert queue.next("alice") == second
    ask, operation = queue.previous("alice")
    queue.reopen("alice")
    assert ask == first and operation is None and queue.current("alice") == first


def test_keeping_apart_segments_that_do_not_touch_is_refused(queue):
    session = queue.session
    ask = queue.next("alice")
    far = [p for p in session.graph.centroid[:50].astype(int).tolist()
           if session.locate(p) and session.segment_of(session.locate(p)) not in ask.segments
           and not session.contacts(ask.segments[0], session.segment_of(session.locate(p)))]
    with pytest.raises(EditError, match="do not touch"):
        session.separate("alice", ask.points[0], tuple(far[0]))
    with pytest.raises(EditError, match="nothing to keep apart"):
        session.separate("alice", ask.points[0], ask.points[0])


def test_contact_points_are_neighbours_across_the_shared_face():
    labels = np.zeros((4, 6, 6), np.uint64)
    labels[:, :, :3], labels[:, :, 3:] = 5, 9
    box = np.array([0, 0, 0, 3, 5, 5])
    read = lambda z, y, x: labels[z, y, x]  # noqa: E731
    a, b = contact_points(read, box, box, 5, 9, labels.shape)
    assert labels[a] == 5 and labels[b] == 9 and a[2] == 2 and b[2] == 3 and a[:2] == b[:2]
    with pytest.raises(ValueError):
        contact_points(read, box, box, 5, 7, labels.shape)


def test_retraining_from_decisions_learns_the_proofreader_s_noes(queue, tmp_path):
    from segmentation.edge_training import train_from_decisions
    from segmentation.focus import ranked_questions

    session, rag = queue.session, queue.rag
    start = session.segments_before_divisions(rag.ids)
    noes = []
    for _ in range(6):  # the six most likely merges, all kept apart: no membership changes
        ask = queue.next("alice")
        queue.answered("alice", ask, session.separate("alice", *ask.points).operation)
        noes.append(ask.question)
    project = Project.open(session.log.path.parent)
    session.log.close()
    output = tmp_path / "edges_decisions.txt"
    found = train_from_decisions(project, edge_classifier.SHIPPED_EDGE_MODEL, output)
    assert found["operations"] == 6 and found["rows"] > 0 and output.is_file()
    assert found["decided_segments"] == len({s for q in noes for s in q.segments})
    retrained = edge_classifier.load(output)
    after = {q.segments: q.probability for q in ranked_questions(rag, start, retrained,
                                                                  limit=10 ** 6)}
    before = [q.probability for q in noes]
    now = [after.get(q.segments, 0.0) for q in noes]
    assert np.mean(now) < np.mean(before) - 0.05, (before, now)


def test_a_question_that_no_longer_holds_blocks_neither_asking_nor_going_back(queue):
    session = queue.session
    stale = queue.next("alice")  # then someone else merges its two segments
    session.merge("bob", *stale.points)
    merged = session.segment_of(session.supervoxel_at(stale.points[0]))
    ask = queue.next("carol")
    for _ in range(30):  # carol is asked about the merged segment (alice's holds nothing)
        if ask is None or merged in ask.segments:
            break
        ask = queue.skip("carol")
    assert ask is not None and merged in ask.segments
    queue.skip("carol")
    back, operation = queue.previous("carol")  # not refused for alice's stale question
    assert back == ask and operation is None
