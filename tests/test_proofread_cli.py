"""`promptcut export`, `log` and `agglomerate` on a copy of the segmented demo."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from promptcut.cli import main
from promptcut.config import load_config
from segmentation.agglomerate import Segments
from segmentation.project import Project
from segmentation.proofread import open_session
from segmentation.volume import open_volume
from tests.conftest import DEMO_H5


def test_export_writes_exactly_the_membership_applied(edited, tmp_path, capsys):
    config_path, project, labels, expected, _, _ = edited
    out = tmp_path / "export"
    assert _export(config_path, out) == 0
    truth = np.vectorize(lambda v: expected.get(int(v), int(v)), otypes=[np.uint64])(labels)
    labels = out / "segmentation.zarr" / "labels" / "segmentation"  # an OME-Zarr label image
    for location in (out / "segmentation", labels):
        volume = open_volume(str(location), "segmentation")
        np.testing.assert_array_equal(volume.read(slice(None), slice(None), slice(None)), truth)
    info = json.loads((out / "segmentation" / "info").read_text())
    assert info["scales"][0]["encoding"] == "compressed_segmentation" and len(info["scales"]) >= 4
    rows = (out / "membership.csv").read_text().splitlines()
    assert rows[0] == "supervoxel,segment" and len(rows) == len(expected) + 1
    assert all(expected[int(sv)] == int(seg) for sv, seg in (r.split(",") for r in rows[1:]))
    log = [json.loads(line) for line in (out / "edit_log.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in log] == ["merge", "split"]
    assert not list(tmp_path.glob("export.partial-*"))


def test_log_prints_json_lines(edited, capsys):
    config_path = edited[0]
    assert main(["log", "--config", str(config_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["user"], e["kind"]) for e in lines] == [("alice", "merge"), ("bob", "split")]
    assert all(len(row) == 3 for e in lines for row in e["delta"])


def test_agglomeration_honours_confirmed_and_separated_edges(edited, capsys):
    config_path, project, _, _, confirmed, separated = edited
    config = load_config(config_path)
    assert main(["agglomerate", "--config", str(config_path)]) == 0
    assert "1 confirmed" in capsys.readouterr().out
    segments = Segments.load(project.root / "segments.npz")
    index = {int(v): i for i, v in enumerate(segments.ids)}
    for membership in segments.membership:
        for a, b in confirmed:
            assert membership[index[a]] == membership[index[b]]
        for a, b in separated:
            assert membership[index[a]] != membership[index[b]]
    assert list(project.root.glob("edit_log.*.sqlite"))  # the old log is kept
    assert not (project.root / "edit_log.sqlite").exists()
    assert config.segment.agglomeration.default_threshold == pytest.approx(
        float(segments.default_threshold))


@pytest.fixture
def fresh_copy(tmp_path, segmented_config):
    """A private copy of the segmented demo with an empty log: (config path, project)."""
    shutil.copytree(segmented_config.project_dir, tmp_path / "project",
                    ignore=shutil.ignore_patterns("edit_log.sqlite*", "mesh"))
    data = yaml.safe_load((segmented_config.base_dir / "config.yaml").read_text())
    data["project"] = str(tmp_path / "project")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(data))
    return config_path, Project.open(tmp_path / "project")


def test_agglomeration_honours_what_prompt_cuts_decided(fresh_copy, capsys):
    """A prompt cut's cut edges are separated and the kept path between its positive points
    confirmed; re-agglomeration keeps both."""
    config_path, project = fresh_copy
    session = open_session(project)
    labels = session.supervoxels.read(slice(None), slice(None), slice(None))
    big = max(session.members, key=lambda s: len(session.members[s]))
    members = session.members_of(big)
    sizes = session.graph.size[session.graph.node_index(members)]
    first, second, third = (int(v) for v in members[np.argsort(-sizes)[:3]])
    point = {sv: tuple(int(v) for v in np.argwhere(labels == sv)[0]) for sv in
             (first, second, third)}
    session.prompt_cut("carol", [point[first], point[second]], [point[third]])
    confirmed, separated = session.decisions()
    assert separated and confirmed
    session.log.close()
    assert main(["agglomerate", "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(confirmed)} confirmed and {len(separated)} separated" in out
    segments = Segments.load(project.root / "segments.npz")
    index = {int(v): i for i, v in enumerate(segments.ids)}
    for membership in segments.membership:
        assert all(membership[index[a]] == membership[index[b]] for a, b in confirmed)
        assert all(membership[index[a]] != membership[index[b]] for a, b in separated)


def test_divided_supervoxels_stay_divided_through_reagglomeration(fresh_copy, capsys):
    config_path, project = fresh_copy
    session = open_session(project)
    labels = session.supervoxels.read(slice(None), slice(None), slice(None))
    live = session.segment != 0
    big = int(session.graph.ids[live][np.argmax(session.graph.size[live])])
    voxels = np.argwhere(labels == big)
    first = tuple(int(v) for v in voxels[0])
    second = tuple(int(v) for v in voxels[np.argmax(np.abs(voxels - voxels[0]).sum(1))])
    result = session.split_supervoxel("dave", [first], [second])
    pieces = sorted(result.created)
    divided = session.supervoxels.read(slice(None), slice(None), slice(None))
    session.log.close()
    assert main(["agglomerate", "--config", str(config_path)]) == 0
    assert "1 divided supervoxel(s) kept" in capsys.readouterr().out
    again = open_session(Project.open(project.root))
    np.testing.assert_array_equal(
        again.supervoxels.read(slice(None), slice(None), slice(None)), divided)
    ids, _ = again.membership()
    assert set(pieces) <= set(ids.tolist()) and big not in ids.tolist()
    assert len(again.log) == 0  # the division is part of the project now, not an edit
    segments = Segments.load(project.root / "segments.npz")
    assert set(pieces) <= set(segments.ids.tolist())
    # and the evaluation reads the divided supervoxels
    config = load_config(config_path)
    assert main(["evaluate", "--config", str(config_path), "--quiet", "--ground-truth",
                 str(DEMO_H5), "--key", "labels"]) == 0
    assert (config.project_dir / "evaluation").is_dir()


def _export(config_path, out, *extra) -> int:
    return main(["export", "--config", str(config_path), "--output", str(out), "--quiet",
                 *map(str, extra)])


def test_export_never_replaces_a_folder_it_did_not_write(edited, tmp_path, capsys):
    config_path, project = edited[0], edited[1]
    def listing():  # (sqlite's -wal / -shm files come and go with an open log; .lock stays)
        return sorted(p.name for p in project.root.iterdir() if not p.name.endswith(
            ("-wal", "-shm", ".lock")))

    before = listing()
    # the project itself: refused either way, nothing touched
    for extra, why in (((), "already exists (pass --overwrite"),
                       (("--overwrite",), "is not a promptcut export: refusing")):
        assert _export(config_path, project.root, *extra) == 2
        assert why in capsys.readouterr().err
    assert listing() == before
    assert Project.open(project.root).volume("segmentation").shape == edited[2].shape
    theirs = tmp_path / "results"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert _export(config_path, theirs, "--overwrite") == 2
    assert "is not a promptcut export" in capsys.readouterr().err
    assert (theirs / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert _export(config_path, a_file, "--overwrite") == 2
    assert a_file.read_text() == "x"


def test_export_replaces_an_earlier_export_only_when_asked(edited, tmp_path, capsys):
    config_path = edited[0]
    out = tmp_path / "export"
    assert _export(config_path, out) == 0
    (out / "marker").write_text("old")
    assert _export(config_path, out) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "marker").exists()
    # leftovers of a killed export (its process is gone) are cleaned up by the next one
    (tmp_path / "export.partial-999999999").mkdir()
    (tmp_path / "export.old-999999999").mkdir()
    assert _export(config_path, out, "--overwrite") == 0
    assert not (out / "marker").exists() and (out / "export.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("export")) == [
        "export"]


def _with(config_path, change) -> None:
    data = yaml.safe_load(config_path.read_text())
    change(data)
    config_path.write_text(yaml.safe_dump(data))


@pytest.mark.slow
def test_train_edges_then_agglomerate_in_the_learned_order(fresh_copy, tmp_path, capsys):
    """`train --edges` fits the classifier on the project's graph and reports both orders on
    the held-out sections; `agglomerate` with method learned then uses it."""
    config_path, project = fresh_copy
    _with(config_path, lambda d: d["dataset"].update(
        ground_truth={"path": str(DEMO_H5), "key": "labels"}))
    model = tmp_path / "edges.txt"
    assert main(["train", "--config", str(config_path), "--edges", str(model)]) == 0
    printed = capsys.readouterr().out
    assert "quantile: best VOI on sections 120-159" in printed and "learned:" in printed
    meta = json.loads(model.with_suffix(".json").read_text())
    assert meta["training_sections"] == [0, 120] and len(meta["validation"]["learned"]) > 1
    quantile = Segments.load(project.root / "segments.npz").membership
    _with(config_path, lambda d: d.setdefault("segment", {}).setdefault(
        "agglomeration", {}).update(method="learned", edge_model=str(model)))
    assert main(["agglomerate", "--config", str(config_path)]) == 0
    learned = Segments.load(project.root / "segments.npz").membership
    assert any((a != b).any() for a, b in zip(quantile, learned))  # another order


def test_a_learned_order_without_its_classifier_names_the_key(fresh_copy, capsys):
    config_path, _ = fresh_copy
    _with(config_path, lambda d: d.setdefault("segment", {}).setdefault(
        "agglomeration", {}).update(method="learned", edge_model="no/such/edges.txt"))
    assert main(["agglomerate", "--config", str(config_path)]) == 2
    assert "segment.agglomeration.edge_model" in capsys.readouterr().err
