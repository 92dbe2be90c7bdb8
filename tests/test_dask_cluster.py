"""`promptcut segment` on an existing Dask cluster: a `dask scheduler` and two `dask worker`
processes on loopback give exactly the result of a run in this process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

from promptcut.config import load_config
from promptcut.segmenting import run_segment
from tests.conftest import write_config
from tests.test_resume import outputs

REPO = Path(__file__).resolve().parent.parent
DASK = str(Path(sys.executable).with_name("dask"))


def start(*args: str, log: Path) -> psutil.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return psutil.Popen([DASK, *args], cwd=REPO, env=env, stdout=open(log, "w"),
                        stderr=subprocess.STDOUT)


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and two single-threaded workers, every port (dashboards included) on
    127.0.0.1; yields the scheduler's address and the processes."""
    info = tmp_path / "scheduler.json"
    processes = [start("scheduler", "--host", "127.0.0.1", "--port", "0",
                       "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(info),
                       log=tmp_path / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not info.is_file() and time.monotonic() < deadline:
            assert processes[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
        for i in range(2):
            processes.append(start("worker", "--scheduler-file", str(info), "--host",
                                   "127.0.0.1", "--nthreads", "1", "--dashboard-address",
                                   "127.0.0.1:0", "--local-directory", str(tmp_path / f"w{i}"),
                                   log=tmp_path / f"worker{i}.log"))
        from distributed import Client

        address = json.loads(info.read_text())["address"]
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, processes
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def listening(processes: list[psutil.Popen]) -> set[str]:
    """Addresses the processes (and their children: the nannies' workers) listen on."""
    found = set()
    for process in processes:
        for p in [process] + process.children(recursive=True):
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.add(c.laddr.ip)
    return found


@pytest.mark.slow
def test_existing_cluster_gives_the_local_result(cluster, tmp_path, demo_h5):
    address, processes = cluster
    assert listening(processes) == {"127.0.0.1"}  # no dashboard on 0.0.0.0
    with h5py.File(demo_h5, "r") as f:
        np.save(tmp_path / "image.npy", f["raw"][:64, :192, :192])
    reports, results = {}, {}
    for name, segment in (("local", {"workers": 0}), ("cluster", {"scheduler": address})):
        folder = tmp_path / name
        folder.mkdir()
        config = load_config(write_config(folder, demo_h5, image={
            "path": str(tmp_path / "image.npy")}, segmentation=None, segment={
            "model": "baseline", "block_shape": [64, 64, 64], "meshes": False, **segment}))
        reports[name] = run_segment(config, progress=False)
        results[name] = outputs(config.project_dir)
    assert reports["local"].workers == 1 and reports["cluster"].workers == 2
    assert reports["cluster"].blocks == 9
    assert results["cluster"].keys() == results["local"].keys()
    for key, array in results["local"].items():
        np.testing.assert_array_equal(results["cluster"][key], array, err_msg=key)
