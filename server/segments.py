"""Supervoxel chunks and meshes for the viewers, and the membership they draw them with.

The browser holds the agglomeration as neuroglancer equivalences over supervoxel ids: an edit
changes only the viewer state's groups, so the chunks and meshes it has stay drawn and only the
changed segments change colour (a source URL that changed with every edit made neuroglancer
drop and reload the whole layer: blank panels for seconds after each merge). The served voxels
change only when a supervoxel is divided; their URL carries that generation.
"""

from __future__ import annotations

import collections
import gzip
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import tornado.web
from tornado.ioloop import IOLoop

from segmentation.membership import assign, lookup, rows_of
from segmentation.meshes import MeshEntry, StoredMeshes
from segmentation.volume import open_precomputed_scale
from server.access import refusal
from server.data import ByteRangeMixin, CorsMixin

log = logging.getLogger(__name__)
CHUNK_NAME = re.compile(r"^(\d+)-(\d+)_(\d+)-(\d+)_(\d+)-(\d+)$")
CACHE_BYTES = 256 << 20  # served chunks kept: their supervoxels and encoded bytes


class BadChunk(ValueError):
    """A chunk name that is not one of the served grid's chunks."""


@dataclass(frozen=True)
class Picture:
    """The membership as neuroglancer draws it: groups of two or more equivalent ids, and each
    segment's representative (neuroglancer names a group by its smallest id)."""

    groups: list[list[int]]
    representative: dict[int, int]


class MembershipView:
    """supervoxel -> segment as the viewers draw it, kept in step with every edit.

    A supervoxel divided at voxel level no longer appears at full resolution; the coarser
    scales still hold its id, which is drawn as part of the segment of one of its pieces."""

    def __init__(self, ids: np.ndarray, segments: np.ndarray):
        order = np.argsort(ids, kind="stable")
        self.ids = np.asarray(ids, np.uint64)[order]  # sorted; segment 0: not a supervoxel now
        self.segments = np.asarray(segments, np.uint64)[order]
        self.dtype = self._dtype_for(self.ids)
        self.edits = 0
        self.generation = 0  # of the served voxels: bumped when a supervoxel is divided
        self._divided: list[tuple[int, np.ndarray]] = []  # (generation, supervoxels)
        self._picture: Optional[tuple[int, Picture]] = None
        self._lock = threading.Lock()

    @staticmethod
    def _dtype_for(ids: np.ndarray) -> np.dtype:
        return np.dtype(np.uint32) if int(ids.max(initial=0)) < 2 ** 32 else np.dtype(np.uint64)

    def apply(self, delta: np.ndarray, retired: Optional[dict[int, int]] = None) -> int:
        """Record an edit's (supervoxel, old, new) rows (0: no such supervoxel before or
        after) and the successor of each retired supervoxel; returns the voxel generation."""
        retired = retired or {}
        with self._lock:
            ids, segments = assign(self.ids, self.segments, delta[:, 0], delta[:, 2])
            if retired:
                ids, segments = assign(ids, segments, list(retired), 0)
                for gone, successor in retired.items():  # in order: a successor may be retired
                    segments[rows_of(ids, [gone])[0]] = \
                        lookup(ids, segments, [successor])[0] if successor else 0
            self.ids, self.segments = ids, segments
            self.edits += 1
            structural = delta[(delta[:, 1] == 0) | (delta[:, 2] == 0), 0]
            if structural.size:
                self.generation += 1
                self._divided.append((self.generation, structural.copy()))
            if self.dtype != self._dtype_for(ids):
                self.dtype = np.dtype(np.uint64)
            return self.generation

    def map(self, supervoxels: np.ndarray) -> np.ndarray:
        """Segment of each supervoxel id (0: not a supervoxel)."""
        with self._lock:  # an edit may replace both arrays
            ids, segments = self.ids, self.segments
        return lookup(ids, segments, supervoxels)

    def divided_since(self, generation: int) -> np.ndarray:
        """Supervoxels divided or restored since that voxel generation."""
        with self._lock:
            parts = [svs for g, svs in self._divided if g > generation]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def picture(self) -> Picture:
        """The equivalence groups and representatives now (computed once per edit)."""
        with self._lock:
            if self._picture is not None and self._picture[0] == self.edits:
                return self._picture[1]
            edits, ids, segments = self.edits, self.ids, self.segments.copy()  # ids: replaced
        picture = _picture_of(ids, segments)
        with self._lock:
            if self.edits == edits:
                self._picture = (edits, picture)
        return picture

    def picture_with(self, delta: np.ndarray) -> Picture:
        """The picture an edit's (supervoxel, old, new) rows would make (a preview); rows of
        supervoxels it would create or retire are left out (their voxels are not served)."""
        with self._lock:
            ids, segments = self.ids, self.segments.copy()  # ids are replaced, never changed
        kept = delta[(delta[:, 1] != 0) & (delta[:, 2] != 0)]
        row = rows_of(ids, kept[:, 0])
        segments[row[row >= 0]] = kept[row >= 0, 2]
        return _picture_of(ids, segments)

    def shown_as(self, segment: int) -> int:
        """The id neuroglancer shows a segment by."""
        return self.picture().representative.get(int(segment), int(segment))

    def segment_of(self, shown: int) -> int:
        """The segment an id that neuroglancer shows (any member of it) stands for now."""
        shown = int(shown)
        return int(self.map(np.array([shown], np.uint64))[0]) if shown >= 0 else 0


def _picture_of(ids: np.ndarray, segments: np.ndarray) -> Picture:
    """Groups and representatives of a membership table (``ids`` ascending)."""
    live = segments != 0
    ids, segments = ids[live], segments[live]  # ascending, so each run starts at its smallest
    order = np.argsort(segments, kind="stable")
    ids, segments = ids[order], segments[order]
    starts = np.flatnonzero(np.r_[True, segments[1:] != segments[:-1]]) \
        if ids.size else np.zeros(0, np.int64)
    stops = np.r_[starts[1:], ids.size].astype(np.int64)
    groups = [ids[a:b].tolist() for a, b in zip(starts, stops) if b - a > 1]
    return Picture(groups, dict(zip(segments[starts].tolist(), ids[starts].tolist())))


Mesher = Callable[[int], Optional[tuple[bytes, bytes]]]  # supervoxel -> (manifest, data)


class SegmentSource:
    """Serves one supervoxel volume (precomputed, local). Full resolution is read through
    ``labels`` (the supervoxels with divisions applied); ``live`` says whether an id is a
    supervoxel now (a divided one is not: its mesh is its pieces'); ``mesher`` meshes a
    supervoxel that a division made, the first time its manifest is asked for.

    The pipeline's meshes are sharded; they are served unsharded (``mesh/<id>.index``, the
    manifest, and ``mesh/<id>``, its fragments, read by byte range) so that meshes of
    supervoxels a division made can be served beside them without rewriting a shard."""

    def __init__(self, volume_dir: Path, view: MembershipView,
                 live: Callable[[int], bool], labels=None,
                 mesher: Optional[Mesher] = None, cache_bytes: int = CACHE_BYTES):
        self.root = Path(volume_dir)
        self.view = view
        self.live = live
        self.labels = labels
        self.mesher = mesher
        self.info = json.loads((self.root / "info").read_text())
        self._scales = {s["key"]: i for i, s in enumerate(self.info["scales"])}
        self._stores: dict[int, object] = {}
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._capacity = cache_bytes
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._meshes = StoredMeshes(self.root) if StoredMeshes.present(self.root) else None
        if self._meshes is None and (self.root / "mesh").is_dir():
            log.warning("%s holds meshes in an older format, not shown in 3D: `promptcut "
                        "segment --if-needed` remakes them", self.root / "mesh")
        self._mesh_entries: dict[int, Optional[MeshEntry]] = {}
        self._asked: dict[int, float] = {}  # voxel generation -> when a chunk was last asked
        # chunks one may ask for: the served thin ones, and the stored volume's own
        self._grid = [(served["size"], served["chunk_sizes"] + stored["chunk_sizes"])
                      for served, stored in zip(self.served_info()["scales"],
                                                self.info["scales"])]

    def served_info(self) -> dict:
        info = json.loads(json.dumps(self.info))
        info["data_type"] = self.view.dtype.name
        for scale in info["scales"]:
            scale["encoding"] = "raw"
            scale.pop("compressed_segmentation_block_size", None)
            # thin chunks, one orientation per kind of panel: a 2D view refetching after an
            # edit then moves an eighth of the data a cube would need
            edge = max(scale["chunk_sizes"][0])
            thin = max(1, edge // 8)
            scale["chunk_sizes"] = [[edge, edge, thin], [edge, thin, edge], [thin, edge, edge]]
        if self._meshes is not None:
            info["mesh"] = "mesh"
        return info

    def mesh_info(self) -> Optional[dict]:
        return self._meshes.served_info() if self._meshes is not None else None

    def on_grid(self, index: int, bounds: tuple[int, ...]) -> bool:
        """Whether x0-x1, y0-y1, z0-z1 is one chunk of the grid at scale ``index`` (a served
        thin chunk in one of its three orientations, or a stored one): anything else would let a request read, and the
        cache keep, any box up to the whole volume."""
        size, shapes = self._grid[index]
        starts, stops = bounds[0::2], bounds[1::2]
        return any(all(lo % c == 0 and hi == min(lo + c, n) and lo < n
                       for lo, hi, c, n in zip(starts, stops, shape, size))
                   for shape in shapes)

    def chunk(self, scale_key: str, name: str) -> Optional[bytes]:
        """Raw little-endian chunk (x fastest) of supervoxel ids, or None if no such scale;
        BadChunk for a name that is not a chunk of the served grid."""
        index = self._scales.get(scale_key)
        if index is None:
            return None
        match = CHUNK_NAME.match(name)
        if match is None or not self.on_grid(index, tuple(int(v) for v in match.groups())):
            raise BadChunk(f"{name!r} is not a chunk of scale {scale_key} (x0-x1_y0-y1_z0-z1 "
                           f"on the grid of its info file)")
        x0, x1, y0, y1, z0, z1 = (int(v) for v in match.groups())
        key = (index, name)
        generation, dtype = self.view.generation, self.view.dtype
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None:
            present, encoded, at, at_dtype = cached
            if at_dtype == dtype and (at == generation or index != 0 or not np.isin(
                    self.view.divided_since(at), present).any()):
                return encoded  # coarser scales keep divided supervoxels' old ids
        region = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        supervoxels = self.labels.read(*region) if index == 0 and self.labels is not None \
            else self._store(index)[region].read().result()
        encoded = np.ascontiguousarray(supervoxels.astype(dtype)).tobytes()
        entry = (np.unique(supervoxels), encoded, generation, dtype)
        with self._lock:
            previous = self._cache.pop(key, None)
            if previous is not None:
                self._cached_bytes -= _nbytes(previous)
            self._cache[key] = entry
            self._cached_bytes += _nbytes(entry)
            while self._cached_bytes > self._capacity and len(self._cache) > 1:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= _nbytes(dropped)
        return encoded

    def note_asked(self, generation: int) -> None:
        """A viewer asked for a chunk of this voxel generation (the URL's)."""
        self._asked[generation] = time.monotonic()

    def last_asked(self, generation: int) -> Optional[float]:
        """When a viewer last asked for a chunk of this voxel generation (None: never): a
        browser that has stopped asking has what it needs to draw it."""
        return self._asked.get(generation)

    def mesh(self, supervoxel: int) -> Optional[MeshEntry]:
        """A supervoxel's mesh: the pipeline's, or made now for one a division made; None for
        an id that is no supervoxel now (a divided one's mesh is its pieces')."""
        supervoxel = int(supervoxel)
        if self._meshes is None or not self.live(supervoxel):
            return None
        with self._lock:
            if supervoxel in self._mesh_entries:
                return self._mesh_entries[supervoxel]
        found = self._meshes.find(supervoxel)
        if found is None and self.mesher is not None:
            made = self.mesher(supervoxel)
            found = MeshEntry.in_memory(*made) if made is not None else None
        with self._lock:
            self._mesh_entries[supervoxel] = found
        return found

    def _store(self, index: int):
        if index not in self._stores:
            self._stores[index] = open_precomputed_scale(self.root, index)
        return self._stores[index]


def _nbytes(entry: tuple) -> int:
    present, encoded, _, _ = entry
    return present.nbytes + len(encoded)


class SegmentChunkHandler(CorsMixin, ByteRangeMixin, tornado.web.RequestHandler):
    """GET /segments/g<generation>/<path>: info, chunks, mesh info, manifests, fragments."""

    def initialize(self, source: SegmentSource) -> None:
        self.source = source

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "text/plain")
        self.finish(f"{status_code}: {refusal(self, kwargs)}\n")

    async def _send_range(self, mesh: MeshEntry) -> None:
        """A mesh's fragment data: the byte range asked for (206), or all of it."""
        self.set_header("Content-Type", "application/octet-stream")
        to_send = self.range_to_send(mesh.size)
        if to_send is None:
            return
        start, stop, partial = to_send
        body = await IOLoop.current().run_in_executor(None, mesh.read, start, stop)
        if partial:
            self.mark_partial(start, stop, mesh.size)
        self.write(body)

    async def get(self, generation: str, path: str) -> None:
        source = self.source
        parts = path.split("/")
        body: Optional[bytes]
        kind = "application/octet-stream"
        if path == "info":
            body, kind = json.dumps(source.served_info()).encode(), "application/json"
        elif path == "mesh/info":
            info = source.mesh_info()
            body = json.dumps(info).encode() if info is not None else None
            kind = "application/json"
        elif len(parts) == 2 and parts[0] == "mesh":
            name = parts[1].removesuffix(".index")
            if not name.isdigit():
                raise tornado.web.HTTPError(404)
            mesh = await IOLoop.current().run_in_executor(None, source.mesh, int(name))
            if mesh is None:
                raise tornado.web.HTTPError(404)
            if parts[1].endswith(".index"):
                body = mesh.manifest
            else:  # fragments, read by byte range
                await self._send_range(mesh)
                return
        elif len(parts) == 2:
            source.note_asked(int(generation))
            try:
                body = await IOLoop.current().run_in_executor(None, source.chunk, parts[0],
                                                              parts[1])
            except BadChunk as exc:
                raise tornado.web.HTTPError(400, str(exc)) from None
        else:
            body = None
        if body is None:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", kind)
        self.set_header("Cache-Control", "no-cache")
        if "gzip" in self.request.headers.get("Accept-Encoding", "") and len(body) > 256:
            body = gzip.compress(body, compresslevel=1)
            self.set_header("Content-Encoding", "gzip")
        self.set_header("Vary", "Accept-Encoding")
        self.write(body)
