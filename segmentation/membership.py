"""Supervoxel -> segment through a sorted table: the one lookup everything uses.

A membership table is a sorted array of supervoxel ids and an aligned array of their segments.
The export's blocks, the session, the served view and the metrics all map ids through here, so
they agree on what becomes of the background 0 (always 0) and of an id the table lacks.
"""

from __future__ import annotations

from typing import Optional, Sequence

import fastremap
import numpy as np

Ids = np.ndarray | Sequence[int]
DISTINCT_FIRST = 1 << 15  # elements from which lookup maps the distinct ids only


def rows_of(ids: np.ndarray, wanted: Ids) -> np.ndarray:
    """Row of each wanted id in the sorted ``ids`` (any shape); -1 where it is not there."""
    wanted = np.asarray(wanted, np.uint64)
    if len(ids) == 0:
        return np.full(wanted.shape, -1, np.int64)
    index = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
    return np.where(ids[index] == wanted, index, -1)


def lookup(ids: np.ndarray, segments: np.ndarray, supervoxels: Ids,
           missing: Optional[int] = 0) -> np.ndarray:
    """Segment of each supervoxel (any shape, uint64): background 0 stays 0, an id not in the
    table becomes ``missing`` (None: keeps its own id, for tables that list only changes)."""
    supervoxels = np.asarray(supervoxels, np.uint64)
    if supervoxels.size < DISTINCT_FIRST or not _repeats_ids(supervoxels):
        return _searched(ids, segments, supervoxels, missing)
    # a block of labels holds few distinct ids: look those up and spread them back. A 128^3
    # block of the demo's fragments: 9.5 ms instead of 39 ms, whose searches and full-size
    # temporaries were memory-bound and slowed two workers side by side (a list of distinct
    # ids, such as a graph's nodes, would take 20 times as long this way)
    compact, distinct = renumbered(supervoxels)
    return _searched(ids, segments, distinct, missing)[compact]


def renumbered(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` as 1..N in the narrowest unsigned type (0 stays 0), and the id of each
    number: ``ids[compact]`` gives ``labels`` back (fastremap's hash map, one pass)."""
    compact, mapping = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    ids = np.zeros(max(mapping.values(), default=0) + 1, np.uint64)
    ids[np.fromiter(mapping.values(), np.int64, len(mapping))] = np.fromiter(
        mapping.keys(), np.uint64, len(mapping))
    return compact, ids


def _repeats_ids(values: np.ndarray) -> bool:
    """Whether neighbouring elements share ids (a block of labels, not a list of ids): judged
    on a patch of about 4096 elements from the middle of the array."""
    side = int(np.ceil(4096 ** (1 / values.ndim)))
    patch = values[tuple(slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + side)
                         for n in values.shape)]
    return len(np.unique(patch)) * 4 <= patch.size


def _searched(ids: np.ndarray, segments: np.ndarray, supervoxels: np.ndarray,
              missing: Optional[int]) -> np.ndarray:
    row = rows_of(ids, supervoxels)
    nonzero = supervoxels != 0
    fallback = supervoxels if missing is None else np.uint64(missing)
    mapped = np.asarray(segments, np.uint64)[np.maximum(row, 0)] if len(ids) else fallback
    return np.where((row >= 0) & nonzero, mapped,
                    np.where(nonzero, fallback, np.uint64(0))).astype(np.uint64, copy=False)


def assign(ids: np.ndarray, segments: np.ndarray, supervoxels: Ids,
           new: Ids) -> tuple[np.ndarray, np.ndarray]:
    """The table with each supervoxel given its new segment (the last of repeats wins); ids
    not in it are inserted in order (new arrays); otherwise ``segments`` is changed in place
    and ``ids`` never is."""
    supervoxels = np.asarray(supervoxels, np.uint64).ravel()
    new = np.broadcast_to(np.asarray(new, np.uint64), supervoxels.shape)
    row = rows_of(ids, supervoxels)
    there = row >= 0
    segments[row[there]] = new[there]
    if there.all():
        return ids, segments
    # unique over the reversed rows keeps each id's last value
    added, first = np.unique(supervoxels[~there][::-1], return_index=True)
    values = new[~there][::-1][first]
    merged = np.concatenate([ids, added])
    order = np.argsort(merged, kind="stable")
    return merged[order], np.concatenate([segments, values])[order]
