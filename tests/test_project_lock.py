"""One writer per project: serve, segment, agglomerate, export and import --config hold an OS
lock on the project; a second one refuses in one line naming the holder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from promptcut.cli import main
from segmentation.errors import InputError
from segmentation.project_lock import project_lock
from tests.test_cli_errors import REPO, assert_one_line_error, promptcut


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    with project_lock(tmp_path, "serve"):
        with pytest.raises(InputError, match=rf"`promptcut serve` \(PID {os.getpid()}\)"):
            with project_lock(tmp_path, "export"):
                pass
    with project_lock(tmp_path, "export"):  # released on exit
        pass


@pytest.mark.parametrize("command", [["export", "--quiet"], ["agglomerate"],
                                     ["segment", "--quiet", "--reuse-affinities"]])
def test_commands_refuse_a_project_in_use(edited, command, capsys):
    config_path, project = edited[0], edited[1]
    before = (project.root / "segments.npz").stat().st_mtime_ns
    with project_lock(project.root, "serve"):
        assert main([command[0], "--config", str(config_path), *command[1:]]) == 2
    err = capsys.readouterr().err
    assert f"in use by `promptcut serve` (PID {os.getpid()})" in err
    assert (project.root / "segments.npz").stat().st_mtime_ns == before
    assert not (project.root / "exports").exists()


@pytest.mark.slow
def test_segment_over_edits_refuses_unless_told_to_archive_the_log(edited, capsys):
    config_path, project = edited[0], edited[1]
    assert main(["segment", "--config", str(config_path), "--quiet",
                 "--reuse-affinities"]) == 2
    assert "2 proofreading edit(s)" in capsys.readouterr().err
    assert (project.root / "edit_log.sqlite").exists()
    assert main(["segment", "--config", str(config_path), "--quiet", "--reuse-affinities",
                 "--archive-log"]) == 0
    assert not (project.root / "edit_log.sqlite").exists()
    assert len(list(project.root.glob("edit_log.*.sqlite"))) == 1


def test_agglomerate_refuses_while_a_server_runs(edited):
    config_path = edited[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "promptcut.cli", "serve", "--config",
                               str(config_path), "--port", str(port)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in server.stdout:  # serving once it prints the viewer URL
            if "viewer:" in line or time.monotonic() > deadline:
                break
        assert server.poll() is None
        assert_one_line_error(promptcut("agglomerate", "--config", config_path),
                              "in use by `promptcut serve`", f"PID {server.pid}")
    finally:
        server.terminate()
        server.wait(30)
    result = promptcut("agglomerate", "--config", config_path)  # the lock went with it
    assert result.returncode == 0, result.stderr
