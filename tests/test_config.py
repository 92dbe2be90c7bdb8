from pathlib import Path

import pytest

from promptcut.config import load_config
from segmentation.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


MINIMAL = "project: out\nimage:\n  path: em.h5\n  key: raw\n"


def test_demo_config_is_valid_and_resolves_paths_from_its_folder():
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.image.key == "raw" and config.dataset.ground_truth.key == "labels"
    assert config.segmentation is None and config.segment.model == "unet3d"
    assert config.resolve(config.segment.checkpoint).is_file()  # the shipped model
    assert config.dataset.voxel_size == [10.0, 10.0, 10.0]
    assert config.server.host == "127.0.0.1"
    assert config.project_dir == (REPO / "build" / "demo").resolve()
    assert config.source_location(config.image).endswith("shared/data/neuroproof_ts2_dev.h5")


def test_defaults_fill_optional_sections(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.server.port == 8000 and config.viewer.layout == "4panel"
    assert config.import_.chunk_size == [64, 64, 64]
    assert config.project_dir == (tmp_path / "out").resolve()


def test_urls_are_kept_as_written(tmp_path):
    config = load_config(write(tmp_path, "project: p\nimage:\n  path: gs://bucket/em\n"))
    assert config.source_location(config.image) == "gs://bucket/em"


@pytest.mark.parametrize("text, named", [
    (MINIMAL + "sever:\n  port: 1\n", "'sever'"),
    (MINIMAL + "server:\n  prot: 1\n", "'server.prot'"),
    (MINIMAL + "server:\n  port: eighty\n", "'server.port'"),
    (MINIMAL + "viewer:\n  layout: sideways\n", "'viewer.layout'"),
    (MINIMAL + "dataset:\n  voxel_size: [10, 10]\n", "'dataset.voxel_size'"),
    (MINIMAL + "dataset:\n  voxel_size: [10, ten, 10]\n", "'dataset.voxel_size[1]'"),
    (MINIMAL + "import:\n  format: tiff\n", "'import.format'"),
    (MINIMAL + "image: [1, 2]\n", "'image'"),
    ("image:\n  path: em.h5\n", "'project'"),
    ("project: out\nimage:\n  key: raw\n", "'image.path'"),
    (MINIMAL + "server:\n  port: true\n", "'server.port'"),
])
def test_bad_keys_and_values_name_themselves(tmp_path, text, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text))


def test_unreadable_configs_say_why(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "project: [unclosed\n"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(binary)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))
