"""Bad input ends in one clear line and a non-zero exit, never a traceback."""

import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import write_config

REPO = Path(__file__).resolve().parent.parent


def promptcut(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptcut.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # a progress bar may precede it; the error itself is the one last line
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("promptcut")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr
    assert errors[0].startswith("promptcut: error:"), result.stderr
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture
def small_h5(tmp_path) -> Path:
    path = tmp_path / "small.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.zeros((4, 8, 8), np.uint8)
        f["probabilities"] = np.zeros((4, 8, 8), np.float32)
        f["stack4d"] = np.zeros((2, 4, 8, 8), np.uint8)
        f["empty"] = np.zeros((0, 8, 8), np.uint8)
    return path


def test_missing_file(tmp_path):
    assert_one_line_error(promptcut("import", tmp_path / "nope.h5", tmp_path / "out",
                                    "--key", "raw"), "not found", "nope.h5")


def test_wrong_hdf5_key_lists_the_keys(small_h5, tmp_path):
    assert_one_line_error(promptcut("import", small_h5, tmp_path / "out", "--key", "labels"),
                          "no dataset 'labels'", "raw")


def test_four_dimensional_array(small_h5, tmp_path):
    assert_one_line_error(promptcut("import", small_h5, tmp_path / "out", "--key", "stack4d",
                                    "--voxel-size", "1", "1", "1"), "3-D", "(2, 4, 8, 8)")


def test_empty_array(small_h5, tmp_path):
    assert_one_line_error(promptcut("import", small_h5, tmp_path / "out", "--key", "empty",
                                    "--voxel-size", "1", "1", "1"), "empty")


def test_float_volume_as_segmentation(small_h5, tmp_path):
    result = promptcut("import", small_h5, tmp_path / "out", "--key", "probabilities",
                       "--kind", "segmentation", "--voxel-size", "1", "1", "1")
    assert_one_line_error(result, "integer", "float32")
    assert not (tmp_path / "out").exists()


def test_negative_segmentation_ids(tmp_path):
    np.save(tmp_path / "neg.npy", np.full((4, 4, 4), -3, np.int32))
    result = promptcut("import", tmp_path / "neg.npy", tmp_path / "out", "--kind",
                       "segmentation", "--voxel-size", "1", "1", "1")
    assert_one_line_error(result, "negative")
    assert not (tmp_path / "out").exists()


def test_npy_without_voxel_size(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((4, 4, 4), np.uint8))
    assert_one_line_error(promptcut("import", tmp_path / "v.npy", tmp_path / "out"),
                          "voxel size")


def test_unreadable_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: [\n")
    assert_one_line_error(promptcut("serve", "--config", bad), "not valid YAML")
    assert_one_line_error(promptcut("import", "--config", tmp_path / "missing.yaml"),
                          "not found")


def test_config_with_a_bad_key(tmp_path, small_h5):
    path = write_config(tmp_path, small_h5, server={"prot": 1})
    assert_one_line_error(promptcut("serve", "--config", path), "server.prot")


@pytest.mark.parametrize("command, sections, words", [
    (["serve"], {"server": {"port": 70000}}, ["server.port: must be at most 65535 (got 70000)"]),
    (["serve"], {"server": {"port": -1}}, ["server.port: must be at least 0 (got -1)"]),
    (["serve", "--port", "-1"], {}, ["server.port: must be at least 0",
                                     "from the command line"]),
    (["import"], {"dataset": {"voxel_size": [0, 10, 10]}},
     ["dataset.voxel_size[0] (z): must be greater than 0 (got 0)"]),
    (["serve"], {"viewer": {"cross_section_scale": -1}},
     ["viewer.cross_section_scale: must be greater than 0 (got -1)"]),
    (["segment"], {"segment": {"workers": -3}}, ["segment.workers: must be at least 0 (got -3)"]),
    (["segment", "--workers", "-3"], {}, ["segment.workers: must be at least 0 (got -3, from "
                                          "the command line)"]),
    (["serve"], {"models": {"device": "tpu9"}}, ["models.device: must be auto, cpu, cuda",
                                                 "(got 'tpu9')"]),
    (["segment"], {"segment": {"agglomeration": {"thresholds": [0.3, 0.4],
                                                 "default_threshold": 0.35}}},
     ["segment.agglomeration.default_threshold: 0.35 is not one of the computed thresholds "
      "(0.3, 0.4)"]),
    (["train"], {"train": {"patch": [32, 96]}}, ["train.patch: must list 3 values, in the order "
                                                 "[z, y, x]"]),
    (["train", "--iterations", "0"], {}, ["train.iterations: must be at least 1 (got 0, from "
                                          "the command line)"]),
    (["serve"], {"viewer": {"postion": [1, 2, 3]}}, ["viewer.postion: unknown key",
                                                     "did you mean 'position'?"]),
])
def test_bad_config_values_end_in_one_line_naming_the_key(tmp_path, small_h5, command, sections,
                                                         words):
    path = write_config(tmp_path, small_h5, **sections)
    assert_one_line_error(promptcut(*command, "--config", path), str(path), *words)


def test_config_schema_prints_the_committed_schema_and_checks_configs(tmp_path, small_h5):
    import json

    result = promptcut("config-schema")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "docs" / "config.schema.json").read_text()
    assert json.loads(result.stdout)["properties"]["server"]["$ref"] == "#/$defs/ServerConfig"
    result = promptcut("config-schema", "--check", REPO / "configs" / "demo.yaml")
    assert result.returncode == 0 and result.stdout.endswith("demo.yaml: valid\n"), result.stderr
    bad = write_config(tmp_path, small_h5, server={"port": 70000})
    assert_one_line_error(promptcut("config-schema", "--check", bad), "server.port")


def test_port_already_in_use(tmp_path, demo_h5):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, demo_h5, server={"port": port})
        result = promptcut("serve", "--config", path)
    assert_one_line_error(result, "already in use", str(port))


def test_unknown_benchmark():
    # the benchmarks run from a source checkout (`python -m benchmarks`), not from the CLI
    result = subprocess.run([sys.executable, "-m", "benchmarks", "nope"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "unknown benchmark(s) nope" in result.stderr and "rag_load" in result.stderr
    assert promptcut("bench", "nope").returncode == 2  # no such command


def test_import_overwrite_replaces_only_a_volume(small_h5, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert_one_line_error(promptcut("import", small_h5, theirs, "--key", "raw",
                                    "--voxel-size", "1", "1", "1", "--overwrite"),
                          "is not a promptcut volume")
    assert (theirs / "notes.txt").read_text() == "mine"
    out = tmp_path / "volume"
    for _ in range(2):  # an earlier import is a volume: --overwrite replaces it
        result = promptcut("import", small_h5, out, "--key", "raw", "--voxel-size", "1", "1",
                           "1", "--overwrite", "--quiet")
        assert result.returncode == 0, result.stderr
    assert (out / "info").is_file()


def test_serving_beyond_loopback_without_a_token_refuses_naming_the_key(small_h5, tmp_path,
                                                                       monkeypatch):
    monkeypatch.delenv("PROMPTCUT_TOKEN", raising=False)
    path = write_config(tmp_path, small_h5, segmentation=None)
    assert_one_line_error(promptcut("serve", "--config", path, "--host", "0.0.0.0",
                                    "--port", "0"), "server.token")


def test_import_never_writes_over_its_own_input(tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "info").write_text("{}")
    assert_one_line_error(promptcut("import", volume, volume, "--overwrite"), "OUTPUT is INPUT")
    assert (volume / "info").read_text() == "{}"
