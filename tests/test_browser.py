"""The real thing: neuroglancer in headless Chromium over the demo, driven by mouse and keys."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from server.viewer import segmentation_layer, segmentation_name, to_viewer
from tests.browser_util import (PANEL, coloured_fraction, grey_and_textured, panel_pixels,
                                wait_for_panel)

pytestmark = pytest.mark.browser


def interior_voxel(labels: np.ndarray, z: int) -> tuple[int, int, int]:
    """A voxel deep inside a large segment of slice z, so a pixel of error cannot matter."""
    plane = labels[z]
    boundary = np.zeros(plane.shape, bool)
    boundary[:-1] |= plane[:-1] != plane[1:]
    boundary[:, :-1] |= plane[:, :-1] != plane[:, 1:]
    depth = ndimage.distance_transform_edt(~boundary)
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    return z, int(y), int(x)


@pytest.fixture
def page(browser, demo_session):
    page = browser.new_page()
    yield page
    page.close()
    demo_session.reset_view()


def test_em_and_coloured_segments_render(page, demo_session):
    viewer = demo_session.viewer
    with viewer.txn() as s:
        segmentation_layer(s).visible = False
    page.goto(demo_session.viewer_url)
    em = wait_for_panel(page, grey_and_textured)
    assert em.std() > 10  # the image panel is not uniform
    with viewer.txn() as s:
        segmentation_layer(s).visible = True
    coloured = wait_for_panel(page, lambda p: coloured_fraction(p) > 0.3)
    assert coloured_fraction(coloured) > 0.3 and coloured_fraction(em) < 0.01


def test_key_over_a_segment_reports_the_id_the_volume_holds(page, demo_session):
    volume = demo_session.project.volume("segmentation")
    labels = volume.read(slice(None), slice(None), slice(None))
    target = interior_voxel(labels, 80)
    with demo_session.viewer.txn() as s:
        s.position = [v + 0.5 for v in to_viewer(target)]
        segmentation_layer(s).visible = True
    page.goto(demo_session.viewer_url)
    wait_for_panel(page, lambda p: coloured_fraction(p) > 0.3)
    box = page.locator(PANEL).first.bounding_box()
    seen = demo_session.router.last_sequence
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    time.sleep(0.6)  # neuroglancer picks the segment under the mouse on its next frame
    page.keyboard.press("i")
    report = demo_session.router.wait_for_report(seen, 20)
    assert report is not None, "the key press never reached the server"
    assert report.ok, report.message
    reported = report.pointer.voxel
    assert np.abs(np.subtract(reported, target)).max() <= 2
    expected = int(labels[reported])
    assert expected == labels[target] != 0
    assert report.message.startswith(f"segment {expected}:")
    drawn = segmentation_name(demo_session.viewer.state)
    assert report.pointer.selected.get(drawn) == expected  # the client's id too
    page.wait_for_function("text => document.body.innerText.includes(text)",
                           arg=report.message, timeout=10000)


def test_landing_page_links_the_viewer_and_lists_keys(page, demo_session):
    page.goto(demo_session.landing_url)
    page.wait_for_function("document.querySelector('#keys tbody').rows.length > 0")
    assert "token" not in page.url  # the token leaves the address bar once read
    assert page.locator("#project-name").inner_text() == "test project"
    assert "Janelia" in page.locator("#credits").inner_text()
    assert page.locator("#viewer-link").get_attribute("href") == demo_session.viewer_url
    assert "segment under the mouse" in page.locator("#keys").inner_text()


def test_a_zarr_project_renders_too(browser, tmp_path, demo_h5):
    from promptcut.config import load_config
    from promptcut.setup_project import prepare_project
    from server.app import ServerSession
    from tests.conftest import write_config

    config = load_config(write_config(tmp_path, demo_h5, viewer={"layout": "xy"},
                                      **{"import": {"format": "zarr"}}))
    session = ServerSession(config.serve_settings(),
                            prepare_project(config, progress=False))
    session.start()
    page = browser.new_page()
    try:
        assert session.source_url("image").startswith("zarr2://http://")
        with session.viewer.txn() as s:
            segmentation_layer(s).visible = False
        page.goto(session.viewer_url)
        wait_for_panel(page, grey_and_textured)
        with session.viewer.txn() as s:
            segmentation_layer(s).visible = True
        wait_for_panel(page, lambda p: coloured_fraction(p) > 0.3)
    finally:
        page.close()
        session.stop()


def test_agglomerated_neurons_show_as_meshes_in_3d(browser, segmented_session):
    session = segmented_session
    state = session.viewer.state
    visible = [int(v) for v in segmentation_layer(state).segments]
    assert len(visible) == 1  # the neuron at the starting position (by its smallest member)
    segment = session.membership_view.segment_of(visible[0])
    members = session.proofreading.members_of(segment)
    assert int(members.min()) == visible[0]
    assert len(members) > 1  # an agglomerated neuron: several supervoxels, one segment
    with session.viewer.txn() as s:
        s.layout = "3d"
        s.show_slices = False  # the 3D panel then shows meshes alone
    page = browser.new_page()
    try:
        page.goto(session.viewer_url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if page.locator(PANEL).count() and coloured_fraction(panel_pixels(page)) > 0.05:
                break
            time.sleep(0.5)
        with_mesh = coloured_fraction(panel_pixels(page))
        assert with_mesh > 0.05, f"no mesh in the 3D panel ({with_mesh:.3f} coloured)"
        with session.viewer.txn() as s:
            segmentation_layer(s).segments = set()
        time.sleep(1.5)
        # what stays is the outline box and the axes: the colour was the mesh
        assert coloured_fraction(panel_pixels(page)) < with_mesh / 3
    finally:
        page.close()
        session.reset_view()
