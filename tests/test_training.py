"""`promptcut train` on a crop of the real demo: checkpoints, resume, the loss curve, validation
metrics, and the trained student used by `promptcut segment`."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from promptcut.cli import main
from promptcut.config import load_config
from segmentation.errors import InputError
from segmentation.models.learned import StudentAffinities, load_student
from segmentation.models.precision import bf16_supported, use_bf16
from segmentation.models.training import StudentTrainer, TrainSettings, augment, export_weights, \
    label_affinities

TINY = {"iterations": 4, "patch": [32, 32, 32], "batch": 1, "validation_slices": 16,
        "validate_every": 2, "checkpoint_every": 2, "filters": [4, 8, 16, 32]}


@pytest.fixture
def crop_config(tmp_path, demo_h5):
    with h5py.File(demo_h5, "r") as f:
        raw, labels = f["raw"][:48, :64, :64], f["labels"][:48, :64, :64]
    with h5py.File(tmp_path / "crop.h5", "w") as f:
        f["raw"], f["labels"] = raw, labels
    config = {"project": str(tmp_path / "project"),
              "dataset": {"voxel_size": [10, 10, 10],
                          "ground_truth": {"path": "crop.h5", "key": "labels"}},
              "image": {"path": "crop.h5", "key": "raw"},
              "train": TINY,
              "segment": {"model": "unet3d", "checkpoint": "project/models/unet3d/"
                          "checkpoint_latest.pt", "workers": 0, "meshes": False}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_label_affinities_and_augmentation_keep_labels_and_image_together():
    labels = np.array([[[1, 1, 2], [1, 0, 2]]])
    affinity = label_affinities(labels)
    assert affinity[2].tolist() == [[[0, 1, 0], [0, 0, 0]]]  # x: same label, not background
    assert affinity[1].tolist() == [[[0, 0, 0], [1, 0, 1]]]
    rng = np.random.default_rng(0)
    ids = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    raw = (0.2 + ids / 80).astype(np.float32)  # stays inside [0, 1] under any jitter
    for _ in range(10):
        coarse = ids[None, :, ::2, ::2].astype(np.float32)  # features at half resolution
        a, b, (f,) = augment(raw, ids, rng, anisotropic=False, features=[coarse])
        assert a.shape == b.shape
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9999  # moved together
        # the features moved with them: each is the id of a voxel in its 2 x 2 cell
        assert all(f[0, z, y, x] in b[z, 2 * y:2 * y + 2, 2 * x:2 * x + 2]
                   for z in range(2) for y in range(2) for x in range(2))


def test_train_checkpoints_resumes_and_plots(crop_config, capsys):
    assert main(["train", "--config", str(crop_config), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "best validation VOI" in out
    folder = crop_config.parent / "project" / "models" / "unet3d"
    payload = torch.load(folder / "checkpoint_latest.pt", weights_only=True)
    assert payload["iteration"] == 4 and len(payload["history"]["validation"]) == 2
    assert {"voi", "voi_split", "voi_merge", "arand"} <= set(payload["history"]["validation"][0])
    assert (folder / "loss_curve.png").stat().st_size > 1000
    assert main(["train", "--config", str(crop_config), "--resume", "--iterations", "6",
                 "--quiet"]) == 0
    payload = torch.load(folder / "checkpoint_latest.pt", weights_only=True)
    assert payload["iteration"] == 6 and len(payload["history"]["loss"]) == 6
    history = json.loads((folder / "history.json").read_text())
    assert len(history["validation"]) == 3
    best = min(history["validation"], key=lambda row: row["voi"])
    assert torch.load(folder / "checkpoint_best.pt", weights_only=True)["iteration"] == \
        best["iteration"]
    shipped = crop_config.parent / "shipped.safetensors"
    assert main(["train", "--config", str(crop_config), "--resume", "--iterations", "6",
                 "--quiet", "--export", str(shipped)]) == 0
    assert f"to {shipped} (weights) and {shipped.with_suffix('.json')}" in capsys.readouterr().out
    slim = json.loads(shipped.with_suffix(".json").read_text())
    assert "optimiser" not in slim and slim["iteration"] == best["iteration"]
    assert slim["kind"] == "unet3d" and slim["history"]["validation"][-1] == best
    assert shipped.stat().st_size < (folder / "checkpoint_best.pt").stat().st_size
    best_weights = torch.load(folder / "checkpoint_best.pt", weights_only=True)["model"]
    exported = load_student(shipped).state_dict()
    assert exported.keys() == best_weights.keys()
    assert all(torch.equal(v, best_weights[k]) for k, v in exported.items())

    model = StudentAffinities(folder / "checkpoint_latest.pt", "cpu")
    with h5py.File(crop_config.parent / "crop.h5", "r") as f:
        block = f["raw"][:10, :20, :24]
    predicted = model.predict(block)
    assert predicted.shape == (3, 10, 20, 24) and 0 <= predicted.min() <= predicted.max() <= 1

    assert main(["segment", "--config", str(crop_config), "--quiet"]) == 0
    project = load_config(crop_config).project_dir
    attributes = json.loads((project / "affinities" / ".zattrs").read_text())
    assert attributes["model"]["name"] == "unet3d"


def test_long_range_affinities_join_voxels_that_far_apart():
    labels = np.zeros((1, 1, 8), np.int64)
    labels[..., :5], labels[..., 5:] = 1, 2
    affinity = label_affinities(labels, (1, 3))
    assert affinity.shape == (6, 1, 1, 8)
    assert affinity[2, 0, 0].tolist() == [0, 1, 1, 1, 1, 0, 1, 1]  # x, distance 1
    assert affinity[5, 0, 0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]  # x, distance 3


def test_fine_tuning_starts_from_a_checkpoint_and_learns_long_range(crop_config, capsys):
    """train.init carries every weight over; the new long-range head starts fresh and trains."""
    assert main(["train", "--config", str(crop_config), "--quiet"]) == 0
    first = crop_config.parent / "project" / "models" / "unet3d" / "checkpoint_latest.pt"
    config = yaml.safe_load(crop_config.read_text())
    config["train"].update(init="project/models/unet3d/checkpoint_latest.pt", long_range=[3],
                           output="tuned", iterations=2)
    crop_config.write_text(yaml.safe_dump(config))
    settings = TrainSettings(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in config["train"].items() if k != "output"})
    start = StudentTrainer(np.zeros((20, 32, 32), np.uint8), np.ones((20, 32, 32), np.int64),
                           crop_config.parent / "unused",
                           replace(settings, init=str(first), validation_slices=4))
    old = torch.load(first, weights_only=True)["model"]
    assert all(torch.equal(v, old[k]) for k, v in start.model.state_dict().items() if k in old)
    assert {k for k in start.model.state_dict() if k not in old} == \
        {"long_range_head.weight", "long_range_head.bias"}

    assert main(["train", "--config", str(crop_config), "--quiet"]) == 0
    tuned = torch.load(crop_config.parent / "project" / "tuned" / "checkpoint_latest.pt",
                       weights_only=True)
    assert tuple(tuned["unet_config"]["long_range"]) == (3,)
    assert not torch.equal(tuned["model"]["long_range_head.weight"],
                           start.model.state_dict()["long_range_head.weight"])
    model = StudentAffinities(crop_config.parent / "project" / "tuned" / "checkpoint_latest.pt")
    assert model.predict(np.zeros((8, 16, 16), np.uint8)).shape == (3, 8, 16, 16)

    config["train"].update(filters=[8, 16, 32, 64])  # another network: refused, file named
    crop_config.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(crop_config), "--quiet"]) == 2
    assert "checkpoint_latest.pt does not fit this network" in capsys.readouterr().err


def test_bfloat16_predictions_match_float32_where_the_hardware_has_it(crop_config):
    if not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no bfloat16 support")
    assert main(["train", "--config", str(crop_config), "--quiet"]) == 0
    path = crop_config.parent / "project" / "models" / "unet3d" / "checkpoint_latest.pt"
    with h5py.File(crop_config.parent / "crop.h5", "r") as f:
        block = f["raw"][:16, :32, :32]
    fast = StudentAffinities(path, "cpu", precision="auto").predict(block)
    exact = StudentAffinities(path, "cpu", precision="fp32").predict(block)
    assert fast.dtype == np.float32 and np.abs(fast - exact).mean() < 0.02


def test_precision_settings_are_checked():
    assert not use_bf16(torch.device("cpu"), "fp32")
    with pytest.raises(InputError, match="precision must be"):
        use_bf16(torch.device("cpu"), "fp16")


def test_training_refuses_too_few_sections_and_missing_checkpoints(tmp_path):
    with pytest.raises(InputError, match="too few"):
        StudentTrainer(np.zeros((10, 8, 8), np.uint8), np.zeros((10, 8, 8), np.int64),
                       tmp_path, TrainSettings(validation_slices=20))
    with pytest.raises(InputError, match="not found"):
        StudentAffinities(tmp_path / "none.pt")


@pytest.mark.slow
def test_fgnet_trains_from_the_cli_and_segments(crop_config, small_sam2, capsys):
    sam2_config, sam2_checkpoint = small_sam2
    config = yaml.safe_load(crop_config.read_text())
    # validation on 8 sections, not 16: each costs a SAM2 encoding on the CPU
    config["train"] = {**TINY, "model": "fgnet", "fine_channels": 8, "validation_slices": 8}
    config["models"] = {"sam2": {"config": str(sam2_config)}}
    crop_config.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(crop_config), "--quiet"]) == 2
    assert "models.sam2.checkpoint" in capsys.readouterr().err
    config["models"]["sam2"]["checkpoint"] = str(sam2_checkpoint)
    config["segment"] = {"model": "fgnet", "checkpoint": "project/models/fgnet/"
                         "checkpoint_latest.pt", "workers": 0, "meshes": False,
                         "block_shape": [64, 64, 64]}
    crop_config.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(crop_config), "--quiet"]) == 0
    assert "best validation VOI" in capsys.readouterr().out
    folder = crop_config.parent / "project" / "models" / "fgnet"
    payload = torch.load(folder / "checkpoint_latest.pt", weights_only=True)
    assert payload["kind"] == "fgnet" and payload["iteration"] == 4
    assert payload["sam2"]["model_config"]["image_size"] == 256
    assert (folder / "checkpoint_best.pt").is_file()
    # the SAM2 encoder stayed frozen: its weights are the SAM2 checkpoint's
    sam = torch.load(sam2_checkpoint, weights_only=True)["model"]
    key = next(k for k in sam if k.startswith("image_encoder."))
    assert torch.equal(payload["model"][key], sam[key])

    assert main(["segment", "--config", str(crop_config), "--quiet"]) == 0
    project = load_config(crop_config).project_dir
    attributes = json.loads((project / "affinities" / ".zattrs").read_text())
    assert attributes["model"]["name"] == "fgnet"
    with pytest.raises(InputError, match="holds a fgnet model, but the config asks for unet3d"):
        StudentAffinities(folder / "checkpoint_latest.pt")


def test_fgnet_windows_keep_their_features_and_targets_aligned(small_sam2, tmp_path):
    from segmentation.models.fgnet import window_levels

    level = torch.rand(1, 4, 16, 16)
    window = window_levels([level], (64, 64), ((16, 48), (16, 48)))[0]
    assert torch.allclose(window, level[..., 4:12, 4:12], atol=1e-6)
    whole = window_levels([level], (64, 64), ((0, 64), (0, 64)))[0]
    assert torch.allclose(whole, level, atol=1e-6)

    from segmentation.models.training import FGNetTrainer

    rng = np.random.default_rng(0)
    trainer = FGNetTrainer(rng.random((12, 12, 12)).astype(np.float32),
                           np.ones((12, 12, 12), np.int64), tmp_path, str(small_sam2[0]),
                           small_sam2[1], TrainSettings(validation_slices=4, fine_channels=8),
                           "cpu")
    ids = np.arange(2 * 12 * 12).reshape(2, 12, 12)
    for _ in range(8):  # flips and transpositions move labels, image and features together
        raw, moved, levels = trainer._augment((0.2 + ids / 500).astype(np.float32), ids,
                                              [torch.from_numpy(ids[1:].astype(np.float32))])
        assert np.array_equal(np.argsort(raw.ravel()), np.argsort(moved.ravel()))
        assert np.array_equal(levels[0][0].numpy(), moved[1])


@pytest.mark.slow
def test_student_distils_sam2_features_from_the_cli(crop_config, small_sam2, capsys):
    sam2_config, sam2_checkpoint = small_sam2
    config = yaml.safe_load(crop_config.read_text())
    config["train"] = {**TINY, "teacher": "sam2", "iterations": 2, "validate_every": 2}
    config["models"] = {"sam2": {"config": str(sam2_config)}}
    crop_config.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(crop_config), "--quiet"]) == 2
    assert "train.teacher sam2" in capsys.readouterr().err
    config["models"]["sam2"]["checkpoint"] = str(sam2_checkpoint)
    crop_config.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(crop_config), "--quiet"]) == 0
    payload = torch.load(crop_config.parent / "project" / "models" / "unet3d" /
                         "checkpoint_latest.pt", weights_only=True)
    assert payload["teacher"]["kind"] == "sam2"
    assert payload["unet_config"]["teacher_channels"] == 256
    assert any(k.startswith("distill_heads.") for k in payload["model"])
    # the student still loads as a plain affinity model
    model = StudentAffinities(crop_config.parent / "project" / "models" / "unet3d" /
                              "checkpoint_latest.pt", "cpu")
    assert model.predict(np.zeros((16, 32, 32), np.uint8)).shape == (3, 16, 32, 32)


def test_teacher_features_line_up_with_the_student_grids(small_sam2, tmp_path):
    rng = np.random.default_rng(0)
    trainer = StudentTrainer(rng.random((36, 40, 48)).astype(np.float32),
                             np.ones((36, 40, 48), np.int64), tmp_path,
                             TrainSettings(validation_slices=4, filters=(4, 8, 16, 32),
                                           patch=(32, 32, 32), batch=1), "cpu",
                             teacher=(str(small_sam2[0]), small_sam2[1]))
    features = trainer.teacher_features()
    assert features["features_1"].shape == (256, 32, 20, 24)
    assert features["features_3"].shape == (256, 32, 5, 6)
    assert np.isfinite(features["features_3"]).all() and features["features_1"].astype(np.float32).std() > 0
    loss = trainer.step()
    loss.backward()
    assert all(p.grad is not None for p in trainer.model.distill_heads.parameters())


def test_the_shipped_student_beats_the_baseline_on_the_held_out_sections(demo_h5):
    from segmentation.affinities import IntensityBaseline
    from segmentation.models.training import score_affinities

    config = load_config(Path(__file__).parent.parent / "configs" / "demo.yaml")
    checkpoint = config.resolve(config.segment.checkpoint)
    assert config.segment.model == "unet3d" and checkpoint.stat().st_size < 20 * 2 ** 20
    assert (checkpoint.parent / "MODEL_CARD.md").read_text().count(checkpoint.name) >= 1
    with h5py.File(demo_h5, "r") as f:
        raw, labels = f["raw"][-40:], f["labels"][-40:]
    student = score_affinities(StudentAffinities(checkpoint, "cpu").predict(raw), labels,
                               (10, 10, 10))
    baseline = IntensityBaseline(voxel_size=(10.0, 10.0, 10.0))
    baseline.fit([raw])
    reference = score_affinities(baseline.predict(raw), labels, (10, 10, 10))
    assert student["voi"] < reference["voi"] - 0.2 and student["arand"] < reference["arand"]


def test_a_patch_too_small_for_the_network_is_refused_naming_the_key(tmp_path):
    """A coarsest level 2 voxels deep is where bfloat16 weight gradients came out NaN."""
    with pytest.raises(InputError, match=r"train.patch \[16, 32, 32\] is too small"):
        StudentTrainer(np.zeros((40, 32, 32), np.uint8), np.ones((40, 32, 32), np.int64),
                       tmp_path, TrainSettings(validation_slices=4, filters=(4, 8, 16, 32),
                                               patch=(16, 32, 32)), "cpu")


def test_non_finite_steps_are_skipped_and_persistent_ones_stop_training(tmp_path, monkeypatch):
    trainer = StudentTrainer(np.zeros((40, 32, 32), np.uint8), np.ones((40, 32, 32), np.int64),
                             tmp_path, TrainSettings(validation_slices=4, filters=(4, 8, 16, 32),
                                                     patch=(32, 32, 32), batch=1,
                                                     iterations=3), "cpu")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real_step = trainer.step
    monkeypatch.setattr(trainer, "step", lambda: real_step() * float("nan"))
    with pytest.raises(InputError, match="training diverged at iteration 0"):
        trainer.train(progress=False)
    assert trainer.iteration == 0
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


def test_nan_affinities_are_an_error_that_names_the_model(tmp_path):
    from segmentation.affinities import quantize

    path = tmp_path / "broken.pt"
    trainer = StudentTrainer(np.zeros((40, 32, 32), np.uint8), np.ones((40, 32, 32), np.int64),
                             tmp_path, TrainSettings(validation_slices=4, filters=(4, 8, 16, 32),
                                                     patch=(32, 32, 32)), "cpu")
    with torch.no_grad():
        trainer.model.affinity_head.bias.fill_(float("nan"))
    trainer.save(path)
    model = StudentAffinities(path, "cpu")
    with pytest.raises(InputError, match=r"unet3d \(.*broken.pt\) predicted NaN affinities"):
        quantize(model.predict(np.zeros((8, 16, 16), np.uint8)), model.title)


class Opaque:
    """Not plain data: a pickle holding it could run code when read."""


def tiny_checkpoint(folder: Path) -> tuple[StudentTrainer, Path]:
    trainer = StudentTrainer(np.zeros((40, 32, 32), np.uint8), np.ones((40, 32, 32), np.int64),
                             folder, TrainSettings(validation_slices=4, filters=(4, 8, 16, 32),
                                                   patch=(32, 32, 32)), "cpu")
    return trainer, trainer.save()


def test_export_writes_a_safetensors_pair_that_loads_back_into_the_same_model(tmp_path):
    trainer, checkpoint = tiny_checkpoint(tmp_path / "run")
    weights, metadata = export_weights(checkpoint, tmp_path / "shipped" / "student.pt")
    assert (weights.name, metadata.name) == ("student.safetensors", "student.json")
    assert json.loads(metadata.read_text())["unet_config"]["filters"] == [4, 8, 16, 32]
    original = trainer.model.float().eval()
    loaded = load_student(weights)
    assert loaded.state_dict().keys() == original.state_dict().keys()
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in loaded.state_dict().items())
    image = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(image)["affinities"], original(image)["affinities"])
    # the exported pair also starts a fine-tuning run
    tuned = StudentTrainer(np.zeros((40, 32, 32), np.uint8), np.ones((40, 32, 32), np.int64),
                           tmp_path / "tuned", replace(trainer.settings, init=str(weights)),
                           "cpu")
    assert all(torch.equal(v, original.state_dict()[k])
               for k, v in tuned.model.state_dict().items())


def test_a_safetensors_file_without_sound_metadata_beside_it_is_refused_naming_it(tmp_path):
    _, checkpoint = tiny_checkpoint(tmp_path / "run")
    weights, metadata = export_weights(checkpoint, tmp_path / "student.safetensors")
    text = metadata.read_text()
    metadata.unlink()
    with pytest.raises(InputError, match=f"metadata {re.escape(str(metadata))} is missing"):
        StudentAffinities(weights, "cpu")
    metadata.write_text(text[:len(text) // 2])  # cut short
    with pytest.raises(InputError, match=f"{re.escape(str(metadata))} is not readable JSON"):
        StudentAffinities(weights, "cpu")
    metadata.write_text("[1, 2]")
    with pytest.raises(InputError, match=f"{re.escape(str(metadata))}: expected a JSON object"):
        StudentAffinities(weights, "cpu")
    metadata.write_text(text.replace('"kind": "unet3d"', '"kind": "fgnet"'))
    with pytest.raises(InputError, match=f"{re.escape(str(weights))} holds a fgnet model"):
        StudentAffinities(weights, "cpu")
    metadata.write_text(text)
    weights.write_bytes(weights.read_bytes()[:100])  # a torn file
    with pytest.raises(InputError,
                       match=f"{re.escape(str(weights))} is not a readable safetensors file"):
        StudentAffinities(weights, "cpu")
    weights.unlink()
    with pytest.raises(InputError, match=f"not found: {re.escape(str(weights))}"):
        StudentAffinities(weights, "cpu")


def test_checkpoints_are_read_as_plain_data_only(tmp_path):
    trainer, _ = tiny_checkpoint(tmp_path / "run")
    path = tmp_path / "opaque.pt"
    torch.save({"kind": "unet3d", "model": trainer.model.state_dict(), "extra": Opaque()}, path)
    with pytest.raises(InputError, match=f"{re.escape(str(path))} is not a readable PyTorch "
                                         f"checkpoint of plain data"):
        StudentAffinities(path, "cpu")
    with pytest.raises(InputError, match="opaque.pt is not a readable"):
        export_weights(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_the_shipped_students_are_safetensors_with_their_metadata():
    folder = Path(__file__).parent.parent / "segmentation" / "models" / "weights"
    assert not list(folder.glob("*.pt"))  # no pickles shipped
    for name in ("unet3d_demo_v1", "unet3d_demo_v2"):
        metadata = json.loads((folder / f"{name}.json").read_text())
        assert metadata["kind"] == "unet3d" and "unet_config" in metadata
        model = load_student(folder / f"{name}.safetensors")
        assert sum(p.numel() for p in model.parameters()) > 10 ** 6


def test_a_network_predicts_on_the_threads_it_is_given_then_gives_them_back():
    """`segment` predicts a network's blocks in its own process with its workers' cores, and
    its later stages' threads are as they were, even after a block failed."""
    model = StudentAffinities(Path(__file__).parent.parent / "segmentation" / "models" /
                              "weights" / "unet3d_demo_v2.safetensors", "cpu")
    before = torch.get_num_threads()
    assert model.threaded
    with model.threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="a block failed"), model.threads(before + 1):
        raise RuntimeError("a block failed")
    assert torch.get_num_threads() == before
    with model.threads(None):
        assert torch.get_num_threads() == before
