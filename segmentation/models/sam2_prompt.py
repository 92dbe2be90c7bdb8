"""SAM2 as a promptable 2D model over a volume: point prompts -> a mask on a slice and its
neighbours -> per-supervoxel mask probabilities for the prompt cut.

A thin wrapper of the ``sam2`` model modules (the package's own image predictor imports
torchvision, whose PyPI wheels do not load with CPU torch). Official configs and checkpoints
(sam2 / sam2.1, hiera tiny, small, base+, large) load from paths in the configuration; the model
runs on CUDA when there is one and on the CPU otherwise. Slice embeddings, the slow part (about
2 s a slice on two CPU cores for hiera tiny), are cached per (volume, axis, slice) and can be
computed ahead around the cursor in a background thread.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from segmentation.errors import InputError
from segmentation.models.checkpoints import read_payload

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# as the sam2 package builds its image predictor: fall back to multi-mask when unstable
POSTPROCESSING = {"dynamic_multimask_via_stability": True,
                  "dynamic_multimask_stability_delta": 0.05,
                  "dynamic_multimask_stability_thresh": 0.98}


def sam_input(sections: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (B, 3, size, size) normalised as SAM2 was trained: the one
    place that decides how a section becomes SAM2's input (the prompter and FGNet share it)."""
    rgb = F.interpolate(sections.expand(-1, 3, -1, -1), size=(size, size), mode="bilinear",
                        align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def load_config(config: str):
    """A sam2 model config: a YAML file, or one of the package's (``sam2.1_hiera_t`` or
    ``configs/sam2.1/sam2.1_hiera_t.yaml``)."""
    from omegaconf import OmegaConf

    path = Path(config)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        cfg = OmegaConf.load(path)
    else:
        import sam2  # noqa: F401  (sets up hydra's search path for the package's configs)
        from hydra import compose

        name = config if config.endswith(".yaml") else \
            f"configs/{config.split('_')[0]}/{config}.yaml"
        try:
            cfg = compose(config_name=name)
        except Exception as exc:  # hydra's MissingConfigException and friends
            raise InputError(f"SAM2 config {config!r} not found: give a YAML file or a name "
                             f"such as sam2.1_hiera_t ({type(exc).__name__})") from None
    if "model" not in cfg:
        raise InputError(f"{config} is not a SAM2 model config (no 'model' section)")
    OmegaConf.resolve(cfg)
    OmegaConf.set_struct(cfg, False)
    extra = cfg.model.get("sam_mask_decoder_extra_args") or {}
    cfg.model.sam_mask_decoder_extra_args = {**extra, **POSTPROCESSING}
    return cfg


def build_model(config: str, checkpoint: Optional[str | Path], device: str = "auto"):
    """Instantiate the config's model and load an official checkpoint ({"model": state_dict})."""
    model = instantiate_model(model_config(config))
    if checkpoint is not None:
        load_checkpoint(model, Path(checkpoint), config)
    return model.to(pick_device(device)).eval()


def model_config(config: str) -> dict:
    """The config's model section as plain data (kept in FGNet checkpoints to rebuild SAM2)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(load_config(config).model, resolve=True)


def instantiate_model(config: dict):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.create(config), _recursive_=True)


def load_checkpoint(model: torch.nn.Module, path: Path, config: str) -> None:
    payload = read_payload(path, "SAM2 checkpoint", "the official SAM2 checkpoint format")
    state = payload["model"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise InputError(f"checkpoint {path} does not fit config {config}: {len(missing)} "
                         f"missing, {len(unexpected)} unexpected and {len(wrong)} mis-shaped "
                         f"weights (e.g. {example}); is it the checkpoint of that model size?")
    model.load_state_dict(state)


@dataclass
class SliceFeatures:
    image_embed: torch.Tensor  # (1, 256, 64, 64) for a 1024 input
    high_res_feats: list[torch.Tensor]  # (1, 32, 256, 256), (1, 64, 128, 128)
    shape: tuple[int, int]  # the slice's own (height, width)
    # the image encoder's own FPN levels (strides 4, 8, 16; float16), kept for FGNet
    fpn: Optional[list[torch.Tensor]] = None


@dataclass
class SliceMask:
    mask: np.ndarray  # bool (height, width)
    score: float  # the model's predicted IoU of the chosen mask


class Sam2Prompter:
    """Point prompts on slices of a volume, with an LRU cache of slice embeddings."""

    def __init__(self, model, cache_slices: int = 32, keep_fpn: bool = False):
        self.model = model
        self.keep_fpn = keep_fpn
        self.device = next(model.parameters()).device
        self.size = int(model.image_size)
        self.encodings = 0  # how many slices were actually encoded (cache misses)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._capacity = cache_slices
        self._lock = threading.Lock()
        self._pending: dict = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam2-embed")
        stride = self.size // 4
        self._feature_sizes = [(stride // s, stride // s) for s in (1, 2, 4)]

    # -- embeddings -----------------------------------------------------------------------------
    def features(self, key: tuple, read: Callable[[], np.ndarray]) -> SliceFeatures:
        """The embedding of a slice, from cache when it is there (key: volume, axis, index)."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            pending = self._pending.get(key)
        if pending is not None:
            return pending.result()
        features = self._encode(read())
        self._store(key, features)
        return features

    def prefetch(self, keys_and_readers: Sequence[tuple[tuple, Callable[[], np.ndarray]]]
                 ) -> list[Future]:
        """Encode slices ahead (around the cursor) in the background; cached ones are skipped."""
        futures = []
        for key, read in keys_and_readers:
            with self._lock:
                if key in self._cache or key in self._pending:
                    continue
                future = self._worker.submit(self._background, key, read)
                self._pending[key] = future
            futures.append(future)
        return futures

    def _background(self, key: tuple, read: Callable[[], np.ndarray]) -> SliceFeatures:
        try:
            features = self._encode(read())
            self._store(key, features)
            return features
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _store(self, key: tuple, features: SliceFeatures) -> None:
        with self._lock:
            self._cache[key] = features
            self._cache.move_to_end(key)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)

    def cached(self, key: tuple) -> bool:
        with self._lock:
            return key in self._cache

    @torch.no_grad()
    def _encode(self, image: np.ndarray) -> SliceFeatures:
        if image.ndim != 2:
            raise InputError(f"SAM2 takes one 2D slice at a time, got shape {image.shape}")
        pixels = torch.from_numpy(_to_unit(image)).to(self.device)
        backbone = self.model.image_encoder(sam_input(pixels[None, None], self.size))
        fpn = list(backbone["backbone_fpn"])
        if self.model.use_high_res_features_in_sam:  # as SAM2Base.forward_image projects them
            decoder = self.model.sam_mask_decoder
            backbone["backbone_fpn"] = [decoder.conv_s0(fpn[0]), decoder.conv_s1(fpn[1])] + \
                fpn[2:]
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        maps = [feat.permute(1, 2, 0).view(1, -1, *size)
                for feat, size in zip(vision_feats[::-1], self._feature_sizes[::-1])][::-1]
        with self._lock:
            self.encodings += 1
        kept = [level.half() for level in fpn] if self.keep_fpn else None
        return SliceFeatures(maps[-1], maps[:-1], tuple(image.shape), kept)

    # -- prompts --------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, features: SliceFeatures, points_yx: Sequence[Sequence[float]],
                labels: Sequence[int]) -> SliceMask:
        """Mask of the object at the positive (1) points and not at the negative (0) ones."""
        if len(points_yx) == 0 or len(points_yx) != len(labels):
            raise InputError("SAM2 needs one label (1 positive, 0 negative) for each point")
        height, width = features.shape
        xy = torch.tensor([[(x + 0.5) * self.size / width, (y + 0.5) * self.size / height]
                           for y, x in points_yx], dtype=torch.float32, device=self.device)
        point_labels = torch.tensor(list(labels), dtype=torch.int32, device=self.device)
        sparse, dense = self.model.sam_prompt_encoder(points=(xy[None], point_labels[None]),
                                                      boxes=None, masks=None)
        low_res, scores, _, _ = self.model.sam_mask_decoder(
            image_embeddings=features.image_embed,
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=len(points_yx) == 1, repeat_image=False,
            high_res_features=features.high_res_feats)
        best = int(torch.argmax(scores[0]))
        logits = F.interpolate(low_res[:, best:best + 1], size=(self.size, self.size),
                               mode="bilinear", align_corners=False)
        logits = F.interpolate(logits, size=(height, width), mode="bilinear",
                               align_corners=False)
        return SliceMask((logits[0, 0] > 0).cpu().numpy(), float(scores[0, best]))

    def segment(self, read_slice: Callable[[int], np.ndarray], key: Callable[[int], tuple],
                index: int, points_yx, labels, count: int, score_threshold: float = 0.5,
                overlap_threshold: float = 0.5, radius: int = 8) -> dict[int, SliceMask]:
        """The mask on slice ``index`` and, going both ways, on its neighbours while the mask's
        score and its overlap (IoU) with the previous slice's mask stay above the thresholds.
        ``count`` is the number of slices; each neighbour is prompted at its predecessor's most
        interior point."""
        first = self.predict(self.features(key(index), lambda: read_slice(index)), points_yx,
                             labels)
        masks = {index: first}
        for step in (-1, 1):
            previous = first
            for offset in range(1, radius + 1):
                current = index + step * offset
                if not 0 <= current < count or not previous.mask.any():
                    break
                prompt = [interior_point(previous.mask)]
                candidate = self.predict(self.features(key(current),
                                                       lambda c=current: read_slice(c)),
                                         prompt, [1])
                if candidate.score < score_threshold or \
                        iou(candidate.mask, previous.mask) < overlap_threshold:
                    break
                masks[current] = candidate
                previous = candidate
        return masks

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


def _to_unit(image: np.ndarray) -> np.ndarray:
    """Slice intensities to [0, 1] float32 (uint8 by its range, others by min and max)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    image = image.astype(np.float32)
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(y), int(x)


def supervoxel_probabilities(masks: dict[int, np.ndarray],
                             supervoxels: Callable[[int], np.ndarray]) -> dict[int, float]:
    """For every supervoxel on the masked slices: the fraction of its voxels there inside the
    mask. ``supervoxels(index)`` gives the supervoxel ids of a slice."""
    inside: dict[int, int] = collections.Counter()
    total: dict[int, int] = collections.Counter()
    for index, mask in masks.items():
        labels = supervoxels(index)
        ids, counts = np.unique(labels, return_counts=True)
        hit_ids, hit_counts = np.unique(labels[mask], return_counts=True)
        total.update(dict(zip(ids.tolist(), counts.tolist())))
        inside.update(dict(zip(hit_ids.tolist(), hit_counts.tolist())))
    total.pop(0, None)
    return {sv: inside.get(sv, 0) / n for sv, n in total.items()}
