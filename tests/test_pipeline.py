"""The blockwise pipeline on the real demo: Dask workers against one block, and bad input."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
from cloudvolume import CloudVolume
from dask.utils import parse_timedelta

from promptcut.config import load_config
from promptcut.segmenting import run_segment
from segmentation.affinities import AffinityModel
from segmentation.agglomerate import Segments
from segmentation.blockwise import Block, Runner, make_blocks
from segmentation.errors import ConfigError, InputError
from segmentation.metrics import scores
from segmentation.project import Project
from segmentation.rag import Contacts, NodeStats, Rag, build_rag
from segmentation.volume import open_zarr
from tests.conftest import write_config


def segment_demo(folder, h5, block_shape, workers, **segment):
    config = load_config(write_config(folder, h5, segmentation=None, segment={
        "block_shape": block_shape, "workers": workers, "meshes": False, **segment}))
    report = run_segment(config, progress=False)
    return Project.open(config.project_dir), report


@pytest.fixture(scope="module")
def single_and_blockwise(tmp_path_factory, demo_h5):
    single = segment_demo(tmp_path_factory.mktemp("single"), demo_h5, [192, 256, 256], 0)
    blockwise = segment_demo(tmp_path_factory.mktemp("blocks"), demo_h5, [64, 128, 128], 2)
    return single, blockwise


def whole(project: Project) -> np.ndarray:
    return project.volume("segmentation").read(slice(None), slice(None), slice(None))


def test_two_workers_match_one_block_within_the_stated_tolerance(single_and_blockwise):
    """Seeds are exact blockwise; only floods that leave the 8-voxel halo may differ. Stated
    tolerance: VOI below 0.15 bits each way and adapted Rand error below 0.05 between them."""
    (single, one_report), (blocks, two_report) = single_and_blockwise
    assert one_report.blocks == 1 and two_report.blocks == 12 and two_report.workers == 2
    a, b = whole(single), whole(blocks)
    agreement = scores(a, b)
    assert agreement.voi_split < 0.15 and agreement.voi_merge < 0.15, agreement
    assert agreement.arand < 0.05, agreement
    assert abs(one_report.supervoxels - two_report.supervoxels) < 0.03 * one_report.supervoxels
    assert (a != 0).all() and (b != 0).all()  # every voxel belongs to a supervoxel


def test_blockwise_rag_is_exactly_the_whole_volume_rag(single_and_blockwise):
    """The RAG assembled from 12 blocks on 2 workers equals one computed in a single block."""
    _, (blocks, _) = single_and_blockwise
    saved = Rag.load(blocks.root / "rag.npz")
    volume = blocks.volume("segmentation")
    labels = whole(blocks)
    assert set(np.unique(labels)) == set(saved.ids.tolist())
    # recompute from the final supervoxels in one piece, with the stored affinities
    from segmentation.volume import open_zarr

    affinities = open_zarr(blocks.root / "affinities")[0:3].read().result()
    from segmentation.rag import block_contacts, block_node_stats

    one = build_rag(block_node_stats(labels, (0, 0, 0)),
                    block_contacts(labels, affinities, (0, 0, 0)))
    for name in ("ids", "size", "bbox", "edges", "area", "hist_edge", "hist_bin", "hist_count"):
        np.testing.assert_array_equal(getattr(one, name), getattr(saved, name), err_msg=name)
    for name in ("centroid", "mean", "quantiles"):
        np.testing.assert_allclose(getattr(one, name), getattr(saved, name), atol=1e-4,
                                   err_msg=name)
    assert volume.dtype == np.uint64


def test_segments_cover_every_supervoxel_at_every_threshold(single_and_blockwise):
    (single, _), _ = single_and_blockwise
    segments = Segments.load(single.root / "segments.npz")
    rag = Rag.load(single.root / "rag.npz")
    np.testing.assert_array_equal(segments.ids, rag.ids)
    counts = [len(np.unique(m)) for m in segments.membership]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert set(segments.membership[-1].tolist()) <= set(rag.ids.tolist())  # named by members


def test_rag_task_counts_each_face_once_across_blocks():
    rng = np.random.default_rng(3)
    labels = rng.integers(1, 6, (20, 24, 28)).astype(np.uint64)
    affinities = rng.integers(0, 256, (3, 20, 24, 28)).astype(np.uint8)
    whole_rag = build_rag(*(lambda c, s: (s, c))(*_one_block_parts(labels, affinities)))
    parts = []
    for block in make_blocks(labels.shape, (8, 8, 8)):
        parts.append(_rag_of_block(block, labels, affinities))
    blockwise = build_rag(NodeStats.concatenate(p[1] for p in parts),
                          Contacts.concatenate(p[0] for p in parts))
    np.testing.assert_array_equal(blockwise.edges, whole_rag.edges)
    np.testing.assert_array_equal(blockwise.area, whole_rag.area)
    np.testing.assert_array_equal(blockwise.quantiles, whole_rag.quantiles)
    np.testing.assert_array_equal(blockwise.bbox, whole_rag.bbox)
    assert blockwise.area.sum() == sum(
        int((np.diff(labels, axis=a) != 0).sum()) for a in range(3))


def _one_block_parts(labels, affinities):
    from segmentation.rag import block_contacts, block_node_stats

    return block_contacts(labels, affinities, (0, 0, 0)), block_node_stats(labels, (0, 0, 0))


def _rag_of_block(block: Block, labels, affinities):
    """rag_task's logic on in-memory arrays."""
    from segmentation.rag import block_contacts, block_node_stats

    lower = tuple(1 if s.start > 0 else 0 for s in block.core)
    region = block.grown(lower, (0, 0, 0))
    core = labels[block.core]
    return (block_contacts(labels[region], affinities[(slice(None),) + block.core], lower),
            block_node_stats(core, block.origin))


def test_volume_smaller_than_a_block_and_all_background(tmp_path):
    """A tiny volume is one clipped block; a uniform (membrane-free) one gives whole supervoxels
    and an empty graph, not an error."""
    image = np.full((12, 20, 24), 200, np.uint8)
    image[:, 10, :] = 20  # one dark membrane splits it in two
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "flat.npy", np.full((12, 20, 24), 200, np.uint8))
    # meshes from the full-resolution labels, then (the default) from scale 1
    for name, expected_edges, scale in (("image.npy", 1, 0), ("image.npy", 1, 1),
                                        ("flat.npy", 0, 1)):
        folder = tmp_path / f"run-{name}-{scale}"
        folder.mkdir()
        config = load_config(write_config(folder, tmp_path, image={"path": str(
            tmp_path / name)}, segmentation=None, segment={"workers": 0, "meshes": True,
                                                           "mesh_scale": scale}))
        report = run_segment(config, progress=False)
        assert report.blocks == 1
        project = Project.open(config.project_dir)
        labels = whole(project)
        assert (labels != 0).all()
        rag = Rag.load(project.root / "rag.npz")
        assert rag.num_edges == expected_edges
        if expected_edges:
            assert len(np.unique(labels[:, :8])) == 1 and labels[0, 0, 0] != labels[0, 15, 0]
        # every supervoxel's mesh, read as the ecosystem reads it, wraps its voxels (to within
        # a voxel of the scale meshed) and is closed where the volume ends (every edge shared
        # by two triangles)
        volume = project.volume("segmentation")
        meshes = CloudVolume(f"file://{project.layer_dir('segmentation')}",
                             progress=False).mesh.get(np.unique(labels).tolist(), lod=0)
        voxel = np.asarray(volume.voxel_size[::-1], float)
        for supervoxel, mesh in meshes.items():
            where = np.argwhere(labels == supervoxel)
            low, high = where.min(0)[::-1] * voxel, (where.max(0)[::-1] + 1) * voxel
            np.testing.assert_allclose(mesh.vertices.min(0), low, atol=voxel.max() * 2 ** scale)
            np.testing.assert_allclose(mesh.vertices.max(0), high, atol=voxel.max() * 2 ** scale)
            faces = mesh.faces
            edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]],
                                            faces[:, [2, 0]]]), axis=1)
            _, uses = np.unique(edges, axis=0, return_counts=True)
            assert (uses == 2).all(), f"supervoxel {supervoxel}: open or non-manifold mesh"
        assert sorted(meshes) == np.unique(labels).tolist()


def test_bad_segment_settings_are_refused(tmp_path, demo_h5):
    for segment, message in (({"agglomeration": {"thresholds": [0.2, 1.5]}},
                              r"\[0, 1\]|at most 1"),
                             ({"supervoxels": {"threshold": 0.0}}, "threshold"),
                             ({"block_shape": [100, 128, 128]}, "multiple")):
        path = write_config(tmp_path, demo_h5, segmentation=None,
                            segment={"workers": 0, **segment})
        with pytest.raises((InputError, ConfigError), match=message):  # at load or at run
            run_segment(load_config(path), progress=False)


class SectionRecorder(AffinityModel):
    """A 2D model that needs whole sections: it records what it is given."""

    name = "sections"
    whole_sections = True

    def __init__(self, log):
        self.log = log

    @property
    def context(self):
        return (1, 0, 0)

    def predict(self, image):
        self.log.append(image.shape)
        return np.full((3,) + image.shape, 0.5, np.float32)


def test_whole_section_models_get_whole_sections(tmp_path):
    from segmentation.pipeline import compute_affinities
    from segmentation.volume import create_zarr, open_volume

    image = np.random.default_rng(0).integers(0, 255, (96, 150, 200), dtype=np.uint8)
    create_zarr(tmp_path / "image.zarr", np.uint8, image.shape, (64, 64, 64)).write(
        image).result()
    volume = open_volume(str(tmp_path / "image.zarr"), "image", "zarr", (10, 10, 10))
    seen: list = []
    compute_affinities(volume, SectionRecorder(seen), tmp_path / "affinities", (64, 64, 64),
                       Runner(0, progress=False))
    assert seen == [(65, 150, 200), (33, 150, 200)]  # two slabs of whole sections, z context
    written = open_zarr(tmp_path / "affinities").read().result()
    assert written.shape == (3,) + image.shape and (written == 128).all()  # 0.5, quantised


class LocalMean(AffinityModel):
    """A model that sees ``reach`` voxels around each output voxel (a local mean), so that a
    block predicted with its context equals the whole volume predicted at once."""

    name = "local-mean"
    reach = 4

    def __init__(self, log):
        self.log = log

    @property
    def context(self):
        return (self.reach,) * 3

    def predict(self, image):
        from scipy import ndimage

        self.log.append(image.size)
        mean = ndimage.uniform_filter(image.astype(np.float32) / 255, 2 * self.reach + 1,
                                      mode="nearest")
        return np.stack([mean] * 3)


def test_affinity_blocks_read_less_context_and_predict_the_same(tmp_path):
    """The affinity stage groups blocks where the volume's faces spare context: fewer voxels
    read, no block reading more than an inner block would, every voxel predicted once and as
    the whole volume predicted at once would be."""
    from segmentation.blockwise import context_blocks, read_voxels
    from segmentation.pipeline import compute_affinities
    from segmentation.volume import create_zarr, open_volume

    shape, block, context = (160, 250, 250), (128, 128, 128), (32, 32, 32)  # the demo's
    grouped = context_blocks(shape, block, context)
    cover = np.zeros(shape, np.uint8)
    for b in grouped:
        cover[b.core] += 1
        assert read_voxels(b, context) <= 192 ** 3
        assert all(s.start % 128 == 0 for s in b.core)  # on the storage chunks' grid
    assert (cover == 1).all()
    assert sum(read_voxels(b, context) for b in grouped) < 0.6 * sum(
        read_voxels(b, context) for b in make_blocks(shape, block))
    inner = make_blocks((640, 640, 640), block)
    assert len(context_blocks((640, 640, 640), block, context)) == len(inner)

    image = np.random.default_rng(0).integers(0, 255, (40, 70, 90), dtype=np.uint8)
    create_zarr(tmp_path / "image.zarr", np.uint8, image.shape, (32, 32, 32)).write(
        image).result()
    volume = open_volume(str(tmp_path / "image.zarr"), "image", "zarr", (10, 10, 10))
    read: list = []
    model = LocalMean(read)
    compute_affinities(volume, model, tmp_path / "affinities", (32, 32, 32),
                       Runner(0, progress=False))
    written = open_zarr(tmp_path / "affinities").read().result()
    assert written.shape == (3,) + image.shape
    whole = np.round(model.predict(image) * 255)
    assert np.abs(written.astype(int) - whole).max() <= 1  # a rounding step at most
    assert sum(read[:-1]) < sum(read_voxels(b, model.context)
                                for b in make_blocks(image.shape, (32, 32, 32)))


class WhereRecorder(LocalMean):
    """Leaves a file named after the process that predicts a block and the threads it was
    given (``threads``); pickled to a cluster's workers, it still leaves them in ``folder``."""

    name = "where"

    def __init__(self, folder: Path, threaded: bool):
        super().__init__([])
        self.folder = folder
        self.threaded = threaded
        self.given = None

    @contextlib.contextmanager
    def threads(self, count):
        self.given = count
        try:
            yield
        finally:
            self.given = None

    def predict(self, image):
        self.folder.mkdir(exist_ok=True)
        (self.folder / f"{os.getpid()} {self.given}").touch()
        return super().predict(image)


def test_a_network_predicts_in_this_process_unless_on_an_existing_cluster(tmp_path):
    """Two local workers each predicting a block with a network fought over the machine's
    memory: the run's own process predicts, with the workers' cores. An existing cluster's
    workers predict there, and so do local workers for a model that uses one thread (which
    would have one core here). All give the same affinities."""
    from distributed import LocalCluster

    from segmentation.pipeline import compute_affinities
    from segmentation.volume import create_zarr, open_volume

    image = np.random.default_rng(0).integers(0, 255, (40, 70, 90), dtype=np.uint8)
    create_zarr(tmp_path / "image.zarr", np.uint8, image.shape, (32, 32, 32)).write(
        image).result()
    volume = open_volume(str(tmp_path / "image.zarr"), "image", "zarr", (10, 10, 10))
    written = {}
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                      silence_logs=40) as cluster:
        for name, threaded, runner in (
                ("local", True, Runner(2, progress=False)),
                ("cluster", True, Runner(scheduler=cluster.scheduler_address, progress=False)),
                ("one thread", False, Runner(2, progress=False))):
            folder = tmp_path / name
            folder.mkdir()
            with runner:
                compute_affinities(volume, WhereRecorder(folder / "calls", threaded),
                                   folder / "affinities", (32, 32, 32), runner)
            written[name] = open_zarr(folder / "affinities").read().result()
            calls = [p.name.split() for p in (folder / "calls").iterdir()]
            if name == "local":
                assert calls == [[str(os.getpid()), "2"]]
            else:
                assert calls and all(pid != str(os.getpid()) and given == "None"
                                     for pid, given in calls)
    for name in ("cluster", "one thread"):
        np.testing.assert_array_equal(written[name], written["local"], err_msg=name)


def test_a_local_run_listens_on_loopback_ports_of_its_own():
    """The local cluster's scheduler and web server take free loopback ports: port 8787,
    where a Dask dashboard the user has open listens, stays theirs."""
    import psutil

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # something else has it already: as good
            taken.bind(("127.0.0.1", 8787))
            taken.listen()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Port 8787 is already in use"
            with Runner(1, progress=False):
                listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections()
                             if c.status == psutil.CONN_LISTEN}
    assert {ip for ip, _ in listening} == {"127.0.0.1"}
    assert len(listening) >= 2  # the scheduler and its web server (and this socket)


def test_a_seed_task_result_holds_only_its_face_planes(tmp_path):
    """What a seed task returns is kept, with every other block's, until the stage ends: its
    face planes must not keep the block's whole seed array alive (memory would grow with the
    number of blocks)."""
    from segmentation.pipeline import seed_task
    from segmentation.supervoxels import SupervoxelParams
    from segmentation.volume import create_zarr

    shape = (32, 48, 40)
    affinities = np.full((3,) + shape, 250, np.uint8)
    affinities[:, :, 24, :] = 0  # a membrane: two cells, so there are seeds
    create_zarr(tmp_path / "affinities", np.uint8, (3,) + shape, (3, 16, 16, 16)).write(
        affinities).result()
    create_zarr(tmp_path / "seeds", np.uint64, shape, (16, 16, 16))
    block = make_blocks(shape, (32, 48, 40))[0]
    count, faces = seed_task(block, str(tmp_path / "affinities"), str(tmp_path / "seeds"),
                             SupervoxelParams(), (10.0, 10.0, 10.0))
    assert count > 0 and len(faces) == 3
    for low, high in faces:
        for plane in (low, high):
            assert plane.ndim == 2 and plane.base is None  # its own memory, not a view


def _results_held_by_this_worker(block: Block) -> int:
    """A block task (for Runner.map) that reports how many task results its worker holds."""
    import time

    from distributed import get_worker

    time.sleep(0.3)  # the block's work
    return len(get_worker().data)


def test_a_worker_lets_go_of_each_block_result_once_fetched():
    """Runner.map takes each block's result from its worker as the block finishes: a worker
    that held them all until the stage ended grew with the volume (0.8 MB of seed faces a
    block, held by one worker for all blocks)."""
    blocks = make_blocks((80, 8, 8), (8, 8, 8))
    with Runner(1, progress=False) as runner:
        held = runner.map(_results_held_by_this_worker, blocks)
    assert len(held) == 10
    assert max(held) <= 5  # nine, at the last block, when the results were gathered at the end


def _periodic(dask_worker=None, dask_scheduler=None) -> dict[str, float]:
    server = dask_worker or dask_scheduler
    return {name: float(c.callback_time) for name, c in server.periodic_callbacks.items()}


def test_local_clusters_run_without_the_dashboards_sampling():
    """A local run's workers do not sample their tasks' stacks every 10 ms for a dashboard
    nobody opens (5% of segment's time on the demo), and neither they nor the scheduler check
    their event loops 50 times a second or sample the system twice (6% at 8x the demo on 2
    workers); the memory monitor, which spills and pauses, keeps Dask's pace."""
    with Runner(1, progress=False) as runner:
        (worker,) = runner.client.run(_periodic).values()
        scheduler = runner.client.run_on_scheduler(_periodic)
    assert "heartbeat" in worker and not {"profile", "profile-cycle"} & set(worker)
    for server in (worker, scheduler):
        assert server["tick"] == 1000 and server["monitor"] == 10000
    kept = dask.config.get("distributed.worker.memory.monitor-interval")
    assert worker["memory_monitor"] == pytest.approx(parse_timedelta(kept) * 1000)  # ms


def _slow_block(block: Block, folder: str, fail: int) -> tuple[int, str]:
    """A block task that fails on block ``fail`` at once and leaves a file after its work."""
    if block.index == fail:
        raise InputError(f"block {fail} failed")
    time.sleep(1.0)
    (Path(folder) / str(block.index)).touch()
    return block.index, folder


def test_a_stage_gives_every_block_its_arguments_and_stops_at_a_failed_block(tmp_path):
    """The blocks are submitted together: each still gets the stage's arguments and its result
    comes back in block order; a block that fails raises its error, and the blocks not yet
    started never run (they would take the workers from whatever the user does next)."""
    blocks = make_blocks((64, 8, 8), (8, 8, 8))
    with Runner(2, progress=False) as runner:
        results = runner.map(_slow_block, blocks, str(tmp_path), -1)
        assert results == [(b.index, str(tmp_path)) for b in blocks]
        for f in tmp_path.iterdir():
            f.unlink()
        with pytest.raises(InputError, match="block 0 failed"):
            runner.map(_slow_block, blocks, str(tmp_path), 0)
        time.sleep(1.0 * len(blocks) / 2 + 1.5)  # all seven would have run by now
    # those running as the error arrived (one, or two if the cancel took a second)
    assert len(list(tmp_path.iterdir())) <= 4


def _cancelled_block(block: Block) -> int:
    """Block 1 is cancelled while it runs, as a lost scheduler or another client does."""
    from distributed import Future, get_client, get_worker

    if block.index == 1:
        client = get_client()
        client.cancel([Future(get_worker().get_current_task(), client)], force=True)
        time.sleep(1.0)
    return block.index


def test_a_cancelled_block_fails_the_stage():
    """A cancelled block comes back from Dask as an exception object in place of its result:
    the stage raises instead of finishing with the block missing."""
    from distributed.client import FutureCancelledError

    with Runner(1, progress=False) as runner:
        with pytest.raises(FutureCancelledError):
            runner.map(_cancelled_block, make_blocks((24, 8, 8), (8, 8, 8)))


def test_if_needed_meshes_again_a_project_with_meshes_of_an_older_format(tmp_path):
    """`segment --if-needed` over a project an earlier version segmented (legacy per-block
    fragment files, which the server no longer shows) meshes its supervoxels in the current
    format and touches nothing else; over a current project it does nothing."""
    image = np.full((12, 20, 24), 200, np.uint8)
    image[:, 10, :] = 20
    np.save(tmp_path / "image.npy", image)
    config = load_config(write_config(tmp_path, tmp_path, image={"path": str(
        tmp_path / "image.npy")}, segmentation=None, segment={"workers": 0, "meshes": True}))
    run_segment(config, progress=False)
    project = Project.open(config.project_dir)
    mesh = project.layer_dir("segmentation") / "mesh"
    shutil.rmtree(mesh)
    mesh.mkdir()
    (mesh / "info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh"}))
    (mesh / "1:0").write_text(json.dumps({"fragments": ["fragment-1-0"]}))
    segments = (project.root / "segments.npz").stat().st_mtime_ns
    assert run_segment(config, if_needed=True, progress=False) is None
    labels = whole(project)
    meshes = CloudVolume(f"file://{project.layer_dir('segmentation')}",
                         progress=False).mesh.get(np.unique(labels).tolist(), lod=0)
    assert sorted(meshes) == np.unique(labels).tolist() and not (mesh / "1:0").exists()
    assert (project.root / "segments.npz").stat().st_mtime_ns == segments
    shards = {p.name: p.stat().st_mtime_ns for p in mesh.iterdir()}
    run_segment(config, if_needed=True, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in mesh.iterdir()} == shards
