"""What a running server is told: its sections of the YAML config and the paths the composition
root (the CLI) resolved. The config schema (promptcut.config) uses these sections as they are;
the server never reads the config itself, so it does not import the CLI package."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional


@dataclass
class Sam2Config:
    config: str = "sam2.1_hiera_t"  # a package config name or a YAML file
    checkpoint: Optional[str] = None  # official {"model": state_dict} file; none: no SAM2
    propagate: int = 8  # slices each way a mask may propagate
    score_threshold: float = 0.5  # stop propagating below this predicted IoU
    overlap_threshold: float = 0.5  # or below this IoU with the previous slice's mask
    cache_slices: int = 32


@dataclass
class ModelsConfig:
    device: str = "auto"  # auto: CUDA when there is one, else the CPU
    sam2: Sam2Config = field(default_factory=Sam2Config)
    fgnet: Optional[str] = None  # an FGNet checkpoint: re-predict affinities around prompts
    fgnet_window: int = 128  # voxels (y and x) around a prompt that FGNet re-predicts


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    viewer_port: int = 0  # 0 picks a free port
    public_url: Optional[str] = None  # how browsers reach this server, when not http://host:port
    # the secret that writes need (HTTP API, keys, export); PROMPTCUT_TOKEN also sets it; none:
    # a random one per start. Required when host is not a loopback address.
    token: Optional[str] = None
    # the edit log's durability: NORMAL keeps every acknowledged edit across a crash of the
    # server, FULL also across a power loss (an fsync per edit)
    log_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"


@dataclass
class ViewerConfig:
    layout: Literal["4panel", "xy", "xz", "yz", "3d", "xy-3d"] = "4panel"
    position: Optional[list[float]] = None  # voxel, z, y, x; the volume centre by default
    cross_section_scale: Optional[float] = None  # voxels per screen pixel; None fits the volume
    show_layer_panel: bool = False
    merge_timeout: float = 60.0  # seconds a pending merge (after the first M) stays armed


@dataclass
class ModelFiles:
    """The models' files, resolved against the config's folder."""

    sam2_config: str  # a package config name or an absolute YAML path
    sam2_checkpoint: Optional[Path] = None
    fgnet: Optional[Path] = None
    # the edge classifier that ranks focused proofreading's questions (None: no questions)
    edge_classifier: Optional[Path] = None


@dataclass
class ServeSettings:
    name: str
    dataset: str
    credits: str
    server: ServerConfig
    viewer: ViewerConfig
    models: ModelsConfig
    model_files: ModelFiles
    mesh_reduction: int
