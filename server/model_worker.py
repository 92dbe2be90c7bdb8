"""Models in a worker of their own: SAM2 masks and FGNet affinities for prompt cuts, never on
the viewer's IOLoop.

Requests queue on one thread (the models are not re-entrant); while one runs, the status bar
says so. Slices around each new prompt point are encoded ahead, so the cut that follows finds
them. With an FGNet checkpoint, each prompt also re-predicts affinities in a window around the
click from the SAM2 features the prompt backend cached for that section, and the graph's edge
weights there follow before the cut.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from segmentation.affinities import quantize
from segmentation.errors import InputError
from segmentation.models.fgnet import FGNet, window_levels
from segmentation.models.learned import load_fgnet, to_unit
from segmentation.models.sam2_prompt import Sam2Prompter, build_model, \
    supervoxel_probabilities
from segmentation.rag import block_contacts
from segmentation.volume import Volume
from server.settings import ModelFiles, ModelsConfig

Point = Sequence[int]


@dataclass
class EdgeEvidence:
    """Re-predicted affinities of the contacts in a window: pairs (k, 2), faces, mean."""

    pairs: np.ndarray
    faces: np.ndarray
    affinity: np.ndarray


@dataclass
class PromptEvidence:
    mask: Optional[dict[int, float]]  # supervoxel -> fraction inside the SAM2 mask
    edges: Optional[EdgeEvidence]
    used: str  # which models produced it, for the status bar


class ModelWorker:
    def __init__(self, models: ModelsConfig, files: ModelFiles, image: Volume,
                 supervoxels: Volume, status: Callable[[Optional[str]], None]):
        self.settings = models.sam2
        self.window = models.fgnet_window
        self.image, self.supervoxels = image, supervoxels
        self.status = status
        self.prompter: Optional[Sam2Prompter] = None
        self.fgnet: Optional[FGNet] = None
        if files.sam2_checkpoint is not None:  # fails at start-up
            model = build_model(files.sam2_config, files.sam2_checkpoint, models.device)
            self.prompter = Sam2Prompter(model, self.settings.cache_slices,
                                         keep_fpn=models.fgnet is not None)
        if files.fgnet is not None:
            self.fgnet = self._load_fgnet(files.fgnet, models.device)
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptcut-model")
        self._waiting = 0
        self._lock = threading.Lock()

    def _load_fgnet(self, path, device: str) -> FGNet:
        """FGNet reuses the prompt backend's features, so it must sit on the same SAM2."""
        if self.prompter is None:
            raise InputError(f"models.fgnet ({path}) needs SAM2 features: set "
                             f"models.sam2.checkpoint to the SAM2 it was trained with")
        fgnet = load_fgnet(path)
        sam = self.prompter.model
        ours, theirs = fgnet.image_encoder.state_dict(), sam.image_encoder.state_dict()
        same = ours.keys() == theirs.keys() and all(
            torch.equal(ours[k], theirs[k].to(ours[k].device)) for k in ours) and \
            fgnet.config.sam_image_size == int(sam.image_size)
        if not same:
            raise InputError(f"models.fgnet ({path}) was trained on another SAM2 image encoder "
                             f"than models.sam2.checkpoint gives: its features would not match")
        fgnet.image_encoder = sam.image_encoder  # one copy of the encoder in memory
        return fgnet.to(self.prompter.device).eval()

    @property
    def description(self) -> str:
        if self.prompter is None:
            return "prompts + affinities (no SAM2 checkpoint configured)"
        return "SAM2 mask + FGNet affinities" if self.fgnet is not None else \
            "SAM2 mask + affinities"

    def _slice(self, z: int):
        return self.image.read(slice(z, z + 1), slice(None), slice(None))[0]

    def _labels(self, z: int):
        return self.supervoxels.read(slice(z, z + 1), slice(None), slice(None))[0]

    def _key(self, z: int) -> tuple:
        return (id(self.image), 0, z)

    def prefetch_around(self, point: Point, radius: int = 2) -> None:
        if self.prompter is None:
            return
        z = int(point[0])
        depth = self.image.shape[0]
        self.prompter.prefetch([(self._key(i), lambda i=i: self._slice(i))
                                for i in range(max(0, z - radius), min(depth, z + radius + 1))])

    def prompt_evidence(self, positives: Sequence[Point], negatives: Sequence[Point]
                        ) -> PromptEvidence:
        """SAM2's per-supervoxel probabilities on the first positive point's section and its
        neighbours, and FGNet's affinities around that point, computed on the model thread."""
        if self.prompter is None:
            return PromptEvidence(None, None, self.description)
        with self._lock:
            self._waiting += 1
            if self._waiting > 1:
                self.status(f"SAM2 busy: {self._waiting - 1} prompt(s) ahead of yours")
        try:
            return self._queue.submit(self._compute, positives, negatives).result()
        finally:
            with self._lock:
                self._waiting -= 1

    def _compute(self, positives, negatives) -> PromptEvidence:
        self.status("SAM2: segmenting from your prompts...")
        try:
            z = int(positives[0][0])
            points = [(p[1], p[2]) for p in positives if int(p[0]) == z] + \
                [(p[1], p[2]) for p in negatives if int(p[0]) == z]
            labels = [1] * sum(int(p[0]) == z for p in positives) + \
                [0] * sum(int(p[0]) == z for p in negatives)
            s = self.settings
            masks = self.prompter.segment(self._slice, self._key, z, points, labels,
                                          self.image.shape[0], s.score_threshold,
                                          s.overlap_threshold, s.propagate)
            probabilities = supervoxel_probabilities({i: m.mask for i, m in masks.items()},
                                                     self._labels)
            used = f"SAM2 mask on {len(masks)} slice(s)"
            if self.fgnet is None:
                return PromptEvidence(probabilities, None, f"{used} + affinities")
            self.status("FGNet: re-predicting affinities around your prompt...")
            edges = self.refine(positives[0])
            return PromptEvidence(probabilities, edges,
                                  f"{used} + FGNet affinities on {len(edges.pairs)} contacts")
        finally:
            self.status(None)

    @torch.no_grad()
    def refine(self, point: Point) -> EdgeEvidence:
        """FGNet's refined affinities in a window around the point, from the cached SAM2
        features of its section, as mean affinities of the supervoxel contacts there."""
        z, y, x = (int(v) for v in point)
        _, height, width = self.image.shape
        half = self.window // 2
        y0, x0 = max(0, min(y - half, height - self.window)), max(0, min(x - half, width -
                                                                      self.window))
        window = ((y0, min(height, y0 + self.window)), (x0, min(width, x0 + self.window)))
        region = (slice(max(0, z - 1), z + 1), slice(*window[0]), slice(*window[1]))
        features = self.prompter.features(self._key(z), lambda: self._slice(z))
        levels = window_levels(features.fpn, features.shape, window)
        raw = to_unit(self.image.read(*region))
        pair = np.stack([raw[0], raw[-1]])  # the section before (itself at z = 0) and z
        device = self.prompter.device
        _, refined = self.fgnet(torch.from_numpy(pair)[None].to(device), levels)
        affinities = torch.sigmoid(refined[0]).cpu().numpy()[:, None]  # (3, 1, h, w)
        labels = self.supervoxels.read(*region)
        contacts = block_contacts(labels, quantize(affinities), (labels.shape[0] - 1, 0, 0))
        return EdgeEvidence(*contacts.per_edge())

    def close(self) -> None:
        self._queue.shutdown(wait=False, cancel_futures=True)
        if self.prompter is not None:
            self.prompter.close()
