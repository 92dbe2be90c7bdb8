"""The one supervoxel -> segment lookup: background, ids the table lacks, empty tables, and the
served view that keeps a table in step with edits."""

import fastremap
import numpy as np
import pytest

from segmentation.membership import DISTINCT_FIRST, assign, lookup, rows_of
from server.segments import MembershipView

RENUMBER = fastremap.renumber  # the real one, for the spies below
IDS = np.array([3, 5, 9, 12], np.uint64)
SEGMENTS = np.array([3, 3, 9, 3], np.uint64)


def test_known_ids_map_to_their_segment_in_any_shape():
    block = np.array([[[5, 9], [12, 3]]], np.uint64)
    mapped = lookup(IDS, SEGMENTS, block)
    assert mapped.shape == block.shape and mapped.dtype == np.uint64
    assert mapped.tolist() == [[[3, 9], [3, 3]]]


@pytest.mark.parametrize("missing, expected", [(0, [0, 0, 9, 0]), (7, [7, 7, 9, 0]),
                                                (None, [1, 100, 9, 0])])
def test_unknown_ids_become_missing_or_keep_their_own_id(missing, expected):
    assert lookup(IDS, SEGMENTS, [1, 100, 9, 0], missing=missing).tolist() == expected


def test_background_stays_zero_even_where_a_table_lists_it():
    assert lookup(np.array([0, 4], np.uint64), np.array([4, 4], np.uint64),
                  [0, 4, 0]).tolist() == [0, 4, 0]


@pytest.mark.parametrize("missing, expected", [(0, [0, 0, 0]), (None, [0, 2, 8])])
def test_an_empty_table(missing, expected):
    empty = np.zeros(0, np.uint64)
    assert lookup(empty, empty, [0, 2, 8], missing=missing).tolist() == expected
    assert rows_of(empty, [0, 2]).tolist() == [-1, -1]
    assert lookup(IDS, SEGMENTS, np.zeros((0, 4), np.uint64)).shape == (0, 4)


@pytest.mark.parametrize("missing", [0, 7, None])
def test_a_block_of_labels_maps_as_each_voxel_alone_would(missing, monkeypatch):
    # a block of labels takes the distinct-ids-first path: it must agree element by element
    # with the table search, on a block with background, unlisted ids, huge ids and a
    # strided view, and on an array of more distinct ids than the path's threshold
    renumbered = []
    monkeypatch.setattr(fastremap, "renumber", lambda *a, **k: renumbered.append(1) or
                        RENUMBER(*a, **k))
    rng = np.random.default_rng(4)
    ids = np.unique(rng.integers(1, 1 << 40, 3000).astype(np.uint64))
    segments = rng.choice(ids, len(ids))
    pool = np.concatenate([ids[::2], [0, 0, 1 << 63, 5], rng.integers(1, 1 << 40, 50)])
    cells = rng.choice(pool.astype(np.uint64), (10, 20, 18))
    block = np.kron(cells, np.ones((4, 4, 4), np.uint64))[:, ::2, 1::3]  # regions of labels
    assert block.size >= DISTINCT_FIRST and not block.flags.c_contiguous
    many = np.arange(1, 2 * DISTINCT_FIRST, dtype=np.uint64)
    many[:1000] = ids[:1000]
    many[len(many) // 2 - 3000:len(many) // 2 + 3000] = ids[7]  # repeated where it is judged
    assert len(np.unique(many)) > DISTINCT_FIRST
    for labels in (block, many):
        mapped = lookup(ids, segments, labels, missing=missing)
        parts = np.array_split(labels.ravel(), 4)  # each under the size of the new path
        searched = np.concatenate([lookup(ids, segments, p, missing=missing) for p in parts])
        assert mapped.dtype == np.uint64
        assert np.array_equal(mapped, searched.reshape(labels.shape))
    assert len(renumbered) == 2  # both took the distinct-ids-first path


def test_a_list_of_distinct_ids_is_searched_in_the_table(monkeypatch):
    """A graph's node ids (each once) are searched directly: mapping them as distinct ids
    first cost 20 times as long (0.75 s against 0.04 s for 2 M ids)."""
    monkeypatch.setattr(fastremap, "renumber", None)  # would fail if called
    many = np.arange(1, 4 * DISTINCT_FIRST, dtype=np.uint64)
    assert lookup(many, many * 2, many).tolist() == (many * 2).tolist()


def test_rows_of_finds_rows_and_marks_absent_ids():
    assert rows_of(IDS, [12, 3, 4, 13, 0]).tolist() == [3, 0, -1, -1, -1]


def test_assign_changes_rows_in_place_and_inserts_new_ids_in_order():
    ids, segments = IDS.copy(), SEGMENTS.copy()
    same_ids, same_segments = assign(ids, segments, [5, 9], [9, 3])
    assert same_ids is ids and same_segments is segments  # nothing new: changed in place
    assert segments.tolist() == [3, 9, 3, 3]
    ids, segments = assign(ids, segments, [20, 4, 20, 12], [1, 2, 6, 0])
    assert ids.tolist() == [3, 4, 5, 9, 12, 20]
    assert segments.tolist() == [3, 2, 9, 3, 0, 6]  # the last of repeats wins


def test_the_served_view_follows_edits_and_divisions():
    view = MembershipView(np.array([9, 2, 5], np.uint64), np.array([2, 2, 5], np.uint64))
    assert view.map(np.array([2, 5, 9, 7, 0], np.uint64)).tolist() == [2, 5, 2, 0, 0]
    assert view.picture().groups == [[2, 9]] and view.shown_as(2) == 2
    # supervoxel 5 divided into 11 and 12 (new ids), 12 then merged into segment 2
    generation = view.apply(np.array([[5, 5, 0], [11, 0, 5], [12, 0, 2]], np.uint64),
                            {5: 11})
    assert generation == 1 and view.divided_since(0).tolist() == [5, 11, 12]
    assert view.map(np.array([5, 11, 12], np.uint64)).tolist() == [5, 5, 2]
    assert view.segment_of(5) == 5 and view.segment_of(12) == 2 and view.segment_of(40) == 0
    assert view.picture().groups == [[2, 9, 12], [5, 11]]
    preview = view.picture_with(np.array([[11, 5, 2], [13, 0, 2]], np.uint64))
    assert preview.groups == [[2, 9, 11, 12]]  # 13 is created by the edit: not drawn
