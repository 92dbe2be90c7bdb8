"""Driving neuroglancer in headless Chromium: shared by the browser tests and the benchmarks."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

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


def panel_pixels(page) -> np.ndarray:
    """RGB pixels of the first data panel, as floats."""
    from PIL import Image

    box = page.locator(PANEL).first.bounding_box()
    png = page.screenshot(clip=box)
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
