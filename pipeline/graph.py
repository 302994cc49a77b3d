"""The stage DAG: fingerprints, cache status and which stages a command selects."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.config import PipelineConfig
from pipeline.errors import UsageError
from pipeline.stage import Resources, Stage, StageConfig
from pipeline.store import Lookup, Store


@cache
def package_hash(package: str) -> str:
    """sha256 over every .py file of a package (or a single module), by relative path."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise UsageError(f"cannot find package '{package}' to fingerprint its source")
    if spec.submodule_search_locations:
        roots = [Path(p) for p in spec.submodule_search_locations]
        files = sorted((root, f) for root in roots for f in root.rglob("*.py"))
    else:
        origin = Path(spec.origin)
        files = [(origin.parent, origin)]
    digest = hashlib.sha256()
    for root, path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def code_hash(stage: Stage) -> str:
    digest = hashlib.sha256()
    for package in sorted(set(stage.source_packages())):
        digest.update(f"{package}:{package_hash(package)}\n".encode())
    return digest.hexdigest()


def fingerprint_config(model: BaseModel) -> dict[str, Any]:
    """The config as it affects outputs: cosmetic fields (logging cadence...) left out."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("cosmetic"):
            continue
        out[name] = _jsonable(getattr(model, name))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return fingerprint_config(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def fingerprint(name: str, config: StageConfig, code: str, upstream: Mapping[str, str], seed: int) -> str:
    payload = {
        "stage": name,
        "config": fingerprint_config(config),
        "code": code,
        "upstream": dict(sorted(upstream.items())),
        "seed": seed,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Selection:
    """What the command line asked for (see `z2h run --help`)."""

    stages: tuple[str, ...] = ()
    from_stage: str | None = None
    until_stage: str | None = None
    force: tuple[str, ...] = ()
    with_deps: bool = False


@dataclass
class PlannedStage:
    name: str
    stage: Stage
    config: StageConfig
    fingerprint: str
    needs: tuple[str, ...]
    resources: Resources
    lookup: Lookup
    selected: bool = False
    forced: bool = False
    pulled_in: bool = False  # selected only because --with-deps needed it

    @property
    def status(self) -> str:
        if not self.selected:
            return "skip"
        if self.lookup.hit and not self.forced:
            return "cached"
        return "run"


@dataclass
class Plan:
    config: PipelineConfig
    stages: list[PlannedStage] = field(default_factory=list)

    def __getitem__(self, name: str) -> PlannedStage:
        for item in self.stages:
            if item.name == name:
                return item
        raise KeyError(name)

    @property
    def selected(self) -> list[PlannedStage]:
        return [s for s in self.stages if s.selected]


def topological_order(config: PipelineConfig, registry: Mapping[str, Stage]) -> list[str]:
    """Stages in dependency order; ties keep the YAML order."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise UsageError(f"stages.{name}: dependency cycle through '{name}'")
        visiting.add(name)
        for need in registry[name].needs:
            visit(need)
        visiting.discard(name)
        order.append(name)

    for name in config.stages:
        visit(name)
    return order


def _closure(start: str, edges: Mapping[str, Iterable[str]]) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def build_plan(
    config: PipelineConfig,
    registry: Mapping[str, Stage],
    store: Store,
    selection: Selection = Selection(),
    config_label: str = "CONFIG",
) -> Plan:
    plan = Plan(config)
    fingerprints: dict[str, str] = {}
    for name in topological_order(config, registry):
        stage = registry[name]
        stage_config = config.stages[name]
        upstream = {need: fingerprints[need] for need in stage.needs}
        fp = fingerprint(name, stage_config, code_hash(stage), upstream, config.run.seed)
        fingerprints[name] = fp
        plan.stages.append(
            PlannedStage(
                name=name,
                stage=stage,
                config=stage_config,
                fingerprint=fp,
                needs=stage.needs,
                resources=stage.resources(stage_config),
                lookup=store.lookup(name, fp),
            )
        )
    _select(plan, selection, config_label)
    return plan


def _select(plan: Plan, selection: Selection, config_label: str) -> None:
    names = [s.name for s in plan.stages]
    known = ", ".join(names)
    for flag, values in (
        ("--stage", selection.stages),
        ("--force", selection.force),
        ("--from", [selection.from_stage] if selection.from_stage else []),
        ("--until", [selection.until_stage] if selection.until_stage else []),
    ):
        for value in values:
            if value not in names:
                raise UsageError(f"{flag} {value}: this config has no such stage (it has: {known})")
    upstream_edges = {s.name: s.needs for s in plan.stages}
    downstream_edges: dict[str, list[str]] = {}
    for s in plan.stages:
        for need in s.needs:
            downstream_edges.setdefault(need, []).append(s.name)

    chosen = set(selection.stages) if selection.stages else set(names)
    if selection.from_stage:
        chosen &= _closure(selection.from_stage, downstream_edges)
    if selection.until_stage:
        chosen &= _closure(selection.until_stage, upstream_edges)
    if not chosen:
        raise UsageError("the selection is empty: --from/--until/--stage leave no stage to run")
    for name in selection.force:
        if name not in chosen:
            raise UsageError(f"--force {name}: '{name}' is not among the selected stages")

    # Upstreams outside the selection must already be in the store (or be pulled in).
    for item in plan.stages:  # topological order, so pulled-in stages are checked too
        if item.name not in chosen:
            continue
        for need in item.needs:
            if need in chosen or plan[need].lookup.hit:
                continue
            if selection.with_deps:
                for dep in _closure(need, upstream_edges):
                    if dep not in chosen and not plan[dep].lookup.hit:
                        chosen.add(dep)
                        plan[dep].pulled_in = True
                continue
            why = f" ({plan[need].lookup.reason})" if plan[need].lookup.reason else ""
            raise UsageError(
                f"stage '{item.name}' needs '{need}', which has no complete entry in the store{why}: "
                f"run `z2h run {config_label} --until {need}` first, or add --with-deps"
            )
    for item in plan.stages:
        item.selected = item.name in chosen
        item.forced = item.name in selection.force
