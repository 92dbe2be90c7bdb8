"""Supervoxel meshes made from a downsampled scale still give every label a mesh."""

from __future__ import annotations

import numpy as np
import pytest
from cloudvolume import CloudVolume
from cloudvolume.exceptions import MeshMissingError

from segmentation.blockwise import Runner
from segmentation.importer import scale_plan, write_pyramid
from segmentation.meshes import mesh_volume
from segmentation.volume import create_precomputed_scale

CHUNK = (64, 64, 64)
VOXEL = (10.0, 10.0, 10.0)


def labelled(folder, labels: np.ndarray) -> list:
    """A precomputed pyramid of ``labels`` (mode-downsampled); its scale plan."""
    plan = scale_plan(labels.shape, VOXEL, CHUNK, 2)
    base = create_precomputed_scale(folder, "segmentation", np.uint64, labels.shape, VOXEL,
                                    CHUNK)
    base.write(labels).result()
    write_pyramid(folder, base, "segmentation", np.dtype(np.uint64), plan, CHUNK, "precomputed")
    return plan


def extents(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    boxes = []
    for label in ids:
        where = np.argwhere(labels == label)
        boxes.append(np.concatenate([where.min(0), where.max(0) + 1]))
    return ids, np.asarray(boxes, np.int64)


def closed(mesh) -> bool:
    """Every edge shared by two triangles, once vertices that chunks share are one."""
    _, index = np.unique(np.round(mesh.vertices, 1), axis=0, return_inverse=True)
    faces = index.ravel()[mesh.faces]
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    return bool((np.unique(edges, axis=0, return_counts=True)[1] == 2).all())


def test_labels_lost_to_downsampling_are_meshed_at_full_resolution(tmp_path):
    labels = np.ones((24, 24, 300), np.uint64)
    labels[8:20, 8:20, 100:140] = 2  # survives downsampling
    labels[5, 5, 250:262] = 3  # a thin line, across the x = 256 boundary of level-0 chunks
    labels[11, 11, 11] = 4  # one voxel
    labels[15:17, 15:17, 256:258] = 5  # a small cube on the first voxel of a chunk
    ids, boxes = extents(labels)
    voxel = np.asarray(VOXEL[::-1])
    for folder, given in ((tmp_path / "with", (ids, boxes)), (tmp_path / "without", None)):
        plan = labelled(folder, labels)
        with Runner(0) as runner:
            assert mesh_volume(folder, plan, 2, 16, runner, 1, given) == (5 if given else 2)
    meshes = CloudVolume(f"file://{tmp_path / 'with'}", progress=False).mesh.get(
        ids.tolist(), lod=0)
    assert sorted(meshes) == [1, 2, 3, 4, 5]
    for label in (3, 4, 5):  # at full resolution: their box to within half a voxel, and
        # closed where chunks meet (every edge of the pieces, joined, shared by two triangles)
        where = np.argwhere(labels == label)
        low, high = where.min(0)[::-1] * voxel, (where.max(0)[::-1] + 1) * voxel
        np.testing.assert_allclose(meshes[label].vertices.min(0), low, atol=voxel.max() / 2)
        np.testing.assert_allclose(meshes[label].vertices.max(0), high, atol=voxel.max() / 2)
        assert closed(meshes[label]), label
    # the labels that scale 1 keeps are meshed from it (a voxel of it is 20 nm)
    where = np.argwhere(labels == 2)
    np.testing.assert_allclose(meshes[2].vertices.min(0), where.min(0)[::-1] * voxel, atol=20)
    without = CloudVolume(f"file://{tmp_path / 'without'}", progress=False).mesh
    assert sorted(without.get([1, 2], lod=0)) == [1, 2]
    for label in (3, 4):
        with pytest.raises(MeshMissingError):
            without.get([label], lod=0)


WRITE_AFTER_IMPORT = """
import sys
from pathlib import Path
import numpy as np
from segmentation.blockwise import Runner
from segmentation.importer import scale_plan, write_pyramid
from segmentation.meshes import import_writer_in_background, mesh_volume
from segmentation.volume import create_precomputed_scale
folder = Path(sys.argv[1])
labels = np.zeros((16, 16, 16), np.uint64)
labels[4:12, 4:12, 4:12] = 7
plan = scale_plan(labels.shape, (10.0,) * 3, (16,) * 3, 2)
base = create_precomputed_scale(folder, "segmentation", np.uint64, labels.shape, (10.0,) * 3,
                                (16,) * 3)
base.write(labels).result()
write_pyramid(folder, base, "segmentation", np.dtype(np.uint64), plan, (16,) * 3, "precomputed")
assert "cloudvolume" not in sys.modules
import_writer_in_background().join()
before = set(sys.modules)
with Runner(0, progress=False) as runner:
    assert mesh_volume(folder, plan, 1, 16, runner) == 1
print(sorted(m for m in set(sys.modules) - before if m.split(".")[0] == "cloudvolume"))
"""


def test_the_mesh_writer_imports_nothing_the_background_import_left_out(tmp_path):
    """`segment` imports the mesh writer's cloud-volume while its cluster starts: the meshes
    stage then writes without importing anything of cloud-volume (0.6-0.7 s at the end of
    the stage, which had made meshes cost more than the supervoxels on the demo)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-c", WRITE_AFTER_IMPORT, str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_the_shards_are_the_same_whatever_order_the_blocks_came_in(tmp_path):
    """Workers finish blocks in any order; the shard files must not depend on it (cloud-volume
    lays entries out in the order it is given them)."""
    from segmentation.meshes import MultiresMeshes

    rng = np.random.default_rng(0)
    fragments = [(int(s), (int(x), 0, 0), rng.bytes(int(rng.integers(1, 40))))
                 for s in rng.choice(1 << 40, 3000, replace=False) for x in range(2)]
    written = []
    for order in [np.arange(len(fragments))] + [rng.permutation(len(fragments))
                                                for _ in range(4)]:
        writer = MultiresMeshes((640.0,) * 3, [VOXEL], 16)
        for index in order:
            segment, position, data = fragments[index]
            writer.add_encoded(0, position, {segment: data})
        folder = tmp_path / str(len(written))
        assert writer.write(folder) == 3000
        written.append({f.name: f.read_bytes() for f in folder.iterdir()})
    assert all(files == written[0] for files in written[1:])
