"""`promptcut segment`: the config's segment section turned into a pipeline run."""

from __future__ import annotations

from typing import Optional

from promptcut.config import Config
from promptcut.setup_project import prepare_project
from segmentation.affinities import make_model
from segmentation.blockwise import Runner, default_workers
from segmentation.pipeline import PipelineParams, PipelineReport, segment
from segmentation.supervoxels import SupervoxelParams


def pipeline_params(config: Config) -> PipelineParams:
    s = config.segment
    return PipelineParams(
        block_shape=tuple(s.block_shape), flood_halo=s.flood_halo,
        supervoxels=SupervoxelParams(**vars(s.supervoxels)),
        thresholds=list(s.agglomeration.thresholds), quantile=s.agglomeration.quantile,
        default_threshold=s.agglomeration.default_threshold, meshes=s.meshes,
        mesh_reduction=s.mesh_reduction)


def run_segment(config: Config, reuse_affinities: bool = False, if_needed: bool = False,
                progress: bool = True) -> Optional[PipelineReport]:
    project = prepare_project(config, progress=progress)
    if if_needed and (project.root / "segments.npz").exists() and project.has("segmentation"):
        return None
    image = project.volume("image")
    checkpoint = config.segment.checkpoint
    model = None if reuse_affinities else make_model(
        config.segment.model, image.voxel_size,
        str(config.resolve(checkpoint)) if checkpoint else None, config.models.device)
    workers = config.segment.workers
    workers = default_workers() if workers is None else workers
    with Runner(workers, config.segment.scheduler, progress) as runner:
        return segment(project, model, pipeline_params(config), runner, progress)
