import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorstore as ts
import tifffile

from segmentation.errors import InputError
from segmentation.importer import import_volume, scale_plan
from segmentation.stacks import open_stack
from segmentation.volume import open_volume

REPO = Path(__file__).resolve().parent.parent


def raw_precomputed(path: Path, scale: int = 0) -> np.ndarray:
    """Read a precomputed scale with tensorstore directly, in its own x, y, z, channel order."""
    store = ts.open({"driver": "neuroglancer_precomputed",
                     "kvstore": {"driver": "file", "path": str(path)},
                     "scale_index": scale}).result()
    return store.read().result()


def test_real_demo_round_trips_every_voxel_in_both_formats(tmp_path, demo_h5):
    with h5py.File(demo_h5, "r") as f:
        raw, sv = f["raw"][:], f["supervoxels"][:]
    with open_stack(demo_h5, "raw") as stack:
        report = import_volume(stack, tmp_path / "image", "image", progress=False)
    assert report.shape == raw.shape and len(report.scales) >= 4  # base + 3 downsampled
    stored = raw_precomputed(tmp_path / "image")
    assert stored.shape == raw.shape[::-1] + (1,)  # precomputed is x, y, z, channel
    np.testing.assert_array_equal(stored[..., 0].transpose(2, 1, 0), raw)
    info = json.loads((tmp_path / "image" / "info").read_text())
    assert info["type"] == "image" and info["scales"][0]["resolution"] == [10, 10, 10]

    with open_stack(demo_h5, "supervoxels") as stack:
        import_volume(stack, tmp_path / "sv", "segmentation", progress=False)
    info = json.loads((tmp_path / "sv" / "info").read_text())
    assert info["data_type"] == "uint64"
    assert {s["encoding"] for s in info["scales"]} == {"compressed_segmentation"}
    volume = open_volume(str(tmp_path / "sv"), "segmentation")
    np.testing.assert_array_equal(volume.read(slice(None), slice(None), slice(None)), sv)

    with open_stack(demo_h5, "supervoxels") as stack:
        import_volume(stack, tmp_path / "sv.zarr", "segmentation", fmt="zarr", progress=False)
    zarr_volume = open_volume(str(tmp_path / "sv.zarr"), "segmentation")
    assert zarr_volume.voxel_size == (10.0, 10.0, 10.0) and zarr_volume.dtype == np.uint64
    np.testing.assert_array_equal(zarr_volume.read(slice(None), slice(None), slice(None)), sv)


def test_axis_order_and_anisotropic_voxel_size(tmp_path):
    # distinct extents per axis catch any swapped axis
    volume = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    np.save(tmp_path / "v.npy", volume)
    with open_stack(tmp_path / "v.npy") as stack:
        import_volume(stack, tmp_path / "out", "image", voxel_size=(40, 4, 5),
                      chunk=(4, 4, 4), progress=False)
    info = json.loads((tmp_path / "out" / "info").read_text())
    base = info["scales"][0]
    assert base["size"] == [7, 6, 5] and base["resolution"] == [5, 4, 40]  # x, y, z
    assert raw_precomputed(tmp_path / "out")[3, 2, 1, 0] == volume[1, 2, 3]
    # xy is halved first, z only once the data have become about isotropic
    assert info["scales"][1]["resolution"] == [10, 8, 40]
    opened = open_volume(str(tmp_path / "out"), "image")
    assert opened.voxel_size == (40.0, 4.0, 5.0) and opened.value_at((1, 2, 3)) == volume[1, 2, 3]


def test_downsampled_scales_are_means_for_images_and_ids_for_segmentations(tmp_path):
    image = np.zeros((8, 8, 8), np.uint8)
    image[:2, :2, :2] = [[[0, 4], [8, 12]], [[16, 20], [24, 28]]]
    np.save(tmp_path / "i.npy", image)
    with open_stack(tmp_path / "i.npy") as stack:
        import_volume(stack, tmp_path / "i", "image", voxel_size=(1, 1, 1), chunk=(4, 4, 4),
                      progress=False)
    assert raw_precomputed(tmp_path / "i", 1)[0, 0, 0, 0] == 14
    labels = np.full((8, 8, 8), 7, np.uint32)
    labels[0, 0, 0] = 99
    np.save(tmp_path / "s.npy", labels)
    with open_stack(tmp_path / "s.npy") as stack:
        import_volume(stack, tmp_path / "s", "segmentation", voxel_size=(1, 1, 1),
                      chunk=(4, 4, 4), progress=False)
    assert set(np.unique(raw_precomputed(tmp_path / "s", 1))) == {7}


def test_tiff_file_and_folder_of_slices(tmp_path):
    volume = np.random.default_rng(0).integers(0, 255, (4, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", volume, photometric="minisblack")
    folder = tmp_path / "slices"
    folder.mkdir()
    for z, plane in enumerate(volume):
        tifffile.imwrite(folder / f"z{z:03d}.tif", plane)
    for source in (tmp_path / "stack.tif", folder):
        out = tmp_path / f"out-{source.name}"
        with open_stack(source) as stack:
            import_volume(stack, out, "image", voxel_size=(10, 10, 10), progress=False)
        np.testing.assert_array_equal(raw_precomputed(out)[..., 0].transpose(2, 1, 0), volume)


def test_scale_plan_has_three_downsampled_scales_at_least():
    plan = scale_plan((10, 10, 10), (1, 1, 1), (64, 64, 64), 3)
    assert [s for s, _, _ in plan] == [(10, 10, 10), (5, 5, 5), (3, 3, 3), (2, 2, 2)]
    big = scale_plan((1000, 1000, 1000), (1, 1, 1), (64, 64, 64), 3)
    assert big[-1][0] == (63, 63, 63)  # continues until one chunk covers it


class ExplodingStack:
    """A stack that fails after some blocks, as a crash or Ctrl-C would."""

    def __init__(self, array, after: int, error: BaseException):
        self.array, self.after, self.error = array, after, error
        self.voxel_size, self.description = (1.0, 1.0, 1.0), "exploding"

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)

    def read(self, z, y, x):
        if self.after == 0:
            raise self.error
        self.after -= 1
        return self.array[z, y, x]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError("disk on fire")])
def test_interrupted_import_leaves_no_volume_and_keeps_the_old_one(tmp_path, error):
    array = np.ones((64, 64, 64), np.uint8)
    with pytest.raises(type(error)):
        import_volume(ExplodingStack(array, 3, error), tmp_path / "out", "image",
                      chunk=(16, 16, 16), progress=False)
    assert list(tmp_path.iterdir()) == []
    # an interrupted re-import leaves the previous complete volume in place
    import_volume(ExplodingStack(array, 10**6, error), tmp_path / "out", "image",
                  chunk=(16, 16, 16), progress=False)
    with pytest.raises(type(error)):
        import_volume(ExplodingStack(array * 2, 3, error), tmp_path / "out", "image",
                      chunk=(16, 16, 16), overwrite=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert raw_precomputed(tmp_path / "out").max() == 1


def test_existing_output_is_not_replaced_without_overwrite(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((4, 4, 4), np.uint8))
    (tmp_path / "out").mkdir()
    with open_stack(tmp_path / "v.npy") as stack, pytest.raises(InputError, match="exists"):
        import_volume(stack, tmp_path / "out", "image", voxel_size=(1, 1, 1), progress=False)


def test_killed_import_leaves_only_a_partial_folder_that_the_next_run_removes(tmp_path):
    big = np.lib.format.open_memmap(tmp_path / "big.npy", "w+", np.uint8, (256, 512, 512))
    big[:] = 3
    del big
    out = tmp_path / "out"
    command = [sys.executable, "-m", "promptcut.cli", "import", str(tmp_path / "big.npy"),
               str(out), "--voxel-size", "1", "1", "1", "--chunk-size", "16", "16", "16"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("out.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()
    assert list(tmp_path.glob("out.partial-*")), "the import finished before it could be killed"
    done = subprocess.run(command + ["--quiet"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.exists() and not list(tmp_path.glob("out.partial-*"))


def test_terminated_import_cleans_up_after_itself(tmp_path):
    big = np.lib.format.open_memmap(tmp_path / "big.npy", "w+", np.uint8, (256, 512, 512))
    big[:] = 3
    del big
    command = [sys.executable, "-m", "promptcut.cli", "import", str(tmp_path / "big.npy"),
               str(tmp_path / "out"), "--voxel-size", "1", "1", "1", "--chunk-size", "16", "16",
               "16"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("out.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npy"]


def test_an_output_retired_by_a_killed_run_comes_back_under_its_name(tmp_path):
    """Killed between moving the old output aside and the new one in: the next run finds no
    output, and puts the old one back rather than deleting it."""
    from segmentation.atomic import remove_stale_partials

    final = tmp_path / "export"
    retired = tmp_path / "export.old-999999999"
    retired.mkdir()
    (retired / "marker").write_text("the last good copy")
    (tmp_path / "export.partial-999999999").mkdir()
    remove_stale_partials(final)
    assert (final / "marker").read_text() == "the last good copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
