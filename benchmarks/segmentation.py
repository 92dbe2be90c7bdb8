"""The segmentation pipeline on the demo: throughput on 1 and 2 workers, quality against the
data authors' supervoxels, and peak memory on the demo against the demo tiled 2 x 2 x 2.

Throughput counts supervoxels + RAG + agglomeration (the pipeline's own stage timings; the
affinity model, meshes and the Dask cluster's start-up are reported apart).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import yaml

from benchmarks.common import DEMO_H5, REPO, write_result

BLOCK = [192, 128, 128]  # the demo's z in one block: a halo only in y and x
AUTHORS = {"voi_split": 2.41, "voi_merge": 0.32, "best_merge_split": 0.37,
           "best_merge_merge": 0.38}


def config_for(folder: Path, image: dict, block_shape, workers: int, meshes: bool) -> Path:
    config = {"name": "benchmark", "project": str(folder / "project"),
              "dataset": {"name": "neuroproof_ts2_dev", "voxel_size": [10, 10, 10]},
              "image": image,
              "segment": {"block_shape": block_shape, "workers": workers, "meshes": meshes}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_segment(config: Path) -> tuple[dict, float]:
    """Run `promptcut segment` in a fresh process; return its timings and the peak resident
    memory of it and all its Dask workers together (MB)."""
    command = [sys.executable, "-c", SEGMENT_SNIPPET, str(config)]
    process = psutil.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    peak = 0.0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            try:
                tree = [process] + process.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()) / 1e6)
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"segment failed: {out}")
    return yaml.safe_load(out.strip().splitlines()[-1]), peak


SEGMENT_SNIPPET = """
import sys, time, json
from promptcut.config import load_config
from promptcut.segmenting import run_segment
started = time.perf_counter()
report = run_segment(load_config(sys.argv[1]), progress=False)
print(json.dumps({"seconds": report.seconds, "supervoxels": report.supervoxels,
                  "edges": report.edges, "voxels": report.voxels, "blocks": report.blocks,
                  "segmentation_seconds": report.segmentation_seconds,
                  "Mvox_per_s": report.megavoxels_per_second,
                  "wall_seconds": time.perf_counter() - started}))
"""


def quality(project: Path) -> dict:
    from segmentation.evaluation import contingency_table, evaluate
    from segmentation.project import Project
    from segmentation.stacks import open_stack

    with open_stack(DEMO_H5, "labels") as truth:
        rows = evaluate(Project.open(project), truth)
        with open_stack(DEMO_H5, "supervoxels") as authors:
            table = contingency_table(truth, authors)
    ours = {(r.name, r.threshold): r.scores.as_dict() | {"segments": r.segments} for r in rows}
    agglomerations = [(k[1], v) for k, v in ours.items() if k[0] == "agglomeration"]
    best_threshold, best = min(agglomerations, key=lambda kv: kv[1]["voi"])
    return {
        "ours_supervoxels": ours[("supervoxels", None)],
        "ours_best_merge": ours[("supervoxels, best merge", None)],
        "ours_agglomeration_best": {"threshold": best_threshold, **best},
        "ours_agglomeration_all": {str(t): v for t, v in agglomerations},
        "authors_supervoxels": table.scores().as_dict() | {"segments": int(len(np.unique(
            table.seg)))},
        "authors_best_merge": table.best_merge().scores().as_dict(),
        "authors_published_here": AUTHORS,
    }


def tiled_image(folder: Path, factor: int = 2) -> Path:
    with h5py.File(DEMO_H5, "r") as f:
        raw = f["raw"][:]
    path = folder / "tiled.npy"
    np.save(path, np.tile(raw, (factor, factor, factor)))
    return path


def run() -> dict:
    figures = {}
    image = {"path": str(DEMO_H5), "key": "raw"}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for workers in (1, 2):
            folder = scratch / f"w{workers}"
            folder.mkdir()
            timings, peak = run_segment(config_for(folder, image, BLOCK, workers, False))
            figures[f"{workers}_worker"] = {**timings, "peak_MB": round(peak, 1)}
            if workers == 2:
                figures["quality"] = quality(folder / "project")
        one, two = figures["1_worker"], figures["2_worker"]
        figures["speedup_2_vs_1"] = round(two["Mvox_per_s"] / one["Mvox_per_s"], 2)

        folder = scratch / "tiled"
        folder.mkdir()
        tiled = {"path": str(tiled_image(folder))}
        timings, peak = run_segment(config_for(folder, tiled, BLOCK, 2, False))
        figures["tiled_8x_2_worker"] = {**timings, "peak_MB": round(peak, 1)}
        figures["memory_ratio_8x_vs_demo"] = round(peak / two["peak_MB"], 2)
    figures["goals"] = {"Mvox_per_s_2_workers": 3.0, "speedup_2_vs_1": 1.6,
                        "memory_ratio_8x_vs_demo": 1.5}
    return figures


if __name__ == "__main__":
    write_result("segmentation", run())
