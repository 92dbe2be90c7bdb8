"""Chunk-serving latency: every base-scale chunk of the demo, as the viewer would fetch them."""

from __future__ import annotations

import http.client
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import DEMO_H5, percentiles, write_result
from promptcut.config import load_config
from promptcut.setup_project import prepare_project
from server.app import ServerSession
from tests.conftest import write_config


def chunk_paths(root: Path, mount: str) -> list[str]:
    info = json.loads((root / "info").read_text())
    key = info["scales"][0]["key"]
    return [f"/data/{mount}/{key}/{p.name}" for p in sorted((root / key).iterdir())]


def fetch_all(port: int, paths: list[str], gzip: bool) -> tuple[list[float], int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    samples, total = [], 0
    for path in paths:
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status == 200, path
        total += len(body)
    connection.close()
    return samples, total


def run() -> dict:
    figures = {}
    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(write_config(Path(scratch), DEMO_H5))
        session = ServerSession(config.serve_settings(),
                                prepare_project(config, progress=False))
        session.start()
        try:
            for mount, folder in (("image", "image"), ("segmentation", "supervoxels")):
                paths = chunk_paths(session.project.root / folder, mount)
                for gzip in (False, True):
                    fetch_all(session.port, paths, gzip)  # warm the page cache
                    samples, total = fetch_all(session.port, paths, gzip)
                    figures[f"{mount}{' gzip' if gzip else ''}"] = {
                        **percentiles(samples), "chunks": len(paths),
                        "MB_sent": round(total / 1e6, 2),
                        "MB_per_s": round(total / 1e6 / (sum(samples) / 1000), 1)}
        finally:
            session.stop()
    return {"chunk_size": [64, 64, 64], "results": figures}


if __name__ == "__main__":
    write_result("chunk_serving", run())
