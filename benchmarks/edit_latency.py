"""Server-side latency of merge, split and prompt cut, durable log write included, on synthetic
graphs of 10^4, 10^5 and 10^6 supervoxels; and what a 10^6-supervoxel session costs to open.

The graph is a cubic lattice of supervoxels with 6 edges each (faces and face diagonals, so
10^6 supervoxels have about 6 x 10^6 edges). Segments are cubes of c^3 supervoxels; inside each
cube the faces across its middle plane are weak (affinity 0.2, a false merge to split), other
faces inside are strong (0.9), faces between cubes weak (0.1).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, percentiles, write_result
from segmentation.editlog import EditLog
from segmentation.rag import Rag
from segmentation.session import ProofreadingSession

OFFSETS = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]
SPACING = 10  # voxels between supervoxel centres


def lattice(side: int, cube: int) -> tuple[Rag, np.ndarray]:
    n = side ** 3
    coords = np.stack(np.unravel_index(np.arange(n), (side,) * 3), axis=1)
    cube_of = coords // cube
    cube_id = np.ravel_multi_index(cube_of.T, (-(-side // cube),) * 3)
    half = (coords[:, 2] % cube) >= cube // 2
    a_parts, b_parts, aff_parts = [], [], []
    for offset in OFFSETS:
        other = coords + offset
        ok = (other < side).all(axis=1)
        a = np.flatnonzero(ok)
        b = np.ravel_multi_index(other[ok].T, (side,) * 3)
        same_cube = cube_id[a] == cube_id[b]
        affinity = np.where(same_cube, np.where(half[a] == half[b], 0.9, 0.2), 0.1)
        a_parts.append(a), b_parts.append(b), aff_parts.append(affinity)
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    affinity = np.concatenate(aff_parts).astype(np.float32)
    order = np.lexsort((b, a))
    ids = np.arange(1, n + 1, dtype=np.uint64)
    rag = Rag(ids=ids, size=np.full(n, SPACING ** 3, np.int64),
              bbox=np.zeros((n, 6), np.int64),
              centroid=(coords * SPACING + SPACING / 2).astype(np.float32),
              edges=np.stack([ids[a[order]], ids[b[order]]], axis=1),
              area=np.full(len(a), SPACING ** 2, np.int64), mean=affinity[order],
              quantiles=np.repeat(affinity[order][:, None], 3, axis=1),
              hist_edge=np.zeros(0, np.int64), hist_bin=np.zeros(0, np.uint8),
              hist_count=np.zeros(0, np.int64), hist_total=np.zeros(0, np.int64))
    segments = ids[np.argsort(cube_id, kind="stable")][np.searchsorted(
        np.sort(cube_id), cube_id)]  # each cube named by its first supervoxel
    return rag, segments.astype(np.uint64)


def locator(side: int):
    def locate(point) -> int:
        z, y, x = (int(v) // SPACING for v in point)
        return z * side * side + y * side + x + 1
    return locate


def voxel(side: int, z: int, y: int, x: int) -> tuple[int, int, int]:
    return (z * SPACING + 5, y * SPACING + 5, x * SPACING + 5)


def measure(side: int, cube: int, repeats: int, folder: Path) -> dict:
    rag, segments = lattice(side, cube)
    log_path = folder / f"log-{side}-{cube}.sqlite"
    session = ProofreadingSession(rag, segments, EditLog(log_path), locator(side))
    results = {}
    c0, c1 = 0, cube  # first cube and its neighbour along x
    inside_a = voxel(side, 0, 0, c0)
    if 2 * cube <= side:
        inside_b = voxel(side, 0, 0, c1)
        samples = []
        for _ in range(repeats):
            samples.append(session.merge("bench", inside_a, inside_b).milliseconds)
            session.undo("bench")
        results["merge"] = percentiles(samples)
    left, right = voxel(side, 0, 0, 0), voxel(side, 0, 0, cube - 1)
    samples = []
    for _ in range(repeats):
        samples.append(session.split("bench", [left], [right]).milliseconds)
        session.undo("bench")
    results["split"] = percentiles(samples)
    samples = []
    for _ in range(repeats):
        result = session.prompt_cut("bench", [left], [right])
        samples.append(result.milliseconds)
        session.undo("bench")
    results["prompt_cut"] = percentiles(samples)
    session.log.close()
    return {"supervoxels": rag.num_nodes, "edges": rag.num_edges, "segment_size": cube ** 3,
            **results}


OPEN_SNIPPET = """
import sys, time, json, psutil, numpy as np
from pathlib import Path
from segmentation.rag import Rag
from segmentation.editlog import EditLog
from segmentation.session import ProofreadingSession
from benchmarks.edit_latency import locator
folder = Path(sys.argv[1]); side = int(sys.argv[2])
before = psutil.Process().memory_info().rss
started = time.perf_counter()
rag = Rag.load(folder / "rag.npz", histograms=False)
segments = np.load(folder / "segments.npy")
session = ProofreadingSession(rag, segments, EditLog(folder / "open.sqlite"), locator(side))
seconds = time.perf_counter() - started
after = psutil.Process().memory_info().rss
print(json.dumps({"open_seconds": seconds, "session_MB": (after - before) / 1e6,
                  "process_MB": after / 1e6, "edges": rag.num_edges}))
"""


def open_cost(side: int, cube: int, folder: Path) -> dict:
    rag, segments = lattice(side, cube)
    rag.save(folder / "rag.npz")
    np.save(folder / "segments.npy", segments)
    out = subprocess.run([sys.executable, "-c", OPEN_SNIPPET, str(folder), str(side)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(repeats: int = 30) -> dict:
    figures = {"results": []}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for side in (22, 47, 100):
            for cube in (5, 10, 22):
                if cube > side:
                    continue
                started = time.perf_counter()
                row = measure(side, cube, repeats, scratch)
                row["setup_and_run_s"] = round(time.perf_counter() - started, 1)
                figures["results"].append(row)
                print(json.dumps(row))
        figures["open_10e6"] = open_cost(100, 10, scratch)
    figures["goals"] = {"merge_p95_ms": 5, "split_and_prompt_cut_p95_ms_at_10e4_segment": 30,
                        "growth_10e4_to_10e6": 1.5, "session_10e6_MB": 1500,
                        "open_10e6_s": 5}
    return figures


if __name__ == "__main__":
    write_result("edit_latency", run())
