"""YAML -> validated, typed pipeline config.

Several `-c` files merge in order, then repeatable `--set a.b.c=value` overrides apply.
Every problem is reported with its key path and reason before any work starts.

`stages.X: null` (in a later file, or `--set stages.X=null`) removes stage X; a stage that needs
it is then an error that says so. `X: {}` keeps a stage with its defaults.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.budget import Hardware
from pipeline.errors import UsageError
from pipeline.stage import Stage, StageConfig


def _expanded(path: Path) -> Path:
    """`~` / `~user` expanded, made absolute; an unknown user is a config error, not a crash."""
    try:
        return path.expanduser().absolute()
    except RuntimeError as exc:  # pathlib's "Could not determine home directory"
        raise ValueError(f"{path}: {exc}") from None


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("z2h", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    workdir: Path = Field(
        Path(".z2h"),
        validate_default=True,
        description="store, MLflow (sqlite), logs, caches; relative to where z2h runs",
    )
    seed: int = Field(1337, ge=0)
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db"
    )
    store: str | None = Field(
        None, description="store root: a path or an fsspec URI (s3://, gs://, file://); default: <workdir>/store"
    )
    shared_storage: bool = Field(
        False, description="the work dir (and a path store) is on storage every node mounts (NFS, Lustre, ...)"
    )

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return _expanded(value)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("memory://"):
            raise ValueError("memory:// lives in one process but stages run in others; use s3://, gs://, file://")
        if value is None or "://" in value:
            return value
        return str(_expanded(Path(value)))

    @property
    def tracking(self) -> str:
        """The one rule every command follows: the config (or --set) > $MLFLOW_TRACKING_URI > the work dir's."""
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.workdir / 'mlflow.db'}"


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="running Ray cluster; None: RAY_ADDRESS or embedded local Ray")
    num_cpus: int | None = Field(None, ge=1, description="embedded Ray only; default: all cores")
    num_gpus: int | None = Field(None, ge=0, description="embedded Ray only; default: detected")
    dashboard: bool = Field(
        True, description="embedded Ray's dashboard on 127.0.0.1 (Ray Train's state checks need it)"
    )
    check_resources: bool = Field(
        True, description="refuse a stage the nodes present cannot hold; false for a cluster that autoscales"
    )
    hardware: Hardware | None = Field(
        None, description="the machines the config is sized for: z2h plan's time estimates and memory refusals"
    )


@dataclass
class PipelineConfig:
    run: RunConfig
    cluster: ClusterConfig
    stages: dict[str, StageConfig]  # in the order the YAML lists them
    sources: tuple[str, ...] = ()  # the files it came from

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run.model_dump(mode="json"),
            "cluster": self.cluster.model_dump(mode="json"),
            "stages": {name: cfg.model_dump(mode="json") for name, cfg in self.stages.items()},
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (`3e-4`, `[1,2]`, `null`). A number
    picks an entry of a list: `stages.data.sources.0.dataset=DIR` changes one key of the first source."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {assignment!r}: expected KEY=VALUE, e.g. stages.pretrain.lr=3e-4")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise UsageError(f"--set {key}: value {text!r} is not valid YAML ({exc.__class__.__name__})") from None
    node: dict[str, Any] | list[Any] = raw
    for depth, part in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        slot: Any = _position(node, part, key, where) if isinstance(node, list) else part
        if depth == len(parts) - 1:
            node[slot] = value
            break
        child = node[slot] if isinstance(node, list) else node.get(part)
        if child is None:
            child = node[slot] = {}
        elif not isinstance(child, dict | list):
            raise UsageError(f"--set {key}: {where} is a {type(child).__name__}, not a section")
        node = child


def _position(items: list[Any], part: str, key: str, where: str) -> int:
    """The list entry a `--set` path names by number."""
    if not part.isdigit() or int(part) >= len(items):
        last = f"0..{len(items) - 1}" if items else "none: it is empty"
        raise UsageError(f"--set {key}: {where.rpartition('.')[0]} is a list of {len(items)}; pick an entry ({last})")
    return int(part)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UsageError(f"config {path}: no such file (configs/ holds the shipped ones, e.g. configs/tiny.yaml)")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"config {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise UsageError(f"config {path}: line {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"config {path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise UsageError(f"config {path}: top level must be a mapping with run/cluster/stages, got {kind}")
    return data


def format_errors(prefix: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        path = ".".join([prefix, *(str(p) for p in item["loc"])]) if prefix else ".".join(str(p) for p in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{path}: {message}")
    return lines


def _section(value: Any, path: str, model: type[BaseModel], errors: list[str]) -> Any:
    """`value` validated as `model` (None counts as empty); problems go to `errors` with their key path."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        errors.append(f"{path}: must be a mapping, got {type(value).__name__}")
        return None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors.extend(format_errors(path, exc))
        return None


def _raise(errors: list[str]) -> None:
    if errors:
        raise UsageError("invalid config:\n  " + "\n  ".join(errors))


def validate(raw: Mapping[str, Any], registry: Mapping[str, Stage], sources: Iterable[str] = ()) -> PipelineConfig:
    errors: list[str] = []
    for key in raw:
        if key not in ("run", "cluster", "stages"):
            errors.append(f"{key}: unknown section (expected run, cluster, stages)")
    run = _section(raw.get("run"), "run", RunConfig, errors)
    cluster = _section(raw.get("cluster"), "cluster", ClusterConfig, errors)
    stages_raw = raw.get("stages") or {}
    stages: dict[str, StageConfig] = {}
    if not isinstance(stages_raw, Mapping):
        errors.append(f"stages: must be a mapping of stage name to settings, got {type(stages_raw).__name__}")
        stages_raw = {}
    for name, body in stages_raw.items():
        stage = registry.get(name)
        if stage is None:
            errors.append(f"stages.{name}: unknown stage (known: {', '.join(sorted(registry)) or 'none'})")
            continue
        if body is None:  # null removes the stage
            continue
        checked = _section(body, f"stages.{name}", stage.config_model, errors)
        if checked is not None:
            stages[name] = checked
    for name in stages:
        # A need the stage's settings ask for (eval's models) is fixed there rather than by removing the stage.
        by_settings = callable(registry[name].needs)
        who = f"stages.{name}: its settings need" if by_settings else f"stages.{name}: needs"
        for need in registry[name].needs_for(stages[name]):
            fix = f"change stages.{name}" if by_settings else f"remove {name} too (stages.{name}: null)"
            if need in stages_raw and stages_raw[need] is None:
                errors.append(
                    f"{who} stage '{need}', which this config removes (stages.{need}: null); "
                    f"{fix} or give {need} its settings"
                )
            elif need not in stages_raw:
                errors.append(f"{who} stage '{need}', which this config does not define")
    _raise(errors)
    config = PipelineConfig(run=run, cluster=cluster, stages=stages, sources=tuple(sources))
    for name, stage_config in stages.items():
        try:
            stage_config.check_against(config)
        except ValueError as exc:
            errors.append(f"stages.{name}.{exc}" if not str(exc).startswith("stages.") else str(exc))
    _raise(errors)
    return config


def read_all(paths: Iterable[Path | str], overrides: Iterable[str]) -> dict[str, Any]:
    """The files merged in order, then the overrides applied; not validated yet."""
    raw: dict[str, Any] = {}
    for path in paths:
        raw = deep_merge(raw, read_yaml(Path(path)))
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw


def load(paths: Iterable[Path | str], overrides: Iterable[str], registry: Mapping[str, Stage]) -> PipelineConfig:
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("no config given: pass one, e.g. `z2h run configs/tiny.yaml`")
    return validate(read_all(paths, overrides), registry, sources=[str(p) for p in paths])


def run_section(raw: Mapping[str, Any]) -> RunConfig:
    """Only `run` (where a run lives: work dir, store, tracking), for commands that read a run's files
    and never build a stage: other sections are not validated, so no stage is imported."""
    errors: list[str] = []
    run = _section(raw.get("run"), "run", RunConfig, errors)
    _raise(errors)
    return run


def stage_section(raw: Mapping[str, Any], stage: Stage) -> StageConfig:
    """One stage's section (its defaults when absent or null), for that stage's own commands."""
    stages_raw = raw.get("stages")
    body = stages_raw.get(stage.name) if isinstance(stages_raw, Mapping) else None
    errors: list[str] = []
    checked = _section(body, f"stages.{stage.name}", stage.config_model, errors)
    _raise(errors)
    return checked
