"""The bulk pipeline, blockwise: EM -> affinities -> supervoxels -> RAG -> agglomeration -> meshes.

Stages and what each leaves in the project folder::

    affinities/        uint8 (C, z, y, x) zarr, from the affinity model
    work/seeds/        provisional seed labels per block (removed at the end)
    work/fragments/    flooded fragments with stitched ids (removed at the end)
    work/marks/STAGE/  per-block completion marks of the block stages (removed at the end)
    supervoxels/       uint64 precomputed segmentation (small fragments merged, ids 1..N),
                       with per-supervoxel multi-resolution meshes, sharded, in
                       supervoxels/mesh/ (see segmentation.meshes)
    rag.npz            the region adjacency graph (see segmentation.rag)
    segments.npz       the agglomeration: membership of every supervoxel at every threshold

Every block task reads its input from disk and writes its output there, returning summaries, so
the same code runs in this process or on any number of Dask workers.

An interrupted run resumes: the block stages (affinities, seeds, flood, RAG) mark each finished
block, and a rerun computes only unmarked blocks. Each stage's marks carry a key (a hash of the
image, the model and its weights, the settings and the key of the stage before), so marks made
for other inputs are dropped with that stage's output. Relabelling, the pyramid and meshes write
the final folder atomically and are redone in full.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from segmentation.affinities import AffinityModel, boundary_from_affinities, \
    CALIBRATION_CROP, calibration_samples, quantize
from segmentation.agglomerate import agglomerate, check_thresholds, save_segments
from segmentation.edge_classifier import merge_score
from segmentation.atomic import atomic_directory
from segmentation.blockwise import Block, Marks, Runner, context_blocks, make_blocks
from segmentation.errors import InputError
from segmentation.heap import holding_freed_memory
from segmentation.importer import scale_plan, write_pyramid
from segmentation.membership import lookup, rows_of
from segmentation.meshes import DISPLAY_BITS, StoredMeshes, mesh_volume
from segmentation.project import DIVISIONS, Project, VolumeRef
from segmentation.rag import Contacts, NodeStats, Rag, block_contacts, block_node_stats, \
    build_rag, merged_parts
from segmentation.supervoxels import SupervoxelParams, flood, label_seeds, seed_mask
from segmentation.volume import (Volume, create_precomputed_scale, create_zarr,
                                 open_precomputed_scale, open_volume, open_zarr)

LOCAL_BITS = 32  # provisional ids: block index in the high bits, local label in the low ones
CHUNK = (64, 64, 64)


@dataclass
class PipelineParams:
    block_shape: tuple[int, int, int] = (128, 128, 128)
    flood_halo: int = 8  # voxels of context for the flood of each block
    supervoxels: SupervoxelParams = field(default_factory=SupervoxelParams)
    thresholds: Sequence[float] = (0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
    quantile: float = 0.5
    default_threshold: float = 0.5
    meshes: bool = True
    mesh_levels: int = 2  # levels of detail of the supervoxel meshes
    mesh_scale: int = 1  # the pyramid scale of the finest level (0: full resolution)
    edge_model: Optional[Path] = None  # the learned merge order's classifier; None: quantile

    def validate(self, shape: Sequence[int]) -> None:
        self.supervoxels.validate()
        check_thresholds(list(self.thresholds) + [self.default_threshold])
        if any(b % c for b, c in zip(self.block_shape, CHUNK)):
            raise InputError(f"segment.block_shape must be a multiple of the chunk size {CHUNK}, "
                             f"got {tuple(self.block_shape)}")


@dataclass
class PipelineReport:
    voxels: int
    blocks: int
    workers: int
    supervoxels: int
    edges: int
    seconds: dict[str, float] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=dict)  # blocks run, per marked stage
    skipped: dict[str, int] = field(default_factory=dict)  # blocks a previous run had done

    @property
    def resumed(self) -> bool:
        return sum(self.skipped.values()) > 0

    @property
    def segmentation_seconds(self) -> float:
        """Supervoxels + RAG + agglomeration (what the throughput goal counts)."""
        return sum(v for k, v in self.seconds.items() if k in SEGMENTATION_STAGES)

    @property
    def megavoxels_per_second(self) -> float:
        return self.voxels / 1e6 / max(self.segmentation_seconds, 1e-9)


SEGMENTATION_STAGES = ("seeds", "stitch", "flood", "rag", "merge small", "relabel",
                       "agglomerate")


def segment(project: Project, model: Optional[AffinityModel], params: PipelineParams,
            runner: Runner, progress: bool = True, restart: bool = False) -> PipelineReport:
    """Run every stage; ``model=None`` reuses the affinities already in the project. Blocks an
    interrupted run finished for the same inputs and settings are not run again, unless
    ``restart``."""
    image = project.volume("image")
    params.validate(image.shape)
    blocks = make_blocks(image.shape, params.block_shape)
    report = PipelineReport(int(np.prod(image.shape)), len(blocks), runner.parallelism, 0, 0)
    work = project.root / "work"
    if restart:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    timer = _Timer(report)
    affinities_path = project.root / "affinities"
    if model is not None:
        with timer("affinities"):
            marks = compute_affinities(image, model, affinities_path, params.block_shape,
                                       runner, work / "marks" / "affinities",
                                       image_key(project), timer)
        report.computed["affinities"], report.skipped["affinities"] = marks.computed, marks.skipped
    else:
        check_reusable_affinities(affinities_path, work / "marks" / "affinities")
    upstream = affinities_key(affinities_path)
    sv = params.supervoxels
    voxel_size = image.voxel_size
    with timer("seeds"):
        key = stage_key(upstream, "seeds", settings(sv), voxel_size,
                        params.block_shape, image.shape)
        marks = _stage_marks(work, "seeds", key, work / "seeds", image.shape, save_seeds,
                             load_seeds)
        found = runner.map(seed_task, blocks, str(affinities_path), str(work / "seeds"), sv,
                           voxel_size, desc="seeds", marks=marks)
        _count(report, "seeds", marks)
    with timer("stitch"):
        np.savez(work / "seed_table.npz", **stitch_seeds(blocks, found))
    with timer("flood"):
        key = stage_key(key, "flood", params.flood_halo)
        marks = _stage_marks(work, "flood", key, work / "fragments", image.shape)
        runner.map(flood_task, blocks, str(affinities_path), str(work / "seeds"),
                   str(work / "seed_table.npz"), str(work / "fragments"), params.flood_halo,
                   desc="flood", marks=marks)
        _count(report, "flood", marks)
    with timer("rag"):
        marks = Marks(work / "marks" / "rag", stage_key(key, "rag"), save_rag, load_rag)
        contacts, stats = Contacts.empty(), NodeStats.concatenate([])
        pending: list = []
        for part in runner.imap(rag_task, blocks, str(work / "fragments"),
                                str(affinities_path), desc="rag", marks=marks):
            pending.append(part)
            # fold as results arrive, once they hold as many rows as the folded graph: memory
            # stays within twice the result's, and each row is folded a few times, not once
            # per eight blocks (at 8x the demo, re-sorting the growing graph every eight
            # blocks kept the main process busy for most of the stage)
            if sum(len(p[0].a) for p in pending) >= max(len(contacts.a), 1 << 20):
                contacts, stats = _fold(contacts, stats, pending)
                pending = []
        contacts, stats = _fold(contacts, stats, pending)
        _count(report, "rag", marks)
    with timer("merge small"):  # before the graph is built: it is built once, merged
        final_ids = merge_small_fragments(stats, contacts, sv.min_size)
        np.savez(work / "relabel.npz", old=stats.ids, new=final_ids)
        rag = build_rag(*merged_parts(stats, contacts, final_ids))
        rag.save(project.root / "rag.npz")
    target = project.layer_dir("segmentation")
    with atomic_directory(target, overwrite=True) as scratch:
        with timer("relabel"):
            plan = pyramid_plan(image.shape, voxel_size)
            base = create_precomputed_scale(scratch, "segmentation", np.uint64, image.shape,
                                            voxel_size, CHUNK)
            runner.map(relabel_task, blocks, str(work / "fragments"), str(work / "relabel.npz"),
                       str(scratch), desc="relabel")
        with timer("pyramid"):
            write_pyramid(scratch, base, "segmentation", np.dtype(np.uint64), plan, CHUNK,
                          "precomputed")
        if params.meshes:
            with timer("meshes"):
                mesh_volume(scratch, plan, params.mesh_levels, DISPLAY_BITS, runner,
                            params.mesh_scale, (rag.ids, rag.bbox))
    with timer("agglomerate"):
        result = agglomerate(rag, params.thresholds,
                             score=merge_score(params.edge_model, params.quantile))
        save_segments(project.root / "segments.npz", rag.ids, result, params.default_threshold)
    project.manifest.volumes["segmentation"] = VolumeRef(target.name, "precomputed",
                                                         "promptcut segment",
                                                         time.strftime("%Y-%m-%dT%H:%M:%S"))
    project.save()
    (project.root / "supervoxel_sizes.npz").unlink(missing_ok=True)
    (project.root / DIVISIONS).unlink(missing_ok=True)  # they divided the old supervoxels
    shutil.rmtree(work, ignore_errors=True)
    report.supervoxels, report.edges = rag.num_nodes, rag.num_edges
    return report


def meshes_current(project: Project) -> bool:
    """Whether a segmented project's supervoxel meshes are in the current format (a project an
    earlier version segmented has legacy ones, which are not served)."""
    return StoredMeshes.present(project.layer_dir("segmentation"))


def remesh(project: Project, levels: int, scale: int, runner: Runner) -> int:
    """Mesh a segmented project's supervoxels again, replacing the meshes it has; returns how
    many were meshed. Edits do not matter: they never change the stored supervoxels."""
    folder = project.layer_dir("segmentation")
    shutil.rmtree(folder / "mesh", ignore_errors=True)
    volume = project.volume("segmentation")
    rag = Rag.load(project.root / "rag.npz", histograms=False)
    return mesh_volume(folder, pyramid_plan(volume.shape, volume.voxel_size), levels,
                       DISPLAY_BITS, runner, scale, (rag.ids, rag.bbox))


def pyramid_plan(shape: Sequence[int], voxel_size: Sequence[float]) -> list:
    """The scales of the supervoxel pyramid (``scale_plan``), which its meshes follow."""
    return scale_plan(shape, voxel_size, CHUNK, 3)


def _stage_marks(work: Path, stage: str, key: str, output: Path, shape, save=None,
                 load=None) -> Marks:
    """A stage's marks; its uint64 output volume is made anew when the marks are (or the
    volume is gone)."""
    if not output.exists():
        shutil.rmtree(work / "marks" / stage, ignore_errors=True)
    extra = {} if save is None else {"save": save, "load": load}
    marks = Marks(work / "marks" / stage, key, **extra)
    if marks.fresh:
        create_zarr(output, np.uint64, shape, CHUNK)
    return marks


def _count(report: PipelineReport, stage: str, marks: Marks) -> None:
    report.computed[stage], report.skipped[stage] = marks.computed, marks.skipped


# -- what a stage's output depends on -----------------------------------------------------------

def stage_key(*parts) -> str:
    """A hash of everything given (JSON, with tuples as lists and paths as text)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def settings(params) -> dict:
    """A settings object's fields (a dataclass's or a pydantic model's)."""
    if dataclasses.is_dataclass(params):
        return dataclasses.asdict(params)
    if hasattr(params, "model_dump"):
        return params.model_dump()
    return dict(vars(params))


def image_key(project: Project) -> str:
    """The image as the project references it: where from and, for imported stacks, the
    source file's size and time; plus its shape, type and voxel size."""
    ref = project.manifest.volumes["image"]
    image = project.volume("image")
    return stage_key("image", dataclasses.asdict(ref), image.shape, str(image.dtype),
                     image.voxel_size)


def model_key(model: AffinityModel) -> str:
    """The model's class, settings, context and weights (a hash of the checkpoint file and of
    the metadata beside it, which says how the weights are used)."""
    parts: dict = {"class": type(model).__qualname__, "describe": model.describe(),
                   "context": model.context, "whole_sections": model.whole_sections}
    if dataclasses.is_dataclass(model):
        parts["settings"] = settings(model)
    for name in ("bf16", "device"):
        if hasattr(model, name):
            parts[name] = getattr(model, name)
    checkpoint = getattr(model, "checkpoint", None)
    if checkpoint is not None and Path(checkpoint).is_file():
        from segmentation.models.checkpoints import metadata_path  # torch: a model's import

        digest = hashlib.sha256()
        metadata = metadata_path(Path(checkpoint))  # beside shipped safetensors weights
        for part in [Path(checkpoint)] + ([metadata] if metadata.is_file() else []):
            with open(part, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        parts["weights"] = digest.hexdigest()
    return stage_key(parts)


def affinities_key(path: Path) -> str:
    """What the stages after the affinities depend on: the key the affinity stage wrote into
    the volume's attributes (or, for affinities of an older run, the attributes themselves)."""
    attributes = json.loads((path / ".zattrs").read_text()) if (path / ".zattrs").is_file() \
        else {}
    return attributes.get("fingerprint") or stage_key(attributes)


def check_reusable_affinities(path: Path, marks: Path) -> None:
    if not path.exists():
        raise InputError(f"{path} does not exist: run with an affinity model first")
    key = marks / "KEY"
    if key.is_file() and affinities_key(path) == key.read_text() \
            and not (marks / "DONE").is_file():
        done = sum(1 for _ in marks.glob("*.mark"))
        raise InputError(f"{path} is incomplete: an interrupted run had predicted {done} "
                         f"block(s); run without --reuse-affinities to finish them")


class _Timer:
    def __init__(self, report: Optional[PipelineReport]):
        self.report = report

    def __call__(self, stage: str):
        report = self.report

        class _Stage:
            def __enter__(self):
                self.started = time.perf_counter()

            def __exit__(self, *exc):
                if report is not None:
                    report.seconds[stage] = round(time.perf_counter() - self.started, 3)

        return _Stage()


# -- affinities ---------------------------------------------------------------------------------

def compute_affinities(image: Volume, model: AffinityModel, path: Path,
                       block_shape: Sequence[int], runner: Runner,
                       marks_folder: Optional[Path] = None, image_id: str = "",
                       timer: Optional["_Timer"] = None) -> Marks:
    """Predict the affinities of every block not marked done in ``marks_folder`` (default: a
    scratch folder beside ``path``, removed at the end). ``timer`` times the model's
    calibration apart (it runs here, before the blocks, and is part of the stage's time).
    The blocks are multiples of ``block_shape`` that read the least context
    (``context_blocks``).

    On this machine a network (``model.threaded``) predicts the blocks here, one after
    another, with as many threads as the run has workers: its activations far outgrow the
    caches, and two workers each predicting a block on one core fought over the memory
    between them (the demo's two blocks took 16-19 s side by side, 10-13 s one after the
    other on 2 threads, from a heap that keeps what each layer frees). The model also needs
    loading and memory only once, and stays on the one GPU where there is one. An existing
    cluster (``scheduler``) predicts on its workers, and so do the workers of a model that
    runs on one thread (the baseline's filters)."""
    if model.whole_sections:  # slabs of whole sections, as deep as the other stages' blocks
        blocks = make_blocks(image.shape, (block_shape[0],) + tuple(image.shape[1:]))
    else:
        blocks = context_blocks(image.shape, block_shape, model.context)
    scratch = marks_folder is None
    if scratch:
        marks_folder = path.with_name(path.name + ".marks")
        shutil.rmtree(marks_folder, ignore_errors=True)
    if not path.exists():
        shutil.rmtree(marks_folder, ignore_errors=True)
    key = stage_key("affinities", image_id or image.location, model_key(model),
                    [b.core for b in blocks[:1]], len(blocks), CALIBRATION_CROP)
    marks = Marks(marks_folder, key)
    if marks.fresh:
        attributes = {"model": model.describe(), "offsets": [list(o) for o in model.offsets],
                      "voxel_size": list(image.voxel_size), "dtype": "uint8 (affinity * 255)",
                      "fingerprint": key}
        create_zarr(path, np.uint8, (len(model.offsets),) + image.shape,
                    (len(model.offsets),) + CHUNK, attributes)
    if not marks.complete(blocks):  # the fit is the same every run, so resumed blocks agree
        with (timer or _Timer(None))("affinity calibration"), holding_freed_memory():
            model.fit(calibration_samples(image))
    here = runner.on_this_machine and model.threaded  # one process, every core (docstring)
    with model.threads(runner.cores if here else None):
        (runner.here() if here else runner).map(
            affinity_task, blocks, image.location, image.format, image.voxel_size, model,
            str(path), desc="affinities", marks=marks)
    marks.finish()
    if scratch:
        shutil.rmtree(marks_folder, ignore_errors=True)
    return marks


def affinity_task(block: Block, location: str, fmt: str, voxel_size, model: AffinityModel,
                  path: str) -> None:
    image = open_volume(location, "image", fmt, voxel_size)
    store = open_zarr(Path(path))
    with holding_freed_memory():  # `segment`'s own process: its heap serves the activations
        found = block_affinities(model, image.read, block)
    store[(slice(None),) + block.core].write(found).result()


def block_affinities(model: AffinityModel, read, block: Block) -> np.ndarray:
    """uint8 affinities of one block's core, predicted with the model's context around it."""
    region = block.grown(model.context)
    predicted = model.predict(read(*region))
    return quantize(predicted[(slice(None),) + block.core_within(region)], model.title)


def read_boundary(affinities: str, region) -> np.ndarray:
    store = open_zarr(Path(affinities))
    return boundary_from_affinities(store[(slice(0, 3),) + tuple(region)].read().result())


# -- seeds and their stitching across block faces -----------------------------------------------

def seed_task(block: Block, affinities: str, seeds: str, params: SupervoxelParams,
              voxel_size) -> tuple[int, list[np.ndarray]]:
    """Seeds of one block, exact as a whole-volume run would find them (see supervoxels.py)."""
    region = block.grown(params.seed_halo(voxel_size))
    mask = seed_mask(read_boundary(affinities, region), params, voxel_size)
    labels, count = label_seeds(mask[block.core_within(region)])
    if count >= 1 << LOCAL_BITS:
        raise InputError("too many seeds in one block: use a smaller segment.block_shape")
    provisional = np.where(labels > 0, labels + (np.uint64(block.index) << np.uint64(LOCAL_BITS)),
                           np.uint64(0)).astype(np.uint64)
    open_zarr(Path(seeds))[block.core].write(provisional).result()
    faces = []
    for axis in range(3):
        low = [slice(None)] * 3
        high = [slice(None)] * 3
        low[axis], high[axis] = slice(0, 1), slice(-1, None)
        # copies: a view would keep the whole block's seeds alive as long as the result is
        # held (on a Dask worker, until the stage ends: 16 MB a block, 0.6 GB at 8x the demo)
        faces.append((provisional[tuple(low)].squeeze(axis).copy(),
                      provisional[tuple(high)].squeeze(axis).copy()))
    return count, faces


def save_seeds(found: tuple[int, list], path: Path) -> None:
    count, faces = found
    arrays = {f"{axis}{side}": face for axis, pair in enumerate(faces)
              for side, face in zip("lh", pair)}
    with open(path, "wb") as handle:
        np.savez(handle, count=np.int64(count), **arrays)


def load_seeds(path: Path) -> tuple[int, list]:
    with np.load(path) as data:
        return int(data["count"]), [(data[f"{axis}l"], data[f"{axis}h"]) for axis in range(3)]


def stitch_seeds(blocks: list[Block], found: list) -> dict[str, np.ndarray]:
    """Global ids for the provisional seeds, joined where seeds touch across block faces.

    Returns ``offsets`` (first compact index of each block's seeds) and ``ids`` (the global id of
    every compact index); :func:`global_seed_ids` applies them.
    """
    counts = np.array([count for count, _ in found], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    by_grid = {b.grid: b for b in blocks}
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for block, (_, faces) in zip(blocks, found):
        for axis in range(3):
            grid = list(block.grid)
            grid[axis] += 1
            neighbour = by_grid.get(tuple(grid))
            if neighbour is None:
                continue
            mine = faces[axis][1]
            theirs = found[neighbour.index][1][axis][0]
            both = (mine != 0) & (theirs != 0)
            rows.append(_compact(mine[both], offsets))
            cols.append(_compact(theirs[both], offsets))
    total = int(offsets[-1])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    return {"offsets": offsets, "ids": component.astype(np.uint64) + np.uint64(1)}


def _compact(provisional: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    block = (provisional >> np.uint64(LOCAL_BITS)).astype(np.int64)
    local = (provisional & np.uint64((1 << LOCAL_BITS) - 1)).astype(np.int64)
    return offsets[block] + local - 1


def global_seed_ids(provisional: np.ndarray, table: dict[str, np.ndarray]) -> np.ndarray:
    """Map provisional seed ids to stitched global ids (0 stays 0)."""
    result = np.zeros(provisional.shape, np.uint64)
    nonzero = provisional != 0
    if nonzero.any():
        result[nonzero] = table["ids"][_compact(provisional[nonzero], table["offsets"])]
    return result


# -- flooding, graph, relabelling ---------------------------------------------------------------

def flood_task(block: Block, affinities: str, seeds: str, table: str, fragments: str,
               halo: int) -> None:
    region = block.grown((halo, halo, halo))
    with np.load(table) as stitched:
        markers = global_seed_ids(open_zarr(Path(seeds))[region].read().result(), dict(stitched))
    labels = flood(read_boundary(affinities, region), markers)
    open_zarr(Path(fragments))[block.core].write(labels[block.core_within(region)]).result()


def rag_task(block: Block, fragments: str, affinities: str) -> tuple[Contacts, NodeStats]:
    lower = tuple(1 if s.start > 0 else 0 for s in block.core)
    region = block.grown(lower, (0, 0, 0))
    labels = open_zarr(Path(fragments))[region].read().result()
    affinity = open_zarr(Path(affinities))[(slice(0, 3),) + block.core].read().result()
    core = labels[tuple(slice(l, None) for l in lower)]
    return block_contacts(labels, affinity, lower), block_node_stats(core, block.origin)


def save_rag(part: tuple[Contacts, NodeStats], path: Path) -> None:
    contacts, stats = part
    arrays = {f"c_{k}": v for k, v in dataclasses.asdict(contacts).items()}
    arrays.update({f"s_{k}": v for k, v in dataclasses.asdict(stats).items()})
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def load_rag(path: Path) -> tuple[Contacts, NodeStats]:
    with np.load(path) as data:
        fields = {name: data[name] for name in data.files}
    return (Contacts(**{k[2:]: v for k, v in fields.items() if k.startswith("c_")}),
            NodeStats(**{k[2:]: v for k, v in fields.items() if k.startswith("s_")}))


def _fold(contacts: Contacts, stats: NodeStats, parts: list) -> tuple[Contacts, NodeStats]:
    return (Contacts.concatenate([contacts] + [p[0] for p in parts]).reduced(),
            NodeStats.concatenate([stats] + [p[1] for p in parts]).reduced())


def merge_small_fragments(stats: NodeStats, contacts: Contacts, min_size: int) -> np.ndarray:
    """New id for every node of a graph's reduced parts (in ``stats.ids`` order): fragments
    under ``min_size`` voxels join their neighbour of highest mean affinity; ids are then
    renumbered 1..N in order of their smallest member."""
    n = len(stats.ids)
    pairs, _, mean = contacts.per_edge()
    a, b = rows_of(stats.ids, pairs[:, 0]), rows_of(stats.ids, pairs[:, 1])
    small = stats.size < min_size
    rows, cols = [], []
    if small.any() and len(a):
        both = np.concatenate([a, b])
        other = np.concatenate([b, a])
        score = np.concatenate([mean, mean])
        pick = small[both]
        both, other, score = both[pick], other[pick], score[pick]
        order = np.lexsort((-score, both))
        first = np.ones(len(order), bool)
        first[1:] = both[order][1:] != both[order][:-1]
        rows, cols = both[order][first], other[order][first]
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    _, first_member = np.unique(component, return_index=True)
    rank = np.empty(len(first_member), np.int64)
    rank[np.argsort(first_member)] = np.arange(1, len(first_member) + 1)
    return rank[component].astype(np.uint64)


def relabel_task(block: Block, fragments: str, relabel: str, supervoxels: str) -> None:
    labels = open_zarr(Path(fragments))[block.core].read().result()
    with np.load(relabel) as table:
        old, new = table["old"], table["new"]
    final = lookup(old, new, labels)
    open_precomputed_scale(Path(supervoxels), 0, write=True)[block.core].write(final).result()

