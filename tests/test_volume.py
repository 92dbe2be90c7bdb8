"""Volumes opened in place through tensorstore: precomputed, zarr and n5, by path or URL."""

import numpy as np
import pytest
import tensorstore as ts

from promptcut.config import load_config
from promptcut.setup_project import prepare_project
from segmentation.errors import InputError
from segmentation.importer import import_volume
from segmentation.stacks import open_stack
from segmentation.volume import detect_format, open_volume
from server.app import ServerSession
from tests.conftest import write_config

VOLUME = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)


@pytest.fixture
def precomputed(tmp_path):
    np.save(tmp_path / "v.npy", VOLUME)
    with open_stack(tmp_path / "v.npy") as stack:
        import_volume(stack, tmp_path / "pc", "image", voxel_size=(30, 4, 4), progress=False)
    return tmp_path / "pc"


def test_precomputed_by_path_file_url_and_prefix(precomputed):
    for location in (str(precomputed), f"file://{precomputed}", f"precomputed://{precomputed}"):
        volume = open_volume(location, "image")
        assert volume.format == "precomputed" and volume.is_local
        assert volume.voxel_size == (30.0, 4.0, 4.0)
        np.testing.assert_array_equal(volume.read(slice(None), slice(None), slice(None)), VOLUME)


def test_plain_zarr_array_and_n5_take_the_configured_voxel_size(tmp_path):
    zarr = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "a.zarr")},
                    "metadata": {"shape": list(VOLUME.shape), "chunks": [2, 2, 2],
                                 "dtype": "<u2"}, "create": True}).result()
    zarr.write(VOLUME).result()
    assert detect_format(str(tmp_path / "a.zarr")) == "zarr"
    with pytest.raises(InputError, match="voxel size"):
        open_volume(str(tmp_path / "a.zarr"), "image")
    volume = open_volume(str(tmp_path / "a.zarr"), "image", voxel_size=(1, 2, 3))
    np.testing.assert_array_equal(volume.read(slice(None), slice(None), slice(None)), VOLUME)

    n5 = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(tmp_path / "b.n5")},
                  "metadata": {"dimensions": list(VOLUME.shape[::-1]), "blockSize": [2, 2, 2],
                               "dataType": "uint16", "compression": {"type": "gzip"}},
                  "create": True}).result()
    n5.write(VOLUME.transpose(2, 1, 0)).result()  # n5 lists the fastest axis first
    volume = open_volume(str(tmp_path / "b.n5"), "image", voxel_size=(1, 1, 1))
    assert volume.format == "n5"
    np.testing.assert_array_equal(volume.read(slice(None), slice(None), slice(None)), VOLUME)


def test_not_a_volume(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_volume(str(tmp_path / "nothing"), "image")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no metadata"):
        open_volume(str(tmp_path / "empty"), "image")


def test_remote_volumes_are_handed_to_the_browser_by_url():
    class FakeVolume:
        format, is_local, location = "precomputed", False, "gs://bucket/em"

    class FakeProject:
        def volume(self, kind):
            return FakeVolume()

    session = ServerSession.__new__(ServerSession)
    session.project = FakeProject()
    assert session.source_url("image") == "precomputed://gs://bucket/em"


def test_a_project_opens_existing_volumes_in_place_and_serves_them(tmp_path, precomputed):
    config = load_config(write_config(tmp_path, precomputed, image={"path": str(precomputed)},
                                      segmentation=None))
    project = prepare_project(config, progress=False)
    assert not (project.root / "image").exists()  # nothing copied
    assert project.volume("image").location == str(precomputed)
    session = ServerSession(config.serve_settings(), project)
    assert session.mounts() == {"image": precomputed}
