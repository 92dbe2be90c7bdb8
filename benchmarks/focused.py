"""Focused proofreading, simulated (issue 14): VOI after 0, 25, 50, 100 and 200 yes/no
decisions on the demo's validation sections (z 120-159), an oracle answering the queue's
questions from the ground truth, starting from the shipped learned agglomeration at the demo's
threshold. Needs the demo project: `promptcut segment --config configs/demo.yaml`.
"""

from __future__ import annotations

import time

import h5py

from benchmarks.agglomeration import PROJECT, VALIDATION_SLICES
from benchmarks.common import DEMO_H5, REPO
from promptcut.config import load_config
from segmentation import edge_classifier
from segmentation.agglomerate import agglomerate
from segmentation.errors import InputError
from segmentation.metrics import Contingency
from segmentation.oracle import simulate_focused
from segmentation.project import Project
from segmentation.rag import Rag

CHECKPOINTS = (0, 25, 50, 100, 200)


def run() -> dict:
    if not (PROJECT / "rag.npz").is_file():
        raise InputError(f"no segmented demo project at {PROJECT}: run `promptcut segment "
                         f"--config configs/demo.yaml` first")
    threshold = load_config(REPO / "configs" / "demo.yaml").segment.agglomeration \
        .default_threshold
    volume = Project.open(PROJECT).volume("segmentation")
    first = volume.shape[0] - VALIDATION_SLICES
    supervoxels = volume.read(slice(first, None), slice(None), slice(None))
    with h5py.File(DEMO_H5, "r") as f:
        truth = f["labels"][first:]
    rag = Rag.load(PROJECT / "rag.npz")
    booster = edge_classifier.load(edge_classifier.SHIPPED_EDGE_MODEL)
    (start,) = agglomerate(rag, [threshold],
                           score=edge_classifier.LearnedScore(booster)).memberships

    def in_validation(graph, a, b):  # both segments reach into the validation sections
        return (graph.bbox[a, 3] > first) & (graph.bbox[b, 3] > first)

    started = time.perf_counter()
    scores = simulate_focused(rag, start, booster, Contingency.of(truth, supervoxels),
                              max(CHECKPOINTS), in_validation)
    seconds = time.perf_counter() - started
    curve = {n: round(float(scores[min(n, len(scores) - 1)].voi), 3) for n in CHECKPOINTS}
    print("focused: VOI after " + ", ".join(f"{n}: {v}" for n, v in curve.items())
          + f" decisions ({seconds / max(len(scores) - 1, 1) * 1000:.0f} ms per question)")
    return {"start_threshold": threshold, "voi_after_decisions": curve,
            "arand_after_200": round(float(scores[-1].arand), 3),
            "ms_per_question": round(seconds / max(len(scores) - 1, 1) * 1000, 1)}
