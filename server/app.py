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
import webbrowser
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import neuroglancer
import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.ioloop import IOLoop

from promptcut.config import Config
from segmentation.errors import InputError
from segmentation.membership import Membership
from segmentation.pipeline import Segments
from segmentation.project import Project
from segmentation.stats import VoxelCounts
from server import viewer as ngview
from server.actions import Action, ActionRouter
from server.api import InfoHandler, ReportsHandler, SegmentHandler
from server.data import DataHandler

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
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
        self.viewer: Optional[neuroglancer.Viewer] = None
        self.router: Optional[ActionRouter] = None
        self.loop: Optional[IOLoop] = None
        self.port: Optional[int] = None
        self._http: Optional[tornado.httpserver.HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptcut-bg")
        self._sizes: Optional[Future] = None
        self._initial_view: tuple = ()
        self.membership = self._load_membership()

    def _load_membership(self) -> Membership:
        """The agglomeration at its default threshold, or every supervoxel on its own."""
        segments = Segments.load(self.project.root / "segments.npz")
        if segments is None:
            return Membership.identity(np.zeros(0, np.uint64))
        return Membership(segments.ids, segments.at())

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
        if self.project.has("segmentation"):
            self._sizes = self._background.submit(self.project.supervoxel_sizes)
        self.viewer = self._make_viewer()

    def _serve(self, sockets: list[socket.socket], ready: threading.Event) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.loop = IOLoop.current()
        self._http = tornado.httpserver.HTTPServer(make_app(self))
        self._http.add_sockets(sockets)
        ready.set()
        self.loop.start()

    def _make_viewer(self) -> neuroglancer.Viewer:
        server = self.config.server
        neuroglancer.set_server_bind_address(server.host, server.viewer_port)
        try:
            viewer = neuroglancer.Viewer()
        except OSError as exc:
            raise _port_error(exc, server.host, server.viewer_port, "server.viewer_port") from None
        volumes = {kind: self.project.volume(kind) for kind in MOUNTS if self.project.has(kind)}
        shape = volumes["image"].shape
        sources = {MOUNTS[kind]: self.source_url(kind) for kind in volumes}
        camera = ngview.default_camera(shape, self.config.viewer.layout,
                                       self.config.viewer.position,
                                       self.config.viewer.cross_section_scale)
        self._initial_view = (volumes["image"].voxel_size, sources, camera,
                              self.config.viewer.show_layer_panel,
                              [list(map(int, g)) for g in self.membership.groups()],
                              self._segments_at(camera.position))
        ngview.configure(viewer, *self._initial_view)
        self.router = ActionRouter(viewer)
        for action in self.actions():
            self.router.register(action)
        return viewer

    def reset_view(self) -> None:
        """Layers, camera and layout back to how the session started."""
        ngview.configure(self.viewer, *self._initial_view)

    def stop(self) -> None:
        # neuroglancer's own server is process-wide and may serve other viewers: it stays up.
        if self.router:
            self.router.close()
        if self.loop is not None:
            self.loop.add_callback(self._shutdown)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._background.shutdown(wait=False, cancel_futures=True)

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
        """The neuroglancer data source of a volume: served by us when local, else its URL."""
        volume = self.project.volume(kind)
        protocol = PROTOCOL[volume.format]
        if volume.is_local:
            return f"{protocol}://{self.base_url}/data/{kind}"
        return f"{protocol}://{volume.location}"

    def mounts(self) -> dict[str, Path]:
        volumes = [self.project.volume(kind) for kind in MOUNTS if self.project.has(kind)]
        return {v.kind: Path(v.location) for v in volumes if v.is_local}

    # -- what the keys and the API do ------------------------------------------------------------
    def actions(self) -> list[Action]:
        return [Action("promptcut-info", "keyi", "show the segment under the mouse",
                       lambda pointer: self.describe_segment(_require_voxel(pointer)).message())]

    def _segments_at(self, zyx: Sequence[float]) -> list[int]:
        """The segment at a voxel, to show in 3D from the start (none on background)."""
        if not self.project.has("segmentation"):
            return []
        supervoxel = int(self.project.volume("segmentation").value_at([int(v) for v in zyx]))
        return [self.membership.segment_of(supervoxel)] if supervoxel else []

    def describe_segment(self, zyx: Sequence[int]) -> SegmentDescription:
        if not self.project.has("segmentation"):
            raise InputError("this project has no segmentation")
        zyx = tuple(int(v) for v in zyx)
        supervoxel = int(self.project.volume("segmentation").value_at(zyx))
        if supervoxel == 0:
            raise InputError(f"no segment at z {zyx[0]}, y {zyx[1]}, x {zyx[2]} (background)")
        if self._sizes is None:
            self._sizes = self._background.submit(self.project.supervoxel_sizes)
        sizes: VoxelCounts = self._sizes.result()
        segment = self.membership.segment_of(supervoxel)
        members = self.membership.members(segment)
        voxels = sum(sizes.count(int(m)) for m in members)
        return SegmentDescription(segment, supervoxel, voxels, len(members), zyx)

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
        }


def _require_voxel(pointer: ngview.Pointer) -> tuple[int, int, int]:
    if pointer.voxel is None:
        raise InputError("move the mouse over the volume first")
    return pointer.voxel


def make_app(session: ServerSession) -> tornado.web.Application:
    api = {"session": session}
    return tornado.web.Application([
        (r"/data/([^/]+)/(.*)", DataHandler, {"mounts": session.mounts()}),
        (r"/api/info", InfoHandler, api),
        (r"/api/segment", SegmentHandler, api),
        (r"/api/reports", ReportsHandler, api),
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
