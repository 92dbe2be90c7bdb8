"""Blockwise model inference equals whole-volume inference: a seam at a block face once made
one supervoxel hold 43% of a volume and two neurons."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from promptcut.config import load_config
from segmentation.affinities import calibration_samples
from segmentation.blockwise import make_blocks
from segmentation.metrics import scores
from segmentation.models.learned import StudentAffinities
from segmentation.models.training import agglomerate_affinities
from segmentation.pipeline import block_affinities
from segmentation.volume import ArrayVolume

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def near_faces(shape, blocks, width: int = 8) -> np.ndarray:
    near = np.zeros(shape, bool)
    for block in blocks:
        for axis, piece in enumerate(block.core):
            for face in (piece.start, piece.stop):
                if 0 < face < shape[axis]:
                    where = [slice(None)] * 3
                    where[axis] = slice(max(0, face - width), face + width)
                    near[tuple(where)] = True
    return near


@pytest.mark.slow
def test_blockwise_affinities_and_segmentation_match_whole_volume_prediction(demo_h5):
    config = load_config(DEMO_CONFIG)
    with h5py.File(demo_h5, "r") as f:
        raw = f["raw"][:]
    model = StudentAffinities(config.resolve(config.segment.checkpoint), "cpu")
    model.fit(calibration_samples(ArrayVolume(raw)))
    whole = (model.predict(raw) * 255).round().astype(np.int16)
    blocks = make_blocks(raw.shape, config.segment.block_shape)
    assert len(blocks) == 8
    blockwise = np.zeros(whole.shape, np.int16)
    for block in blocks:
        blockwise[(slice(None),) + block.core] = block_affinities(
            model, lambda *region: raw[region], block)
    difference = np.abs(whole - blockwise)
    near = near_faces(raw.shape, blocks)
    assert difference.mean() <= 1.0
    assert difference[:, near].mean() <= 2.0

    threshold = config.segment.agglomeration.default_threshold
    segmented = []
    for affinities in (whole, blockwise):
        fragments, ids, result = agglomerate_affinities(affinities / 255.0, (10, 10, 10),
                                                        [threshold])
        lookup = np.zeros(int(ids.max()) + 1, np.uint64)
        lookup[ids.astype(np.int64)] = result.memberships[0]
        segmented.append(lookup[fragments.astype(np.int64)])
    between = scores(*segmented)
    assert between.voi <= 0.05, between
