"""The export as the ecosystem reads it: cloud-volume (segmentation and sharded multi-resolution
meshes, as neuroglancer reads them) and ome-zarr-py (a label image under the EM image)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cloudvolume import CloudVolume
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader

from segmentation.export import export_segmentation, sharding_for
from segmentation.meshes import MESH_BLOCK
from segmentation.volume import ArrayVolume

SHAPE = (30, 150, 200)  # z, y, x: two mesh blocks along x and y at level 0
VOXEL = (20.0, 8.0, 8.0)  # anisotropic: the pyramid halves y and x before z


@pytest.fixture(scope="module")
def volumes():
    """Supervoxels: boxes of 10 x 30 x 40 voxels with a background seam; membership joins
    neighbours along x into segments that cross the mesh blocks."""
    z, y, x = np.indices(SHAPE)
    supervoxels = (1 + (z // 10) * 100 + (y // 30) * 10 + x // 40).astype(np.uint64)
    supervoxels[:, 75:77, :] = 0  # background between two rows of segments
    ids = np.unique(supervoxels[supervoxels > 0])
    segments = np.where(ids % 10 >= 3, ids - ids % 10 + 3, ids)  # x boxes 3.. join one segment
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, SHAPE, dtype=np.uint8)
    lookup = dict(zip(ids.tolist(), segments.tolist()))
    expected = np.vectorize(lambda v: lookup.get(int(v), int(v)), otypes=[np.uint64])(
        supervoxels)
    return ArrayVolume(supervoxels, VOXEL), ids, segments, ArrayVolume(image, VOXEL), expected


@pytest.fixture(scope="module", params=[False, True], ids=["unsharded", "sharded"])
def exported(request, volumes, tmp_path_factory):
    supervoxels, ids, segments, image, expected = volumes
    out = tmp_path_factory.mktemp("export") / "export"
    export_segmentation(supervoxels, ids, segments, None, out, image=image,
                        shard_above=0 if request.param else 10 ** 9)
    return out, request.param, expected, image


def test_cloud_volume_reads_the_segmentation(exported):
    out, sharded, expected, _ = exported
    volume = CloudVolume(f"file://{out / 'segmentation'}", progress=False)
    assert ("sharding" in volume.info["scales"][0]) == sharded
    assert json.loads((out / "export.json").read_text())["sharded"] == sharded
    np.testing.assert_array_equal(np.asarray(volume[:, :, :])[..., 0].T, expected)
    coarse = CloudVolume(f"file://{out / 'segmentation'}", mip=1, progress=False)
    assert coarse.shape[:3] == (100, 75, 30)  # x, y halved first (anisotropic voxels)
    assert set(np.unique(coarse[:, :, :])) <= set(np.unique(expected))


def test_every_segment_has_a_multiresolution_mesh_inside_its_box(exported):
    out, _, expected, _ = exported
    volume = CloudVolume(f"file://{out / 'segmentation'}", progress=False)
    assert volume.mesh.meta.info["@type"] == "neuroglancer_multilod_draco"
    assert "sharding" in volume.mesh.meta.info
    voxel = np.asarray(VOXEL[::-1])
    segments = [int(s) for s in np.unique(expected) if s]
    manifests = {}
    for segment in segments:
        mesh = volume.mesh.get(segment, lod=0)[segment]
        where = np.argwhere(expected == segment)[:, ::-1]  # x, y, z voxels
        low, high = where.min(0) * voxel, (where.max(0) + 1) * voxel
        assert len(mesh.faces) > 0
        slack = 0.01 * voxel  # 16-bit quantization of a 128-voxel chunk
        assert (mesh.vertices >= low - slack).all() and (mesh.vertices <= high + slack).all()
        # the surface reaches the segment's far corners to within a voxel
        assert np.allclose(mesh.vertices.min(0), low, atol=voxel.max())
        assert np.allclose(mesh.vertices.max(0), high, atol=voxel.max())
        manifests[segment] = volume.mesh.get_manifest(segment)
    # a segment crossing the level-0 blocks has fragments in each, one coarser level has fewer
    crossing = max(manifests.values(), key=lambda m: m.num_fragments_per_lod[0])
    assert crossing.num_lods >= 3
    assert crossing.num_fragments_per_lod[0] > 1
    assert crossing.num_fragments_per_lod[-1] < crossing.num_fragments_per_lod[0]
    assert crossing.chunk_shape.tolist() == [m * v for m, v in zip(MESH_BLOCK[::-1], voxel)]
    fine = volume.mesh.get(crossing.segment_id, lod=0)[crossing.segment_id]
    coarse = volume.mesh.get(crossing.segment_id, lod=2)[crossing.segment_id]
    assert 0 < len(coarse.faces) < len(fine.faces) / 4


def test_ome_zarr_reads_a_label_image_under_the_em_image(exported):
    out, _, expected, image = exported
    nodes = list(Reader(parse_url(str(out / "segmentation.zarr")))())
    images = [n for n in nodes if n.load(Multiscales) and not n.load(Label)]
    labels = [n for n in nodes if n.load(Label)]
    assert len(images) == 1 and len(labels) == 1
    np.testing.assert_array_equal(images[0].data[0].compute(), image.array)
    label = labels[0]
    assert label.metadata["name"] == "segmentation"
    np.testing.assert_array_equal(label.data[0].compute(), expected)
    assert len(label.data) >= 4 and label.data[1].shape == (30, 75, 100)
    assert [a["name"] for a in label.metadata["axes"]] == ["z", "y", "x"]
    scales = [t[0]["scale"] for t in label.metadata["coordinateTransformations"]]
    assert scales[0] == list(VOXEL) and scales[1] == [20.0, 16.0, 16.0]
    # opened on its own, the label image is still one (napari's plugin reads it as labels)
    alone = list(Reader(parse_url(str(out / "segmentation.zarr" / "labels" / "segmentation")))())
    assert any(n.load(Label) for n in alone)


def test_sharding_starts_above_the_threshold():
    assert sharding_for((64, 64, 64 * 8), shard_above=8) is None
    spec = sharding_for((64, 64, 64 * 9), shard_above=8)
    assert spec["@type"] == "neuroglancer_uint64_sharded_v1" and spec["hash"] == "identity"
