"""Volumes through tensorstore: open and create neuroglancer precomputed, zarr and n5.

Everything this module hands out is a z, y, x view (NumPy order). Precomputed stores x, y, z
plus a channel axis; the transposition happens here and nowhere else in ``segmentation/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import tensorstore as ts

from segmentation.errors import InputError

Kind = Literal["image", "segmentation"]
StoreFormat = Literal["precomputed", "zarr", "n5"]
URL_PREFIXES = {"precomputed://": "precomputed", "zarr://": "zarr", "zarr2://": "zarr",
                "zarr3://": "zarr", "n5://": "n5"}
REMOTE_SCHEMES = ("gs://", "s3://", "http://", "https://", "memory://")
IMAGE_DTYPES = {"uint8", "uint16", "uint32", "int8", "int16", "int32", "float32"}


@dataclass
class Volume:
    """An opened volume: a lazily read z, y, x tensorstore view and what it stands for."""

    array: ts.TensorStore
    voxel_size: tuple[float, float, float]  # nm, z, y, x
    kind: Kind
    format: StoreFormat
    location: str  # a local path or a remote URL, without a format prefix

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype.numpy_dtype)

    @property
    def is_local(self) -> bool:
        return not self.location.startswith(REMOTE_SCHEMES)

    def read(self, z: slice, y: slice, x: slice) -> np.ndarray:
        return self.array[z, y, x].read().result()

    def value_at(self, zyx: Sequence[int]) -> int | float:
        z, y, x = (int(v) for v in zyx)
        if not all(0 <= c < s for c, s in zip((z, y, x), self.shape)):
            raise InputError(f"voxel {(z, y, x)} (z, y, x) is outside the volume {self.shape}")
        return self.array[z, y, x].read().result().item()


class ArrayVolume:
    """A NumPy array (z, y, x) behind the part of the Volume interface that readers use: for
    in-memory work (model calibration on a loaded volume, tests, benchmarks)."""

    def __init__(self, array: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
                 location: str = "memory"):
        self.array = array
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.location = location

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    def read(self, z: slice, y: slice, x: slice) -> np.ndarray:
        return np.array(self.array[z, y, x], copy=True)


def split_location(location: str) -> tuple[Optional[str], str]:
    """('zarr', 'gs://b/p') for 'zarr://gs://b/p'; (None, location) when no prefix names a format.

    A ``file://`` URL comes back as a plain local path.
    """
    fmt = None
    for prefix, name in URL_PREFIXES.items():
        if location.startswith(prefix):
            fmt, location = name, location[len(prefix):]
            break
    if location.startswith("file://"):
        location = location[len("file://"):]
    return fmt, location


def detect_format(location: str) -> Optional[StoreFormat]:
    """The tensorstore format of a volume location, from its prefix, suffix or metadata files."""
    fmt, bare = split_location(location)
    if fmt:
        return fmt
    lowered = bare.rstrip("/").lower()
    if lowered.endswith(".zarr"):
        return "zarr"
    if lowered.endswith(".n5"):
        return "n5"
    if bare.startswith(REMOTE_SCHEMES):
        return "precomputed"
    path = Path(bare)
    if (path / "info").is_file():
        return "precomputed"
    if any((path / f).is_file() for f in (".zarray", ".zgroup", "zarr.json")):
        return "zarr"
    if (path / "attributes.json").is_file():
        return "n5"
    return None


def kvstore(location: str) -> dict | str:
    if location.startswith(REMOTE_SCHEMES):
        return location if location.endswith("/") else location + "/"
    return {"driver": "file", "path": str(Path(location).resolve()) + "/"}


def open_volume(location: str, kind: Kind, fmt: Optional[str] = None,
                voxel_size: Optional[Sequence[float]] = None) -> Volume:
    """Open an existing precomputed / zarr / n5 volume, local or remote, as a z, y, x view."""
    detected, bare = split_location(location)
    if not bare.startswith(REMOTE_SCHEMES) and not Path(bare).exists():
        raise InputError(f"volume not found: {bare}")
    fmt = fmt if fmt not in (None, "auto") else (detected or detect_format(bare))
    if fmt is None:
        raise InputError(f"{location}: not a precomputed, zarr or n5 volume (no metadata found)")
    try:
        if fmt == "precomputed":
            store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": kvstore(bare)},
                            read=True).result()
            channels = store.shape[3]
            if channels != 1:
                raise InputError(f"{location}: expected one channel, found {channels}")
            array = store[..., 0].T
            found = tuple(float(u.multiplier) for u in store.schema.dimension_units[:3])[::-1]
        elif fmt == "zarr":
            array, found = _open_zarr(bare)
        else:
            array = ts.open({"driver": "n5", "kvstore": kvstore(bare)}, read=True).result()
            array = array.T  # n5 lists dimensions fastest first
            found = _n5_resolution(array)
    except ValueError as exc:
        raise InputError(f"cannot open {location} as {fmt}: {_first_line(exc)}") from None
    if array.rank != 3:
        raise InputError(f"{location}: expected a 3-D volume (z, y, x), got rank {array.rank}")
    if voxel_size is None and found is None:
        raise InputError(f"{location}: the volume does not state its voxel size; "
                         f"set dataset.voxel_size in the config")
    size = tuple(float(v) for v in (voxel_size if voxel_size is not None else found))
    array = array[ts.d[:].translate_to[0]]  # volumes with a voxel offset start at 0 here
    return Volume(array, size, kind, fmt, bare)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _open_zarr(location: str) -> tuple[ts.TensorStore, Optional[tuple[float, float, float]]]:
    """A zarr array, or level 0 of an OME-NGFF multiscale group, with its voxel size."""
    group_attrs = _read_json(location, ".zattrs") or {}
    multiscales = group_attrs.get("multiscales")
    if multiscales:
        level = multiscales[0]["datasets"][0]
        scale = next((t["scale"] for t in level.get("coordinateTransformations", [])
                      if t.get("type") == "scale"), None)
        path = location.rstrip("/") + "/" + level["path"]
        array = ts.open({"driver": "zarr", "kvstore": kvstore(path)}, read=True).result()
        return array, tuple(float(s) for s in scale[-3:]) if scale else None
    array = ts.open({"driver": "zarr", "kvstore": kvstore(location)}, read=True).result()
    resolution = (_read_json(location, ".zattrs") or {}).get("resolution")
    return array, tuple(float(s) for s in resolution) if resolution else None


def _n5_resolution(array: ts.TensorStore) -> Optional[tuple[float, float, float]]:
    units = array.schema.dimension_units
    if units and all(u is not None for u in units):
        return tuple(float(u.multiplier) for u in units)
    return None


def _read_json(location: str, name: str) -> Optional[dict]:
    try:
        raw = ts.KvStore.open(kvstore(location)).result().read(name).result()
    except ValueError:
        return None
    return json.loads(raw.value) if raw.state == "value" else None


# -- creating volumes ---------------------------------------------------------------------------

def storage_dtype(dtype: np.dtype, kind: Kind) -> np.dtype:
    """The dtype a volume is stored as; rejects what cannot be a segmentation."""
    dtype = np.dtype(dtype)
    if kind == "segmentation":
        if dtype.kind not in "ui":
            raise InputError(f"a segmentation must hold integer ids, got {dtype} "
                             f"(import it as an image instead)")
        return np.dtype(np.uint64)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype.name in IMAGE_DTYPES:
        return dtype
    if dtype.kind == "f":
        return np.dtype(np.float32)
    if dtype.kind in "ui":
        return np.dtype(np.uint32) if dtype.kind == "u" else np.dtype(np.int32)
    raise InputError(f"cannot store an image of dtype {dtype}")


def create_precomputed_scale(root: Path, kind: Kind, dtype: np.dtype, shape: Sequence[int],
                             voxel_size: Sequence[float], chunk: Sequence[int],
                             sharding: Optional[dict] = None) -> ts.TensorStore:
    """Add one scale to a precomputed volume (created on first call); return its z, y, x view.
    ``sharding``: a neuroglancer_uint64_sharded_v1 spec, for volumes of many chunks."""
    scale = {
        "size": [int(s) for s in shape[::-1]],
        "resolution": [float(v) for v in voxel_size[::-1]],
        "chunk_size": [int(c) for c in chunk[::-1]],
        "encoding": "compressed_segmentation" if kind == "segmentation" else "raw",
    }
    if kind == "segmentation":
        scale["compressed_segmentation_block_size"] = [8, 8, 8]
    if sharding is not None:
        scale["sharding"] = sharding
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": kvstore(str(root)),
        "multiscale_metadata": {"type": kind, "data_type": np.dtype(dtype).name,
                                "num_channels": 1},
        "scale_metadata": scale,
        "create": True,
    }
    return ts.open(spec).result()[..., 0].T


def open_precomputed_scale(root: Path, scale_index: int = 0,
                           write: bool = False) -> ts.TensorStore:
    """One scale of a local precomputed volume as a z, y, x view."""
    spec = {"driver": "neuroglancer_precomputed", "kvstore": kvstore(str(root)),
            "scale_index": scale_index}
    return ts.open(spec, read=True, write=write).result()[..., 0].T


def create_zarr_scale(root: Path, level: int, dtype: np.dtype, shape: Sequence[int],
                      chunk: Sequence[int]) -> ts.TensorStore:
    """Create array ``level`` of an OME-NGFF multiscale group (z, y, x)."""
    return create_zarr(root / str(level), dtype, shape, chunk)


def create_zarr(path: Path, dtype: np.dtype, shape: Sequence[int], chunk: Sequence[int],
                attributes: Optional[dict] = None) -> ts.TensorStore:
    """A zarr v2 array (any rank), replacing what was there; ``attributes`` go to .zattrs."""
    spec = {
        "driver": "zarr",
        "kvstore": kvstore(str(path)),
        "metadata": {"shape": [int(s) for s in shape], "chunks": [int(c) for c in chunk],
                     "dtype": np.dtype(dtype).str,
                     "compressor": {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1},
                     "dimension_separator": "/", "fill_value": 0},
        "create": True,
        "delete_existing": True,
    }
    store = ts.open(spec).result()
    if attributes is not None:
        (Path(path) / ".zattrs").write_text(json.dumps(attributes))
    return store


def open_zarr(path: Path) -> ts.TensorStore:
    return ts.open({"driver": "zarr", "kvstore": kvstore(str(path))}, read=True,
                   write=True).result()



def write_ome_zarr_group(root: Path, name: str, scales: Sequence[Sequence[float]]) -> None:
    """Zarr v2 group metadata in the OME-NGFF 0.4 form that neuroglancer and napari read."""
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    # Voxel centres: a voxel averaged from f finer ones is centred (f - 1) / 2 of them along.
    base = scales[0]
    datasets = [{"path": str(i), "coordinateTransformations": [
        {"type": "scale", "scale": [float(v) for v in s]},
        {"type": "translation", "translation": [(v - b) / 2 for v, b in zip(s, base)]}]}
        for i, s in enumerate(scales)]
    attrs = {"multiscales": [{"version": "0.4", "name": name, "axes": axes,
                              "datasets": datasets}]}
    (root / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (root / ".zattrs").write_text(json.dumps(attrs, indent=1))


def downsample_factors(voxel_size: Sequence[float]) -> tuple[int, int, int]:
    """Halve the finer axes first, so that anisotropic data become isotropic before z is halved."""
    coarsest = max(voxel_size)
    factors = tuple(2 if v * 2 <= coarsest * 1.5 else 1 for v in voxel_size)
    return factors if factors != (1, 1, 1) else (2, 2, 2)
