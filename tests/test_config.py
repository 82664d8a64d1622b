"""Configuration: packaged defaults, user files, --set overrides and every kind of error."""

import dataclasses
import typing

import pytest
import yaml

from pipeline.config import Config, ConfigError, default_config_path, dump_config, load_config


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_load_with_documented_values():
    cfg = load_config()
    assert cfg.data.n_images == 2000 and cfg.data.source == "synthetic"
    assert cfg.serving.inference_port == 8085  # never KServe's 8080
    assert cfg.evaluate.min_eir == 0.95 and cfg.deploy.protocol == "v1"
    assert cfg.kfp.node_selector == {} and cfg.model.pretrained is None


def test_yaml_and_classes_never_drift():
    raw = yaml.safe_load(default_config_path().read_text())
    hints = typing.get_type_hints(Config)
    assert set(raw) == set(hints)
    for section, cls in hints.items():
        assert set(raw[section]) == {f.name for f in dataclasses.fields(cls)}, section


def test_every_default_has_a_comment():
    for line in default_config_path().read_text().splitlines():
        if line.startswith("  ") and ":" in line and not line.strip().startswith("#"):
            key = line.split(":")[0].strip()
            # ports, resources and names that explain themselves may go without
            if key not in {"management_port", "metrics_port", "cpu_request", "cpu_limit", "memory_request",
                           "memory_limit", "ingress_port", "experiment", "pipeline_name"}:
                assert "#" in line, f"{key} has no comment"


def test_user_file_changes_only_its_keys(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  max_iters: 300\ndeploy:\n  protocol: v2\n"))
    assert cfg.train.max_iters == 300 and cfg.deploy.protocol == "v2"
    assert cfg.train.val_interval == 200 and cfg.deploy.name == "platepipe"


@pytest.mark.parametrize("override, check", [
    ("train.max_iters=100", lambda c: c.train.max_iters == 100),
    ("gcs.bucket=my-bucket", lambda c: c.gcs.bucket == "my-bucket"),
    ("train.lr=0.004", lambda c: c.train.lr == 0.004),
    ("train.lr=1", lambda c: c.train.lr == 1.0 and isinstance(c.train.lr, float)),
    ("train.resume=false", lambda c: c.train.resume is False),
    ("kfp.node_selector={pool: gpu}", lambda c: c.kfp.node_selector == {"pool": "gpu"}),
    ("model.pretrained=null", lambda c: c.model.pretrained is None),
    ("deploy.cpu_limit=4", lambda c: c.deploy.cpu_limit == "4"),
    ("kfp.tolerations=[{key: gpu, operator: Exists}]", lambda c: c.kfp.tolerations[0]["key"] == "gpu"),
])
def test_overrides_parse_as_yaml(override, check):
    assert check(load_config(overrides=[override]))


def test_override_wins_over_file(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  seed: 4\n"), ["data.seed=5"])
    assert cfg.data.seed == 5


@pytest.mark.parametrize("override, message", [
    ("train.max_itres=3", "train.max_itres: unknown key (did you mean 'max_iters'?)"),
    ("trian.max_iters=3", "trian: unknown key (did you mean 'train'?)"),
    ("train.max_iters=many", "train.max_iters: expected int or null, got str 'many'"),
    ("train.max_iters=true", "train.max_iters: expected int or null, got bool True"),
    ("deploy.protocol=v3", "deploy.protocol: expected one of v1, v2, got 'v3'"),
    ("serving.inference_port=70000", "serving.inference_port: must be between 1 and 65535"),
    ("data.split_train=0.9", "data.split_train + split_val + split_test must be 1"),
    ("deploy.canary_percent=140", "deploy.canary_percent: must be between 0 and 100"),
    ("data.n_images=0", "data.n_images: must be greater than 0"),
    ("data.min_size=2000", "data.min_size (2000) must not exceed data.max_size"),
    ("kfp.node_selector=[a]", "kfp.node_selector: expected a mapping"),
    ("train.max_iters", "--set train.max_iters: expected KEY=VALUE"),
    ("train=3", "train: expected a mapping of settings"),
    ("serving.metrics_port=8081", "ports must differ"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2"):
        load_config(write(tmp_path, "data:\n  seed: 1: 2\n"))
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"data\.seed: expected int, got str"):
        load_config(write(tmp_path, "data:\n  seed: abc\n"))


def test_dump_and_load_round_trip(tmp_path):
    cfg = load_config(overrides=["kfp.node_selector={pool: gpu}", "gcs.bucket=b", "train.lr=0.01"])
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg
