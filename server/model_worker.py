"""Models in a worker of their own: SAM2 masks for prompt cuts, never on the viewer's IOLoop.

Requests queue on one thread (the model is not re-entrant); while one runs, the status bar says
so. Slices around each new prompt point are encoded ahead, so the cut that follows finds them.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

from segmentation.models.sam2_prompt import Sam2Prompter, build_model, \
    supervoxel_probabilities
from segmentation.volume import Volume

Point = Sequence[int]


class ModelWorker:
    def __init__(self, sam2_config, device: str, image: Volume, supervoxels: Volume,
                 config_dir: Path, status: Callable[[Optional[str]], None]):
        self.settings = sam2_config
        self.image, self.supervoxels = image, supervoxels
        self.status = status
        self.prompter: Optional[Sam2Prompter] = None
        if sam2_config.checkpoint:
            checkpoint = (config_dir / sam2_config.checkpoint).resolve()
            config = sam2_config.config
            if config.endswith((".yaml", ".yml")) and not Path(config).is_absolute():
                candidate = config_dir / config
                config = str(candidate) if candidate.is_file() else config
            model = build_model(config, checkpoint, device)  # fails here, at start-up
            self.prompter = Sam2Prompter(model, sam2_config.cache_slices)
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptcut-model")
        self._waiting = 0
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return "SAM2 mask + affinities" if self.prompter else \
            "prompts + affinities (no SAM2 checkpoint configured)"

    def _slice(self, z: int):
        return self.image.read(slice(z, z + 1), slice(None), slice(None))[0]

    def _labels(self, z: int):
        return self.supervoxels.read(slice(z, z + 1), slice(None), slice(None))[0]

    def prefetch_around(self, point: Point, radius: int = 2) -> None:
        if self.prompter is None:
            return
        z = int(point[0])
        depth = self.image.shape[0]
        self.prompter.prefetch([((id(self.image), 0, i), lambda i=i: self._slice(i))
                                for i in range(max(0, z - radius), min(depth, z + radius + 1))])

    def mask_probabilities(self, positives: Sequence[Point], negatives: Sequence[Point]
                           ) -> tuple[Optional[dict[int, float]], str]:
        """Per-supervoxel probabilities from SAM2 on the first positive point's section and
        its neighbours, computed on the model thread; (None, why) without SAM2."""
        if self.prompter is None:
            return None, self.description
        with self._lock:
            self._waiting += 1
            if self._waiting > 1:
                self.status(f"SAM2 busy: {self._waiting - 1} prompt(s) ahead of yours")
        try:
            return self._queue.submit(self._compute, positives, negatives).result()
        finally:
            with self._lock:
                self._waiting -= 1

    def _compute(self, positives, negatives) -> tuple[dict[int, float], str]:
        self.status("SAM2: segmenting from your prompts...")
        z = int(positives[0][0])
        points = [(p[1], p[2]) for p in positives if int(p[0]) == z] + \
            [(p[1], p[2]) for p in negatives if int(p[0]) == z]
        labels = [1] * sum(int(p[0]) == z for p in positives) + \
            [0] * sum(int(p[0]) == z for p in negatives)
        s = self.settings
        masks = self.prompter.segment(self._slice, lambda i: (id(self.image), 0, i), z, points,
                                      labels, self.image.shape[0], s.score_threshold,
                                      s.overlap_threshold, s.propagate)
        probabilities = supervoxel_probabilities({i: m.mask for i, m in masks.items()},
                                                 self._labels)
        self.status(None)
        return probabilities, f"SAM2 mask on {len(masks)} slice(s) + affinities"

    def close(self) -> None:
        self._queue.shutdown(wait=False, cancel_futures=True)
        if self.prompter is not None:
            self.prompter.close()

