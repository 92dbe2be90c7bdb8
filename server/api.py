"""The HTTP API, version 1 (``/api/v1/…``): JSON in and out, every request with the token.

Edits (merge, split, prompt cut, supervoxel split, undo, redo, export) go to the edit service,
questions (the segment at a point, a segment's members and size, the operation history) too.
Points name their axes, ``{"x": 1, "y": 2, "z": 3}``, in voxels or, with ``"unit": "nm"``, in
nanometres. Every edit answers with its operation id, the segments it changed, a message and
milliseconds; bad input is a 4xx with a one-line ``{"error": …}`` and changes nothing.
The description of all of it is served at ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import tornado.web
from tornado.ioloop import IOLoop

from segmentation.errors import PromptcutError
from segmentation.session import OperationResult, Preview, SegmentBusy
from server.access import Access, refusal, require_token
from server.api_schema import openapi
from server.edit_service import EditService

log = logging.getLogger(__name__)
USER_HELP = "a user name is 1 to 64 letters, digits, '-', '_' or '.'"
DEFAULT_USER = "proofreader"


def valid_user(user: str) -> bool:
    return 0 < len(user) <= 64 and all(c.isalnum() or c in "-_." for c in user)


@dataclass
class ApiContext:
    """What the handlers may reach: the access rules, the edit service (None for a project
    without a segmentation graph) and the server's own answers."""

    access: Access
    service: Optional[EditService]
    shape: Sequence[int]  # z, y, x voxels
    voxel_size: Sequence[float]  # z, y, x nm
    info: Callable[[], dict]
    describe: Callable[[tuple[int, int, int]], Any]  # -> SegmentDescription
    viewer_url: Callable[[str], str]  # user -> their viewer URL (made on first use)
    reports: Callable[[str, int], list]  # user, after -> action reports
    show_segment: Callable[[str, int], dict]  # user, segment -> where their viewer went
    show_question: Callable[[str, Any], None]  # user, question (or None) -> into their viewer


class JsonHandler(tornado.web.RequestHandler):
    def initialize(self, api: ApiContext, **_) -> None:
        self.api = api

    def prepare(self) -> None:
        require_token(self, self.api.access)

    def send(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": refusal(self, kwargs)}))

    # -- reading input --------------------------------------------------------------------------
    def body(self) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise tornado.web.HTTPError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise tornado.web.HTTPError(400, "the body must be a JSON object")
        return data

    def user(self, data: Optional[dict] = None) -> str:
        user = (data or {}).get("user") if data is not None else \
            self.get_query_argument("user", None)
        user = DEFAULT_USER if user in (None, "") else user
        if not isinstance(user, str) or not valid_user(user):
            raise tornado.web.HTTPError(400, USER_HELP)
        return user

    def point(self, value: Any, what: str) -> tuple[int, int, int]:
        """A {"x", "y", "z"[, "unit"]} point as the z, y, x voxel that holds it."""
        if not isinstance(value, dict) or any(axis not in value for axis in "xyz"):
            raise tornado.web.HTTPError(400, f"{what} must be an object with x, y and z")
        unit = value.get("unit", "voxel")
        if unit not in ("voxel", "nm"):
            raise tornado.web.HTTPError(400, f"{what}: unit must be 'voxel' or 'nm'")
        extra = set(value) - {"x", "y", "z", "unit"}
        if extra:
            raise tornado.web.HTTPError(400, f"{what}: unknown key {sorted(extra)[0]!r}")
        zyx = []
        for axis, size, nm in zip("zyx", self.api.shape, self.api.voxel_size):
            v = value[axis]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise tornado.web.HTTPError(400, f"{what}: {axis} must be a number")
            voxel = math.floor(v / nm) if unit == "nm" else math.floor(v)
            if not 0 <= voxel < size:
                raise tornado.web.HTTPError(400, f"{what}: {axis} {v} {unit} is outside the "
                                                 f"volume (0 to {size - 1} voxels)")
            zyx.append(int(voxel))
        return tuple(zyx)

    def points(self, data: dict, key: str, required: bool = True) -> list[tuple[int, int, int]]:
        values = data.get(key, [])
        if not isinstance(values, list) or (required and not values):
            raise tornado.web.HTTPError(400, f"{key} must be a non-empty list of points")
        if len(values) > 1000:
            raise tornado.web.HTTPError(400, f"{key}: at most 1000 points")
        return [self.point(v, f"{key}[{i}]") for i, v in enumerate(values)]

    def int_argument(self, name: str, default: Optional[int] = None, low: int = 0) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None and default is not None:
            return default
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise tornado.web.HTTPError(400, f"query argument {name!r} must be an integer") \
                from None
        if value < low:
            raise tornado.web.HTTPError(400, f"query argument {name!r} must be at least {low}")
        return value

    def number_argument(self, name: str) -> float:
        raw = self.get_query_argument(name, None)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise tornado.web.HTTPError(400, f"query argument {name!r} must be a number") \
                from None
        return value

    async def off_loop(self, work: Callable[[], Any], refused: int = 400) -> Any:
        """Run session work on a worker thread: an edit waits for the session's lock (an
        export holds it while it writes), and the IOLoop keeps serving chunks meanwhile.
        A segment another user holds is a 409; other refusals are ``refused`` (400 for bad
        input, 404 for asking after something that is not there)."""
        try:
            return await IOLoop.current().run_in_executor(None, work)
        except SegmentBusy as exc:
            raise tornado.web.HTTPError(409, str(exc)) from None
        except PromptcutError as exc:
            raise tornado.web.HTTPError(refused, str(exc)) from None

    @property
    def service(self) -> EditService:
        if self.api.service is None:
            raise tornado.web.HTTPError(409, "this project has no segmentation graph to edit: "
                                             "run `promptcut segment` first")
        return self.api.service


def edit_answer(result: OperationResult) -> dict:
    return {"operation": result.operation, "type": result.kind, "user": result.user,
            "segments": [int(s) for s in result.segments],
            "removed": [int(s) for s in result.removed], "message": result.message,
            "milliseconds": round(result.milliseconds, 2),
            # supervoxels a division (or its undo) made and retired: their ids changed
            "supervoxels_created": [int(s) for s in result.created],
            "supervoxels_retired": [int(s) for s in result.retired]}


PREVIEWS = {"merge": "merge", "split": "split", "prompt_cut": "prompt-cut",
            "split_supervoxel": "split-supervoxel"}  # API name -> the session's


def preview_answer(preview: Preview) -> dict:
    return {"preview": True, "type": preview.kind, "message": preview.message,
            "segments": [int(s) for s in preview.segments],
            "removed": [int(s) for s in preview.removed],
            "sizes": [{"segment": int(s), "voxels": v, "supervoxels": n}
                      for s, (v, n) in preview.sizes.items()],
            "supervoxel_divided": preview.divided or None}


class EditHandler(JsonHandler):
    """POST /api/v1/<edit>: one edit through the edit service."""

    def initialize(self, api: ApiContext, kind: str) -> None:
        super().initialize(api)
        self.kind = kind

    async def post(self) -> None:
        data = self.body()
        user = self.user(data)
        service = self.service
        run: Callable[[], OperationResult]
        preview = data.get("preview", False)
        if not isinstance(preview, bool) or (preview and self.kind not in PREVIEWS):
            raise tornado.web.HTTPError(400, f"preview is true or false, for "
                                             f"{', '.join(PREVIEWS)} only")
        if self.kind == "merge":
            first, second = self.point(data.get("first"), "first"), \
                self.point(data.get("second"), "second")
            run = lambda: service.merge(user, first, second)  # noqa: E731
        elif self.kind in ("split", "split_supervoxel"):
            first, second = self.points(data, "sources"), self.points(data, "sinks")
            method = service.split if self.kind == "split" else service.split_supervoxel
            run = lambda: method(user, first, second)  # noqa: E731
        elif self.kind == "prompt_cut":
            first = self.points(data, "positives")
            second = self.points(data, "negatives", required=False)
            run = lambda: service.prompt_cut(user, first, second)  # noqa: E731
        elif self.kind == "review":
            segment, reviewed = data.get("segment"), data.get("reviewed", True)
            if isinstance(segment, bool) or not isinstance(segment, int) or \
                    not isinstance(reviewed, bool):
                raise tornado.web.HTTPError(400, "a review needs a segment id (an integer) "
                                                 "and reviewed (true or false)")
            run = lambda: service.review(user, segment, reviewed)  # noqa: E731
        elif self.kind == "undo":
            run = lambda: service.undo(user)  # noqa: E731
        else:
            run = lambda: service.redo(user)  # noqa: E731
        if preview:  # worked out, nothing logged
            kind = PREVIEWS[self.kind]
            run = lambda: service.preview(kind, first, second)  # noqa: E731
        result = await self.off_loop(run)
        self.send(preview_answer(result) if preview else edit_answer(result))


def xyz(zyx: Sequence[int]) -> dict:
    """A z, y, x voxel as the API writes points."""
    z, y, x = (int(v) for v in zyx)
    return {"x": x, "y": y, "z": z}


def question_answer(ask) -> Optional[dict]:
    """A focused-proofreading question as JSON (None: none left)."""
    if ask is None:
        return None
    q = ask.question
    return {"segments": [int(s) for s in q.segments], "probability": round(q.probability, 4),
            "value": round(q.value, 1), "points": [xyz(p) for p in ask.points],
            "contact": xyz(ask.contact)}


class QuestionHandler(JsonHandler):
    """Focused proofreading. GET /api/v1/question?user=: the user's open question or the most
    valuable one nobody else holds; POST /api/v1/answer {"answer": "yes"|"no"}: merge or keep
    apart (logged, undoable), then the next question; POST /api/v1/skip: the next question;
    POST /api/v1/back: the previous question again, its answer undone."""

    def initialize(self, api: ApiContext, kind: str) -> None:
        super().initialize(api)
        self.kind = kind

    async def get(self) -> None:
        if self.kind != "question":
            raise tornado.web.HTTPError(405, f"{self.kind} is a POST")
        user, service = self.user(), self.service
        self.send({"question": question_answer(await self.off_loop(
            lambda: self._shown(user, service.question(user))))})

    async def post(self) -> None:
        data = self.body()
        user, service = self.user(data), self.service
        if self.kind == "answer":
            answer = data.get("answer")
            if answer not in ("yes", "no"):
                raise tornado.web.HTTPError(400, "answer must be 'yes' or 'no'")

            def work():
                result = service.answer(user, answer == "yes")
                following = self._shown(user, service.question(user))
                return {**edit_answer(result), "next": question_answer(following)}
            self.send(await self.off_loop(work))
        elif self.kind == "skip":
            self.send({"question": question_answer(await self.off_loop(
                lambda: self._shown(user, service.skip(user))))})
        elif self.kind == "back":
            def back():
                ask, undone = service.back(user)
                return self._shown(user, ask), undone
            ask, undone = await self.off_loop(back)
            self.send({"question": question_answer(ask),
                       "undone": edit_answer(undone) if undone else None})
        else:
            raise tornado.web.HTTPError(405, "ask for a question with GET")

    def _shown(self, user: str, ask):
        """The question, also shown in the user's viewer when they have one open (the
        dashboard steps through questions with it); a viewer's trouble is logged, never the
        request's (an answer is saved by then)."""
        try:
            self.api.show_question(user, ask)
        except Exception:  # noqa: BLE001
            log.exception("could not show %s's question in their viewer", user)
        return ask


class ExportHandler(JsonHandler):
    """POST /api/v1/export: the corrected segmentation into PROJECT/exports/<time>/."""

    async def post(self) -> None:
        self.body()
        folder = await self.off_loop(self.service.export)
        self.send({"folder": str(folder)})


class OperationsHandler(JsonHandler):
    """GET /api/v1/operations?after=N&limit=M: the operation history, oldest first."""

    async def get(self) -> None:
        after = self.int_argument("after", 0)
        limit = min(self.int_argument("limit", 100, low=1), 1000)
        service = self.service
        self.send({"operations": await self.off_loop(lambda: service.operations(after,
                                                                                 limit))})


class SegmentListHandler(JsonHandler):
    """GET /api/v1/segments?limit=N: the N largest segments and every reviewed one."""

    async def get(self) -> None:
        limit = min(self.int_argument("limit", 50, low=1), 1000)
        service = self.service
        self.send({"segments": await self.off_loop(lambda: service.segment_list(limit))})


class ShowSegmentHandler(JsonHandler):
    """POST /api/v1/show {"user", "segment"}: that user's viewer goes to the segment and
    shows it in 3D (the dashboard's segment list)."""

    async def post(self) -> None:
        data = self.body()
        user, segment = self.user(data), data.get("segment")
        if isinstance(segment, bool) or not isinstance(segment, int):
            raise tornado.web.HTTPError(400, "segment must be an integer id")
        self.service  # noqa: B018 - refuses a project without a graph
        self.send(await self.off_loop(lambda: self.api.show_segment(user, segment), 404))


class SegmentAtHandler(JsonHandler):
    """GET /api/v1/segment_at?x=&y=&z=[&unit=nm]: the segment at a point."""

    async def get(self) -> None:
        point = {axis: self.number_argument(axis) for axis in "xyz"}
        point["unit"] = self.get_query_argument("unit", "voxel")
        zyx = self.point(point, "the point")
        described = await self.off_loop(lambda: self.api.describe(zyx), 404)
        answer = asdict(described)
        voxel = xyz(answer.pop("voxel"))
        self.send({**answer, "voxel": voxel})


class SegmentHandler(JsonHandler):
    """GET /api/v1/segments/<id>: size, supervoxel count and bounding box;
    GET /api/v1/segments/<id>/members: its supervoxel ids."""

    async def get(self, segment: str, members: Optional[str]) -> None:
        service = self.service
        if members:
            ids = await self.off_loop(lambda: service.members(int(segment)), 404)
            self.send({"segment": int(segment), "supervoxels": ids.astype(int).tolist()})
        else:
            summary = await self.off_loop(lambda: service.summary(int(segment)), 404)
            box = summary.pop("bbox_zyx")
            corner = {k: dict(zip("zyx", box[k])) for k in ("start", "stop")}
            self.send({**summary, "bbox": corner})


class InfoHandler(JsonHandler):
    """GET /api/v1/info: the project, its layers and keys, and the viewer URL."""

    def get(self) -> None:
        self.send(self.api.info())


class ReportsHandler(JsonHandler):
    """GET /api/v1/reports?user=NAME&after=N: outcomes of that user's key actions."""

    def get(self) -> None:
        user = self.user()
        after = self.int_argument("after", 0)
        self.send({"reports": self.api.reports(user, after)})


class ViewerHandler(JsonHandler):
    """GET /api/v1/viewer?user=NAME: that proofreader's own viewer URL (made on first use)."""

    def get(self) -> None:
        user = self.user()
        try:
            url = self.api.viewer_url(user)
        except PromptcutError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        self.send({"user": user, "viewer_url": url})


class SchemaHandler(JsonHandler):
    """GET /api/v1/openapi.json: this API described (no token needed to read it)."""

    def prepare(self) -> None:
        pass

    def get(self) -> None:
        self.send(openapi())


def routes(api: ApiContext) -> list:
    context = {"api": api}
    edits = [(rf"/api/v1/{kind}", EditHandler, {**context, "kind": kind}) for kind in
             ("merge", "split", "prompt_cut", "split_supervoxel", "review", "undo",
              "redo")]
    return edits + [
        *[(rf"/api/v1/{kind}", QuestionHandler, {**context, "kind": kind})
          for kind in ("question", "answer", "skip", "back")],
        (r"/api/v1/export", ExportHandler, context),
        (r"/api/v1/operations", OperationsHandler, context),
        (r"/api/v1/segment_at", SegmentAtHandler, context),
        (r"/api/v1/segments", SegmentListHandler, context),
        (r"/api/v1/show", ShowSegmentHandler, context),
        (r"/api/v1/segments/(\d+)(/members)?", SegmentHandler, context),
        (r"/api/v1/info", InfoHandler, context),
        (r"/api/v1/reports", ReportsHandler, context),
        (r"/api/v1/viewer", ViewerHandler, context),
        (r"/api/v1/openapi.json", SchemaHandler, context),
    ]
