"""Start-up: the tornado application, the neuroglancer viewer and the running session object.

Two HTTP servers run in one process: neuroglancer's own (its client and state sync, on its
IOLoop thread) and promptcut's (data, landing page and API, on a second IOLoop thread).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
import time
import webbrowser
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import neuroglancer
import numpy as np
import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.ioloop import IOLoop

from promptcut.config import Config
from segmentation.errors import InputError
from segmentation.export import export_segmentation
from segmentation.meshes import mesh_block
from segmentation.proofread import open_session
from segmentation.session import OperationResult, ProofreadingSession
from segmentation.project import Project
from segmentation.stats import VoxelCounts
from server import viewer as ngview
from server.actions import Action, ActionRouter
from server.api import InfoHandler, ReportsHandler, SegmentInfoHandler, ViewerHandler
from server.data import DataHandler
from server.model_worker import ModelWorker
from server.proofreading import PROMPT_LAYER, Proofreading, prompt_layer
from server.segments import MembershipView, SegmentChunkHandler, SegmentSource

log = logging.getLogger(__name__)
STATIC_DIR = ngview.STATIC_DIR
MOUNTS = {"image": ngview.IMAGE_LAYER, "segmentation": ngview.SEGMENTATION_LAYER}
PROTOCOL = {"precomputed": "precomputed", "zarr": "zarr2", "n5": "n5"}


@dataclass
class SegmentDescription:
    segment: int
    supervoxel: int
    voxels: int
    supervoxels: int
    voxel: tuple[int, int, int]  # z, y, x

    def message(self) -> str:
        z, y, x = self.voxel
        return (f"segment {self.segment}: {self.voxels:,} voxels, {self.supervoxels} supervoxel"
                f"{'s' if self.supervoxels != 1 else ''} (at z {z}, y {y}, x {x})")


class ServerSession:
    """Everything a running server holds: the one piece of state beyond the request handlers."""

    def __init__(self, config: Config, project: Project):
        self.config = config
        self.project = project
        self.viewers: dict[str, neuroglancer.Viewer] = {}
        self.routers: dict[str, ActionRouter] = {}
        self.users: dict[str, Proofreading] = {}
        self.loop: Optional[IOLoop] = None
        self.port: Optional[int] = None
        self._http: Optional[tornado.httpserver.HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptcut-bg")
        self._sizes: Optional[Future] = None
        self._initial_view: tuple = ()
        self._users_lock = threading.Lock()
        self.proofreading: Optional[ProofreadingSession] = None
        self.membership_view: Optional[MembershipView] = None
        self.segment_source: Optional[SegmentSource] = None
        self.models: Optional[ModelWorker] = None
        if (project.root / "rag.npz").is_file() and project.has("segmentation"):
            self._open_proofreading()

    def _open_proofreading(self) -> None:
        """The live graph and membership: the agglomeration, then every logged edit."""
        self.proofreading = session = open_session(self.project)
        volume = self.project.volume("segmentation")
        self.membership_view = MembershipView(*session.membership())
        self.membership_view.apply(np.zeros((0, 3), np.uint64), session.successors())
        self.models = ModelWorker(self.config, self.project.volume("image"),
                                  session.supervoxels, self._model_status)
        self.segment_source = SegmentSource(Path(volume.location), self.membership_view,
                                            self.proofreading.members_of, session.supervoxels,
                                            self._mesh_supervoxel)

    def _mesh_supervoxel(self, supervoxel: int) -> list[str]:
        """Mesh a supervoxel that a division made (the pipeline meshed all the others)."""
        session = self.proofreading
        row = int(session.graph.node_index([supervoxel])[0])
        if row < 0:
            return []
        labels = session.supervoxels
        box = session.graph.bbox[row]
        region = tuple(slice(int(lo), min(int(hi) + 1, n))
                       for lo, hi, n in zip(box[:3], box[3:], labels.shape))
        block = labels.read(*region)
        block[block != np.uint64(supervoxel)] = 0
        folder = Path(self.project.volume("segmentation").location) / "mesh"
        written = mesh_block(block, [s.start for s in region], labels.voxel_size, folder,
                             "divided", self.config.segment.mesh_reduction)
        return written.get(supervoxel, [])

    @property
    def default_user(self) -> str:
        return "proofreader"

    @property
    def viewer(self) -> Optional[neuroglancer.Viewer]:
        return self.viewers.get(self.default_user)

    @property
    def router(self) -> Optional[ActionRouter]:
        return self.routers.get(self.default_user)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        server = self.config.server
        sockets = bind(server.host, server.port, "server.port")
        self.port = sockets[0].getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(sockets, ready),
                                        name="promptcut-http", daemon=True)
        self._thread.start()
        ready.wait()
        if self.project.has("segmentation") and self.proofreading is None:
            self._sizes = self._background.submit(self.project.supervoxel_sizes)
        neuroglancer.set_server_bind_address(server.host, server.viewer_port)
        ngview.use_key_relay()
        self.viewer_for(self.default_user)

    def _serve(self, sockets: list[socket.socket], ready: threading.Event) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.loop = IOLoop.current()
        self._http = tornado.httpserver.HTTPServer(make_app(self))
        self._http.add_sockets(sockets)
        ready.set()
        self.loop.start()

    def viewer_for(self, user: str) -> neuroglancer.Viewer:
        """Each proofreader gets a viewer of their own: their own URL, prompts and undo."""
        if not user or len(user) > 64 or not all(c.isalnum() or c in "-_." for c in user):
            raise InputError("a user name is 1 to 64 letters, digits, '-', '_' or '.'")
        with self._users_lock:
            if user in self.viewers:
                return self.viewers[user]
            try:
                viewer = ngview.Viewer()
            except OSError as exc:
                server = self.config.server
                raise _port_error(exc, server.host, server.viewer_port,
                                  "server.viewer_port") from None
            if not self._initial_view:
                self._initial_view = self._view_settings()
            ngview.configure(viewer, *self._initial_view)
            router = ActionRouter(viewer)
            actions = [Action("promptcut-info", "keyi", "show the segment under the mouse",
                              lambda pointer: self.describe_segment(
                                  self.require_voxel(pointer)).message())]
            if self.proofreading is not None:
                self.users[user] = Proofreading(self, user)
                actions += self.users[user].actions()
                with viewer.txn() as state:
                    state.layers[PROMPT_LAYER] = prompt_layer(state.dimensions)
            for action in actions:
                router.register(action)
            self.viewers[user], self.routers[user] = viewer, router
            return viewer

    def _view_settings(self) -> tuple:
        volumes = {kind: self.project.volume(kind) for kind in MOUNTS if self.project.has(kind)}
        sources = {MOUNTS[kind]: self.source_url(kind) for kind in volumes}
        camera = ngview.default_camera(volumes["image"].shape, self.config.viewer.layout,
                                       self.config.viewer.position,
                                       self.config.viewer.cross_section_scale)
        return (volumes["image"].voxel_size, sources, camera,
                self.config.viewer.show_layer_panel, self._segments_at(camera.position))

    def reset_view(self) -> None:
        """Layers, camera and layout of every viewer back to how the session started."""
        settings = list(self._initial_view)
        if self.proofreading is not None:
            settings[1] = {**settings[1], ngview.SEGMENTATION_LAYER: self.source_url(
                "segmentation")}
        for viewer in self.viewers.values():
            ngview.configure(viewer, *settings)

    def stop(self) -> None:
        # neuroglancer's own server is process-wide and may serve other viewers: it stays up.
        for router in self.routers.values():
            router.close()
        if self.loop is not None:
            self.loop.add_callback(self._shutdown)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._background.shutdown(wait=False, cancel_futures=True)
        if self.proofreading is not None:
            self.proofreading.log.close()
        if self.models is not None:
            self.models.close()

    def _shutdown(self) -> None:
        if self._http is not None:
            self._http.stop()
        IOLoop.current().stop()

    # -- addresses ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self.config.server.public_url:
            return self.config.server.public_url.rstrip("/")
        host = self.config.server.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        return f"http://{host}:{self.port}"

    @property
    def viewer_url(self) -> str:
        return self.viewer.get_viewer_url() if self.viewer else ""

    def source_url(self, kind: str) -> str:
        """The neuroglancer data source of a volume: served by us when local, else its URL.
        With a live membership, the segmentation comes with it applied, by generation."""
        if kind == "segmentation" and self.membership_view is not None:
            return f"precomputed://{self.base_url}/segments/g{self.membership_view.generation}"
        volume = self.project.volume(kind)
        protocol = PROTOCOL[volume.format]
        if volume.is_local:
            return f"{protocol}://{self.base_url}/data/{kind}"
        return f"{protocol}://{volume.location}"

    def mounts(self) -> dict[str, Path]:
        volumes = [self.project.volume(kind) for kind in MOUNTS if self.project.has(kind)]
        return {v.kind: Path(v.location) for v in volumes if v.is_local}

    # -- what the keys and the API do ------------------------------------------------------------
    @staticmethod
    def require_voxel(pointer: ngview.Pointer) -> tuple[int, int, int]:
        if pointer.voxel is None:
            raise InputError("move the mouse over the volume first")
        return pointer.voxel

    def segment_of(self, supervoxel: int) -> int:
        return self.proofreading.segment_of(supervoxel) if self.proofreading else supervoxel

    def supervoxel_at(self, zyx: Sequence[int]) -> int:
        """The supervoxel at a voxel, divisions included (0: background)."""
        if self.proofreading is not None:
            return int(self.proofreading.locate(zyx))
        return int(self.project.volume("segmentation").value_at(zyx))

    def _segments_at(self, zyx: Sequence[float]) -> list[int]:
        """The segment at a voxel, to show in 3D from the start (none on background)."""
        if not self.project.has("segmentation"):
            return []
        supervoxel = self.supervoxel_at([int(v) for v in zyx])
        return [self.segment_of(supervoxel)] if supervoxel else []

    def describe_segment(self, zyx: Sequence[int]) -> SegmentDescription:
        if not self.project.has("segmentation"):
            raise InputError("this project has no segmentation")
        zyx = tuple(int(v) for v in zyx)
        supervoxel = self.supervoxel_at(zyx)
        if supervoxel == 0:
            raise InputError(f"no segment at z {zyx[0]}, y {zyx[1]}, x {zyx[2]} (background)")
        if self.proofreading is not None:
            session = self.proofreading
            segment = session.segment_of(supervoxel)
            members = session.members_of(segment)
            voxels = int(session.graph.size[session.graph.node_index(members)].sum())
            return SegmentDescription(segment, supervoxel, voxels, len(members), zyx)
        if self._sizes is None:
            self._sizes = self._background.submit(self.project.supervoxel_sizes)
        sizes: VoxelCounts = self._sizes.result()
        return SegmentDescription(supervoxel, supervoxel, sizes.count(supervoxel), 1, zyx)

    def prompt_cut(self, user: str, positives, negatives) -> OperationResult:
        """The prompt cut, weighted by a SAM2 mask when a checkpoint is configured, on edge
        weights that FGNet re-predicted around the click when it is. The segments involved are
        held for the user while the models work."""
        session = self.proofreading
        held = sorted({session.segment_of(session.supervoxel_at(p, "positive point"))
                       for p in positives})
        with session.reserve(held, user):
            evidence = self.models.prompt_evidence(positives, negatives)
            if evidence.edges is not None:
                session.reweight(evidence.edges.pairs, evidence.edges.faces,
                                 evidence.edges.affinity)
            result = session.prompt_cut(user, positives, negatives, evidence.mask)
        result.message = f"{result.message} (from {evidence.used})"
        return result

    def _model_status(self, message: Optional[str]) -> None:
        for viewer in list(self.viewers.values()):
            ngview.show_status(viewer, "promptcut-model", message)

    def after_edit(self, result: OperationResult) -> None:
        """Tell every viewer: a new generation of the segmentation, and which segments to show
        in place of the ones the edit removed."""
        self.membership_view.apply(result.delta, result.retired)
        url = self.source_url("segmentation")
        for user, viewer in list(self.viewers.items()):
            with viewer.txn() as s:
                if user in self.users:  # kept prompt points change with cuts and undo
                    self.users[user].draw_prompts(s)
                layer = s.layers[ngview.SEGMENTATION_LAYER]
                layer.source = url
                shown = {int(v) for v in layer.segments}
                if shown & set(result.removed + result.segments) or not shown:
                    shown = (shown - set(result.removed)) | set(result.segments[:1])
                layer.segments = shown

    def export(self, output: Optional[Path] = None) -> Path:
        if self.proofreading is None:
            raise InputError("nothing to export: this project has no proofreading session")
        session = self.proofreading
        folder = output or self.project.root / "exports" / time.strftime("%Y%m%d-%H%M%S")
        ids, segments = session.membership()
        return export_segmentation(session.supervoxels, ids, segments, session.log, folder)

    def info(self) -> dict:
        image = self.project.volume("image")
        return {
            "name": self.config.name,
            "dataset": self.config.dataset.name,
            "credits": self.config.dataset.credits,
            "viewer_url": self.viewer_url,
            "shape_zyx": list(image.shape),
            "voxel_size_nm_zyx": list(image.voxel_size),
            "layers": {MOUNTS[k]: self.source_url(k) for k in MOUNTS if self.project.has(k)},
            "keys": self.router.key_reference() if self.router else [],
            "proofreading": self.proofreading is not None,
            "models": self.models.description if self.models else "none",
            "users": sorted(self.viewers),
        }


def make_app(session: ServerSession) -> tornado.web.Application:
    api = {"session": session}
    live = [(r"/segments/g(\d+)/(.*)", SegmentChunkHandler, {"source": session.segment_source})
            ] if session.segment_source is not None else []
    return tornado.web.Application(live + [
        (r"/data/([^/]+)/(.*)", DataHandler, {"mounts": session.mounts()}),
        (r"/api/info", InfoHandler, api),
        (r"/api/segment", SegmentInfoHandler, api),
        (r"/api/reports", ReportsHandler, api),
        (r"/api/viewer", ViewerHandler, api),
        (r"/static/(.*)", tornado.web.StaticFileHandler, {"path": str(STATIC_DIR)}),
        (r"/()", tornado.web.StaticFileHandler,
         {"path": str(STATIC_DIR), "default_filename": "index.html"}),
    ], log_function=_log_request)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Only server errors: neuroglancer probes for optional files, and 404 is its answer."""
    if handler.get_status() >= 500:
        log.error("%d %s", handler.get_status(), handler.request.uri)


def bind(host: str, port: int, key: str) -> list[socket.socket]:
    try:
        return tornado.netutil.bind_sockets(port, address=host)
    except OSError as exc:
        raise _port_error(exc, host, port, key) from None


def _port_error(exc: OSError, host: str, port: int, key: str) -> InputError:
    if exc.errno == errno.EADDRINUSE:
        return InputError(f"port {port} on {host} is already in use; choose another with "
                          f"{key} (or --port)")
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return InputError(f"cannot bind to {host}: no such address on this machine "
                          f"(check server.host)")
    return InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def run_server(config: Config, open_browser: bool = False) -> None:
    """Import what the config needs, start both servers, and serve until Ctrl-C."""
    from promptcut.setup_project import prepare_project

    project = prepare_project(config)
    session = ServerSession(config, project)
    session.start()
    print(f"promptcut: {config.name} ({config.dataset.name})")
    print(f"  viewer:       {session.viewer_url}")
    print(f"  landing page: {session.base_url}/")
    print("  press Ctrl-C to stop", flush=True)
    if open_browser:
        webbrowser.open(session.viewer_url)
    stop = threading.Event()
    try:
        while not stop.wait(3600):
            pass
    finally:
        session.stop()
