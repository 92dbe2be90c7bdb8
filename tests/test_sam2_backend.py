"""The SAM2 prompt backend with a randomly initialised hiera-tiny saved in the official
checkpoint format: loading, mask shapes, the embedding cache, propagation and supervoxel
probabilities. Random weights say nothing about quality; these tests are about the plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segmentation.errors import InputError
from segmentation.models.sam2_prompt import (Sam2Prompter, build_model, iou,
                                             supervoxel_probabilities)

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(CONFIG, None, "cpu")
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def prompter(checkpoint):
    model = build_model(CONFIG, checkpoint, "auto")
    yield Sam2Prompter(model, cache_slices=4)


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (5, 40, 48), dtype=np.uint8)


def test_loads_the_official_format_and_gives_masks_of_the_slice_shape(prompter, volume,
                                                                      checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    loaded = prompter.model.state_dict()
    key = next(iter(state["model"]))
    assert torch.equal(state["model"][key], loaded[key].cpu())
    features = prompter.features(("demo", 0, 2), lambda: volume[2])
    assert tuple(features.image_embed.shape) == (1, 256, 64, 64)
    assert [tuple(f.shape) for f in features.high_res_feats] == [(1, 32, 256, 256),
                                                                 (1, 64, 128, 128)]
    result = prompter.predict(features, [(20, 24)], [1])
    assert result.mask.shape == (40, 48) and result.mask.dtype == bool
    assert isinstance(result.score, float)
    two = prompter.predict(features, [(20, 24), (5, 5)], [1, 0])
    assert two.mask.shape == (40, 48)


def test_a_cached_slice_is_not_encoded_again(prompter, volume):
    before = prompter.encodings
    prompter.features(("demo", 0, 3), lambda: volume[3])
    prompter.features(("demo", 0, 3), lambda: pytest.fail("read again"))
    assert prompter.encodings == before + 1 and prompter.cached(("demo", 0, 3))


def test_prefetch_encodes_around_the_cursor_in_the_background(prompter, volume):
    futures = prompter.prefetch([(("demo", 0, i), lambda i=i: volume[i]) for i in (0, 1)])
    for future in futures:
        future.result(timeout=60)
    assert prompter.cached(("demo", 0, 0)) and prompter.cached(("demo", 0, 1))
    encodings = prompter.encodings
    prompter.features(("demo", 0, 1), lambda: pytest.fail("read again"))
    assert prompter.encodings == encodings


def test_propagation_stops_at_the_thresholds(prompter, volume):
    read = lambda i: volume[i]  # noqa: E731
    key = lambda i: ("demo", 0, i)  # noqa: E731
    alone = prompter.segment(read, key, 2, [(20, 24)], [1], count=5, score_threshold=2.0)
    assert sorted(alone) == [2]  # no score reaches 2: only the prompted slice
    everywhere = prompter.segment(read, key, 2, [(20, 24)], [1], count=5,
                                  score_threshold=-1.0, overlap_threshold=-1.0)
    # this seeded model's mask there is not empty on any slice: nothing stops it but the ends
    assert sorted(everywhere) == [0, 1, 2, 3, 4]
    assert all(m.mask.any() for m in everywhere.values())
    apart = prompter.segment(read, key, 2, [(20, 24)], [1], count=5, score_threshold=-1.0,
                             overlap_threshold=1.01)
    assert sorted(apart) == [2]  # no IoU reaches 1.01: only the prompted slice


def test_supervoxel_probabilities_are_mask_fractions():
    labels = np.zeros((2, 4, 4), np.uint64)
    labels[:, :, :2], labels[:, :, 2:] = 7, 9
    masks = {0: np.zeros((4, 4), bool), 1: np.zeros((4, 4), bool)}
    masks[0][:, :2] = True
    masks[1][:2, :3] = True
    probabilities = supervoxel_probabilities(masks, lambda i: labels[i])
    assert probabilities == {7: pytest.approx(12 / 16), 9: pytest.approx(2 / 16)}
    assert iou(masks[0], masks[0]) == 1.0


def test_missing_and_mismatched_checkpoints_name_the_file(tmp_path, checkpoint):
    with pytest.raises(InputError, match="not found: .*nope.pt"):
        build_model(CONFIG, tmp_path / "nope.pt", "cpu")
    with pytest.raises(InputError, match="sam2.1_hiera_tiny.pt does not fit config"):
        build_model("configs/sam2.1/sam2.1_hiera_s.yaml", checkpoint, "cpu")
    bare = tmp_path / "bare.pt"
    torch.save({"weights": {}}, bare)
    with pytest.raises(InputError, match="official SAM2 checkpoint format"):
        build_model(CONFIG, bare, "cpu")
    with pytest.raises(InputError, match="not found"):
        build_model("sam2.1_hiera_huge", None, "cpu")
