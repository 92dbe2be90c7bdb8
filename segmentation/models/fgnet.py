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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FGNetConfig:
    fine_channels: int = 32  # width of the fine-grained encoder
    attention_dim: int = 64
    heads: int = 4
    sam_channels: int = 256  # SAM2's FPN width (d_model of the neck)
    freeze_sam: bool = True
    coarse_weight: float = 0.5  # weight of the A_s loss next to the A_r loss


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
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def sam_features(self, section: torch.Tensor) -> list[torch.Tensor]:
        """SAM2's FPN levels (strides 4, 8, 16) for the current section."""
        rgb = (section.expand(-1, 3, -1, -1) - self.mean) / self.std
        if self.config.freeze_sam:
            with torch.no_grad():
                return self.image_encoder(rgb)["backbone_fpn"]
        return self.image_encoder(rgb)["backbone_fpn"]

    def forward(self, sections: torch.Tensor, sam_levels: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
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

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """Binary cross-entropy on both maps, the coarse one down-weighted."""
        coarse, refined = outputs
        refined_loss = F.binary_cross_entropy_with_logits(refined, target, weight=weight)
        coarse_loss = F.binary_cross_entropy_with_logits(coarse, target, weight=weight)
        return refined_loss + self.config.coarse_weight * coarse_loss
