"""Which segment (neuron) each supervoxel belongs to. A segment is named by one of its members."""

from __future__ import annotations

from typing import Iterator

import numpy as np


class Membership:
    """A read-only supervoxel -> segment table with fast lookups both ways."""

    def __init__(self, ids: np.ndarray, segments: np.ndarray):
        order = np.argsort(ids)
        self.ids = np.asarray(ids, np.uint64)[order]
        self.segments = np.asarray(segments, np.uint64)[order]
        by_segment = np.argsort(self.segments, kind="stable")
        self._grouped = self.ids[by_segment]
        self._group_keys, self._group_starts = np.unique(self.segments[by_segment],
                                                         return_index=True)

    @classmethod
    def identity(cls, ids: np.ndarray) -> "Membership":
        return cls(ids, ids)

    def segment_of(self, supervoxel: int) -> int:
        """The segment of a supervoxel; one that is not in the table is its own segment."""
        i = int(np.searchsorted(self.ids, np.uint64(supervoxel)))
        if i < len(self.ids) and int(self.ids[i]) == int(supervoxel):
            return int(self.segments[i])
        return int(supervoxel)

    def members(self, segment: int) -> np.ndarray:
        i = int(np.searchsorted(self._group_keys, np.uint64(segment)))
        if i >= len(self._group_keys) or int(self._group_keys[i]) != int(segment):
            return np.array([segment], np.uint64)
        end = self._group_starts[i + 1] if i + 1 < len(self._group_starts) else len(self._grouped)
        return self._grouped[self._group_starts[i]:end]

    def groups(self) -> Iterator[np.ndarray]:
        """Members of every segment with more than one supervoxel."""
        bounds = list(self._group_starts) + [len(self._grouped)]
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end - start > 1:
                yield self._grouped[start:end]

    @property
    def num_segments(self) -> int:
        return len(self._group_keys)
