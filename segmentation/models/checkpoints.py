"""Reading checkpoint files with errors that name the file and what was expected."""

from __future__ import annotations

from pathlib import Path

import torch

from segmentation.errors import InputError


def read_payload(path: Path, what: str, expected: str, weights_only: bool = True) -> dict:
    """The dict in a PyTorch file that must hold its weights under 'model'. ``what`` names the
    file's role in errors ("SAM2 checkpoint"); ``expected`` says what the file should be."""
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:
        raise InputError(f"{path} is not a readable PyTorch checkpoint ({exc})") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise InputError(f"{path}: expected {expected}, a dict with the weights under 'model'")
    return payload
