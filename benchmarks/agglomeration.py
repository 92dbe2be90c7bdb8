"""Learned against quantile agglomeration on the demo's own graph (issue 14).

Trains the edge classifier on the training sections (z 0-119) of the segmented demo project,
scores both merge orders on the validation sections (z 120-159) at several thresholds, and
times each order's agglomeration of the whole graph. Needs the demo project:
`promptcut segment --config configs/demo.yaml` (the first step of `make demo`).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import h5py

from benchmarks.common import DEMO_H5, REPO
from segmentation import edge_classifier
from segmentation.agglomerate import agglomerate
from segmentation.edge_training import best, train_edges
from segmentation.errors import InputError
from segmentation.project import Project
from segmentation.rag import Rag

PROJECT = Path(os.environ.get("PROMPTCUT_DEMO_PROJECT", REPO / "build" / "demo"))
VALIDATION_SLICES = 40  # z 120-159, as for the student
THRESHOLDS = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def run() -> dict:
    if not (PROJECT / "rag.npz").is_file():
        raise InputError(f"no segmented demo project at {PROJECT}: run `promptcut segment "
                         f"--config configs/demo.yaml` first")
    with h5py.File(DEMO_H5, "r") as f:
        truth = f["labels"][:]
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "edges.txt"
        found = train_edges(Project.open(PROJECT), truth, model, VALIDATION_SLICES, THRESHOLDS)
        booster = edge_classifier.load(model)
    rag = Rag.load(PROJECT / "rag.npz")
    orders = {"quantile": None, "learned": edge_classifier.LearnedScore(booster)}
    results = {"training_s": found["training_seconds"]}
    for name, score in orders.items():
        started = time.perf_counter()
        agglomerate(rag, THRESHOLDS, score=score)
        seconds = time.perf_counter() - started
        top = best(found["validation"][name])
        print(f"{name:>9}: {seconds:.2f} s for {rag.num_nodes} supervoxels; best validation "
              f"VOI {top['voi']} (split {top['voi_split']} + merge {top['voi_merge']}), ARAND "
              f"{top['arand']} at {top['threshold']}")
        results[name] = {"seconds": round(seconds, 3), "by_threshold": found["validation"][name],
                         "best": top}
    return results
