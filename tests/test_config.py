from pathlib import Path

import pytest

from promptcut.config import json_schema, load_config, schema_text
from segmentation.errors import ConfigError
from server.settings import DEVICE_PATTERN

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


@pytest.mark.parametrize("text, message", [
    (MINIMAL + "sever:\n  port: 1\n", "sever: unknown key (did you mean 'server'?"),
    (MINIMAL + "server:\n  prot: 1\n", "server.prot: unknown key (did you mean 'port'?"),
    (MINIMAL + "server:\n  port: eighty\n", "server.port: must be an integer (got 'eighty')"),
    (MINIMAL + "server:\n  port: true\n", "server.port: must be an integer (got True)"),
    (MINIMAL + "server:\n  port: '8000'\n", "server.port: must be an integer (got '8000')"),
    (MINIMAL + "server:\n  port: 70000\n", "server.port: must be at most 65535 (got 70000)"),
    (MINIMAL + "server:\n  port: -1\n", "server.port: must be at least 0 (got -1)"),
    (MINIMAL + "server:\n  viewer_port: 65536\n", "server.viewer_port: must be at most 65535"),
    (MINIMAL + "server:\n  public_url: example.org\n",
     "server.public_url: must start with http:// or https://"),
    (MINIMAL + "viewer:\n  layout: sideways\n", "viewer.layout: must be one of '4panel', 'xy'"),
    (MINIMAL + "viewer:\n  cross_section_scale: -1\n",
     "viewer.cross_section_scale: must be greater than 0 (got -1)"),
    (MINIMAL + "viewer:\n  position: [1, 2]\n",
     "viewer.position: must list 3 values, in the order [z, y, x] (got [1, 2])"),
    (MINIMAL + "viewer:\n  position: [.nan, 2, 3]\n",
     "viewer.position[0] (z): must be a finite number"),
    (MINIMAL + "viewer:\n  merge_timeout: 0\n", "viewer.merge_timeout: must be greater than 0"),
    (MINIMAL + "dataset:\n  voxel_size: [10, 10]\n",
     "dataset.voxel_size: must list 3 values, in the order [z, y, x] (got [10, 10])"),
    (MINIMAL + "dataset:\n  voxel_size: [10, ten, 10]\n",
     "dataset.voxel_size[1] (y): must be a number (got 'ten')"),
    (MINIMAL + "dataset:\n  voxel_size: [0, 10, 10]\n",
     "dataset.voxel_size[0] (z): must be greater than 0 (got 0)"),
    (MINIMAL + "import:\n  format: tiff\n", "import.format: must be one of 'precomputed' or "
     "'zarr' (got 'tiff')"),
    (MINIMAL + "import:\n  chunk_size: [64, 0, 64]\n",
     "import.chunk_size[1] (y): must be at least 1 (got 0)"),
    (MINIMAL + "image: [1, 2]\n", "image: must be a mapping of keys to values (got [1, 2])"),
    ("image:\n  path: em.h5\n", "project: required, but missing"),
    ("project: out\nimage:\n  key: raw\n", "image.path: required, but missing"),
    (MINIMAL + "segment:\n  workers: -3\n", "segment.workers: must be at least 0 (got -3)"),
    (MINIMAL + "segment:\n  block_shape: [64, 64, 64, 64]\n",
     "segment.block_shape: must list 3 values, in the order [z, y, x]"),
    (MINIMAL + "segment:\n  supervoxels:\n    threshold: 0\n",
     "segment.supervoxels.threshold: must be greater than 0 (got 0)"),
    (MINIMAL + "segment:\n  supervoxels:\n    seed_window: 0\n",
     "segment.supervoxels.seed_window: must be at least 1 (got 0)"),
    (MINIMAL + "segment:\n  supervoxels:\n    size: 3\n",
     "segment.supervoxels.size: unknown key"),
    (MINIMAL + "segment:\n  agglomeration:\n    thresholds: [0.2, 1.5]\n",
     "segment.agglomeration.thresholds[1]: must be at most 1 (got 1.5)"),
    (MINIMAL + "segment:\n  agglomeration:\n    thresholds: []\n",
     "segment.agglomeration.thresholds: must list at least 1 value (got [])"),
    (MINIMAL + "segment:\n  agglomeration:\n    default_threshold: 0.35\n",
     "segment.agglomeration.default_threshold: 0.35 is not one of the computed thresholds "
     "(0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)"),
    (MINIMAL + "segment:\n  agglomeration:\n    thresholds: [0.2, 0.4]\n",
     "segment.agglomeration.default_threshold: 0.5 is not one of the computed thresholds"),
    (MINIMAL + "models:\n  device: tpu9\n", "models.device: must be auto, cpu, cuda, cuda:N"),
    (MINIMAL + "models:\n  sam2:\n    score_threshold: 2\n",
     "models.sam2.score_threshold: must be at most 1 (got 2)"),
    (MINIMAL + "train:\n  patch: [0, 96, 96]\n", "train.patch[0] (z): must be at least 1 (got 0)"),
    (MINIMAL + "train:\n  patch: [96, 96]\n",
     "train.patch: must list 3 values, in the order [z, y, x]"),
    (MINIMAL + "train:\n  learning_rate: 0\n", "train.learning_rate: must be greater than 0"),
    (MINIMAL + "train:\n  precision: fp16\n",
     "train.precision: must be one of 'auto', 'fp32' or 'bf16' (got 'fp16')"),
    (MINIMAL + "train:\n  teacher: sam3\n", "train.teacher: must be 'sam2' (got 'sam3')"),
    (MINIMAL + "train:\n  iterations: 1.5\n", "train.iterations: must be an integer (got 1.5)"),
    (MINIMAL + "train:\n  anisotropic: yes please\n",
     "train.anisotropic: must be true or false (got 'yes please')"),
    (MINIMAL + "base_dir: /\n", "base_dir: unknown key"),
])
def test_bad_keys_and_values_are_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(f"{tmp_path / 'c.yaml'}: "), line
    assert message in line, line


def test_a_secret_is_never_echoed(tmp_path):
    with pytest.raises(ConfigError, match="server.token: must be at least 16 characters long "
                       r"\(got 6 characters\)") as caught:
        load_config(write(tmp_path, MINIMAL + "server:\n  token: hunter\n"))
    assert "hunter" not in str(caught.value)


def test_command_line_overrides_are_validated_and_said_to_be_from_it(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match=r"segment.workers: must be at least 0 \(got -3, from "
                       r"the command line\)"):
        load_config(path, {"segment.workers": -3})
    assert load_config(path, {"server.port": 0, "segment.workers": 0}).server.port == 0


def test_values_at_their_limits_and_devices_torch_knows_are_accepted(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + (
        "server:\n  port: 65535\n  viewer_port: 0\n"
        "models:\n  device: cuda:1\n"
        "dataset:\n  voxel_size: [40, 4.5, 4.5]\n"
        "segment:\n  workers: 0\n  agglomeration:\n    thresholds: [0, 0.25, 1]\n"
        "    default_threshold: 0.25\n"
        "train:\n  patch: [16, 64, 64]\n  long_range: [3, 9]\n")))
    assert config.server.port == 65535 and config.models.device == "cuda:1"
    assert config.dataset.voxel_size == [40.0, 4.5, 4.5]
    assert config.train.patch == (16, 64, 64) and config.train.long_range == (3, 9)
    for device in ("auto", "cpu", "cuda", "mps"):
        assert load_config(write(tmp_path, MINIMAL + f"models:\n  device: {device}\n")
                           ).models.device == device


def test_one_settings_type_per_concept(tmp_path):
    """The config's sections are the domain's own settings, not copies of them."""
    from segmentation.models.training import TrainSettings
    from segmentation.supervoxels import SupervoxelParams

    config = load_config(write(tmp_path, MINIMAL + "segment:\n  supervoxels:\n"
                               "    min_size: 10\ntrain:\n  seed: 3\n  thresholds: [0.5]\n"))
    assert type(config.segment.supervoxels) is SupervoxelParams
    assert config.segment.supervoxels == SupervoxelParams(min_size=10)
    assert type(config.train) is TrainSettings
    assert config.train.seed == 3 and config.train.thresholds == (0.5,)


def test_the_committed_json_schema_is_the_generated_one():
    """docs/config.schema.json is what `promptcut config-schema` prints (regenerate it with
    `promptcut config-schema --output docs/config.schema.json` after changing a section)."""
    committed = (REPO / "docs" / "config.schema.json").read_text()
    assert committed == schema_text()


def test_the_json_schema_states_ranges_choices_axes_and_refuses_unknown_keys():
    schema = json_schema()
    defs = schema["$defs"]
    assert schema["additionalProperties"] is False and "import" in schema["properties"]
    assert "base_dir" not in schema["properties"]
    assert all(d["additionalProperties"] is False for d in defs.values())
    port = defs["ServerConfig"]["properties"]["port"]
    assert (port["minimum"], port["maximum"], port["type"]) == (0, 65535, "integer")
    assert defs["ModelsConfig"]["properties"]["device"]["pattern"] == DEVICE_PATTERN
    voxel = defs["DatasetConfig"]["properties"]["voxel_size"]
    assert "[z, y, x]" in voxel["description"]
    assert voxel["anyOf"][0]["items"]["exclusiveMinimum"] == 0
    assert defs["SupervoxelParams"]["properties"]["threshold"]["exclusiveMaximum"] == 1
    assert defs["TrainSettings"]["properties"]["patch"]["default"] == [32, 96, 96]
    assert not [p for d in defs.values() for p in d["properties"].values()
                if "\n" in p.get("description", "")]  # one line each, for editors' hovers


def test_every_key_of_the_schema_is_described():
    schema = json_schema()
    sections = [schema, *schema["$defs"].values()]
    undescribed = [key for section in sections for key, value in section["properties"].items()
                   if not value.get("description")]
    assert not undescribed


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


def test_a_standard_json_schema_validator_agrees_on_the_demo_and_a_bad_port():
    """What an editor does with docs/config.schema.json."""
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    validator = jsonschema.Draft202012Validator(json_schema())
    assert not list(validator.iter_errors(yaml.safe_load(
        (REPO / "configs" / "demo.yaml").read_text())))
    (error,) = validator.iter_errors({"project": "p", "image": {"path": "a"},
                                      "server": {"port": 70000}})
    assert list(error.absolute_path) == ["server", "port"]
