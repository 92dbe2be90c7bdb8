"""Dividing one supervoxel at voxel level: how long the split_supervoxel operation takes
(labels and affinities read, compact seeded watershed, pieces and their contacts into the
graph, the division logged), for supervoxels of 10^4, 10^5 and 10^6 voxels.

Each scene is a cube of side n (n^3 voxels) holding one supervoxel that spans two neurons: the
affinities show a membrane (three faces thick) across its middle in x. The cube is wrapped in a
shell of 8 voxels split into six neighbouring supervoxels, so the division also has contacts to
count. Points: the middle of each half. Every division is undone before the next.
Goal: 10^6 voxels within 500 ms (p95) on the 2-core CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import percentiles
from segmentation.editlog import EditLog
from segmentation.rag import block_contacts, block_node_stats, build_rag
from segmentation.session import ProofreadingSession
from segmentation.supervoxel_split import LiveSupervoxels
from segmentation.volume import ArrayVolume

SHELL = 8


def scene(n: int):
    size = n + 2 * SHELL
    labels = np.zeros((size,) * 3, np.uint64)
    z, y, x = np.indices(labels.shape)
    for axis, coord in enumerate((z, y, x)):  # six shell pieces, by nearest face
        labels[(coord < SHELL)] = 2 + 2 * axis
        labels[(coord >= SHELL + n)] = 3 + 2 * axis
    labels[SHELL:SHELL + n, SHELL:SHELL + n, SHELL:SHELL + n] = 1
    affinities = np.full((3,) + labels.shape, 230, np.uint8)
    middle = SHELL + n // 2
    affinities[2][:, :, middle - 1:middle + 2] = 10
    rag = build_rag(block_node_stats(labels, (0, 0, 0)),
                    block_contacts(labels, affinities, (0, 0, 0)))
    points = ((SHELL + n // 2, SHELL + n // 2, SHELL + n // 4),
              (SHELL + n // 2, SHELL + n // 2, SHELL + 3 * n // 4))
    return labels, affinities, rag, points


def measure(n: int, repeats: int, folder: Path) -> dict:
    labels, affinities, rag, (left, right) = scene(n)
    session = ProofreadingSession(rag, rag.ids.copy(), EditLog(folder / f"log-{n}.sqlite"),
                                  supervoxels=LiveSupervoxels(ArrayVolume(labels)),
                                  affinities=lambda region: affinities[(slice(None),) + region])
    samples = []
    for _ in range(repeats + 1):
        result = session.split_supervoxel("bench", [left], [right])
        samples.append(result.milliseconds)
        session.undo("bench")
    session.log.close()
    return {"voxels": n ** 3, "box": [n] * 3, **percentiles(samples[1:])}


def run(repeats: int = 10) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in (22, 47, 100):
            row = measure(n, repeats, Path(scratch))
            rows.append(row)
            print(f"supervoxel of {row['voxels']:,} voxels: p50 {row['p50_ms']:.0f} ms, "
                  f"p95 {row['p95_ms']:.0f} ms")
    return {"results": rows, "goal": {"voxels": 10 ** 6, "p95_ms": 500}}
