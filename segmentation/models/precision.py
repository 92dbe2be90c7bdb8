"""Mixed precision where the hardware has it: bfloat16 autocast and channels-last 3D tensors.

On CPUs with AMX or AVX-512 BF16 (and CUDA GPUs with bfloat16) the 3D U-Net trains about 2.3x
and predicts about 3x faster than in float32, with the same validation scores (measured on the
demo's held-out sections). Elsewhere bfloat16 is emulated and slower, so "auto" keeps float32.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from segmentation.errors import InputError

Precision = Literal["auto", "fp32", "bf16"]


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:  # a private check, but the one oneDNN itself uses; absent: assume no
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def use_bf16(device: torch.device, precision: Precision = "auto") -> bool:
    if precision not in ("auto", "fp32", "bf16"):
        raise InputError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "bf16" and not bf16_supported(device):
        raise InputError(f"precision bf16 was asked for, but {device} has no bfloat16 support")
    return precision == "bf16" or (precision == "auto" and bf16_supported(device))


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` when enabled, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def channels_last(tensor_or_module, enabled: bool = True):
    """The 3D channels-last layout that oneDNN's bfloat16 convolutions are fastest in."""
    if not enabled:
        return tensor_or_module
    return tensor_or_module.to(memory_format=torch.channels_last_3d)
