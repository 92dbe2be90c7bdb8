"""The simulated proofreader: the oracle finds the largest error, places its points deep inside
the ground-truth neurons and fixes it through the session's own operations.

The scene is the one of test_supervoxel_split: supervoxel 1 (y < 12) spans two neurons that
meet at x = 15; supervoxels 2 (x < 15) and 3 (x >= 15) fill the rest. Segment 1 holds 1 and 2,
segment 3 holds 3: neuron B (x >= 15) is glued to A in segment 1 and split from its other part.
"""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.oracle import GroundTruthOracle, session_operations, simulate
from tests.test_supervoxel_split import SHAPE, session_over, volume_of


def truth() -> np.ndarray:
    neurons = np.ones(SHAPE, np.uint32)
    neurons[:, :, 15:] = 2
    return neurons


def oracle_for(session) -> GroundTruthOracle:
    return GroundTruthOracle(truth(), lambda: volume_of(session), session.segments_of)


def test_errors_are_ranked_by_the_bits_they_cost(tmp_path):
    session = session_over(tmp_path)
    errors = oracle_for(session).errors()
    kinds = {(kind, which) for _, kind, which in errors}
    assert kinds == {("merge", 1), ("split", 2)}  # segment 1 glues; neuron 2 is in pieces
    assert [bits for bits, _, _ in errors] == sorted((bits for bits, _, _ in errors),
                                                     reverse=True)


@pytest.mark.parametrize("policy", ["split", "prompt-cut"])
def test_oracle_divides_the_mixed_supervoxel_then_merges_the_piece(tmp_path, policy):
    session = session_over(tmp_path)
    oracle = oracle_for(session)
    first = oracle.next_edit(policy)
    assert first.kind == policy and first.voxel_level  # the only fix: divide supervoxel 1
    assert volume_of(session)[first.first[0]] == volume_of(session)[first.second[0]] == 1
    assert truth()[first.first[0]] != truth()[first.second[0]]
    run = simulate(oracle, session_operations(session, "oracle"), policy, edits=10)
    assert run.scores[0].voi > 1.0
    # the division puts a few voxels of the membrane on the wrong side (the compact flood's
    # price); the oracle mends what it can and leaves what is below min_division voxels
    assert run.scores[-1].voi < 0.4
    assert [r.kind for r in run.records][:2] == [policy, "merge"]
    assert not any(r.refused or r.worse for r in run.records)
    assert "divided into" in run.records[0].message
    assert len(run.records) < 10 and oracle.next_edit(policy) is None  # nothing left to try


def test_a_refused_edit_is_tried_patience_times_then_left(tmp_path):
    session = session_over(tmp_path)
    oracle = oracle_for(session)

    def refuse(edit):
        from segmentation.session import EditError

        raise EditError("no")

    operations = {kind: refuse for kind in ("merge", "split", "prompt-cut")}
    run = simulate(oracle, operations, "split", edits=20)
    assert all(r.refused for r in run.records)
    # the one edit there is (the merge has no second piece that is mostly neuron 2) twice
    assert len(run.records) == 2
    assert run.scores[-1].voi == run.scores[0].voi
