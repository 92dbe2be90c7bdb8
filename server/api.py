"""JSON handlers: thin wrappers that delegate to the running ServerSession."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import tornado.web

from segmentation.errors import PromptcutError
from server.data import CorsMixin

if TYPE_CHECKING:
    from server.app import ServerSession


class JsonHandler(CorsMixin, tornado.web.RequestHandler):
    def initialize(self, session: "ServerSession") -> None:
        self.session = session

    def send(self, payload: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message if isinstance(exc, tornado.web.HTTPError) and exc.log_message \
            else self._reason
        self.send({"error": message})

    def int_argument(self, name: str) -> int:
        raw = self.get_query_argument(name, None)
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise tornado.web.HTTPError(400, f"query argument {name!r} must be an integer") \
                from None


class InfoHandler(JsonHandler):
    def get(self) -> None:
        self.send(self.session.info())


class SegmentInfoHandler(JsonHandler):
    """GET /api/segment?z=&y=&x= : the segment at a voxel, as the `i` key reports it."""

    def get(self) -> None:
        zyx = tuple(self.int_argument(axis) for axis in "zyx")
        try:
            self.send(asdict(self.session.describe_segment(zyx)))
        except PromptcutError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None


class ReportsHandler(JsonHandler):
    """GET /api/reports?after=N : outcomes of keyboard actions, oldest first."""

    def get(self) -> None:
        after = int(self.get_query_argument("after", "0") or 0)
        reports = [asdict(r) for r in self.session.router.reports if r.sequence > after]
        self.send({"reports": reports})


class ViewerHandler(JsonHandler):
    """GET /api/viewer?user=NAME : that proofreader's own viewer (made on first use)."""

    def get(self) -> None:
        user = self.get_query_argument("user", "") or self.session.default_user
        try:
            viewer = self.session.viewer_for(user)
        except PromptcutError as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        if self.get_query_argument("redirect", "1") == "1":
            self.redirect(viewer.get_viewer_url())
        else:
            self.send({"user": user, "viewer_url": viewer.get_viewer_url()})
