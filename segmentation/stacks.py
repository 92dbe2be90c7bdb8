"""Readers for the stacks people bring: HDF5 datasets, TIFF stacks and NumPy files.

Each reader returns a :class:`Stack`, a lazily read z, y, x array, so that importing a large file
never needs it all in memory at once.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from segmentation.errors import InputError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)


@dataclass
class Stack:
    """A 3-D z, y, x array read on demand, with the voxel size its file declares (if any)."""

    array: Any  # h5py.Dataset, numpy memmap or ndarray: anything indexable with slices
    voxel_size: Optional[tuple[float, float, float]] = None
    description: str = ""
    _closer: ExitStack = field(default_factory=ExitStack, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def read(self, z: slice, y: slice, x: slice) -> np.ndarray:
        return np.asarray(self.array[z, y, x])

    def close(self) -> None:
        self._closer.close()

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stack_format(path: str | os.PathLike) -> Optional[str]:
    """'hdf5', 'tiff' or 'npy' for a file or TIFF folder promptcut can import, else None."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(HDF5_SUFFIXES):
        return "hdf5"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(NPY_SUFFIXES):
        return "npy"
    if p.is_dir() and any(f.name.lower().endswith(TIFF_SUFFIXES) for f in p.iterdir()):
        return "tiff"
    return None


def open_stack(path: str | os.PathLike, key: Optional[str] = None, fmt: str = "auto") -> Stack:
    """Open an HDF5 dataset, a TIFF file or folder of TIFF slices, or a .npy file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if fmt == "auto":
        fmt = stack_format(path) or ""
    if fmt == "hdf5":
        stack = _open_hdf5(path, key)
    elif fmt == "tiff":
        stack = _open_tiff(path)
    elif fmt == "npy":
        stack = _open_npy(path)
    else:
        raise InputError(f"cannot tell the format of {path}: expected .h5/.hdf5, .tif/.tiff "
                         f"(a file or a folder of slices) or .npy")
    try:
        check_volume_shape(stack.shape, str(path))
    except InputError:
        stack.close()
        raise
    return stack


def check_volume_shape(shape: tuple[int, ...], what: str) -> None:
    if len(shape) != 3:
        raise InputError(f"{what}: expected a 3-D volume (z, y, x), got {len(shape)}-D shape "
                         f"{tuple(shape)}")
    if min(shape) == 0:
        raise InputError(f"{what}: the volume is empty (shape {tuple(shape)})")


def _open_hdf5(path: Path, key: Optional[str]) -> Stack:
    import h5py

    closer = ExitStack()
    try:
        handle = closer.enter_context(h5py.File(path, "r"))
    except OSError as exc:
        raise InputError(f"{path} is not a readable HDF5 file ({exc})") from None
    datasets: list[str] = []
    handle.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset)
                      else None)
    if key is None:
        if len(datasets) != 1:
            closer.close()
            raise InputError(f"{path} holds several datasets; choose one with a key "
                             f"(one of: {', '.join(datasets) or 'none'})")
        key = datasets[0]
    if key not in handle or not isinstance(handle[key], h5py.Dataset):
        closer.close()
        raise InputError(f"{path} has no dataset '{key}' (it has: {', '.join(datasets) or 'none'})")
    dataset = handle[key]
    voxel = _voxel_size_from_attrs(dataset.attrs) or _voxel_size_from_attrs(handle.attrs)
    return Stack(dataset, voxel, f"{path}:{key}", closer)


def _voxel_size_from_attrs(attrs) -> Optional[tuple[float, float, float]]:
    """Voxel size in nm from the attribute names in common use, z, y, x order."""
    for name, factor in (("voxel_size_nm", 1.0), ("resolution", 1.0), ("voxel_size", 1.0),
                         ("element_size_um", 1000.0)):
        if name in attrs:
            value = np.asarray(attrs[name], dtype=float).ravel()
            if value.size == 3 and np.all(value > 0):
                return tuple(float(v) * factor for v in value)
    return None


def _open_tiff(path: Path) -> Stack:
    import tifffile

    try:
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.name.lower().endswith(TIFF_SUFFIXES))
            array = tifffile.imread([str(f) for f in files]) if len(files) > 1 else \
                tifffile.imread(str(files[0]))[None]
        else:
            array = tifffile.imread(str(path))
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InputError(f"{path} is not a readable TIFF stack ({exc})") from None
    if array.ndim == 2:
        array = array[None]
    return Stack(array, None, str(path))


def _open_npy(path: Path) -> Stack:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path} is not a readable .npy file ({exc})") from None
    return Stack(array, None, str(path))
