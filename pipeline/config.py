"""Configuration: configs/default.yaml, a user's file on top, then --set overrides, into typed objects.

One generic validator walks the dataclasses below by their type hints, so the YAML and the classes cannot
drift apart silently: an unknown key, a missing default or a wrong type fails with the key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key path and what is expected."""


@dataclass(frozen=True)
class DataConfig:
    source: str
    format: Literal["auto", "coco", "labelme"]
    n_images: int
    seed: int
    min_size: int
    max_size: int
    plate_width_min: int
    plate_width_max: int
    split_train: float
    split_val: float
    split_test: float
    backgrounds: Optional[str]
    out_dir: Optional[str]

    def check(self) -> None:
        _positive(self, "n_images", "min_size", "max_size", "plate_width_min", "plate_width_max")
        _ordered(self, "min_size", "max_size")
        _ordered(self, "plate_width_min", "plate_width_max")
        for name in ("split_train", "split_val", "split_test"):
            _between(self, name, 0.0, 1.0)
        total = self.split_train + self.split_val + self.split_test
        if abs(total - 1) > 1e-6:
            raise ConfigError(f"data.split_train + split_val + split_test must be 1, got {total:g}")


@dataclass(frozen=True)
class ModelConfig:
    preset: Literal["quick", "full"]
    pretrained: Optional[str]
    device: Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class TrainConfig:
    max_iters: Optional[int]
    batch_size: Optional[int]
    lr: Optional[float]
    val_interval: int
    seed: int
    workers: int
    resume: bool
    time_budget_min: Optional[float]

    def check(self) -> None:
        _positive(self, "max_iters", "batch_size", "lr", "val_interval", "time_budget_min")
        _between(self, "workers", 0, 64)


@dataclass(frozen=True)
class EvaluateConfig:
    min_eir: float
    score_threshold: float
    iou_threshold: float
    report_worst: int

    def check(self) -> None:
        for name in ("min_eir", "score_threshold", "iou_threshold"):
            _between(self, name, 0.0, 1.0)
        _between(self, "report_worst", 0, 1000)


@dataclass(frozen=True)
class ServingConfig:
    model_name: str
    inference_port: int
    management_port: int
    metrics_port: int
    bind_address: str
    workers_per_model: int
    batch_size: int
    max_batch_delay_ms: int
    response_timeout_s: int
    max_request_size_mb: int
    token_auth: bool
    gpus: Optional[int]

    def check(self) -> None:
        for name in ("inference_port", "management_port", "metrics_port"):
            _between(self, name, 1, 65535)
        ports = [self.inference_port, self.management_port, self.metrics_port]
        if len(set(ports)) != 3:
            raise ConfigError(f"serving: inference, management and metrics ports must differ, got {ports}")
        _positive(self, "workers_per_model", "batch_size", "response_timeout_s", "max_request_size_mb")
        _between(self, "max_batch_delay_ms", 0, 60000)
        _between(self, "gpus", 0, 64)


@dataclass(frozen=True)
class GcsConfig:
    bucket: Optional[str]
    prefix: str
    version: Optional[str]
    credentials_env: str


@dataclass(frozen=True)
class DeployConfig:
    name: str
    namespace: str
    protocol: Literal["v1", "v2"]
    image: Optional[str]
    service_account: Optional[str]
    gpu: int
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    canary_percent: Optional[int]
    timeout_s: int
    ingress_host: Optional[str]
    ingress_port: Optional[int]

    def check(self) -> None:
        _between(self, "gpu", 0, 16)
        _between(self, "canary_percent", 0, 100)
        _positive(self, "timeout_s")
        _between(self, "ingress_port", 1, 65535)


@dataclass(frozen=True)
class SmokeConfig:
    n_images: int
    protocol: Optional[Literal["original", "v1", "v2"]]
    user_images: Optional[str]
    timeout_s: int

    def check(self) -> None:
        _positive(self, "n_images", "timeout_s")


@dataclass(frozen=True)
class KfpConfig:
    host: Optional[str]
    image: str
    experiment: str
    pipeline_name: str
    gpu_type: str
    accelerator_type: Optional[str]
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    pvc: Optional[str]
    gcs_secret: Optional[str]
    retries: int
    caching: bool

    def check(self) -> None:
        _between(self, "retries", 0, 10)


@dataclass(frozen=True)
class Config:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    serving: ServingConfig
    gcs: GcsConfig
    deploy: DeployConfig
    smoke: SmokeConfig
    kfp: KfpConfig


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))

# ---------------------------------------------------------------------------------------------- checks

def _section(obj: Any) -> str:
    return next(name for name, cls in typing.get_type_hints(Config).items() if cls is type(obj))


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{_section(obj)}.{name}: must be greater than 0, got {value!r}")


def _between(obj: Any, name: str, low: float, high: float) -> None:
    value = getattr(obj, name)
    if value is not None and not low <= value <= high:
        raise ConfigError(f"{_section(obj)}.{name}: must be between {low} and {high}, got {value!r}")


def _ordered(obj: Any, low: str, high: str) -> None:
    if getattr(obj, low) > getattr(obj, high):
        raise ConfigError(f"{_section(obj)}.{low} ({getattr(obj, low)}) must not exceed "
                          f"{_section(obj)}.{high} ({getattr(obj, high)})")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check value against the type hint tp (and build nested dataclasses); return the typed value."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            return value
        try:
            return _convert(value, inner[0], path)
        except ConfigError as exc:
            if str(exc).startswith(f"{path}: expected ") and typing.get_origin(inner[0]) is None:
                raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}") from None
            raise
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, val_tp = typing.get_args(tp)
        return {_convert(k, key_tp, f"{path}.{k}"): _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # "cpu_limit: 4" means "4"
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of settings, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(hints)})"
            raise ConfigError(f"{_join(path, key)}: unknown key{hint}")
    missing = [k for k in hints if k not in raw]
    if missing:
        raise ConfigError(f"{_join(path, missing[0])}: missing (every setting needs a value; see configs/default.yaml)")
    obj = cls(**{k: _convert(raw[k], hints[k], _join(path, k)) for k in hints})
    check = getattr(obj, "check", None)
    if check:
        check()
    return obj


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# ---------------------------------------------------------------------------------------------- loading

def default_config_path() -> Path:
    return Path(str(files("configs") / "default.yaml"))


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc


def _merge(base: dict, top: dict) -> dict:
    """Sections merge key by key; a setting's value (even a mapping such as node_selector) is replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key in SECTIONS:
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    return out


def _apply_override(raw: dict, text: str) -> dict:
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set train.max_iters=500")
    key, _, value_text = text.partition("=")
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set {text}: expected KEY=VALUE with a dotted key such as train.max_iters")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {value_text!r} is not valid YAML ({exc})") from exc
    nested: Any = value
    for k in reversed(keys):
        nested = {k: nested}
    return _merge(raw, nested)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the user's YAML file (only the keys it changes), then KEY=VALUE overrides."""
    raw = _read_yaml(default_config_path())
    if path is not None:
        user = _read_yaml(Path(path))
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data:, train:, ...), got {type(user).__name__}")
        raw = _merge(raw, user)
    for text in overrides:
        raw = _apply_override(raw, text)
    return _build(Config, raw, "")


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
