"""Dividing a supervoxel at voxel level: a supervoxel that spans two neurons is cut along the
membrane between them, each side a new connected supervoxel, logged, undoable, replayed.

The scene (z 6, y 20, x 30): supervoxel 1 fills y < 12 and spans two neurons that meet at
x = 15, where the affinities show a membrane (three faces thick, as a network predicts one); supervoxels 2 (x < 15) and 3 (x >= 15) fill the
rest. Segment 1 holds supervoxels 1 and 2; segment 3 holds 3.
"""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.editlog import EditLog
from segmentation.errors import InputError, PromptcutError
from segmentation.export import export_segmentation
from segmentation.rag import block_contacts, block_node_stats, build_rag
from segmentation.session import ProofreadingSession
from segmentation.supervoxel_split import LiveSupervoxels, VoxelSplit, divide
from segmentation.volume import ArrayVolume

SHAPE = (6, 20, 30)
LEFT, RIGHT = (3, 5, 5), (3, 5, 25)  # both in supervoxel 1, one in each neuron


def scene():
    labels = np.zeros(SHAPE, np.uint64)
    labels[:, :12] = 1
    labels[:, 12:, :15] = 2
    labels[:, 12:, 15:] = 3
    affinities = np.full((3,) + SHAPE, 230, np.uint8)
    affinities[2][:, :, 14:17] = 10  # the membrane between the neurons (x-faces at x 14-16)
    affinities[1][:, 12, :] = 60  # supervoxel 1 against 2 and 3
    rag = build_rag(block_node_stats(labels, (0, 0, 0)),
                    block_contacts(labels, affinities, (0, 0, 0)))
    return labels, affinities, rag


def session_over(tmp_path, name="log.sqlite"):
    labels, affinities, rag = scene()
    live = LiveSupervoxels(ArrayVolume(labels))
    segments = np.array([1, 1, 3], np.uint64)
    return ProofreadingSession(rag, segments, EditLog(tmp_path / name), supervoxels=live,
                               affinities=lambda region: affinities[(slice(None),) + region])


def volume_of(session) -> np.ndarray:
    return session.supervoxels.read(slice(None), slice(None), slice(None))


def test_split_points_in_one_supervoxel_divide_it_along_the_membrane(tmp_path):
    session = session_over(tmp_path)
    result = session.split("alice", [LEFT], [RIGHT])
    assert "supervoxel 1 divided into 2 pieces" in result.message
    labels = volume_of(session)
    left, right = int(labels[LEFT]), int(labels[RIGHT])
    assert {left, right} == {4, 5} and sorted(result.created) == [4, 5]
    assert result.retired == {1: 4}
    assert not (labels == 1).any()  # the old id is gone from the volume
    # cut inside the membrane
    np.testing.assert_array_equal(labels[:, :12, :14], left)
    np.testing.assert_array_equal(labels[:, :12, 17:], right)
    # the segment split too: the left piece stays with 2 (the segment, named after supervoxel
    # 1 that no longer exists, is now named after 2), the right one is a segment
    assert session.segment_of(left) == session.segment_of(2) == 2
    assert session.segment_of(right) == right
    # the graph: the pieces' sizes and contacts, counted from the voxels
    graph = session.graph
    rows = graph.node_index([left, right])
    sizes = [int((labels == v).sum()) for v in (left, right)]
    assert graph.size[rows].tolist() == sizes and sum(sizes) == 6 * 12 * 30
    assert graph.bbox[rows[1]].tolist()[3:] == [6, 12, 30]
    edge = graph.edge_between(*rows)
    assert edge >= 0 and graph.area[edge] == 6 * 12 and graph.affinity[edge] < 0.1
    for piece, row in zip((left, right), rows):
        for neighbour in (2, 3):
            faces = int(((labels[:, 11] == piece) & (labels[:, 12] == neighbour)).sum())
            edge = graph.edge_between(row, int(graph.node_index([neighbour])[0]))
            assert (graph.area[edge] if edge >= 0 else 0) == faces
    _, old_edges, _ = graph.incident(graph.node_index([1]))
    assert len(old_edges) == 0  # the old supervoxel's contacts are retired
    # logged with its division, and the decisions name the pieces
    (entry,) = list(session.log.entries())
    assert entry.division is not None
    assert VoxelSplit.from_bytes(entry.division).supervoxel == 1
    assert (left, right) in session.decisions()[1] or (right, left) in session.decisions()[1]


def test_undo_redo_and_restart_replay_a_division_identically(tmp_path):
    session = session_over(tmp_path)
    original = volume_of(session)
    session.split("alice", [LEFT], [RIGHT])
    divided, membership = volume_of(session), dict(zip(*session.membership()))
    undone = session.undo("alice")
    np.testing.assert_array_equal(volume_of(session), original)
    assert session.segment_of(1) == 1 and sorted(undone.created) == [1]
    assert set(undone.retired) == {4, 5}
    assert len(session.graph.incident(session.graph.node_index([1]))[1]) == 2
    session.redo("alice")
    np.testing.assert_array_equal(volume_of(session), divided)
    assert dict(zip(*session.membership())) == membership
    session.log.close()

    again = session_over(tmp_path)
    np.testing.assert_array_equal(volume_of(again), divided)
    assert dict(zip(*again.membership())) == membership
    again.undo("alice")  # the undo stack came back too
    np.testing.assert_array_equal(volume_of(again), original)
    # a second division after the restart gets fresh ids
    again.redo("alice")
    again.split_supervoxel("alice", [(3, 15, 2)], [(3, 15, 12)])
    assert int(volume_of(again)[3, 15, 12]) == 7


def test_split_supervoxel_key_puts_the_sink_piece_in_a_segment_of_its_own(tmp_path):
    session = session_over(tmp_path)
    result = session.split_supervoxel("bob", [LEFT], [RIGHT])
    labels = volume_of(session)
    left, right = int(labels[LEFT]), int(labels[RIGHT])
    assert session.segment_of(left) == session.segment_of(2) == 2
    assert session.segment_of(right) == right and result.kind == "split-supervoxel"
    with pytest.raises(PromptcutError, match="no sink point lies in supervoxel"):
        session.split_supervoxel("bob", [(3, 15, 2)], [(3, 15, 25)])


def test_division_that_leaves_a_side_empty_is_refused_and_changes_nothing(tmp_path):
    session = session_over(tmp_path)
    before = volume_of(session)
    with pytest.raises(InputError, match="same voxel: one side of the division would be empty"):
        session.split("alice", [LEFT], [LEFT])
    with pytest.raises(InputError, match="one side of the division would be empty"):
        session.split_supervoxel("alice", [LEFT, RIGHT], [RIGHT])
    with pytest.raises(PromptcutError, match="background"):
        session.locate = lambda point: 0 if point == (0, 0, 0) else int(before[point])
        session.split_supervoxel("alice", [LEFT], [(0, 0, 0)])
    assert len(session.log) == 0 and session.graph.num_nodes == 3
    np.testing.assert_array_equal(volume_of(session), before)


def test_export_holds_the_divided_supervoxels(tmp_path):
    from segmentation.volume import open_volume

    session = session_over(tmp_path)
    session.split("alice", [LEFT], [RIGHT])
    ids, segments = session.membership()
    folder = export_segmentation(session.supervoxels, ids, segments, session.log,
                                 tmp_path / "export", block=(8, 16, 16))
    exported = open_volume(str(folder / "segmentation"), "segmentation").read(
        slice(None), slice(None), slice(None))
    assert int(exported[LEFT]) == 2 and int(exported[RIGHT]) == 5
    assert (exported[:, :12, 17:] == 5).all() and (exported[:, 12:, :15] == 2).all()
    assert "1,0" not in (folder / "membership.csv").read_text()


def test_division_takes_every_voxel_also_those_apart_from_the_rest():
    """A supervoxel need not be connected (a voxel cut off by a block face, say); a flood from
    the points never reaches such voxels, and one left out kept the old id in the volume
    while the graph no longer had it: the next edit at that voxel was refused."""
    labels, affinities, _ = scene()
    labels[0, 0, 0] = 2  # cut supervoxel 1's corner voxel (0, 0, 1) off from the rest
    labels[1, 0, 1] = labels[0, 1, 1] = labels[0, 0, 2] = 2
    assert labels[0, 0, 1] == 1
    pieces = divide(labels, affinities, 1, [LEFT], [RIGHT])
    assert ((pieces > 0) == (labels == 1)).all()
    # the nearer side (source pieces are numbered first) takes it, as a piece of its own
    assert pieces[0, 0, 1] not in (pieces[LEFT], pieces[RIGHT])
    assert pieces[0, 0, 1] < pieces[RIGHT]
