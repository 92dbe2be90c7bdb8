"""`promptcut segment`: the config's segment section turned into a pipeline run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from promptcut.config import Config
from promptcut.setup_project import prepare_project
from segmentation.blockwise import Runner, default_workers
from segmentation.errors import ConfigError, InputError
from segmentation.meshes import import_writer_in_background
from segmentation.models.registry import make_model
from segmentation.pipeline import (PipelineParams, PipelineReport, meshes_current, remesh,
                                   segment)
from segmentation.editlog import remove_log
from segmentation.proofread import LOG_NAME, edit_count
from segmentation.proofread import archive_log as archive_log_file


def edge_model(config: Config) -> Optional[Path]:
    """The edge classifier the config's agglomeration uses (None: the quantile order)."""
    if config.segment.agglomeration.method != "learned":
        return None
    path = config.edge_classifier()
    if not path.is_file():
        raise ConfigError(f"config key 'segment.agglomeration.edge_model': no edge classifier "
                          f"at {path}")
    return path


def pipeline_params(config: Config) -> PipelineParams:
    s = config.segment
    return PipelineParams(
        block_shape=tuple(s.block_shape), flood_halo=s.flood_halo,
        supervoxels=s.supervoxels,
        thresholds=list(s.agglomeration.thresholds), quantile=s.agglomeration.quantile,
        default_threshold=s.agglomeration.default_threshold, meshes=s.meshes,
        mesh_levels=s.mesh_levels, mesh_scale=s.mesh_scale, edge_model=edge_model(config))


def run_segment(config: Config, reuse_affinities: bool = False, if_needed: bool = False,
                progress: bool = True, archive_log: bool = False,
                restart: bool = False) -> Optional[PipelineReport]:
    project = prepare_project(config, progress=progress)
    if if_needed and (project.root / "segments.npz").exists() and project.has("segmentation"):
        if config.segment.meshes and not meshes_current(project):  # before any cluster
            with _runner(config, progress) as runner:
                meshed = remesh(project, config.segment.mesh_levels,
                                config.segment.mesh_scale, runner)
            print(f"meshed the {meshed} supervoxels again (their meshes were in an older "
                  f"format)", flush=True)
        return None
    edits = edit_count(project)
    if edits and not archive_log:  # they would be replayed onto supervoxels they never saw
        raise InputError(f"the project has {edits} proofreading edit(s) in {LOG_NAME}, made on "
                         f"the segmentation this run replaces: pass --archive-log to keep them "
                         f"aside and start a fresh log")
    if edits:
        moved = archive_log_file(project)
        print(f"the edit log so far is kept as {moved.name}", flush=True)
    else:  # an empty log still names the segmentation it was opened for: start a new one
        remove_log(project.root / LOG_NAME)
    image = project.volume("image")
    checkpoint = config.segment.checkpoint
    model = None if reuse_affinities else make_model(
        config.segment.model, image.voxel_size,
        str(config.resolve(checkpoint)) if checkpoint else None, config.models.device)
    with _runner(config, progress) as runner:
        return segment(project, model, pipeline_params(config), runner, progress, restart)


def _runner(config: Config, progress: bool) -> Runner:
    if config.segment.meshes:  # imported while the cluster starts (0.2-0.4 s off a demo run)
        import_writer_in_background()
    workers = config.segment.workers
    workers = default_workers() if workers is None else workers
    return Runner(workers, config.segment.scheduler, progress,
                  preload=("segmentation.pipeline",))
