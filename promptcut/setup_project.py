"""Turn a config's sources into a project folder: import stacks, reference volumes in place."""

from __future__ import annotations

import os
from pathlib import Path

from promptcut.config import Config, SourceConfig
from segmentation.errors import InputError
from segmentation.importer import import_volume
from segmentation.project import Manifest, Project, VolumeRef
from segmentation.stacks import open_stack, stack_format
from segmentation.volume import Kind, open_volume, split_location

STACK_FORMATS = ("hdf5", "tiff", "npy")


def prepare_project(config: Config, overwrite: bool = False, progress: bool = True) -> Project:
    """Bring the project folder up to date with the config; import only what changed."""
    root = config.project_dir
    try:
        project = Project.open(root)
    except InputError:
        project = Project(root, Manifest(name=config.name))
    manifest = project.manifest
    manifest.name = config.name
    manifest.dataset = config.dataset.name
    manifest.credits = config.dataset.credits
    manifest.voxel_size = config.dataset.voxel_size
    sources: dict[Kind, SourceConfig | None] = {"image": config.image,
                                                "segmentation": config.segmentation}
    for kind, source in sources.items():
        if source is None:
            previous = manifest.volumes.get(kind)
            if previous is not None and previous.source != "promptcut segment":
                manifest.volumes.pop(kind)  # imported once, no longer configured
            continue
        manifest.volumes[kind] = _bring_in(config, project, kind, source, overwrite, progress)
        project.save()  # each finished import is recorded at once
    project.save()
    return Project.open(root)


def _bring_in(config: Config, project: Project, kind: Kind, source: SourceConfig,
              overwrite: bool, progress: bool) -> VolumeRef:
    location = config.source_location(source)
    fmt = source.format
    if fmt == "auto":
        fmt = stack_format(location) if "://" not in location else None
        fmt = fmt or split_location(location)[0] or "auto"
    if fmt not in STACK_FORMATS:
        volume = open_volume(location, kind, fmt, config.dataset.voxel_size)  # fails early
        return VolumeRef(location, volume.format)
    stamp = _stamp(location)
    described = f"{location}:{source.key}" if source.key else location
    previous = project.manifest.volumes.get(kind)
    target = project.layer_dir(kind)
    if (not overwrite and previous and previous.source == described
            and previous.source_stamp == stamp and target.exists()):
        return previous
    with open_stack(location, source.key, fmt) as stack:
        if kind == "segmentation":
            (project.root / "supervoxel_sizes.npz").unlink(missing_ok=True)
        import_volume(stack, target, kind, config.dataset.voxel_size or stack.voxel_size,
                      config.import_.format, config.import_.chunk_size,
                      config.import_.min_downsampled_scales, overwrite=True, progress=progress)
    return VolumeRef(target.name, config.import_.format, described, stamp)


def _stamp(location: str) -> str:
    info = os.stat(location) if Path(location).exists() else None
    return f"{info.st_size}:{info.st_mtime_ns}" if info else ""
