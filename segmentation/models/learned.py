"""Trained networks (the 3D U-Net student, FGNet) as affinity models of the pipeline: loading
their checkpoints and predicting. Which model a config names is the registry's business."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from segmentation.affinities import NEAREST, AffinityModel
from segmentation.errors import InputError
from segmentation.models.checkpoints import read_payload
from segmentation.models.fgnet import FGNet, FGNetConfig, predict_sections
from segmentation.models.precision import channels_last, use_bf16
from segmentation.models.sam2_prompt import instantiate_model, pick_device
from segmentation.models.unet3d import UNet3D, UNetConfig, predict_affinities


def read_checkpoint(path: Path, kind: str) -> dict:
    """A checkpoint written by `promptcut train` (.pt) or exported by it (.safetensors with its
    .json), refused with the file named when it is not one of the ``kind`` expected."""
    payload = read_payload(path, "affinity model checkpoint",
                           "a checkpoint written by `promptcut train` or its export")
    found = payload.get("kind", "unet3d")  # the first shipped student predates the field
    if found != kind:
        raise InputError(f"{path} holds a {found} model, but the config asks for {kind}")
    return payload


def load_student(path: Path) -> UNet3D:
    payload = read_checkpoint(path, "unet3d")
    try:
        config = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in payload["unet_config"].items()})
        model = UNet3D(config)
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise InputError(f"{path} is not a promptcut 3D U-Net checkpoint "
                         f"(expected 'model' and 'unet_config'; {exc})") from None
    return model


def load_fgnet(path: Path) -> FGNet:
    """FGNet with the SAM2 image encoder it was trained with (config and weights are in the
    file: no SAM2 checkpoint is needed to run it)."""
    payload = read_checkpoint(path, "fgnet")
    try:
        sam = instantiate_model(payload["sam2"]["model_config"])
        model = FGNet(sam.image_encoder, FGNetConfig(**payload["fgnet_config"]))
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise InputError(f"{path} is not a promptcut FGNet checkpoint (expected 'model', "
                         f"'fgnet_config' and 'sam2'; {exc})") from None
    return model


def to_unit(image: np.ndarray, scale: Optional[float] = None) -> np.ndarray:
    """Intensities in [0, 1] as the networks were trained on: uint8 over 255, other types over
    ``scale`` (a volume's maximum, fitted once) or, without one, over this array's maximum."""
    if image.dtype == np.uint8:
        scale = 255.0
    elif scale is None:
        scale = max(float(image.max()), 1.0)
    return image.astype(np.float32) / scale


class LearnedAffinities(AffinityModel):
    """A network from a checkpoint, on CUDA when there is one."""

    threaded = True

    def __init__(self, checkpoint: str | Path, model: torch.nn.Module, device: str = "auto"):
        self.checkpoint = Path(checkpoint)
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.intensity_scale: Optional[float] = None  # set by fit: one scale for every block

    def fit(self, samples: Sequence[np.ndarray]) -> None:
        if samples[0].dtype != np.uint8:
            self.intensity_scale = max(max(float(s.max()) for s in samples), 1.0)

    def unit(self, image: np.ndarray) -> np.ndarray:
        return to_unit(image, self.intensity_scale)

    @contextlib.contextmanager
    def threads(self, count: Optional[int]) -> Iterator[None]:
        before = torch.get_num_threads()
        if count is not None:
            torch.set_num_threads(count)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "checkpoint": str(self.checkpoint)}

    @property
    def title(self) -> str:
        return f"affinity model {self.name} ({self.checkpoint})"


class StudentAffinities(LearnedAffinities):
    """The 3D U-Net student. Until ``fit`` it normalises every input by that input's own
    statistics (as trained); ``fit`` measures them once on a sample of the volume and keeps
    them, so that every block of the volume is predicted by the same fixed network and
    blockwise prediction equals whole-volume prediction (given ``context``)."""

    name = "unet3d"
    offsets = NEAREST

    # Voxels of context per side: the receptive field's theoretical reach (72 voxels for the
    # shipped 4-level network) matters little at its edge. Measured on the demo volume, 128^3
    # blocks against whole-volume prediction, fitted statistics: 16 voxels differ by 0.13/255
    # on average (0.43/255 within 8 voxels of a face), 32 by 0.019/255 (0.054/255, at most
    # 8.6/255 at single voxels), 48 by 0.002/255 at 1.3x the time of 32.
    CONTEXT = 32

    def __init__(self, checkpoint: str | Path, device: str = "auto",
                 context: Optional[int] = None, precision: str = "auto"):
        model = load_student(Path(checkpoint))
        super().__init__(checkpoint, model, device)
        self.bf16 = use_bf16(self.device, precision)
        self.model = channels_last(self.model, self.bf16)
        reach = receptive_radius(model)
        wanted = self.CONTEXT if context is None else context
        self._context = tuple(-(-min(wanted, r) // d) * d
                              for r, d in zip(reach, model.divisor))

    @property
    def context(self) -> tuple[int, int, int]:
        """Voxels on each side, rounded up to the network's pooling grid so that every block
        is pooled as the whole volume is (blocks start on that grid too)."""
        return self._context

    def fit(self, samples: Sequence[np.ndarray]) -> None:
        """Normalisation statistics pooled over samples spread across the volume."""
        super().fit(samples)
        self.model.calibrate()
        with torch.no_grad():
            for sample in samples:
                predict_affinities(self.model, self.unit(sample), self.device, self.bf16)
        self.model.freeze()

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        return predict_affinities(self.model, self.unit(image), self.device, self.bf16)


def receptive_radius(model: UNet3D) -> tuple[int, int, int]:
    """Voxels beyond an output voxel, per axis, that can change it at all: two 3x3x3
    convolutions per level on the way down and up, at that level's scale, plus pooling and
    upsampling."""
    levels = len(model.config.filters)
    radius = []
    for pool in model.config.pool:
        scales = [pool ** level for level in range(levels)]
        convolutions = 2 * sum(scales) + 2 * sum(scales[:-1])
        resampling = 2 * sum(scales[1:])
        radius.append(convolutions + resampling)
    return tuple(radius)


class FGNetAffinities(LearnedAffinities):
    """FGNet section by section. SAM2 sees whole sections, so blocks span whole sections."""

    name = "fgnet"
    offsets = NEAREST
    whole_sections = True

    def __init__(self, checkpoint: str | Path, device: str = "auto"):
        super().__init__(checkpoint, load_fgnet(Path(checkpoint)), device)

    @property
    def context(self) -> tuple[int, int, int]:
        return (1, 0, 0)  # the section before the block's first

    def predict(self, image: np.ndarray) -> np.ndarray:
        return predict_sections(self.model, self.unit(image), self.device)
