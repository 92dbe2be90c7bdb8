"""Training an affinity model (the SAvEM3 3D U-Net student or FGNet) on a labelled volume:
augmentation, checkpoints, resume, a loss curve, and validation VOI / ARAND after the pipeline's
own watershed and agglomeration. Training runs in bfloat16 where the hardware has it
(``precision``), can start from another checkpoint's weights (``init``: fine-tuning the shipped
model on a user's volume), and can add long-range affinities as an auxiliary task.

The last ``validation_slices`` sections are held out for validation; training patches come from
the rest. Targets are the nearest-neighbour affinities of the labels (1 inside one neuron, 0
across neurons and on unlabelled voxels) and the boundary map they imply.
"""

from __future__ import annotations

import collections
import json
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from segmentation.affinities import boundary_from_affinities, neighbour_slices, quantize
from segmentation.agglomerate import Agglomeration, agglomerate
from segmentation.errors import InputError
from segmentation.metrics import Contingency
from segmentation.models.checkpoints import read_payload, write_weights
from segmentation.models.fgnet import FGNet, FGNetConfig, predict_sections, section_levels, \
    window_levels
from segmentation.models.precision import autocast, channels_last, use_bf16
from segmentation.models.sam2_prompt import build_model, model_config
from segmentation.models.train_settings import TrainSettings
from segmentation.models.unet3d import UNet3D, UNetConfig, predict_affinities
from segmentation.rag import block_contacts, block_node_stats, build_rag
from segmentation.supervoxels import SupervoxelParams, supervoxels


def label_affinities(labels: np.ndarray, distances: Sequence[int] = (1,)) -> np.ndarray:
    """(3 * len(distances), z, y, x) float32: channel 3 i + c is 1 where v and
    v - distances[i] e_c carry the same nonzero label (0 where v - d e_c lies outside)."""
    result = np.zeros((3 * len(distances),) + labels.shape, np.float32)
    for i, d in enumerate(distances):
        for c in range(3):
            here, there = neighbour_slices(c, d)
            result[3 * i + c][here] = (labels[here] == labels[there]) & (labels[here] != 0)
    return result


def augment(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, anisotropic: bool,
            features: Sequence[np.ndarray] = ()
            ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Flips along every axis, 90-degree rotations in the section plane, intensity jitter.
    ``features`` (C, z, y, x), at any resolution, are flipped and turned with the image."""
    features = list(features)
    for axis in range(3):
        if rng.random() < 0.5:
            raw, labels = np.flip(raw, axis), np.flip(labels, axis)
            features = [np.flip(f, axis + 1) for f in features]
    turns = int(rng.integers(4))
    raw, labels = np.rot90(raw, turns, axes=(1, 2)), np.rot90(labels, turns, axes=(1, 2))
    features = [np.rot90(f, turns, axes=(2, 3)) for f in features]
    if not anisotropic and raw.shape[0] == raw.shape[1] and rng.random() < 0.5:
        # isotropic and cubic: any plane can be the section
        raw, labels = np.swapaxes(raw, 0, 1), np.swapaxes(labels, 0, 1)
        features = [np.swapaxes(f, 1, 2) for f in features]
    raw = raw * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(np.clip(raw, 0, 1)), np.ascontiguousarray(labels), \
        [np.ascontiguousarray(f) for f in features]


class Trainer(ABC):
    """What every affinity model's training shares; subclasses build the network, draw a batch
    and predict a volume."""

    kind = "model"

    def __init__(self, raw: np.ndarray, labels: np.ndarray, output: Path,
                 settings: TrainSettings = TrainSettings(), device: str = "auto",
                 voxel_size=(10.0, 10.0, 10.0)):
        if raw.shape != labels.shape:
            raise InputError(f"image {raw.shape} and labels {labels.shape} differ in shape")
        if raw.shape[0] <= settings.validation_slices:
            raise InputError(f"the volume has {raw.shape[0]} sections: too few to hold "
                             f"{settings.validation_slices} out for validation")
        self.settings = settings
        self.voxel_size = tuple(voxel_size)
        scale = 255.0 if raw.dtype == np.uint8 else max(float(raw.max()), 1.0)
        image = raw.astype(np.float32) / scale
        cut = raw.shape[0] - settings.validation_slices
        self.train_raw, self.train_labels = image[:cut], labels[:cut]
        self.val_raw, self.val_labels = image[cut:], labels[cut:]
        self.output = Path(output)
        self.output.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                                   if device == "auto" else device)
        self.iteration = 0
        self.history: dict[str, list] = {"loss": [], "validation": []}
        self.rng = np.random.default_rng(settings.seed)
        torch.manual_seed(settings.seed)
        self.bf16 = use_bf16(self.device, settings.precision)
        self.model = self.build().to(self.device)
        if settings.init:
            self.initialise(Path(settings.init))
        self.optimiser = torch.optim.Adam([p for p in self.model.parameters()
                                           if p.requires_grad], settings.learning_rate)

    @abstractmethod
    def build(self) -> torch.nn.Module:
        """The network, before it moves to the device."""

    @abstractmethod
    def step(self) -> torch.Tensor:
        """The loss of one freshly drawn training batch."""

    @abstractmethod
    def predict(self, image: np.ndarray) -> np.ndarray:
        """Affinities (3, z, y, x) in [0, 1] for a whole array of [0, 1] intensities."""

    def describe(self) -> dict:
        """What a checkpoint needs, beyond the weights, to rebuild the network."""
        return {}

    def initialise(self, path: Path) -> None:
        """Start from the weights of another checkpoint of this kind (the shipped model, say):
        layers it lacks (a new head) keep their fresh initialisation; layers of another shape
        are refused with the file named."""
        payload = read_payload(path, "train.init checkpoint",
                               "a checkpoint written by `promptcut train` or its export")
        found = payload.get("kind", "unet3d")
        if found != self.kind:
            raise InputError(f"train.init {path} holds a {found} model; this run trains "
                             f"{self.kind}")
        own = self.model.state_dict()
        mismatched = [k for k, v in payload["model"].items() if k in own and own[k].shape != v.shape]
        if mismatched:
            raise InputError(f"train.init {path} does not fit this network (other filters?): "
                             f"{len(mismatched)} layers differ in shape, e.g. {mismatched[0]}")
        self.model.load_state_dict(payload["model"], strict=False)

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def latest(self) -> Path:
        return self.output / "checkpoint_latest.pt"

    @property
    def best(self) -> Path:
        """The checkpoint with the lowest validation VOI so far: later ones can be worse."""
        return self.output / "checkpoint_best.pt"

    def save(self, path: Optional[Path] = None) -> Path:
        payload = {"kind": self.kind, "model": self.model.state_dict(),
                   "optimiser": self.optimiser.state_dict(), "iteration": self.iteration,
                   "history": self.history, "settings": asdict(self.settings),
                   "voxel_size": list(self.voxel_size), **self.describe()}
        path = path or self.latest
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    def learning_rate(self) -> float:
        s = self.settings
        if s.final_learning_rate is None:
            return s.learning_rate
        progress = min(1.0, self.iteration / max(1, s.iterations))
        return s.final_learning_rate + 0.5 * (s.learning_rate - s.final_learning_rate) * (
            1 + np.cos(np.pi * progress))

    def resume(self) -> bool:
        if not self.latest.is_file():
            return False
        payload = torch.load(self.latest, map_location=self.device, weights_only=True)
        self.model.load_state_dict(payload["model"])
        self.optimiser.load_state_dict(payload["optimiser"])
        self.iteration, self.history = payload["iteration"], payload["history"]
        self.rng = np.random.default_rng(self.settings.seed + self.iteration)
        return True

    # -- training -------------------------------------------------------------------------------
    def corner(self, patch) -> tuple[int, ...]:
        """A random corner of a training patch of this shape."""
        return tuple(int(self.rng.integers(0, max(1, n - p + 1)))
                     for n, p in zip(self.train_raw.shape, patch))

    def train(self, progress: bool = True,
              on_validation: Optional[Callable[[dict], None]] = None) -> dict:
        s = self.settings
        bar = tqdm(total=s.iterations, initial=self.iteration, desc="train", disable=not progress)
        while self.iteration < s.iterations:
            self.model.train()
            for group in self.optimiser.param_groups:
                group["lr"] = self.learning_rate()
            self.optimiser.zero_grad()
            with autocast(self.device, self.bf16):
                loss = self.step()
            loss.backward()
            if not self._finite(loss):
                continue  # the weights stay as they were; the batch is drawn again
            self.optimiser.step()
            self.iteration += 1
            self.history["loss"].append((self.iteration, loss.item()))
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if self.iteration % s.validate_every == 0 or self.iteration == s.iterations:
                result = self.validate()
                earlier = [r["voi"] for r in self.history["validation"]]
                self.history["validation"].append(result)
                if not earlier or result["voi"] < min(earlier):
                    self.save(self.best)
                if on_validation:
                    on_validation(result)
                bar.write(f"iteration {self.iteration}: validation VOI {result['voi']:.3f} "
                          f"(split {result['voi_split']:.3f}, merge {result['voi_merge']:.3f}), "
                          f"ARAND {result['arand']:.3f} at threshold {result['threshold']}")
            if self.iteration % s.checkpoint_every == 0 or self.iteration == s.iterations:
                self.save()
                self.plot()
        bar.close()
        best = min(self.history["validation"], key=lambda r: r["voi"]) \
            if self.history["validation"] else {}
        (self.output / "history.json").write_text(json.dumps(self.history))
        return best

    def _finite(self, loss: torch.Tensor, patience: int = 5) -> bool:
        """False, and the step skipped, when the loss or a gradient is not finite; an error
        after ``patience`` such steps in a row, since training then diverges for good."""
        finite = bool(torch.isfinite(loss)) and all(
            bool(torch.isfinite(p.grad).all()) for p in self.model.parameters()
            if p.grad is not None)
        self._nonfinite = 0 if finite else getattr(self, "_nonfinite", 0) + 1
        if self._nonfinite >= patience:
            raise InputError(f"training diverged at iteration {self.iteration}: {patience} "
                             f"steps in a row gave non-finite gradients (lower "
                             f"train.learning_rate, or train.precision: fp32)")
        return finite

    def validate(self) -> dict:
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.bf16):
            affinities = self.predict(self.val_raw)
        return {"iteration": self.iteration,
                **score_affinities(affinities, self.val_labels, self.voxel_size,
                                   self.settings.thresholds)}

    def plot(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        if self.history["loss"]:
            steps, losses = zip(*self.history["loss"])
            window = max(1, len(losses) // 50)
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            left.plot(steps, losses, color="#c8d3e8", linewidth=0.8, label="loss")
            left.plot(steps[window - 1:], smooth, color="#2d6cdf", label="running mean")
        left.set_xlabel("iteration")
        left.set_ylabel("training loss")
        left.legend()
        if self.history["validation"]:
            rows = self.history["validation"]
            right.plot([r["iteration"] for r in rows], [r["voi"] for r in rows], "o-",
                       color="#e07b39", label="VOI")
            right.plot([r["iteration"] for r in rows], [r["arand"] for r in rows], "s-",
                       color="#2a9d3a", label="ARAND")
        right.set_xlabel("iteration")
        right.set_title("validation (held-out sections)")
        right.legend()
        fig.tight_layout()
        path = self.output / "loss_curve.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def export_weights(source: Path, target: Path) -> tuple[Path, Path]:
    """A checkpoint to ship, as ``target`` with the suffix .safetensors (the weights) and the
    .json beside it (the network's config, the training settings and the validation history;
    not the optimiser's state): a pair that loads without running any of the file's code."""
    payload = read_payload(source, "checkpoint to export", "a checkpoint written by "
                           "`promptcut train`")
    payload.pop("optimiser", None)
    payload["history"] = {"validation": payload.get("history", {}).get("validation", [])}
    return write_weights(payload, target)


def agglomerate_affinities(affinities: np.ndarray, voxel_size, thresholds: Sequence[float]
                           ) -> tuple[np.ndarray, np.ndarray, Agglomeration]:
    """The pipeline's own watershed, RAG and agglomeration, in one piece (validation volumes
    are small): the fragments, their sorted ids and the membership at every threshold."""
    fragments = supervoxels(boundary_from_affinities(quantize(affinities)), SupervoxelParams(),
                            tuple(voxel_size))
    rag = build_rag(block_node_stats(fragments, (0, 0, 0)),
                    block_contacts(fragments, quantize(affinities), (0, 0, 0)))
    return fragments, rag.ids, agglomerate(rag, tuple(thresholds))


def best_threshold_scores(labels: np.ndarray, fragments: np.ndarray, ids: np.ndarray,
                          result: Agglomeration) -> dict:
    """VOI / ARAND against ``labels`` at the best threshold; one overlap table serves them all."""
    table = Contingency.of(labels, fragments)
    best = None
    for threshold, membership in zip(result.thresholds, result.memberships):
        merged = table.relabelled(ids, membership)
        row = {"threshold": float(threshold), **merged.scores().as_dict()}
        if best is None or row["voi"] < best["voi"]:
            best = row
    return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in best.items()}


def score_affinities(affinities: np.ndarray, labels: np.ndarray, voxel_size,
                     thresholds=TrainSettings.thresholds) -> dict:
    """VOI / ARAND against ``labels`` at the best of the agglomeration thresholds."""
    return best_threshold_scores(labels, *agglomerate_affinities(affinities, voxel_size,
                                                                 thresholds))


class StudentTrainer(Trainer):
    """The SAvEM3 3D U-Net student on random 3D patches; with a SAM2 teacher (``teacher``:
    its config and checkpoint) its encoder also learns to regress SAM2's features (L1), the
    stride-4 level at 1/2 resolution and the stride-16 level at 1/8."""

    kind = "unet3d"
    TEACHER_LEVELS = {1: 0, 3: 2}  # student encoder level -> SAM2 FPN level
    GRID = 8  # patches start on this grid when distilling, so 1/8 features align exactly

    def __init__(self, raw: np.ndarray, labels: np.ndarray, output: Path,
                 settings: TrainSettings = TrainSettings(), device: str = "auto",
                 voxel_size=(10.0, 10.0, 10.0),
                 teacher: Optional[tuple[str, Optional[str | Path]]] = None):
        self.teacher = teacher
        self._teacher_features: Optional[dict[str, np.ndarray]] = None
        super().__init__(raw, labels, output, settings, device, voxel_size)

    def build(self) -> torch.nn.Module:
        self.config = UNetConfig(filters=tuple(self.settings.filters),
                                 anisotropic=self.settings.anisotropic,
                                 teacher_channels=256 if self.teacher else None,
                                 distill_levels=tuple(self.TEACHER_LEVELS),
                                 long_range=tuple(self.settings.long_range))
        model = UNet3D(self.config)
        check_patch(self.settings.patch, model.divisor)
        return channels_last(model, self.bf16)

    def describe(self) -> dict:
        extra = {"teacher": {"kind": "sam2", "config": self.teacher[0],
                             "checkpoint": str(self.teacher[1])}} if self.teacher else {}
        return {"unet_config": asdict(self.config), **extra}

    def teacher_features(self) -> dict[str, np.ndarray]:
        """SAM2's features of every training section, resampled onto the student's 1/2 and
        1/8 grids in y and x (float16, computed once: about 32 bytes a voxel)."""
        if self._teacher_features is None:
            sam = build_model(self.teacher[0], self.teacher[1], str(self.device))
            size = int(sam.image_size)
            z, height, width = self.train_raw.shape
            grids = {level: (-(-height // 2 ** level), -(-width // 2 ** level))
                     for level in self.TEACHER_LEVELS}
            result = {level: np.zeros((256, z) + grid, np.float16)
                      for level, grid in grids.items()}
            with torch.no_grad():
                for i in tqdm(range(z), desc="teacher: SAM2 features", leave=False):
                    section = torch.from_numpy(self.train_raw[i])[None, None].to(self.device)
                    levels = section_levels(sam.image_encoder, section, size)
                    for level, fpn in self.TEACHER_LEVELS.items():
                        resampled = F.interpolate(levels[fpn], size=grids[level],
                                                  mode="bilinear", align_corners=False)
                        result[level][:, i] = resampled[0].float().cpu().numpy()
            self._teacher_features = {f"features_{level}": result[level]
                                      for level in self.TEACHER_LEVELS}
        return self._teacher_features

    def step(self) -> torch.Tensor:
        patch = self.settings.patch
        raws, affs, bounds, taught, far = [], [], [], [], []
        distances = (1,) + tuple(self.settings.long_range)
        for _ in range(self.settings.batch):
            corner = self.corner(patch)
            if self.teacher:
                corner = (corner[0],) + tuple(c - c % self.GRID for c in corner[1:])
            region = tuple(slice(c, c + p) for c, p in zip(corner, patch))
            features = []
            if self.teacher:
                for name, level in zip(self.teacher_features(), self.TEACHER_LEVELS):
                    scale = 2 ** level
                    features.append(self.teacher_features()[name][
                        (slice(None), region[0]) + tuple(slice(r.start // scale,
                                                               -(-r.stop // scale))
                                                         for r in region[1:])])
            raw, labels, features = augment(self.train_raw[region], self.train_labels[region],
                                            self.rng, self.settings.anisotropic, features)
            affinity = label_affinities(labels, distances)
            far.append(affinity[3:])
            affinity = affinity[:3]
            raws.append(raw[None])
            affs.append(affinity)
            bounds.append((affinity.min(axis=0) < 0.5)[None].astype(np.float32))
            taught.append(features)
        to = lambda a: torch.from_numpy(np.stack(a)).to(self.device)  # noqa: E731
        teacher = {name: to([t[i] for t in taught]).float()
                   for i, name in enumerate(self._teacher_features or {})}
        outputs = self.model(channels_last(to(raws), self.bf16))
        return self.model.loss(outputs, to(affs), to(bounds), teacher or None,
                               to(far) if self.settings.long_range else None)

    def predict(self, image: np.ndarray) -> np.ndarray:
        return predict_affinities(self.model, image, self.device, self.bf16)


class FGNetTrainer(Trainer):
    """FGNet on windows of pairs of sections, SAM2 features from the whole current section.

    ``sam2`` names the SAM2 config and checkpoint whose image encoder guides FGNet; the
    checkpoint keeps that config and every weight, so it loads without them."""

    kind = "fgnet"

    def __init__(self, raw: np.ndarray, labels: np.ndarray, output: Path, sam2_config: str,
                 sam2_checkpoint: Optional[str | Path], settings: TrainSettings = TrainSettings(),
                 device: str = "auto", voxel_size=(10.0, 10.0, 10.0)):
        self.sam2 = {"config": sam2_config, "checkpoint": str(sam2_checkpoint or ""),
                     "model_config": model_config(sam2_config)}
        self.sam2_checkpoint = sam2_checkpoint
        self._features: collections.OrderedDict = collections.OrderedDict()
        super().__init__(raw, labels, output, settings, device, voxel_size)

    def build(self) -> torch.nn.Module:
        sam = build_model(self.sam2["config"], self.sam2_checkpoint, "cpu")
        self.config = FGNetConfig(fine_channels=self.settings.fine_channels,
                                  freeze_sam=self.settings.freeze_sam,
                                  sam_image_size=int(sam.image_size))
        return FGNet(sam.image_encoder, self.config)

    def describe(self) -> dict:
        return {"fgnet_config": asdict(self.config), "sam2": self.sam2}

    def levels(self, z: int) -> list[torch.Tensor]:
        """SAM2 features of training section z; cached while SAM2 is frozen."""
        if not self.settings.freeze_sam:
            return self.model.sam_features(self._section(z))
        if z not in self._features:
            with torch.no_grad():
                levels = section_levels(self.model.image_encoder, self._section(z),
                                        self.config.sam_image_size)
            self._features[z] = [level.half() for level in levels]
            while len(self._features) > max(1, self.settings.feature_cache):
                self._features.popitem(last=False)
        self._features.move_to_end(z)
        return [level.float() for level in self._features[z]]

    def _section(self, z: int) -> torch.Tensor:
        return torch.from_numpy(self.train_raw[z])[None, None].to(self.device)

    def step(self) -> torch.Tensor:
        _, py, px = self.settings.patch
        total = 0.0
        for _ in range(self.settings.batch):
            z, y, x = self.corner((2, py, px))
            z += 1  # the window's current section; z - 1 is the one before
            region = (slice(z - 1, z + 1), slice(y, y + py), slice(x, x + px))
            levels = window_levels(self.levels(z), self.train_raw.shape[1:],
                                   ((y, y + py), (x, x + px)))
            raw, labels, levels = self._augment(self.train_raw[region],
                                                self.train_labels[region], levels)
            target = label_affinities(labels)[:, 1]  # after the flips: offsets keep meaning
            to = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None].to(self.device)  # noqa: E731
            total = total + self.model.loss(self.model(to(raw), levels), to(target))
        return total / self.settings.batch

    def _augment(self, raw: np.ndarray, labels: np.ndarray, levels: list[torch.Tensor]):
        """The same flips and transposition of the window and of its SAM2 features, and
        intensity jitter of the window."""
        for axis in (-1, -2):
            if self.rng.random() < 0.5:
                raw, labels = np.flip(raw, axis), np.flip(labels, axis)
                levels = [level.flip(axis) for level in levels]
        if self.rng.random() < 0.5:
            raw, labels = np.swapaxes(raw, -1, -2), np.swapaxes(labels, -1, -2)
            levels = [level.transpose(-1, -2) for level in levels]
        raw = np.clip(raw * self.rng.uniform(0.8, 1.2) + self.rng.uniform(-0.1, 0.1), 0, 1)
        return raw.astype(np.float32), labels, levels

    def predict(self, image: np.ndarray) -> np.ndarray:
        return predict_sections(self.model, image, self.device)


MIN_DEEPEST = 4  # voxels per axis of a training patch at the network's coarsest level


def check_patch(patch: Sequence[int], divisor: Sequence[int]) -> None:
    """Refuse patches that leave the coarsest level under MIN_DEEPEST voxels along an axis.

    There a 3x3x3 convolution sees mostly padding, and oneDNN's bfloat16 weight gradient of a
    3D convolution whose input is 2 voxels deep is sometimes not finite (seen with torch
    2.13 / oneDNN 3.12 on AVX-512 BF16: 19 of 100 random (16, 2, 4, 4) inputs), which made
    a tiny training run produce NaN weights.
    """
    deepest = [int(p) // int(d) for p, d in zip(patch, divisor)]
    if min(deepest) < MIN_DEEPEST:
        smallest = [MIN_DEEPEST * int(d) for d in divisor]
        raise InputError(f"train.patch {list(patch)} is too small for this network: each axis "
                         f"needs at least {smallest} voxels (z, y, x) so that its coarsest "
                         f"level keeps {MIN_DEEPEST} voxels")
