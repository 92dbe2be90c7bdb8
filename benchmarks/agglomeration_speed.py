"""RAG + agglomeration against waterz, side by side on the demo's own affinities and
supervoxels (issues 14 and 15).

Each method gets the same input, the segmented demo project's uint8 affinities and its
supervoxels (as waterz's fragments), the whole volume in one piece on one thread:

- ``rag``: ``block_contacts`` + ``block_node_stats`` + ``build_rag`` (what the pipeline does per
  block),
- ``quantile``: the RAG, then waterz's order (1 - median affinity) on it,
- ``learned``: the RAG, then the shipped edge classifier's order (the demo config's),
- ``waterz``: its own RAG and agglomeration, ``OneMinus<HistogramQuantileAffinity<.., 50, ..,
  256, false>>`` on float32 affinities (the conversion is not timed).

Times are medians of ``REPEATS`` runs, wall clock and CPU time of this process (the machine is
shared: CPU time moves less with others' load). VOI and ARAND are scored against the demo's
ground truth at every threshold, on the whole volume and on the validation sections (z 120-159,
never trained on), so equal speed can be read at equal quality. Writes
``benchmarks/results/agglomeration_speed.json`` and ``agglomeration_speed.png``. Needs the demo
project: ``promptcut segment --config configs/demo.yaml``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from benchmarks.agglomeration import PROJECT, VALIDATION_SLICES
from benchmarks.common import DEMO_H5, RESULTS
from segmentation import edge_classifier
from segmentation.agglomerate import agglomerate
from segmentation.errors import InputError
from segmentation.metrics import Contingency
from segmentation.project import Project
from segmentation.rag import block_contacts, block_node_stats, build_rag
from segmentation.volume import open_zarr

THRESHOLDS = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
REPEATS = int(os.environ.get("PROMPTCUT_BENCH_REPEATS", "5"))
WATERZ_SCORE = "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, false>>"


def timed(work: Callable, repeats: int = REPEATS) -> tuple[object, dict]:
    """The last result and the median wall and CPU seconds of ``repeats`` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = work()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return result, {"wall_s": round(float(np.median(wall)), 3),
                    "cpu_s": round(float(np.median(cpu)), 3),
                    "wall_all_s": [round(w, 3) for w in wall]}


def run_waterz(affinities: np.ndarray, supervoxels: np.ndarray) -> tuple[list, float, float]:
    """waterz's segmentations at every threshold, and the wall and CPU seconds it spent (the
    copies of its reused output buffer not counted)."""
    import waterz

    fragments = supervoxels.copy()  # waterz relabels its fragments in place
    segmentations, wall, cpu = [], 0.0, 0.0
    results = waterz.agglomerate(affinities, THRESHOLDS, fragments=fragments,
                                 scoring_function=WATERZ_SCORE)
    while True:
        started, started_cpu = time.perf_counter(), time.process_time()
        segmentation = next(results, None)
        wall += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
        if segmentation is None:
            return segmentations, wall, cpu
        segmentations.append(segmentation.copy())


def scored(tables: dict, relabel: Callable) -> list[dict]:
    """VOI and ARAND at every threshold; ``relabel(table, i)`` gives threshold i's
    contingency table from ``tables``' entry."""
    rows = []
    for i, threshold in enumerate(THRESHOLDS):
        row = {"threshold": threshold}
        for name, table in tables.items():
            s = relabel(table, i).scores()
            row[name] = {"voi": round(s.voi, 3), "voi_split": round(s.voi_split, 3),
                         "voi_merge": round(s.voi_merge, 3), "arand": round(s.arand, 3)}
        rows.append(row)
    return rows


def best(rows: list[dict], part: str) -> dict:
    top = min(rows, key=lambda r: r[part]["voi"])
    return {"threshold": top["threshold"], **top[part]}


def run() -> dict:
    if not (PROJECT / "rag.npz").is_file():
        raise InputError(f"no segmented demo project at {PROJECT}: run `promptcut segment "
                         f"--config configs/demo.yaml` first")
    supervoxels = Project.open(PROJECT).volume("segmentation").read(
        slice(None), slice(None), slice(None))
    affinities = open_zarr(PROJECT / "affinities")[0:3].read().result()
    with h5py.File(DEMO_H5, "r") as f:
        truth = f["labels"][:]
    first = truth.shape[0] - VALIDATION_SLICES
    voxels = int(supervoxels.size)
    booster = edge_classifier.load(edge_classifier.SHIPPED_EDGE_MODEL)

    def graph():
        return build_rag(block_node_stats(supervoxels, (0, 0, 0)),
                         block_contacts(supervoxels, affinities, (0, 0, 0)))

    rag, rag_time = timed(graph)
    tables = {"whole": Contingency.of(truth, supervoxels),
              "validation": Contingency.of(truth[first:], supervoxels[first:])}
    figures: dict = {"voxels": voxels, "supervoxels": rag.num_nodes, "edges": rag.num_edges,
                     "repeats": REPEATS, "thresholds": THRESHOLDS, "rag": rag_time}
    orders = {"quantile": lambda: None,
              "learned": lambda: edge_classifier.LearnedScore(booster)}
    for name, score in orders.items():
        result, seconds = timed(lambda: agglomerate(rag, THRESHOLDS, score=score()))
        total = {k: round(rag_time[k] + seconds[k], 3) for k in ("wall_s", "cpu_s")}
        rows = scored(tables, lambda table, i: table.relabelled(rag.ids,
                                                                result.memberships[i]))
        figures[name] = {"agglomeration": seconds, "rag_plus_agglomeration": total,
                         "Mvox_per_s": round(voxels / 1e6 / total["wall_s"], 2),
                         "Mvox_per_s_cpu": round(voxels / 1e6 / total["cpu_s"], 2),
                         "by_threshold": rows, "best_whole": best(rows, "whole"),
                         "best_validation": best(rows, "validation")}

    float_affinities = affinities.astype(np.float32) / 255.0
    walls, cpus = [], []
    for _ in range(REPEATS):
        segmentations, wall, cpu = run_waterz(float_affinities, supervoxels)
        walls.append(wall)
        cpus.append(cpu)
    total = {"wall_s": round(float(np.median(walls)), 3),
             "cpu_s": round(float(np.median(cpus)), 3),
             "wall_all_s": [round(w, 3) for w in walls]}
    parts = {"whole": slice(None), "validation": slice(first, None)}
    rows = scored(parts, lambda part, i: Contingency.of(truth[part], segmentations[i][part]))
    figures["waterz"] = {"scoring_function": WATERZ_SCORE, "rag_plus_agglomeration": total,
                         "Mvox_per_s": round(voxels / 1e6 / total["wall_s"], 2),
                         "Mvox_per_s_cpu": round(voxels / 1e6 / total["cpu_s"], 2),
                         "by_threshold": rows, "best_whole": best(rows, "whole"),
                         "best_validation": best(rows, "validation")}
    for name in ("quantile", "learned", "waterz"):
        entry = figures[name]
        print(f"{name:>9}: RAG + agglomeration {entry['rag_plus_agglomeration']['wall_s']:.2f} s "
              f"wall, {entry['rag_plus_agglomeration']['cpu_s']:.2f} s CPU "
              f"({entry['Mvox_per_s']} Mvox/s); best VOI whole {entry['best_whole']['voi']} at "
              f"{entry['best_whole']['threshold']}, validation {entry['best_validation']['voi']}"
              f" (ARAND {entry['best_validation']['arand']}) at "
              f"{entry['best_validation']['threshold']}")
    print(f"      rag: {rag_time['wall_s']:.2f} s wall, {rag_time['cpu_s']:.2f} s CPU")
    figures["figure"] = str(figure(figures, RESULTS / "agglomeration_speed.png"))
    return figures


def figure(figures: dict, path: Path) -> Path:
    """Left: CPU seconds per method (RAG and agglomeration stacked; steadier than the wall
    clock on a shared machine); right: validation VOI at every threshold, so a faster method
    is read at the quality it reaches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["quantile", "learned", "waterz"]
    rag = figures["rag"]["cpu_s"]
    agglomeration = [figures[n]["agglomeration"]["cpu_s"] for n in names[:2]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names[:2], [rag, rag], label="RAG")
    left.bar(names[:2], agglomeration, bottom=[rag, rag], label="agglomeration")
    left.bar(names[2:], [figures["waterz"]["rag_plus_agglomeration"]["cpu_s"]],
             label="waterz (RAG + agglomeration)")
    left.set_ylabel("seconds (median CPU time)")
    left.set_title(f"{figures['voxels'] / 1e6:.0f} Mvox, {figures['supervoxels']} supervoxels, "
                   "one thread", fontsize=9)
    left.legend(fontsize=8, loc="upper left")
    for name in names:
        rows = figures[name]["by_threshold"]
        right.plot([r["threshold"] for r in rows], [r["validation"]["voi"] for r in rows],
                   marker="o", label=name)
    right.set_xlabel("threshold")
    right.set_ylabel("VOI, validation sections (bits)")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
