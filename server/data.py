"""Serve the project's volume files to the neuroglancer client.

Each mount is a named folder (``/data/<mount>/<path>``). Requests that try to leave it (``..``,
absolute paths, symlinks out of it) are refused. Chunks are gzip-compressed for clients that
accept it, and CORS headers let the neuroglancer client on another port fetch them.
"""

from __future__ import annotations

import gzip
from pathlib import Path, PurePosixPath

import tornado.web
from tornado.ioloop import IOLoop

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


class CorsMixin:
    def set_default_headers(self) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "*")
        self.set_header("Access-Control-Max-Age", "86400")

    def options(self, *_args) -> None:
        self.set_status(204)
        self.finish()


class DataHandler(CorsMixin, tornado.web.RequestHandler):
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
        body = await IOLoop.current().run_in_executor(None, full.read_bytes)
        self.set_header("Content-Type", content_type(full.name))
        self.set_header("Cache-Control", "no-cache")
        if self._wants_gzip(full.name, body):
            body = gzip.compress(body, compresslevel=1)
            self.set_header("Content-Encoding", "gzip")
        self.set_header("Vary", "Accept-Encoding")
        self.set_header("Content-Length", str(len(body)))
        if include_body:
            self.write(body)

    def _wants_gzip(self, name: str, body: bytes) -> bool:
        accepted = self.request.headers.get("Accept-Encoding", "")
        return ("gzip" in accepted and len(body) >= MIN_GZIP_BYTES
                and PurePosixPath(name).suffix not in PRECOMPRESSED_SUFFIXES)
