"""Meshes in neuroglancer's precomputed formats, made with zmesh.

Two formats:

- per-supervoxel legacy meshes (``mesh_block``, ``write_mesh_manifests``): a supervoxel that
  spans several blocks gets one fragment per block; each block meshes its labels plus one voxel
  of the next block, so fragments meet without gaps. A neuron's mesh is the set of its
  supervoxels' fragments, so merging or splitting neurons never re-meshes anything.
- multi-resolution meshes in the sharded format (``MultiresMeshes``,
  ``neuroglancer_multilod_draco``), what neuroglancer and cloud-volume read for large exports.
  Level of detail k is the marching-cubes surface of pyramid scale k (the mode-downsampled
  segmentation) rather than a simplified copy of level 0: quadric simplification cost 97% of the
  mesh time (about 1.5 us a face), meshing a coarser scale costs an eighth of the one before.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import DracoPy
import numpy as np
import zmesh

QUANTIZATION_BITS = 16  # exact for zmesh's half-voxel vertices in chunks up to 2**15 voxels


def mesh_labels(labels: np.ndarray, origin: Sequence[int], voxel_size: Sequence[float],
                reduction: int = 0) -> dict[int, zmesh.Mesh]:
    """Every label's surface in a (z, y, x) block, vertices x, y, z in nm; simplified by
    ``reduction`` (0: not at all) to an error of at most one voxel.

    A block that holds one voxel of the next blocks yields a surface that ends half a voxel
    past its own voxels, where the next block's surface begins.
    """
    mesher = zmesh.Mesher(tuple(float(v) for v in voxel_size[::-1]))  # x, y, z
    mesher.mesh(np.asfortranarray(labels.T))
    # zmesh puts faces at voxel centres - 0.5; neuroglancer's voxel i spans [i, i + 1)
    shift = (np.asarray(origin[::-1], np.float32) + 0.5) * np.asarray(voxel_size[::-1],
                                                                     np.float32)
    meshes: dict[int, zmesh.Mesh] = {}
    for segment in mesher.ids():
        mesh = mesher.get(segment, normals=False, reduction_factor=reduction,
                          max_error=float(max(voxel_size)), voxel_centered=False)
        mesher.erase(segment)
        if len(mesh.faces):
            mesh.vertices = (mesh.vertices + shift).astype(np.float32)
            meshes[int(segment)] = mesh
    mesher.clear()
    return meshes


class MultiresMeshes:
    """Fragments of per-segment multi-resolution meshes, gathered block by block and written
    as sharded ``neuroglancer_multilod_draco`` (one shard entry per segment: its Draco
    fragments followed by its manifest).

    Level ``lod`` has chunks of ``chunk_nm * 2**lod``; a block of scale ``lod`` meshed with
    ``mesh_labels`` fills its chunk shifted by half a voxel of that scale (``vertex_offsets``).
    """

    def __init__(self, chunk_nm: Sequence[float], voxel_sizes: Sequence[Sequence[float]]):
        self.chunk = np.asarray(chunk_nm, np.float64)  # x, y, z
        # per level: half a voxel of its scale (x, y, z), where its blocks' surfaces start
        self.offsets = np.asarray([[v / 2 for v in size[::-1]] for size in voxel_sizes],
                                  np.float64)
        self.lod_scales = [float(max(size)) for size in voxel_sizes]
        self.fragments: dict[int, dict[int, dict[tuple[int, int, int], bytes]]] = \
            defaultdict(lambda: defaultdict(dict))

    @property
    def num_lods(self) -> int:
        return len(self.offsets)

    def add(self, lod: int, position: Sequence[int], meshes: dict[int, zmesh.Mesh]) -> None:
        """The meshes of one block of scale ``lod`` at chunk ``position`` (x, y, z)."""
        size = self.chunk * 2 ** lod
        low = self.offsets[lod] + size * np.asarray(position, np.float64)
        top = 2 ** QUANTIZATION_BITS - 1
        for segment, mesh in meshes.items():
            stored = np.clip(np.round((mesh.vertices - low) / size * top), 0, top)
            # neuroglancer reads the quantized integers as they are: range = 2**bits - 1
            self.fragments[segment][lod][tuple(int(p) for p in position)] = DracoPy.encode(
                stored.astype(np.float32), mesh.faces.astype(np.uint32).ravel(),
                quantization_bits=QUANTIZATION_BITS, quantization_range=top,
                quantization_origin=[0.0, 0.0, 0.0], compression_level=1)

    def write(self, folder: Path) -> int:
        """Write ``folder`` (info and shard files); return the number of segments."""
        # cloud-volume takes a second to import: only the writers that need it pay for it
        from cloudvolume.datasource.precomputed.sharding import (
            ShardingSpecification, compute_shard_params_for_hashed, synthesize_shard_files)

        folder.mkdir(parents=True, exist_ok=True)
        data, manifest_sizes = {}, {}
        for segment, lods in self.fragments.items():
            manifest, body = self._segment(segment, lods)
            data[segment] = body + manifest
            manifest_sizes[segment] = len(manifest)
        shard_bits, minishard_bits, preshift_bits = compute_shard_params_for_hashed(len(data))
        spec = ShardingSpecification("neuroglancer_uint64_sharded_v1", preshift_bits,
                                     "murmurhash3_x86_128", minishard_bits, shard_bits,
                                     minishard_index_encoding="gzip", data_encoding="raw")
        for name, binary in synthesize_shard_files(spec, data, manifest_sizes).items():
            (folder / name).write_bytes(binary)
        (folder / "info").write_text(json.dumps({
            "@type": "neuroglancer_multilod_draco",
            "vertex_quantization_bits": QUANTIZATION_BITS,
            "transform": [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            "lod_scale_multiplier": 1.0,
            "sharding": json.loads(spec.to_json())}))
        return len(data)

    def _segment(self, segment: int, lods: dict) -> tuple[bytes, bytes]:
        """One segment's manifest and fragment data. Every fragment's parent exists (empty
        if the coarser scale lost the segment there), as neuroglancer's octree needs."""
        from cloudvolume.datasource.precomputed.mesh.multilod import (
            MultiLevelPrecomputedMeshManifest)

        levels = [dict(lods.get(lod, {})) for lod in range(self.num_lods)]
        for lod in range(self.num_lods - 1):
            for x, y, z in levels[lod]:
                levels[lod + 1].setdefault((x // 2, y // 2, z // 2), b"")
        positions, sizes, body = [], [], []
        for level in levels:
            order = sorted(level, key=morton_code)
            positions.append(np.asarray(order, np.uint32).reshape(-1, 3))
            sizes.extend(len(level[p]) for p in order)
            body.extend(level[p] for p in order)
        manifest = MultiLevelPrecomputedMeshManifest(
            segment, chunk_shape=self.chunk, grid_origin=np.zeros(3), num_lods=self.num_lods,
            lod_scales=self.lod_scales, vertex_offsets=self.offsets,
            num_fragments_per_lod=[len(p) for p in positions], fragment_positions=positions,
            fragment_offsets=sizes)
        return manifest.to_binary(), b"".join(body)


def morton_code(position: Sequence[int]) -> int:
    """The z-order index of a chunk position (x, y, z; x in the lowest bit), the order
    neuroglancer expects fragments in."""
    code = 0
    for bit in range(21):
        for axis, value in enumerate(position):
            code |= ((int(value) >> bit) & 1) << (3 * bit + axis)
    return code


def mesh_block(labels: np.ndarray, origin: Sequence[int], voxel_size: Sequence[float],
               folder: Path, block_index: int, reduction: int) -> dict[int, list[str]]:
    """Mesh every supervoxel of a (z, y, x) block; return {id: [fragment file names]}."""
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[int, list[str]] = {}
    for segment, mesh in mesh_labels(labels, origin, voxel_size, reduction).items():
        name = f"fragment-{segment}-{block_index}"
        (folder / name).write_bytes(mesh.to_precomputed())
        written[segment] = [name]
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
