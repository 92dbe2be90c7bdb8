"""Meshes in neuroglancer's multi-resolution format (``neuroglancer_multilod_draco``), sharded,
made with zmesh and written and read with cloud-volume's implementation of the format.

The pipeline meshes every supervoxel this way (a neuron's mesh is the set of its supervoxels'
meshes, so merging or splitting neurons never re-meshes anything) and the export meshes every
segment. Level of detail k is the marching-cubes surface of pyramid scale first + k (the
mode-downsampled labels) in chunks of 2^k MESH_BLOCK voxels of scale 0: quadric simplification
cost about 1.5 us a face, 97% of the old mesh time, while meshing a coarser scale costs an
eighth of the one before. A segment spanning several blocks has one fragment per block; each
block meshes its labels plus one voxel of the next blocks, so fragments meet without gaps.

Draco encoding then costs about 0.3 us a face whatever its settings, so the faces are the
cost: the full-resolution surface of the demo's supervoxels has 7.0 million, that of scale 1
(twice the voxel) 1.6 million. The supervoxel meshes start at scale 1 (as the field's
production meshes start at a downsampled scale); the export's meshes at full resolution.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import json
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import DracoPy
import fastremap
import numpy as np
import zmesh

from segmentation.blockwise import Block, Runner, make_blocks
from segmentation.file_ranges import read_range
from segmentation.volume import open_precomputed_scale

MESH_BLOCK = (128, 128, 128)  # voxels of scale 0 in a level-0 chunk (level k: 2^k times)
# Draco quantization: 10 bits put a vertex within 1/16 voxel of a 128-voxel chunk and encode
# about twice as fast as 16 (what the export uses, exact for zmesh's half-voxel vertices)
DISPLAY_BITS = 10
EXACT_BITS = 16


def mesh_labels(labels: np.ndarray, origin: Sequence[int], voxel_size: Sequence[float],
                reduction: int = 0) -> dict[int, zmesh.Mesh]:
    """Every label's surface in a (z, y, x) block (see ``label_meshes``)."""
    return dict(label_meshes(labels, origin, voxel_size, reduction))


def label_meshes(labels: np.ndarray, origin: Sequence[int], voxel_size: Sequence[float],
                 reduction: int = 0) -> Iterator[tuple[int, zmesh.Mesh]]:
    """Each label's surface in a (z, y, x) block, one at a time, vertices x, y, z in nm;
    simplified by ``reduction`` (0: not at all) to an error of at most one voxel. A consumer
    that encodes each as it comes holds one label's vertices at a time, not the block's
    (a 128^3 block of the second scale has 2.6 million faces, 46 MB).

    A block that holds one voxel of the next blocks yields a surface that ends half a voxel
    past its own voxels, where the next block's surface begins.
    """
    mesher = zmesh.Mesher(tuple(float(v) for v in voxel_size[::-1]))  # x, y, z
    mesher.mesh(np.asfortranarray(labels.T))
    del labels  # the caller's may be the last reference: the meshes are what is held now
    # zmesh puts faces at voxel centres - 0.5; neuroglancer's voxel i spans [i, i + 1)
    shift = (np.asarray(origin[::-1], np.float32) + 0.5) * np.asarray(voxel_size[::-1],
                                                                     np.float32)
    for segment in mesher.ids():
        mesh = mesher.get(segment, normals=False, reduction_factor=reduction,
                          max_error=float(max(voxel_size)), voxel_centered=False)
        mesher.erase(segment)
        if len(mesh.faces):
            mesh.vertices = (mesh.vertices + shift).astype(np.float32)
            yield int(segment), mesh
    mesher.clear()


def encode_fragments(meshes: Iterable[tuple[int, zmesh.Mesh]], low: np.ndarray,
                     size: np.ndarray, bits: int) -> dict[int, bytes]:
    """Draco fragments of the (segment, mesh) pairs of one chunk spanning ``low`` to
    ``low + size`` (x, y, z nm), vertices quantized to ``bits`` within it."""
    top = 2 ** bits - 1
    fragments = {}
    for segment, mesh in meshes:
        stored = np.clip(np.round((mesh.vertices - low) / size * top), 0, top)
        # neuroglancer reads the quantized integers as they are: range = 2**bits - 1
        fragments[segment] = DracoPy.encode(
            stored.astype(np.float32), mesh.faces.astype(np.uint32).ravel(),
            quantization_bits=bits, quantization_range=top,
            quantization_origin=[0.0, 0.0, 0.0], compression_level=4)
    return fragments


def chunk_box(chunk_nm: Sequence[float], lod: int, voxel_size: Sequence[float],
              position: Sequence[int], origin: Sequence[float] = (0.0, 0.0, 0.0)
              ) -> tuple[np.ndarray, np.ndarray]:
    """(low corner, size) in nm (x, y, z) of chunk ``position`` (x, y, z) at level ``lod``:
    chunks of ``chunk_nm * 2**lod`` from ``origin``, shifted by half a voxel of the level's
    scale (``voxel_size``, z, y, x), where a block meshed with ``mesh_labels`` starts."""
    size = np.asarray(chunk_nm, np.float64) * 2 ** lod
    half = np.asarray(voxel_size[::-1], np.float64) / 2
    return np.asarray(origin, np.float64) + half + size * np.asarray(position, np.float64), size


class MultiresMeshes:
    """Fragments of per-segment multi-resolution meshes, gathered block by block and written
    as sharded ``neuroglancer_multilod_draco`` (one shard entry per segment: its manifest, with
    its Draco fragments just before it in the shard file).

    Level ``lod`` has chunks of ``chunk_nm * 2**lod`` from ``grid_origin``; a block of the
    level's scale (``voxel_sizes``) meshed with ``mesh_labels`` fills its chunk shifted by half
    a voxel of that scale (``vertex_offsets``). A segment whose fragments of a level were all
    meshed at another scale (``add_encoded``'s ``voxel_size``: a label the level's scale lost)
    has that scale's offset in its own manifest.
    """

    def __init__(self, chunk_nm: Sequence[float], voxel_sizes: Sequence[Sequence[float]],
                 bits: int = EXACT_BITS, grid_origin: Sequence[float] = (0.0, 0.0, 0.0)):
        self.chunk = np.asarray(chunk_nm, np.float64)  # x, y, z
        self.origin = np.asarray(grid_origin, np.float64)
        self.bits = bits
        self.voxel_sizes = [tuple(size) for size in voxel_sizes]  # z, y, x per level
        self.fragments: dict[int, dict[int, dict[tuple[int, int, int], bytes]]] = \
            defaultdict(lambda: defaultdict(dict))
        self.meshed_at: dict[int, dict[int, tuple]] = defaultdict(dict)  # segment: lod: size

    @property
    def num_lods(self) -> int:
        return len(self.voxel_sizes)

    def add(self, lod: int, position: Sequence[int], meshes: dict[int, zmesh.Mesh]) -> None:
        """The meshes of one block of scale ``lod`` at chunk ``position`` (x, y, z)."""
        box = chunk_box(self.chunk, lod, self.voxel_sizes[lod], position, self.origin)
        self.add_encoded(lod, position, encode_fragments(meshes.items(), *box, self.bits))

    def add_encoded(self, lod: int, position: Sequence[int], fragments: dict[int, bytes],
                    voxel_size: Optional[Sequence[float]] = None) -> None:
        """Fragments ``encode_fragments`` made for chunk ``position`` of level ``lod``, from
        labels of ``voxel_size`` (z, y, x; default: the level's)."""
        other = voxel_size is not None and tuple(voxel_size) != self.voxel_sizes[lod]
        for segment, fragment in fragments.items():
            self.fragments[segment][lod][tuple(int(p) for p in position)] = fragment
            if other:
                self.meshed_at[segment][lod] = tuple(voxel_size)

    def write(self, folder: Path) -> int:
        """Write ``folder`` (info and shard files); return the number of segments."""
        # cloud-volume takes a second to import: only the writers that need it pay for it
        from cloudvolume.datasource.precomputed.sharding import (
            ShardingSpecification, compute_shard_params_for_hashed, synthesize_shard_files)

        folder.mkdir(parents=True, exist_ok=True)
        data, manifest_sizes = {}, {}
        for segment in sorted(self.fragments):  # not as blocks came: the same shard bytes
            # whatever the workers and the order they finished in
            manifest, body = self.entry(segment)
            data[segment] = body + manifest
            manifest_sizes[segment] = len(manifest)
        shard_bits, minishard_bits, preshift_bits = compute_shard_params_for_hashed(len(data))
        spec = ShardingSpecification("neuroglancer_uint64_sharded_v1", preshift_bits,
                                     "murmurhash3_x86_128", minishard_bits, shard_bits,
                                     minishard_index_encoding="gzip", data_encoding="raw")
        for name, binary in synthesize_shard_files(spec, data, manifest_sizes).items():
            (folder / name).write_bytes(binary)
        (folder / "info").write_text(json.dumps({
            "@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": self.bits,
            "transform": [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            "lod_scale_multiplier": 1.0, "sharding": json.loads(spec.to_json())}))
        return len(data)

    def entry(self, segment: int) -> tuple[bytes, bytes]:
        """One segment's manifest and fragment data. Every fragment's parent exists (empty
        if the coarser scale lost the segment there), as neuroglancer's octree needs."""
        from cloudvolume.datasource.precomputed.mesh.multilod import (
            MultiLevelPrecomputedMeshManifest)

        lods = self.fragments[segment]
        scales = [self.meshed_at.get(segment, {}).get(lod, size)
                 for lod, size in enumerate(self.voxel_sizes)]
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
            segment, chunk_shape=self.chunk, grid_origin=self.origin, num_lods=self.num_lods,
            lod_scales=[float(max(size)) for size in scales],
            # per level: half a voxel of its scale (x, y, z), where its blocks' surfaces start
            vertex_offsets=np.asarray([size[::-1] for size in scales]) / 2,
            num_fragments_per_lod=[len(p) for p in positions], fragment_positions=positions,
            fragment_offsets=sizes)
        return manifest.to_binary(), b"".join(body)


def import_writer_in_background() -> threading.Thread:
    """Import what ``MultiresMeshes.write`` needs (cloud-volume: 0.6-0.7 s) on a thread, for a
    caller about to wait on something else (a Dask cluster starting): the first write would
    otherwise wait for it, at the end of the meshes stage."""
    # a daemon: a run that ends early does not wait for it
    thread = threading.Thread(target=_import_writer, name="import the mesh writer", daemon=True)
    thread.start()
    return thread


WRITER_MODULES = ("cloudvolume.datasource.precomputed.mesh.multilod",
                  "cloudvolume.datasource.precomputed.sharding")


def _import_writer() -> None:
    try:
        for name in WRITER_MODULES:
            importlib.import_module(name)
    except Exception:  # noqa: BLE001 (the writer's own import reports it, where it is needed)
        pass


@functools.lru_cache(maxsize=1 << 16)
def morton_code(position: tuple[int, int, int]) -> int:
    """The z-order index of a chunk position (x, y, z; x in the lowest bit), the order
    neuroglancer expects fragments in (cached: every segment's fragments sit on the same few
    block positions)."""
    code = 0
    for bit in range(21):
        for axis, value in enumerate(position):
            code |= ((int(value) >> bit) & 1) << (3 * bit + axis)
    return code


@dataclass(frozen=True)
class MeshJob:
    """One block of one level of detail: ``block`` is in voxels of the pyramid scale read
    (``scale``, of ``voxel_size``: the level's own, or full resolution for the labels it lost)
    and its grid position is the level's chunk it fills. With ``pieces`` ((label, voxels of it
    in the block), each region of which is read apart) only those labels are meshed."""

    lod: int
    block: Block
    scale: int
    voxel_size: tuple[float, float, float]  # z, y, x nm
    pieces: tuple[tuple[int, tuple[slice, ...]], ...] = ()


def mesh_jobs(plan: Sequence, levels: int, first: int = 0
              ) -> tuple[list[MeshJob], list[tuple[float, ...]]]:
    """The blocks to mesh for up to ``levels`` levels of detail of a pyramid (``scale_plan``:
    shape, voxel size, factors per scale) from scale ``first`` on, and each level's voxel size.
    A level is a scale whose blocks are whole voxels (all of them, unless z is never halved).
    Coarser levels come first: a block of level k + 1 covers eight of level k and costs about
    twice as much, and started last it would keep one worker busy after the others are done.
    Level 0's chunks are MESH_BLOCK voxels of scale 0 whichever scale it meshes (64^3 blocks of
    scale 1: the demo in 8 blocks, not 1 for one worker to mesh alone)."""
    base = np.asarray(plan[0][1], np.float64)
    jobs, sizes = [], []
    for lod, (shape, size, _) in enumerate(plan[first:first + levels]):
        voxels = 2 ** lod * base / np.asarray(size, np.float64) * MESH_BLOCK
        if not np.allclose(np.round(voxels), voxels):
            break
        block = tuple(int(round(v)) for v in voxels)
        sizes.append(tuple(float(v) for v in size))
        jobs[:0] = [MeshJob(lod, b, first + lod, sizes[-1])
                    for b in make_blocks(shape, block)]
    return jobs, sizes


def lost_label_jobs(plan: Sequence, labels: np.ndarray, boxes: np.ndarray) -> list[MeshJob]:
    """Level-0 jobs that mesh ``labels`` (with their boxes in full-resolution voxels: z0, y0,
    x0, z1, y1, x1) at full resolution: labels that level 0's scale lost to its downsampling
    (the smallest supervoxels), which would otherwise have no mesh at all. (A label it loses
    in some chunks only keeps its mesh elsewhere and has a gap there.) One job per level-0
    chunk they touch, reading each label's box there apart (plus a voxel before, where its
    surface closes, and after, where the next chunk's piece begins): a box around all of a
    chunk's labels would be most of the chunk."""
    full = tuple(float(v) for v in plan[0][1])
    shape = tuple(int(n) for n in plan[0][0])
    footprint = np.asarray(MESH_BLOCK)  # a level-0 chunk (see mesh_jobs)
    pieces: dict[tuple[int, ...], list] = defaultdict(list)
    for label, box in zip(labels, boxes):
        low, high = np.asarray(box[:3]), np.asarray(box[3:])
        # from the chunk of the voxel before the box: a box that starts on a chunk's first
        # voxel closes in the chunk before, which reads that voxel and the box's first
        for chunk in itertools.product(*(range(max(a - 1, 0) // f, (b - 1) // f + 1)
                                         for a, b, f in zip(low, high, footprint))):
            start = np.maximum(low - 1, np.asarray(chunk) * footprint)
            stop = np.minimum(high, (np.asarray(chunk) + 1) * footprint)
            pieces[chunk].append((int(label), tuple(slice(int(a), int(b))
                                                     for a, b in zip(start, stop))))
    chunks = {block.grid: block for block in make_blocks(shape, MESH_BLOCK)}
    return [MeshJob(0, chunks[chunk], 0, full, tuple(found))
            for chunk, found in sorted(pieces.items())]


def region_surfaces(precomputed: str, scale: int, core: tuple[slice, ...],
                    shape: Sequence[int], voxel_size: Sequence[float],
                    only: Optional[int] = None) -> Iterator[tuple[int, zmesh.Mesh]]:
    """The surfaces (``label_meshes``) of the labels in ``core`` of a pyramid scale, or of
    label ``only``, plus one voxel of the next blocks (where their surfaces begin)."""
    upper = tuple(1 if s.stop < n else 0 for s, n in zip(core, shape))
    labels = open_precomputed_scale(Path(precomputed), scale)[
        tuple(slice(s.start, s.stop + u) for s, u in zip(core, upper))].read().result()
    if only is not None:
        labels = fastremap.mask_except(labels, [only], in_place=True)
    # background beyond the volume's faces, so that surfaces close there (a neuron leaving
    # the volume is not left open); on the low faces the closing surface lies half a voxel
    # outside the chunk and is drawn at its edge
    before = tuple(1 if s.start == 0 else 0 for s in core)
    # the narrowest type that holds the ids: zmesh meshes it as it is (a quarter of the
    # memory of uint64 for the supervoxels of a volume under 65536 of them)
    labels = fastremap.refit(np.pad(labels, [(b, 1 - u) for b, u in zip(before, upper)]))
    return label_meshes(labels, [s.start - b for s, b in zip(core, before)], voxel_size)


def mesh_fragments(job: MeshJob, precomputed: str, chunk_nm: Sequence[float], bits: int
                   ) -> tuple[MeshJob, dict[int, bytes]]:
    """The Draco fragments of one block (a task for the runner's workers: the encoding is most
    of the time, and only bytes travel back)."""
    shape = job.block.shape
    if job.pieces:
        meshes = itertools.chain.from_iterable(
            region_surfaces(precomputed, job.scale, core, shape, job.voxel_size, label)
            for label, core in job.pieces)
    else:
        meshes = region_surfaces(precomputed, job.scale, job.block.core, shape, job.voxel_size)
    box = chunk_box(chunk_nm, job.lod, job.voxel_size, job.block.grid[::-1])
    return job, encode_fragments(meshes, *box, bits)


def mesh_volume(precomputed: Path, plan: Sequence, levels: int, bits: int,
                runner: Runner, first: int = 0,
                extents: Optional[tuple[np.ndarray, np.ndarray]] = None) -> int:
    """Mesh every label of a precomputed pyramid into ``precomputed``/mesh (the blocks on the
    runner's workers), name the mesh folder in its info, and return the number of labels
    meshed. Level 0 is the surface of scale ``first``; with ``extents`` (every label and its
    full-resolution box, z0, y0, x0, z1, y1, x1) the labels that scale lost are meshed at full
    resolution in level 0, so that every label has a mesh."""
    first = min(first, len(plan) - 1)
    jobs, sizes = mesh_jobs(plan, levels, first)
    chunk_nm = [float(m * v) for m, v in zip(MESH_BLOCK[::-1], plan[0][1][::-1])]  # x, y, z
    writer = MultiresMeshes(chunk_nm, sizes, bits)

    def gather(to_do: list[MeshJob], desc: str) -> None:
        for job, fragments in runner.imap(mesh_fragments, to_do, str(precomputed), chunk_nm,
                                          bits, desc=desc):
            writer.add_encoded(job.lod, job.block.grid[::-1], fragments, job.voxel_size)

    gather(jobs, "meshes")
    if first and extents is not None:
        labels, boxes = extents
        meshed = [segment for segment, lods in writer.fragments.items() if 0 in lods]
        lost = ~np.isin(labels, np.asarray(meshed, np.uint64))
        if lost.any():
            gather(lost_label_jobs(plan, labels[lost], boxes[lost]), "small meshes")
    count = writer.write(precomputed / "mesh")
    _point_info_to_meshes(precomputed)
    return count


def _point_info_to_meshes(precomputed: Path) -> None:
    """The volume's info names its mesh folder (through cloud-volume, as igneous does)."""
    from cloudvolume import CloudVolume

    volume = CloudVolume(f"file://{precomputed}", progress=False)
    volume.info["mesh"] = "mesh"
    volume.commit_info()


def single_mesh_entry(segment: int, mesh: zmesh.Mesh, voxel_size: Sequence[float],
                      bits: int = DISPLAY_BITS) -> tuple[bytes, bytes]:
    """(manifest, fragment data) of one mesh as a one-fragment, one-level multi-resolution
    mesh whose chunk is the mesh's own bounding box (for a supervoxel a division made)."""
    voxel = np.asarray(voxel_size[::-1], np.float64)
    low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    writer = MultiresMeshes(np.maximum(high - low, voxel), [voxel_size], bits,
                            grid_origin=low - voxel / 2)  # + the half-voxel offset: low
    writer.add(0, (0, 0, 0), {segment: mesh})
    return writer.entry(segment)


@dataclass(frozen=True)
class MeshEntry:
    """A segment's manifest and where its fragment data is: ``read(start, stop)`` gives bytes
    [start, stop) of the data, ``size`` long in all."""

    manifest: bytes
    size: int
    read: Callable[[int, int], bytes]

    @classmethod
    def in_memory(cls, manifest: bytes, body: bytes) -> "MeshEntry":
        return cls(manifest, len(body), lambda start, stop: body[start:stop])


class StoredMeshes:
    """Per-segment entries of a sharded multi-resolution mesh folder, found with cloud-volume's
    shard reader (minishard indices cached; one caller at a time, as its caches are not
    guarded), the data then read from the shard file directly."""

    def __init__(self, volume_dir: Path):
        from cloudvolume import CloudVolume
        from cloudvolume.datasource.precomputed.mesh.multilod import (
            MultiLevelPrecomputedMeshManifest)

        self._manifest_type = MultiLevelPrecomputedMeshManifest
        self.folder = Path(volume_dir) / "mesh"
        self.info = json.loads((self.folder / "info").read_text())
        self._source = CloudVolume(f"file://{Path(volume_dir).resolve()}", progress=False,
                                   cache=False).mesh
        self._lock = threading.Lock()

    @staticmethod
    def present(volume_dir: Path) -> bool:
        """Whether ``volume_dir`` has meshes in this format (older projects have legacy ones)."""
        try:
            info = json.loads((Path(volume_dir) / "mesh" / "info").read_text())
        except (OSError, ValueError):
            return False
        return info.get("@type") == "neuroglancer_multilod_draco" and "sharding" in info

    def served_info(self) -> dict:
        return {k: v for k, v in self.info.items() if k != "sharding"}

    def find(self, segment: int) -> Optional[MeshEntry]:
        with self._lock:
            found = self._source.reader.exists(int(segment), self._source.path,
                                               return_byte_range=True)
        if found is None:
            return None
        shard, start, length = found
        path = self.folder / Path(shard).name
        manifest = read_range(path, start, start + length)
        parsed = self._manifest_type.from_binary(manifest, segment_id=int(segment))
        size = int(sum(int(np.sum(sizes)) for sizes in parsed.fragment_offsets))
        data_start = start - size
        return MeshEntry(manifest, size, lambda a, b: read_range(path, data_start + a,
                                                                 data_start + b))

