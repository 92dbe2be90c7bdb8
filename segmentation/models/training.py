"""Training the 3D U-Net student on a labelled volume: augmentation, checkpoints, resume, a loss
curve, and validation VOI / ARAND after the pipeline's own watershed and agglomeration.

The last ``validation_slices`` sections are held out for validation; training patches come from
the rest. Targets are the nearest-neighbour affinities of the labels (1 inside one neuron, 0
across neurons and on unlabelled voxels) and the boundary map they imply.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from segmentation.affinities import boundary_from_affinities, neighbour_slices, quantize
from segmentation.agglomerate import agglomerate
from segmentation.errors import InputError
from segmentation.metrics import scores
from segmentation.models.unet3d import UNet3D, UNetConfig
from segmentation.rag import block_contacts, block_node_stats, build_rag
from segmentation.supervoxels import SupervoxelParams, supervoxels


@dataclass
class TrainSettings:
    iterations: int = 2000
    patch: tuple[int, int, int] = (32, 96, 96)
    batch: int = 2
    learning_rate: float = 1e-3
    validation_slices: int = 40
    validate_every: int = 250
    checkpoint_every: int = 250
    filters: tuple[int, ...] = (16, 32, 64, 128)
    anisotropic: bool = False
    seed: int = 0
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)


def label_affinities(labels: np.ndarray) -> np.ndarray:
    """(3, z, y, x) float32: 1 where v and v - e_c carry the same nonzero label."""
    result = np.zeros((3,) + labels.shape, np.float32)
    for c in range(3):
        here, there = neighbour_slices(c)
        result[c][here] = (labels[here] == labels[there]) & (labels[here] != 0)
    return result


def augment(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            anisotropic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Flips along every axis, 90-degree rotations in the section plane, intensity jitter."""
    for axis in range(3):
        if rng.random() < 0.5:
            raw, labels = np.flip(raw, axis), np.flip(labels, axis)
    turns = int(rng.integers(4))
    raw, labels = np.rot90(raw, turns, axes=(1, 2)), np.rot90(labels, turns, axes=(1, 2))
    if not anisotropic and raw.shape[0] == raw.shape[1] and rng.random() < 0.5:
        # isotropic and cubic: any plane can be the section
        raw, labels = np.swapaxes(raw, 0, 1), np.swapaxes(labels, 0, 1)
    raw = raw * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(np.clip(raw, 0, 1)), np.ascontiguousarray(labels)


class Trainer:
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
        self.config = UNetConfig(filters=tuple(settings.filters),
                                 anisotropic=settings.anisotropic)
        self.model = UNet3D(self.config).to(self.device)
        self.optimiser = torch.optim.Adam(self.model.parameters(), settings.learning_rate)
        self.iteration = 0
        self.history: dict[str, list] = {"loss": [], "validation": []}
        self.rng = np.random.default_rng(settings.seed)
        torch.manual_seed(settings.seed)

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def latest(self) -> Path:
        return self.output / "checkpoint_latest.pt"

    def save(self) -> Path:
        payload = {"model": self.model.state_dict(), "optimiser": self.optimiser.state_dict(),
                   "iteration": self.iteration, "history": self.history,
                   "unet_config": asdict(self.config), "settings": asdict(self.settings),
                   "voxel_size": list(self.voxel_size)}
        tmp = self.latest.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(self.latest)
        return self.latest

    def resume(self) -> bool:
        if not self.latest.is_file():
            return False
        payload = torch.load(self.latest, map_location=self.device, weights_only=False)
        self.model.load_state_dict(payload["model"])
        self.optimiser.load_state_dict(payload["optimiser"])
        self.iteration, self.history = payload["iteration"], payload["history"]
        self.rng = np.random.default_rng(self.settings.seed + self.iteration)
        return True

    # -- training -------------------------------------------------------------------------------
    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pz, py, px = self.settings.patch
        raws, affs, bounds = [], [], []
        for _ in range(self.settings.batch):
            z, y, x = (int(self.rng.integers(0, max(1, n - p + 1)))
                       for n, p in zip(self.train_raw.shape, (pz, py, px)))
            region = (slice(z, z + pz), slice(y, y + py), slice(x, x + px))
            raw, labels = augment(self.train_raw[region], self.train_labels[region], self.rng,
                                  self.settings.anisotropic)
            affinity = label_affinities(labels)
            raws.append(raw[None])
            affs.append(affinity)
            bounds.append((affinity.min(axis=0) < 0.5)[None].astype(np.float32))
        to = lambda a: torch.from_numpy(np.stack(a)).to(self.device)  # noqa: E731
        return to(raws), to(affs), to(bounds)

    def train(self, progress: bool = True,
              on_validation: Optional[Callable[[dict], None]] = None) -> dict:
        s = self.settings
        bar = tqdm(total=s.iterations, initial=self.iteration, desc="train", disable=not progress)
        while self.iteration < s.iterations:
            self.model.train()
            raw, affinity, boundary = self.sample()
            self.optimiser.zero_grad()
            loss = self.model.loss(self.model(raw), affinity, boundary)
            loss.backward()
            self.optimiser.step()
            self.iteration += 1
            self.history["loss"].append((self.iteration, loss.item()))
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if self.iteration % s.validate_every == 0 or self.iteration == s.iterations:
                result = self.validate()
                self.history["validation"].append(result)
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

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """Affinities (3, z, y, x) in [0, 1] for a whole array (padded to the U-Net's grid)."""
        self.model.eval()
        return predict_affinities(self.model, image, self.device)

    def validate(self) -> dict:
        affinities = self.predict(self.val_raw)
        fragments = supervoxels(boundary_from_affinities(quantize(affinities)),
                                SupervoxelParams(), self.voxel_size)
        rag = build_rag(block_node_stats(fragments, (0, 0, 0)),
                        block_contacts(fragments, quantize(affinities), (0, 0, 0)))
        result = agglomerate(rag, self.settings.thresholds)
        best = None
        for threshold, membership in zip(result.thresholds, result.memberships):
            lookup = dict(zip(rag.ids.tolist(), membership.tolist()))
            merged = np.vectorize(lambda v: lookup.get(int(v), int(v)),
                                  otypes=[np.uint64])(fragments)
            score = scores(self.val_labels, merged)
            row = {"iteration": self.iteration, "threshold": threshold, **score.as_dict()}
            if best is None or row["voi"] < best["voi"]:
                best = row
        return {k: float(v) if isinstance(v, (float, np.floating)) else v
                for k, v in best.items()}

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


def predict_affinities(model: UNet3D, image: np.ndarray, device: torch.device) -> np.ndarray:
    divisor = model.divisor
    pad = [(0, (-n) % d) for n, d in zip(image.shape, divisor)]
    padded = np.pad(image.astype(np.float32), pad, mode="reflect")
    tensor = torch.from_numpy(padded)[None, None].to(device)
    logits = model(tensor)["affinities"][0]
    result = torch.sigmoid(logits).cpu().numpy()
    return result[(slice(None),) + tuple(slice(0, n) for n in image.shape)]
