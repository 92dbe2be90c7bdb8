"""The learned merge decision: features, the oracle's training set and the agglomeration."""

import numpy as np
import pytest

from segmentation import edge_classifier, focus
from segmentation.errors import InputError
from segmentation.metrics import Contingency
from segmentation.oracle import simulate_focused, yes_floor
from segmentation.rag import BINS, block_contacts, block_node_stats, build_rag


def cubes(seed: int = 0):
    """Supervoxels: 4-voxel cubes on an 8 x 16 x 16 grid; neurons: pairs of cubes side by side
    in x, through all of z. Affinities (noisy) are high inside a neuron and low between
    neurons, except for a few strong wrong contacts: (supervoxels, neurons, affinities)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices((8, 16, 16))
    supervoxels = (1 + (z // 4) * 16 + (y // 4) * 4 + x // 4).astype(np.uint64)
    neurons = (1 + (y // 4) * 2 + x // 8).astype(np.uint64)
    affinities = np.zeros((3, 8, 16, 16), np.uint8)
    for c in range(3):
        lower = np.roll(neurons, 1, axis=c)
        same = neurons == lower
        value = np.where(same, rng.uniform(0.55, 1.0, same.shape), rng.uniform(0.0, 0.6,
                                                                               same.shape))
        affinities[c] = np.round(value * 255).astype(np.uint8)
    return supervoxels, neurons, affinities


def rag_of(supervoxels, affinities):
    return build_rag(block_node_stats(supervoxels, (0, 0, 0)),
                     block_contacts(supervoxels, affinities, (0, 0, 0)))


def labels_of(rag, supervoxels, neurons):
    table = Contingency.of(neurons, supervoxels)
    return edge_classifier.majority_labels(rag, table)


def test_features_are_the_same_whichever_region_comes_first():
    rng = np.random.default_rng(1)
    contact = rng.integers(0, 20, (5, BINS))
    sizes = rng.integers(10, 1000, (2, 5)).astype(float)
    boundary = rng.integers(0, 50, (2, 5, BINS)).astype(float)
    extent = rng.integers(1, 30, (2, 5, 3)).astype(float)
    distance = rng.uniform(0, 20, 5)
    forward = edge_classifier.edge_features(contact, sizes[0], sizes[1], boundary[0],
                                            boundary[1], extent[0], extent[1], distance)
    backward = edge_classifier.edge_features(contact, sizes[1], sizes[0], boundary[1],
                                             boundary[0], extent[1], extent[0], distance)
    assert forward.shape == (5, len(edge_classifier.FEATURES))
    np.testing.assert_allclose(forward, backward)


def test_each_feature_column_holds_what_its_name_says():
    contact = np.zeros((1, BINS))
    contact[0, 10], contact[0, 50] = 3, 1  # 4 faces: three of affinity bin 10, one of bin 50
    small_boundary, large_boundary = np.zeros((1, BINS)), np.zeros((1, BINS))
    small_boundary[0, 20] = 8
    large_boundary[0, 60] = 16
    row = edge_classifier.edge_features(
        contact, np.array([1000.0]), np.array([27.0]), large_boundary, small_boundary,
        np.array([[9.0, 8.0, 7.0]]), np.array([[3.0, 2.0, 1.0]]), np.array([6.0]))[0]
    value = dict(zip(edge_classifier.FEATURES, row.tolist()))
    assert value["contact affinity q50"] == value["contact affinity q75"] == 10 / BINS
    assert value["contact affinity q90"] == 50 / BINS
    assert value["contact affinity mean"] == pytest.approx((3 * 10.5 + 50.5) / 4 / BINS)
    assert value["contact affinity fraction 1/8"] == 0.75  # bins 8-15
    assert value["contact affinity fraction 6/8"] == 0.25  # bins 48-55
    assert value["log contact faces"] == pytest.approx(np.log(5))
    assert value["log smaller size"] == pytest.approx(np.log(28))  # b is the smaller region
    assert value["contact / smaller size^(2/3)"] == pytest.approx(4 / 9)
    assert value["contact / smaller boundary"] == 0.5
    assert value["contact / larger boundary"] == 0.25
    assert value["smaller boundary median - contact median"] == pytest.approx(10 / BINS)
    assert value["larger boundary mean - contact mean"] == pytest.approx(
        60.5 / BINS - (3 * 10.5 + 50.5) / 4 / BINS)
    assert [value[f"smaller extent {a}"] for a in "zyx"] == [3, 2, 1]
    assert [value[f"larger extent {a}"] for a in "zyx"] == [9, 8, 7]
    assert value["centroid distance / smaller size^(1/3)"] == pytest.approx(2)
    assert value["centroid distance / larger size^(1/3)"] == pytest.approx(0.6)


def test_the_oracle_s_training_set_holds_grown_regions_and_true_targets():
    supervoxels, neurons, affinities = cubes()
    rag = rag_of(supervoxels, affinities)
    labels = labels_of(rag, supervoxels, neurons)
    features, same = edge_classifier.training_set(rag, labels, np.ones(rag.num_nodes, bool))
    assert len(features) > rag.num_edges  # the initial edges, then those of merged regions
    assert 0 < same.mean() < 1
    larger = features[:, edge_classifier.FEATURES.index("log larger size")]
    assert larger.max() > np.log1p(rag.size.max())  # regions grew as the oracle merged them


def test_learned_agglomeration_recovers_the_neurons_and_honours_constraints():
    supervoxels, neurons, affinities = cubes()
    rag = rag_of(supervoxels, affinities)
    labels = labels_of(rag, supervoxels, neurons)
    booster = edge_classifier.train(*edge_classifier.training_set(
        rag, labels, np.ones(rag.num_nodes, bool)), trees=50)
    test_supervoxels, test_neurons, test_affinities = cubes(seed=7)  # other noise
    test_rag = rag_of(test_supervoxels, test_affinities)
    truth = labels_of(test_rag, test_supervoxels, test_neurons)
    (membership,) = edge_classifier.agglomerate_learned(test_rag, booster, [0.5]).memberships
    pairs = {(int(t), int(m)) for t, m in zip(truth, membership)}
    assert len(pairs) == len(set(truth.tolist())) == len(set(membership.tolist()))
    first, second = (int(v) for v in test_rag.ids[truth == truth[0]][:2])
    (kept_apart,) = edge_classifier.agglomerate_learned(
        test_rag, booster, [0.5], split_pairs=[(first, second)]).memberships
    index = test_rag.node_index([first, second])
    assert kept_apart[index[0]] != kept_apart[index[1]]


def test_a_saved_classifier_loads_and_one_for_other_features_is_refused(tmp_path):
    supervoxels, neurons, affinities = cubes()
    rag = rag_of(supervoxels, affinities)
    labels = labels_of(rag, supervoxels, neurons)
    features, same = edge_classifier.training_set(rag, labels, np.ones(rag.num_nodes, bool))
    booster = edge_classifier.train(features, same, trees=10)
    path = tmp_path / "edges.txt"
    edge_classifier.save(booster, path, {"data": "cubes"})
    loaded = edge_classifier.load(path)
    np.testing.assert_allclose(loaded.predict(features[:20]), booster.predict(features[:20]))
    for rows in (features[:1], features[:7], features[3:40:3]):  # what merges ask, exactly
        np.testing.assert_array_equal(edge_classifier.row_predictor(loaded)(rows),
                                      booster.predict(rows))
    meta = path.with_suffix(".json")
    meta.write_text(meta.read_text().replace("log contact faces", "something else"))
    with pytest.raises(InputError, match="other features"):
        edge_classifier.load(path)
    with pytest.raises(InputError, match="both merges and non-merges"):
        edge_classifier.train(features, np.ones(len(features), bool))


def test_questions_come_most_valuable_first_and_decided_ones_are_not_asked_again():
    supervoxels, neurons, affinities = cubes()
    rag = rag_of(supervoxels, affinities)
    booster = edge_classifier.train(*edge_classifier.training_set(
        rag, labels_of(rag, supervoxels, neurons), np.ones(rag.num_nodes, bool)), trees=30)
    apart = rag.ids.copy()  # every supervoxel its own segment
    questions = focus.ranked_questions(rag, apart, booster, limit=10)
    values = [q.value for q in questions]
    assert len(questions) == 10 and values == sorted(values, reverse=True)
    again = focus.ranked_questions(rag, apart, booster, decided=[questions[0].segments[::-1]],
                                   limit=10)
    assert questions[0].segments not in [q.segments for q in again]
    assert again[0] == questions[1]


def test_an_oracle_answering_the_queue_joins_the_neurons_and_nothing_else():
    supervoxels, neurons, affinities = cubes()
    rag = rag_of(supervoxels, affinities)
    booster = edge_classifier.train(*edge_classifier.training_set(
        rag, labels_of(rag, supervoxels, neurons), np.ones(rag.num_nodes, bool)), trees=30)
    table = Contingency.of(neurons, supervoxels)
    scores = simulate_focused(rag, rag.ids.copy(), booster, table, decisions=200)
    assert scores[0].voi_split > 1.0 and scores[0].voi_merge == 0
    assert scores[-1].voi < 1e-9  # every neuron whole, none glued to another
    assert len(scores) < 201  # the queue ran out of questions worth asking


def test_the_yes_floor_joins_touching_pieces_but_neither_far_pieces_nor_merge_errors():
    supervoxels, neurons, affinities = cubes()
    rag = rag_of(supervoxels, affinities)
    # neuron 1 (y 0-3, x 0-7) also owns the far corner cube, which touches none of it
    neurons = neurons.copy()
    corner = supervoxels == supervoxels[7, 15, 15]
    neurons[corner] = 1
    table = Contingency.of(neurons, supervoxels)
    assert yes_floor(rag, rag.ids.copy(), table).voi_split > 0  # the corner stays apart
    assert yes_floor(rag, rag.ids.copy(), table).voi_merge == 0
    assert table.best_merge().scores().voi_split == 0  # what keeps it apart is no contact
    # a start that glues neurons 1 and 2 together keeps that merge error
    glued = rag.ids.copy()
    first_two = np.unique(supervoxels[:, :4, :])
    glued[rag.node_index(first_two)] = first_two[0]
    start = table.relabelled(rag.ids, glued).scores()
    floor = yes_floor(rag, glued, table)
    assert floor.voi_merge == pytest.approx(start.voi_merge) and start.voi_merge > 0
    assert floor.voi_split < start.voi_split
