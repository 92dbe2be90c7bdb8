"""Export the corrected segmentation: the membership applied to the supervoxels, blockwise.

One atomic folder holds everything a downstream analysis needs, in forms the ecosystem opens as
they are (cloud-volume, neuroglancer, ome-zarr-py, napari)::

    segmentation/          neuroglancer precomputed, uint64 compressed_segmentation, multiscale;
                           sharded when the volume has more than SHARD_ABOVE_CHUNKS chunks
    segmentation/mesh/     per-segment multi-resolution meshes, sharded
                           (neuroglancer_multilod_draco)
    segmentation.zarr/     OME-Zarr 0.4: the EM image (when given) with the segmentation as the
                           label image labels/segmentation (image-label metadata)
    membership.csv         supervoxel,segment for every supervoxel
    edit_log.jsonl         every operation that led here
    export.json            when, from what, and how many segments
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tensorstore as ts
from tqdm import tqdm

from segmentation.atomic import atomic_directory
from segmentation.blockwise import Runner, make_blocks
from segmentation.editlog import EditLog
from segmentation.errors import InputError
from segmentation.importer import scale_plan
from segmentation.membership import lookup
from segmentation.meshes import EXACT_BITS, mesh_volume
from segmentation.volume import Volume, create_precomputed_scale, create_zarr

CHUNK = (64, 64, 64)
MARK = "promptcut export"  # export.json's "format": what --overwrite may replace
# Above this many chunks at full resolution (4096 chunks of 64^3: a gigavoxel) the precomputed
# volume is sharded: one file per chunk stops being practical for file systems and buckets.
SHARD_ABOVE_CHUNKS = 4096
SHARD_BYTES = 2 ** 28  # uncompressed bytes a shard covers: 256^3 uint64 voxels
LABEL_NAME = "segmentation"


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is one that export_segmentation wrote."""
    try:
        return json.loads((Path(folder) / "export.json").read_text()).get("format") == MARK
    except (OSError, ValueError, AttributeError):
        return False


def sharding_for(shape: Sequence[int], chunk: Sequence[int] = CHUNK,
                 shard_above: int = SHARD_ABOVE_CHUNKS) -> Optional[dict]:
    """The precomputed sharding spec of a segmentation scale (z, y, x shape), or None when it
    has no more than ``shard_above`` chunks (unsharded: one file per chunk)."""
    chunks = int(np.prod([-(-s // c) for s, c in zip(shape, chunk)]))
    if chunks <= shard_above:
        return None
    # cloud-volume and ome-zarr take seconds to import (dask): imported where an export runs
    from cloudvolume.datasource.precomputed.sharding import compute_shard_params_for_image

    spec = compute_shard_params_for_image(
        tuple(int(s) for s in shape[::-1]), tuple(int(c) for c in chunk[::-1]),
        "compressed_segmentation", np.uint64, uncompressed_shard_bytesize=SHARD_BYTES)
    return json.loads(spec.to_json())


def write_block_shape(shape: Sequence[int], sharding: Optional[dict],
                      chunk: Sequence[int] = CHUNK) -> tuple[int, int, int]:
    """Blocks that never share a shard (a shared one is rewritten by every block) or chunk."""
    if sharding is None:
        return tuple(c * 2 for c in chunk)
    from cloudvolume.datasource.precomputed.sharding import image_shard_shape_from_spec

    shard = image_shard_shape_from_spec(sharding, tuple(int(s) for s in shape[::-1]),
                                        tuple(int(c) for c in chunk[::-1]))
    return tuple(int(s) for s in shard[::-1])


def export_segmentation(supervoxels: Volume, ids: np.ndarray, segments: np.ndarray,
                        log: Optional[EditLog], output: Path, block=None,
                        progress: bool = False, overwrite: bool = False,
                        image: Optional[Volume] = None, meshes: bool = True,
                        shard_above: int = SHARD_ABOVE_CHUNKS) -> Path:
    """Write the export to ``output``; an existing folder is replaced only with ``overwrite``
    and only if it is an earlier export. ``image`` (the EM) becomes the OME-Zarr image that
    holds the label image; without it the zarr root holds only ``labels/``."""
    order = np.argsort(ids)
    ids, segments = np.asarray(ids, np.uint64)[order], np.asarray(segments, np.uint64)[order]
    shape, voxel_size = supervoxels.shape, supervoxels.voxel_size
    plan = scale_plan(shape, voxel_size, CHUNK, 3)
    if image is not None and tuple(image.shape) != tuple(shape):
        raise InputError(f"the image {image.shape} and the segmentation {shape} differ in shape")
    with atomic_directory(output, overwrite, replaceable=is_export, what="export") as scratch:
        precomputed = scratch / "segmentation"
        zarr_root = scratch / "segmentation.zarr"
        labels = zarr_root / "labels" / LABEL_NAME
        shardings = [sharding_for(s, CHUNK, shard_above) for s, _, _ in plan]
        base = create_precomputed_scale(precomputed, "segmentation", np.uint64, shape,
                                        voxel_size, CHUNK, sharding=shardings[0])
        zarr_base = create_zarr(labels / "0", np.uint64, shape, CHUNK)
        blocks = make_blocks(shape, block or write_block_shape(shape, shardings[0]))
        for b in tqdm(blocks, desc="export", disable=not progress, leave=False, unit="block"):
            mapped = lookup(ids, segments, supervoxels.read(*b.core), missing=None)
            base[b.core].write(mapped).result()
            zarr_base[b.core].write(mapped).result()
        _pyramid(precomputed, labels, base, zarr_base, plan, shardings, "segmentation")
        _ome_zarr(zarr_root, labels, image, plan)
        mesh_count = _meshes(precomputed, plan, progress) if meshes else 0
        with open(scratch / "membership.csv", "w") as table:
            table.write("supervoxel,segment\n")
            for sv, seg in zip(ids.tolist(), segments.tolist()):
                table.write(f"{sv},{seg}\n")
        operations = log.export_jsonl(scratch / "edit_log.jsonl") if log is not None else 0
        (scratch / "export.json").write_text(json.dumps({
            "format": MARK, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "supervoxels": len(ids),
            "segments": int(len(np.unique(segments))), "meshes": mesh_count,
            "sharded": shardings[0] is not None, "operations": operations,
            "shape_zyx": list(shape), "voxel_size_nm_zyx": list(voxel_size)}, indent=2))
    return Path(output)


def _pyramid(precomputed: Optional[Path], zarr_folder: Path, base: Optional[ts.TensorStore],
             zarr_base: ts.TensorStore, plan: list, shardings: list,
             kind: str) -> None:
    """Every coarser scale from the one before it, in the precomputed volume (when given)
    and the zarr multiscale group, in blocks aligned to the shards."""
    previous = zarr_base
    dtype = np.dtype(zarr_base.dtype.numpy_dtype)
    method = "mode" if kind == "segmentation" else "mean"
    for level, (shape, size, factors) in enumerate(plan[1:], start=1):
        targets = [create_zarr(zarr_folder / str(level), dtype, shape, CHUNK)]
        if precomputed is not None:
            targets.append(create_precomputed_scale(precomputed, kind, dtype, shape, size,
                                                    CHUNK, sharding=shardings[level]))
        view = ts.downsample(previous, list(factors), method=method)
        for b in make_blocks(shape, write_block_shape(shape, shardings[level])):
            data = view[b.core].read().result().astype(dtype, copy=False)
            for target in targets:
                target[b.core].write(data).result()
        previous = targets[0]


def _ome_zarr(root: Path, labels: Path, image: Optional[Volume], plan: list) -> None:
    """OME-NGFF 0.4 metadata through ome-zarr-py: the label image at labels/<name> and, with
    ``image``, the EM pyramid at the root that it labels."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

    fmt = FormatV04()
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    datasets = _datasets([size for _, size, _ in plan])
    root_group = zarr.open_group(str(root), mode="a", zarr_format=2)
    if image is not None:
        base = None
        for b in make_blocks(image.shape, write_block_shape(image.shape, None)):
            data = image.read(*b.core)
            if base is None:
                base = create_zarr(root / "0", data.dtype, image.shape, CHUNK)
            base[b.core].write(data).result()
        _pyramid(None, root, None, base, plan, [None] * len(plan), "image")
        write_multiscales_metadata(root_group, datasets, fmt=fmt, axes=axes, name="image")
    labels_group = root_group.require_group("labels")
    label_group = zarr.open_group(str(labels), mode="a", zarr_format=2)
    write_multiscales_metadata(label_group, datasets, fmt=fmt, axes=axes, name=LABEL_NAME)
    source = {"source": {"image": "../../"}} if image is not None else {}
    write_label_metadata(labels_group, LABEL_NAME, fmt=fmt, **source)


def _datasets(scales: Sequence[Sequence[float]]) -> list[dict]:
    """Scale and translation of every level: a voxel averaged from f finer ones is centred
    (f - 1) / 2 of them along."""
    base = scales[0]
    return [{"path": str(i), "coordinateTransformations": [
        {"type": "scale", "scale": [float(v) for v in s]},
        {"type": "translation", "translation": [(v - b) / 2 for v, b in zip(s, base)]}]}
        for i, s in enumerate(scales)]


def _meshes(precomputed: Path, plan: list, progress: bool) -> int:
    """Per-segment multi-resolution meshes under ``precomputed``/mesh, a level of detail for
    every scale, vertices exact (the export is for analysis as well as display)."""
    with Runner(0, progress=progress) as runner:  # in this process
        return mesh_volume(precomputed, plan, len(plan), EXACT_BITS, runner)
