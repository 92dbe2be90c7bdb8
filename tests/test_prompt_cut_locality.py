"""Property test on the segmented demo: a prompt cut changes only what it was asked to.

Random single- and multi-point prompt cuts; after each, every segment that holds no prompt
point either keeps exactly its supervoxels or only gave some to the prompted segment, and is
then regrouped by connectivity over its whole membership; no such segment receives any.
Every segment the cut made or changed is connected. Undo gives back the membership exactly.
"""

from __future__ import annotations

import shutil
from collections import defaultdict

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from segmentation.project import Project
from segmentation.proofread import open_session
from segmentation.errors import PromptcutError


@pytest.fixture
def session(tmp_path, segmented_config):
    shutil.copytree(segmented_config.project_dir, tmp_path / "project",
                    ignore=shutil.ignore_patterns("edit_log.sqlite*", "mesh"))
    opened = open_session(Project.open(tmp_path / "project"))
    yield opened
    opened.log.close()


def groups(session) -> dict[int, frozenset[int]]:
    ids, segments = session.membership()
    members = defaultdict(set)
    for sv, seg in zip(ids.tolist(), segments.tolist()):
        members[seg].add(sv)
    return {seg: frozenset(svs) for seg, svs in members.items()}


def connected(session, supervoxels) -> bool:
    rows = session.graph.node_index(sorted(supervoxels))
    a, b, _ = session.graph.subgraph(rows)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(rows), len(rows)))
    return connected_components(graph, directed=False)[0] == 1


def inside(session, labels, supervoxel, rng):
    voxels = np.argwhere(labels == supervoxel)
    return tuple(int(v) for v in voxels[rng.integers(len(voxels))])


def test_random_prompt_cuts_change_only_what_they_decide(session):
    rng = np.random.default_rng(11)
    labels = session.supervoxels.read(slice(None), slice(None), slice(None))
    candidates = [seg for seg, svs in groups(session).items() if len(svs) >= 3]
    done = refused = 0
    while done < 60:
        before = groups(session)
        segment = int(rng.choice(candidates))
        members = sorted(before[segment])
        neighbours = session.graph.ids[session.graph.neighbours(
            session.graph.node_index(members))].tolist()
        around = [sv for sv in neighbours if sv not in before[segment]]
        positives = [inside(session, labels, int(rng.choice(members)), rng)
                     for _ in range(int(rng.integers(1, 3)))]
        negatives = [inside(session, labels, int(rng.choice(
            members if rng.random() < 0.7 or not around else around)), rng)
                     for _ in range(int(rng.integers(0 if done % 3 else 1, 3)))]
        prompted = {session.segment_of(int(labels[p])) for p in positives + negatives}
        try:
            result = session.prompt_cut("prop", positives, negatives)
        except PromptcutError:  # mostly "leaves every segment as it is": legitimate
            refused += 1
            assert refused < 300, "random prompt cuts keep being refused"
            assert groups(session) == before
            continue
        after = groups(session)
        owner_after = {sv: seg for seg, svs in after.items() for sv in svs}
        source = owner_after[int(session.locate(positives[0]))]  # a divided one: its piece
        for seg, svs in before.items():
            if seg in prompted:
                continue
            kept = {sv for sv in svs if owner_after[sv] != source}
            gave = svs - kept
            pieces = {owner_after[sv] for sv in kept}
            if not gave:
                assert seg in after and after[seg] == svs, f"segment {seg} changed unasked"
                continue
            # it gave supervoxels to the cut: what is left is regrouped by connectivity over
            # its whole membership, and nothing from elsewhere joined it
            for piece in pieces:
                assert after[piece] <= svs
                assert connected(session, after[piece])
            if kept:
                rows = session.graph.node_index(sorted(kept))
                a, b, _ = session.graph.subgraph(rows)
                count = connected_components(coo_matrix(
                    (np.ones(len(a)), (a, b)), shape=(len(rows), len(rows))), directed=False)[0]
                assert len(pieces) == count
        for seg in result.segments:
            assert connected(session, after[seg])
        # undo restores it exactly
        session.undo("prop")
        assert groups(session) == before
        done += 1
