"""Reading and writing checkpoint files, with errors that name the file and what was expected.

Two formats, neither of which runs code when it is read: shipped weights are a ``.safetensors``
file (the tensors) with a ``.json`` file of the same name beside it (everything else: the kind
of network, its config, the training settings, the validation history); training checkpoints
(``promptcut train``) and SAM2's official checkpoints are PyTorch files of plain data, read
with ``weights_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from segmentation.errors import InputError

SAFETENSORS = ".safetensors"


def metadata_path(weights: Path) -> Path:
    """The JSON file beside a ``.safetensors`` file that holds everything but its tensors."""
    return weights.with_suffix(".json")


def read_payload(path: Path, what: str, expected: str) -> dict:
    """The checkpoint as one dict, its weights under 'model'. ``what`` names the file's role in
    errors ("SAM2 checkpoint"); ``expected`` says what the file should be."""
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    if path.suffix == SAFETENSORS:
        return _read_safetensors(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path} is not a readable PyTorch checkpoint of plain data "
                         f"(read with weights_only=True; {exc})") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise InputError(f"{path}: expected {expected}, a dict with the weights under 'model'")
    return payload


def _read_safetensors(path: Path) -> dict:
    meta = metadata_path(path)
    if not meta.is_file():
        raise InputError(f"{path}: its metadata {meta} is missing (a .safetensors checkpoint "
                         f"needs the .json of the same name beside it)")
    try:
        metadata = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{meta} is not readable JSON ({exc})") from None
    if not isinstance(metadata, dict) or "model" in metadata:
        raise InputError(f"{meta}: expected a JSON object of the checkpoint's metadata "
                         f"(kind, config, settings), without 'model'")
    try:
        weights = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable safetensors file ({exc})") from None
    return {**metadata, "model": weights}


def write_weights(payload: dict, target: Path) -> tuple[Path, Path]:
    """``payload``'s weights ('model') as ``target`` with the suffix .safetensors, the rest as
    the .json beside it; returns both paths."""
    weights = target.with_suffix(SAFETENSORS)
    meta = metadata_path(weights)
    weights.parent.mkdir(parents=True, exist_ok=True)
    rest = {k: v for k, v in payload.items() if k != "model"}
    text = json.dumps(rest, indent=1)  # fails (not JSON data) before anything is written
    # safetensors refuses tensors that share memory; clones keep the file self-contained
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in payload["model"].items()},
              weights)
    meta.write_text(text + "\n")
    return weights, meta
