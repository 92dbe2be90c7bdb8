"""The data server as sharded precomputed readers use it: byte ranges (206, 416) and ETags
(304), beside gzip for whole files; on a small tornado app over a temporary folder."""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import tornado.web
from tornado.testing import AsyncHTTPTestCase

from server.data import DataHandler

BODY = bytes(range(256)) * 40  # 10240 bytes, compressible


class DataServerTest(AsyncHTTPTestCase):
    def get_app(self):
        self.folder = Path(tempfile.mkdtemp())
        (self.folder / "mesh").mkdir()
        (self.folder / "mesh" / "0.shard").write_bytes(BODY)
        return tornado.web.Application([(r"/data/([^/]+)/(.*)", DataHandler,
                                         {"mounts": {"seg": self.folder}})])

    def fetch_shard(self, **headers):
        # no automatic Accept-Encoding: each test says whether it accepts gzip
        return self.fetch("/data/seg/mesh/0.shard", headers=headers, decompress_response=False)

    def test_a_byte_range_answers_206_with_those_bytes(self):
        for header, start, stop in (("bytes=100-199", 100, 200), ("bytes=10000-", 10000, 10240),
                                    ("bytes=-40", 10200, 10240),
                                    ("bytes=10200-99999", 10200, 10240)):
            response = self.fetch_shard(Range=header, **{"Accept-Encoding": "gzip"})
            assert response.code == 206, header
            assert response.body == BODY[start:stop]
            assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/10240"
            assert "Content-Encoding" not in response.headers  # a range is of the file's bytes
            assert response.headers["Access-Control-Expose-Headers"]

    def test_a_range_outside_the_file_answers_416(self):
        for header in ("bytes=10240-", "bytes=20000-20010", "bytes=50-10"):
            response = self.fetch_shard(Range=header)
            assert response.code == 416, header
            assert response.headers["Content-Range"] == "bytes */10240"

    def test_several_ranges_or_another_unit_get_the_whole_file(self):
        for header in ("bytes=0-1,5-6", "items=0-1"):
            response = self.fetch_shard(Range=header)
            assert response.code == 200 and response.body == BODY

    def test_etag_answers_a_matching_if_none_match_with_304(self):
        first = self.fetch_shard()
        etag = first.headers["Etag"]
        assert first.code == 200 and first.body == BODY
        assert first.headers["Accept-Ranges"] == "bytes"
        again = self.fetch_shard(**{"If-None-Match": etag})
        assert again.code == 304 and again.body == b""
        assert self.fetch_shard(**{"If-None-Match": '"other"'}).code == 200
        ranged = self.fetch_shard(Range="bytes=0-9", **{"If-None-Match": etag})
        assert ranged.code == 304
        # the gzip representation has its own tag, and a changed file a new one
        zipped = self.fetch_shard(**{"Accept-Encoding": "gzip"})
        assert zipped.headers["Content-Encoding"] == "gzip" and zipped.headers["Etag"] != etag
        assert gzip.decompress(zipped.body) == BODY
        shard = self.folder / "mesh" / "0.shard"
        shard.write_bytes(BODY[::-1])
        os.utime(shard, ns=(1, 1))
        changed = self.fetch_shard(**{"If-None-Match": etag})
        assert changed.code == 200 and changed.body == BODY[::-1]

    def test_head_has_the_headers_and_no_body(self):
        response = self.fetch("/data/seg/mesh/0.shard", method="HEAD",
                              decompress_response=False)
        assert response.code == 200 and response.body == b""
        assert response.headers["Content-Length"] == "10240" and response.headers["Etag"]

