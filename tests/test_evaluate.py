"""`promptcut evaluate` on the segmented demo: its numbers against a direct computation."""

import json

import fastremap
import h5py
import numpy as np
import pytest
from PIL import Image

from promptcut.cli import main
from segmentation.agglomerate import Segments
from segmentation.metrics import best_merge, scores
from segmentation.project import Project


def test_evaluate_writes_a_table_and_a_plot_that_match_direct_scores(segmented_config, capsys,
                                                                     demo_h5):
    import yaml

    # a config of its own: the shared one stays as the other tests expect it
    config_path = segmented_config.base_dir / "with-gt.yaml"
    data = yaml.safe_load((segmented_config.base_dir / "config.yaml").read_text())
    data["dataset"]["ground_truth"] = {"path": str(demo_h5), "key": "labels"}
    config_path.write_text(yaml.safe_dump(data))
    assert main(["evaluate", "--config", str(config_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "best merge" in printed and "agglomeration" in printed
    project = Project.open(segmented_config.project_dir)
    rows = json.loads((project.root / "evaluation" / "evaluation.json").read_text())
    image = Image.open(project.root / "evaluation" / "evaluation.png")
    assert image.size[0] > 600 and np.asarray(image).std() > 10

    with h5py.File(demo_h5, "r") as f:
        gt = f["labels"][:]
    sv = project.volume("segmentation").read(slice(None), slice(None), slice(None))
    segments = Segments.load(project.root / "segments.npz")
    by_name = {(r["name"], r["threshold"]): r for r in rows}
    direct = scores(gt, sv)
    assert by_name[("supervoxels", None)]["voi_split"] == pytest.approx(direct.voi_split,
                                                                        abs=1e-6)
    oracle = scores(gt, best_merge(gt, sv))
    assert by_name[("supervoxels, best merge", None)]["voi"] == pytest.approx(oracle.voi,
                                                                              abs=1e-6)
    threshold, membership = segments.thresholds[2], segments.membership[2]
    merged = fastremap.remap(sv, dict(zip(segments.ids.tolist(), membership.tolist())))
    row = by_name[("agglomeration", float(threshold))]
    expected = scores(gt, merged)
    assert (row["voi_split"], row["voi_merge"], row["arand"]) == pytest.approx(
        (expected.voi_split, expected.voi_merge, expected.arand), abs=1e-6)


def test_evaluate_without_ground_truth_says_so(segmented_config, capsys):
    import yaml

    path = segmented_config.base_dir / "no-gt.yaml"
    data = yaml.safe_load((segmented_config.base_dir / "config.yaml").read_text())
    data["dataset"].pop("ground_truth", None)
    path.write_text(yaml.safe_dump(data))
    assert main(["evaluate", "--config", str(path)]) == 2
    assert "ground truth" in capsys.readouterr().err
