"""Page load to first rendered EM: a fresh Chromium page opening the demo viewer."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import DEMO_H5, write_result
from promptcut.config import load_config
from promptcut.setup_project import prepare_project
from server.app import ServerSession
from server.viewer import SEGMENTATION_LAYER
from tests.browser_util import chromium, grey_and_textured, wait_for_panel
from tests.conftest import write_config


def run(repeats: int = 5) -> dict:
    samples = []
    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(write_config(Path(scratch), DEMO_H5, viewer={"layout": "xy"}))
        session = ServerSession(config.serve_settings(),
                                prepare_project(config, progress=False))
        session.start()
        with session.viewer.txn() as s:
            s.layers[SEGMENTATION_LAYER].visible = False  # time the EM itself
        try:
            for _ in range(repeats):
                with chromium() as browser:  # a fresh profile: nothing cached
                    page = browser.new_page()
                    started = time.perf_counter()
                    page.goto(session.viewer_url)
                    wait_for_panel(page, grey_and_textured, interval=0.05)
                    samples.append(time.perf_counter() - started)
        finally:
            session.stop()
    return {"what": "goto(viewer URL) until the xy panel shows textured grey EM",
            "renderer": "headless Chromium, SwiftShader software WebGL",
            "seconds": [round(s, 2) for s in samples],
            "median_s": round(statistics.median(samples), 2), "max_s": round(max(samples), 2)}


if __name__ == "__main__":
    write_result("page_load", run())
