"""The proofreading engine on a 4 x 4 grid of supervoxels whose truth is known.

Supervoxel ids run 1..16 row by row; the truth is two neurons, the left two columns and the
right two. Faces inside a neuron have affinity 0.9, faces between them 0.08.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from segmentation.editlog import EditLog
from segmentation.errors import InputError, PromptcutError
from segmentation.rag import block_contacts, block_node_stats, build_rag
from segmentation.session import EditError, ProofreadingSession

CELL = 3


def grid():
    labels = np.zeros((1, 4 * CELL, 4 * CELL), np.uint64)
    for r in range(4):
        for c in range(4):
            labels[0, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = r * 4 + c + 1
    column = (labels - 1) % 4
    left = column < 2
    affinities = np.full((3,) + labels.shape, 230, np.uint8)
    across = np.zeros(labels.shape, bool)
    across[..., 1:] = left[..., 1:] != left[..., :-1]
    affinities[2][across] = 20
    rag = build_rag(block_node_stats(labels, (0, 0, 0)),
                    block_contacts(labels, affinities, (0, 0, 0)))
    return labels, rag


def centre(sv: int) -> tuple[int, int, int]:
    r, c = divmod(sv - 1, 4)
    return 0, r * CELL + 1, c * CELL + 1


LEFT = [r * 4 + c + 1 for r in range(4) for c in range(2)]
RIGHT = [r * 4 + c + 1 for r in range(4) for c in range(2, 4)]


def make(tmp_path, segments=None, name="log.sqlite"):
    labels, rag = grid()

    def locate(point):
        z, y, x = (int(v) for v in point)
        if not (0 <= z < labels.shape[0] and 0 <= y < labels.shape[1] and 0 <= x < labels.shape[2]):
            raise InputError(f"voxel {(z, y, x)} is outside the volume")
        return int(labels[z, y, x])

    if segments is None:
        segments = rag.ids.copy()
    return ProofreadingSession(rag, segments, EditLog(tmp_path / name), locate)


def membership(session) -> dict[int, int]:
    return dict(zip(*(v.tolist() for v in session.membership())))


def all_one(rag_ids):
    return np.full(len(rag_ids), 1, np.uint64)


def test_merge_joins_two_segments_and_logs_before_acknowledging(tmp_path):
    session = make(tmp_path)
    result = session.merge("alice", centre(1), centre(2))
    assert result.kind == "merge" and result.operation == 1 and result.supervoxels_changed == 1
    assert session.segment_of(1) == session.segment_of(2)
    assert sorted(session.members_of(result.segments[0]).tolist()) == [1, 2]
    entries = list(session.log.entries())
    assert len(entries) == 1 and entries[0].user == "alice" and len(entries[0].delta) == 1
    assert session.decisions()[0] == [(1, 2)]  # the merge confirmed the 1-2 edge
    assert result.milliseconds > 0


def test_split_cuts_along_the_weak_faces_and_keeps_both_sides_connected(tmp_path):
    labels, rag = grid()
    session = make(tmp_path, all_one(rag.ids))
    result = session.split("alice", [centre(1), centre(13)], [centre(4)])
    left, right = session.segment_of(1), session.segment_of(4)
    assert left != right
    assert {sv for sv, seg in membership(session).items() if seg == left} == set(LEFT)
    assert {sv for sv, seg in membership(session).items() if seg == right} == set(RIGHT)
    assert left == 1  # the side holding the segment's name keeps it
    separated = set(session.decisions()[1])
    assert separated == {(2, 3), (6, 7), (10, 11), (14, 15)}
    assert sorted(result.segments) == sorted([left, right])


def test_prompt_cut_adds_missing_pieces_and_removes_wrong_ones(tmp_path):
    labels, rag = grid()
    # segment 1 holds the left column pair minus supervoxel 13, plus a wrong piece (3)
    segments = np.array([1 if sv in (set(LEFT) - {13}) | {3} else sv for sv in
                         rag.ids.tolist()], np.uint64)
    session = make(tmp_path, segments)
    session.prompt_cut("alice", [centre(1), centre(13)], [centre(3)])
    result = {sv for sv, seg in membership(session).items() if seg == session.segment_of(1)}
    assert result == set(LEFT)


def test_prompt_cut_with_a_mask_and_no_negatives(tmp_path):
    labels, rag = grid()
    segments = np.array([1 if sv in LEFT + [3, 7] else sv for sv in rag.ids.tolist()],
                        np.uint64)
    session = make(tmp_path, segments)
    mask = {sv: (0.95 if sv in LEFT else 0.02) for sv in rag.ids.tolist()}
    session.prompt_cut("alice", [centre(5)], [], mask)
    assert {sv for sv, seg in membership(session).items() if seg == 1} == set(LEFT)


@pytest.mark.parametrize("model_says", [None, 0.02])
def test_reweighted_edges_move_the_prompt_cut(tmp_path, model_says):
    """Column 0 is a segment, column 1 another; a mask half-sure about column 1 pulls it in
    over the graph's strong bond, unless a model re-predicts that bond as a membrane."""
    labels, rag = grid()
    column = {sv: (sv - 1) % 4 for sv in rag.ids.tolist()}
    session = make(tmp_path, np.array([column[sv] + 1 if column[sv] < 2 else sv
                                       for sv in rag.ids.tolist()], np.uint64))
    if model_says is not None:
        bond = np.array([(r * 4 + 1, r * 4 + 2) for r in range(4)] + [(1, 16)], np.uint64)
        changed = session.reweight(bond, np.full(5, 1000), np.full(5, model_says))
        assert changed == 4  # (1, 16) is no contact of the graph
    mask = {sv: (0.95, 0.6, 0.02, 0.02)[column[sv]] for sv in rag.ids.tolist()}
    if model_says:
        with pytest.raises(EditError, match="leaves every segment as it is"):
            session.prompt_cut("alice", [centre(1)], [centre(3)], mask)
    else:
        session.prompt_cut("alice", [centre(1)], [centre(3)], mask)
        joined = {sv for sv, seg in membership(session).items() if seg == session.segment_of(1)}
        assert joined == set(LEFT)


def test_undo_and_redo_are_per_user(tmp_path):
    session = make(tmp_path)
    session.merge("alice", centre(1), centre(2))
    session.merge("bob", centre(15), centre(16))
    undone = session.undo("alice")
    assert undone.kind == "undo" and session.segment_of(1) != session.segment_of(2)
    assert session.segment_of(15) == session.segment_of(16)  # bob's edit stands
    with pytest.raises(EditError, match="nothing to undo"):
        session.undo("alice")
    session.redo("alice")
    assert session.segment_of(1) == session.segment_of(2)
    with pytest.raises(EditError, match="nothing to redo"):
        session.redo("alice")
    session.undo("bob")
    assert session.segment_of(15) != session.segment_of(16)
    assert [e.kind for e in session.log.entries()] == ["merge", "merge", "undo", "redo", "undo"]


def test_undo_refuses_when_someone_else_edited_the_same_supervoxels(tmp_path):
    session = make(tmp_path)
    session.merge("alice", centre(1), centre(2))
    session.merge("bob", centre(2), centre(3))
    before, entries = membership(session), len(session.log)
    with pytest.raises(EditError, match="edited since"):
        session.undo("alice")
    assert membership(session) == before and len(session.log) == entries


def test_restart_replays_the_log_to_the_identical_membership(tmp_path):
    labels, rag = grid()
    session = make(tmp_path, all_one(rag.ids))
    session.split("alice", [centre(1)], [centre(4)])
    session.merge("bob", centre(1), centre(4))
    session.undo("bob")
    session.prompt_cut("alice", [centre(5), centre(7)], [centre(8)])
    assert session.segment_of(7) == session.segment_of(5)
    expected = membership(session)
    confirmed, separated = session.decisions()
    session.log.close()
    again = make(tmp_path, all_one(rag.ids))
    assert membership(again) == expected
    assert again.decisions() == (confirmed, separated)
    with pytest.raises(EditError, match="edited since"):  # alice's cut came after bob's undo
        again.redo("bob")
    again.undo("alice")  # the undo stacks came back too
    assert again.segment_of(7) != again.segment_of(5)
    again.redo("bob")  # with alice's cut undone, nothing stands between bob and his edit


@pytest.mark.parametrize("operation, message", [
    (lambda s: s.merge("u", centre(1), centre(1)), "nothing to merge"),
    (lambda s: s.merge("u", (0, 0, 0), (0, 99, 0)), "outside"),
    (lambda s: s.split("u", [centre(1)], [centre(2)]), "different segments"),
    (lambda s: s.split("u", [centre(1)], [(0, 0, 0)]), "same supervoxel"),
    (lambda s: s.split("u", [centre(1)], []), "each side"),
    (lambda s: s.prompt_cut("u", [], [centre(1)]), "positive"),
    (lambda s: s.undo("nobody"), "nothing to undo"),
    (lambda s: s.redo("nobody"), "nothing to redo"),
])
def test_bad_edits_change_nothing_and_say_why(tmp_path, operation, message):
    session = make(tmp_path)
    session.merge("setup", centre(5), centre(9))
    before, entries = membership(session), len(session.log)
    with pytest.raises(PromptcutError, match=message):
        operation(session)
    assert membership(session) == before and len(session.log) == entries


def test_background_point_is_refused(tmp_path):
    session = make(tmp_path)
    session.locate = lambda point: 0
    with pytest.raises(EditError, match="background"):
        session.merge("u", (0, 0, 0), (0, 1, 1))
    assert len(session.log) == 0


def test_a_cut_that_would_leave_a_side_empty_is_refused(tmp_path):
    labels, rag = grid()
    session = make(tmp_path, all_one(rag.ids))  # one segment, no neighbours
    with pytest.raises(EditError, match="empty"):
        session.prompt_cut("u", [centre(1)])
    assert len(session.log) == 0


def test_two_clients_editing_the_same_segment_at_once(tmp_path):
    session = make(tmp_path)
    with session.reserve([session.segment_of(1)], "alice"):
        with pytest.raises(EditError, match="being edited by alice"):
            session.merge("bob", centre(1), centre(2))
        session.merge("bob", centre(15), centre(16))  # other segments are free
    assert len(session.log) == 1
    session.merge("bob", centre(1), centre(2))  # and free again afterwards


def test_log_exports_as_json_lines(tmp_path):
    session = make(tmp_path)
    session.merge("alice", centre(1), centre(2))
    session.undo("alice")
    count = session.log.export_jsonl(tmp_path / "log.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert count == 2 and [l["kind"] for l in lines] == ["merge", "undo"]
    assert [l["user"] for l in lines] == ["alice", "alice"] and lines[1]["target"] == 1
    # rows are (supervoxel, old segment, new segment): the undo moves 2 back where it was
    assert lines[0]["delta"] == [[2, 2, 1]] and lines[1]["delta"] == [[2, 1, 2]]


def test_undo_after_redo_and_redo_after_undo_alternate_freely(tmp_path):
    """With one user only, undo, redo, undo, redo of the same edit all go through."""
    session = make(tmp_path)
    session.merge("alice", centre(1), centre(2))
    for step in range(4):
        result = (session.undo if step % 2 == 0 else session.redo)("alice")
        assert result.kind == ("undo" if step % 2 == 0 else "redo")
        assert (session.segment_of(1) == session.segment_of(2)) == (step % 2 == 1)


def test_a_later_prompt_cut_keeps_what_an_earlier_one_cut_off_until_cleared(tmp_path):
    """Cut 1 takes the right half off the segment. Cut 2, with a mask that says the right half
    belongs, still leaves it out: what cut 1 took off is a constraint of the segment. After
    Shift+Q (clear_prompts) the same cut takes the neighbouring column back."""
    labels, rag = grid()
    session = make(tmp_path, all_one(rag.ids))
    halves = {sv: (0.95 if sv in LEFT else 0.05) for sv in rag.ids.tolist()}
    session.prompt_cut("alice", [centre(1)], [centre(4)], halves)
    left = session.segment_of(1)
    right_before = {sv: session.segment_of(sv) for sv in RIGHT}
    assert all(seg != left for seg in right_before.values())
    positives, negatives, cut_off = session.constraints_of(left)
    assert (positives, negatives) == ([centre(1)], [centre(4)]) and set(cut_off) == {3, 7, 11, 15}
    everything = {sv: 0.9 for sv in rag.ids.tolist()}
    with pytest.raises(EditError, match="leaves every segment as it is"):
        session.prompt_cut("alice", [centre(2)], [], everything)
    assert {sv: session.segment_of(sv) for sv in RIGHT} == right_before
    cleared = session.clear_prompts("alice", centre(5))
    assert cleared.kind == "clear-prompts" and session.constraints_of(left) == ([], [], [])
    session.prompt_cut("alice", [centre(2)], [], everything)
    # the mask takes in the neighbouring column (a cut reaches only the segment's neighbours)
    assert {session.segment_of(sv) for sv in LEFT + [3, 7, 11, 15]} == {session.segment_of(2)}
    # both are logged, and undoing the clear brings the constraint back
    session.undo("alice")
    session.undo("alice")
    assert session.constraints_of(session.segment_of(1))[1] == [centre(4)]


def test_a_chain_of_edits_undoes_in_order_back_to_the_start(tmp_path):
    """Undoing the last edit made the one before it look 'edited since' (the undo counted as
    a later change of its segments): after merge, split, merge, prompt cut only the cut could
    be undone."""
    session = make(tmp_path)
    start = membership(session)
    session.merge("alice", centre(1), centre(2))
    session.split("alice", [centre(1)], [centre(2)])
    session.merge("alice", centre(1), centre(2))
    session.prompt_cut("alice", [centre(1)], [centre(2)])
    for _ in range(4):
        session.undo("alice")
    assert membership(session) == start
    for _ in range(4):  # and forward again
        session.redo("alice")
    assert session.segment_of(1) != session.segment_of(2)
    # an edit of someone else in between still blocks the undo of what it built on
    session.merge("bob", centre(2), centre(3))
    with pytest.raises(EditError, match="edited since"):
        session.undo("alice")


def test_a_preview_shows_the_sides_and_changes_nothing_until_committed(tmp_path):
    _, rag = grid()
    session = make(tmp_path, all_one(rag.ids))
    before = membership(session)
    nodes, capacity = session.graph.num_nodes, session.graph.capacity.copy()
    preview = session.preview("split", [centre(1)], [centre(4)])
    assert preview.kind == "split" and len(preview.segments) == 2
    assert sorted(count for _, count in preview.sizes.values()) == [8, 8]  # left and right
    assert sum(voxels for voxels, _ in preview.sizes.values()) == 16 * CELL * CELL
    assert membership(session) == before and len(session.log) == 0
    assert session.graph.num_nodes == nodes
    np.testing.assert_array_equal(session.graph.capacity, capacity)
    assert not preview.stale(session.log)
    result = session.split("alice", [centre(1)], [centre(4)])
    np.testing.assert_array_equal(result.delta, preview.delta)  # what was shown is what is done
    assert preview.stale(session.log)  # an edit of its segment since: work it out again


def test_a_review_mark_is_logged_survives_a_restart_and_undoes(tmp_path):
    _, rag = grid()
    session = make(tmp_path, all_one(rag.ids))
    result = session.review("alice", session.segment_of(1))
    assert result.kind == "review" and "marked reviewed" in result.message
    assert set(session.reviewed()) == {1} and session.reviewed()[1].user == "alice"
    session.log.close()
    again = make(tmp_path, all_one(rag.ids))  # the log replayed
    assert set(again.reviewed()) == {1}
    again.undo("alice")
    assert again.reviewed() == {}
    again.redo("alice")
    assert set(again.reviewed()) == {1}
    again.review("bob", 1, reviewed=False)
    assert again.reviewed() == {}
    assert [e.kind for e in again.log.entries()] == ["review", "undo", "redo", "review"]
    with pytest.raises(EditError, match="no segment 99"):
        again.review("bob", 99)
