"""The simulated proofreader: does a proofreading policy correct the segmentation?

On the held-out sections of neuroproof_ts2_dev (z 120-159, never trained on) and on gala_train
(never seen), the project is segmented by the real pipeline with the shipped student, then an
oracle that reads the ground truth makes one edit at a time, largest error first, through the
proofreading session's own operations (see segmentation/oracle.py). Policies:

- ``split``: merge + plain min-cut split (positive point = source, negative point = sink);
- ``prompt-cut``: merge + prompt cut (the same points as prompts).

Each starts twice, at the demo's agglomeration threshold (0.7) and at a more merged one (0.9).
Both divide a supervoxel at voxel level where both points fall in it. Reported: VOI split /
merge and ARAND after 0, 10, 25, 50, 100 and 200 edits, the floors (best merge of the
supervoxels; the ground truth against its own connected pieces), edits refused, edits that made
VOI worse, per-edit latency, a PNG of the curves and the JSON.

``PROMPTCUT_BENCH_EDITS`` caps the edits (default 200); ``PROMPTCUT_BENCH_CACHE`` names a folder
that keeps the segmented volumes between runs (a new checkout of the model: empty it).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import yaml

from benchmarks.common import DEMO_H5, REPO, RESULTS, SHARED_DATA, percentiles
from segmentation.metrics import Contingency
from segmentation.oracle import (POLICIES, GroundTruthOracle, Simulation,
                                 connected_pieces_floor, session_operations, simulate)

CHECKPOINTS = (0, 10, 25, 50, 100, 200)
USER = "oracle"
# Where the oracle starts: the demo's agglomeration threshold, and a more merged one (more
# neurons glued together, so cuts matter: at 0.7, gala_train has no merge error a cut between
# whole supervoxels could fix).
STARTS = {"threshold 0.7 (demo)": 0.7, "threshold 0.9 (merged)": 0.9}
THRESHOLDS = [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9]
VOLUMES = {
    "neuroproof_validation": (DEMO_H5, (slice(120, 160), slice(None), slice(None))),
    "gala_train": (SHARED_DATA / "gala_train.h5", (slice(None),) * 3),
}


def segmented_project(name: str, h5: Path, region, folder: Path):
    """The volume cut out to its own file and run through `promptcut segment` with the demo's
    settings and shipped student. Returns (config, ground truth)."""
    from promptcut.config import load_config
    from promptcut.segmenting import run_segment

    with h5py.File(h5, "r") as f:
        raw, truth = f["raw"][region], f["labels"][region]
    source = folder / f"{name}.h5"
    with h5py.File(source, "w") as f:
        f["raw"], f["labels"] = raw, truth
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    segment = {**demo["segment"], "checkpoint": str(REPO / "configs" / demo["segment"][
        "checkpoint"]), "workers": 0, "meshes": False,
        "agglomeration": {**demo["segment"].get("agglomeration", {}),
                          "thresholds": THRESHOLDS}}
    config = {"name": name, "project": str(folder / "project"),
              "dataset": {"name": name, "voxel_size": [10, 10, 10]},
              "image": {"path": str(source), "key": "raw"}, "segment": segment}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    if not (loaded.project_dir / "segments.npz").exists():
        run_segment(loaded, progress=False)
    return loaded, truth


def run_policy(config, truth: np.ndarray, policy: str, edits: int, threshold: float
               ) -> Simulation:
    from segmentation.proofread import LOG_NAME, open_session
    from segmentation.project import Project

    project = Project.open(config.project_dir)
    for suffix in ("", "-wal", "-shm"):
        (project.root / (LOG_NAME + suffix)).unlink(missing_ok=True)
    session = open_session(project, threshold)
    volume = session.supervoxels
    try:
        oracle = GroundTruthOracle(truth, lambda: volume.read(*(slice(None),) * 3),
                                   session.segments_of, volume.voxel_size)
        return simulate(oracle, session_operations(session, USER), policy, edits,
                        lambda n, scores: print(f"  {policy}: edit {n}, VOI {scores.voi:.3f}",
                                                flush=True) if n % 25 == 0 else None)
    finally:
        session.log.close()


def summary(run: Simulation) -> dict:
    rows = {}
    for n in CHECKPOINTS:  # an oracle with nothing left to try leaves the last scores
        s = run.scores[min(n, len(run.scores) - 1)]
        rows[str(n)] = {"voi": round(s.voi, 4), "voi_split": round(s.voi_split, 4),
                        "voi_merge": round(s.voi_merge, 4), "arand": round(s.arand, 4)}
    applied = [r for r in run.records if not r.refused]
    return {
        "after_edits": rows,
        "edits": len(run.records),  # fewer than asked: the oracle found nothing left to try
        "refused": sum(r.refused for r in run.records),
        "worse": sum(r.worse for r in run.records),
        "voxel_level": sum(r.voxel_level and not r.refused for r in run.records),
        "divided": sum("divided into" in r.message for r in run.records if not r.refused),
        "kinds": {k: sum(r.kind == k for r in applied) for k in ("merge", run.policy)},
        "latency": percentiles([r.milliseconds for r in applied]) if applied else {},
        "refusals": dict(Counter(r.message[:70] for r in run.records if r.refused)),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"{name}, {start}", result, started) for name, result in results.items()
              for start, started in result["starts"].items()]
    fig, axes = plt.subplots(len(results), len(STARTS), figsize=(6 * len(STARTS),
                                                                 4.2 * len(results)),
                             squeeze=False)
    colours = {"split": "#2d6cdf", "prompt-cut": "#e07b39"}
    for ax, (name, result, started) in zip(axes.ravel(), panels):
        for policy, curve in started["curves"].items():
            ax.plot(range(len(curve)), curve, color=colours[policy],
                    label=f"merge + {policy}")
        ax.axhline(result["floors"]["best_merge"]["voi"], color="#777", linestyle="--",
                   label="best merge of the supervoxels")
        ax.axhline(result["floors"]["connected_pieces"]["voi"], color="#aaa", linestyle=":",
                   label="ground truth vs its connected pieces")
        ax.axhline(0.6, color="#2a9d3a", linestyle="-.", linewidth=0.8, label="goal 0.6")
        ax.set_title(name)
        ax.set_xlabel("oracle edits")
        ax.set_ylabel("VOI (bits)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run() -> dict:
    edits = int(os.environ.get("PROMPTCUT_BENCH_EDITS", max(CHECKPOINTS)))
    results = {}
    cache = os.environ.get("PROMPTCUT_BENCH_CACHE")  # keep the segmented volumes here
    with tempfile.TemporaryDirectory(prefix="promptcut-proofreading-") as tmp:
        tmp = cache or tmp
        for name, (h5, region) in VOLUMES.items():
            folder = Path(tmp) / name
            folder.mkdir(parents=True, exist_ok=True)
            config, truth = segmented_project(name, h5, region, folder)
            from segmentation.project import Project

            supervoxels = Project.open(config.project_dir).volume("segmentation").read(
                *(slice(None),) * 3)
            table = Contingency.of(truth, supervoxels)
            floors = {"best_merge": table.best_merge().scores().as_dict(),
                      "connected_pieces": connected_pieces_floor(truth).as_dict()}
            result = {"floors": floors, "starts": {}}
            for start, threshold in STARTS.items():
                started = result["starts"][start] = {"threshold": threshold, "policies": {},
                                                     "curves": {}}
                for policy in POLICIES:
                    simulation = run_policy(config, truth, policy, edits, threshold)
                    started["policies"][policy] = summary(simulation)
                    started["curves"][policy] = [round(s.voi, 4) for s in simulation.scores]
                    print(f"{name}, {start}, merge + {policy}: " + ", ".join(
                        f"{n}: {row['voi']:.3f}" for n, row in
                        started["policies"][policy]["after_edits"].items()))
            results[name] = result
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure = RESULTS / "proofreading.png"
    plot(results, figure)
    print(table_text(results))
    return {"volumes": results, "figure": str(figure.relative_to(REPO))}


def table_text(results: dict) -> str:
    lines = ["| volume | start | policy | " + " | ".join(f"VOI after {n}" for n in CHECKPOINTS)
             + " | split / merge / ARAND at 100 | edits | refused | worse | divided | "
             "p50 / p95 ms |", "|---" * (len(CHECKPOINTS) + 9) + "|"]
    for name, result in results.items():
        for start, started in result["starts"].items():
            for policy, row in started["policies"].items():
                cells = [f"{row['after_edits'][str(n)]['voi']:.3f}" for n in CHECKPOINTS]
                at = row["after_edits"]["100"]
                latency = row["latency"]
                lines.append(
                    f"| {name} | {start} | merge + {policy} | " + " | ".join(cells) +
                    f" | {at['voi_split']:.3f} / {at['voi_merge']:.3f} / {at['arand']:.3f} | "
                    f"{row['edits']} | {row['refused']} | {row['worse']} | {row['divided']} | "
                    f"{latency.get('p50_ms', 0):.1f} / {latency.get('p95_ms', 0):.1f} |")
        floors = result["floors"]
        lines.append(f"| {name} | floors | best merge of the supervoxels "
                     f"{floors['best_merge']['voi']:.3f}, ground truth vs its connected pieces "
                     f"{floors['connected_pieces']['voi']:.3f} |")
    return "\n".join(lines)
