"""FGNet and the SAvEM3 3D U-Net student: shapes, gradients and tiny CPU training runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segmentation.affinities import affinities_from_boundary
from segmentation.models.fgnet import FGNet, FGNetConfig
from segmentation.models.sam2_prompt import build_model
from segmentation.models.unet3d import Norm, UNet3D, UNetConfig


@pytest.fixture(scope="module")
def sam_encoder():
    torch.manual_seed(0)
    return build_model("sam2.1_hiera_t", None, "cpu").image_encoder


def tiny_fgnet(encoder, freeze=True) -> FGNet:
    return FGNet(encoder, FGNetConfig(fine_channels=8, attention_dim=16, heads=2,
                                      freeze_sam=freeze, sam_image_size=256))


def toy_sections(size=64, seed=0):
    """Two sections of disc-shaped cells with dark rims, and their affinity targets."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((2, size, size), np.int64)
    for i in range(6):
        cy, cx, r = rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(6, 14)
        labels[:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i + 1
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    image = np.where(edge, 0.1, 0.8) + rng.normal(0, 0.05, labels.shape)
    target = affinities_from_boundary(edge.astype(np.float32))  # 0 across membranes
    sections = torch.tensor(image[None], dtype=torch.float32).clamp(0, 1)
    return sections, torch.tensor(target[:, 1][None], dtype=torch.float32)


def test_fgnet_shapes_and_frozen_sam(sam_encoder):
    model = tiny_fgnet(sam_encoder)
    sections = torch.rand(2, 2, 64, 64)
    coarse, refined = model(sections)
    assert coarse.shape == refined.shape == (2, 3, 64, 64)
    model.loss((coarse, refined), torch.rand(2, 3, 64, 64).round()).backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is not None for p in model.fine.parameters())
    assert all(p.grad is not None for p in model.guide.parameters())
    assert all(p.grad is not None for p in model.coarse_head.parameters())


def test_fgnet_can_fine_tune_sam(sam_encoder):
    model = tiny_fgnet(sam_encoder, freeze=False)
    coarse, refined = model(torch.rand(1, 2, 64, 64))
    model.loss((coarse, refined), torch.ones(1, 3, 64, 64)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.image_encoder.parameters())
    for p in model.image_encoder.parameters():  # leave the shared encoder as it was
        p.requires_grad_(False)
        p.grad = None


def test_fgnet_trains_on_a_toy_problem(sam_encoder):
    torch.manual_seed(0)
    model = tiny_fgnet(sam_encoder)
    sections, target = toy_sections()
    levels = model.sam_features(sections[:, 1:2])  # frozen: computed once
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 3e-3)
    losses = []
    for _ in range(25):
        optimiser.zero_grad()
        loss = model.loss(model(sections, levels), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_student_shapes_distillation_heads_and_anisotropy():
    model = UNet3D(UNetConfig(filters=(4, 8, 16, 32), teacher_channels=8))
    outputs = model(torch.rand(1, 1, 16, 32, 32))
    assert outputs["affinities"].shape == (1, 3, 16, 32, 32)
    assert outputs["boundary"].shape == (1, 1, 16, 32, 32)
    assert outputs["features_1"].shape == (1, 8, 8, 16, 16)  # 1/2
    assert outputs["features_3"].shape == (1, 8, 2, 4, 4)  # 1/8
    flat = UNet3D(UNetConfig(filters=(4, 8, 16, 32), anisotropic=True))
    assert flat.divisor == (1, 8, 8)
    assert flat(torch.rand(1, 1, 5, 32, 32))["affinities"].shape == (1, 3, 5, 32, 32)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_calibrated_norm_keeps_each_groups_pooled_statistics(layout, dtype):
    """Statistics pooled over samples of different sizes, per group of adjacent channels,
    whatever the activations' layout and type, leaving the samples as they were: a frozen
    Norm then maps every sample the same way."""
    generator = torch.Generator().manual_seed(0)
    norm = Norm(4, 12).to(torch.float64 if dtype == torch.float64 else torch.float32)
    samples = [(torch.randn(1, 12, *shape, generator=generator) * torch.arange(1, 13).view(
        1, 12, 1, 1, 1) + torch.arange(12).view(1, 12, 1, 1, 1)).to(dtype).contiguous(
        memory_format=layout) for shape in ((3, 5, 7), (6, 4, 2))]
    originals = [s.clone() for s in samples]
    norm.calibrate()
    for sample, original in zip(samples, originals):
        norm(sample)
        assert torch.equal(sample, original)  # measured, not changed
    norm.freeze()
    pooled = np.concatenate([s.double().numpy().reshape(4, 3, -1).reshape(4, -1)
                             for s in samples], axis=1)
    np.testing.assert_allclose(norm.mean.numpy(), pooled.mean(1), rtol=1e-6)
    np.testing.assert_allclose(norm.var.numpy(), pooled.var(1), rtol=1e-5)
    assert not np.allclose(norm.mean.numpy(), norm.mean.numpy()[0])  # groups apart
    first = samples[0].float()
    expected = (first - norm.mean.repeat_interleave(3).view(1, 12, 1, 1, 1)) / torch.sqrt(
        norm.var.repeat_interleave(3).view(1, 12, 1, 1, 1) + norm.eps)
    torch.testing.assert_close(norm(samples[0]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_teacher", [False, True])
def test_student_trains_with_and_without_a_teacher(with_teacher):
    torch.manual_seed(0)
    config = UNetConfig(filters=(4, 8, 16, 32), teacher_channels=6 if with_teacher else None)
    model = UNet3D(config)
    volume = torch.rand(1, 1, 8, 32, 32)
    boundary = (volume > 0.7).float()
    affinities = 1 - boundary.expand(1, 3, -1, -1, -1)
    teacher = {"features_1": torch.randn(1, 6, 4, 16, 16),
               "features_3": torch.randn(1, 6, 1, 4, 4)} if with_teacher else None
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(40):
        optimiser.zero_grad()
        loss = model.loss(model(volume), affinities, boundary, teacher)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.75 * losses[0]
    assert all(p.grad is not None for p in model.distill_heads.parameters())


def test_fgnet_exports_to_safetensors_and_loads_back_identical(sam_encoder, tmp_path):
    """The SAM2 encoder travels inside the pair: no SAM2 checkpoint is needed to load it."""
    from dataclasses import asdict

    from segmentation.models.checkpoints import write_weights
    from segmentation.models.learned import load_fgnet
    from segmentation.models.sam2_prompt import model_config

    torch.manual_seed(1)
    model = tiny_fgnet(sam_encoder)
    payload = {"kind": "fgnet", "model": model.state_dict(), "fgnet_config": asdict(model.config),
               "sam2": {"config": "sam2.1_hiera_t", "checkpoint": "",
                        "model_config": model_config("sam2.1_hiera_t")}}
    weights, _ = write_weights(payload, tmp_path / "fgnet.safetensors")
    loaded = load_fgnet(weights)
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    sections = torch.rand(1, 2, 64, 64)
    try:
        with torch.no_grad():
            assert torch.equal(loaded.eval()(sections)[1], model.eval()(sections)[1])
    finally:
        model.train()  # the encoder is shared with the other tests
