"""Supervoxels: seeded watershed on the boundary map that the affinities give.

Seeds are the local maxima of the distance transform of the thresholded boundary map (voxels
clearly inside a cell, far from any membrane), in 3D, or per section for anisotropic data. The
flooding is ITK's morphological watershed from markers (SimpleITK), on the uint8 boundary map.

Blockwise, the distance transform is clipped at ``max_distance`` voxels: clipped, it depends only
on a neighbourhood of that radius, so with a halo that wide every block computes exactly the seeds
a single whole-volume run would. Seeds are then stitched across block faces (a connected-component
union) and flooded with a halo; only flooding paths that leave the halo can differ from a
whole-volume run, which the tests bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Optional, Sequence

import cc3d
import edt
import numpy as np
import SimpleITK as sitk
from annotated_types import Ge, Gt, Lt
from scipy import ndimage

from segmentation.errors import InputError
from segmentation.membership import renumbered


@dataclass(frozen=True)
class SupervoxelParams:
    """The seeded watershed that makes supervoxels from the boundary map."""

    # The config's ``segment.supervoxels`` section is this class: promptcut.config validates
    # it against these annotations (annotated_types) and describes each key by its docstring.

    threshold: Annotated[float, Gt(0), Lt(1)] = 0.5
    """Boundary evidence (0..1) below this is inside a cell: seeds grow where it is lower."""
    seed_window: Annotated[int, Ge(1)] = 7
    """Voxels (in x and y): a seed is a maximum of the distance transform in this window."""
    max_distance: Annotated[int, Ge(1)] = 8
    """Voxels: the distance transform is clipped here (the halo blockwise seeds need)."""
    min_size: Annotated[int, Ge(0)] = 64
    """Voxels: smaller fragments are merged into a neighbour."""
    per_section: Optional[bool] = None
    """Seeds per section (2D) or in 3D; none: per section when z is coarser than twice the
    x / y voxel size."""

    def validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"supervoxels.threshold must lie in (0, 1), got {self.threshold}")
        if self.seed_window < 1 or self.max_distance < 1 or self.min_size < 0:
            raise InputError("supervoxels.seed_window and max_distance must be at least 1, "
                             "min_size at least 0")

    def anisotropic(self, voxel_size: Sequence[float]) -> bool:
        if self.per_section is not None:
            return self.per_section
        return voxel_size[0] > 2.0 * max(voxel_size[1:])

    def seed_halo(self, voxel_size: Sequence[float]) -> tuple[int, int, int]:
        """Halo that makes blockwise seeds exact: the clip radius plus half the window."""
        reach = self.max_distance + self.seed_window // 2 + 1
        return (1 if self.anisotropic(voxel_size) else reach, reach, reach)


def seed_mask(boundary: np.ndarray, params: SupervoxelParams,
              voxel_size: Sequence[float]) -> np.ndarray:
    """Voxels that are local maxima of the clipped distance to the nearest boundary."""
    inside = boundary < params.threshold * 255
    anisotropic = params.anisotropic(voxel_size)
    if anisotropic:
        distance = np.stack([edt.edt(section, anisotropy=voxel_size[1:], parallel=1)
                             for section in inside]) / min(voxel_size[1:])
        window = (1, params.seed_window, params.seed_window)
    else:
        scale = min(voxel_size)
        distance = edt.edt(inside, anisotropy=tuple(voxel_size), parallel=1) / scale
        window = tuple(max(1, int(round(params.seed_window * scale / v))) | 1
                       for v in voxel_size)
    np.minimum(distance, params.max_distance, out=distance)
    peaks = ndimage.maximum_filter(distance, size=window, mode="nearest")
    return (distance == peaks) & (distance > 0)


def label_seeds(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected seeds, 6-connected so that stitching across block faces is exact."""
    labels, count = cc3d.connected_components(mask, connectivity=6, return_N=True,
                                              out_dtype=np.uint64)
    return labels, int(count)


def flood(boundary: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Every voxel to the seed whose flood reaches it first over the boundary map."""
    compact, original = renumbered(seeds)
    if len(original) == 1:  # background only
        return np.zeros(seeds.shape, np.uint64)
    # the narrowest markers that hold the seeds: ITK floods a 144^3 block of the demo with
    # 16-bit markers in 0.21 s against 0.28 s with 32-bit ones, to the same labels (its queue
    # and label images are half the size: two workers side by side lost less to each other)
    narrow = np.uint16 if len(original) <= 1 << 16 else np.uint32
    markers = sitk.GetImageFromArray(compact.astype(narrow, copy=False))
    del compact  # (SimpleITK copied it) what a block task holds at once is its memory
    image = sitk.GetImageFromArray(np.ascontiguousarray(boundary))
    result = sitk.MorphologicalWatershedFromMarkers(image, markers, markWatershedLine=False,
                                                    fullyConnected=False)
    del markers, image
    return original[sitk.GetArrayViewFromImage(result)]


def supervoxels(boundary: np.ndarray, params: SupervoxelParams,
                voxel_size: Sequence[float]) -> np.ndarray:
    """Whole-array supervoxels (no blocks): seeds, labels, flood."""
    seeds, _ = label_seeds(seed_mask(boundary, params, voxel_size))
    return flood(boundary, seeds)
