"""Configuration: configs/default.yaml, a user's file on top, then --set overrides, into typed objects.

    cfg = load_config("mine.yaml", ["train.max_iters=500", "gcs.bucket=my-bucket"])
    cfg.train.max_iters        # 500
    print(dump_config(cfg))    # the effective configuration as YAML (loads back to an equal Config)

One generic validator walks the dataclasses below by their type hints (int, float, bool, str, Optional,
Literal, list[...], dict[..., ...]), so the YAML and the classes cannot drift apart silently: an unknown
key, a missing default or a wrong type fails with the key path. Range and format checks live in each
section's `check()`, which runs on construction (also for `dataclasses.replace`). Every problem is a
`ConfigError` (a ValueError) whose message starts with the key path, e.g.
`train.max_itres: unknown key (did you mean 'max_iters'?)`.

Merging: the user's file and --set change only the settings they name; a setting whose value is a mapping
(kfp.node_selector) is replaced as a whole by a file, while `--set kfp.node_selector.pool=gpu` sets one entry.
YAML is read as PyYAML's YAML 1.1 with two fixes: `1e-3` is a number (as in YAML 1.2), and a key given twice
in one mapping is an error instead of silently keeping the last.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import yaml

from platepipe.components.styles import OOD_SETS, STYLES


class ConfigError(ValueError):
    """A configuration problem; the message names the key path, what is wrong and what is expected."""


class _Section:
    """Base of the section dataclasses: runs the section's range checks whenever one is built."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Range and format checks that the type hints cannot express; raise ConfigError."""


@dataclass(frozen=True)
class DataConfig(_Section):
    source: str
    format: Literal["auto", "coco", "labelme"]
    n_images: int
    seed: int
    min_size: int
    max_size: int
    plate_width_min: int
    plate_width_max: int
    plate_width_max_frac: float
    styles: dict[str, float]
    split_train: float
    split_val: float
    split_test: float
    backgrounds: Optional[str]
    procedural_fraction: float
    photo_pool: Literal["train", "held-out", "all"]
    empty_fraction: float
    ood_images: int
    out_dir: Optional[str]

    @property
    def split(self) -> tuple[float, float, float]:
        return self.split_train, self.split_val, self.split_test

    def check(self) -> None:
        _not_empty(self, "source")
        _positive(self, "n_images", "min_size", "max_size", "plate_width_min", "plate_width_max")
        _between(self, "seed", 0, 2**32 - 1)
        _ordered(self, "min_size", "max_size")
        _ordered(self, "plate_width_min", "plate_width_max")
        _between(self, "plate_width_max_frac", 0.05, 1.0)
        _between(self, "procedural_fraction", 0.0, 1.0)
        _between(self, "empty_fraction", 0.0, 1.0)
        _between(self, "ood_images", 0, 100_000)
        _not_empty(self, "backgrounds")
        for name, weight in self.styles.items():
            if name not in STYLES:
                raise ConfigError(f"data.styles.{name}: unknown style{_did_you_mean(name, STYLES)}; the styles are "
                                  f"{', '.join(STYLES)}")
            if not 0 <= weight < float("inf"):
                raise ConfigError(f"data.styles.{name}: a weight must be 0 or more, got {weight!r}")
        if sum(self.styles.values()) <= 0:
            raise ConfigError(f"data.styles: give at least one style a weight above 0, got {self.styles}")
        for name in ("split_train", "split_val", "split_test"):
            _between(self, name, 0.0, 1.0)
        total = self.split_train + self.split_val + self.split_test
        if abs(total - 1) > 1e-6:
            raise ConfigError(f"data.split_train + split_val + split_test must be 1, got {total:g} "
                              f"({self.split_train:g} + {self.split_val:g} + {self.split_test:g}); "
                              f"change them so they add up to 1")


@dataclass(frozen=True)
class ModelConfig(_Section):
    preset: Literal["quick", "full", "tiny"]  # tiny: tests only (configs/model PRESETS)
    pretrained: Optional[str]
    device: Literal["auto", "cpu", "cuda"]
    plate_score: float
    char_score: float
    read_score: float

    def check(self) -> None:
        _not_empty(self, "pretrained")
        for name in ("plate_score", "char_score", "read_score"):
            _between(self, name, 0.0, 1.0)

    @property
    def thresholds(self) -> dict[str, float]:
        """What pipeline.pth carries: the scores the model reads at, in training, evaluation and serving."""
        return {"plate_score": self.plate_score, "char_score": self.char_score, "read_score": self.read_score}


@dataclass(frozen=True)
class TrainConfig(_Section):
    max_iters: Optional[int]
    batch_size: Optional[int]
    lr: Optional[float]
    val_interval: int
    seed: int
    workers: Optional[int]
    resume: bool
    time_budget_min: Optional[float]
    precision: Literal["auto", "fp32", "bf16"]
    parallel: Literal["auto", "on", "off"]

    def check(self) -> None:
        _positive(self, "max_iters", "batch_size", "lr", "val_interval", "time_budget_min")
        _between(self, "max_iters", 1, 10_000_000)
        _between(self, "batch_size", 1, 4096)
        _between(self, "lr", 0, 1.0)
        _between(self, "val_interval", 1, 10_000_000)
        _between(self, "time_budget_min", 0, 7 * 24 * 60)
        _between(self, "seed", 0, 2**32 - 1)
        _between(self, "workers", 0, 64)


@dataclass(frozen=True)
class EvaluateConfig(_Section):
    min_eir: float
    champion_margin: float
    iou_threshold: float
    report_worst: int
    gate_set: str

    def check(self) -> None:
        for name in ("min_eir", "iou_threshold"):
            _between(self, name, 0.0, 1.0)
        _between(self, "champion_margin", -1.0, 1.0)
        _between(self, "report_worst", 0, 1000)
        sets = ("test", *OOD_SETS)
        if self.gate_set not in sets:
            raise ConfigError(f"evaluate.gate_set: unknown set {self.gate_set!r}{_did_you_mean(self.gate_set, sets)}; "
                              f"choose test (the data set's own test split) or an out-of-distribution set: "
                              f"{', '.join(OOD_SETS)}")


@dataclass(frozen=True)
class ServingConfig(_Section):
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
    max_images_per_request: int
    max_request_pixels: int
    max_request_decoded_mb: int
    token_auth: bool
    gpus: Optional[int]

    def check(self) -> None:
        _matches(self, "model_name", r"[A-Za-z0-9][A-Za-z0-9_.-]*", "letters, digits, '_', '.' and '-' only")
        ports = ("inference_port", "management_port", "metrics_port")
        seen: dict[int, str] = {}
        for name in ports:
            _between(self, name, 1, 65535)
            port = getattr(self, name)
            if port in seen:
                raise ConfigError(f"serving.{name}: port {port} is already serving.{seen[port]}; "
                                  f"the inference, management and metrics ports must differ")
            seen[port] = name
        _not_empty(self, "bind_address")
        _positive(self, "workers_per_model", "batch_size", "response_timeout_s", "max_request_size_mb")
        _between(self, "max_images_per_request", 1, 256)
        _between(self, "max_request_pixels", 1, 2_000_000_000)
        _between(self, "max_request_decoded_mb", 1, 65536)
        _between(self, "max_batch_delay_ms", 0, 60000)
        _between(self, "gpus", 0, 64)


@dataclass(frozen=True)
class GcsConfig(_Section):
    bucket: Optional[str]
    prefix: str
    version: Optional[str]
    credentials_env: str

    def check(self) -> None:
        if self.bucket is not None:
            if self.bucket.startswith("gs://") or "/" in self.bucket:
                raise ConfigError(f"gcs.bucket: give the bucket name only (got {self.bucket!r}); "
                                  f"put folders in gcs.prefix")
            _matches(self, "bucket", r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]",
                     "a GCS bucket name: 3-222 lowercase letters, digits, '-', '_' and '.'")
        _not_empty(self, "version")
        _matches(self, "credentials_env", r"[A-Za-z_][A-Za-z0-9_]*",
                 "the NAME of an environment variable (e.g. GOOGLE_APPLICATION_CREDENTIALS), not a path or key")


@dataclass(frozen=True)
class DeployConfig(_Section):
    name: str
    namespace: str
    protocol: Literal["v1", "v2"]
    image: Optional[str]
    runtime: str
    runtime_kind: Literal["ServingRuntime", "ClusterServingRuntime"]
    manage_runtime: bool
    service_account: Optional[str]
    gpu: int
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    min_replicas: int
    max_replicas: int
    scale_metric: Literal["concurrency", "rps", "cpu", "memory"]
    scale_target: int
    mode: Literal["auto", "serverless", "raw"]
    canary_steps: list[int]
    timeout_s: int
    ingress_host: Optional[str]
    ingress_port: Optional[int]

    def check(self) -> None:
        _matches(self, "name", r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?",
                 "a Kubernetes name: lowercase letters, digits and '-', starting with a letter, at most 63")
        _matches(self, "namespace", r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
                 "a Kubernetes namespace: lowercase letters, digits and '-', at most 63")
        _not_empty(self, "image")
        _matches(self, "runtime", r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?",
                 "a Kubernetes name: lowercase letters, digits and '-', starting with a letter, at most 63")
        _not_empty(self, "service_account")
        _between(self, "gpu", 0, 16)
        for kind in ("cpu", "memory"):
            request, limit = f"{kind}_request", f"{kind}_limit"
            if _quantity(self, request) > _quantity(self, limit):
                raise ConfigError(f"deploy.{request} ({getattr(self, request)}) must not exceed "
                                  f"deploy.{limit} ({getattr(self, limit)})")
        steps = self.canary_steps
        if steps and (any(not isinstance(s, int) or not 1 <= s <= 100 for s in steps) or steps != sorted(set(steps))
                      or steps[-1] != 100):
            raise ConfigError(f"deploy.canary_steps: expected rising whole percentages from 1 to 100 that end at 100 "
                              f"(e.g. [10, 100]), or [] for no canary; got {steps!r}")
        _between(self, "min_replicas", 0, 1000)
        _between(self, "max_replicas", 1, 1000)
        _ordered(self, "min_replicas", "max_replicas")
        _between(self, "scale_target", 1, 1_000_000)
        _positive(self, "timeout_s")
        _not_empty(self, "ingress_host")
        _between(self, "ingress_port", 1, 65535)


@dataclass(frozen=True)
class SmokeConfig(_Section):
    n_images: int
    protocol: Optional[Literal["original", "v1", "v2"]]
    user_images: Optional[str]
    timeout_s: int

    def check(self) -> None:
        _between(self, "n_images", 0, 10_000)
        _positive(self, "timeout_s")
        _not_empty(self, "user_images")


_TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")


@dataclass(frozen=True)
class KfpConfig(_Section):
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
    service_account: Optional[str]
    caching: bool

    def check(self) -> None:
        for name in ("host", "image", "experiment", "pipeline_name", "gpu_type", "accelerator_type", "pvc",
                     "gcs_secret", "service_account"):
            _not_empty(self, name)
        for i, toleration in enumerate(self.tolerations):
            path = f"kfp.tolerations[{i}]"
            for key in toleration:
                if key not in _TOLERATION_KEYS:
                    raise ConfigError(f"{path}.{key}: unknown key{_did_you_mean(key, _TOLERATION_KEYS)}")
            if toleration.get("operator", "Equal") not in ("Equal", "Exists"):
                raise ConfigError(f"{path}.operator: expected one of Equal, Exists, got {toleration['operator']!r}")
            if toleration.get("effect") not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
                raise ConfigError(f"{path}.effect: expected one of NoSchedule, PreferNoSchedule, NoExecute, "
                                  f"got {toleration['effect']!r}")
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

MAX_NUMBER = 1e12  # no setting needs more; a 23-digit max_iters is a typo


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


def _not_empty(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if isinstance(value, str) and not value.strip():
        null = " (use null for none)" if _allows_none(type(obj), name) else ""
        raise ConfigError(f"{_section(obj)}.{name}: must not be empty{null}")


def _matches(obj: Any, name: str, pattern: str, what: str) -> None:
    value = getattr(obj, name)
    if value is not None and not re.fullmatch(pattern, value):
        raise ConfigError(f"{_section(obj)}.{name}: expected {what}, got {value!r}")


_QUANTITY = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_SUFFIX = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def _quantity(obj: Any, name: str) -> float:
    """A Kubernetes resource quantity ("500m", "4", "8Gi") as a number."""
    text = getattr(obj, name)
    match = _QUANTITY.fullmatch(text)
    if not match:
        example = "1, 500m" if name.startswith("cpu") else "8Gi, 512Mi"
        raise ConfigError(f"{_section(obj)}.{name}: expected a Kubernetes quantity (e.g. {example}), got {text!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def _allows_none(cls: type, name: str) -> bool:
    return type(None) in typing.get_args(typing.get_type_hints(cls)[name])


def _did_you_mean(key: Any, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"

# ---------------------------------------------------------------------------------------------- the validator

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check value against the type hint tp (building nested dataclasses); return the typed value."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"{path}: only Optional[X] unions are supported, got {tp}")
        try:
            return _convert(value, inner[0], path)
        except ConfigError as exc:
            if type(None) in args and str(exc).startswith(f"{path}: expected "):
                raise ConfigError(f"{exc} (null is also allowed)") from None
            raise
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) or value not in choices:
            names = {str(c).lower(): str(c) for c in choices}
            close = difflib.get_close_matches(str(value).lower(), list(names), n=1)
            hint = f" (did you mean '{names[close[0]]}'?)" if close else ""
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}{hint}")
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
    if tp in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        if abs(value) > MAX_NUMBER:
            raise ConfigError(f"{path}: {value!r} is far beyond any sensible setting (at most {MAX_NUMBER:.0e})")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # "lr: 1" means 1.0
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # "cpu_limit: 4" means "4"
    if not isinstance(value, tp) or (tp in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


# settings that moved to another section: a file that still has one is told where it went
MOVED = {"evaluate.plate_score": "model.plate_score", "evaluate.char_score": "model.char_score",
         "deploy.canary_percent": "deploy.canary_steps (the canary's shares of traffic, e.g. [10, 100])"}


def _build(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of settings, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in hints:
            if _join(path, key) in MOVED:
                raise ConfigError(f"{_join(path, key)}: this setting is now {MOVED[_join(path, key)]}; move it there")
            raise ConfigError(f"{_join(path, key)}: unknown key{_did_you_mean(key, list(hints))}")
    missing = [k for k in hints if k not in raw]
    if missing:
        raise ConfigError(f"{_join(path, missing[0])}: missing (every setting needs a value; see configs/default.yaml)")
    return cls(**{k: _convert(raw[k], hints[k], _join(path, k)) for k in hints})


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)

# ---------------------------------------------------------------------------------------------- YAML

# PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string; read and write it as a number, as YAML 1.2 does.
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {first + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep)


class _Dumper(yaml.SafeDumper):
    pass


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config file is not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (it is not UTF-8)") from None
    return _parse_yaml(text, str(path))

# ---------------------------------------------------------------------------------------------- loading

def default_config_path() -> Path:
    """configs/default.yaml, found through the installed `configs` package."""
    return Path(str(files("platepipe.configs") / "default.yaml"))


def _defaults() -> dict:
    return _parse_yaml((files("platepipe.configs") / "default.yaml").read_text(encoding="utf-8"), "configs/default.yaml")


def _merge(base: dict, top: dict) -> dict:
    """Sections merge key by key; a setting's value (even a mapping such as node_selector) is replaced.
    An empty section (`train:` with every line below it commented out) changes nothing."""
    out = dict(base)
    for key, value in top.items():
        if key in SECTIONS and isinstance(base.get(key), dict) and (value is None or isinstance(value, dict)):
            out[key] = {**base[key], **(value or {})}
        else:
            out[key] = value
    return out


def _apply_override(raw: dict, text: str) -> dict:
    """`a.b=VALUE` with VALUE read as YAML (500 -> int, null -> None, {k: v} -> dict); deeper keys such as
    kfp.node_selector.pool=gpu set one entry of a mapping."""
    key, eq, value_text = text.partition("=")
    key = key.strip()
    if not eq:
        raise ConfigError(f"--set {key}: expected KEY=VALUE, e.g. --set train.max_iters=500")
    keys = key.split(".")
    if not all(k.strip() for k in keys):
        raise ConfigError(f"--set {text}: expected KEY=VALUE with a dotted key such as train.max_iters")
    keys = [k.strip() for k in keys]
    value = _parse_yaml(value_text, f"--set {key}") if value_text.strip() else ""
    out = dict(raw)
    node = out
    for depth, k in enumerate(keys[:-1]):
        child = node.get(k)
        if k not in node or (depth == 0 and child is None):
            child = {}  # an unknown name is reported, with a suggestion, when the result is checked
        elif not isinstance(child, dict):
            parent = ".".join(keys[:depth + 1])
            raise ConfigError(f"--set {key}: {parent} is a single value ({child!r}), not a mapping; "
                              f"use --set {parent}=VALUE")
        node[k] = child = dict(child)
        node = child
    node[keys[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the user's YAML file (only the keys it changes), then KEY=VALUE overrides, in order."""
    if isinstance(overrides, str):
        overrides = [overrides]
    raw = _defaults()
    if path is not None:
        user = _read_yaml(Path(path))
        if user is None:
            user = {}  # an empty file (or only comments) changes nothing
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data:, train:, ...) at the top level, "
                              f"got {type(user).__name__}")
        raw = _merge(raw, user)
    for text in overrides:
        raw = _apply_override(raw, text)
    return _build(Config, raw, "")


def settings(section: str, **changes: Any):
    """One section of the default configuration with `changes`, checked as any configuration is: what a step
    takes when called from Python (a test, a benchmark) without a run's configuration."""
    current = getattr(load_config(), section)
    return dataclasses.replace(current, **changes) if changes else current


def config_from_text(text: str, where: str = "the config parameter") -> Config:
    """A Config from YAML text (the pipeline's `config` parameter): defaults, then the keys the text sets."""
    user = _parse_yaml(text, where) if text.strip() else {}
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (data:, train:, ...) at the top level, "
                          f"got {type(user).__name__}")
    return _build(Config, _merge(_defaults(), user), "")


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dicts and lists (a deep copy): what default.yaml looks like."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config, one_line: bool = False) -> str:
    """The configuration as YAML; load_config of it gives an equal Config. one_line: flow style on one line
    (KFP copies parameter defaults into a comment of the compiled YAML, which a line break would break)."""
    if one_line:
        return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=True,
                         allow_unicode=True, width=1 << 30).strip()
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True)


# The sections each step reads: the pipeline hands a step only these (pipeline/tasks.py settings), so that a
# cached step's cache key changes only when its own settings do (a smoke or deploy change retrains nothing).
STEP_SECTIONS = {
    "data": ("data",),
    "train": ("model", "train"),
    "evaluate": ("evaluate",),  # the model's thresholds travel inside pipeline.pth
    "compare": ("evaluate", "deploy"),  # the serving model: the InferenceService (or the local record)
    "archive": ("serving",),
    "upload": ("gcs",),
    "deploy": ("deploy", "serving"),
    "smoke": ("smoke", "serving", "deploy"),
}


def step_config(cfg: Config, step: str) -> str:
    """The sections step reads, as one-line YAML (config_from_text of it fills the rest with defaults)."""
    text = {name: dataclasses.asdict(getattr(cfg, name)) for name in STEP_SECTIONS[step]}
    return yaml.dump(text, Dumper=_Dumper, sort_keys=False, default_flow_style=True, allow_unicode=True,
                     width=1 << 30).strip()

