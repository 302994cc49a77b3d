"""The stage contract: what every stage declares and what it receives when it runs.

A stage is a room with one door in (its `StageContext`) and one door out (files in
`ctx.output_dir` plus the metrics dict `run` returns). The core knows stages only through
this contract; stages are discovered through the `zero2hero.stages` entry-point group.
docs/adding-a-stage.md walks through a complete example.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from pipeline.budget import Budget
    from pipeline.lineage import Tracker
    from pipeline.progress import Progress
    from pipeline.report_blocks import Block


class StageConfig(BaseModel):
    """Base for every stage's config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def check_against(self, pipeline: Any) -> None:
        """Cross-section checks (e.g. tp vs the model's heads). Raise ValueError to reject.

        `pipeline` is the whole validated `PipelineConfig`; the default accepts everything.
        """


def cosmetic(default: Any, description: str = "", **constraints: Any) -> Any:
    """A config field that does not change a stage's outputs (logging cadence, progress
    bars): left out of the fingerprint, so changing it never invalidates the cache.
    `constraints` are pydantic's (`ge=1`, `gt=0`, ...)."""
    return Field(default, description=description, json_schema_extra={"cosmetic": True}, **constraints)


@dataclass(frozen=True)
class Resources:
    """What a stage needs from the cluster.

    `workers == 1`: the stage task itself holds `cpus`/`gpus` and does the work.
    `workers > 1`: the stage task is a zero-CPU coordinator that starts `workers` Ray
    workers (tasks, actors or a Ray Train group) of `cpus`/`gpus` each.
    `group`: workers come in groups of this many that must share a node (a tensor-parallel
    group); `workers` is a multiple of it.
    """

    cpus: float = 1.0
    gpus: float = 0.0
    workers: int = 1
    group: int = 1

    def describe(self) -> str:
        gpu = f" {self.gpus:g} GPU" if self.gpus else ""
        group = f" in node-local groups of {self.group}" if self.group > 1 else ""
        return f"{self.workers}x({self.cpus:g} CPU{gpu}){group}"


@dataclass(frozen=True)
class StageCommand:
    """An extra `z2h` subcommand a stage contributes (e.g. `z2h samples`)."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class StageReport:
    """A stage's section of the report card: a title, and `build(output folder, metrics)` returning the
    section's blocks (`pipeline.report_blocks`: Text, Table, Image, Code). `build` reads what the stage
    wrote; the core calls it only for a committed output and says 'Not run' under the title otherwise."""

    title: str
    build: Callable[[Path, Mapping[str, float]], list[Block]]


@dataclass(frozen=True)
class UpstreamOutput:
    """An upstream stage's committed output, as a stage reads it."""

    stage: str
    folder: Path  # a local folder holding its files
    run_id: str | None  # the MLflow run that produced it (None: not recorded)


@dataclass
class StageContext:
    """Everything a running stage may touch."""

    name: str
    config: StageConfig
    pipeline_config: Any  # the whole PipelineConfig, read-only by convention
    upstream: Mapping[str, Path]  # upstream stage name -> its committed output folder
    output_dir: Path  # write outputs here (a staging folder; committed atomically after run)
    scratch_dir: Path  # survives a crash for the same fingerprint: checkpoints, task markers
    workdir: Path
    seed: int
    fingerprint: str
    tracker: Tracker
    logger: logging.Logger
    progress: Progress
    ray_address: str | None = None
    upstream_runs: Mapping[str, str] = field(default_factory=dict)  # upstream stage name -> producing MLflow run

    def upstream_output(self, stage: str) -> UpstreamOutput:
        """The output of upstream stage `stage` (one of this stage's `needs`) and the MLflow run that
        produced it, e.g. to link a new model to the LoggedModel it started from."""
        if stage not in self.upstream:
            known = ", ".join(self.upstream) or "none"
            raise KeyError(f"stage '{self.name}' asked for upstream '{stage}', which it does not need (needs: {known})")
        return UpstreamOutput(stage, Path(self.upstream[stage]), self.upstream_runs.get(stage) or None)


def deferred(target: str) -> Callable[[StageContext], Mapping[str, float]]:
    """A stage's `run` named as `"module:function"` and imported at its first call, so that listing,
    planning and a run served wholly from the cache never import a stage's training code (torch,
    datatrove, Ray Train). It carries the target's module name: the code fingerprint starts there."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"deferred run {target!r}: expected 'module:function'")

    def run(ctx: StageContext) -> Mapping[str, float]:
        return getattr(importlib.import_module(module), name)(ctx)

    run.__module__, run.__qualname__ = module, name
    return run


@dataclass(frozen=True)
class Stage:
    """A pipeline stage.

    needs:         upstream stages whose outputs this stage reads (the DAG edges), or a function of the stage's
                   config giving them (eval reads only the models its config names); read through `needs_for`
    config_model:  pydantic model for `stages.<name>` in the YAML
    resources:     config -> Resources
    run:           ctx -> metrics (flat dict of numbers); writes files to ctx.output_dir
    headline:      metric names shown first (`z2h run`'s summary, the report's key metrics), in this order
    report:        the stage's section of the report card (None: key metrics and curves only)
    code:          modules the fingerprint covers beyond those `run` imports (pipeline.graph follows the
                   imports; name here what the stage loads by name at run time)
    inputs:        config -> {name: identity} of files the stage reads from outside the store (size and
                   mtime, or a content hash), part of the fingerprint: an edited input is not served from cache
    commands:      extra CLI subcommands
    budget:        (config, pipeline config, upstream budgets) -> `pipeline.budget.Budget` for `z2h plan`: data,
                   tokens, steps, FLOPs, memory per worker and time on `cluster.hardware`, plus a line of details
    """

    name: str
    config_model: type[StageConfig]
    run: Callable[[StageContext], Mapping[str, float]]
    needs: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()
    resources: Callable[[Any], Resources] = field(default=lambda cfg: Resources())
    headline: tuple[str, ...] = ()
    report: StageReport | None = None
    code: tuple[str, ...] = ()
    inputs: Callable[[Any], Mapping[str, str]] | None = None
    commands: Mapping[str, StageCommand] = field(default_factory=dict)
    description: str = ""
    budget: Callable[[Any, Any, Mapping[str, Budget]], Budget] | None = None

    def needs_for(self, config: Any) -> tuple[str, ...]:
        """The upstream stages this stage reads under its validated `config`."""
        return tuple(self.needs(config)) if callable(self.needs) else self.needs

    def ordered(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """`metrics` with the headline names first (those the stage returned), then the rest as given."""
        return {key: metrics[key] for key in self.headline if key in metrics} | dict(metrics)
