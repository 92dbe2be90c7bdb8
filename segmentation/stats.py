"""Per-id voxel counts of a segmentation, computed blockwise and cached in the project."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import fastremap
import numpy as np
from tqdm import tqdm

from segmentation.blockwise import block_count, iter_blocks
from segmentation.volume import Volume


@dataclass
class VoxelCounts:
    """Sorted ids (background 0 left out) and their voxel counts."""

    ids: np.ndarray  # uint64, ascending
    counts: np.ndarray  # int64

    def count(self, segment_id: int) -> int:
        i = int(np.searchsorted(self.ids, np.uint64(segment_id)))
        if i < len(self.ids) and int(self.ids[i]) == int(segment_id):
            return int(self.counts[i])
        return 0

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, ids=self.ids, counts=self.counts)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Optional["VoxelCounts"]:
        try:
            with np.load(path) as data:
                return cls(data["ids"], data["counts"])
        except (OSError, KeyError, ValueError):
            return None


def count_voxels(volume: Volume, block: tuple[int, int, int] = (128, 128, 128),
                 progress: bool = False) -> VoxelCounts:
    totals: dict[int, int] = {}
    for z, y, x in tqdm(iter_blocks(volume.shape, block), total=block_count(volume.shape, block),
                        desc="count voxels", disable=not progress, leave=False):
        ids, counts = fastremap.unique(volume.read(z, y, x), return_counts=True)
        for i, c in zip(ids.tolist(), counts.tolist()):
            totals[i] = totals.get(i, 0) + c
    totals.pop(0, None)
    ids = np.array(sorted(totals), dtype=np.uint64)
    return VoxelCounts(ids, np.array([totals[int(i)] for i in ids], dtype=np.int64))
