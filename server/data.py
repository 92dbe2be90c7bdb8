"""Serve the project's volume files to the neuroglancer client.

Each mount is a named folder (``/data/<mount>/<path>``). Requests that try to leave it (``..``,
absolute paths, symlinks out of it) are refused. Chunks are gzip-compressed for clients that
accept it, and CORS headers let the neuroglancer client on another port fetch them.

Like tornado's StaticFileHandler: a single byte range (``Range: bytes=a-b``, what sharded
precomputed volumes and meshes are read with) answers 206 with only those bytes read from disk,
416 when it lies outside the file; an ETag from the file's size and modification time answers a
matching ``If-None-Match`` with 304.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path, PurePosixPath
from typing import Optional

import tornado.web
from tornado import httputil
from tornado.ioloop import IOLoop

from segmentation.file_ranges import read_range

JSON_NAMES = {"info", ".zarray", ".zattrs", ".zgroup", "zarr.json", "attributes.json",
              "project.json"}
PRECOMPRESSED_SUFFIXES = {".gz", ".jpg", ".jpeg", ".png"}
MIN_GZIP_BYTES = 256


def content_type(name: str) -> str:
    if name in JSON_NAMES or name.endswith(".json"):
        return "application/json"
    if name.endswith((".jpg", ".jpeg")):
        return "image/jpeg"
    if name.endswith(".png"):
        return "image/png"
    return "application/octet-stream"


# files a volume folder may also hold that are not volume data (a config with the server's
# token, say): never served, whatever the folder
NOT_DATA = (".yaml", ".yml", ".sqlite", ".sqlite-wal", ".sqlite-shm", ".acknowledged",
            ".lock", ".env", ".py", ".toml", ".cfg", ".ini")


def safe_relative(path: str) -> PurePosixPath | None:
    """The request path as a relative path inside its mount, or None if it tries to leave it."""
    if not path or path.startswith(("/", "\\")) or "\\" in path or "\x00" in path:
        return None
    parts = PurePosixPath(path).parts
    if any(part in ("..", ".") for part in parts) or ":" in parts[0]:
        return None
    return PurePosixPath(*parts)


class RangeNotSatisfiable(Exception):
    """A byte range that starts past the file's end (or ends before it starts): HTTP 416."""


class CorsMixin:
    def set_default_headers(self) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "*")
        self.set_header("Access-Control-Max-Age", "86400")
        self.set_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, ETag")

    def options(self, *_args) -> None:
        self.set_status(204)
        self.finish()


class ByteRangeMixin:
    """Single byte ranges, answered as tornado's StaticFileHandler answers them."""

    def range_to_send(self, size: int) -> Optional[tuple[int, int, bool]]:
        """(start, stop, partial) of ``size`` bytes: the range the request asks for (partial)
        or all of them; None when the range lies outside, after answering 416."""
        self.set_header("Accept-Ranges", "bytes")
        try:
            asked = _byte_range(self.request.headers.get("Range"), size)
        except RangeNotSatisfiable:
            self.set_status(416)
            self.set_header("Content-Range", f"bytes */{size}")
            return None
        return (*asked, True) if asked is not None else (0, size, False)

    def mark_partial(self, start: int, stop: int, size: int) -> None:
        self.set_status(206)
        self.set_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")


class DataHandler(CorsMixin, ByteRangeMixin, tornado.web.RequestHandler):
    def initialize(self, mounts: dict[str, Path]) -> None:
        self.mounts = mounts

    async def head(self, mount: str, path: str) -> None:
        await self.get(mount, path, include_body=False)

    async def get(self, mount: str, path: str, include_body: bool = True) -> None:
        root = self.mounts.get(mount)
        relative = safe_relative(path)
        if root is None:
            raise tornado.web.HTTPError(404, f"no data mount {mount!r}")
        if relative is None:
            raise tornado.web.HTTPError(403, "path leaves the data folder")
        if relative.name.lower().endswith(NOT_DATA):
            raise tornado.web.HTTPError(403, "not volume data")
        root = root.resolve()
        full = (root / relative).resolve()
        if root not in full.parents:  # a symlink pointing outside
            raise tornado.web.HTTPError(403, "path leaves the data folder")
        if not full.is_file():
            raise tornado.web.HTTPError(404)
        stat = full.stat()
        self.set_header("Content-Type", content_type(full.name))
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Vary", "Accept-Encoding")
        to_send = self.range_to_send(stat.st_size)
        if to_send is None:
            return
        start, stop, partial = to_send
        zipped = not partial and self._wants_gzip(full.name, stat.st_size)
        # one ETag per file version and encoding (a gzip body is another representation)
        self._set_etag(stat, zipped)
        if self.check_etag_header():
            self.set_status(304)
            return
        body = await IOLoop.current().run_in_executor(None, read_range, full, start, stop)
        if partial:
            self.mark_partial(start, stop, stat.st_size)
        elif zipped:
            body = gzip.compress(body, compresslevel=1)
            self.set_header("Content-Encoding", "gzip")
        self.set_header("Content-Length", str(len(body)))
        if include_body:
            self.write(body)

    def _set_etag(self, stat: os.stat_result, zipped: bool) -> None:
        self.set_header("Etag", f'"{stat.st_mtime_ns:x}-{stat.st_size:x}'
                                f'{"-gzip" if zipped else ""}"')

    def _wants_gzip(self, name: str, size: int) -> bool:
        accepted = self.request.headers.get("Accept-Encoding", "")
        return ("gzip" in accepted and size >= MIN_GZIP_BYTES
                and PurePosixPath(name).suffix not in PRECOMPRESSED_SUFFIXES)


def _byte_range(header: Optional[str], size: int) -> Optional[tuple[int, int]]:
    """The [start, stop) of ``size`` bytes that a single-range ``Range`` header asks for; None
    without one (or with one a server may ignore, as HTTP allows: several ranges, another
    unit); RangeNotSatisfiable when it lies outside."""
    parsed = httputil._parse_request_range(header) if header else None  # StaticFileHandler's
    if parsed is None:
        return None
    start, stop = parsed
    if start is not None and start < 0:  # bytes=-n: the last n bytes
        start, stop = max(size + start, 0), size
    start = 0 if start is None else start
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        raise RangeNotSatisfiable(header)
    return start, stop

