"""Per-supervoxel meshes in neuroglancer's precomputed (legacy) mesh format.

A supervoxel that spans several blocks gets one fragment per block; each block meshes its
labels plus one voxel of the next block, so fragments meet without gaps. A neuron's mesh is the
set of its supervoxels' fragments, so merging or splitting neurons never re-meshes anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import zmesh


def mesh_block(labels: np.ndarray, origin: Sequence[int], voxel_size: Sequence[float],
               folder: Path, block_index: int, reduction: int) -> dict[int, list[str]]:
    """Mesh every supervoxel of a (z, y, x) block; return {id: [fragment file names]}."""
    folder.mkdir(parents=True, exist_ok=True)
    mesher = zmesh.Mesher(tuple(float(v) for v in voxel_size[::-1]))  # x, y, z
    mesher.mesh(np.asfortranarray(labels.T))
    # zmesh puts faces at voxel centres - 0.5; neuroglancer's voxel i spans [i, i + 1)
    shift = (np.asarray(origin[::-1], np.float32) + 0.5) * np.asarray(voxel_size[::-1],
                                                                     np.float32)
    written: dict[int, list[str]] = {}
    for segment in mesher.ids():
        mesh = mesher.get(segment, normals=False, reduction_factor=reduction,
                          max_error=float(max(voxel_size)), voxel_centered=False)
        mesher.erase(segment)
        if len(mesh.faces) == 0:
            continue
        mesh.vertices = (mesh.vertices + shift).astype(np.float32)
        name = f"fragment-{int(segment)}-{block_index}"
        (folder / name).write_bytes(mesh.to_precomputed())
        written[int(segment)] = [name]
    mesher.clear()
    return written


def write_mesh_manifests(volume: Path, per_block: list[dict[int, list[str]]]) -> int:
    """One manifest per supervoxel listing its fragments, and the info files that point to them."""
    folder = volume / "mesh"
    folder.mkdir(exist_ok=True)
    fragments: dict[int, list[str]] = {}
    for block in per_block:
        for segment, names in block.items():
            fragments.setdefault(segment, []).extend(names)
    for segment, names in fragments.items():
        (folder / f"{segment}:0").write_text(json.dumps({"fragments": sorted(names)}))
    (folder / "info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh"}))
    info_path = volume / "info"
    info = json.loads(info_path.read_text())
    info["mesh"] = "mesh"
    info_path.write_text(json.dumps(info))
    return len(fragments)
