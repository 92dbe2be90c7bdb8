"""The affinity models a config can name, built from its name (kept apart from the networks'
loading and inference in ``learned``, so that neither knows the other's callers)."""

from __future__ import annotations

from typing import Optional, Sequence

from segmentation.affinities import AffinityModel, IntensityBaseline
from segmentation.errors import InputError
from segmentation.models.learned import FGNetAffinities, StudentAffinities

LEARNED = {"unet3d": StudentAffinities, "fgnet": FGNetAffinities}


def make_model(name: str, voxel_size: Sequence[float], checkpoint: Optional[str] = None,
               device: str = "auto") -> AffinityModel:
    """The affinity model a config names: the baseline, the 3D U-Net student or FGNet."""
    if name in ("baseline", "intensity-baseline"):
        return IntensityBaseline(voxel_size=tuple(voxel_size))
    if name in LEARNED:
        if checkpoint is None:
            raise InputError(f"segment.model {name} needs segment.checkpoint (a file written "
                             f"by `promptcut train`)")
        return LEARNED[name](checkpoint, device)
    raise InputError(f"unknown affinity model '{name}' (available: baseline, unet3d, fgnet)")
