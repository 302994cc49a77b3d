"""The stage contract: what every stage declares and what it receives when it runs.

A stage is a room with one door in (its `StageContext`) and one door out (files in
`ctx.output_dir` plus the metrics dict `run` returns). The core knows stages only through
this contract; stages are discovered through the `zero2hero.stages` entry-point group.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from pipeline.lineage import Tracker
    from pipeline.progress import Progress


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

    @property
    def total_cpus(self) -> float:
        return self.cpus * self.workers

    @property
    def total_gpus(self) -> float:
        return self.gpus * self.workers

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


@dataclass(frozen=True)
class OutputRef:
    """A named output a stage wants recorded as a dataset in MLflow (beyond the folder)."""

    name: str
    path: str  # relative to the output folder


@dataclass(frozen=True)
class Stage:
    """A pipeline stage.

    needs:         upstream stages whose outputs this stage reads (the DAG edges)
    config_model:  pydantic model for `stages.<name>` in the YAML
    resources:     config -> Resources
    run:           ctx -> metrics (flat dict of numbers); writes files to ctx.output_dir
    code:          extra importable packages whose source is part of the fingerprint
                   (the stage's own package is always included)
    inputs:        config -> {name: identity} of files the stage reads from outside the store (size and
                   mtime, or a content hash), part of the fingerprint: an edited input is not served from cache
    commands:      extra CLI subcommands
    summary:       (config, pipeline config) -> one line for `z2h plan` (sizes, budgets)
    """

    name: str
    config_model: type[StageConfig]
    run: Callable[[StageContext], Mapping[str, float]]
    needs: tuple[str, ...] = ()
    resources: Callable[[Any], Resources] = field(default=lambda cfg: Resources())
    code: tuple[str, ...] = ()
    inputs: Callable[[Any], Mapping[str, str]] | None = None
    commands: Mapping[str, StageCommand] = field(default_factory=dict)
    description: str = ""
    summary: Callable[[Any, Any], str] | None = None

    def source_packages(self) -> Iterable[str]:
        """The stage's own package (the one defining `run`) and its declared `code`."""
        module = sys.modules[self.run.__module__]
        is_package = Path(module.__file__ or "").name == "__init__.py"
        own = module.__name__ if is_package else module.__name__.rpartition(".")[0]
        return (own or module.__name__, *self.code)
