"""The models: inference throughput of the shipped student (and FGNet), SAM2 encode and prompt
latency, FGNet's re-prediction around a click, and the shipped student's quality on the
held-out sections next to the intensity baseline and the data authors' supervoxels.

SAM2 and FGNet run with random weights here (no checkpoints can be downloaded): speed does not
depend on the weights. Runs on CUDA when there is one, else on the CPU; the JSON says which.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import torch

from benchmarks.common import DEMO_H5, REPO, SHARED_DATA, percentiles
from promptcut.config import load_config
from segmentation.affinities import IntensityBaseline
from segmentation.metrics import scores
from segmentation.models.fgnet import FGNet, FGNetConfig, window_levels
from segmentation.models.learned import StudentAffinities
from segmentation.models.sam2_prompt import Sam2Prompter, build_model, pick_device
from segmentation.models.training import score_affinities

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


def inference(student: StudentAffinities, raw: np.ndarray) -> dict:
    block = raw[:64, :128, :128]
    student.predict(block)  # warm-up
    samples, _ = timed(lambda: student.predict(block), 3)
    best = min(samples) / 1000
    return {"block": list(block.shape), "seconds": round(best, 3),
            "mvox_per_s": round(block.size / best / 1e6, 3)}


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
        baseline.fit(image)
        rows[name] = {
            "shipped_student": score_affinities(student.predict(image), truth, (10, 10, 10)),
            "intensity_baseline": score_affinities(baseline.predict(image), truth,
                                                   (10, 10, 10)),
            "authors_supervoxels": scores(truth, theirs).as_dict()}
    return rows


def run() -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    student = StudentAffinities(shipped_checkpoint(), device)
    (raw,) = read(DEMO_H5, "raw")
    figures = {"device": torch.cuda.get_device_name() if device == "cuda" else
               f"cpu ({torch.get_num_threads()} threads)",
               "shipped_checkpoint": str(shipped_checkpoint().relative_to(REPO)),
               "student_inference": inference(student, raw),
               **sam2_and_fgnet(raw, device),
               "quality": quality(student)}
    for dataset, row in figures["quality"].items():
        print(f"{dataset}: " + ", ".join(f"{name} VOI {r['voi']:.3f} (split {r['voi_split']:.3f}"
                                         f", merge {r['voi_merge']:.3f}) ARAND {r['arand']:.3f}"
                                         for name, r in row.items()))
    return figures
