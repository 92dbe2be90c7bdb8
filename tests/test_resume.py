"""An interrupted `promptcut segment` resumes: killed mid-run, the rerun skips the blocks the
first run finished and ends with exactly the result of an uninterrupted run."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from promptcut.config import load_config
from promptcut.segmenting import run_segment
from segmentation.project import Project
from tests.conftest import write_config

REPO = Path(__file__).resolve().parent.parent
BLOCKS = 2 * 3 * 3  # a 128 x 192 x 192 crop in 64^3 blocks


@pytest.fixture(scope="module")
def crop(tmp_path_factory, demo_h5) -> Path:
    with h5py.File(demo_h5, "r") as f:
        raw = f["raw"][:128, :192, :192]
    path = tmp_path_factory.mktemp("crop") / "image.npy"
    np.save(path, raw)
    return path


def config_in(folder: Path, image: Path, **supervoxels) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder, image, image={"path": str(image)}, segmentation=None, segment={
        "model": "baseline", "block_shape": [64, 64, 64], "workers": 0, "meshes": False,
        "supervoxels": supervoxels})


def outputs(project_dir: Path) -> dict[str, np.ndarray]:
    project = Project.open(project_dir)
    found = {"supervoxels": project.volume("segmentation").read(slice(None), slice(None),
                                                                 slice(None))}
    for name in ("rag.npz", "segments.npz"):
        with np.load(project_dir / name) as data:
            found.update({f"{name}:{k}": data[k] for k in data.files})
    return found


def marks(project_dir: Path, stage: str) -> int:
    return len(list((project_dir / "work" / "marks" / stage).glob("*.mark")))


def promptcut(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "promptcut.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, crop):
    """An uninterrupted run's outputs, and a copy of a project whose `segment` was killed
    (SIGKILL) after some seed blocks were marked done (all affinity blocks are by then)."""
    root = tmp_path_factory.mktemp("resume")
    whole = load_config(config_in(root / "whole", crop))
    run_segment(whole, progress=False)
    config = config_in(root / "killed", crop)
    project_dir = load_config(config).project_dir
    process = promptcut("segment", "--config", str(config), "--quiet")
    deadline = time.monotonic() + 300
    while marks(project_dir, "seeds") < 3 and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = marks(project_dir, "seeds")
    assert 3 <= done < BLOCKS and marks(project_dir, "affinities") == BLOCKS
    return outputs(whole.project_dir), project_dir, done


def killed_copy(project_dir: Path, folder: Path, crop: Path, **supervoxels) -> Path:
    """A config over a copy of the killed project (each test resumes its own)."""
    shutil.copytree(project_dir, folder / "project")
    return config_in(folder, crop, **supervoxels)


def test_killed_segment_resumes_with_the_uninterrupted_result(interrupted, tmp_path, crop):
    expected, killed, done = interrupted
    config = killed_copy(killed, tmp_path, crop)
    process = promptcut("segment", "--config", str(config), "--quiet")
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    found = re.search(r"resumed an interrupted run: .*affinities (\d+)/(\d+), seeds (\d+)/(\d+)",
                      out)
    assert found, out
    assert [int(g) for g in found.groups()] == [BLOCKS, BLOCKS, done, BLOCKS]
    project_dir = load_config(config).project_dir
    assert not (project_dir / "work").exists()  # marks go once the run is complete
    result = outputs(project_dir)
    assert result.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(result[name], array, err_msg=name)


def test_changed_settings_drop_the_marks_they_invalidate(interrupted, tmp_path, crop):
    """A different supervoxel threshold keeps the affinities (they do not depend on it) and
    redoes every seed block; --restart redoes everything."""
    _, killed, done = interrupted
    changed = load_config(killed_copy(killed, tmp_path / "changed", crop, threshold=0.4))
    assert marks(changed.project_dir, "seeds") == done
    report = run_segment(changed, progress=False)
    assert report.skipped["affinities"] == BLOCKS and report.computed["affinities"] == 0
    assert report.skipped["seeds"] == 0 and report.computed["seeds"] == BLOCKS

    restarted = load_config(killed_copy(killed, tmp_path / "restarted", crop))
    report = run_segment(restarted, progress=False, restart=True)
    assert not report.resumed and report.computed["affinities"] == BLOCKS


def test_reusing_unfinished_affinities_is_refused(tmp_path, crop):
    """--reuse-affinities on affinities an interrupted run left half predicted is an error
    that says so, not a segmentation of blank blocks."""
    from segmentation.errors import InputError

    config = load_config(config_in(tmp_path, crop))
    project_dir = config.project_dir
    process = promptcut("segment", "--config", str(config_in(tmp_path, crop)), "--quiet")
    while marks(project_dir, "affinities") < 2 and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    if marks(project_dir, "affinities") == BLOCKS:
        pytest.skip("the affinities were all done before the kill")
    with pytest.raises(InputError, match="incomplete"):
        run_segment(config, reuse_affinities=True, progress=False)
