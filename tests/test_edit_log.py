"""The edit log is tied to its segmentation and never starts short or damaged without saying so;
a server killed in the middle of an edit burst loses no acknowledged edit."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from promptcut.cli import main
from promptcut.client import ApiError, Client
from segmentation.editlog import EditLog, LogError
from segmentation.project import Project
from segmentation.proofread import LOG_NAME, open_session
from tests.browser_util import inside, touching_pair
from tests.test_cli_errors import REPO

DELTA = np.array([[1, 1, 2]], np.uint64)


def filled(path, operations=3, fingerprint="fp-a") -> None:
    log = EditLog(path, fingerprint)
    for _ in range(operations):
        log.append("alice", "merge", {}, DELTA)
    log.close()


def test_a_log_for_another_segmentation_is_refused_naming_the_file(tmp_path):
    filled(tmp_path / "log.sqlite")
    assert len(EditLog(tmp_path / "log.sqlite", "fp-a")) == 3
    with pytest.raises(LogError, match=r"log\.sqlite was made on another segmentation"):
        EditLog(tmp_path / "log.sqlite", "fp-b")


@pytest.mark.parametrize("damage", ["empty", "garbage", "replaced"])
def test_a_short_or_damaged_log_is_refused(tmp_path, damage):
    path = tmp_path / "log.sqlite"
    filled(path)
    if damage == "empty":  # a zero-length file: sqlite would open it as a new, empty log
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    else:  # an older copy with fewer operations put back in its place
        (tmp_path / "older").mkdir()
        filled(tmp_path / "older" / "log.sqlite", operations=1)
        path.write_bytes((tmp_path / "older" / "log.sqlite").read_bytes())
    with pytest.raises(LogError, match=r"log\.sqlite") as refused:
        EditLog(path, "fp-a")
    assert "\n" not in str(refused.value)
    if damage != "garbage":
        assert "edit(s) are missing" in str(refused.value)


def test_a_torn_wal_is_refused(tmp_path):
    """The last commits live in the WAL until a checkpoint; cut it short, as a crash in the
    middle of writing it would, and the log comes back with fewer operations."""
    path = tmp_path / "log.sqlite"
    log = EditLog(path, "fp-a")
    log._db.execute("PRAGMA wal_autocheckpoint=0")
    for _ in range(5):
        log.append("alice", "merge", {}, DELTA)
    copy = tmp_path / "copy"
    copy.mkdir()
    for suffix in ("", "-wal", ".acknowledged"):
        (copy / f"log.sqlite{suffix}").write_bytes(path.with_name(path.name + suffix)
                                                   .read_bytes())
    log.close()
    wal = copy / "log.sqlite-wal"
    wal.write_bytes(wal.read_bytes()[:-3000])  # the last frames torn off
    with pytest.raises(LogError, match="missing"):
        EditLog(copy / "log.sqlite", "fp-a")


def test_durability_is_configurable(tmp_path):
    assert EditLog(tmp_path / "a.sqlite")._db.execute("PRAGMA synchronous").fetchone()[0] == 1
    full = EditLog(tmp_path / "b.sqlite", synchronous="FULL")
    assert full._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(Exception, match="synchronous"):
        EditLog(tmp_path / "c.sqlite", synchronous="OFF")


def test_a_row_naming_an_unknown_supervoxel_stops_start_up(edited, capsys):
    config_path, project = edited[0], edited[1]
    log = EditLog(project.root / LOG_NAME)
    log.append("mallory", "merge", {}, np.array([[987654321, 1, 2]], np.uint64))
    log.close()
    with pytest.raises(LogError, match="supervoxel 987654321 is not in the graph"):
        open_session(project)
    assert main(["export", "--config", str(config_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("promptcut: error: edit log") and LOG_NAME in err[-1]


def test_a_log_from_before_a_new_segmentation_is_refused(edited, capsys):
    config_path, project = edited[0], edited[1]
    db = sqlite3.connect(project.root / LOG_NAME)
    db.execute("UPDATE meta SET value = 'another' WHERE key = 'fingerprint'")
    db.commit()
    db.close()
    assert main(["export", "--config", str(config_path), "--quiet"]) == 2
    assert "made on another segmentation" in capsys.readouterr().err


def test_kill_9_during_an_edit_burst_loses_no_acknowledged_edit(edited):
    """A server killed without warning in the middle of a burst of HTTP edits: every edit
    it acknowledged is in the log, and replaying the log gives the same membership twice."""
    config_path, project = edited[0], edited[1]
    session = open_session(project)
    labels = session.supervoxels.read(slice(None), slice(None), slice(None))
    pairs = [touching_pair(session, i) for i in range(3, 9)]
    points = [tuple(reversed(inside(labels, sv))) for pair in pairs for sv in pair]  # x, y, z
    session.log.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "kill-nine-test-token"
    server = subprocess.Popen(
        [sys.executable, "-m", "promptcut.cli", "serve", "--config", str(config_path),
         "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**__import__("os").environ, "PROMPTCUT_TOKEN": token})
    acknowledged: list[int] = []
    try:
        for line in server.stdout:
            if "landing page:" in line:
                break
        client = Client(f"http://127.0.0.1:{port}", token, user="burst", timeout=10)

        def burst():
            step = 0
            while True:
                a, b = points[(2 * step) % len(points)], points[(2 * step + 1) % len(points)]
                try:
                    answer = client.merge(a, b) if step % 2 == 0 else client.undo()
                except ApiError:
                    answer = None
                except OSError:
                    return  # the server is gone
                if answer is not None:
                    acknowledged.append(answer["operation"])
                step += 1

        worker = threading.Thread(target=burst, daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        worker.join(30)
    finally:
        if server.poll() is None:
            server.kill()
    assert len(acknowledged) >= 20
    first = open_session(Project.open(project.root))
    logged = {e.id for e in first.log.entries()}
    assert set(acknowledged) <= logged  # nothing acknowledged was lost
    assert len(logged) <= len(acknowledged) + 2 + 1  # (the fixture's 2, one in flight at most)
    membership = first.membership()
    first.log.close()
    again = open_session(Project.open(project.root))
    for mine, theirs in zip(membership, again.membership()):
        np.testing.assert_array_equal(mine, theirs)
    again.log.close()


def test_a_failed_acknowledgement_note_never_unsaves_a_committed_edit(tmp_path, caplog):
    path = tmp_path / "log.sqlite"
    log = EditLog(path, "fp-a")
    os.close(log._ack)  # the note cannot be written (as on a failing disk)
    log._ack = os.open(path.with_name("other"), os.O_RDONLY | os.O_CREAT)
    entry = log.append("alice", "merge", {}, DELTA)
    assert entry.id == 1 and len(log) == 1
    assert "could not note operation 1" in caplog.text
    log.close()
