"""A project folder: the volumes a proofreading session works on and what is derived from them.

Layout::

    project.json            name, dataset credits and where each volume lives
    image/                  imported EM (precomputed or OME-zarr), unless opened in place
    supervoxels/            imported supervoxel segmentation, unless opened in place
    supervoxel_sizes.npz    voxel count of every supervoxel (cache)
    supervoxel_divisions.npz  supervoxels divided by edits, kept through re-agglomeration
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from segmentation.errors import InputError
from segmentation.stats import VoxelCounts, count_voxels
from segmentation.volume import Kind, Volume, open_volume

MANIFEST = "project.json"
DIVISIONS = "supervoxel_divisions.npz"
LAYER_DIRS: dict[Kind, str] = {"image": "image", "segmentation": "supervoxels"}


@dataclass
class VolumeRef:
    location: str  # relative to the project folder when inside it, else absolute or a URL
    format: str
    source: str = ""  # the file it was imported from, if any
    source_stamp: str = ""  # size and mtime of that file, to tell when to import again


@dataclass
class Manifest:
    name: str
    dataset: str = ""
    credits: str = ""
    voxel_size: Optional[list[float]] = None
    volumes: dict[str, VolumeRef] = field(default_factory=dict)


class Project:
    """Opens a project folder's volumes and caches per-supervoxel statistics."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root = Path(root)
        self.manifest = manifest
        self._volumes: dict[str, Volume] = {}

    @classmethod
    def open(cls, root: str | Path) -> "Project":
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise InputError(f"{root} is not a promptcut project (no {MANIFEST}); "
                             f"run `promptcut import --config ...` first")
        raw = json.loads(path.read_text())
        volumes = {k: VolumeRef(**v) for k, v in raw.pop("volumes", {}).items()}
        return cls(root, Manifest(**raw, volumes=volumes))

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(asdict(self.manifest), indent=2))
        tmp.replace(self.root / MANIFEST)

    def layer_dir(self, kind: Kind) -> Path:
        return self.root / LAYER_DIRS[kind]

    def has(self, kind: Kind) -> bool:
        return kind in self.manifest.volumes

    def location(self, kind: Kind) -> str:
        ref = self.manifest.volumes[kind]
        if "://" in ref.location or Path(ref.location).is_absolute():
            return ref.location
        return str(self.root / ref.location)

    def volume(self, kind: Kind) -> Volume:
        if kind not in self._volumes:
            if not self.has(kind):
                raise InputError(f"the project has no {kind} volume")
            ref = self.manifest.volumes[kind]
            self._volumes[kind] = open_volume(self.location(kind), kind, ref.format,
                                              self.manifest.voxel_size)
        return self._volumes[kind]

    def supervoxel_sizes(self, progress: bool = False) -> VoxelCounts:
        """Voxel counts per supervoxel, computed once and cached in the folder."""
        path = self.root / "supervoxel_sizes.npz"
        cached = VoxelCounts.load(path) if path.exists() else None
        if cached is None:
            cached = count_voxels(self.volume("segmentation"), progress=progress)
            cached.save(path)
        return cached
