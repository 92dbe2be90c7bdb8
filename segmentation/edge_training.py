"""Train the edge classifier on a segmented project's RAG against ground truth, and score it.

The first sections train it, the last ``validation_slices`` sections score both merge orders
(the quantile one and the learned one) at every threshold, so the model's metadata says how
it compares on data it has not seen.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from segmentation import edge_classifier
from segmentation.agglomerate import agglomerate
from segmentation.errors import InputError
from segmentation.metrics import Contingency
from segmentation.project import Project
from segmentation.rag import Rag

MARGIN = 4  # sections: nodes centred this close to the validation sections do not train


def train_edges(project: Project, truth: np.ndarray, output: Path, validation_slices: int,
                thresholds: list[float], epochs: int = 2) -> dict:
    """Fit, score on the validation sections, save the model and its metadata; returns it."""
    if not (project.root / "rag.npz").is_file():
        raise InputError("the edge classifier learns from a segmented project: run "
                         "`promptcut segment` first")
    supervoxels = project.volume("segmentation").read(slice(None), slice(None), slice(None))
    if truth.shape != supervoxels.shape:
        raise InputError(f"ground truth {truth.shape} and supervoxels {supervoxels.shape} "
                         f"differ in shape")
    split = truth.shape[0] - validation_slices
    if not 0 < split < truth.shape[0]:
        raise InputError(f"train.validation_slices must leave sections to train on and to "
                         f"validate on, got {validation_slices} of {truth.shape[0]}")
    rag = Rag.load(project.root / "rag.npz")
    seen = Contingency.of(truth[:split], supervoxels[:split])
    labels = edge_classifier.majority_labels(rag, seen)
    started = time.perf_counter()
    booster = edge_classifier.fit(rag, labels, rag.centroid[:, 0] < split - MARGIN, epochs)
    seconds = time.perf_counter() - started
    unseen = Contingency.of(truth[split:], supervoxels[split:])
    scores = {"quantile": _scored(unseen, rag, agglomerate(rag, thresholds)),
              "learned": _scored(unseen, rag, agglomerate(
                  rag, thresholds, score=edge_classifier.LearnedScore(booster)))}
    metadata = {"data": project.manifest.dataset or project.manifest.name,
                "training_sections": [0, split], "validation_sections": [split,
                                                                         truth.shape[0]],
                "epochs": epochs, "training_seconds": round(seconds, 1),
                "validation": scores}
    output.parent.mkdir(parents=True, exist_ok=True)
    edge_classifier.save(booster, output, metadata)
    return metadata


def _scored(table: Contingency, rag: Rag, result) -> list[dict]:
    rows = []
    for threshold, membership in zip(result.thresholds, result.memberships):
        s = table.relabelled(rag.ids, membership).scores()
        rows.append({"threshold": threshold, "voi_split": round(s.voi_split, 3),
                     "voi_merge": round(s.voi_merge, 3), "voi": round(s.voi, 3),
                     "arand": round(s.arand, 3)})
    return rows


def best(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["voi"])


def train_from_decisions(project: Project, base: Path, output: Path, trees: int = 50) -> dict:
    """Retrain the edge classifier at ``base`` from the proofreaders' decisions in the
    project's edit log: the segments they decided on (merged, kept apart, cut, reviewed) as
    they are now are taken for ground truth, and ``trees`` more trees are fitted to the
    contacts inside and between them, in the order an agglomeration would meet them. The
    rest of the volume, which nobody checked, teaches nothing. Saves and returns the
    metadata."""
    from segmentation.proofread import open_session

    session = open_session(project)
    try:
        rag = Rag.load(project.root / "rag.npz")
        labels = session.segments_before_divisions(rag.ids)
        confirmed, separated = session.decisions()
        touched = np.array(sorted({sv for pair in confirmed + separated for sv in pair}),
                           np.uint64)
        decided = set(session.segments_of(touched).tolist()) | set(session.reviewed())
        decided.discard(0)
        operations = len(session.log)
    finally:
        session.log.close()
    use = np.isin(labels, np.array(sorted(decided), np.uint64))
    if not decided or use.sum() < 2:
        raise InputError(f"the edit log of {project.root} holds no decisions to learn from: "
                         f"proofread first (focused proofreading's Y and W, merges, cuts, "
                         f"review marks)")
    booster = edge_classifier.load(base)
    started = time.perf_counter()
    features, targets = edge_classifier.training_set(rag, labels, use, booster)
    retrained = edge_classifier.train(features, targets, trees, init=booster)
    metadata = {"data": project.manifest.dataset or project.manifest.name,
                "retrained_from": str(base), "operations": operations,
                "decided_segments": len(decided), "supervoxels": int(use.sum()),
                "rows": int(len(targets)), "same_neuron_rows": int(targets.sum()),
                "more_trees": trees,
                "training_seconds": round(time.perf_counter() - started, 1)}
    output.parent.mkdir(parents=True, exist_ok=True)
    edge_classifier.save(retrained, output, metadata)
    return metadata
