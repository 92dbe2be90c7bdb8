"""The YAML configuration: typed sections validated at start-up.

Every error names the offending key by its dotted path (``server.port``), so a typo in a
config never surfaces later as a confusing failure deep inside the server.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from segmentation.edge_classifier import SHIPPED_EDGE_MODEL
from segmentation.errors import ConfigError
from server.settings import (ModelFiles, ModelsConfig, ServerConfig, ServeSettings,
                             ViewerConfig)

URL_SCHEMES = ("gs://", "s3://", "http://", "https://", "file://", "precomputed://", "zarr://",
               "zarr2://", "zarr3://", "n5://", "memory://")

SourceFormat = Literal["auto", "hdf5", "tiff", "npy", "precomputed", "zarr", "n5"]


@dataclass
class SourceConfig:
    """One input volume: a file to import or a volume that tensorstore can open in place."""

    path: str
    key: Optional[str] = None  # HDF5 dataset name
    format: SourceFormat = "auto"


@dataclass
class DatasetConfig:
    name: str = "dataset"
    credits: str = ""
    voxel_size: Optional[list[float]] = None  # nm, z, y, x; required for HDF5/TIFF/NumPy
    ground_truth: Optional[SourceConfig] = None  # neuron labels, for `promptcut evaluate`


@dataclass
class SupervoxelConfig:
    threshold: float = 0.5
    seed_window: int = 7
    max_distance: int = 8
    min_size: int = 64
    per_section: Optional[bool] = None


@dataclass
class AgglomerationConfig:
    thresholds: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7])
    quantile: float = 0.5  # quantile: the affinity quantile whose complement is the score
    default_threshold: float = 0.5
    # the merge order: one minus an affinity quantile (waterz's), or one minus the edge
    # classifier's merge probability (GALA's); its thresholds then are 1 - probability
    method: Literal["quantile", "learned"] = "quantile"
    edge_model: Optional[str] = None  # learned: relative to this config; None: the shipped one


@dataclass
class TrainConfig:
    model: Literal["unet3d", "fgnet"] = "unet3d"
    iterations: int = 2000
    patch: list[int] = field(default_factory=lambda: [32, 96, 96])
    batch: int = 2
    learning_rate: float = 0.001
    final_learning_rate: Optional[float] = None  # cosine decay to this; None: constant
    validation_slices: int = 40
    validate_every: int = 250
    checkpoint_every: int = 250
    filters: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    anisotropic: bool = False
    fine_channels: int = 32  # fgnet: width of the fine-grained encoder
    freeze_sam: bool = True  # fgnet: keep SAM2's encoder (models.sam2) as it is
    teacher: Optional[Literal["sam2"]] = None  # unet3d: distil SAM2's features (models.sam2)
    long_range: list[int] = field(default_factory=list)  # unet3d: auxiliary affinity distances
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the hardware has it
    init: Optional[str] = None  # start from this checkpoint's weights (relative to this config)
    output: Optional[str] = None  # relative to the project folder; None: models/<model>


@dataclass
class SegmentConfig:
    model: Literal["baseline", "unet3d", "fgnet"] = "baseline"
    checkpoint: Optional[str] = None  # unet3d / fgnet: the trained file (relative to this config)
    block_shape: list[int] = field(default_factory=lambda: [128, 128, 128])
    flood_halo: int = 8
    workers: Optional[int] = None  # None: one per core; 0: in this process, without Dask
    scheduler: Optional[str] = None  # address of an existing Dask cluster
    supervoxels: SupervoxelConfig = field(default_factory=SupervoxelConfig)
    agglomeration: AgglomerationConfig = field(default_factory=AgglomerationConfig)
    meshes: bool = True
    mesh_reduction: int = 10


@dataclass
class ImportConfig:
    format: Literal["precomputed", "zarr"] = "precomputed"
    chunk_size: list[int] = field(default_factory=lambda: [64, 64, 64])
    min_downsampled_scales: int = 3


@dataclass
class Config:
    project: str  # folder that holds the imported volumes and everything computed from them
    image: SourceConfig
    name: str = "promptcut"
    segmentation: Optional[SourceConfig] = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    import_: ImportConfig = field(default_factory=ImportConfig, metadata={"key": "import"})
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    @property
    def project_dir(self) -> Path:
        return self.resolve(self.project)

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        return (self.base_dir / os.path.expanduser(os.path.expandvars(path))).resolve()

    def edge_classifier(self) -> Path:
        """The edge classifier file: the agglomeration's ``edge_model``, or the shipped one
        (it may not exist; callers that need it say so)."""
        path = self.segment.agglomeration.edge_model
        return self.resolve(path) if path else SHIPPED_EDGE_MODEL

    def sam2_model(self) -> tuple[str, Optional[Path]]:
        """SAM2's config (a package name, or a YAML file found next to this config) and its
        checkpoint file, if one is configured."""
        sam2 = self.models.sam2
        config = sam2.config
        if config.endswith((".yaml", ".yml")) and self.resolve(config).is_file():
            config = str(self.resolve(config))
        return config, self.resolve(sam2.checkpoint) if sam2.checkpoint else None

    def serve_settings(self) -> ServeSettings:
        """What the server is told, paths resolved."""
        sam2_config, checkpoint = self.sam2_model()
        fgnet = self.resolve(self.models.fgnet) if self.models.fgnet else None
        edges = self.edge_classifier()
        return ServeSettings(self.name, self.dataset.name, self.dataset.credits, self.server,
                             self.viewer, self.models,
                             ModelFiles(sam2_config, checkpoint, fgnet,
                                        edges if edges.is_file() else None),
                             self.segment.mesh_reduction)

    def source_location(self, source: SourceConfig) -> str:
        """URLs stay as written; local paths become absolute."""
        text = os.path.expandvars(source.path)
        if text.startswith(URL_SCHEMES):
            return text
        return str(self.resolve(text))


def load_config(path: str | os.PathLike, overrides: Optional[dict[str, Any]] = None) -> Config:
    """Read and validate a YAML config; raise ConfigError naming the bad key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}") from None
    if data is None:
        data = {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    config = build(Config, data, "")
    config.base_dir = path.resolve().parent
    return config


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    """Config keys of a section, mapped to their dataclass fields."""
    return {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)
            if not f.metadata.get("internal")}


def build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from plain YAML data, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{where or '<top>'}' must be a mapping, got {_kind(data)}")
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{_join(where, key)}' (allowed here: {allowed})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, f in fields.items():
        dotted = _join(where, key)
        if key in data:
            kwargs[f.name] = _check(hints[f.name], data[key], dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key '{dotted}'")
    return cls(**kwargs)


def _check(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(inner, value, where)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"config key '{where}' must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        (item,) = args
        if not isinstance(value, list):
            raise ConfigError(f"config key '{where}' must be a list, got {_kind(value)}")
        if where.endswith(("voxel_size", "position", "chunk_size", "block_shape", "patch")) \
                and len(value) != 3:
            raise ConfigError(f"config key '{where}' must list 3 numbers (z, y, x), "
                              f"got {len(value)}")
        return [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{where}' must be a number, got {_kind(value)}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{where}' must be an integer, got {_kind(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{where}' must be true or false, got {_kind(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{where}' must be a string, got {_kind(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")  # a bug in the schema


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
