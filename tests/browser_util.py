"""Driving neuroglancer in headless Chromium: shared by the browser tests and the benchmarks."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
from scipy import ndimage

from server.viewer import segmentation_name

CHROMIUM = os.environ.get("PROMPTCUT_CHROMIUM", "/usr/bin/chromium")
# Software WebGL and no calls home: what works on a headless machine with no network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                  "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
PANEL = ".neuroglancer-rendered-data-panel:visible"


@contextmanager
def chromium(width: int = 1000, height: int = 800) -> Iterator:
    """A persistent Chromium context with a fresh profile, removed afterwards."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="promptcut-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
                viewport={"width": width, "height": height})
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def panel_box(page, timeout: float = 10.0) -> dict:
    """The first data panel's place on the page. neuroglancer replaces its panel elements
    when the server pushes a new viewer state, so the element found may be gone by the time
    it is measured (no box): then it is looked up again."""
    deadline = time.monotonic() + timeout
    while True:
        box = page.locator(PANEL).first.bounding_box()
        if box is not None:
            return box
        if time.monotonic() > deadline:
            raise AssertionError("no data panel on the page")
        time.sleep(0.01)


def panel_pixels(page, box: Optional[dict] = None) -> np.ndarray:
    """RGB pixels of the first data panel (or of the page within ``box``), as floats: what a
    person sees there, whichever element draws it."""
    from PIL import Image

    png = page.screenshot(clip=box or panel_box(page))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)


def wait_for_panel(page, predicate: Callable[[np.ndarray], bool], timeout: float = 60.0,
                   interval: float = 0.25) -> np.ndarray:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.locator(PANEL).count():
            pixels = panel_pixels(page)
            if predicate(pixels):
                return pixels
        time.sleep(interval)
    shot = Path(tempfile.gettempdir()) / f"promptcut-failed-{int(time.time())}.png"
    page.screenshot(path=str(shot))
    raise AssertionError(f"the panel never showed what was expected (screenshot: {shot})")


def grey_and_textured(pixels: np.ndarray) -> bool:
    """EM alone: grey (r = g = b, but for axis lines and the outline) and far from uniform."""
    grey = (pixels.max(axis=2) - pixels.min(axis=2)) < 3
    return grey.mean() > 0.95 and pixels[grey].std() > 10


def coloured_fraction(pixels: np.ndarray) -> float:
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    return float((saturation > 40).mean())


def inside(labels: np.ndarray, sv: int) -> tuple[int, int, int]:
    """A voxel deep inside supervoxel ``sv``, in the section where it is largest."""
    mask = labels == sv
    z = int(np.argmax(mask.sum(axis=(1, 2))))
    depth = ndimage.distance_transform_edt(np.pad(mask[z], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    return z, int(y), int(x)


class Driver:
    """Puts the mouse on a voxel (by centring the view on it) and presses keys."""

    def __init__(self, page, session):
        self.page, self.session = page, session
        self.router = session.router

    def hover(self, voxel) -> None:
        from server.viewer import to_viewer

        with self.session.viewer.txn() as s:
            s.position = [v + 0.5 for v in to_viewer(voxel)]
        box = None
        deadline = time.monotonic() + 20
        while box is None and time.monotonic() < deadline:  # panels are rebuilt now and then
            box = self.page.locator(PANEL).first.bounding_box(timeout=5000)
        assert box is not None, "the data panel is gone"
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        self.page.mouse.move(cx + 3, cy + 3)
        self.page.mouse.move(cx, cy)
        time.sleep(0.6)

    def press(self, key: str, voxel=None):
        """Press a key over ``voxel`` (moving there first), or where the mouse is now."""
        if voxel is not None:
            self.hover(voxel)
        seen = self.router.last_sequence
        self.page.keyboard.press(key)
        report = self.router.wait_for_report(seen, 30)
        assert report is not None, f"no report for {key}"
        return report

    def segment_seen_at(self, voxel, expected: int, timeout: float = 30) -> int:
        """``expected`` once the browser shows that segment under the mouse (neuroglancer
        names it by its equivalence group's smallest id), else the id it shows."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            report = self.press("i", voxel)
            seen = report.pointer.selected.get(segmentation_name(self.session.viewer.state))
            if seen == self.session.membership_view.shown_as(expected):
                return expected
            time.sleep(0.5)
        return seen


def touching_pair(proof, which: int) -> tuple[int, int]:
    """Two touching supervoxels of different segments, both large (the first or last such)."""
    graph = proof.graph
    a, b = graph.edge_a, graph.edge_b
    big = (graph.size[a] > 2000) & (graph.size[b] > 2000) & (proof.segment[a] != proof.segment[b])
    edge = int(np.flatnonzero(big)[which])
    return int(graph.ids[a[edge]]), int(graph.ids[b[edge]])
