"""What each stage will cost, for `z2h plan`: data read, tokens, optimizer steps, FLOPs, memory per worker
and time on the hardware a config names (`cluster.hardware`), and the refusal of a stage whose memory per
worker cannot fit there, before anything runs.

Stages estimate their own figures (`Stage.budget`, with the shared estimators of
`stages/common/budget.py`); the core only gathers them in pipeline order, shows them and checks the fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import UsageError

if TYPE_CHECKING:
    from pipeline.graph import Plan, PlannedStage

GB = 1e9


class Hardware(BaseModel):
    """The machines a config is sized for. Time estimates assume `mfu` of `peak_tflops` on every GPU a
    stage holds; a worker's memory must fit the GPUs it holds, or a node's host memory without a GPU."""

    model_config = ConfigDict(extra="forbid")

    gpu: str = Field(min_length=1, description="the accelerator, for people (e.g. H100 SXM 80GB)")
    gpu_memory_gb: float = Field(gt=0, description="memory of one GPU")
    peak_tflops: float = Field(gt=0, description="dense bf16 TFLOP/s of one GPU")
    mfu: float = Field(gt=0, le=1, description="model FLOPs utilization the time estimates assume")
    node_memory_gb: float = Field(gt=0, description="host memory of one node (what a CPU worker may use at most)")

    def gpu_seconds(self, flops: float, gpus: float) -> float:
        """Seconds for `flops` of model work spread over `gpus` GPUs at the assumed MFU."""
        return flops / (max(gpus, 1e-9) * self.peak_tflops * 1e12 * self.mfu)

    def describe(self) -> str:
        return f"{self.gpu} ({self.gpu_memory_gb:g} GB, {self.peak_tflops:g} TFLOP/s bf16) at {self.mfu:.0%} MFU"


@dataclass(frozen=True)
class Budget:
    """One stage's estimate. None: the stage does not know (or the figure does not apply)."""

    details: str = ""  # the stage's own line: mesh, model, sources, counts
    data_bytes: float | None = None  # bytes the stage reads (outside inputs or upstream outputs)
    tokens: float | None = None  # tokens trained on, encoded, scored or generated
    steps: int | None = None  # optimizer steps
    flops: float | None = None  # model FLOPs (training 6N per token plus attention; inference a third)
    memory_gb: float | None = None  # peak per worker
    memory_parts: str = ""  # what makes it up, for the refusal
    on_gpu: bool = False  # memory_gb is GPU memory (else host memory)
    holds_gpus: float | None = None  # GPUs a worker's memory must fit in; None: the stage's gpus per worker
    seconds: float | None = None  # estimated wall time on cluster.hardware (None: no hardware named)
    output: Mapping[str, Any] = field(default_factory=dict)  # handed downstream: text_bytes, train_tokens, model


def estimate(plan: Plan) -> dict[str, Budget]:
    """Every stage's budget, in pipeline order; each stage sees its upstreams' budgets."""
    found: dict[str, Budget] = {}
    for item in plan.stages:
        if item.stage.budget is not None:
            upstream = {need: found[need] for need in item.needs if need in found}
            found[item.name] = item.stage.budget(item.config, plan.config, upstream)
    return found


def capacity_gb(item: PlannedStage, budget: Budget, hardware: Hardware) -> float:
    if budget.on_gpu:
        gpus = item.resources.gpus if budget.holds_gpus is None else budget.holds_gpus
        return gpus * hardware.gpu_memory_gb
    return hardware.node_memory_gb


def refusals(plan: Plan, budgets: Mapping[str, Budget]) -> list[str]:
    """A line per stage that would run and whose memory per worker exceeds what a worker holds."""
    hardware = plan.config.cluster.hardware
    if hardware is None:
        return []
    found = []
    for item in plan.stages:
        budget = budgets.get(item.name)
        if item.status != "run" or budget is None or budget.memory_gb is None:
            continue
        capacity = capacity_gb(item, budget, hardware)
        if budget.memory_gb > capacity:
            where = "of GPU memory" if budget.on_gpu else "of host memory"
            parts = f" ({budget.memory_parts})" if budget.memory_parts else ""
            found.append(
                f"stages.{item.name}: needs ~{budget.memory_gb:.1f} GB {where} per worker{parts}, but a worker holds "
                f"{capacity:.1f} GB on {hardware.gpu if budget.on_gpu else 'its node'} (cluster.hardware)"
            )
    return found


def refuse_unfit(plan: Plan, budgets: Mapping[str, Budget] | None = None) -> None:
    """UsageError (exit 2) naming each stage whose memory cannot fit, with its need and the capacity."""
    found = refusals(plan, estimate(plan) if budgets is None else budgets)
    if found:
        raise UsageError("stage memory does not fit the hardware:\n  " + "\n  ".join(found))


def amount(value: float | None, unit: str = "") -> str:
    """1.2k, 3.4M, 5.6B, 7.8T (with `unit`); '-' when unknown."""
    if value is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{suffix}{unit}"
    return f"{value:.0f}{unit}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
