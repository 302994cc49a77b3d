"""The `stages.eval` config section: which models, which evaluations, how many items each."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from pipeline.stage import StageConfig, cosmetic
from stages.common import hub
from stages.common.rows import SourceError
from stages.eval.benchmarks import FORMATS

MODEL_STAGES = ("pretrain", "sft", "rl")  # evaluated in this order
CHOICE_SETS = ("mmlu", "commonsenseqa", "piqa", "openbookqa", "boolq")
RESERVED_ROWS = ("bpb", "adherence", "core")  # table rows the stage names itself


class TaskSpec(BaseModel):
    """A generative task from the registry in stages.common.tasks: how many held-out problems and
    the task's options (as the RL stage takes them, e.g. `{max_steps: 2}` for arith). In YAML a
    bare number means `{count: N}`."""

    model_config = ConfigDict(extra="forbid")
    count: int = Field(100, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)


class BenchmarkSpec(BaseModel):
    """A standard multiple-choice benchmark (stages/eval/benchmarks.py) read by Hub id, or from a local
    folder in the Hub repository's layout (stages/common/hub.py). Unset keys take the format's
    defaults (its Hub id, config, labelled split and few-shot split)."""

    model_config = ConfigDict(extra="forbid")
    format: str | None = Field(None, description=f"row layout, one of {sorted(FORMATS)}; default: the benchmark's name")
    source: str | None = Field(None, description="Hub dataset id, or a local folder in its layout")
    config: str | None = Field(
        None, description="the dataset's config (subset), e.g. ARC-Challenge; default: the format's for its Hub id"
    )
    split: str | None = Field(None, description="the split scored (it must carry gold labels)")
    revision: str | None = Field(None, description="Hub branch, tag or commit; default: main")
    count: int | None = Field(None, ge=1, description="items scored, a seeded sample; default: the whole split")
    fewshot: int = Field(0, ge=0, description="solved examples before each question")
    fewshot_split: str | None = Field(None, description="the split examples are drawn from (never the item itself)")


class EvalConfig(StageConfig):
    models: list[Literal["pretrain", "sft", "rl"]] = Field(
        default_factory=lambda: list(MODEL_STAGES),
        min_length=1,
        description="model stages to evaluate; each must be a stage of the pipeline (eval needs only these)",
    )
    # -- base-model measures (every model gets them) ---------------------------------------
    bpb_windows: int = Field(64, ge=1, description="held-out windows of seq_len tokens scored for bits per byte")
    samples: int = Field(4, ge=0, description="held-out document openings completed by sampling")
    sample_prompt_tokens: int = Field(16, ge=1, description="tokens of each held-out opening given as the prompt")
    sample_tokens: int = Field(48, ge=1, description="tokens sampled per completion")
    sample_temperature: float = Field(0.8, ge=0)
    sample_top_k: int | None = Field(40, ge=1)
    # -- chat-model measures -----------------------------------------------------------------
    tasks: dict[str, TaskSpec] = Field(
        default_factory=lambda: {"arith": TaskSpec(), "asdiv": TaskSpec()},
        description="generative task -> held-out problems answered greedily (chat models), scored by its reward",
    )
    max_new_tokens: int = Field(128, ge=1, description="reply budget for task answers and adherence prompts")
    adherence_prompts: int = Field(
        32, ge=0, description="held-out open questions (from the choice sets) answered to check the chat format"
    )
    # -- multiple choice (every model: plain text for the base model, the chat template otherwise) ----
    choice: dict[str, int] = Field(
        default_factory=lambda: dict.fromkeys(CHOICE_SETS, 100),
        description="multiple-choice set -> items scored by option log-likelihood",
    )
    normalize: Literal["bytes", "none"] = Field(
        "bytes", description="choice score: log-likelihood per byte of the option (bytes) or summed (none)"
    )
    # -- standard benchmarks (every model, plain text), averaged as DCLM's CORE ---------------------
    hub_mirror: Path | None = Field(
        None, description="a folder holding Hub datasets as <folder>/<owner>/<name> in their layout: read offline"
    )
    benchmarks: dict[str, BenchmarkSpec] = Field(
        default_factory=dict,
        description="benchmark name -> its source; centered accuracies averaged in the table's CORE row",
    )
    # -- execution -----------------------------------------------------------------------------
    unit_size: int = Field(
        16, ge=1, description="examples per work unit; results are the same for any number of workers"
    )
    workers: int = cosmetic(2, "parallel Ray tasks per model (data-parallel over work units)", ge=1)
    cpus_per_worker: float = cosmetic(1.0, "CPUs each eval task holds", gt=0)
    gpus_per_worker: float = cosmetic(0.0, "GPUs each eval task holds (the model runs on its GPU)", ge=0)
    batch_size: int = cosmetic(
        32, "sequences per forward pass inside a work unit; halved by a worker that runs out of memory", ge=1
    )

    @field_validator("choice")
    @classmethod
    def _known_sets(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(CHOICE_SETS))
        if unknown:
            raise ValueError(f"unknown choice set(s) {unknown}; known: {list(CHOICE_SETS)}")
        bad = {k: v for k, v in value.items() if v < 1}
        if bad:
            raise ValueError(f"item counts must be >= 1, got {bad}")
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _counts(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"count": v} if isinstance(v, int) and not isinstance(v, bool) else v for k, v in value.items()}
        return value

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
        from stages.common import tasks

        for name, spec in value.items():
            tasks.get(name, **spec.options)  # unknown tasks and options are reported up front
        return value

    @field_validator("hub_mirror")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().absolute() if value is not None else None

    @field_validator("benchmarks")
    @classmethod
    def _resolved(cls, value: dict[str, BenchmarkSpec], info: ValidationInfo) -> dict[str, BenchmarkSpec]:
        """Each spec with the format's defaults filled in; a local source's config and splits are checked
        here, before any stage runs (a Hub source's when eval starts)."""
        taken = {name: "a row of its own" for name in RESERVED_ROWS}
        taken |= {name: f"choice set choice.{name} (drop it from choice)" for name in info.data.get("choice", {})}
        taken |= {name: f"task tasks.{name}" for name in info.data.get("tasks", {})}
        resolved = {}
        for name, spec in value.items():
            if name in taken:
                raise ValueError(f"{name}: the table already has a row {name!r}, {taken[name]}; rename the benchmark")
            form_name = spec.format or name
            if form_name not in FORMATS:
                raise ValueError(f"{name}: no format {form_name!r}; set format to one of {sorted(FORMATS)}")
            form = FORMATS[form_name]
            spec = spec.model_copy(
                update={
                    "format": form_name,
                    "source": spec.source or form.hub,
                    "config": spec.config or (form.config if spec.source in (None, form.hub) else None),
                    "split": spec.split or form.split,
                    "fewshot_split": spec.fewshot_split or form.fewshot_split,
                }
            )
            local = Path(spec.source or "").expanduser()
            if local.is_dir():  # absolute: the stage runs in a Ray worker, perhaps elsewhere
                spec = spec.model_copy(update={"source": str(local.absolute())})
            _check_local(name, spec, info.data.get("hub_mirror"))
            resolved[name] = spec
        return resolved


def dataset_path(source: str, mirror: Path | None) -> str:
    """Where a benchmark is read: a folder as named; a Hub id from its copy `<mirror>/<owner>/<name>` when a
    mirror is set, else from the Hub."""
    if mirror is None or Path(source).expanduser().is_dir() or not hub.HUB_ID.match(source):
        return source
    copy = mirror.expanduser().absolute() / source
    if not copy.is_dir():
        raise SourceError(f"{source}: the mirror has no copy at {copy}")
    return str(copy)


def benchmark_splits(spec: BenchmarkSpec, mirror: Path | None) -> tuple[hub.Split, hub.Split | None]:
    """The files of the split scored and of the few-shot split (None: zero-shot). Raises SourceError."""
    dataset = dataset_path(spec.source or "", mirror)
    scored = hub.resolve(dataset, spec.config, spec.split or "", revision=spec.revision)
    if not spec.fewshot:
        return scored, None
    return scored, hub.resolve(dataset, spec.config, spec.fewshot_split or "", revision=spec.revision)


def is_local(spec: BenchmarkSpec, mirror: Path | None) -> bool:
    """Whether a benchmark is read from a folder (named, or a Hub id's copy under the mirror)."""
    return Path(dataset_path(spec.source or "", mirror)).expanduser().is_dir()


def _check_local(name: str, spec: BenchmarkSpec, mirror: Path | None) -> None:
    """A local source (a folder, or a Hub id under the mirror) has the config and splits the spec names."""
    try:
        if is_local(spec, mirror):
            benchmark_splits(spec, mirror)
    except SourceError as exc:
        raise ValueError(f"{name}: {exc}") from None
