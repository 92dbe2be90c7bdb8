"""How fast a stored region adjacency graph loads: 10^5 supervoxels, 6 x 10^5 edges."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_result
from segmentation.rag import Contacts, NodeStats, Rag, build_rag


def synthetic_rag(nodes: int, edges: int, rows_per_edge: int = 8, seed: int = 0) -> Rag:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, nodes, edges * 2, dtype=np.uint64)
    b = rng.integers(1, nodes, edges * 2, dtype=np.uint64)
    keep = a != b
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], 1)[keep], axis=0)[:edges]
    rows = np.repeat(pairs, rows_per_edge, axis=0)
    bins = rng.integers(0, 64, len(rows)).astype(np.uint8)
    count = rng.integers(1, 20, len(rows)).astype(np.int64)
    contacts = Contacts(rows[:, 0], rows[:, 1], bins, count, count * (bins.astype(np.int64) * 4))
    ids = np.arange(1, nodes + 1, dtype=np.uint64)
    stats = NodeStats(ids, np.full(nodes, 100), np.zeros((nodes, 3), np.int64),
                      np.ones((nodes, 3), np.int64), np.full((nodes, 3), 100.0))
    return build_rag(stats, contacts)


def run(repeats: int = 5) -> dict:
    rag = synthetic_rag(100_000, 600_000)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "rag.npz"
        rag.save(path)
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            loaded = Rag.load(path)
            samples.append(time.perf_counter() - started)
        size = path.stat().st_size
    assert loaded.num_edges == rag.num_edges
    return {"nodes": rag.num_nodes, "edges": rag.num_edges, "file_MB": round(size / 1e6, 1),
            "load_seconds": [round(s, 3) for s in samples], "best_s": round(min(samples), 3),
            "goal_s": 1.0}


if __name__ == "__main__":
    write_result("rag_load", run())
