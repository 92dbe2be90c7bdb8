"""Import a stack or volume into a multiscale neuroglancer precomputed or OME-zarr volume.

The base scale is copied blockwise (bounded memory); each coarser scale is made from the one
before it with tensorstore's downsampling (mean for images, mode for segmentations, so ids stay
ids). Output appears atomically: see :mod:`segmentation.atomic`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import numpy as np
import tensorstore as ts
from tqdm import tqdm

from segmentation.atomic import atomic_directory
from segmentation.blockwise import iter_blocks
from segmentation.errors import InputError
from segmentation.stacks import Stack
from segmentation.volume import (Kind, Volume, create_precomputed_scale, create_zarr_scale,
                                 downsample_factors, storage_dtype, write_ome_zarr_group)

Source = Union[Stack, Volume]
MAX_SCALES = 12


@dataclass
class ImportReport:
    output: Path
    format: str
    kind: Kind
    shape: tuple[int, int, int]
    scales: list[tuple[int, int, int]]
    bytes_written: int
    seconds: float

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_written / 1e6 / max(self.seconds, 1e-9)


def scale_plan(shape: Sequence[int], voxel_size: Sequence[float], chunk: Sequence[int],
               min_downsampled: int) -> list[tuple[tuple[int, int, int], tuple[float, ...],
                                              tuple[int, int, int]]]:
    """(shape, voxel size, factors from the previous scale) for every scale, finest first.

    At least ``min_downsampled`` coarser scales, and more until one chunk covers the volume.
    """
    plan = [(tuple(int(s) for s in shape), tuple(float(v) for v in voxel_size), (1, 1, 1))]
    while len(plan) < MAX_SCALES:
        current, size, _ = plan[-1]
        covered = all(s <= c for s, c in zip(current, chunk))
        if len(plan) > min_downsampled and covered or all(s == 1 for s in current):
            break
        factors = downsample_factors(size)
        plan.append((tuple(-(-s // f) for s, f in zip(current, factors)),
                     tuple(v * f for v, f in zip(size, factors)), factors))
    return plan


def is_volume_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a volume (precomputed info or zarr metadata at its top), the
    only kind of folder an import may replace."""
    return any((Path(folder) / name).is_file() for name in ("info", ".zarray", ".zgroup",
                                                              "zarr.json"))


def import_volume(source: Source, output: Path, kind: Kind,
                  voxel_size: Optional[Sequence[float]] = None,
                  fmt: Literal["precomputed", "zarr"] = "precomputed",
                  chunk: Sequence[int] = (64, 64, 64), min_downsampled: int = 3,
                  overwrite: bool = False, progress: bool = True) -> ImportReport:
    """Write ``source`` (z, y, x) to ``output`` with a pyramid of downsampled scales."""
    voxel_size = voxel_size or source.voxel_size
    if voxel_size is None:
        raise InputError(f"{getattr(source, 'description', '') or 'the input'} does not state "
                         f"its voxel size: give it (--voxel-size Z Y X or dataset.voxel_size)")
    if len(voxel_size) != 3 or min(voxel_size) <= 0:
        raise InputError(f"voxel size must be three positive numbers (z, y, x), got {voxel_size}")
    dtype = storage_dtype(source.dtype, kind)
    plan = scale_plan(source.shape, voxel_size, chunk, min_downsampled)
    total = sum(int(np.prod(s)) for s, _, _ in plan) * dtype.itemsize
    started = time.perf_counter()
    output = Path(output)
    with atomic_directory(output, overwrite, replaceable=is_volume_folder,
                          what="volume") as scratch, \
            tqdm(total=total, unit="B", unit_scale=True, desc=f"import {output.name}",
                 disable=not progress, leave=False) as bar:
        if fmt == "precomputed":
            base = create_precomputed_scale(scratch, kind, dtype, *plan[0][:2], chunk)
        else:
            base = create_zarr_scale(scratch, 0, dtype, plan[0][0], chunk)
        _copy_base(source, base, kind, dtype, chunk, bar)
        write_pyramid(scratch, base, kind, dtype, plan, chunk, fmt, bar)
        if fmt == "zarr":
            write_ome_zarr_group(scratch, output.name, [size for _, size, _ in plan])
    return ImportReport(output, fmt, kind, plan[0][0], [s for s, _, _ in plan], total,
                        time.perf_counter() - started)


def write_pyramid(root: Path, base: ts.TensorStore, kind: Kind, dtype: np.dtype,
                  plan: list, chunk: Sequence[int], fmt: str, bar: Optional[tqdm] = None) -> None:
    """Every coarser scale of ``plan`` from the one before it (scale 0 is already written)."""
    previous = base
    for level, (shape, size, factors) in enumerate(plan[1:], start=1):
        if fmt == "precomputed":
            target = create_precomputed_scale(root, kind, dtype, shape, size, chunk)
        else:
            target = create_zarr_scale(root, level, dtype, shape, chunk)
        method = "mode" if kind == "segmentation" else "mean"
        _copy_view(ts.downsample(previous, list(factors), method=method), target, dtype, chunk,
                   bar)
        previous = target


def _copy_base(source: Source, target: ts.TensorStore, kind: Kind, dtype: np.dtype,
               chunk: Sequence[int], bar: tqdm) -> None:
    block = [c * 2 for c in chunk]
    for z, y, x in iter_blocks(source.shape, block):
        data = source.read(z, y, x)
        if kind == "segmentation" and data.dtype.kind == "i" and data.size and data.min() < 0:
            raise InputError(f"segmentation ids must not be negative (found {data.min()} in "
                             f"z {z.start}:{z.stop}, y {y.start}:{y.stop}, x {x.start}:{x.stop})")
        if kind == "image" and data.dtype.kind == "f" and not np.isfinite(data).all():
            raise InputError("the image holds NaN or infinite values")
        target[z, y, x].write(data.astype(dtype, copy=False)).result()
        bar.update(data.size * dtype.itemsize)


def _copy_view(view: ts.TensorStore, target: ts.TensorStore, dtype: np.dtype,
               chunk: Sequence[int], bar: Optional[tqdm]) -> None:
    block = [c * 2 for c in chunk]
    for z, y, x in iter_blocks(view.shape, block):
        data = view[z, y, x].read().result()
        target[z, y, x].write(data.astype(dtype, copy=False)).result()
        if bar is not None:
            bar.update(data.size * dtype.itemsize)
