"""Compiled pipeline packages and pipeline versions as run sources; their parameters, checked and converted to
their types (root.inputDefinitions.parameters) before anything is sent."""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import yaml

from platepipe.pipeline.kfp_connection import KfpError


PARAMETER_TYPES = {"STRING": "a string", "NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number",
                   "BOOLEAN": "true or false", "LIST": "a JSON list", "STRUCT": "a JSON object"}


@dataclasses.dataclass
class Package:
    """A compiled pipeline YAML: its path and its (first) document, the PipelineSpec."""

    path: Path
    spec: dict

    @property
    def name(self) -> str:
        return self.spec.get("pipelineInfo", {}).get("name", "")

    @property
    def description(self) -> Optional[str]:
        return self.spec.get("pipelineInfo", {}).get("description") or None

    @property
    def parameters(self) -> dict:
        return pipeline_parameters(self.spec)


@dataclasses.dataclass
class PipelineVersion:
    """A pipeline version on the server."""

    pipeline_id: str
    version_id: str
    pipeline_name: str
    version_name: str
    spec: dict

    @property
    def parameters(self) -> dict:
        return pipeline_parameters(self.spec)


Source = Union[Package, PipelineVersion, str, Path]


def load_package(path: Union[str, Path]) -> Package:
    """Read a compiled pipeline YAML (from `platepipe compile` or kfp.compiler.Compiler)."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        raise KfpError(f"{path}: expected a compiled pipeline .yaml (platepipe compile -o pipeline.yaml)")
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise KfpError(f"pipeline package not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KfpError(f"{path}: not a readable pipeline YAML ({str(exc).splitlines()[0]})") from None
    spec = docs[0] if docs else None
    if not isinstance(spec, dict) or "pipelineInfo" not in spec or "root" not in spec:
        raise KfpError(f"{path}: not a compiled KFP pipeline (no pipelineInfo/root); "
                       f"compile one with platepipe compile -o {path.name}")
    return Package(path, spec)


def pipeline_parameters(spec: Mapping) -> dict:
    """{name: {"parameterType": ..., "defaultValue"?: ..., "isOptional"?: ...}} of a PipelineSpec (or of the
    {"pipeline_spec": ..., "platform_spec": ...} pair the server keeps when there is a platform spec)."""
    if "pipeline_spec" in spec and "root" not in spec:
        spec = spec["pipeline_spec"]
    return dict(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}) or {})


def describe_parameters(parameters: Mapping[str, Mapping]) -> str:
    if not parameters:
        return "(none)"
    parts = []
    for name, p in sorted(parameters.items()):
        kind = p.get("parameterType", "?")
        if kind == "NUMBER_INTEGER" and isinstance(p.get("defaultValue"), float) and p["defaultValue"].is_integer():
            p = {**p, "defaultValue": int(p["defaultValue"])}  # the spec keeps every number as a double
        default = json.dumps(p.get("defaultValue"))
        if len(default) > 40:  # e.g. the whole configuration
            default = default[:36] + "...}" if default.startswith("{") else default[:36] + "..."
        parts.append(f"{name} ({kind}, default {default})" if "defaultValue" in p else f"{name} ({kind}, required)")
    return ", ".join(parts)


def parse_param_args(pairs: Sequence[str]) -> dict[str, str]:
    """--param key=value (repeatable) -> {key: "value"}; the value is converted later, by the parameter's type."""
    out: dict[str, str] = {}
    for text in pairs:
        key, eq, value = text.partition("=")
        if not eq or not key.strip():
            raise KfpError(f"--param {text}: expected NAME=VALUE, e.g. --param n_images=500")
        out[key.strip()] = value
    return out


def check_params(parameters: Mapping[str, Mapping], params: Optional[Mapping[str, Any]]) -> dict:
    """Check PARAMS against the pipeline's PARAMETERS and convert them: strings (from --param) are read as the
    parameter's type; typed values must already be of it. Unknown and missing required names fail here,
    before the server is asked."""
    params = dict(params or {})
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name not in parameters:
            close = difflib.get_close_matches(name, list(parameters), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise KfpError(f"unknown pipeline parameter '{name}'{hint}; the pipeline's parameters are: "
                           f"{describe_parameters(parameters)}")
        out[name] = _convert_param(name, value, parameters[name].get("parameterType", "STRING"))
    missing = [n for n, p in parameters.items()
               if n not in out and "defaultValue" not in p and not p.get("isOptional")]
    if missing:
        raise KfpError(f"missing pipeline parameter{'s' if len(missing) > 1 else ''} "
                       f"{', '.join(missing)} (no default): pass --param {missing[0]}=VALUE")
    return out


def _convert_param(name: str, value: Any, kind: str) -> Any:
    bad = KfpError(f"parameter {name}: expected {PARAMETER_TYPES.get(kind, kind)} ({kind}), got {value!r}")
    if isinstance(value, str) and kind != "STRING":
        text = value.strip()
        try:
            if kind == "NUMBER_INTEGER":
                return int(text)
            if kind == "NUMBER_DOUBLE":
                return float(text)
            if kind == "BOOLEAN":
                lowered = text.lower()
                if lowered in ("true", "1", "yes", "on"):
                    return True
                if lowered in ("false", "0", "no", "off"):
                    return False
                raise bad
            if kind in ("LIST", "STRUCT"):
                value = json.loads(text)
        except ValueError:
            raise bad from None
    if kind == "STRING":
        if not isinstance(value, str):
            raise bad
        return value
    if kind == "NUMBER_INTEGER":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind == "NUMBER_DOUBLE":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind == "LIST" and not isinstance(value, list) or kind == "STRUCT" and not isinstance(value, dict):
        raise bad
    return value


def _source(source: Source) -> Union[Package, PipelineVersion]:
    return load_package(source) if isinstance(source, (str, Path)) else source


def _source_kwargs(source: Union[Package, PipelineVersion]) -> dict:
    if isinstance(source, Package):
        return {"pipeline_package_path": str(source.path)}
    return {"pipeline_id": source.pipeline_id, "version_id": source.version_id}
