"""Export the corrected segmentation: the membership applied to the supervoxels, blockwise.

One atomic folder holds everything a downstream analysis needs::

    segmentation/        neuroglancer precomputed, uint64 compressed_segmentation, multiscale
    segmentation.zarr/   the same as OME-zarr
    membership.csv       supervoxel,segment for every supervoxel
    edit_log.jsonl       every operation that led here
    export.json          when, from what, and how many segments
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from segmentation.atomic import atomic_directory
from segmentation.blockwise import make_blocks
from segmentation.editlog import EditLog
from segmentation.importer import scale_plan, write_pyramid
from segmentation.volume import (Volume, create_precomputed_scale, create_zarr_scale,
                                 write_ome_zarr_group)

CHUNK = (64, 64, 64)
MARK = "promptcut export"  # export.json's "format": what --overwrite may replace


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is one that export_segmentation wrote."""
    try:
        return json.loads((Path(folder) / "export.json").read_text()).get("format") == MARK
    except (OSError, ValueError, AttributeError):
        return False


def apply_membership(block: np.ndarray, ids: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Supervoxel ids to segment ids (``ids`` sorted); ids not in the table stay as they are."""
    if len(ids) == 0:
        return block.astype(np.uint64)
    index = np.minimum(np.searchsorted(ids, block), len(ids) - 1)
    found = ids[index] == block
    return np.where(found, segments[index], block).astype(np.uint64)


def export_segmentation(supervoxels: Volume, ids: np.ndarray, segments: np.ndarray,
                        log: Optional[EditLog], output: Path, block=(128, 128, 128),
                        progress: bool = False, overwrite: bool = False) -> Path:
    """Write the export to ``output``; an existing folder is replaced only with ``overwrite``
    and only if it is an earlier export."""
    order = np.argsort(ids)
    ids, segments = np.asarray(ids, np.uint64)[order], np.asarray(segments, np.uint64)[order]
    shape, voxel_size = supervoxels.shape, supervoxels.voxel_size
    plan = scale_plan(shape, voxel_size, CHUNK, 3)
    with atomic_directory(output, overwrite, replaceable=is_export, what="export") as scratch:
        precomputed = scratch / "segmentation"
        zarr = scratch / "segmentation.zarr"
        base = create_precomputed_scale(precomputed, "segmentation", np.uint64, shape,
                                        voxel_size, CHUNK)
        zarr_base = create_zarr_scale(zarr, 0, np.uint64, shape, CHUNK)
        blocks = make_blocks(shape, block)
        for b in tqdm(blocks, desc="export", disable=not progress, leave=False, unit="block"):
            mapped = apply_membership(supervoxels.read(*b.core), ids, segments)
            base[b.core].write(mapped).result()
            zarr_base[b.core].write(mapped).result()
        dtype = np.dtype(np.uint64)
        write_pyramid(precomputed, base, "segmentation", dtype, plan, CHUNK, "precomputed")
        write_pyramid(zarr, zarr_base, "segmentation", dtype, plan, CHUNK, "zarr")
        write_ome_zarr_group(zarr, "segmentation", [size for _, size, _ in plan])
        with open(scratch / "membership.csv", "w") as table:
            table.write("supervoxel,segment\n")
            for sv, seg in zip(ids.tolist(), segments.tolist()):
                table.write(f"{sv},{seg}\n")
        operations = log.export_jsonl(scratch / "edit_log.jsonl") if log is not None else 0
        (scratch / "export.json").write_text(json.dumps({
            "format": MARK, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "supervoxels": len(ids),
            "segments": int(len(np.unique(segments))), "operations": operations,
            "shape_zyx": list(shape), "voxel_size_nm_zyx": list(voxel_size)}, indent=2))
    return Path(output)
