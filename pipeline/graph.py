"""The stage DAG: fingerprints, cache status and which stages a command selects."""

from __future__ import annotations

import ast
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

# Top-level packages whose modules count as stage code when a stage imports them, besides the stage's
# own top-level package: shared code lives in `stages.common`.
SHARED_CODE = ("stages",)


def code_hash(stage: Stage) -> str:
    """sha256 over the source of every module the stage's code uses (see `code_files`)."""
    digest = hashlib.sha256()
    for key, path in sorted(code_files(stage).items()):
        digest.update(f"{key}:{file_hash(path)}\n".encode())
    return digest.hexdigest()


def code_files(stage: Stage) -> dict[str, Path]:
    """The source files a stage's fingerprint covers, by path under their import root: the module
    defining `run` and every project module (of its own top-level package or of `SHARED_CODE`) that it
    imports, transitively, plus every file of the declared `code`. The `__init__.py` of each package
    above those modules counts too (importing a module runs it), though what it imports does not:
    a stage package's `__init__.py` imports its report section and commands, which make no outputs.
    Found statically (`ast`), so imports inside functions count; editing a module the stage's code
    never imports leaves its fingerprint alone."""
    start = stage.run.__module__
    project = {start.partition(".")[0], *SHARED_CODE}
    found: dict[str, Path] = {}
    followed: set[str] = set()
    todo: list[str] = []  # modules whose imports are still to read

    def add(module: str) -> None:
        for name, path in _module_and_parents(module):
            found[path.relative_to(_root(name)).as_posix()] = path
        if module not in followed:
            followed.add(module)
            todo.append(module)

    add(start)
    for name in stage.code:
        files = _package_files(name)
        if not files:
            raise UsageError(f"stage '{stage.name}': cannot find module '{name}' to fingerprint its source")
        for module, _path in files:
            add(module)
    while todo:
        module = todo.pop()
        source = _module_file(module)
        for imported in _imports(source, module) if source else ():
            if imported.partition(".")[0] in project:
                add(imported)
    return found


@cache
def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@cache
def _root(module: str) -> Path:
    """The folder a module's top-level package is imported from (its sys.path entry)."""
    spec = importlib.util.find_spec(module.partition(".")[0])
    if spec is None or not (spec.origin or spec.submodule_search_locations):
        raise UsageError(f"cannot find package '{module}' to fingerprint its source")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).parent
    return Path(spec.origin).parent


@cache
def _module_file(name: str) -> Path | None:
    """The source file of module `name` (a package's `__init__.py`), found without importing it; None
    for names that are no source file (an attribute, a built-in or compiled module)."""
    if importlib.util.find_spec(name.partition(".")[0]) is None:
        return None
    base = _root(name).joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_name(base.name + ".py")):
        if candidate.is_file():
            return candidate
    return None


def _package_files(name: str) -> list[tuple[str, Path]]:
    """(module, file) for every .py file of package `name`, or for the one file of module `name`."""
    source = _module_file(name)
    if source is None or source.name != "__init__.py":
        return [(name, source)] if source else []
    files = []
    for path in sorted(source.parent.rglob("*.py")):
        parts = path.relative_to(source.parent).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        files.append((".".join((name, *parts)), path))
    return files


def _module_and_parents(name: str) -> list[tuple[str, Path]]:
    """(module, file) for a module and each package above it: importing it runs them all."""
    parts = name.split(".")
    names = [".".join(parts[:end]) for end in range(1, len(parts) + 1)]
    return [(module, path) for module in names if (path := _module_file(module)) is not None]


@cache
def _imports(path: Path, module: str) -> frozenset[str]:
    """Absolute names of the modules a source file imports (`from a import b` counts `a.b` when that is
    a module of ours), relative imports resolved against `module`, the file's own name."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise UsageError(f"{path}:{exc.lineno}: cannot parse it to fingerprint the stage's code ({exc.msg})") from None
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(part for part in (base, node.module) if part)
            names.add(source)
            names |= {f"{source}.{alias.name}" for alias in node.names if _module_file(f"{source}.{alias.name}")}
    return frozenset(names)


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


def fingerprint(
    name: str,
    config: StageConfig,
    code: str,
    upstream: Mapping[str, str],
    seed: int,
    inputs: Mapping[str, str] | None = None,
) -> str:
    payload = {
        "stage": name,
        "config": fingerprint_config(config),
        "code": code,
        "upstream": dict(sorted(upstream.items())),
        "seed": seed,
    }
    if inputs:  # only stages that read outside files (`Stage.inputs`): other fingerprints stay as they were
        payload["inputs"] = dict(sorted(inputs.items()))
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
        for need in registry[name].needs_for(config.stages[name]):
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
        needs = stage.needs_for(stage_config)
        upstream = {need: fingerprints[need] for need in needs}
        inputs = stage.inputs(stage_config) if stage.inputs else None
        fp = fingerprint(name, stage_config, code_hash(stage), upstream, config.run.seed, inputs)
        fingerprints[name] = fp
        plan.stages.append(
            PlannedStage(
                name=name,
                stage=stage,
                config=stage_config,
                fingerprint=fp,
                needs=needs,
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
