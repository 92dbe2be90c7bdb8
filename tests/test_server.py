"""The data server, API and viewer state of a running session over the real demo (no browser)."""

import gzip
import http.client
import json
import threading
import time

import numpy as np
import pytest

from segmentation.errors import InputError
from server.actions import Action
from server.viewer import Pointer, from_viewer, segmentation_layer, to_viewer


def request(session, path: str, method: str = "GET", headers: dict | None = None):
    """A raw HTTP request: the path goes out exactly as written, '..' included."""
    connection = http.client.HTTPConnection("127.0.0.1", session.port, timeout=10)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response, body


def served_mesh(session, served: str, supervoxel: int) -> np.ndarray | None:
    """The level-0 vertices (x, y, z nm) of a supervoxel's mesh as neuroglancer reads it: the
    manifest, then each fragment by byte range; None when the server has no mesh for it."""
    import DracoPy
    from cloudvolume.datasource.precomputed.mesh.multilod import (
        MultiLevelPrecomputedMeshManifest)

    response, body = request(session, f"{served}/mesh/{supervoxel}.index")
    if response.status == 404:
        return None
    assert response.status == 200
    manifest = MultiLevelPrecomputedMeshManifest.from_binary(body, segment_id=supervoxel)
    info = json.loads(request(session, f"{served}/mesh/info")[1])
    top = 2 ** info["vertex_quantization_bits"] - 1
    sizes = np.concatenate(manifest.fragment_offsets).astype(int)
    starts = np.r_[0, np.cumsum(sizes)]
    vertices = []
    for position, start, size in zip(manifest.fragment_positions[0], starts, sizes):
        if size == 0:
            continue
        response, fragment = request(session, f"{served}/mesh/{supervoxel}",
                                     headers={"Range": f"bytes={start}-{start + size - 1}"})
        assert response.status == 206 and len(fragment) == size
        quantized = DracoPy.decode(fragment).points
        low = manifest.grid_origin + manifest.vertex_offsets[0] + manifest.chunk_shape * position
        vertices.append(low + quantized / top * manifest.chunk_shape)
    return np.concatenate(vertices)


def assert_mesh_wraps(vertices: np.ndarray, voxels: np.ndarray, voxel_size,
                      scale: int = 0) -> None:
    """The mesh's box is the voxels' box (z, y, x voxel indices) to within a voxel of the
    pyramid scale it was meshed from."""
    voxel = np.asarray(voxel_size[::-1], float)
    low, high = voxels.min(0)[::-1] * voxel, (voxels.max(0)[::-1] + 1) * voxel
    within = voxel * 2 ** scale
    assert np.all(np.abs(vertices.min(0) - low) <= within), (vertices.min(0), low)
    assert np.all(np.abs(vertices.max(0) - high) <= within), (vertices.max(0), high)


def api(session, path: str, method: str = "GET", body: dict | None = None):
    """An API request with the session's token; returns (status, JSON answer)."""
    headers = {"Authorization": f"Bearer {session.access.token}"}
    connection = http.client.HTTPConnection("127.0.0.1", session.port, timeout=60)
    connection.request(method, path, body=None if body is None else json.dumps(body),
                       headers=headers)
    response = connection.getresponse()
    answer = json.loads(response.read() or b"null")
    connection.close()
    return response.status, answer


def test_info_file_is_json_with_cors(demo_session):
    response, body = request(demo_session, "/data/image/info")
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("Access-Control-Allow-Origin") == "*"
    assert json.loads(body)["type"] == "image"


def test_chunks_are_gzipped_when_accepted_and_match_the_volume(demo_session):
    chunk = "/data/image/10_10_10/0-64_0-64_0-64"
    plain, raw = request(demo_session, chunk)
    zipped, packed = request(demo_session, chunk, headers={"Accept-Encoding": "gzip"})
    assert plain.getheader("Content-Type") == "application/octet-stream"
    assert plain.getheader("Content-Encoding") is None
    assert zipped.getheader("Content-Encoding") == "gzip" and len(packed) < len(raw)
    assert gzip.decompress(packed) == raw
    block = np.frombuffer(raw, np.uint8).reshape(64, 64, 64)  # raw encoding: z, y, x in memory
    expected = demo_session.project.volume("image").read(slice(0, 64), slice(0, 64),
                                                         slice(0, 64))
    np.testing.assert_array_equal(block, expected)


@pytest.mark.parametrize("path, status", [
    ("/data/image/../project.json", 403),
    ("/data/image/%2e%2e/project.json", 403),
    ("/data/image/10_10_10/../../supervoxels/info", 403),
    ("/data/image//etc/passwd", 403),
    ("/data/image/%2Fetc%2Fpasswd", 403),
    ("/data/nowhere/info", 404),
    ("/data/image/missing-chunk", 404),
])
def test_paths_that_leave_the_data_folder_are_refused(demo_session, path, status):
    response, body = request(demo_session, path)
    assert response.status == status
    assert b"root:" not in body and b"volumes" not in body


def test_files_that_are_not_volume_data_are_never_served(demo_session):
    folder = demo_session.mounts()["image"]
    (folder / "config.yaml").write_text("server:\n  token: secret-of-the-proofreader\n")
    try:
        response, body = request(demo_session, "/data/image/config.yaml")
        assert response.status == 403 and b"secret" not in body
    finally:
        (folder / "config.yaml").unlink()


def test_cors_preflight(demo_session):
    response, _ = request(demo_session, "/data/image/info", method="OPTIONS")
    assert response.status == 204
    assert "GET" in response.getheader("Access-Control-Allow-Methods")


def test_landing_page_and_info_api(demo_session):
    response, body = request(demo_session, "/")
    assert response.status == 200 and b"promptcut" in body
    status, info = api(demo_session, "/api/v1/info")
    assert status == 200
    assert info["viewer_url"].startswith("http://127.0.0.1:")
    assert info["credits"] == "Janelia FlyEM / neuroproof_examples"
    assert {"key": "I", "binding": "keyi", "action": "show the segment under the mouse"} \
        in info["keys"]


def test_segment_api_reports_the_volume_and_refuses_background(demo_session):
    volume = demo_session.project.volume("segmentation")
    sv = volume.read(slice(80, 81), slice(100, 101), slice(90, 91)).item()
    status, described = api(demo_session, "/api/v1/segment_at?z=80&y=100&x=90")
    assert status == 200 and described["segment"] == sv
    assert described["voxel"] == {"x": 90, "y": 100, "z": 80}
    all_voxels = volume.read(slice(None), slice(None), slice(None))
    assert described["voxels"] == int((all_voxels == sv).sum())
    status, answer = api(demo_session, "/api/v1/segment_at?z=999&y=0&x=0")
    assert status == 400 and "outside" in answer["error"]
    status, _ = api(demo_session, "/api/v1/segment_at?z=a&y=0&x=0")
    assert status == 400


def test_viewer_state_is_set_explicitly(demo_session):
    state = demo_session.viewer.state
    assert list(state.dimensions.names) == ["x", "y", "z"]
    assert [d.scale for d in state.dimensions] == pytest.approx([1e-8] * 3)
    assert list(state.position) == [125.5, 125.5, 80.5]
    assert state.cross_section_scale > 0
    assert state.layers["image"].source[0].url.startswith("precomputed://http://127.0.0.1:")
    assert segmentation_layer(state).type == "segmentation"
    bindings = demo_session.viewer.config_state.state.input_event_bindings.viewer
    assert bindings["keyi"] == "promptcut: show the segment under the mouse"  # readable in H


def test_axis_conversion_is_a_round_trip():
    assert to_viewer((1, 2, 3)) == [3.0, 2.0, 1.0]
    assert from_viewer([3.7, 2.2, 1.9]) == (1, 2, 3)


def test_info_action_reports_the_id_the_volume_holds(demo_session):
    router = demo_session.router
    volume = demo_session.project.volume("segmentation")
    seen = router.last_sequence
    router.submit("promptcut-info", Pointer((80, 100, 90), {})).result(timeout=10)
    report = router.wait_for_report(seen, 10)
    expected = volume.read(slice(80, 81), slice(100, 101), slice(90, 91)).item()
    assert report.ok and report.message.startswith(f"segment {expected}:")
    status = demo_session.viewer.config_state.state.status_messages["promptcut"]
    assert status == report.message


def test_action_errors_become_status_messages(demo_session):
    router = demo_session.router
    report = router.submit("promptcut-info", Pointer(None, {})).result(timeout=10)
    assert not report.ok and "move the mouse" in report.message
    report = router.submit("promptcut-info", Pointer((0, 0, 9999), {})).result(timeout=10)
    assert not report.ok and "outside the volume" in report.message


def test_dispatch_returns_before_slow_work_finishes(demo_session):
    """Handlers only queue work: the viewer's IOLoop is never held by an action."""
    router = demo_session.router
    release = threading.Event()
    ran_on = []

    def slow(pointer):
        ran_on.append(threading.current_thread().name)
        release.wait(10)
        return "done"

    router.register(Action("promptcut-test-slow", "keyq", "slow test action", slow))

    class FakeState:
        mouse_voxel_coordinates = [1.5, 2.5, 3.5]
        selected_values = {}

    future = router.dispatch("promptcut-test-slow", FakeState())
    assert not future.done()  # the action waits for release: dispatch returned without it
    release.set()
    assert future.result(timeout=10).message == "done"
    assert ran_on[0].startswith("promptcut-action")
    router.actions.pop("promptcut-test-slow")


def test_describe_segment_counts_voxels_and_refuses_background(tmp_path):
    from promptcut.config import load_config
    from promptcut.setup_project import prepare_project
    from server.app import ServerSession
    from tests.conftest import write_config

    labels = np.zeros((4, 5, 6), np.uint32)
    labels[:2] = 7
    labels[2:, :, :3] = 9
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "image.npy", np.zeros(labels.shape, np.uint8))
    config = load_config(write_config(tmp_path, tmp_path / "x", image={"path": "image.npy"},
                                      segmentation={"path": "labels.npy"}))
    session = ServerSession(config.serve_settings(),
                            prepare_project(config, progress=False))
    described = session.describe_segment((3, 4, 0))
    assert (described.segment, described.voxels, described.supervoxels) == (9, 30, 1)
    assert session.describe_segment((0, 0, 0)).voxels == 60
    with pytest.raises(InputError, match="background"):
        session.describe_segment((3, 4, 5))


def test_segments_of_a_segmented_project_count_all_their_supervoxels(segmented_session):
    session = segmented_session
    labels = session.project.volume("segmentation").read(slice(None), slice(None), slice(None))
    supervoxel = int(labels[80, 125, 125])
    described = session.describe_segment((80, 125, 125))
    members = session.proofreading.members_of(described.segment)
    assert described.supervoxel == supervoxel and supervoxel in members.tolist()
    assert described.supervoxels == len(members) > 1
    assert described.voxels == int(np.isin(labels, members).sum())


def test_supervoxel_chunks_and_meshes_are_served_and_viewers_hold_the_membership(
        segmented_session):
    session = segmented_session
    generation = session.membership_view.generation
    response, body = request(session, f"/segments/g{generation}/info")
    info = json.loads(body)
    assert info["scales"][0]["encoding"] == "raw" and info["mesh"] == "mesh"
    dtype = np.dtype(info["data_type"])
    key = info["scales"][0]["key"]
    response, body = request(session, f"/segments/g{generation}/{key}/0-64_64-128_0-64")
    assert response.status == 200
    served = np.frombuffer(body, dtype).reshape(64, 64, 64)  # z, y, x with x fastest
    supervoxels = session.project.volume("segmentation").read(slice(0, 64), slice(64, 128),
                                                              slice(0, 64))
    np.testing.assert_array_equal(served, supervoxels)
    supervoxel = int(served[10, 10, 10])
    # the pipeline's sharded meshes, served unsharded (the manifest, fragments by byte range)
    mesh_info = json.loads(request(session, f"/segments/g{generation}/mesh/info")[1])
    assert mesh_info["@type"] == "neuroglancer_multilod_draco" and "sharding" not in mesh_info
    volume = session.project.volume("segmentation")
    everything = volume.read(slice(None), slice(None), slice(None))
    vertices = served_mesh(session, f"/segments/g{generation}", supervoxel)
    assert_mesh_wraps(vertices, np.argwhere(everything == supervoxel), volume.voxel_size,
                      scale=1)  # the pipeline meshes supervoxels from scale 1
    for path in (f"mesh/{2 ** 40}.index", "mesh/..%2Finfo", "mesh/info.index"):
        assert request(session, f"/segments/g{generation}/{path}")[0].status == 404, path
    response, _ = request(session, f"/segments/g{generation}/mesh/{supervoxel}",
                          headers={"Range": "bytes=100000000-"})
    assert response.status == 416
    # the viewer draws each segment as one equivalence group of its supervoxels
    layer = segmentation_layer(session.viewer.state)
    segment = session.proofreading.segment_of(supervoxel)
    members = sorted(session.proofreading.members_of(segment).tolist())
    (group,) = [{int(v) for v in g} for g in layer.equivalences.sets() if members[0] in g]
    assert len(members) > 1 and set(members) <= group
    # besides them only supervoxels a division retired (coarser scales still hold their ids)
    extra = np.array(sorted(group - set(members)), np.uint64)
    assert not session.proofreading.segments_of(extra).any()
    assert session.membership_view.shown_as(segment) == members[0]
    assert session.membership_view.segment_of(members[-1]) == segment


def test_each_proofreader_gets_a_viewer_of_their_own(segmented_session):
    session = segmented_session
    status, answer = api(session, "/api/v1/viewer?user=alice")
    assert status == 200 and answer["user"] == "alice"
    assert answer["viewer_url"] != session.viewer_url and "alice" in session.viewers
    assert "promptcut-merge" in session.routers["alice"].actions  # alice's own keys
    assert api(session, "/api/v1/viewer?user=alice")[1] == answer  # the same viewer again
    status, answer = api(session, "/api/v1/viewer?user=no%20spaces")
    assert status == 400 and "user name" in answer["error"]


def test_only_chunks_of_the_served_grid_are_read_and_the_cache_stays_bounded(segmented_session):
    from server.segments import SegmentSource

    session = segmented_session
    generation = session.membership_view.generation
    info = json.loads(request(session, f"/segments/g{generation}/info")[1])
    scale = info["scales"][0]
    key, (x, y, z) = scale["key"], scale["size"]
    cx, cy, cz = scale["chunk_sizes"][0]
    for name in (f"0-{x}_0-{y}_0-{z}",  # the whole volume in one request
                 f"1-{cx + 1}_0-{cy}_0-{cz}", f"0-{cx}_0-{cy}", "a-b_c-d_e-f"):
        response, body = request(session, f"/segments/g{generation}/{key}/{name}")
        assert response.status == 400, name
        assert "not a chunk" in body.decode()
    response, _ = request(session, f"/segments/g{generation}/{key}/0-{cx}_0-{cy}_0-{cz}")
    assert response.status == 200
    response, _ = request(session, f"/segments/g{generation}/nosuchscale/0-{cx}_0-{cy}_0-{cz}")
    assert response.status == 404
    source = SegmentSource(session.segment_source.root, session.membership_view,
                           lambda sv: True, cache_bytes=3 * cx * cy * cz * 8)
    for i in range(6):
        source.chunk(key, f"0-{cx}_0-{cy}_{i * cz}-{min((i + 1) * cz, z)}")
    assert source._cached_bytes <= 3 * cx * cy * cz * 8 and len(source._cache) < 6


def test_a_division_loads_the_new_voxels_out_of_sight_and_then_draws_them(segmented_session,
                                                                       monkeypatch):
    """The viewer keeps drawing the old voxels while the other segmentation layer loads the
    divided ones with no opacity, and swaps once the browser has stopped asking for their
    chunks (long before the limit): the drawn layer's source never changes."""
    import server.app
    from server.viewer import SEGMENTATION_LAYERS, segmentation_name, voxels_loading

    monkeypatch.setattr(server.app, "VOXELS_LOAD_LIMIT", 120.0)
    session = segmented_session
    proof = session.proofreading
    labels = proof.supervoxels.read(slice(None), slice(None), slice(None))
    supervoxel = int(labels[40, 125, 125])
    voxels = np.argwhere(labels[40] == supervoxel)
    first = (40,) + tuple(int(v) for v in voxels[0])
    second = (40,) + tuple(int(v) for v in voxels[np.argmax(np.abs(voxels - voxels[0]).sum(1))])
    drawn = segmentation_name(session.viewer.state)
    spare = next(n for n in SEGMENTATION_LAYERS if n != drawn)
    old_url = str(session.viewer.state.layers[drawn].source[0].url)

    def loading() -> bool:
        return voxels_loading(session.viewer.state)

    try:
        session.service.split_supervoxel("proofreader", [first], [second])
        new_url = session.source_url("segmentation")
        state = session.viewer.state
        assert new_url != old_url and segmentation_name(state) == drawn
        assert str(state.layers[drawn].source[0].url) == old_url
        assert str(state.layers[spare].source[0].url) == new_url
        assert state.layers[spare].selected_alpha == 0 == state.layers[spare].object_alpha
        assert state.layers[spare].equivalences.to_json() == \
            state.layers[drawn].equivalences.to_json()
        served = f"/segments/g{session.membership_view.generation}"
        # the divided supervoxel has no mesh now; a piece's is made when first asked for
        piece = proof.successors()[supervoxel]
        assert served_mesh(session, served, supervoxel) is None
        divided = proof.supervoxels.read(slice(None), slice(None), slice(None))
        assert_mesh_wraps(served_mesh(session, served, piece), np.argwhere(divided == piece),
                          proof.supervoxels.voxel_size)
        key = json.loads(request(session, f"{served}/info")[1])["scales"][0]["key"]
        request(session, f"{served}/{key}/0-64_64-128_0-64")  # the browser asks for a chunk
        deadline = time.monotonic() + 60  # half the limit: the swap follows the requests
        while loading() and time.monotonic() < deadline:
            time.sleep(0.05)
        state = session.viewer.state
        assert state.layers[drawn].archived and segmentation_name(state) == spare
        assert str(state.layers[spare].source[0].url) == new_url
        assert state.layers[spare].selected_alpha == 0.5
        assert state.selected_layer.layer == spare
    finally:
        session.service.undo("proofreader")
        deadline = time.monotonic() + 30  # the undo's voxels swapped in by the limit
        monkeypatch.setattr(server.app, "VOXELS_LOAD_LIMIT", 0.0)
        while loading() and time.monotonic() < deadline:
            time.sleep(0.05)


def test_an_export_from_the_server_holds_the_em_beside_the_labels(segmented_session, tmp_path):
    """The HTTP API's and Shift+E's export go through the edit service: its OME-Zarr holds the
    EM image with the label image under it, as `promptcut export` does."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    folder = segmented_session.service.export(tmp_path / "export")
    nodes = list(Reader(parse_url(str(folder / "segmentation.zarr")))())
    images = [n for n in nodes if n.load(Multiscales) and not n.load(Label)]
    assert len(images) == 1 and any(n.load(Label) for n in nodes)
    assert images[0].data[0].shape == segmented_session.project.volume("image").shape
