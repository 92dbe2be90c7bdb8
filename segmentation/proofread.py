"""Opening a project's proofreading session, and folding proofreaders' decisions back into the
agglomeration."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from segmentation.affinities import IntensityBaseline, calibration_samples, quantize
from segmentation.agglomerate import Segments, agglomerate, save_segments
from segmentation.editlog import EditLog, log_files
from segmentation.errors import InputError
from segmentation.project import DIVISIONS, Project
from segmentation.rag import Rag
from segmentation.session import ProofreadingSession
from segmentation.supervoxel_split import LiveSupervoxels, VoxelSplit
from segmentation.volume import open_zarr

LOG_NAME = "edit_log.sqlite"


def open_session(project: Project, threshold: Optional[float] = None,
                 synchronous: str = "NORMAL") -> ProofreadingSession:
    """The live session: the graph, the agglomeration at ``threshold`` (its default when
    None), then the log, which must have been made on this graph and agglomeration. Its
    supervoxels are the project's with every division in the log applied."""
    rag_path = project.root / "rag.npz"
    if not rag_path.is_file() or not project.has("segmentation"):
        raise InputError(f"{project.root} has no region adjacency graph: run `promptcut "
                         f"segment` first")
    rag = Rag.load(rag_path, histograms=False)
    segments = Segments.load(project.root / "segments.npz")
    base = segments.at(threshold) if segments is not None else rag.ids
    log = EditLog(project.root / LOG_NAME, fingerprint(rag, base), synchronous)
    try:
        return ProofreadingSession(rag, base, log, supervoxels=project_supervoxels(project),
                                   affinities=affinity_reader(project))
    except BaseException:
        log.close()
        raise


def fingerprint(rag: Rag, base: np.ndarray) -> str:
    """What an edit log's deltas apply to: the supervoxels (ids and sizes), their graph and
    the agglomeration the session starts from."""
    digest = hashlib.sha256()
    for array in (rag.ids, rag.size, rag.edges, np.asarray(base, np.uint64)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def project_supervoxels(project: Project) -> LiveSupervoxels:
    """The project's supervoxels with the divisions earlier re-agglomerations kept (see
    reagglomerate) applied: what the RAG and the agglomeration in the project describe."""
    live = LiveSupervoxels(project.volume("segmentation"))
    kept = read_divisions(project)
    for order, split in enumerate(kept):
        live.activate(order - len(kept), split)  # before any operation of the log
    return live


def read_divisions(project: Project) -> list[VoxelSplit]:
    path = project.root / DIVISIONS
    if not path.is_file():
        return []
    with np.load(path) as data:
        return [VoxelSplit.from_bytes(data[f"division_{i}"].tobytes())
                for i in range(len(data.files))]


def write_divisions(project: Project, divisions: list[VoxelSplit]) -> None:
    path = project.root / DIVISIONS
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{f"division_{i}": np.frombuffer(split.to_bytes(), np.uint8)
                     for i, split in enumerate(divisions)})
    tmp.replace(path)


def affinity_reader(project: Project) -> Callable[[tuple], np.ndarray]:
    """uint8 nearest-neighbour affinities (3, z, y, x) of a region: the project's own when
    `promptcut segment` made them, else the intensity baseline's (fitted on first use)."""
    path = project.root / "affinities"
    if path.exists():
        store = open_zarr(path)
        return lambda region: store[(slice(0, 3),) + tuple(region)].read().result()
    image = project.volume("image")
    baseline: list[IntensityBaseline] = []

    def read(region) -> np.ndarray:
        if not baseline:
            model = IntensityBaseline(voxel_size=tuple(image.voxel_size))
            model.fit(calibration_samples(image))
            baseline.append(model)
        model = baseline[0]
        grown = tuple(slice(max(0, s.start - c), min(n, s.stop + c))
                      for s, c, n in zip(region, model.context, image.shape))
        predicted = model.predict(image.read(*grown))
        inner = tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(region, grown))
        return quantize(predicted[(slice(None),) + inner], model.title)

    return read


def edit_count(project: Project) -> int:
    """Operations in the project's edit log (0 when it has none)."""
    if not (project.root / LOG_NAME).exists():
        return 0
    log = EditLog(project.root / LOG_NAME)
    try:
        return len(log)
    finally:
        log.close()


def archive_log(project: Project) -> Path:
    """Move the edit log (closed) aside as edit_log.<time>.sqlite, so the next session starts
    a fresh one; returns where it went."""
    log = project.root / LOG_NAME
    archived = log.with_name(f"edit_log.{time.strftime('%Y%m%d-%H%M%S')}.sqlite")
    for source in log_files(log):
        shutil.move(source, archived.with_name(archived.name + source.name[len(log.name):]))
    return archived


def reagglomerate(project: Project, session: ProofreadingSession, thresholds: list[float],
                  default_threshold: float, score) -> str:
    """Agglomerate again with the confirmed edges merged first and the separated ones never
    merged. Supervoxels that edits divided stay divided: their divisions move from the log
    into the project (the RAG gets their pieces, the supervoxels read them). The old log, whose
    edits the new agglomeration replaces, is kept beside it."""
    confirmed, separated = session.decisions()
    rag = Rag.load(project.root / "rag.npz")
    divisions = session.active_divisions()
    for split in divisions:
        rag = rag.divided(split.supervoxel, split.patch)
    result = agglomerate(rag, thresholds, merge_pairs=confirmed, split_pairs=separated,
                         score=score)
    if divisions:
        write_divisions(project, read_divisions(project) + divisions)
        rag.save(project.root / "rag.npz")
    save_segments(project.root / "segments.npz", rag.ids, result, default_threshold)
    session.log.close()
    archived = archive_log(project)
    kept = f", {len(divisions)} divided supervoxel(s) kept" if divisions else ""
    return (f"agglomerated with {len(confirmed)} confirmed and {len(separated)} separated "
            f"edges{kept}; the edit log so far is kept as {archived.name}")
