"""The models: inference throughput of the shipped student (and FGNet), SAM2 encode and prompt
latency, FGNet's re-prediction around a click, and the shipped student's quality on the
held-out sections next to the intensity baseline and the data authors' supervoxels.

SAM2 and FGNet run with random weights here (no checkpoints can be downloaded): speed does not
depend on the weights. Runs on CUDA when there is one, else on the CPU; the JSON says which.
"""

from __future__ import annotations

import time
from pathlib import Path

import cc3d
import h5py
import numpy as np
import torch

from benchmarks.common import DEMO_H5, REPO, RESULTS, SHARED_DATA, percentiles
from promptcut.config import load_config
from segmentation.affinities import IntensityBaseline, calibration_samples
from segmentation.membership import lookup
from segmentation.metrics import scores
from segmentation.models.fgnet import FGNet, FGNetConfig, window_levels
from segmentation.models.learned import StudentAffinities
from segmentation.models.precision import bf16_supported
from segmentation.models.sam2_prompt import Sam2Prompter, build_model, pick_device
from segmentation.models.train_settings import TrainSettings
from segmentation.models.training import (agglomerate_affinities, best_threshold_scores,
                                          score_affinities)
from segmentation.volume import ArrayVolume

VALIDATION_SLICES = 40
GALA_H5 = SHARED_DATA / "gala_train.h5"


def shipped_checkpoint() -> Path:
    config = load_config(REPO / "configs" / "demo.yaml")
    return config.resolve(config.segment.checkpoint)


def read(path: Path, *keys: str, region=(slice(None),) * 3) -> list[np.ndarray]:
    with h5py.File(path, "r") as f:
        return [f[key][region] for key in keys]


def timed(fn, repeats: int) -> tuple[list[float], object]:
    samples, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - started) * 1000)
    return samples, result


def inference(checkpoint: Path, device: str, raw: np.ndarray) -> dict:
    """The shipped student's speed on one block, in each precision this device offers (bf16
    where the CPU has AMX / AVX-512 BF16 or the GPU has bfloat16; the pipeline picks it)."""
    block = raw[:64, :128, :128]
    rows = {}
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and not bf16_supported(pick_device(device)):
            continue
        student = StudentAffinities(checkpoint, device, precision=precision)
        student.predict(block)  # warm-up
        samples, _ = timed(lambda: student.predict(block), 3)
        best = min(samples) / 1000
        rows[precision] = {"block": list(block.shape), "seconds": round(best, 3),
                           "mvox_per_s": round(block.size / best / 1e6, 3)}
        print(f"student inference ({precision}): {rows[precision]['mvox_per_s']} Mvox/s")
    return rows


def sam2_and_fgnet(raw: np.ndarray, device: str) -> dict:
    torch.manual_seed(0)
    sam = build_model("sam2.1_hiera_t", None, device)
    prompter = Sam2Prompter(sam, cache_slices=8, keep_fpn=True)
    first = 77
    sections = raw[first:first + 7]  # the prompted section 80 and three on each side
    encode, _ = timed(lambda: prompter._encode(sections[3]), 3)
    features = prompter.features(("bench", 0, 80), lambda: sections[3])
    hit, _ = timed(lambda: prompter.features(("bench", 0, 80), lambda: sections[3]), 20)
    prompt, _ = timed(lambda: prompter.predict(features, [(125, 125)], [1]), 20)
    for i in range(len(sections)):  # neighbours cached, as the worker's prefetch leaves them
        prompter.features(("bench", 0, first + i), lambda i=i: sections[i])
    propagate, _ = timed(lambda: prompter.segment(lambda i: sections[i - first],
                                                  lambda i: ("bench", 0, i), 80, [(125, 125)],
                                                  [1], first + len(sections), 0.0, 0.0, 3), 3)
    fgnet = FGNet(sam.image_encoder, FGNetConfig(sam_image_size=int(sam.image_size)))
    fgnet = fgnet.to(pick_device(device)).eval()
    window = ((61, 189), (61, 189))
    pair = torch.from_numpy(np.stack([sections[2], sections[3]])[:, 61:189, 61:189]
                            .astype(np.float32) / 255)[None].to(pick_device(device))

    @torch.no_grad()
    def refine():
        return fgnet(pair, window_levels(features.fpn, features.shape, window))

    refine()
    around_click, _ = timed(refine, 5)
    whole = torch.from_numpy(np.stack([sections[2], sections[3]]).astype(np.float32) /
                             255)[None].to(pick_device(device))
    with torch.no_grad():
        section, _ = timed(lambda: fgnet(whole), 2)  # SAM2 encode of the section included
    prompter.close()
    return {"sam2_hiera_tiny": {"encode_slice": percentiles(encode),
                                "cached_slice": percentiles(hit),
                                "prompt_to_mask": percentiles(prompt),
                                "propagate_3_each_way_cached": percentiles(propagate)},
            "fgnet": {"window": 128, "reprediction_around_click": percentiles(around_click),
                      "whole_section_incl_sam2_mvox_per_s": round(
                          sections[3].size / (min(section) / 1000) / 1e6, 3)}}


def quality(student: StudentAffinities) -> dict:
    raw, labels, authors = read(DEMO_H5, "raw", "labels", "supervoxels",
                                region=(slice(-VALIDATION_SLICES, None), slice(None),
                                        slice(None)))
    rows = {}
    for name, path, image, truth, theirs in (
            ("neuroproof_ts2_dev_validation", DEMO_H5, raw, labels, authors),
            ("gala_train_unseen", GALA_H5, *read(GALA_H5, "raw", "labels", "supervoxels"))):
        baseline = IntensityBaseline(voxel_size=(10.0, 10.0, 10.0))
        baseline.fit([image])
        # as the pipeline predicts: normalisation fitted on crops of the volume, the same for
        # every block (blockwise equals this whole-volume prediction, see tests/test_seams.py)
        student.fit(calibration_samples(ArrayVolume(image)))
        fragments, ids, result = agglomerate_affinities(student.predict(image), (10, 10, 10),
                                                        TrainSettings.thresholds)
        ours = best_threshold_scores(truth, fragments, ids, result)
        rows[name] = {
            "shipped_student": ours,
            "intensity_baseline": score_affinities(baseline.predict(image), truth,
                                                   (10, 10, 10)),
            "authors_supervoxels": scores(truth, theirs).as_dict(),
            **floors(truth)}
        membership = result.memberships[result.thresholds.index(ours["threshold"])]
        figure(image, truth, lookup(ids, membership, fragments, missing=None), ours["threshold"],
               RESULTS / f"models_{name}.png")
    return rows


def figure(image: np.ndarray, truth: np.ndarray, ours: np.ndarray, threshold: float,
           path: Path) -> Path:
    """Three sections side by side: EM, ground truth, and the student's segmentation at its
    best threshold, each object in its own colour (the ones a proofreader would fix stand out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = np.random.default_rng(0).random((2 ** 16, 3)) * 0.8 + 0.2
    sections = np.linspace(0, image.shape[0] - 1, 5).round().astype(int)[1:-1]
    fig, axes = plt.subplots(len(sections), 3, figsize=(9, 3 * len(sections)))
    for row, z in zip(axes, sections):
        for ax, title, picture in (
                (row[0], f"EM, section {z}", image[z]),
                (row[1], "ground truth", colours[truth[z].astype(np.int64) % 2 ** 16]),
                (row[2], f"student, threshold {threshold:.1f}",
                 colours[ours[z].astype(np.int64) % 2 ** 16])):
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"figure -> {path}")
    return path


def floors(truth: np.ndarray) -> dict:
    """What the ground truth itself puts out of reach. A neuron that leaves the volume and comes
    back is one id in two pieces that no segmentation can join (its split is a floor), and at
    10 nm a boundary one voxel off already costs this much VOI (the ground truth has no boundary
    voxels, so where a membrane is split between two neurons is a convention)."""
    pieces = cc3d.connected_components(truth, connectivity=6)
    shifted = truth.copy()
    shifted[..., 1:] = truth[..., :-1]
    return {"ground_truth_vs_its_connected_pieces": scores(truth, pieces).as_dict(),
            "ground_truth_vs_itself_one_voxel_off_in_x": scores(truth, shifted).as_dict()}


def run() -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    checkpoint = shipped_checkpoint()
    student = StudentAffinities(checkpoint, device)
    (raw,) = read(DEMO_H5, "raw")
    figures = {"device": torch.cuda.get_device_name() if device == "cuda" else
               f"cpu ({torch.get_num_threads()} threads)",
               "shipped_checkpoint": str(checkpoint.relative_to(REPO)),
               "student_inference": inference(checkpoint, device, raw),
               **sam2_and_fgnet(raw, device),
               "quality": quality(student)}
    for dataset, row in figures["quality"].items():
        print(f"{dataset}: " + ", ".join(f"{name} VOI {r['voi']:.3f} (split {r['voi_split']:.3f}"
                                         f", merge {r['voi_merge']:.3f}) ARAND {r['arand']:.3f}"
                                         for name, r in row.items()))
    return figures
