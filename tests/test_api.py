"""The HTTP API (/api/v1) and the Python client against a running server on a private copy of
the segmented demo: edits, questions, bad input, and who may do what."""

from __future__ import annotations

import http.client
import json
import shutil
import socket

import numpy as np
import pytest

from promptcut.client import ApiError, Client
from promptcut.setup_project import prepare_project
from segmentation.editlog import remove_log
from segmentation.errors import InputError
from segmentation.proofread import LOG_NAME
from server.access import Access
from server.app import ServerSession
from server.viewer import segmentation_layer, segmentation_name
from tests.browser_util import inside, touching_pair


@pytest.fixture(scope="module")
def served(segmented_config, tmp_path_factory):
    """A server over its own copy of the segmented demo (fresh edit log)."""
    import dataclasses

    folder = tmp_path_factory.mktemp("api")
    shutil.copytree(segmented_config.project_dir, folder / "project")
    remove_log(folder / "project" / LOG_NAME)
    config = dataclasses.replace(segmented_config, project=str(folder / "project"))
    session = ServerSession(config.serve_settings(), prepare_project(config, progress=False))
    session.start()
    labels = session.proofreading.supervoxels.read(slice(None), slice(None), slice(None))
    yield session, labels
    session.stop()


@pytest.fixture
def client(served) -> Client:
    session, _ = served
    return Client(session.base_url, session.access.token, user="alice")


def xyz(zyx) -> dict:
    z, y, x = (int(v) for v in zyx)
    return {"x": x, "y": y, "z": z}


def raw(session, path: str, method: str = "GET", body: bytes | None = None,
        headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", session.port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    return response.status, answer


def test_merge_undo_redo_and_history_through_the_client(served, client):
    session, labels = served
    proof = session.proofreading
    sv_a, sv_b = touching_pair(proof, 0)
    at_a, at_b = xyz(inside(labels, sv_a)), xyz(inside(labels, sv_b))
    seg_a, seg_b = client.segment_at(**at_a)["segment"], client.segment_at(**at_b)["segment"]
    assert seg_a != seg_b and seg_a == proof.segment_of(sv_a)
    before = len(client.operations(limit=1000))

    merged = client.merge(at_a, at_b)
    assert merged["type"] == "merge" and merged["user"] == "alice"
    assert merged["operation"] > 0 and merged["milliseconds"] >= 0
    (removed,) = merged["removed"]  # one of the two names is gone, the other is the neuron's
    assert "merged" in merged["message"]
    joined = client.segment_at(**at_a)["segment"]
    assert {removed, joined} == {seg_a, seg_b}
    assert client.segment_at(**at_b)["segment"] == joined
    members = client.members(joined)
    assert {sv_a, sv_b} <= set(members)
    summary = client.segment(joined)
    assert summary["supervoxels"] == len(members) and summary["voxels"] > 0
    assert all(summary["bbox"]["start"][a] <= at_a[a] < summary["bbox"]["stop"][a] for a in "xyz")

    history = client.operations(after=before)
    assert [(h["type"], h["user"]) for h in history] == [("merge", "alice")]
    assert history[0]["id"] == merged["operation"] and joined in history[0]["segments"]

    with pytest.raises(ApiError) as refused:  # bob has nothing to undo
        client.undo(user="bob")
    assert refused.value.status == 400
    undone = client.undo()
    assert undone["type"] == "undo"
    assert client.segment_at(**at_a)["segment"] != client.segment_at(**at_b)["segment"]
    redone = client.redo()
    assert redone["type"] == "redo"
    assert client.segment_at(**at_a)["segment"] == client.segment_at(**at_b)["segment"]
    client.undo()
    assert [h["type"] for h in client.operations(after=before)] == [
        "merge", "undo", "redo", "undo"]


def test_split_prompt_cut_and_supervoxel_split_through_the_client(served, client):
    session, labels = served
    proof = session.proofreading
    sv_a, sv_b = touching_pair(proof, 1)
    at_a, at_b = xyz(inside(labels, sv_a)), xyz(inside(labels, sv_b))
    client.merge(at_a, at_b)
    split = client.split([at_a], [at_b])
    assert split["type"] == "split" and len(split["segments"]) == 2
    assert client.segment_at(**at_a)["segment"] != client.segment_at(**at_b)["segment"]
    client.merge(at_a, at_b)
    cut = client.prompt_cut([at_a], [at_b])
    assert cut["type"] == "prompt-cut"
    assert client.segment_at(**at_a)["segment"] != client.segment_at(**at_b)["segment"]

    big = int(proof.graph.ids[np.argmax(proof.graph.size)])
    voxels = np.argwhere(labels == big)
    first, last = xyz(voxels[0]), xyz(voxels[-1])
    divided = client.split_supervoxel([first], [last])
    assert divided["type"] == "split-supervoxel" and "divided" in divided["message"]
    assert client.segment_at(**first)["supervoxel"] != client.segment_at(**last)["supervoxel"]
    for _ in range(5):
        client.undo()


def test_points_in_nanometres_name_the_same_voxel(served, client):
    session, labels = served
    nm = session.project.volume("image").voxel_size  # z, y, x
    voxel = {"x": 90, "y": 100, "z": 80}
    in_nm = {a: (voxel[a] + 0.5) * nm["zyx".index(a)] for a in "xyz"}
    assert client.segment_at(**in_nm, unit="nm") == client.segment_at(**voxel)


@pytest.mark.parametrize("path, body, words", [
    ("/api/v1/merge", b"not json", "not JSON"),
    ("/api/v1/merge", b"[1, 2]", "JSON object"),
    ("/api/v1/merge", json.dumps({"first": {"x": 1, "y": 2}, "second": {"x": 1, "y": 2,
                                                                     "z": 3}}), "x, y and z"),
    ("/api/v1/merge", json.dumps({"first": {"x": 1e9, "y": 2, "z": 3},
                                  "second": {"x": 1, "y": 2, "z": 3}}), "outside the volume"),
    ("/api/v1/merge", json.dumps({"first": {"x": "a", "y": 2, "z": 3},
                                  "second": {"x": 1, "y": 2, "z": 3}}), "must be a number"),
    ("/api/v1/merge", json.dumps({"first": {"x": 1, "y": 2, "z": 3, "unit": "mm"},
                                  "second": {"x": 1, "y": 2, "z": 3}}), "unit"),
    ("/api/v1/merge", json.dumps({"user": "no spaces", "first": {}, "second": {}}),
     "user name"),
    ("/api/v1/split", json.dumps({"sources": []}), "non-empty list"),
    ("/api/v1/merge", json.dumps({"first": {"x": 90, "y": 100, "z": 80},
                                  "second": {"x": 90, "y": 100, "z": 80}}), "nothing to merge"),
    ("/api/v1/operations?after=abc", None, "integer"),
    ("/api/v1/segments/999999999", None, "no segment"),
])
def test_bad_input_is_a_4xx_with_one_line_and_changes_nothing(served, path, body, words):
    session, _ = served
    operations = len(session.proofreading.log)
    status, answer = raw(session, path, "POST" if body is not None else "GET",
                         body.encode() if isinstance(body, str) else body,
                         {"Authorization": f"Bearer {session.access.token}"})
    assert 400 <= status < 500, answer
    message = json.loads(answer)["error"]
    assert words in message and "\n" not in message
    assert len(session.proofreading.log) == operations


def test_openapi_description_lists_every_route(served):
    session, _ = served
    status, answer = raw(session, "/api/v1/openapi.json")  # readable without the token
    schema = json.loads(answer)
    assert status == 200 and schema["openapi"].startswith("3.")
    for route in ("merge", "split", "prompt_cut", "split_supervoxel", "review", "undo", "redo",
                  "operations", "segment_at", "segments", "segments/{segment}/members", "show",
                  "export", "question", "answer", "skip", "back"):
        assert f"/api/v1/{route}" in schema["paths"]


# -- access -------------------------------------------------------------------------------------
def test_the_api_needs_the_token(served):
    session, labels = served
    operations = len(session.proofreading.log)
    merge = json.dumps({"first": {"x": 90, "y": 100, "z": 80},
                        "second": {"x": 10, "y": 10, "z": 10}}).encode()
    for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"},
                    {"Authorization": session.access.token}):
        for path, body in (("/api/v1/info", None), ("/api/v1/viewer?user=eve", None),
                           ("/api/v1/merge", merge), ("/api/v1/export", b"{}")):
            status, answer = raw(session, path, "POST" if body else "GET", body,
                                 {**headers, "Content-Type": "text/plain"})
            assert status == 401, (path, headers)
            assert b"viewer" not in answer and session.access.token.encode() not in answer
    assert len(session.proofreading.log) == operations
    assert "eve" not in session.viewers


def test_the_api_sends_no_cors_headers_but_data_stays_readable(served):
    session, _ = served
    status, _ = raw(session, "/api/v1/merge", "OPTIONS",
                    headers={"Origin": "http://evil.example", "Access-Control-Request-Method":
                             "POST", "Access-Control-Request-Headers": "authorization"})
    assert status in (401, 405)
    connection = http.client.HTTPConnection("127.0.0.1", session.port, timeout=30)
    connection.request("GET", "/api/v1/info", headers={"Origin": "http://evil.example"})
    response = connection.getresponse()
    response.read()
    assert response.getheader("Access-Control-Allow-Origin") is None
    connection.request("GET", "/data/image/info", headers={"Origin": "http://evil.example"})
    response = connection.getresponse()
    response.read()
    assert response.status == 200 and response.getheader("Access-Control-Allow-Origin") == "*"
    connection.close()


def test_requests_for_another_host_name_are_refused(served):
    session, _ = served
    token = {"Authorization": f"Bearer {session.access.token}"}
    for path in ("/api/v1/info", "/data/image/info", "/"):
        status, _ = raw(session, path, headers={**token, "Host": f"evil.example:{session.port}"})
        assert status == 403, path
        assert raw(session, path, headers={**token, "Host": "[::1"})[0] == 403  # malformed
        status, _ = raw(session, path, headers={**token, "Host": f"localhost:{session.port}"})
        assert status == 200, path
    # neuroglancer's own server too (the viewer page, its state and actions)
    from urllib.parse import urlsplit

    viewer = urlsplit(session.viewer_url)
    for host, expected in ((f"evil.example:{viewer.port}", 403),
                           (f"127.0.0.1:{viewer.port}", 200)):
        connection = http.client.HTTPConnection(viewer.hostname, viewer.port, timeout=30)
        connection.request("GET", viewer.path, headers={"Host": host})
        response = connection.getresponse()
        response.read()
        connection.close()
        assert response.status == expected, host


def test_large_bodies_are_refused_and_the_server_goes_on(served):
    session, _ = served
    token = {"Authorization": f"Bearer {session.access.token}"}
    try:
        status, _ = raw(session, "/api/v1/merge", "POST", b"x" * (4 << 20), token)
    except (ConnectionError, http.client.HTTPException, socket.timeout):
        status = None  # tornado may close the connection instead of answering
    assert status in (None, 400, 413)
    assert raw(session, "/api/v1/info", headers=token)[0] == 200


def test_a_non_loopback_address_needs_a_configured_token(monkeypatch):
    monkeypatch.delenv("PROMPTCUT_TOKEN", raising=False)
    with pytest.raises(InputError, match="server.token"):
        Access.for_server("0.0.0.0", None, None)
    with pytest.raises(InputError, match="at least 16"):
        Access.for_server("0.0.0.0", "short", None)
    assert Access.for_server("0.0.0.0", "a-long-enough-secret", None).token == \
        "a-long-enough-secret"
    monkeypatch.setenv("PROMPTCUT_TOKEN", "from-the-environment-1")
    assert Access.for_server("127.0.0.1", None, None).token == "from-the-environment-1"
    monkeypatch.delenv("PROMPTCUT_TOKEN")
    first, second = Access.for_server("127.0.0.1", None, None), \
        Access.for_server("127.0.0.1", None, None)
    assert first.token != second.token and len(first.token) >= 24  # random per start
    assert first.viewer_token("alice") != first.viewer_token("bob")
    assert first.viewer_token("alice") != second.viewer_token("alice")


def test_a_viewer_without_its_segmentation_layer_does_not_turn_edits_into_errors(served,
                                                                                  client):
    session, labels = served
    viewer = session.viewer_for("mallory")
    with viewer.txn() as s:
        del s.layers[segmentation_name(s)]
    sv_a, sv_b = touching_pair(session.proofreading, 2)
    at_a, at_b = xyz(inside(labels, sv_a)), xyz(inside(labels, sv_b))
    merged = client.merge(at_a, at_b)
    assert "merged" in merged["message"]
    assert client.undo()["type"] == "undo"  # and the next edit too
    other = segmentation_layer(session.viewer.state)  # others were updated
    assert sorted(sorted(int(v) for v in g) for g in other.equivalences.sets()) == \
        sorted(session.membership_view.picture().groups)


EVIL_PAGE = """<!doctype html><html><body><script>
const base = '%(base)s', viewer = '%(viewer_origin)s';
const merge = JSON.stringify({first: {x: 90, y: 100, z: 80}, second: {x: 10, y: 10, z: 10}});
const results = {};
async function attempt(name, run) {
  try { results[name] = String(await run()); } catch (e) { results[name] = 'blocked: ' + e; }
}
(async () => {
  await attempt('info', async () => (await fetch(base + '/api/v1/info')).text());
  await attempt('viewer', async () => (await fetch(base + '/api/v1/viewer?user=eve')).text());
  await attempt('schema', async () => (await fetch(base + '/api/v1/openapi.json')).text());
  await attempt('merge', async () => (await fetch(base + '/api/v1/merge',
      {method: 'POST', body: merge, headers: {'Content-Type': 'text/plain'}})).status);
  await attempt('merge-blind', async () => (await fetch(base + '/api/v1/merge',
      {method: 'POST', body: merge, mode: 'no-cors'})).type);
  await attempt('merge-guess', async () => (await fetch(base + '/api/v1/merge',
      {method: 'POST', body: merge, headers: {Authorization: 'Bearer guess'}})).status);
  await attempt('export', async () => (await fetch(base + '/api/v1/export',
      {method: 'POST', body: '{}', mode: 'no-cors'})).type);
  await attempt('landing', async () => (await fetch(base + '/')).text());
  await attempt('neuroglancer', async () => (await fetch(viewer + '/')).text());
  document.title = 'done';
  window.results = results;
})();
</script></body></html>"""


def test_a_page_from_another_origin_can_neither_edit_nor_read_a_token(served, browser):
    """Headless Chromium on a page of another origin (another port) that tries what an
    attacker would: read the API, ask for a viewer, post edits with and without CORS."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    session, _ = served
    viewer_origin = "{0.scheme}://{0.netloc}".format(urlsplit(session.viewer_url))
    page_html = EVIL_PAGE % {"base": session.base_url, "viewer_origin": viewer_origin}

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self):
            body = page_html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    operations, viewers = len(session.proofreading.log), set(session.viewers)
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        page.wait_for_function("document.title === 'done'", timeout=30000)
        results = page.evaluate("window.results")
    finally:
        page.close()
        evil.shutdown()
    secrets = [session.access.token, session.access.viewer_token("proofreader"),
               session.viewer_url]
    for name, outcome in results.items():
        assert not any(secret in outcome for secret in secrets), (name, outcome)
        assert "viewer_url" not in outcome, (name, outcome)
    assert results["info"].startswith("blocked") and results["viewer"].startswith("blocked")
    assert results["merge"].startswith("blocked") and results["merge-guess"].startswith(
        "blocked")
    assert results["merge-blind"] == "opaque"  # sent, unreadable, and refused (below)
    assert len(session.proofreading.log) == operations and set(session.viewers) == viewers
    assert not (session.project.root / "exports").exists()


def test_two_clients_editing_one_segment_at_once_lose_no_update(served):
    """alice and bob merge neighbours into the same segment from two threads at once; every
    acknowledged merge holds afterwards, and an undo that would tear out the other's work is
    refused naming them."""
    import threading

    session, labels = served
    proof = session.proofreading
    sv_a, sv_b = touching_pair(proof, 3)
    segment = proof.segment_of(sv_a)
    graph = proof.graph
    # neighbours of the segment in other segments, to merge in one by one
    rows = proof._nodes(proof.members_of(segment))
    by_segment: dict[int, int] = {}  # one supervoxel of each neighbouring segment
    for n in np.unique(graph.neighbours(rows)):
        if proof.segment[n] not in (segment, 0) and graph.size[n] > 500:
            by_segment.setdefault(int(proof.segment[n]), int(graph.ids[n]))
    around = list(by_segment.values())[:12]
    assert len(around) >= 4
    anchor = xyz(inside(labels, sv_a))
    answers: dict[str, list[dict]] = {"alice": [], "bob": []}

    def work(user: str, targets: list[int]) -> None:
        client = Client(session.base_url, session.access.token, user=user)
        for sv in targets:
            answers[user].append(client.merge(anchor, xyz(inside(labels, sv))))

    threads = [threading.Thread(target=work, args=(user, around[i::2]))
               for i, user in enumerate(("alice", "bob"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers["alice"]) + len(answers["bob"]) == len(around)
    joined = proof.segment_of(sv_a)
    assert all(proof.segment_of(sv) == joined for sv in around)  # no merge was lost
    # alice's merge lies under bob's later one: her undo is refused, naming bob
    alice = Client(session.base_url, session.access.token, user="alice")
    bob = Client(session.base_url, session.access.token, user="bob")
    outside = [int(graph.ids[n]) for n in np.flatnonzero(graph.size > 500)
               if proof.segment[n] not in (0, joined)]
    first = outside[0]
    second = next(sv for sv in outside if proof.segment_of(sv) != proof.segment_of(first))
    alice.merge(anchor, xyz(inside(labels, first)))
    bob.merge(anchor, xyz(inside(labels, second)))
    with pytest.raises(ApiError, match=r"edited since \(by bob, operation \d+\)"):
        alice.undo()
    for user in ("bob", "alice", "bob", "alice") * len(around):  # unwind, newest first
        try:
            Client(session.base_url, session.access.token, user=user).undo()
        except ApiError:
            pass


def test_neuroglancer_s_own_server_refuses_huge_bodies(served):
    """Its action and state posts are small JSON; it used to buffer up to 1 GiB."""
    from urllib.parse import urlsplit

    session, _ = served
    viewer = urlsplit(session.viewer_url)
    token = session.access.viewer_token(session.default_user)
    connection = http.client.HTTPConnection(viewer.hostname, viewer.port, timeout=30)
    try:
        connection.request("POST", f"/action/{token}", body=b"x" * (40 << 20))
        status = connection.getresponse().status
    except (ConnectionError, http.client.HTTPException, socket.timeout):
        status = None  # closed while we were still sending
    finally:
        connection.close()
    assert status in (None, 400, 413)
    assert raw(session, "/api/v1/info",
               headers={"Authorization": f"Bearer {session.access.token}"})[0] == 200


def test_another_proofreader_s_edit_is_announced_in_my_status_line(served):
    from server.app import OTHERS_STATUS

    session, labels = served
    alice = session.viewer_for("alice")
    sv_a, sv_b = touching_pair(session.proofreading, 5)
    bob = Client(session.base_url, session.access.token, user="bob")
    merged = bob.merge(xyz(inside(labels, sv_a)), xyz(inside(labels, sv_b)))
    news = alice.config_state.state.status_messages[OTHERS_STATUS]
    assert news.startswith("bob: merged") and f"operation {merged['operation']}" in news
    bob.undo()
    assert "bob: undid merge" in alice.config_state.state.status_messages[OTHERS_STATUS]
    Client(session.base_url, session.access.token, user="alice").merge(
        xyz(inside(labels, sv_a)), xyz(inside(labels, sv_b)))
    assert "bob" in alice.config_state.state.status_messages[OTHERS_STATUS]  # not her own
    Client(session.base_url, session.access.token, user="alice").undo()


def test_the_served_membership_keeps_step_with_edits_from_many_threads(served):
    """Edits from several threads (API requests, each user's key worker) must reach the
    served membership in the order the session applied them."""
    import threading

    session, labels = served
    proof = session.proofreading
    pairs = [touching_pair(proof, i) for i in range(6, 10)]

    applied: list[str] = []  # the edits the server acknowledged

    def work(user, pair):
        client = Client(session.base_url, session.access.token, user=user)
        a, b = (xyz(inside(labels, sv)) for sv in pair)
        for _ in range(5):
            try:
                applied.append(client.merge(a, b)["type"])
                applied.append(client.undo()["type"])
            except ApiError:  # another thread's edit came between: refused, nothing changed
                pass

    operations = len(proof.log)
    threads = [threading.Thread(target=work, args=(f"user{i}", pair))
               for i, pair in enumerate(pairs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # the pairs share segments, so some edits are refused; those acknowledged are all logged
    assert "merge" in applied and len(proof.log) == operations + len(applied), applied
    ids, segments = proof.membership()
    served_segments = session.membership_view.map(ids)
    np.testing.assert_array_equal(served_segments.astype(np.uint64), segments)


def test_review_marks_and_the_segment_list_through_the_client(served, client):
    session, labels = served
    listed = client.segments(limit=5)
    assert len(listed) == 5 and listed[0]["voxels"] >= listed[-1]["voxels"]
    segment = listed[-1]["segment"]
    answer = client.review(segment)
    assert answer["type"] == "review" and "marked reviewed" in answer["message"]
    marked = {s["segment"]: s for s in client.segments(limit=1)}
    assert marked[segment]["reviewed"]["user"] == "alice"  # listed however small it is
    with pytest.raises(ApiError, match="segment id"):
        client._edit("review", None, segment="three")
    with pytest.raises(ApiError, match="preview"):
        client._edit("undo", None, preview=True)
    assert client.undo()["type"] == "undo"
    assert segment not in {s["segment"] for s in client.segments(limit=1)}
    where = client._request("POST", "/api/v1/show", {"user": "alice", "segment": segment})
    assert set(where["voxel"]) == {"x", "y", "z"}
    voxel = (where["voxel"]["z"], where["voxel"]["y"], where["voxel"]["x"])
    assert session.proofreading.segment_of(int(labels[voxel])) == segment


def test_a_preview_over_the_api_answers_the_sides_and_logs_nothing(served, client):
    session, labels = served
    proof = session.proofreading
    sv_a, sv_b = touching_pair(proof, 4)
    at_a, at_b = xyz(inside(labels, sv_a)), xyz(inside(labels, sv_b))
    operations = len(proof.log)
    answer = client.merge(at_a, at_b, preview=True)
    assert answer["preview"] is True and answer["type"] == "merge"
    (side,) = answer["sizes"]
    members = [proof.segment_of(sv_a), proof.segment_of(sv_b)]
    graph = proof.graph
    expected = sum(int(graph.size[graph.node_index(proof.members_of(s))].sum()) for s in members)
    assert side["voxels"] == expected and len(proof.log) == operations
    assert proof.segment_of(sv_a) != proof.segment_of(sv_b)
    merged = client.merge(at_a, at_b)
    assert merged["segments"] == [side["segment"]]
    client.undo()


def test_focused_proofreading_questions_answers_skip_and_back_through_the_client(served):
    session, labels = served
    alice = Client(session.base_url, session.access.token, user="alice")
    bob = Client(session.base_url, session.access.token, user="bob")
    asked = alice.question()
    assert asked is not None and asked == alice.question()  # open until answered
    assert not set(asked["segments"]) & set(bob.question()["segments"])  # not shared
    first, second = asked["points"]
    assert labels[first["z"], first["y"], first["x"]] != 0
    assert alice.segment_at(**first)["segment"] == asked["segments"][0]
    operations = len(alice.operations(limit=1000))

    answered = alice.answer(yes=False)  # kept apart: logged, nothing moved
    assert answered["type"] == "separate" and "apart" in answered["message"]
    assert answered["next"] is not None and answered["next"]["segments"] != asked["segments"]
    assert len(alice.operations(limit=1000)) == operations + 1
    assert alice.segment_at(**first)["segment"] != alice.segment_at(**second)["segment"]

    merged = alice.answer(yes=True)  # the next one, merged
    points = answered["next"]["points"]
    assert merged["type"] == "merge"
    assert alice.segment_at(**points[0])["segment"] == alice.segment_at(**points[1])["segment"]

    back = alice.back()  # the merge undone, its question open again
    assert back["undone"]["type"] == "undo" and back["question"] == answered["next"]
    assert alice.segment_at(**points[0])["segment"] != alice.segment_at(**points[1])["segment"]
    skipped = alice.skip()
    assert skipped is not None and skipped["segments"] != answered["next"]["segments"]
    with pytest.raises(ApiError, match="'yes' or 'no'") as refused:
        alice._request("POST", "/api/v1/answer", {"user": "alice", "answer": "maybe"})
    assert refused.value.status == 400
    alice.back(), alice.back()  # the skip, then the "no" undone: as it was
    bob.skip()
    assert len(alice.operations(limit=1000)) == operations + 4  # separate, merge, two undos
    assert alice.question() == asked  # the first question, open again


def test_back_after_undoing_an_answer_with_u_reopens_the_question(served):
    session, _ = served
    dave = Client(session.base_url, session.access.token, user="dave")
    asked = dave.question()
    dave.answer(yes=False)
    dave.undo()  # U instead of back: the answer is undone already
    back = dave.back()
    assert back["question"] == asked and back["undone"] is None
    assert dave.question() == asked
    dave.skip()
