"""Part of a file read without the rest: a shard file holds many segments' data, and a reader
(the data server, the served supervoxel meshes) wants one segment's bytes."""

from __future__ import annotations

from pathlib import Path


def read_range(path: Path, start: int, stop: int) -> bytes:
    """Bytes [start, stop) of the file at ``path``."""
    with open(path, "rb") as file:
        file.seek(start)
        return file.read(stop - start)
