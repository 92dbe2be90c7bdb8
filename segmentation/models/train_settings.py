"""How `promptcut train` trains an affinity model: the settings alone, without torch, so that
the config (whose ``train`` section this is) loads fast."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from annotated_types import Ge, Gt, Le, Len

Positive = Annotated[int, Ge(1)]


@dataclass
class TrainSettings:
    """How `promptcut train` trains an affinity model."""

    # The config's ``train`` section is this class: promptcut.config validates it against
    # these annotations (annotated_types) and describes each key by its docstring.

    model: Literal["unet3d", "fgnet"] = "unet3d"
    """The affinity model to train: the 3D U-Net student or FGNet (2D, on SAM2 features)."""
    iterations: Positive = 2000
    """Optimiser steps in all (a resumed run continues up to this many)."""
    patch: Annotated[tuple[Positive, ...], Len(3, 3)] = (32, 96, 96)
    """Training patch in voxels, in the order [z, y, x] (FGNet uses its y and x)."""
    batch: Positive = 2
    """Patches per optimiser step."""
    learning_rate: Annotated[float, Gt(0)] = 1e-3
    """Adam's learning rate (at the start, when ``final_learning_rate`` is set)."""
    final_learning_rate: Optional[Annotated[float, Ge(0)]] = None
    """Cosine decay to this by the last iteration; none: a constant learning rate."""
    validation_slices: Positive = 40
    """The last sections (z) of the volume, held out for validation."""
    validate_every: Positive = 250
    """Iterations between validations (VOI and ARAND on the held-out sections)."""
    checkpoint_every: Positive = 250
    """Iterations between checkpoints."""
    filters: Annotated[tuple[Positive, ...], Len(1)] = (16, 32, 64, 128)
    """unet3d: channels at each level of the U-Net, finest first."""
    anisotropic: bool = False
    """unet3d: no pooling along z (for data whose z is much coarser than x and y)."""
    seed: Annotated[int, Ge(0)] = 0
    """Random seed of patch sampling, augmentation and initialisation."""
    fine_channels: Positive = 32
    """fgnet: width of the fine-grained encoder."""
    freeze_sam: bool = True
    """fgnet: keep SAM2's encoder (models.sam2) as it is, and cache its features."""
    feature_cache: Positive = 16
    """fgnet with a frozen SAM2: sections whose features are kept in memory."""
    teacher: Optional[Literal["sam2"]] = None
    """unet3d: sam2 distils SAM2's features (models.sam2) into the student; none: no teacher."""
    thresholds: Annotated[tuple[Annotated[float, Ge(0), Le(1)], ...], Len(1)] = \
        (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    """Agglomeration thresholds (0..1) that validation tries; the best one is reported."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bfloat16 where the CPU (AMX / AVX-512 BF16) or GPU has it, else fp32."""
    init: Optional[str] = None
    """Start from this checkpoint's weights (fine-tuning); in a config, relative to it."""
    long_range: tuple[Annotated[int, Ge(2)], ...] = ()
    """unet3d: auxiliary long-range affinity distances in voxels (1 is always predicted)."""
    output: Optional[str] = None
    """Where `promptcut train` writes, relative to the project folder; none: models/<model>.
    (The trainers are given the resolved folder and ignore this.)"""
