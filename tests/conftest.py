"""Shared fixtures: the real demo data, a running server over it, and headless Chromium."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.browser_util import CHROMIUM, chromium

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("PROMPTCUT_SHARED_DATA", REPO.parent / "shared" / "data"))
DEMO_H5 = SHARED_DATA / "neuroproof_ts2_dev.h5"


def _missing(what: str) -> None:
    """Outside CI a missing prerequisite skips; in CI it fails, so nothing is silently untested."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="session")
def demo_h5() -> Path:
    if not DEMO_H5.is_file():
        _missing(f"the demo data {DEMO_H5}")
    return DEMO_H5


def write_config(folder: Path, h5: Path, **sections) -> Path:
    """A demo-like config in ``folder``, with ports chosen by the OS so tests never collide."""
    config = {
        "name": "test project",
        "project": str(folder / "project"),
        "dataset": {"name": "neuroproof_ts2_dev", "credits": "Janelia FlyEM / neuroproof_examples",
                    "voxel_size": [10, 10, 10]},
        "image": {"path": str(h5), "key": "raw"},
        "segmentation": {"path": str(h5), "key": "supervoxels"},
        "server": {"host": "127.0.0.1", "port": 0},
    }
    for name, value in sections.items():
        config[name] = {**config.get(name, {}), **value} if isinstance(value, dict) else value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def demo_project_dir(tmp_path_factory, demo_h5) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="session")
def demo_session(demo_project_dir, demo_h5):
    """One running server over the imported demo, shared by the viewer and browser tests."""
    from promptcut.config import load_config
    from promptcut.setup_project import prepare_project
    from server.app import ServerSession

    config = load_config(write_config(demo_project_dir, demo_h5, viewer={"layout": "xy"}))
    session = ServerSession(config.serve_settings(), prepare_project(config, progress=False))
    session.start()
    yield session
    session.stop()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        _missing(f"Chromium ({CHROMIUM})")
    with chromium() as context:
        yield context


@pytest.fixture(scope="session")
def segmented_config(tmp_path_factory, demo_h5):
    """The demo run through the whole pipeline (in this process, meshes included)."""
    from promptcut.config import load_config
    from promptcut.segmenting import run_segment

    folder = tmp_path_factory.mktemp("segmented")
    config = load_config(write_config(folder, demo_h5, segmentation=None,
                                      segment={"workers": 0, "block_shape": [192, 128, 128]},
                                      viewer={"layout": "4panel"}))
    run_segment(config, progress=False)
    return config


@pytest.fixture(scope="session")
def segmented_session(segmented_config):
    from promptcut.setup_project import prepare_project
    from server.app import ServerSession

    session = ServerSession(segmented_config.serve_settings(),
                            prepare_project(segmented_config, progress=False))
    session.start()
    yield session
    session.stop()


@pytest.fixture(scope="session")
def small_sam2(tmp_path_factory) -> tuple[Path, Path]:
    """A random-init hiera-tiny at a 256-pixel input (fast on the CPU), as a YAML config and an
    official-format checkpoint: (config, checkpoint)."""
    import torch
    from omegaconf import OmegaConf

    from segmentation.models.sam2_prompt import build_model, load_config

    folder = tmp_path_factory.mktemp("small_sam2")
    config = load_config("sam2.1_hiera_t")
    config.model.image_size = 256
    OmegaConf.save(config, folder / "sam2_small.yaml")
    torch.manual_seed(3)
    model = build_model(str(folder / "sam2_small.yaml"), None, "cpu")
    torch.save({"model": model.state_dict()}, folder / "sam2_small.pt")
    return folder / "sam2_small.yaml", folder / "sam2_small.pt"


@pytest.fixture
def edited(tmp_path, segmented_config):
    """A private copy of the segmented demo with one merge and one split in its log."""
    from segmentation.editlog import remove_log
    from segmentation.project import Project
    from segmentation.proofread import LOG_NAME, open_session

    shutil.copytree(segmented_config.project_dir, tmp_path / "project")
    data = yaml.safe_load((segmented_config.base_dir / "config.yaml").read_text())
    data["project"] = str(tmp_path / "project")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(data))
    remove_log(tmp_path / "project" / LOG_NAME)
    project = Project.open(tmp_path / "project")
    session = open_session(project)
    graph = session.graph
    a, b = graph.edge_a, graph.edge_b
    apart = np.flatnonzero(session.segment[a] != session.segment[b])
    sv_a, sv_b = int(graph.ids[a[apart[0]]]), int(graph.ids[b[apart[0]]])
    labels = project.volume("segmentation").read(slice(None), slice(None), slice(None))
    point = {sv: tuple(int(v) for v in np.argwhere(labels == sv)[0]) for sv in (sv_a, sv_b)}
    session.merge("alice", point[sv_a], point[sv_b])
    big = max(session.members, key=lambda s: len(session.members[s]))
    members = session.members_of(big)
    first, last = int(members.min()), int(members.max())
    for sv in (first, last):
        point[sv] = tuple(int(v) for v in np.argwhere(labels == sv)[0])
    session.split("bob", [point[first]], [point[last]])
    expected = dict(zip(*(v.tolist() for v in session.membership())))
    confirmed, separated = session.decisions()
    session.log.close()
    return config_path, project, labels, expected, confirmed, separated
