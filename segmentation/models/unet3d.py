"""The SAvEM3 student: a residual 3D U-Net predicting affinities and a boundary map, with
optional distillation heads that regress a teacher's features (SAM2 embeddings or FGNet
features) with an L1 loss at 1/2 and 1/8 resolution, and optional long-range affinities (v and
v - d e_c for each distance d) as an auxiliary task: they make the network see objects whole, as
in Lee et al. 2017, and only the nearest-neighbour channels are used downstream.

Filters 32/64/128/256 by default; for anisotropic data the downsampling is in x and y only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segmentation.models.precision import autocast, channels_last


@dataclass
class UNetConfig:
    filters: tuple[int, ...] = (32, 64, 128, 256)
    anisotropic: bool = False  # downsample x and y only
    affinities: int = 3
    boundary: bool = True
    teacher_channels: Optional[int] = None  # width of the teacher's features, if distilling
    distill_levels: tuple[int, ...] = (1, 3)  # encoder levels at 1/2 and 1/8 resolution
    distill_weight: float = 0.5
    boundary_weight: float = 0.3
    long_range: tuple[int, ...] = ()  # auxiliary affinity distances (voxels) along z, y and x
    long_range_weight: float = 0.5
    extra: dict = field(default_factory=dict)

    @property
    def pool(self) -> tuple[int, int, int]:
        return (1, 2, 2) if self.anisotropic else (2, 2, 2)


def groups(channels: int) -> int:
    """The most groups, up to 8, that divide the channels."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class Norm(nn.GroupNorm):
    """GroupNorm whose statistics can be measured on samples of a volume and then kept.

    Trained as plain GroupNorm, the network normalises every input by that input's own
    statistics, so what it predicts at a voxel depends on where a block was cut around it.
    Calibrated (``calibrating`` while samples of the volume pass through, then ``freeze``),
    each group is normalised by its mean and variance pooled over those samples, the same for
    every block: the network becomes a fixed function of its input's neighbourhood, and
    blockwise prediction equals whole-volume prediction given enough context. The statistics
    are not part of the weights: they belong to a volume.
    """

    def __init__(self, num_groups: int, num_channels: int):
        super().__init__(num_groups, num_channels)
        self.register_buffer("mean", torch.zeros(num_groups), persistent=False)
        self.register_buffer("var", torch.ones(num_groups), persistent=False)
        self.mode = "sample"  # sample (plain GroupNorm) | calibrating | frozen
        self._sums = torch.zeros(3, num_groups, dtype=torch.float64)  # n, sum, sum of squares

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "calibrating":
            self._measure(x.detach())
        if self.mode != "frozen":
            return super().forward(x)
        per_channel = self.num_channels // self.num_groups
        scale = self.weight.float() / torch.sqrt(self.var + self.eps).repeat_interleave(
            per_channel)
        shift = self.bias.float() - self.mean.repeat_interleave(per_channel) * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x.float() * scale.view(shape) + shift.view(shape)

    def _measure(self, x: torch.Tensor) -> None:
        """Add a sample's count, sum and sum of squares per group, in float64. Summed per
        channel over rows of channels, which channels-last activations already are: for them
        one float64 copy, squared in place (regrouping first copied every activation twice
        more, and the demo's five calibration crops took 6.6 s instead of 4.7 s, for the same
        statistics to the bit). A copy even of float64: the activation itself goes on."""
        channels = x.shape[1]
        rows = x.movedim(1, -1).reshape(-1, channels).to(torch.float64, copy=True)
        per_channel = torch.stack([rows.sum(0), rows.square_().sum(0)])
        per_group = per_channel.view(2, self.num_groups, -1).sum(2).cpu()
        self._sums[0] += rows.shape[0] * (channels // self.num_groups)
        self._sums[1:] += per_group

    def calibrate(self) -> None:
        self._sums.zero_()
        self.mode = "calibrating"

    def freeze(self) -> None:
        count, total, squares = self._sums
        if (count == 0).any():
            raise RuntimeError("freeze() before any sample passed through calibrate()")
        mean = total / count
        self.mean = mean.float().to(self.weight.device)
        self.var = (squares / count - mean * mean).clamp(min=0).float().to(self.weight.device)
        self.mode = "frozen"


class ResidualBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(inputs, outputs, 3, padding=1, bias=False),
            Norm(groups(outputs), outputs), nn.GELU(),
            nn.Conv3d(outputs, outputs, 3, padding=1, bias=False),
            Norm(groups(outputs), outputs))
        self.skip = nn.Conv3d(inputs, outputs, 1) if inputs != outputs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.body(x) + self.skip(x))


class UNet3D(nn.Module):
    """EM (B, 1, Z, Y, X) in [0, 1] -> dict of logits: affinities (B, 3, ...), boundary
    (B, 1, ...), and, when distilling, features per distilled level."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        f = config.filters
        self.encoders = nn.ModuleList([ResidualBlock(1 if i == 0 else f[i - 1], f[i])
                                       for i in range(len(f))])
        self.decoders = nn.ModuleList([ResidualBlock(f[i] + f[i + 1], f[i])
                                       for i in range(len(f) - 1)])
        self.affinity_head = nn.Conv3d(f[0], config.affinities, 1)
        self.boundary_head = nn.Conv3d(f[0], 1, 1) if config.boundary else None
        self.long_range_head = nn.Conv3d(f[0], 3 * len(config.long_range), 1) \
            if config.long_range else None
        self.distill_heads = nn.ModuleDict()
        if config.teacher_channels:
            for level in config.distill_levels:
                self.distill_heads[str(level)] = nn.Conv3d(f[level], config.teacher_channels, 1)

    def calibrate(self) -> None:
        """Start measuring normalisation statistics on the samples that pass (see Norm)."""
        for module in self.modules():
            if isinstance(module, Norm):
                module.calibrate()

    def freeze(self) -> None:
        """Normalise every input by the statistics measured since ``calibrate``."""
        for module in self.modules():
            if isinstance(module, Norm):
                module.freeze()

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Input sizes must be multiples of this."""
        levels = len(self.config.filters) - 1
        return tuple(p ** levels for p in self.config.pool)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        skips = []
        for i, encoder in enumerate(self.encoders):
            if i:
                x = F.max_pool3d(x, self.config.pool)
            x = encoder(x)
            skips.append(x)
        outputs = {f"features_{level}": head(skips[int(level)])
                   for level, head in self.distill_heads.items()}
        for i in reversed(range(len(self.decoders))):
            x = F.interpolate(x, size=skips[i].shape[-3:], mode="trilinear",
                              align_corners=False)
            x = self.decoders[i](torch.cat([x, skips[i]], dim=1))
        outputs["affinities"] = self.affinity_head(x)
        if self.boundary_head is not None:
            outputs["boundary"] = self.boundary_head(x)
        if self.long_range_head is not None:
            outputs["long_range"] = self.long_range_head(x)
        return outputs

    def loss(self, outputs: dict[str, torch.Tensor], affinities: torch.Tensor,
             boundary: Optional[torch.Tensor] = None,
             teacher: Optional[dict[str, torch.Tensor]] = None,
             long_range: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class-balanced BCE on affinities (and boundaries, and long-range affinities); L1 to
        the teacher's features when given, each resized to the level it is regressed at."""
        c = self.config
        total = balanced_bce(outputs["affinities"], affinities)
        if long_range is not None and "long_range" in outputs:
            total = total + c.long_range_weight * balanced_bce(outputs["long_range"], long_range)
        if boundary is not None and "boundary" in outputs:
            total = total + c.boundary_weight * balanced_bce(outputs["boundary"], boundary)
        for name, target in (teacher or {}).items():
            predicted = outputs[name]
            target = F.interpolate(target, size=predicted.shape[-3:], mode="trilinear",
                                   align_corners=False)
            total = total + c.distill_weight * F.l1_loss(predicted.float(), target)
        return total


def balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with both classes weighted equally per channel: membranes are a few
    percent of the faces, and an unweighted loss learns to call everything 'same object'."""
    dims = [d for d in range(target.dim()) if d != 1]
    positive = target.mean(dim=dims, keepdim=True).clamp(0.01, 0.99)
    weight = torch.where(target > 0.5, 0.5 / positive, 0.5 / (1 - positive))
    return F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight)


def predict_affinities(model: UNet3D, image: np.ndarray, device: torch.device,
                       bf16: bool = False) -> np.ndarray:
    """Nearest-neighbour affinities of a whole array, padded to the network's divisor."""
    divisor = model.divisor
    pad = [(0, (-n) % d) for n, d in zip(image.shape, divisor)]
    padded = np.pad(image.astype(np.float32), pad, mode="reflect")
    tensor = channels_last(torch.from_numpy(padded)[None, None].to(device), bf16)
    with autocast(device, bf16):
        logits = model(tensor)["affinities"][0]
    result = torch.sigmoid(logits.float()).contiguous().cpu().numpy()
    return result[(slice(None),) + tuple(slice(0, n) for n in image.shape)]
