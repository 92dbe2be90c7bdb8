"""Learned against quantile agglomeration on the demo's own RAG (issue 14, first step).

Trains the edge classifier on the training sections (z 0-119) of the segmented demo project,
then agglomerates the whole RAG both ways and scores the validation sections (z 120-159)
against ground truth at several thresholds, with each method's time. Needs the demo project:
`promptcut segment --config configs/demo.yaml` (the first step of `make demo`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py

from benchmarks.common import DEMO_H5, REPO
from segmentation import edge_classifier
from segmentation.agglomerate import agglomerate
from segmentation.errors import InputError
from segmentation.metrics import Contingency
from segmentation.project import Project
from segmentation.rag import Rag

PROJECT = Path(os.environ.get("PROMPTCUT_DEMO_PROJECT", REPO / "build" / "demo"))
SPLIT = 120  # first validation section, as for the student
THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def run() -> dict:
    if not (PROJECT / "rag.npz").is_file():
        raise InputError(f"no segmented demo project at {PROJECT}: run `promptcut segment "
                         f"--config configs/demo.yaml` first")
    project = Project.open(PROJECT)
    rag = Rag.load(PROJECT / "rag.npz")
    supervoxels = project.volume("segmentation").read(slice(None), slice(None), slice(None))
    with h5py.File(DEMO_H5, "r") as f:
        truth = f["labels"][:]
    train = Contingency.of(truth[:SPLIT], supervoxels[:SPLIT])
    labels = edge_classifier.majority_labels(rag, train.gt, train.seg, train.count)
    started = time.perf_counter()
    features, same = edge_classifier.training_set(rag, labels, rag.centroid[:, 0] < SPLIT - 4)
    booster = edge_classifier.train(features, same)
    training_s = time.perf_counter() - started
    validation = Contingency.of(truth[SPLIT:], supervoxels[SPLIT:])
    floor = validation.best_merge().scores()
    results = {"training_rows": int(len(features)), "training_s": round(training_s, 2),
               "validation_best_merge_voi": round(floor.voi, 3)}
    for name, method in (("quantile", lambda: agglomerate(rag, THRESHOLDS)),
                         ("learned", lambda: edge_classifier.agglomerate_learned(
                             rag, booster, THRESHOLDS))):
        started = time.perf_counter()
        result = method()
        seconds = time.perf_counter() - started
        rows = []
        for threshold, membership in zip(result.thresholds, result.memberships):
            s = validation.relabelled(rag.ids, membership).scores()
            rows.append({"threshold": threshold, "voi_split": round(s.voi_split, 3),
                         "voi_merge": round(s.voi_merge, 3), "voi": round(s.voi, 3),
                         "arand": round(s.arand, 3)})
        best = min(rows, key=lambda r: r["voi"])
        print(f"{name:>9}: {seconds:.2f} s; best validation VOI {best['voi']} "
              f"(split {best['voi_split']} + merge {best['voi_merge']}), ARAND {best['arand']} "
              f"at {best['threshold']}")
        results[name] = {"seconds": round(seconds, 3), "by_threshold": rows, "best": best}
    return results
