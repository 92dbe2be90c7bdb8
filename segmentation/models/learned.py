"""A trained 3D U-Net student as an affinity model of the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmentation.affinities import NEAREST, AffinityModel
from segmentation.errors import InputError
from segmentation.models.training import predict_affinities
from segmentation.models.unet3d import UNet3D, UNetConfig


class StudentAffinities(AffinityModel):
    name = "unet3d"
    offsets = NEAREST

    def __init__(self, checkpoint: str | Path, device: str = "auto", context: int = 16):
        self.checkpoint = Path(checkpoint)
        if not self.checkpoint.is_file():
            raise InputError(f"affinity model checkpoint not found: {self.checkpoint}")
        try:
            payload = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
            config = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in payload["unet_config"].items()})
            model = UNet3D(config)
            model.load_state_dict(payload["model"])
        except (KeyError, RuntimeError, TypeError) as exc:
            raise InputError(f"{self.checkpoint} is not a promptcut 3D U-Net checkpoint "
                             f"(expected 'model' and 'unet_config'; {exc})") from None
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                                   if device == "auto" else device)
        self.model = model.to(self.device).eval()
        self._context = (context // 2 if config.anisotropic else context, context, context)

    @property
    def context(self) -> tuple[int, int, int]:
        return self._context

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        scale = 255.0 if image.dtype == np.uint8 else max(float(image.max()), 1.0)
        return predict_affinities(self.model, image.astype(np.float32) / scale, self.device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "checkpoint": str(self.checkpoint)}
