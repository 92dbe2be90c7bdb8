"""The data server as sharded precomputed readers use it: byte ranges (206, 416) and ETags
(304), beside gzip for whole files; on a small tornado app over a temporary folder, served from
a thread of its own (the browser tests' Playwright keeps an event loop running in the main
thread, so tornado's AsyncHTTPTestCase cannot run its loop there)."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import os
import threading
from dataclasses import dataclass

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from server.data import DataHandler

BODY = bytes(range(256)) * 40  # 10240 bytes, compressible


@dataclass
class Response:
    code: int
    headers: http.client.HTTPMessage
    body: bytes


@pytest.fixture
def shard_server(tmp_path):
    """(fetch, folder): ``fetch(method="GET", **headers)`` asks for mesh/0.shard."""
    (tmp_path / "mesh").mkdir()
    (tmp_path / "mesh" / "0.shard").write_bytes(BODY)
    started, state = threading.Event(), {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = tornado.web.Application([(r"/data/([^/]+)/(.*)", DataHandler,
                                        {"mounts": {"seg": tmp_path}})])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        state.update(loop=loop, port=sockets[0].getsockname()[1])
        started.set()
        loop.run_forever()
        server.stop()
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)

    def fetch(method: str = "GET", **headers) -> Response:
        # no automatic Accept-Encoding: each test says whether it accepts gzip
        connection = http.client.HTTPConnection("127.0.0.1", state["port"], timeout=10)
        try:
            connection.request(method, "/data/seg/mesh/0.shard",
                               headers={k.replace("_", "-"): v for k, v in headers.items()})
            answer = connection.getresponse()
            return Response(answer.status, answer.headers, answer.read())
        finally:
            connection.close()

    yield fetch, tmp_path
    state["loop"].call_soon_threadsafe(state["loop"].stop)
    thread.join(10)


def test_a_byte_range_answers_206_with_those_bytes(shard_server):
    fetch_shard, folder = shard_server
    for header, start, stop in (("bytes=100-199", 100, 200), ("bytes=10000-", 10000, 10240),
                                ("bytes=-40", 10200, 10240),
                                ("bytes=10200-99999", 10200, 10240)):
        response = fetch_shard(Range=header, **{"Accept-Encoding": "gzip"})
        assert response.code == 206, header
        assert response.body == BODY[start:stop]
        assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/10240"
        assert "Content-Encoding" not in response.headers  # a range is of the file's bytes
        assert response.headers["Access-Control-Expose-Headers"]


def test_a_range_outside_the_file_answers_416(shard_server):
    fetch_shard, folder = shard_server
    for header in ("bytes=10240-", "bytes=20000-20010", "bytes=50-10"):
        response = fetch_shard(Range=header)
        assert response.code == 416, header
        assert response.headers["Content-Range"] == "bytes */10240"


def test_several_ranges_or_another_unit_get_the_whole_file(shard_server):
    fetch_shard, folder = shard_server
    for header in ("bytes=0-1,5-6", "items=0-1"):
        response = fetch_shard(Range=header)
        assert response.code == 200 and response.body == BODY


def test_etag_answers_a_matching_if_none_match_with_304(shard_server):
    fetch_shard, folder = shard_server
    first = fetch_shard()
    etag = first.headers["Etag"]
    assert first.code == 200 and first.body == BODY
    assert first.headers["Accept-Ranges"] == "bytes"
    again = fetch_shard(**{"If-None-Match": etag})
    assert again.code == 304 and again.body == b""
    assert fetch_shard(**{"If-None-Match": '"other"'}).code == 200
    ranged = fetch_shard(Range="bytes=0-9", **{"If-None-Match": etag})
    assert ranged.code == 304
    # the gzip representation has its own tag, and a changed file a new one
    zipped = fetch_shard(**{"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip" and zipped.headers["Etag"] != etag
    assert gzip.decompress(zipped.body) == BODY
    shard = folder / "mesh" / "0.shard"
    shard.write_bytes(BODY[::-1])
    os.utime(shard, ns=(1, 1))
    changed = fetch_shard(**{"If-None-Match": etag})
    assert changed.code == 200 and changed.body == BODY[::-1]


def test_head_has_the_headers_and_no_body(shard_server):
    fetch_shard, folder = shard_server
    response = fetch_shard("HEAD")
    assert response.code == 200 and response.body == b""
    assert response.headers["Content-Length"] == "10240" and response.headers["Etag"]

