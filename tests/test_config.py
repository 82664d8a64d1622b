"""Configuration: packaged defaults, user files, --set overrides, every kind of error, and YAML/class drift."""

import dataclasses
import re
import typing

import pytest
import yaml

from platepipe.pipeline.config import (Config, ConfigError, ModelConfig, config_to_dict, default_config_path, dump_config,
                             load_config)


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(*args, **kwargs)
    assert isinstance(err.value, ValueError)
    return str(err.value)


# ---------------------------------------------------------------------------------------------- defaults

DOCUMENTED = {
    "data.source": "synthetic", "data.format": "auto", "data.n_images": 2000, "data.seed": 0,
    "data.min_size": 640, "data.max_size": 1280, "data.split_train": 0.8, "data.split_val": 0.1,
    "data.split_test": 0.1, "data.backgrounds": None, "data.plate_width_min": 80, "data.plate_width_max": 900,
    "data.plate_width_max_frac": 0.7, "data.styles": {"stamped": 0.5, "original": 0.5},
    "data.procedural_fraction": 0.2, "data.photo_pool": "train", "data.empty_fraction": 0.06, "data.ood_images": 100,
    "model.preset": "quick", "model.pretrained": None, "model.device": "auto", "model.plate_score": 0.3,
    "model.char_score": 0.4, "model.read_score": 0.25,
    "train.max_iters": None, "train.batch_size": None, "train.lr": None, "train.resume": True,
    "train.time_budget_min": None, "train.precision": "auto", "train.parallel": "auto",
    "evaluate.min_eir": 0.95, "evaluate.champion_margin": 0.01, "evaluate.iou_threshold": 0.5,
    "evaluate.report_worst": 12, "evaluate.gate_set": "test",
    "serving.model_name": "pipeline", "serving.inference_port": 8085, "serving.management_port": 8081,
    "serving.metrics_port": 8082, "serving.bind_address": "127.0.0.1", "serving.workers_per_model": 1,
    "serving.batch_size": 4, "serving.max_batch_delay_ms": 50, "serving.response_timeout_s": 120,
    "serving.max_request_size_mb": 16, "serving.max_images_per_request": 16,
    "serving.max_request_pixels": 64000000, "serving.max_request_decoded_mb": 512, "serving.token_auth": True, "serving.gpus": None,
    "gcs.bucket": None, "gcs.prefix": "platepipe", "gcs.version": None,
    "gcs.credentials_env": "GOOGLE_APPLICATION_CREDENTIALS",
    "deploy.name": "platepipe", "deploy.namespace": "kubeflow-user", "deploy.protocol": "v1", "deploy.image": None,
    "deploy.runtime": "platepipe-torchserve", "deploy.runtime_kind": "ServingRuntime", "deploy.manage_runtime": True,
    "deploy.service_account": None, "deploy.gpu": 1, "deploy.cpu_request": "1", "deploy.cpu_limit": "4",
    "deploy.memory_request": "4Gi", "deploy.memory_limit": "8Gi",
    "deploy.min_replicas": 1, "deploy.max_replicas": 2, "deploy.scale_metric": "concurrency", "deploy.scale_target": 4,
    "deploy.mode": "auto", "deploy.canary_steps": [10, 100],
    "deploy.timeout_s": 600, "deploy.ingress_host": None, "deploy.ingress_port": None,
    "smoke.n_images": 8, "smoke.protocol": None, "smoke.user_images": None, "smoke.timeout_s": 60,
    "kfp.host": None, "kfp.image": "platepipe:latest", "kfp.experiment": "platepipe",
    "kfp.pipeline_name": "platepipe", "kfp.gpu_type": "nvidia.com/gpu", "kfp.accelerator_type": None,
    "kfp.node_selector": {}, "kfp.tolerations": [], "kfp.pvc": None, "kfp.gcs_secret": None, "kfp.retries": 2, "kfp.service_account": None,
    "kfp.caching": True,
}


@pytest.mark.parametrize("key, value", DOCUMENTED.items(), ids=list(DOCUMENTED))
def test_defaults_have_the_documented_values(key, value):
    section, name = key.split(".")
    got = getattr(getattr(load_config(), section), name)
    assert got == value and type(got) is type(value)


def test_yaml_and_classes_never_drift():
    """Every key in default.yaml is a field, and every field has its default in default.yaml."""
    raw = yaml.safe_load(default_config_path().read_text())
    hints = typing.get_type_hints(Config)
    assert list(raw) == list(hints)
    for section, cls in hints.items():
        assert dataclasses.is_dataclass(cls)
        assert list(raw[section]) == [f.name for f in dataclasses.fields(cls)], section
    assert config_to_dict(load_config()) == raw  # and the classes take the YAML values unchanged


def test_every_knob_has_a_comment():
    for line in default_config_path().read_text().splitlines():
        if re.match(r"  \w+:", line):
            assert re.search(r"#\s*\S", line), f"{line.split(':')[0].strip()} has no comment"


def test_no_secrets_in_the_defaults():
    text = default_config_path().read_text()
    assert "PRIVATE KEY" not in text and ".json" not in text and "token:" not in text and "password" not in text
    cfg = load_config()
    assert re.fullmatch(r"[A-Z_]+", cfg.gcs.credentials_env)  # the variable's name, not its value


def test_preset_choices_match_the_model_presets():
    from platepipe.configs.model import PRESETS
    assert set(typing.get_args(typing.get_type_hints(ModelConfig)["preset"])) == set(PRESETS)


def test_sections_are_frozen_and_checked_on_replace():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.max_iters = 5
    with pytest.raises(ConfigError, match=r"^train\.max_iters: must be greater than 0"):
        dataclasses.replace(cfg.train, max_iters=-1)


# ---------------------------------------------------------------------------------------------- user files

def test_user_file_changes_only_its_keys(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  max_iters: 300\ndeploy:\n  protocol: v2\n"))
    assert cfg.train.max_iters == 300 and cfg.deploy.protocol == "v2"
    assert cfg.train.val_interval == 200 and cfg.deploy.name == "platepipe" and cfg.data.n_images == 2000


def test_empty_file_and_empty_section_change_nothing(tmp_path):
    assert load_config(write(tmp_path, "# nothing yet\n")) == load_config()
    assert load_config(write(tmp_path, "train:\n  # max_iters: 5\nkfp:\n", "s.yaml")) == load_config()


def test_a_mapping_setting_in_a_file_is_replaced_whole(tmp_path):
    path = write(tmp_path, "kfp:\n  node_selector: {zone: b}\n")
    assert load_config(path, ["kfp.node_selector={pool: gpu}"]).kfp.node_selector == {"pool": "gpu"}
    assert load_config(path, ["kfp.node_selector.pool=gpu"]).kfp.node_selector == {"zone": "b", "pool": "gpu"}


def test_str_path_is_accepted(tmp_path):
    assert load_config(str(write(tmp_path, "data:\n  seed: 3\n"))).data.seed == 3


# ---------------------------------------------------------------------------------------------- overrides

@pytest.mark.parametrize("override, key, value", [
    ("train.max_iters=100", "train.max_iters", 100),
    ("gcs.bucket=my-bucket", "gcs.bucket", "my-bucket"),
    ("train.lr=0.004", "train.lr", 0.004),
    ("train.lr=1", "train.lr", 1.0),                     # int accepted for float, stored as float
    ("train.lr=1e-3", "train.lr", 0.001),                # YAML 1.2 float (PyYAML alone reads a string)
    ("train.time_budget_min=2.5", "train.time_budget_min", 2.5),
    ("train.resume=false", "train.resume", False),
    ("serving.token_auth=no", "serving.token_auth", False),
    ("kfp.node_selector={pool: gpu}", "kfp.node_selector", {"pool": "gpu"}),
    ("kfp.node_selector.pool=gpu", "kfp.node_selector", {"pool": "gpu"}),
    ("kfp.tolerations=[{key: gpu, operator: Exists}]", "kfp.tolerations", [{"key": "gpu", "operator": "Exists"}]),
    ("model.pretrained=null", "model.pretrained", None),
    ("model.pretrained=gs://b/m/pipeline.pth", "model.pretrained", "gs://b/m/pipeline.pth"),
    ("model.preset=full", "model.preset", "full"),
    ("deploy.cpu_limit=4", "deploy.cpu_limit", "4"),     # a number is accepted where a string is expected
    ("deploy.canary_steps=[25, 100]", "deploy.canary_steps", [25, 100]),
    ("smoke.protocol=v2", "smoke.protocol", "v2"),
    ("gcs.version='null'", "gcs.version", "null"),       # quoted: the string, not None
    ("data.source = /data/plates", "data.source", "/data/plates"),  # spaces around '=' are fine
    ("kfp.host=http://kfp:8888/x?a=b", "kfp.host", "http://kfp:8888/x?a=b"),  # only the first '=' splits
])
def test_overrides_parse_as_yaml(override, key, value):
    section, name = key.split(".")
    got = getattr(getattr(load_config(overrides=[override]), section), name)
    assert got == value and type(got) is type(value)


def test_override_wins_over_file_and_the_last_override_wins(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  seed: 4\n"), ["data.seed=5", "data.seed=6"])
    assert cfg.data.seed == 6


def test_overrides_do_not_leak_between_loads():
    load_config(overrides=["kfp.node_selector.pool=gpu", "train.max_iters=7"])
    cfg = load_config()
    assert cfg.kfp.node_selector == {} and cfg.train.max_iters is None


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("override, message", [
    ("train.max_itres=3", "train.max_itres: unknown key (did you mean 'max_iters'?)"),
    ("trian.max_iters=3", "trian: unknown key (did you mean 'train'?)"),
    ("train.zzz=3", "train.zzz: unknown key (known keys: max_iters, "),
    ("train.max_iters=many", "train.max_iters: expected int, got str 'many'"),
    ("train.max_iters=true", "train.max_iters: expected int, got bool True"),
    ("train.max_iters=2.5", "train.max_iters: expected int, got float 2.5"),
    ("data.seed=yes", "data.seed: expected int, got bool True"),
    ("train.lr=fast", "train.lr: expected float, got str 'fast'"),
    ("train.lr=true", "train.lr: expected float, got bool True"),
    ("train.resume=1", "train.resume: expected bool, got int 1"),
    ("data.source=null", "data.source: expected str, got NoneType None"),
    ("deploy.protocol=v3", "deploy.protocol: expected one of v1, v2, got 'v3'"),
    ("deploy.protocol=V1", "deploy.protocol: expected one of v1, v2, got 'V1' (did you mean 'v1'?)"),
    ("smoke.protocol=v3", "smoke.protocol: expected one of original, v1, v2, got 'v3'"),
    ("model.device=gpu", "model.device: expected one of auto, cpu, cuda, got 'gpu'"),
    ("data.format=voc", "data.format: expected one of auto, coco, labelme, got 'voc'"),
    ("serving.inference_port=70000", "serving.inference_port: must be between 1 and 65535, got 70000"),
    ("serving.metrics_port=8081", "serving.metrics_port: port 8081 is already serving.management_port"),
    ("deploy.ingress_port=0", "deploy.ingress_port: must be between 1 and 65535, got 0"),
    ("data.split_train=0.9", "data.split_train + split_val + split_test must be 1, got 1.1"),
    ("data.split_val=-0.1", "data.split_val: must be between 0.0 and 1.0, got -0.1"),
    ("deploy.canary_steps=[50, 140]", "deploy.canary_steps: expected rising whole percentages from 1 to 100"),
    ("deploy.canary_steps=[50, 20, 100]", "deploy.canary_steps: expected rising whole percentages"),
    ("deploy.canary_steps=[10, 50]", "that end at 100"),
    ("deploy.canary_percent=10", "deploy.canary_percent: this setting is now deploy.canary_steps"),
    ("evaluate.min_eir=1.5", "evaluate.min_eir: must be between 0.0 and 1.0, got 1.5"),
    ("data.n_images=0", "data.n_images: must be greater than 0, got 0"),
    ("smoke.n_images=-1", "smoke.n_images: must be between 0 and 10000, got -1"),
    ("train.batch_size=0", "train.batch_size: must be greater than 0, got 0"),
    ("data.seed=-1", "data.seed: must be between 0 and 4294967295, got -1"),
    ("data.min_size=2000", "data.min_size (2000) must not exceed data.max_size (1280)"),
    ("data.plate_width_min=1000", "data.plate_width_min (1000) must not exceed data.plate_width_max (900)"),
    ("data.plate_width_max_frac=1.5", "data.plate_width_max_frac: must be between 0.05 and 1.0, got 1.5"),
    ("data.styles.fancy=1", "data.styles.fancy: unknown style"),
    ("train.lr=.nan", "train.lr: expected a finite number, got nan"),
    ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
    ("train.time_budget_min=.nan", "train.time_budget_min: expected a finite number, got nan"),
    ("evaluate.min_eir=.nan", "evaluate.min_eir: expected a finite number, got nan"),
    ("data.styles.original=.inf", "data.styles.original: expected a finite number, got inf"),
    ("train.max_iters=12345678901234567890123", "train.max_iters: 12345678901234567890123 is far beyond any"),
    ("train.max_iters=20000000", "train.max_iters: must be between 1 and 10000000, got 20000000"),
    ("train.lr=3.0", "train.lr: must be between 0 and 1.0, got 3.0"),
    ("train.time_budget_min=20000", "train.time_budget_min: must be between 0 and 10080, got 20000.0"),
    ("data.styles.original=-1", "data.styles.original: a weight must be 0 or more, got -1"),
    ("data.styles={stamped: 0, original: 0}", "data.styles: give at least one style a weight above 0"),
    ("data.procedural_fraction=2", "data.procedural_fraction: must be between 0.0 and 1.0, got 2"),
    ("data.ood_images=-1", "data.ood_images: must be between 0 and 100000, got -1"),
    ("evaluate.gate_set=orginal", "evaluate.gate_set: unknown set 'orginal' (did you mean 'original'?)"),
    ("kfp.node_selector=[a]", "kfp.node_selector: expected a mapping, got list ['a']"),
    ("kfp.tolerations={a: b}", "kfp.tolerations: expected a list, got dict"),
    ("kfp.tolerations=[{key: gpu, operater: Exists}]",
     "kfp.tolerations[0].operater: unknown key (did you mean 'operator'?)"),
    ("kfp.tolerations=[{key: gpu, effect: Never}]", "kfp.tolerations[0].effect: expected one of NoSchedule"),
    ("kfp.tolerations=[3]", "kfp.tolerations[0]: expected a mapping, got int 3"),
    ("kfp.retries=99", "kfp.retries: must be between 0 and 10, got 99"),
    ("gcs.bucket=gs://my-bucket", "gcs.bucket: give the bucket name only (got 'gs://my-bucket')"),
    ("gcs.bucket=My_Bucket", "gcs.bucket: expected a GCS bucket name"),
    ("gcs.credentials_env=/keys/sa.json", "gcs.credentials_env: expected the NAME of an environment variable"),
    ("deploy.name=Plate_Pipe", "deploy.name: expected a Kubernetes name"),
    ("deploy.memory_limit=8GB", "deploy.memory_limit: expected a Kubernetes quantity (e.g. 8Gi, 512Mi), got '8GB'"),
    ("deploy.cpu_request=8", "deploy.cpu_request (8) must not exceed deploy.cpu_limit (4)"),
    ("model.pretrained=", "model.pretrained: must not be empty (use null for none)"),
    ("train.max_iters", "--set train.max_iters: expected KEY=VALUE"),
    ("=3", "--set =3: expected KEY=VALUE with a dotted key"),
    ("train..max_iters=3", "--set train..max_iters=3: expected KEY=VALUE with a dotted key"),
    ("train.max_iters.x=3", "--set train.max_iters.x: train.max_iters is a single value"),
    ("train.max_iters=[1", "--set train.max_iters: not valid YAML"),
    ("train=3", "train: expected a mapping of settings, got int 3"),
])
def test_errors_name_the_key(override, message):
    assert message in error_of(overrides=[override])


def test_optional_settings_say_null_is_allowed():
    assert error_of(overrides=["train.max_iters=many"]).endswith("(null is also allowed)")
    assert "(null is also allowed)" not in error_of(overrides=["data.seed=many"])


def test_file_not_found(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"config file not found: {tmp_path / 'nope.yaml'}"
    assert "config file is not a file" in error_of(tmp_path)


def test_invalid_yaml_names_the_line(tmp_path):
    message = error_of(write(tmp_path, "data:\n  seed: 1\n  n_images: 1: 2\n"))
    assert message.startswith(f"{tmp_path / 'c.yaml'}: not valid YAML at line 3")


def test_duplicate_key_names_both_lines(tmp_path):
    message = error_of(write(tmp_path, "train:\n  max_iters: 5\n  max_iters: 6\n"))
    assert "not valid YAML at line 3" in message and "duplicate key 'max_iters' (first given at line 2)" in message


def test_top_level_must_be_a_mapping(tmp_path):
    assert "expected a mapping of sections (data:, train:, ...) at the top level, got list" in \
        error_of(write(tmp_path, "- a\n- b\n"))
    assert "got str" in error_of(write(tmp_path, "just text\n", "t.yaml"))


def test_errors_in_files_name_the_key(tmp_path):
    assert "data.seed: expected int, got str 'abc'" in error_of(write(tmp_path, "data:\n  seed: abc\n"))
    assert "deploy.protocl: unknown key (did you mean 'protocol'?)" in \
        error_of(write(tmp_path, "deploy:\n  protocl: v2\n", "d.yaml"))
    assert "serving: expected a mapping of settings, got list" in \
        error_of(write(tmp_path, "serving: [1, 2]\n", "s.yaml"))


def test_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    assert "not a YAML text file" in error_of(path)


# ---------------------------------------------------------------------------------------------- round trip

def test_dump_and_load_round_trip(tmp_path):
    cfg = load_config(overrides=[
        "kfp.node_selector={pool: gpu, zone: '1'}", "gcs.bucket=my-bucket", "train.lr=1e-05",
        "kfp.tolerations=[{key: gpu, operator: Exists, effect: NoSchedule}]", "gcs.version='1e3'",
        "deploy.canary_steps=[25, 100]", "smoke.protocol=original", "model.pretrained=gs://b/pipeline.pth",
        "gcs.prefix='007'", "deploy.ingress_host=localhost", "train.time_budget_min=90",
    ])
    text = dump_config(cfg)
    assert load_config(write(tmp_path, text)) == cfg
    assert yaml.safe_load(text)["gcs"]["version"] == "1e3"  # strings that look like numbers stay quoted
    assert load_config(write(tmp_path, dump_config(load_config()), "d.yaml")) == load_config()


def test_config_to_dict_is_plain_and_a_copy():
    cfg = load_config(overrides=["kfp.node_selector={pool: gpu}"])
    d = config_to_dict(cfg)
    assert d["kfp"]["node_selector"] == {"pool": "gpu"} and d["serving"]["inference_port"] == 8085
    d["kfp"]["node_selector"]["x"] = "y"
    assert cfg.kfp.node_selector == {"pool": "gpu"}


def test_a_moved_setting_says_where_it_went(tmp_path):
    """The read thresholds moved from `evaluate` to `model` (they travel inside pipeline.pth): an older file is told."""
    old = tmp_path / "old.yaml"
    old.write_text("evaluate:\n  char_score: 0.5\n")
    with pytest.raises(ConfigError, match=r"evaluate.char_score: this setting is now model.char_score"):
        load_config(old)
    with pytest.raises(ConfigError, match=r"evaluate.plate_score: this setting is now model.plate_score"):
        load_config(overrides=["evaluate.plate_score=0.2"])
    assert load_config(overrides=["model.char_score=0.5"]).model.thresholds["char_score"] == 0.5


def test_settings_gives_one_checked_section():
    from platepipe.pipeline.config import TrainConfig, settings

    assert settings("train", max_iters=7) == dataclasses.replace(load_config().train, max_iters=7)
    assert isinstance(settings("train"), TrainConfig)
    with pytest.raises(ConfigError, match="model.char_score"):
        settings("model", char_score=2.0)
