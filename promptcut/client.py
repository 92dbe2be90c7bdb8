"""A Python client for a running promptcut server's HTTP API (version 1).

    from promptcut.client import Client
    client = Client("http://127.0.0.1:8000", token)   # the token `promptcut serve` printed
    a = client.segment_at(x=90, y=100, z=80)["segment"]
    client.merge({"x": 90, "y": 100, "z": 80}, {"x": 120, "y": 100, "z": 80}, user="alice")
    client.undo(user="alice")

Points are ``{"x", "y", "z"}`` mappings (voxels, or nm with ``"unit": "nm"``) or
``(x, y, z)`` voxel tuples. A refused edit raises ``ApiError`` with the server's one-line
message and HTTP status; nothing changed on the server then.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping, Optional, Sequence, Union

Point = Union[Mapping[str, Any], Sequence[float]]


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def as_point(point: Point) -> dict:
    if isinstance(point, Mapping):
        return dict(point)
    x, y, z = point
    return {"x": x, "y": y, "z": z}


class Client:
    def __init__(self, url: str, token: str, user: str = "proofreader", timeout: float = 120):
        self.url = url.rstrip("/")
        self.token = token
        self.user = user
        self.timeout = timeout
        host = urllib.parse.urlsplit(self.url).hostname or ""
        # a server on this machine is reached directly, whatever proxy the environment names
        direct = host in ("localhost", "127.0.0.1", "::1")
        self._opener = urllib.request.build_opener(
            *([urllib.request.ProxyHandler({})] if direct else []))

    # -- edits ----------------------------------------------------------------------------------
    # preview=True: what the edit would do (sides and sizes), with nothing logged
    def merge(self, first: Point, second: Point, user: Optional[str] = None,
              preview: bool = False) -> dict:
        return self._edit("merge", user, preview, first=as_point(first),
                          second=as_point(second))

    def split(self, sources: Sequence[Point], sinks: Sequence[Point],
              user: Optional[str] = None, preview: bool = False) -> dict:
        return self._edit("split", user, preview, sources=[as_point(p) for p in sources],
                          sinks=[as_point(p) for p in sinks])

    def prompt_cut(self, positives: Sequence[Point], negatives: Sequence[Point] = (),
                   user: Optional[str] = None, preview: bool = False) -> dict:
        return self._edit("prompt_cut", user, preview,
                          positives=[as_point(p) for p in positives],
                          negatives=[as_point(p) for p in negatives])

    def split_supervoxel(self, sources: Sequence[Point], sinks: Sequence[Point],
                         user: Optional[str] = None, preview: bool = False) -> dict:
        return self._edit("split_supervoxel", user, preview,
                          sources=[as_point(p) for p in sources],
                          sinks=[as_point(p) for p in sinks])

    def undo(self, user: Optional[str] = None) -> dict:
        return self._edit("undo", user)

    def redo(self, user: Optional[str] = None) -> dict:
        return self._edit("redo", user)

    def review(self, segment: int, reviewed: bool = True, user: Optional[str] = None) -> dict:
        """Mark a segment reviewed (done), or no longer; logged and undoable like an edit."""
        return self._edit("review", user, segment=int(segment), reviewed=bool(reviewed))

    def segments(self, limit: int = 50) -> list[dict]:
        """The largest segments and every reviewed one, with last edit and review mark."""
        return self._request("GET", "/api/v1/segments", query={"limit": limit})["segments"]

    def export(self) -> str:
        return self._request("POST", "/api/v1/export", {})["folder"]

    # -- focused proofreading: yes/no questions, most valuable first ----------------------------
    def question(self, user: Optional[str] = None) -> Optional[dict]:
        """The open question (segments, probability, points, contact), or None: none left."""
        return self._request("GET", "/api/v1/question",
                             query={"user": user or self.user})["question"]

    def answer(self, yes: bool, user: Optional[str] = None) -> dict:
        """Merge (yes) or keep apart (no) the open question's segments; the edit, with the
        next question under "next"."""
        return self._edit("answer", user, answer="yes" if yes else "no")

    def skip(self, user: Optional[str] = None) -> Optional[dict]:
        return self._edit("skip", user)["question"]

    def back(self, user: Optional[str] = None) -> dict:
        """The previous question again ("question"), its answer undone ("undone")."""
        return self._edit("back", user)

    # -- questions ------------------------------------------------------------------------------
    def operations(self, after: int = 0, limit: int = 100) -> list[dict]:
        return self._request("GET", "/api/v1/operations", query={"after": after,
                                                                 "limit": limit})["operations"]

    def segment_at(self, x: float, y: float, z: float, unit: str = "voxel") -> dict:
        return self._request("GET", "/api/v1/segment_at",
                             query={"x": x, "y": y, "z": z, "unit": unit})

    def members(self, segment: int) -> list[int]:
        return self._request("GET", f"/api/v1/segments/{int(segment)}/members")["supervoxels"]

    def segment(self, segment: int) -> dict:
        """Size, supervoxel count and bounding box of a segment."""
        return self._request("GET", f"/api/v1/segments/{int(segment)}")

    def info(self) -> dict:
        return self._request("GET", "/api/v1/info")

    # -- transport ------------------------------------------------------------------------------
    def _edit(self, kind: str, user: Optional[str], preview: bool = False, **body) -> dict:
        extra = {"preview": True} if preview else {}
        return self._request("POST", f"/api/v1/{kind}",
                             {"user": user or self.user, **body, **extra})

    def _request(self, method: str, path: str, body: Optional[dict] = None,
                 query: Optional[dict] = None) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = str(exc.reason)
            raise ApiError(exc.code, message) from None
