"""What a running server is told: its sections of the YAML config and the paths the composition
root (the CLI) resolved. The config schema (promptcut.config) uses these sections as they are,
validating them against their annotations (ranges, choices) and describing each key by the
docstring under it; the server never reads the config itself, so it does not import the CLI
package."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

from annotated_types import Ge, Gt, Le, Len, MinLen
from pydantic import Field

Port = Annotated[int, Ge(0), Le(65535)]
Fraction = Annotated[float, Ge(0), Le(1)]
NonEmpty = Annotated[str, MinLen(1)]
# what torch.device accepts and promptcut means: auto picks CUDA when there is one
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
URL_PATTERN = r"^https?://"


@dataclass
class Sam2Config:
    config: NonEmpty = "sam2.1_hiera_t"
    """SAM2's model config: a package config name (sam2.1_hiera_t, ...) or a YAML file,
    relative to this config."""
    checkpoint: Optional[str] = None
    """SAM2's official {"model": state_dict} weights file, relative to this config; none:
    prompt cuts use the prompts and affinities only."""
    propagate: Annotated[int, Ge(0)] = 8
    """Sections each way (along z) a prompted mask may propagate."""
    score_threshold: Fraction = 0.5
    """Propagation stops below this predicted IoU."""
    overlap_threshold: Fraction = 0.5
    """Propagation also stops below this IoU with the previous section's mask."""
    cache_slices: Annotated[int, Ge(1)] = 32
    """Sections whose SAM2 image features are kept in memory."""


@dataclass
class ModelsConfig:
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "auto"
    """Where models run: auto (CUDA when there is one, else the CPU), cpu, cuda, cuda:N or
    mps."""
    sam2: Sam2Config = field(default_factory=Sam2Config)
    """SAM2, for prompted (point) segmentation in the viewer."""
    fgnet: Optional[str] = None
    """An FGNet checkpoint, relative to this config: re-predicts affinities around prompts;
    none: no FGNet."""
    fgnet_window: Annotated[int, Ge(16)] = 128
    """Voxels (along y and x) around a prompt that FGNet re-predicts."""


@dataclass
class ServerConfig:
    host: NonEmpty = "127.0.0.1"
    """The address the server binds; anything but a loopback address needs server.token."""
    port: Port = 8000
    """Port of the data server, the landing page and the HTTP API (0: a free one)."""
    viewer_port: Port = 0
    """Port of neuroglancer's own server (0: a free one)."""
    public_url: Optional[Annotated[str, Field(pattern=URL_PATTERN)]] = None
    """How browsers reach this server (http:// or https://...), when not http://host:port
    (behind a proxy, say)."""
    token: Optional[Annotated[str, MinLen(16)]] = None
    """The secret that writes need (HTTP API, keys, export), at least 16 characters;
    PROMPTCUT_TOKEN also sets it; none: a random one per start. Required when host is not a
    loopback address."""
    log_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """The edit log's durability: NORMAL keeps every acknowledged edit across a crash of the
    server, FULL also across a power loss (an fsync per edit)."""


@dataclass
class ViewerConfig:
    layout: Literal["4panel", "xy", "xz", "yz", "3d", "xy-3d"] = "4panel"
    """neuroglancer's layout when a viewer opens."""
    position: Optional[Annotated[list[Annotated[float, Ge(0)]], Len(3, 3)]] = None
    """Where a viewer opens, in voxels, in the order [z, y, x] (neuroglancer shows x, y, z);
    none: the volume's centre."""
    cross_section_scale: Optional[Annotated[float, Gt(0)]] = None
    """Zoom when a viewer opens: voxels per screen pixel; none fits the volume."""
    show_layer_panel: bool = False
    """Show neuroglancer's layer panel."""
    merge_timeout: Annotated[float, Gt(0)] = 60.0
    """Seconds a pending merge (after the first M) stays armed."""


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
