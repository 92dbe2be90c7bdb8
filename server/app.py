"""The running server: the tornado application, the neuroglancer viewers and the edit service.

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

import neuroglancer
import numpy as np
import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.ioloop import IOLoop

from segmentation import edge_classifier
from segmentation.errors import InputError
from segmentation.focus import FocusQueue
from segmentation.meshes import mesh_labels, single_mesh_entry
from segmentation.proofread import open_session
from segmentation.session import OperationResult, ProofreadingSession
from segmentation.project import Project
from segmentation.rag import Rag
from segmentation.stats import VoxelCounts
from server import viewer as ngview
from server.access import MAX_BODY, Access, answer_only_own_names
from server.actions import Action, ActionRouter
from server.api import DEFAULT_USER, USER_HELP, ApiContext, routes, valid_user, xyz
from server.data import DataHandler
from server.edit_service import EditService, SegmentDescription
from server.model_worker import ModelWorker
from server.proofreading import PROMPT_LAYER, Proofreading, prompt_layer
from server.segments import MembershipView, SegmentChunkHandler, SegmentSource
from server.settings import ServeSettings

log = logging.getLogger(__name__)
STATIC_DIR = ngview.STATIC_DIR
OTHERS_STATUS = "promptcut-others"  # the last edit another proofreader made
VOXELS_QUIET = 1.0  # s without a chunk request: the browser has the new voxels
VOXELS_LOAD_LIMIT = 10.0  # s: swap anyway
MOUNTS = {"image": ngview.IMAGE_LAYER, "segmentation": ngview.SEGMENTATION_LAYER}
PROTOCOL = {"precomputed": "precomputed", "zarr": "zarr2", "n5": "n5"}


class ServerSession:
    """Everything a running server holds: the one piece of state beyond the request handlers."""

    def __init__(self, settings: ServeSettings, project: Project,
                 access: Optional[Access] = None):
        self.settings = settings
        self.project = project
        self.access = access or access_for(settings)
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
        self._redraw_lock = threading.Lock()  # redraws one at a time, each of the latest picture
        self.proofreading: Optional[ProofreadingSession] = None
        self.service: Optional[EditService] = None
        self.membership_view: Optional[MembershipView] = None
        self.segment_source: Optional[SegmentSource] = None
        self.models: Optional[ModelWorker] = None
        if (project.root / "rag.npz").is_file() and project.has("segmentation"):
            self._open_proofreading()

    def _open_proofreading(self) -> None:
        """The live graph and membership: the agglomeration, then every logged edit."""
        self.proofreading = session = open_session(
            self.project, synchronous=self.settings.server.log_synchronous)
        volume = self.project.volume("segmentation")
        self.membership_view = MembershipView(*session.membership())
        self.membership_view.apply(np.zeros((0, 3), np.uint64), session.successors())
        self.models = ModelWorker(self.settings.models, self.settings.model_files,
                                  self.project.volume("image"), session.supervoxels,
                                  self._model_status)
        self.service = EditService(session, self.models, self.membership_view,
                                   self.project.root / "exports", self._questions(session),
                                   image=self.project.volume("image"))
        self.service.subscribe(self._redraw)
        self.segment_source = SegmentSource(
            Path(volume.location), self.membership_view,
            lambda sv: bool(session.segments_of(np.array([sv], np.uint64))[0]),
            session.supervoxels, self._mesh_supervoxel)

    def _questions(self, session: ProofreadingSession) -> Optional[Callable[[], FocusQueue]]:
        """What builds focused proofreading's queue: ranked by the configured edge
        classifier on the graph with its edge histograms (None without a classifier)."""
        path = self.settings.model_files.edge_classifier
        if path is None:
            return None
        return lambda: FocusQueue(Rag.load(self.project.root / "rag.npz"), session,
                                  edge_classifier.load(path))

    def _mesh_supervoxel(self, supervoxel: int) -> Optional[tuple[bytes, bytes]]:
        """Mesh a supervoxel that a division made (the pipeline meshed all the others), kept
        in memory: it is remade the next time a server starts."""
        session = self.proofreading
        row = int(session.graph.node_index([supervoxel])[0])
        if row < 0:
            return None
        labels = session.supervoxels
        box = session.graph.bbox[row]
        region = tuple(slice(int(lo), min(int(hi) + 1, n))
                       for lo, hi, n in zip(box[:3], box[3:], labels.shape))
        block = labels.read(*region)
        block[block != np.uint64(supervoxel)] = 0
        # a border of background all round: the surface closes where the box cuts it
        mesh = mesh_labels(np.pad(block, 1), [s.start - 1 for s in region],
                           labels.voxel_size).get(supervoxel)
        return single_mesh_entry(supervoxel, mesh, labels.voxel_size) if mesh else None

    @property
    def default_user(self) -> str:
        return DEFAULT_USER

    @property
    def viewer(self) -> Optional[neuroglancer.Viewer]:
        return self.viewers.get(self.default_user)

    @property
    def router(self) -> Optional[ActionRouter]:
        return self.routers.get(self.default_user)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        server = self.settings.server
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
        ngview.use_page_scripts(lambda: self.router.key_reference() if self.router else [])
        self.viewer_for(self.default_user)
        ngview.guard_neuroglancer(MAX_BODY * 16,  # state sync and actions: small JSON
                                  lambda app: answer_only_own_names(app, self.access))

    def _serve(self, sockets: list[socket.socket], ready: threading.Event) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.loop = IOLoop.current()
        self._http = tornado.httpserver.HTTPServer(make_app(self), max_body_size=MAX_BODY)
        self._http.add_sockets(sockets)
        ready.set()
        self.loop.start()

    def viewer_for(self, user: str) -> neuroglancer.Viewer:
        """Each proofreader gets a viewer of their own: their own URL, prompts and undo."""
        if not valid_user(user):
            raise InputError(USER_HELP)
        with self._users_lock:
            if user in self.viewers:
                return self.viewers[user]
            try:
                viewer = ngview.Viewer(token=self.access.viewer_token(user))
            except OSError as exc:
                server = self.settings.server
                raise _port_error(exc, server.host, server.viewer_port,
                                  "server.viewer_port") from None
            if not self._initial_view:
                self._initial_view = self._view_settings()
            ngview.configure(viewer, *self._initial_view)
            self._show_initial_segments(viewer)
            router = ActionRouter(viewer)
            actions = [Action("promptcut-info", "keyi", "show the segment under the mouse",
                              lambda pointer: self.describe_segment(
                                  ngview.require_voxel(pointer)).message())]
            if self.service is not None:
                self.users[user] = Proofreading(self.service, user, viewer,
                                                router.key_reference,
                                                self.settings.viewer.merge_timeout)
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
        view = self.settings.viewer
        camera = ngview.default_camera(volumes["image"].shape, view.layout, view.position,
                                       view.cross_section_scale)
        visible = [] if self.proofreading is not None else self._segments_at(camera.position)
        return (volumes["image"].voxel_size, sources, camera, view.show_layer_panel, visible)

    def _show_initial_segments(self, viewer: neuroglancer.Viewer) -> None:
        """The membership, and the segment at the start position in 3D (a proofread project;
        without one the layer shows the supervoxels as they are)."""
        if self.membership_view is None:
            return
        picture = self.membership_view.picture()
        segments = self._segments_at(self._initial_view[2].position)
        with viewer.txn() as s:
            ngview.draw_membership(s, picture.groups,
                                   {picture.representative.get(v, v) for v in segments})

    def reset_view(self) -> None:
        """Layers, camera and layout of every viewer back to how the session started."""
        settings = list(self._initial_view)
        if self.proofreading is not None:
            settings[1] = {**settings[1], ngview.SEGMENTATION_LAYER: self.source_url(
                "segmentation")}
        for viewer in self.viewers.values():
            ngview.configure(viewer, *settings)
            self._show_initial_segments(viewer)

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
        if self.settings.server.public_url:
            return self.settings.server.public_url.rstrip("/")
        host = self.settings.server.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        return f"http://{host}:{self.port}"

    @property
    def viewer_url(self) -> str:
        return self.viewer.get_viewer_url() if self.viewer else ""

    @property
    def landing_url(self) -> str:
        """The landing page, with the token in the fragment (never sent to a server)."""
        return f"{self.base_url}/#token={self.access.token}"

    def source_url(self, kind: str) -> str:
        """The neuroglancer data source of a volume: served by us when local, else its URL.
        A proofread segmentation's supervoxels come from us, named by the generation of their
        voxels (which changes only when a supervoxel is divided)."""
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
    def _segment_at(self, zyx: Sequence[float]) -> int:
        """The segment at a voxel (0: background): the edit service's when the project is
        proofread, else the supervoxel itself."""
        zyx = [int(v) for v in zyx]
        if self.service is not None:
            supervoxel = self.service.supervoxel_at(zyx)
            return self.service.segment_of(supervoxel) if supervoxel else 0
        return int(self.project.volume("segmentation").value_at(zyx))

    def _segments_at(self, zyx: Sequence[float]) -> list[int]:
        """The segment at a voxel, to show in 3D from the start (none on background)."""
        if not self.project.has("segmentation"):
            return []
        segment = self._segment_at(zyx)
        return [segment] if segment else []

    def describe_segment(self, zyx: Sequence[int]) -> SegmentDescription:
        if not self.project.has("segmentation"):
            raise InputError("this project has no segmentation")
        if self.service is not None:
            return self.service.describe(zyx)
        zyx = tuple(int(v) for v in zyx)
        supervoxel = self._segment_at(zyx)  # without a graph, supervoxels are the segments
        if supervoxel == 0:
            raise InputError(f"no segment at z {zyx[0]}, y {zyx[1]}, x {zyx[2]} (background)")
        if self._sizes is None:
            self._sizes = self._background.submit(self.project.supervoxel_sizes)
        sizes: VoxelCounts = self._sizes.result()
        return SegmentDescription(supervoxel, supervoxel, sizes.count(supervoxel), 1, zyx)

    def show_segment(self, user: str, segment: int) -> dict:
        """Centre a proofreader's viewer on a voxel of the segment (in its largest supervoxel)
        and show it in 3D; where it went, x, y, z."""
        session = self.proofreading
        members = session.members_of(segment)
        graph = session.graph
        rows = graph.node_index(members)
        row = int(rows[np.argmax(graph.size[rows])])
        supervoxel = int(graph.ids[row])
        box = graph.bbox[row]
        z = int((box[0] + box[3]) // 2)
        section = session.supervoxels.read(slice(z, z + 1), slice(int(box[1]), int(box[4]) + 1),
                                           slice(int(box[2]), int(box[5]) + 1))[0]
        inside = np.argwhere(section == supervoxel)
        if not len(inside):  # not on its middle section: its first voxel in z order
            z = int(box[0])
            section = session.supervoxels.read(
                slice(z, z + 1), slice(int(box[1]), int(box[4]) + 1),
                slice(int(box[2]), int(box[5]) + 1))[0]
            inside = np.argwhere(section == supervoxel)
        y, x = (int(v) for v in inside[len(inside) // 2])
        voxel = (z, y + int(box[1]), x + int(box[2]))
        viewer = self.viewer_for(user)
        shown = self.membership_view.shown_as(segment)
        with viewer.txn() as s:
            s.position = [v + 0.5 for v in ngview.to_viewer(voxel)]
            layer = ngview.segmentation_layer(s)
            if layer is not None:
                layer.segments = {shown}
        return {"segment": int(segment), "voxel": xyz(voxel)}

    def show_question(self, user: str, ask) -> None:
        """A focused-proofreading question in the user's viewer, if they have one."""
        proofreading = self.users.get(user)
        if proofreading is not None:
            proofreading.show_question(ask)

    def _model_status(self, message: Optional[str]) -> None:
        for viewer in list(self.viewers.values()):
            ngview.show_status(viewer, "promptcut-model", message)

    def _redraw(self, result: OperationResult) -> None:
        """Tell every viewer, each on its own (one broken viewer must not stop the others): the
        new equivalence groups (only the changed segments change colour; their chunks and
        meshes stay), which segments to show in 3D in place of the ones the edit changed, and
        the voxels' URL after a division."""
        with self._redraw_lock:  # edits published from two threads: the later picture wins
            self._redraw_all(result)

    def _redraw_all(self, result: OperationResult) -> None:
        view = self.membership_view
        url = self.source_url("segmentation")
        picture = view.picture()
        news = f"{result.user}: {result.message} (operation {result.operation})"
        loading = False
        for user, viewer in list(self.viewers.items()):
            try:
                if user != result.user:  # another proofreader changed what this one sees
                    ngview.show_status(viewer, OTHERS_STATUS, news)
                with viewer.txn() as s:
                    if user in self.users:  # kept prompt points change with cuts and undo
                        self.users[user].draw_prompts(s)
                    layer = ngview.segmentation_layer(s)
                    if layer is None:
                        continue  # the proofreader removed the layer from their view
                    if str(layer.source[0].url) != url:  # a division: new voxels
                        ngview.load_voxels(s, url)
                        loading = True
                    shown = {view.segment_of(v) for v in layer.segments} - {0}
                    if shown & set(result.segments) or not shown:
                        shown |= set(result.segments[:1])
                    ngview.draw_membership(s, picture.groups,
                                           {picture.representative.get(v, v) for v in shown})
                    if user in self.users:  # a pending preview stays drawn over the rest
                        self.users[user].draw_preview(s)
            except Exception:  # noqa: BLE001 - logged; the edit is saved either way
                log.exception("could not update %s's viewer after operation %d", user,
                              result.operation)
        if loading:
            threading.Thread(target=self._show_voxels_when_loaded, daemon=True,
                             name="promptcut-voxels").start()

    def _show_voxels_when_loaded(self) -> None:
        """Swap every viewer to the newest voxels once the browsers have stopped asking for
        their chunks (or after a while: a viewer nobody has open asks for nothing)."""
        view, source = self.membership_view, self.segment_source
        started = time.monotonic()
        while time.monotonic() - started < VOXELS_LOAD_LIMIT:
            asked = source.last_asked(view.generation)
            if asked is not None and time.monotonic() - asked > VOXELS_QUIET:
                break
            time.sleep(0.1)
        with self._redraw_lock:
            url = self.source_url("segmentation")
            for user, viewer in list(self.viewers.items()):
                try:
                    with viewer.txn() as s:
                        ngview.show_loaded_voxels(s, url)
                except Exception:  # noqa: BLE001 - one broken viewer must not stop the rest
                    log.exception("could not show the new voxels in %s's viewer", user)

    def info(self) -> dict:
        image = self.project.volume("image")
        return {
            "name": self.settings.name,
            "dataset": self.settings.dataset,
            "credits": self.settings.credits,
            "viewer_url": self.viewer_url,
            "shape_zyx": list(image.shape),
            "voxel_size_nm_zyx": list(image.voxel_size),
            "layers": {MOUNTS[k]: self.source_url(k) for k in MOUNTS if self.project.has(k)},
            "keys": self.router.key_reference() if self.router else [],
            "proofreading": self.proofreading is not None,
            "models": self.models.description if self.models else "none",
            "users": sorted(self.viewers),
        }


def access_for(settings: ServeSettings) -> Access:
    """The access rules a server's settings ask for (refused at start-up when unsafe)."""
    server = settings.server
    return Access.for_server(server.host, server.token, server.public_url)


def make_app(session: ServerSession) -> tornado.web.Application:
    image = session.project.volume("image")
    api = ApiContext(
        access=session.access, service=session.service, shape=image.shape,
        voxel_size=image.voxel_size, info=session.info, describe=session.describe_segment,
        viewer_url=lambda user: session.viewer_for(user).get_viewer_url(),
        reports=lambda user, after: [asdict(r) for r in session.routers[user].reports_after(
            after)] if user in session.routers else [],
        show_segment=session.show_segment, show_question=session.show_question)
    live = [(r"/segments/g(\d+)/(.*)", SegmentChunkHandler, {"source": session.segment_source})
            ] if session.segment_source is not None else []
    app = tornado.web.Application(routes(api) + live + [
        (r"/data/([^/]+)/(.*)", DataHandler, {"mounts": session.mounts()}),
        (r"/static/(.*)", tornado.web.StaticFileHandler, {"path": str(STATIC_DIR)}),
        (r"/()", tornado.web.StaticFileHandler,
         {"path": str(STATIC_DIR), "default_filename": "index.html"}),
    ], log_function=_log_request)
    answer_only_own_names(app, session.access)
    return app


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
