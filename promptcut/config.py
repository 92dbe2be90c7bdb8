"""The YAML configuration: typed sections validated at start-up by pydantic.

Every section is a plain dataclass whose annotations carry its ranges and choices and whose
docstrings describe its keys; the domain's own settings (``segment.supervoxels`` is
:class:`~segmentation.supervoxels.SupervoxelParams`, ``train`` is
:class:`~segmentation.models.train_settings.TrainSettings`) and the server's sections
(:mod:`server.settings`) are used as they are, so each concept has one type. Values are
checked strictly (no string for a number, no 1 for true), keys the schema does not know are
refused, and every error is one line that names the key by its dotted path::

    server.port: must be at most 65535 (got 70000)

:func:`json_schema` publishes the same rules for editors (docs/config.schema.json).

Lists of three coordinates (``dataset.voxel_size``, ``viewer.position``, ``segment.block_shape``,
``import.chunk_size``, ``train.patch``) are in the order z, y, x, as NumPy indexes the volume;
neuroglancer and the HTTP API write x, y, z.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from annotated_types import Ge, Gt, Le, Len, MinLen
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic.json_schema import SkipJsonSchema

from segmentation.edge_classifier import SHIPPED_EDGE_MODEL
from segmentation.errors import ConfigError
from segmentation.models.train_settings import TrainSettings
from segmentation.supervoxels import SupervoxelParams
from server.settings import (DEVICE_PATTERN, URL_PATTERN, Fraction, ModelFiles, ModelsConfig,
                             NonEmpty, ServerConfig, ServeSettings, ViewerConfig)

URL_SCHEMES = ("gs://", "s3://", "http://", "https://", "file://", "precomputed://", "zarr://",
               "zarr2://", "zarr3://", "n5://", "memory://")

SourceFormat = Literal["auto", "hdf5", "tiff", "npy", "precomputed", "zarr", "n5"]
Shape = Annotated[list[Annotated[int, Ge(1)]], Len(3, 3)]  # voxels, z, y, x

# the keys whose three values are z, y, x: errors name the axis of an item
ZYX_KEYS = ("dataset.voxel_size", "viewer.position", "segment.block_shape", "import.chunk_size",
            "train.patch")
SECRET_KEYS = ("server.token",)
# what a pattern means, for errors (pydantic would print the regular expression)
PATTERNS = {DEVICE_PATTERN: "must be auto, cpu, cuda, cuda:N (N a GPU's number) or mps",
            URL_PATTERN: "must start with http:// or https://"}


@dataclass
class SourceConfig:
    """One input volume: a file to import or a volume that tensorstore can open in place."""

    path: NonEmpty
    """A file (HDF5, TIFF file or folder, .npy) relative to this config, or a volume URL
    (precomputed://, zarr://, n5://, gs://, s3://, https://, ...)."""
    key: Optional[str] = None
    """The HDF5 dataset's name."""
    format: SourceFormat = "auto"
    """auto: from the file's suffix or the URL's scheme."""


@dataclass
class DatasetConfig:
    name: str = "dataset"
    """The dataset's name, shown in the viewer and on the landing page."""
    credits: str = ""
    """Who made the data and its licence, shown on the landing page."""
    voxel_size: Optional[Annotated[list[Annotated[float, Gt(0)]], Len(3, 3)]] = None
    """nm per voxel, in the order [z, y, x] (not neuroglancer's x, y, z); required for HDF5,
    TIFF and NumPy input, which do not state one; none: the volume's own."""
    ground_truth: Optional[SourceConfig] = None
    """Neuron labels, for `promptcut evaluate` and `promptcut train`."""


class KeyProblem(ValueError):
    """A section's value that is wrong only together with another: names the key to blame."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass
class AgglomerationConfig:
    thresholds: Annotated[list[Fraction], MinLen(1)] = field(
        default_factory=lambda: [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7])
    """The merge-score thresholds (0..1) whose segmentations `promptcut segment` computes; the
    proofreading tools switch between them."""
    quantile: Fraction = 0.5
    """quantile: the affinity quantile of a contact whose complement is its merge score."""
    default_threshold: Fraction = 0.5
    """The threshold a served project opens at: one of thresholds."""
    method: Literal["quantile", "learned"] = "quantile"
    """The merge order: one minus an affinity quantile (waterz's), or one minus the edge
    classifier's merge probability (GALA's); its thresholds then are 1 - probability."""
    edge_model: Optional[str] = None
    """learned: the edge classifier, relative to this config; none: the shipped one."""

    def __post_init__(self) -> None:
        if not any(abs(t - self.default_threshold) < 1e-9 for t in self.thresholds):
            listed = ", ".join(f"{t:g}" for t in self.thresholds)
            raise KeyProblem("default_threshold", f"{self.default_threshold:g} is not one of "
                             f"the computed thresholds ({listed}): add it to thresholds or "
                             f"choose one of them")


@dataclass
class SegmentConfig:
    model: Literal["baseline", "unet3d", "fgnet"] = "baseline"
    """The affinity model: the intensity baseline, or a trained unet3d / fgnet checkpoint."""
    checkpoint: Optional[str] = None
    """unet3d / fgnet: the trained file, relative to this config."""
    block_shape: Shape = field(default_factory=lambda: [128, 128, 128])
    """Voxels per block, in the order [z, y, x]; each a multiple of 64."""
    flood_halo: Annotated[int, Ge(0)] = 8
    """Voxels of context around a block for its watershed flood."""
    workers: Optional[Annotated[int, Ge(0)]] = None
    """Local Dask workers; none: one per core; 0: in this process, without Dask."""
    scheduler: Optional[NonEmpty] = None
    """The address of an existing Dask cluster to run on (tcp://host:8786)."""
    supervoxels: SupervoxelParams = field(default_factory=SupervoxelParams)
    """The seeded watershed that makes supervoxels."""
    agglomeration: AgglomerationConfig = field(default_factory=AgglomerationConfig)
    """How supervoxels merge into segments."""
    meshes: bool = True
    """Compute a mesh of every segment for the 3D view."""
    mesh_levels: Annotated[int, Ge(1), Le(4)] = 2
    """Levels of detail of the supervoxel meshes: level k is the surface of pyramid scale
    mesh_scale + k (the 3D view draws coarser levels for what is far away)."""
    mesh_scale: Annotated[int, Ge(0), Le(2)] = 1
    """The pyramid scale of the finest level: 1 (twice the voxel) has a quarter of the faces
    of 0 (full resolution) and meshes four times as fast; supervoxels it loses to its
    downsampling are meshed at full resolution."""


@dataclass
class ImportConfig:
    format: Literal["precomputed", "zarr"] = "precomputed"
    """The format HDF5 / TIFF / NumPy input is imported into."""
    chunk_size: Shape = field(default_factory=lambda: [64, 64, 64])
    """Voxels per chunk, in the order [z, y, x]."""
    min_downsampled_scales: Annotated[int, Ge(0)] = 3
    """Downsampled scales to write, at least."""


@dataclass
class Config:
    """A promptcut project: its data, how it is segmented, trained and served. Paths are
    relative to the config file; lists of three coordinates are in the order [z, y, x]."""

    __pydantic_config__ = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False,
                                     use_attribute_docstrings=True, title="promptcut config")

    project: NonEmpty
    """The folder (relative to this config) that holds the imported volumes and everything
    computed from them."""
    image: SourceConfig
    """The EM image."""
    name: str = "promptcut"
    """The project's name, shown in the viewer."""
    segmentation: Optional[SourceConfig] = None
    """An existing segmentation to proofread; none: `promptcut segment` computes one."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    """What the data is: name, credits, voxel size, ground truth."""
    import_: Annotated[ImportConfig, Field(alias="import")] = field(default_factory=ImportConfig)
    """How HDF5 / TIFF / NumPy input is imported."""
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    """`promptcut segment`: affinities, supervoxels, agglomeration, meshes."""
    models: ModelsConfig = field(default_factory=ModelsConfig)
    """The models the server runs for prompts (SAM2, FGNet) and where."""
    train: TrainSettings = field(default_factory=TrainSettings)
    """`promptcut train`: the affinity model's training."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """`promptcut serve`: addresses, ports, access, the edit log."""
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    """How a neuroglancer viewer opens."""
    # the config file's folder, set by load_config; not a key of the file
    base_dir: SkipJsonSchema[Path] = Path(".")

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
                                        edges if edges.is_file() else None))

    def source_location(self, source: SourceConfig) -> str:
        """URLs stay as written; local paths become absolute."""
        text = os.path.expandvars(source.path)
        if text.startswith(URL_SCHEMES):
            return text
        return str(self.resolve(text))


INTERNAL_FIELDS = ("base_dir",)


@functools.cache
def _adapter() -> TypeAdapter:
    """The validator, built on first use (a few hundred milliseconds)."""
    return TypeAdapter(Config)


def load_config(path: str | os.PathLike, overrides: Optional[dict[str, Any]] = None) -> Config:
    """Read and validate a YAML config; raise ConfigError naming the bad key. ``overrides``
    (dotted keys: ``{"server.port": 0}``) come from the command line and replace the file's."""
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
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of keys to values, got "
                          f"{_kind(data)}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        config = validate(data, tuple(overrides or ()))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    config.base_dir = path.resolve().parent
    return config


def validate(data: dict, overridden: tuple[str, ...] = ()) -> Config:
    """A Config from plain (YAML) data; the first problem as one ConfigError line."""
    data = _plain(data)
    for key in INTERNAL_FIELDS:
        if key in data:
            raise ConfigError(_unknown((key,)))
    try:
        # JSON mode: strict, yet a YAML list is a valid tuple
        return _adapter().validate_json(json.dumps(data))
    except ValidationError as exc:
        errors = exc.errors()
        # an item that fails also shortens its list "after validation": one problem, not two
        errors = [e for e in errors if not (e["type"] in ("too_short", "too_long") and any(
            tuple(o["loc"][:len(e["loc"])]) == tuple(e["loc"]) and o is not e for o in errors))]
        raise ConfigError(_describe(errors[0], overridden) + (
            f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
            if len(errors) > 1 else "")) from None


def json_schema() -> dict:
    """The config's JSON schema (draft 2020-12), for editors and yaml-language-server."""
    schema = _adapter().json_schema(by_alias=True, mode="validation")
    for cls in _sections(Config):  # defaults from factories, which pydantic leaves out
        target = schema if cls is Config else schema["$defs"][cls.__name__]
        for key, (f, _) in _keyed_fields(cls).items():
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING \
                else None
            if value is not None and not dataclasses.is_dataclass(value):
                target["properties"][key].setdefault("default", value)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **_one_line(schema)}


def schema_text() -> str:
    """:func:`json_schema` as docs/config.schema.json holds it."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# -- errors ---------------------------------------------------------------------------------


def _describe(error: dict, overridden: tuple[str, ...]) -> str:
    loc = tuple(error["loc"])
    kind, ctx = error["type"], error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, KeyProblem):
        loc += (cause.key,)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return _unknown(loc)
    key = _dotted(loc)
    if kind == "missing" and loc and isinstance(loc[-1], int):  # a tuple given too few items
        parent = _dotted(loc[:-1])
        return f"{parent}: {_length_message(parent, 'too_short', {})} " \
               f"(got {_kind(error.get('input'))})"
    if kind == "missing":
        return f"{key}: required, but missing"
    message = _message(kind, ctx, key, error)
    if isinstance(cause, KeyProblem):
        return f"{key}: {message}"
    got = _kind(error.get("input"))
    if key in SECRET_KEYS and isinstance(error.get("input"), str):
        got = f"{len(error['input'])} characters"  # a secret is never echoed
    if _dotted(tuple(p for p in loc if isinstance(p, str))) in overridden:
        got += ", from the command line"
    return f"{key}: {message} (got {got})"


def _message(kind: str, ctx: dict, key: str, error: dict) -> str:
    bound = {k: _number(v) for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")}
    fixed = {
        "int_type": "must be an integer", "int_from_float": "must be an integer",
        "int_parsing": "must be an integer", "float_type": "must be a number",
        "float_parsing": "must be a number", "bool_type": "must be true or false",
        "bool_parsing": "must be true or false", "string_type": "must be a string",
        "list_type": "must be a list", "tuple_type": "must be a list",
        "dataclass_type": "must be a mapping of keys to values",
        "dataclass_exact_type": "must be a mapping of keys to values",
        "dict_type": "must be a mapping of keys to values",
        "model_type": "must be a mapping of keys to values",
        "finite_number": "must be a finite number",
    }
    if kind in fixed:
        return fixed[kind]
    if kind == "greater_than":
        return f"must be greater than {bound['gt']}"
    if kind == "greater_than_equal":
        return f"must be at least {bound['ge']}"
    if kind == "less_than":
        return f"must be less than {bound['lt']}"
    if kind == "less_than_equal":
        return f"must be at most {bound['le']}"
    if kind == "literal_error":
        expected = str(ctx.get("expected"))
        return f"must be one of {expected}" if " or " in expected else f"must be {expected}"
    if kind in ("too_short", "too_long"):
        return _length_message(key, kind, ctx)
    if kind == "string_too_short":
        length = ctx.get("min_length", 1)
        return "must not be empty" if length == 1 else f"must be at least {length} characters long"
    if kind == "string_pattern_mismatch":
        return PATTERNS.get(ctx.get("pattern"), f"must match {ctx.get('pattern')}")
    if kind == "value_error" and ctx.get("error") is not None:
        return str(ctx["error"])
    return error["msg"][:1].lower() + error["msg"][1:]  # pydantic's own words, as a fallback


def _length_message(key: str, kind: str, ctx: dict) -> str:
    if key in ZYX_KEYS:
        return "must list 3 values, in the order [z, y, x]"
    if kind == "too_short":
        count = ctx.get("min_length", 1)
        return f"must list at least {count} value{'s' if count != 1 else ''}"
    count = ctx.get("max_length")
    return f"must list at most {count} value{'s' if count != 1 else ''}"


def _unknown(loc: tuple) -> str:
    key = _dotted(loc)
    allowed = _keys_at(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    where = f"in {_dotted(loc[:-1])}" if loc[:-1] else "at the top"
    return f"{key}: unknown key ({hint}allowed {where}: {', '.join(sorted(allowed))})"


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    if len(loc) >= 2 and isinstance(loc[-1], int) and _dotted(loc[:-1]) in ZYX_KEYS \
            and 0 <= loc[-1] < 3:
        text += f" ({'zyx'[loc[-1]]})"
    return text or "<top>"


def _keys_at(loc: tuple) -> list[str]:
    """The keys a section allows, the section found by its path from the top."""
    hint: Any = Config
    for part in loc:
        hint = _unwrap(hint)
        if isinstance(part, int):
            (hint,) = typing.get_args(hint)[:1] or (Any,)
        elif dataclasses.is_dataclass(hint):
            hint = _fields(hint).get(part, Any)
    hint = _unwrap(hint)
    return list(_fields(hint)) if dataclasses.is_dataclass(hint) else []


def _fields(cls: type) -> dict[str, Any]:
    """A section's keys (aliases where they have one) and their annotations."""
    return {key: hint for key, (_, hint) in _keyed_fields(cls).items()}


def _keyed_fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """A section's keys (aliases where they have one), each with its field and annotation."""
    hints = typing.get_type_hints(cls, include_extras=True)
    keys = {}
    for f in dataclasses.fields(cls):
        if f.name in INTERNAL_FIELDS:
            continue
        alias = next((m.alias for m in getattr(hints[f.name], "__metadata__", ())
                      if isinstance(m, FieldInfo) and m.alias), None)
        keys[alias or f.name] = (f, hints[f.name])
    return keys


def _sections(cls: type) -> list[type]:
    """``cls`` and every dataclass section below it."""
    found = [cls]
    for hint in _fields(cls).values():
        inner = _unwrap(hint)
        if dataclasses.is_dataclass(inner) and inner not in found:
            found += [c for c in _sections(inner) if c not in found]
    return found


def _one_line(node: Any) -> Any:
    """Descriptions (docstrings) as single lines, for editors' hovers."""
    if isinstance(node, dict):
        return {k: " ".join(v.split()) if k == "description" and isinstance(v, str)
                else _one_line(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_one_line(v) for v in node]
    return node


def _unwrap(hint: Any) -> Any:
    """Through Annotated and Optional to the type itself."""
    while True:
        if typing.get_origin(hint) is Annotated:
            hint = typing.get_args(hint)[0]
        elif typing.get_origin(hint) in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = inner[0] if len(inner) == 1 else hint
            if len(inner) != 1:
                return hint
        else:
            return hint


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        text = repr(value)
        return text if len(text) <= 60 else f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- input ----------------------------------------------------------------------------------


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            return  # the section itself is wrong: validation says so
        node = node[part]
    node[last] = value


def _plain(value: Any) -> Any:
    """YAML data as JSON can hold it: keys as strings, dates and other scalars as text."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, bool) else str(k).lower(): _plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return str(value)
