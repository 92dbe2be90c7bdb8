"""The simulated proofreader: does a proofreading policy correct the segmentation?

On the held-out sections of neuroproof_ts2_dev (z 120-159, never trained on) and on gala_train
(never seen), the project is segmented by the real pipeline with the shipped student, then an
oracle that reads the ground truth makes one edit at a time, largest error first, through the
proofreading session's own operations (see segmentation/oracle.py). Policies:

- ``split``: merge + plain min-cut split (positive point = source, negative point = sink);
- ``prompt-cut``: merge + prompt cut (the same points as prompts);
- ``focused``: yes/no decisions only, the session's focused-proofreading queue (most valuable
  question first) answered from the ground truth (``simulate_focused``): a decision is one
  key press, an edit two or more.

Each starts twice, from the demo config's learned agglomeration at its default threshold and
at a more merged one.
Both divide a supervoxel at voxel level where both points fall in it. From the demo's threshold
the split policy also runs through a running server's HTTP API (``promptcut.client``), so the
real path's latency is measured and its curve checked against the direct one. Reported: VOI split /
merge and ARAND after 0, 10, 25, 50, 100 and 200 edits, the floors (best merge of the
supervoxels; the ground truth against its own connected pieces; what questions about contacts
can reach at best, from single supervoxels and, per start, by yes answers alone), edits refused,
edits that made VOI worse, per-edit latency, a PNG of the curves and the JSON.

``PROMPTCUT_BENCH_EDITS`` caps the edits (default 200); ``PROMPTCUT_BENCH_CACHE`` names a folder
that keeps the segmented volumes between runs (a new checkout of the model: empty it).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import h5py
import numpy as np
import yaml

from benchmarks.common import DEMO_H5, REPO, RESULTS, SHARED_DATA, percentiles
from segmentation.errors import PromptcutError
from segmentation.metrics import Contingency
from segmentation.oracle import (POLICIES, GroundTruthOracle, PlannedEdit, Simulation,
                                 connected_pieces_floor, session_operations, simulate,
                                 simulate_focused, yes_floor)

CHECKPOINTS = (0, 10, 25, 50, 100, 200)
USER = "oracle"
# Where the oracle starts: the demo config's agglomeration at its default threshold (what a
# served project opens at), and a more merged one (more neurons glued together, so cuts
# matter).
DEMO = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["segment"]["agglomeration"]
DEMO_THRESHOLD = DEMO["default_threshold"]
MERGED_THRESHOLD = 0.6
STARTS = {f"threshold {DEMO_THRESHOLD} (demo)": DEMO_THRESHOLD,
          f"threshold {MERGED_THRESHOLD} (merged)": MERGED_THRESHOLD}
VIA_API = " via HTTP API"
FOCUSED = "focused yes/no"
THRESHOLDS = sorted(set(DEMO["thresholds"]) | {DEMO_THRESHOLD, MERGED_THRESHOLD})
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
              "image": {"path": str(source), "key": "raw"}, "segment": segment,
              "server": {"port": 0}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    if not (loaded.project_dir / "segments.npz").exists():
        run_segment(loaded, progress=False)
    return loaded, truth


def client_operations(client) -> dict[str, Callable[[PlannedEdit], object]]:
    """The oracle's edits through the HTTP API: z, y, x points as x, y, z; a refusal (4xx)
    as the PromptcutError the session would raise."""
    from promptcut.client import ApiError

    def xyz(points):
        return [(p[2], p[1], p[0]) for p in points]

    def call(run):
        try:
            answer = run()
        except ApiError as exc:
            raise PromptcutError(exc.message) from None
        return SimpleNamespace(message=answer["message"],
                               created=answer["supervoxels_created"],
                               retired=answer["supervoxels_retired"])

    return {
        "merge": lambda e: call(lambda: client.merge(*xyz([e.first[0], e.second[0]]))),
        "split": lambda e: call(lambda: client.split(xyz(e.first), xyz(e.second))),
        "prompt-cut": lambda e: call(lambda: client.prompt_cut(xyz(e.first), xyz(e.second))),
    }


def fresh_log(config):
    from segmentation.editlog import remove_log
    from segmentation.proofread import LOG_NAME
    from segmentation.project import Project

    project = Project.open(config.project_dir)
    remove_log(project.root / LOG_NAME)
    return project


def run_through_api(config, truth: np.ndarray, policy: str, edits: int) -> Simulation:
    """The oracle against a running server (the project's default threshold), every edit an
    HTTP request through promptcut.client; the oracle reads the state it scores directly."""
    from promptcut.client import Client
    from server.app import ServerSession

    server = ServerSession(config.serve_settings(), fresh_log(config))
    server.start()
    try:
        proofreading = server.proofreading
        volume = proofreading.supervoxels
        oracle = GroundTruthOracle(truth, lambda: volume.read(*(slice(None),) * 3),
                                   proofreading.segments_of, volume.voxel_size)
        client = Client(server.base_url, server.access.token, user=USER)
        return simulate(oracle, client_operations(client), policy, edits)
    finally:
        server.stop()


def run_policy(config, truth: np.ndarray, policy: str, edits: int, threshold: float
               ) -> Simulation:
    from segmentation.proofread import open_session

    session = open_session(fresh_log(config), threshold)
    volume = session.supervoxels
    try:
        oracle = GroundTruthOracle(truth, lambda: volume.read(*(slice(None),) * 3),
                                   session.segments_of, volume.voxel_size)
        return simulate(oracle, session_operations(session, USER), policy, edits,
                        lambda n, scores: print(f"  {policy}: edit {n}, VOI {scores.voi:.3f}",
                                                flush=True) if n % 25 == 0 else None)
    finally:
        session.log.close()


def run_focused(config, truth: np.ndarray, decisions: int, threshold: float) -> dict:
    """The focused policy from the project's agglomeration at ``threshold``: its summary
    (decisions in place of edits)."""
    import time

    from segmentation import edge_classifier
    from segmentation.project import Project
    from segmentation.rag import Rag
    from segmentation.agglomerate import Segments

    project = Project.open(config.project_dir)
    rag = Rag.load(project.root / "rag.npz")
    start = Segments.load(project.root / "segments.npz").at(threshold)
    booster = edge_classifier.load(config.edge_classifier())
    table = Contingency.of(truth, project.volume("segmentation").read(*(slice(None),) * 3))
    started = time.perf_counter()
    scores = simulate_focused(rag, start, booster, table, decisions)
    per_question = (time.perf_counter() - started) * 1000 / max(len(scores) - 1, 1)
    floor = yes_floor(rag, start, table)
    rows = {str(n): _row(scores[min(n, len(scores) - 1)]) for n in CHECKPOINTS}
    return {"after_edits": rows, "edits": len(scores) - 1, "refused": 0,  # decisions
            "worse": int(sum(b.voi > a.voi + 1e-9 for a, b in zip(scores, scores[1:]))),
            "divided": 0, "latency": {"p50_ms": per_question, "p95_ms": per_question},
            "curve": [round(s.voi, 4) for s in scores], "yes_floor": _row(floor)}


def _row(s) -> dict:
    return {"voi": round(s.voi, 4), "voi_split": round(s.voi_split, 4),
            "voi_merge": round(s.voi_merge, 4), "arand": round(s.arand, 4)}


def summary(run: Simulation) -> dict:
    rows = {}
    for n in CHECKPOINTS:  # an oracle with nothing left to try leaves the last scores
        rows[str(n)] = _row(run.scores[min(n, len(run.scores) - 1)])
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
    colours = {"split": "#2d6cdf", "prompt-cut": "#e07b39", f"split{VIA_API}": "#111111",
               FOCUSED: "#2a9d3a"}
    for ax, (name, result, started) in zip(axes.ravel(), panels):
        for policy, curve in started["curves"].items():
            ax.plot(range(len(curve)), curve, color=colours[policy],
                    linestyle=":" if VIA_API in policy else "-",
                    label=policy if policy == FOCUSED else f"merge + {policy}")
        ax.axhline(result["floors"]["best_merge"]["voi"], color="#777", linestyle="--",
                   label="best merge of the supervoxels")
        ax.axhline(result["floors"]["connected_pieces"]["voi"], color="#aaa", linestyle=":",
                   label="ground truth vs its connected pieces")
        ax.axhline(result["floors"]["contacts"]["voi"], color="#2a9d3a", linestyle=":",
                   linewidth=0.8, label="any question about contacts, at best")
        yes = started["policies"].get(FOCUSED, {}).get("yes_floor")
        if yes:
            ax.axhline(yes["voi"], color="#2a9d3a", linestyle="--", linewidth=0.8,
                       label="yes floor: every touching pair of one neuron merged")
        ax.axhline(0.6, color="#2a9d3a", linestyle="-.", linewidth=0.8, label="goal 0.6")
        ax.set_title(name)
        ax.set_xlabel("oracle edits (focused: yes/no decisions)")
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
            from segmentation.rag import Rag

            project = Project.open(config.project_dir)
            supervoxels = project.volume("segmentation").read(*(slice(None),) * 3)
            table = Contingency.of(truth, supervoxels)
            rag = Rag.load(project.root / "rag.npz", histograms=False)
            floors = {"best_merge": table.best_merge().scores().as_dict(),
                      "connected_pieces": connected_pieces_floor(truth).as_dict(),
                      # no question about a contact (merge or split) does better than joining
                      # every touching pair of supervoxels of one neuron
                      "contacts": yes_floor(rag, rag.ids.copy(), table).as_dict()}
            result = {"floors": floors, "starts": {}}
            for start, threshold in STARTS.items():
                started = result["starts"][start] = {"threshold": threshold, "policies": {},
                                                     "curves": {}}
                runs = [(policy, lambda p=policy: run_policy(config, truth, p, edits,
                                                             threshold)) for policy in POLICIES]
                if threshold == DEMO_THRESHOLD:
                    runs.append((f"split{VIA_API}", lambda: run_through_api(config, truth,
                                                                           "split", edits)))
                for label, simulate_one in runs:
                    simulation = simulate_one()
                    started["policies"][label] = summary(simulation)
                    started["curves"][label] = [round(s.voi, 4) for s in simulation.scores]
                    print(f"{name}, {start}, merge + {label}: " + ", ".join(
                        f"{n}: {row['voi']:.3f}" for n, row in
                        started["policies"][label]["after_edits"].items()))
                focused = run_focused(config, truth, edits, threshold)
                started["curves"][FOCUSED] = focused.pop("curve")
                started["policies"][FOCUSED] = focused
                print(f"{name}, {start}, {FOCUSED}: " + ", ".join(
                    f"{n}: {row['voi']:.3f}" for n, row in focused["after_edits"].items()))
                if f"split{VIA_API}" in started["curves"]:  # the real path edits the same way
                    started["api_matches_direct"] = started["curves"]["split"] == \
                        started["curves"][f"split{VIA_API}"]
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
                    f"| {name} | {start} | "
                    f"{policy if policy == FOCUSED else 'merge + ' + policy} | " +
                    " | ".join(cells) +
                    f" | {at['voi_split']:.3f} / {at['voi_merge']:.3f} / {at['arand']:.3f} | "
                    f"{row['edits']} | {row['refused']} | {row['worse']} | {row['divided']} | "
                    f"{latency.get('p50_ms', 0):.1f} / {latency.get('p95_ms', 0):.1f} |")
        floors = result["floors"]
        yes = ", ".join(f"{start} {started['policies'][FOCUSED]['yes_floor']['voi']:.3f}"
                        for start, started in result["starts"].items()
                        if FOCUSED in started["policies"])
        lines.append(f"| {name} | floors | best merge of the supervoxels "
                     f"{floors['best_merge']['voi']:.3f}, ground truth vs its connected pieces "
                     f"{floors['connected_pieces']['voi']:.3f}; any question about contacts "
                     f"(every touching pair of supervoxels of one neuron joined) "
                     f"{floors['contacts']['voi']:.3f}; yes answers from {yes} |")
    return "\n".join(lines)
