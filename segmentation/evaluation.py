"""Score a segmented project against ground truth: supervoxels, their best merge, and the
agglomeration at every threshold, from one blockwise pass over the volumes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from segmentation.agglomerate import Segments
from segmentation.blockwise import make_blocks
from segmentation.errors import InputError
from segmentation.metrics import Contingency, Scores
from segmentation.project import Project
from segmentation.proofread import project_supervoxels


@dataclass
class Row:
    name: str
    threshold: Optional[float]
    segments: int
    scores: Scores


def contingency_table(ground_truth, supervoxels, block=(128, 256, 256),
                      progress: bool = False) -> Contingency:
    """(ground truth, supervoxel) overlaps, summed over blocks: memory bounded by the block."""
    if tuple(ground_truth.shape) != tuple(supervoxels.shape):
        raise InputError(f"ground truth {tuple(ground_truth.shape)} and supervoxels "
                         f"{tuple(supervoxels.shape)} differ in shape")
    parts = []
    blocks = make_blocks(supervoxels.shape, block)
    for b in tqdm(blocks, desc="evaluate", disable=not progress, leave=False, unit="block"):
        parts.append(Contingency.of(ground_truth.read(*b.core), supervoxels.read(*b.core)))
    return Contingency.concatenate(parts)


def evaluate(project: Project, ground_truth, progress: bool = False) -> list[Row]:
    supervoxels = project_supervoxels(project)  # with divided supervoxels
    table = contingency_table(ground_truth, supervoxels, progress=progress)
    rows = [Row("supervoxels", None, len(np.unique(table.seg)), table.scores()),
            Row("supervoxels, best merge", None, len(np.unique(table.gt)),
                table.best_merge().scores())]
    segments = Segments.load(project.root / "segments.npz")
    if segments is not None:
        for threshold, membership in zip(segments.thresholds, segments.membership):
            merged = table.relabelled(segments.ids, membership)
            rows.append(Row("agglomeration", float(threshold), len(np.unique(membership)),
                            merged.scores()))
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'result':<26}{'threshold':>10}{'segments':>10}{'VOI split':>11}{'VOI merge':>11}"
             f"{'VOI':>8}{'ARAND':>8}"]
    for r in rows:
        threshold = "" if r.threshold is None else f"{r.threshold:.2f}"
        s = r.scores
        lines.append(f"{r.name:<26}{threshold:>10}{r.segments:>10}{s.voi_split:>11.3f}"
                     f"{s.voi_merge:>11.3f}{s.voi:>8.3f}{s.arand:>8.3f}")
    return "\n".join(lines)


def save(rows: list[Row], folder: Path, title: str) -> tuple[Path, Path]:
    """evaluation.json and evaluation.png in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = [{"name": r.name, "threshold": r.threshold, "segments": r.segments,
             **{k: float(v) for k, v in r.scores.as_dict().items()}} for r in rows]
    json_path = folder / "evaluation.json"
    json_path.write_text(json.dumps(data, indent=2))
    png_path = folder / "evaluation.png"
    plot(rows, png_path, title)
    return json_path, png_path


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = [r for r in rows if r.threshold is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    if curve:
        left.plot([r.scores.voi_merge for r in curve], [r.scores.voi_split for r in curve],
                  "o-", color="#2d6cdf", label="agglomeration")
        for r in curve:
            left.annotate(f"{r.threshold:.2f}", (r.scores.voi_merge, r.scores.voi_split),
                          textcoords="offset points", xytext=(4, 4), fontsize=8)
        right.plot([r.threshold for r in curve], [r.scores.arand for r in curve], "o-",
                   color="#2d6cdf", label="adapted Rand error")
        right.plot([r.threshold for r in curve], [r.scores.voi for r in curve], "s--",
                   color="#e07b39", label="VOI (split + merge)")
    markers = {"supervoxels": ("^", "#555555"), "supervoxels, best merge": ("*", "#2a9d3a")}
    for r in rows:
        if r.name in markers:
            marker, colour = markers[r.name]
            left.plot([r.scores.voi_merge], [r.scores.voi_split], marker, color=colour,
                      markersize=10, label=r.name)
    left.set_xlabel("VOI merge (bits)")
    left.set_ylabel("VOI split (bits)")
    left.set_title("split / merge trade-off (lower left is better)")
    left.legend(fontsize=8)
    right.set_xlabel("agglomeration threshold")
    right.set_ylabel("error")
    right.set_title("error by threshold")
    right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
