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
from segmentation.editlog import remove_log
from segmentation.models.sam2_prompt import build_model
from segmentation.project import Project
from segmentation.proofread import LOG_NAME
from segmentation.session import EditError
from server.app import ServerSession
from server.viewer import Pointer

POINT = (80, 125, 125)  # z, y, x: inside a large segment of the segmented demo


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("sam2") / "tiny.pt"
    torch.save({"model": build_model("sam2.1_hiera_t", None, "cpu").state_dict()}, path)
    return path


def copy_with_models(base, folder, **sam2):
    shutil.copytree(base.project_dir, folder / "project")
    remove_log(folder / "project" / LOG_NAME)
    models = dataclasses.replace(base.models, sam2=dataclasses.replace(base.models.sam2, **sam2))
    return dataclasses.replace(base, project=str(folder / "project"), models=models)


def test_prompt_cut_uses_the_sam2_mask(segmented_config, tmp_path, tiny_checkpoint):
    config = copy_with_models(segmented_config, tmp_path, checkpoint=str(tiny_checkpoint),
                              propagate=1)
    session = ServerSession(config.serve_settings(),
                            prepare_project(config, progress=False))
    session.start()
    try:
        assert session.info()["models"] == "SAM2 mask + affinities"
        labels = Project.open(config.project_dir).volume("segmentation").read(
            slice(80, 81), slice(None), slice(None))[0]
        proof, router, here = session.proofreading, session.router, Pointer(POINT, {})
        # the point alone (no mask) is refused there: what the cut below does is the mask's
        with pytest.raises(EditError, match="one side empty"):
            proof.preview("prompt-cut", [POINT], [], None)
        assert router.submit("promptcut-positive", here).result().ok
        evidence = session.models.prompt_evidence([POINT], [])
        mask, used = evidence.mask, evidence.used
        assert used.startswith("SAM2 mask on") and set(mask) >= set(np.unique(labels)) - {0}
        assert all(0.0 <= p <= 1.0 for p in mask.values())
        # this seeded model's mask there is not empty: the cut changes segments
        assert any(p > 0.5 for p in mask.values()) and any(p < 0.5 for p in mask.values())
        report = router.submit("promptcut-cut", here).result()
        assert report.ok and report.message.startswith("preview of prompt cut"), report.message
        report = router.submit("promptcut-commit", here).result()  # Enter commits the preview
        assert report.ok and "(from SAM2 mask on" in report.message, report.message
        assert [e.kind for e in proof.log.entries()] == ["prompt-cut"]
    finally:
        session.stop()


def test_without_a_checkpoint_the_status_says_which_models_are_used(segmented_session):
    assert "no SAM2 checkpoint" in segmented_session.info()["models"]


def test_missing_or_mismatched_checkpoints_stop_start_up(segmented_config, tmp_path,
                                                         tiny_checkpoint):
    config = copy_with_models(segmented_config, tmp_path / "a", checkpoint="missing.pt")
    with pytest.raises(InputError, match="missing.pt"):
        ServerSession(config.serve_settings(),
                      prepare_project(config, progress=False))
    config = copy_with_models(segmented_config, tmp_path / "b", config="sam2.1_hiera_s",
                              checkpoint=str(tiny_checkpoint))
    with pytest.raises(InputError, match="tiny.pt does not fit config sam2.1_hiera_s"):
        ServerSession(config.serve_settings(),
                      prepare_project(config, progress=False))


def fgnet_checkpoint(folder, sam2_config, sam2_checkpoint):
    """An (untrained) FGNet on this SAM2, written the way `promptcut train` writes one."""
    from segmentation.models.training import FGNetTrainer, TrainSettings

    trainer = FGNetTrainer(np.zeros((12, 16, 16), np.float32), np.ones((12, 16, 16), np.int64),
                           folder, str(sam2_config), sam2_checkpoint,
                           TrainSettings(validation_slices=4, fine_channels=8), "cpu")
    return trainer.save()


def test_fgnet_reweights_the_graph_around_the_prompt_before_the_cut(segmented_config, tmp_path,
                                                                    small_sam2):
    sam2_config, sam2_checkpoint = small_sam2
    fgnet = fgnet_checkpoint(tmp_path / "fgnet", sam2_config, sam2_checkpoint)
    config = copy_with_models(segmented_config, tmp_path, config=str(sam2_config),
                              checkpoint=str(sam2_checkpoint), propagate=1)
    config = dataclasses.replace(config, models=dataclasses.replace(
        config.models, fgnet=str(fgnet), fgnet_window=64))
    session = ServerSession(config.serve_settings(),
                            prepare_project(config, progress=False))
    session.start()
    try:
        assert session.info()["models"] == "SAM2 mask + FGNet affinities"
        # the prompter's cached features of the section are what FGNet reads
        evidence = session.models.prompt_evidence([POINT], [])
        assert session.models.prompter.cached((id(session.models.image), 0, 80))
        edges = evidence.edges
        assert len(edges.pairs) > 10 and (edges.pairs[:, 0] < edges.pairs[:, 1]).all()
        assert ((0 <= edges.affinity) & (edges.affinity <= 1)).all() and (edges.faces > 0).all()
        labels = Project.open(config.project_dir).volume("segmentation").read(
            slice(79, 81), slice(93, 157), slice(93, 157))
        assert set(edges.pairs.ravel().tolist()) <= set(np.unique(labels).tolist())
        session_graph = session.proofreading
        before = session_graph.graph.capacity.copy()
        assert session_graph.reweight(edges.pairs, edges.faces, edges.affinity) > 0
        assert (session_graph.graph.capacity != before).sum() > 0
        router, here = session.router, Pointer(POINT, {})
        with pytest.raises(EditError, match="one side empty"):  # no mask: refused there
            session_graph.preview("prompt-cut", [POINT], [], None)
        assert router.submit("promptcut-positive", here).result().ok
        report = router.submit("promptcut-cut", here).result()
        assert report.ok and report.message.startswith("preview of prompt cut"), report.message
        report = router.submit("promptcut-commit", here).result()  # Enter commits the preview
        assert report.ok and "FGNet affinities on" in report.message, report.message
        assert [e.kind for e in session_graph.log.entries()] == ["prompt-cut"]
    finally:
        session.stop()


def test_fgnet_needs_the_sam2_it_was_trained_on(segmented_config, tmp_path, small_sam2,
                                                tiny_checkpoint):
    sam2_config, sam2_checkpoint = small_sam2
    fgnet = fgnet_checkpoint(tmp_path / "fgnet", sam2_config, sam2_checkpoint)
    config = copy_with_models(segmented_config, tmp_path / "a")
    config = dataclasses.replace(config, models=dataclasses.replace(config.models,
                                                                    fgnet=str(fgnet)))
    with pytest.raises(InputError, match="models.sam2.checkpoint"):
        ServerSession(config.serve_settings(),
                      prepare_project(config, progress=False))
    config = copy_with_models(segmented_config, tmp_path / "b", checkpoint=str(tiny_checkpoint))
    config = dataclasses.replace(config, models=dataclasses.replace(config.models,
                                                                    fgnet=str(fgnet)))
    with pytest.raises(InputError, match="another SAM2 image encoder"):
        ServerSession(config.serve_settings(),
                      prepare_project(config, progress=False))
