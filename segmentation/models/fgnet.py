"""FGNet (Li et al., AAAI 2026): SAM2 features guide a lightweight fine-grained encoder.

Per section z, the network sees the section and the one before it (so it can say whether voxel v
and v - e_z belong together):

- the SAM2 image encoder (frozen or trainable) embeds section z; its FPN levels carry the
  semantics SAM2 learned, at 1/4 to 1/16 of the resolution;
- a Fine-Grained Encoder (FGE), a small full-resolution CNN over both sections, keeps the detail
  that SAM2's downsampling loses;
- Feature-Guided Attention (FGA): FGE features at 1/4 resolution query the coarsest SAM2 features
  (cross-attention), and the answer gates and enriches the fine features;
- two affinity decoders: a coarse one on SAM2 features alone (A_s) and a refined one on the guided
  fine features (A_r); both are supervised, and the watershed runs on A_r.

SAM2 always sees a whole section resized to its input size (as the prompt backend does), and
FGNet gets those features resampled onto the window it works on (``window_levels``). Training,
the pipeline and the prompt loop therefore share one geometry, and the prompt loop can reuse the
features the prompt backend already cached for the clicked section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segmentation.models.sam2_prompt import sam_input
from segmentation.models.unet3d import balanced_bce


@dataclass
class FGNetConfig:
    fine_channels: int = 32  # width of the fine-grained encoder
    attention_dim: int = 64
    heads: int = 4
    sam_channels: int = 256  # SAM2's FPN width (d_model of the neck)
    freeze_sam: bool = True
    coarse_weight: float = 0.5  # weight of the A_s loss next to the A_r loss
    sam_image_size: int = 1024  # SAM2's input size (its config's image_size)


Window = tuple[tuple[int, int], tuple[int, int]]  # (y0, y1), (x0, x1) in section pixels


def section_levels(encoder: nn.Module, section: torch.Tensor, image_size: int
                   ) -> list[torch.Tensor]:
    """SAM2's FPN levels (strides 4, 8, 16 of its input) for whole sections (B, 1, H, W)."""
    return list(encoder(sam_input(section, image_size))["backbone_fpn"])


def window_levels(levels: Sequence[torch.Tensor], shape: Sequence[int], window: Window
                  ) -> list[torch.Tensor]:
    """Whole-section feature levels resampled onto a window of the section: each level keeps
    its own resolution relative to the section (bilinear, pixel centres aligned)."""
    (y0, y1), (x0, x1) = window
    height, width = shape
    out = []
    for level in levels:
        rows = max(1, round((y1 - y0) * level.shape[-2] / height))
        cols = max(1, round((x1 - x0) * level.shape[-1] / width))
        ys = y0 + (torch.arange(rows, device=level.device) + 0.5) * (y1 - y0) / rows
        xs = x0 + (torch.arange(cols, device=level.device) + 0.5) * (x1 - x0) / cols
        gy, gx = torch.meshgrid(2 * ys / height - 1, 2 * xs / width - 1, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None].expand(level.shape[0], -1, -1, -1)
        out.append(F.grid_sample(level.float(), grid.float(), mode="bilinear",
                                 align_corners=False))
    return out


def groups(channels: int) -> int:
    """The most groups, up to 8, that divide the channels."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def conv_block(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False),
                         nn.GroupNorm(groups(outputs), outputs), nn.GELU(),
                         nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False),
                         nn.GroupNorm(groups(outputs), outputs), nn.GELU())


class FineGrainedEncoder(nn.Module):
    """Full resolution to 1/4, two sections in: a feature pyramid of three levels."""

    def __init__(self, channels: int):
        super().__init__()
        self.full_level = conv_block(2, channels)
        self.half_level = conv_block(channels, channels * 2, stride=2)
        self.quarter_level = conv_block(channels * 2, channels * 4, stride=2)

    def forward(self, sections: torch.Tensor) -> list[torch.Tensor]:
        full = self.full_level(sections)
        half = self.half_level(full)
        return [full, half, self.quarter_level(half)]


class FeatureGuidedAttention(nn.Module):
    """Fine features ask SAM2's features where they belong; the answer gates them."""

    def __init__(self, fine: int, sam: int, dim: int, heads: int):
        super().__init__()
        self.query = nn.Conv2d(fine, dim, 1)
        self.key_value = nn.Conv2d(sam, dim * 2, 1)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.gate = nn.Sequential(nn.Conv2d(dim, fine, 1), nn.Sigmoid())
        self.mix = nn.Conv2d(fine + dim, fine, 1)

    def forward(self, fine: torch.Tensor, sam: torch.Tensor) -> torch.Tensor:
        b, _, h, w = fine.shape
        query = self.query(fine).flatten(2).transpose(1, 2)
        key, value = self.key_value(sam).flatten(2).transpose(1, 2).chunk(2, dim=-1)
        guided, _ = self.attention(query, key, value, need_weights=False)
        guided = guided.transpose(1, 2).reshape(b, -1, h, w)
        return self.mix(torch.cat([fine * self.gate(guided), guided], dim=1))


class AffinityHead(nn.Module):
    def __init__(self, channels: int, outputs: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.GELU(),
                                 nn.Conv2d(channels, outputs, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class FGNet(nn.Module):
    """Sections (B, 2, H, W) in [0, 1] -> affinity logits (A_s, A_r), each (B, 3, H, W)."""

    def __init__(self, image_encoder: nn.Module, config: FGNetConfig = FGNetConfig()):
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        for parameter in image_encoder.parameters():
            parameter.requires_grad_(not config.freeze_sam)
        c = config.fine_channels
        self.fine = FineGrainedEncoder(c)
        self.guide = FeatureGuidedAttention(c * 4, config.sam_channels, config.attention_dim,
                                            config.heads)
        self.coarse_head = AffinityHead(config.sam_channels)
        self.up_half = nn.Conv2d(c * 4 + c * 2, c * 2, 3, 1, 1)
        self.up_full = nn.Conv2d(c * 2 + c, c, 3, 1, 1)
        self.refined_head = AffinityHead(c)

    def sam_features(self, section: torch.Tensor) -> list[torch.Tensor]:
        """SAM2's FPN levels for whole sections (B, 1, H, W), with gradients only when SAM2 is
        fine-tuned."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_sam):
            return section_levels(self.image_encoder, section, self.config.sam_image_size)

    def forward(self, sections: torch.Tensor, sam_levels: Optional[list[torch.Tensor]] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sam_levels``: the current section's SAM2 features on this window (see
        ``window_levels``); without them the window is encoded as if it were the section."""
        size = sections.shape[-2:]
        if sam_levels is None:
            sam_levels = self.sam_features(sections[:, 1:2])
        coarse = F.interpolate(self.coarse_head(sam_levels[0]), size=size, mode="bilinear",
                               align_corners=False)
        full, half, quarter = self.fine(sections)
        guided = self.guide(quarter, sam_levels[-1])
        x = F.interpolate(guided, size=half.shape[-2:], mode="bilinear", align_corners=False)
        x = F.gelu(self.up_half(torch.cat([x, half], dim=1)))
        x = F.interpolate(x, size=full.shape[-2:], mode="bilinear", align_corners=False)
        x = F.gelu(self.up_full(torch.cat([x, full], dim=1)))
        return coarse, self.refined_head(x)

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor
             ) -> torch.Tensor:
        """Class-balanced cross-entropy on both maps, the coarse one down-weighted."""
        coarse, refined = outputs
        return balanced_bce(refined, target) + \
            self.config.coarse_weight * balanced_bce(coarse, target)


@torch.no_grad()
def predict_sections(model: FGNet, image: np.ndarray, device: torch.device) -> np.ndarray:
    """Refined affinities (3, z, y, x) in [0, 1] of whole sections of [0, 1] intensities, each
    section with the one before it (the first pairs with itself: its z affinities mean nothing
    and the pipeline's context crops them away)."""
    model.eval()
    result = np.zeros((3,) + image.shape, np.float32)
    for z in range(image.shape[0]):
        pair = np.stack([image[max(z - 1, 0)], image[z]]).astype(np.float32)
        _, refined = model(torch.from_numpy(pair)[None].to(device))
        result[:, z] = torch.sigmoid(refined[0].float()).cpu().numpy()
    return result
