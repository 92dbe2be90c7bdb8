"""The prompt loop with SAM2 in the server: a random-weight hiera-tiny weights the prompt cut
(plumbing only: random weights make random masks), and bad checkpoints stop start-up."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from promptcut.setup_project import prepare_project
from segmentation.errors import InputError
from segmentation.models.sam2_prompt import build_model
from segmentation.project import Project
from server.app import ServerSession
from server.viewer import Pointer


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("sam2") / "tiny.pt"
    torch.save({"model": build_model("sam2.1_hiera_t", None, "cpu").state_dict()}, path)
    return path


def copy_with_models(base, folder, **sam2):
    shutil.copytree(base.project_dir, folder / "project")
    for name in ("edit_log.sqlite", "edit_log.sqlite-wal", "edit_log.sqlite-shm"):
        (folder / "project" / name).unlink(missing_ok=True)
    models = dataclasses.replace(base.models, sam2=dataclasses.replace(base.models.sam2, **sam2))
    return dataclasses.replace(base, project=str(folder / "project"), models=models)


def test_prompt_cut_uses_the_sam2_mask(segmented_config, tmp_path, tiny_checkpoint):
    config = copy_with_models(segmented_config, tmp_path, checkpoint=str(tiny_checkpoint),
                              propagate=1)
    session = ServerSession(config, prepare_project(config, progress=False))
    session.start()
    try:
        assert session.info()["models"] == "SAM2 mask + affinities"
        labels = Project.open(config.project_dir).volume("segmentation").read(
            slice(80, 81), slice(None), slice(None))[0]
        router = session.router
        assert router.submit("promptcut-positive", Pointer((80, 125, 125), {})).result().ok
        mask, used = session.models.mask_probabilities([(80, 125, 125)], [])
        assert used.startswith("SAM2 mask on") and set(mask) >= set(np.unique(labels)) - {0}
        assert all(0.0 <= p <= 1.0 for p in mask.values())
        report = router.submit("promptcut-cut", Pointer((80, 125, 125), {})).result()
        assert "SAM2 mask on" in report.message or "leaves every segment" in report.message
    finally:
        session.stop()


def test_without_a_checkpoint_the_status_says_which_models_are_used(segmented_session):
    assert "no SAM2 checkpoint" in segmented_session.info()["models"]


def test_missing_or_mismatched_checkpoints_stop_start_up(segmented_config, tmp_path,
                                                         tiny_checkpoint):
    config = copy_with_models(segmented_config, tmp_path / "a", checkpoint="missing.pt")
    with pytest.raises(InputError, match="missing.pt"):
        ServerSession(config, prepare_project(config, progress=False))
    config = copy_with_models(segmented_config, tmp_path / "b", config="sam2.1_hiera_s",
                              checkpoint=str(tiny_checkpoint))
    with pytest.raises(InputError, match="tiny.pt does not fit config sam2.1_hiera_s"):
        ServerSession(config, prepare_project(config, progress=False))
