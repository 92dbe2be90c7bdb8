"""Affinities, supervoxels, the RAG and agglomeration on small volumes made for each check."""

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from segmentation.affinities import (IntensityBaseline, affinities_from_boundary,
                                     boundary_from_affinities)
from segmentation.agglomerate import QuantileScore, agglomerate
from segmentation.blockwise import make_blocks
from segmentation.errors import InputError
from segmentation.metrics import best_merge, scores
from segmentation.rag import Contacts, NodeStats, block_contacts, block_node_stats, build_rag
from segmentation.supervoxels import SupervoxelParams, flood, seed_mask, supervoxels


def cells(shape=(24, 40, 40), seed=0):
    """Ground truth of convex cells and an EM-like image with dark membranes between them."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (12, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    distance = np.linalg.norm(grid[..., None, :] - centres, axis=-1)
    order = np.sort(distance, axis=-1)
    labels = np.argmin(distance, axis=-1).astype(np.uint64) + 1
    membrane = (order[..., 1] - order[..., 0]) < 1.5
    image = np.where(membrane, 40, 190).astype(np.float32) + rng.normal(0, 8, shape)
    return labels, np.clip(image, 0, 255).astype(np.uint8), membrane


def test_affinity_channels_join_v_and_v_minus_e():
    boundary = np.zeros((3, 4, 5), np.float32)
    boundary[1, 2, 3] = 1.0
    affinities = affinities_from_boundary(boundary)
    assert affinities.shape == (3, 3, 4, 5)
    assert affinities[0, 1, 2, 3] == 0 and affinities[0, 2, 2, 3] == 0  # z: (1,2,3)-(0,..), (2,..)-(1,..)
    assert affinities[1, 1, 3, 3] == 0 and affinities[2, 1, 2, 4] == 0
    assert affinities[0, 2, 0, 0] == 1


def test_boundary_from_affinities_refuses_bad_input():
    with pytest.raises(InputError, match="shape"):
        boundary_from_affinities(np.ones((2, 4, 4, 4), np.float32))
    with pytest.raises(InputError, match="NaN"):
        boundary_from_affinities(np.full((3, 4, 4, 4), np.nan, np.float32))
    assert boundary_from_affinities(np.ones((3, 2, 2, 2), np.float32)).max() == 0
    assert boundary_from_affinities(np.zeros((3, 2, 2, 2), np.uint8)).min() == 255


def test_uint8_affinities_give_the_rounded_mean_for_every_sum():
    """The integer path is 255 minus the mean of the three channels, rounded, as the float
    affinities' path gives for the same values (every sum 0..765 once)."""
    total = np.arange(766)
    channels = np.stack([np.clip(total - 255 * k, 0, 255) for k in range(3)]).astype(np.uint8)
    affinities = channels[:, :, None, None]
    expected = np.round(255 - total / 3).astype(np.uint8)
    np.testing.assert_array_equal(boundary_from_affinities(affinities)[:, 0, 0], expected)
    np.testing.assert_array_equal(boundary_from_affinities(affinities / 255.0)[:, 0, 0],
                                  expected)


def test_baseline_finds_membranes_and_supervoxels_respect_them():
    labels, image, membrane = cells()
    model = IntensityBaseline(voxel_size=(10, 10, 10))
    affinities = model.predict(image)
    assert affinities.shape == (3,) + image.shape and 0 <= affinities.min() <= affinities.max() <= 1
    boundary = boundary_from_affinities(affinities)
    on_membrane = image < 100
    assert boundary[on_membrane].mean() > boundary[~on_membrane].mean() + 60
    result = supervoxels(boundary, SupervoxelParams(), (10, 10, 10))
    assert (result != 0).all()
    interior = np.where(membrane, 0, labels)  # ground truth 0 is ignored: membranes don't count
    oracle = scores(interior, best_merge(interior, result))
    assert oracle.voi < 0.05, oracle  # every supervoxel stays inside one cell
    assert len(np.unique(result)) >= 12


@pytest.mark.parametrize("count", [9000, 65535, 65536, 68000])  # 16-bit markers up to 65535
def test_the_flood_gives_every_seed_its_own_region(count):
    rng = np.random.default_rng(count)
    boundary = rng.integers(0, 256, (64, 66, 130), dtype=np.uint8)
    seeds = np.zeros(boundary.shape, np.uint64)
    places = seeds[::2, ::2, ::2]  # a view: 68640 places, the first ``count`` seeded
    ids = np.arange(count, dtype=np.uint64) * 7919 + (1 << 40)
    places[...] = np.concatenate([ids, np.zeros(places.size - count, np.uint64)]
                                 ).reshape(places.shape)
    labels = flood(boundary, seeds)
    assert labels.dtype == np.uint64 and (labels != 0).all()
    assert np.array_equal(labels[::2, ::2, ::2].reshape(-1)[:count], ids)
    assert len(np.unique(labels)) == count


def test_blockwise_seeds_equal_whole_volume_seeds():
    """Clipping the distance transform at max_distance makes seeds local: with the halo that
    seed_halo gives, every block finds exactly the whole-volume seeds."""
    _, image, _ = cells((30, 48, 48), seed=2)
    boundary = boundary_from_affinities(IntensityBaseline().predict(image))
    params = SupervoxelParams(max_distance=4)
    whole = seed_mask(boundary, params, (10, 10, 10))
    halo = params.seed_halo((10, 10, 10))
    for block in make_blocks(boundary.shape, (16, 16, 16)):
        region = block.grown(halo)
        local = seed_mask(boundary[region], params, (10, 10, 10))
        np.testing.assert_array_equal(local[block.core_within(region)], whole[block.core])


def test_anisotropic_data_get_seeds_per_section():
    params = SupervoxelParams()
    assert params.anisotropic((40, 4, 4)) and not params.anisotropic((10, 10, 10))
    boundary = np.full((3, 20, 20), 255, np.uint8)
    boundary[:, 5:15, 5:15] = 0
    mask = seed_mask(boundary, params, (40, 4, 4))
    assert all(mask[z].any() for z in range(3))  # each section has its own seed
    assert params.seed_halo((40, 4, 4))[0] == 1


def test_rag_statistics_by_hand():
    labels = np.array([[[1, 1, 2, 2]]], np.uint64)
    affinities = np.zeros((3, 1, 1, 4), np.uint8)
    affinities[2, 0, 0, 2] = 51  # the x-face between voxel 1 (label 1) and voxel 2 (label 2)
    rag = build_rag(block_node_stats(labels, (0, 0, 0)), block_contacts(labels, affinities,
                                                                         (0, 0, 0)))
    assert rag.edges.tolist() == [[1, 2]] and rag.area.tolist() == [1]
    assert rag.mean[0] == pytest.approx(0.2)  # the mean is exact
    assert rag.quantiles[0].tolist() == pytest.approx([49.5 / 255] * 3)  # centre of bin 48..51
    assert rag.size.tolist() == [2, 2] and rag.bbox[1].tolist() == [0, 0, 2, 1, 1, 4]
    assert rag.centroid[0].tolist() == [0, 0, 0.5]


def test_rag_quantiles_follow_the_stated_definition():
    labels = np.zeros((1, 2, 10), np.uint64)
    labels[0, 0], labels[0, 1] = 1, 2
    affinities = np.zeros((3, 1, 2, 10), np.uint8)
    affinities[1, 0, 1] = np.arange(10) * 25  # ten y-faces with affinities 0, 25, ..., 225
    rag = build_rag(block_node_stats(labels, (0, 0, 0)), block_contacts(labels, affinities,
                                                                         (0, 0, 0)))
    assert rag.area[0] == 10
    # q: the first bin by which a fraction q of the faces are counted, given by its centre,
    # so within 2/255 of the smallest a with at least q of the faces <= a
    assert rag.quantiles[0].tolist() == pytest.approx([1.5 / 255, 101.5 / 255, 201.5 / 255])
    assert rag.quantiles[0].tolist() == pytest.approx([0, 100 / 255, 200 / 255], abs=2 / 255)
    assert rag.mean[0] == pytest.approx(112.5 / 255)


@pytest.mark.parametrize("offset", [0, 2 ** 40])  # small ids, and ids no table can hold
def test_contacts_and_node_stats_equal_a_voxel_by_voxel_count(offset):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 6, (6, 7, 8)).astype(np.uint64)
    labels = np.where(labels > 0, labels + np.uint64(offset), np.uint64(0))
    affinities = rng.integers(0, 256, (3, 6, 7, 8)).astype(np.uint8)
    lower = (2, 1, 0)  # the block starts at (2, 1, 0) of ``labels``
    expected: dict = {}
    for v in np.ndindex(labels.shape):
        if any(i < l for i, l in zip(v, lower)):
            continue
        for c in range(3):
            w = tuple(i - (d == c) for d, i in enumerate(v))
            u, t = int(labels[v]), int(labels[w]) if w[c] >= 0 else 0
            if u != t and u and t:
                value = int(affinities[(c,) + v])
                row = expected.setdefault((min(u, t), max(u, t), value // 4), [0, 0])
                row[0] += 1
                row[1] += value
    core = tuple(slice(l, None) for l in lower)
    contacts = block_contacts(labels, affinities[(slice(None),) + core], lower)
    found = {(int(a), int(b), int(k)): [int(n), int(t)] for a, b, k, n, t in zip(
        contacts.a, contacts.b, contacts.bin, contacts.count, contacts.total)}
    assert found == expected
    assert list(found) == sorted(found)  # rows come sorted by (a, b, bin)

    origin = (10, 20, 30)
    stats = block_node_stats(labels[core], origin)
    ids = sorted(set(labels[core].ravel().tolist()) - {0})
    assert stats.ids.tolist() == ids
    for i, sv in enumerate(ids):
        where = np.argwhere(labels[core] == sv) + origin
        assert stats.size[i] == len(where)
        assert stats.lo[i].tolist() == where.min(axis=0).tolist()
        assert stats.hi[i].tolist() == (where.max(axis=0) + 1).tolist()
        assert stats.coord_sum[i].tolist() == where.sum(axis=0).tolist()


def test_relabelled_rag_equals_the_rag_of_the_merged_volume():
    rng = np.random.default_rng(1)
    labels = rng.integers(1, 9, (6, 7, 8)).astype(np.uint64)
    affinities = rng.integers(0, 256, (3, 6, 7, 8)).astype(np.uint8)
    rag = build_rag(block_node_stats(labels, (0, 0, 0)), block_contacts(labels, affinities,
                                                                         (0, 0, 0)))
    mapping = {1: 2, 3: 4, 5: 4}
    merged = np.vectorize(lambda v: mapping.get(int(v), int(v)))(labels).astype(np.uint64)
    direct = build_rag(block_node_stats(merged, (0, 0, 0)), block_contacts(merged, affinities,
                                                                           (0, 0, 0)))
    relabelled = rag.relabelled(mapping)
    for name in ("ids", "size", "bbox", "edges", "area", "quantiles"):
        np.testing.assert_array_equal(getattr(relabelled, name), getattr(direct, name), name)
    np.testing.assert_allclose(relabelled.centroid, direct.centroid, atol=1e-5)


def chain_rag():
    """1 - 2 - 3 in a row, faces of affinity 0.9 between 1 and 2, 0.6 between 2 and 3."""
    labels = np.array([[[1, 1, 2, 2, 3, 3]]], np.uint64)
    affinities = np.full((3, 1, 1, 6), 255, np.uint8)
    affinities[2, 0, 0, 2] = round(0.9 * 255)
    affinities[2, 0, 0, 4] = round(0.6 * 255)
    return build_rag(block_node_stats(labels, (0, 0, 0)), block_contacts(labels, affinities,
                                                                         (0, 0, 0)))


def test_agglomeration_merges_strongest_edges_first_per_threshold():
    result = agglomerate(chain_rag(), [0.05, 0.2, 0.5])
    low, middle, high = (m.tolist() for m in result.memberships)
    assert len(set(low)) == 3
    assert middle == [1, 1, 3]  # score 0.1 merged, 0.4 not; each named after its first node
    assert high == [1, 1, 1]


def test_agglomeration_honours_proofreading_constraints():
    rag = chain_rag()
    kept_apart = agglomerate(rag, [1.0], split_pairs=[(1, 3)]).memberships[0].tolist()
    assert kept_apart[0] != kept_apart[2]  # not even through node 2
    confirmed = agglomerate(rag, [0.0], merge_pairs=[(2, 3)]).memberships[0].tolist()
    assert confirmed[1] == confirmed[2] != confirmed[0]


def random_rag(rng: np.random.Generator):
    """A small graph whose contacts fall in few histogram bins, so that scores tie often."""
    n = int(rng.integers(4, 14))
    pairs = sorted({tuple(sorted(rng.choice(n, 2, replace=False) + 1))
                    for _ in range(int(rng.integers(n, 3 * n)))})
    rows = [(a, b, int(bin_), int(rng.integers(1, 3))) for a, b in pairs
            for bin_ in rng.choice([10, 30, 50, 60], int(rng.integers(1, 3)), replace=False)]
    a, b, bins, count = (np.array(column) for column in zip(*rows))
    contacts = Contacts(a.astype(np.uint64), b.astype(np.uint64), bins.astype(np.uint8),
                        count.astype(np.int64), (count * bins * 4).astype(np.int64))
    stats = NodeStats(np.arange(1, n + 1, dtype=np.uint64), np.ones(n, np.int64),
                      np.zeros((n, 3), np.int64), np.ones((n, 3), np.int64), np.zeros((n, 3)))
    return build_rag(stats, contacts), n


def test_quantile_agglomeration_rescores_only_grown_contacts_and_merges_the_same():
    """A merge rescores only the contacts whose histograms grew: the merges are those of
    rescoring every moved contact, with proofreading constraints too (until the kept side
    was settled independently of how a queue entry named the two, some of these graphs
    merged differently)."""
    rng = np.random.default_rng(0)
    for _ in range(1500):
        rag, n = random_rag(rng)
        split = [tuple(int(x) for x in rng.choice(n, 2, replace=False) + 1)
                 for _ in range(int(rng.integers(0, 3)))]
        merge = [tuple(int(x) for x in rng.choice(n, 2, replace=False) + 1)
                 for _ in range(int(rng.integers(0, 2)))]
        every_moved = QuantileScore()
        every_moved.rescores = "moved"
        grown = agglomerate(rag, [0.1, 0.3, 0.5, 0.7, 0.9], merge_pairs=merge, split_pairs=split)
        moved = agglomerate(rag, [0.1, 0.3, 0.5, 0.7, 0.9], merge_pairs=merge,
                            split_pairs=split, score=every_moved)
        for mine, theirs in zip(grown.memberships, moved.memberships):
            assert mine.tolist() == theirs.tolist()


@pytest.mark.parametrize("thresholds", [[-0.1], [1.2], [], [float("nan")]])
def test_thresholds_outside_zero_one_are_refused(thresholds):
    with pytest.raises(InputError):
        agglomerate(chain_rag(), thresholds)


@pytest.mark.parametrize("seed", range(4))
def test_metrics_equal_skimage(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 6, (9, 10, 11))
    seg = rng.integers(0, 8, (9, 10, 11)) * 1000
    ours = scores(gt, seg)
    vi = variation_of_information(gt, seg, ignore_labels=[0])
    are, precision, recall = adapted_rand_error(gt, seg, ignore_labels=[0])
    assert ours.voi_split == pytest.approx(vi[0], abs=1e-6)
    assert ours.voi_merge == pytest.approx(vi[1], abs=1e-6)
    assert ours.arand == pytest.approx(are, abs=1e-6)
    assert ours.rand_precision == pytest.approx(precision, abs=1e-6)
    assert ours.rand_recall == pytest.approx(recall, abs=1e-6)


def test_metrics_on_the_real_demo_against_skimage(demo_h5):
    import h5py

    with h5py.File(demo_h5, "r") as f:
        gt, sv = f["labels"][40:80, :128, :128], f["supervoxels"][40:80, :128, :128]
    ours = scores(gt, sv)
    vi = variation_of_information(gt, sv, ignore_labels=[0])
    assert (ours.voi_split, ours.voi_merge) == pytest.approx(tuple(vi), abs=1e-6)
    assert ours.arand == pytest.approx(adapted_rand_error(gt, sv, ignore_labels=[0])[0], abs=1e-6)


def test_best_merge_gives_each_supervoxel_to_its_main_neuron():
    gt = np.array([[[1, 1, 1, 2, 2, 2]]])
    sv = np.array([[[5, 5, 6, 6, 6, 7]]])
    assert best_merge(gt, sv).tolist() == [[[1, 1, 2, 2, 2, 2]]]
