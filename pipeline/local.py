"""Run a stage's code outside `z2h run`: tests, benchmarks, notebooks.

`local_context` builds the same `StageContext` the runner builds, in a folder of your
choosing. Without a tracking URI, logging goes to a `RecordingTracker` that keeps what would
have been sent to MLflow, so a benchmark measures the stage and not the tracking store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline import lineage
from pipeline.lineage import Tracker
from pipeline.progress import Progress
from pipeline.stage import StageConfig, StageContext


class RecordingTracker(Tracker):
    """A Tracker that records calls in memory instead of talking to MLflow."""

    def __init__(self) -> None:
        super().__init__(tracking_uri="", run_id="local")
        self.metrics: list[tuple[dict[str, float], int | None]] = []
        self.artifacts: dict[str, Any] = {}
        self.models: list[tuple[str, Path]] = []

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _client_cache=None)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.append((dict(metrics), step))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.artifacts["params"] = dict(params)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.artifacts["tags"] = dict(tags)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.artifacts[f"{artifact_path or ''}/{Path(path).name}"] = Path(path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.artifacts[artifact_file] = text

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.artifacts[artifact_file] = dict(data)

    def log_table(self, data: Mapping[str, list], artifact_file: str) -> None:
        self.artifacts[artifact_file] = dict(data)

    def log_datasets(self, refs, context: str) -> None:
        self.artifacts.setdefault(f"datasets/{context}", []).extend(refs)

    def log_model(self, name: str, local_dir: Path | str, **kwargs: Any) -> str:
        self.models.append((name, Path(local_dir)))
        return f"local-model-{len(self.models)}"


def mlflow_tracker(tracking_uri: str, experiment: str, run_name: str, artifact_root: Path | None = None) -> Tracker:
    """A real MLflow run to log a stage into (e.g. a sqlite store under a test's tmp dir)."""
    experiment_id = lineage.experiment_id(tracking_uri, experiment, artifact_root)
    return lineage.start_run(tracking_uri, experiment_id, run_name, {"z2h.stage": run_name})


def local_context(
    name: str,
    config: StageConfig,
    root: Path,
    *,
    upstream: Mapping[str, Path] | None = None,
    upstream_runs: Mapping[str, str] | None = None,
    seed: int = 0,
    tracker: Tracker | None = None,
    workdir: Path | None = None,
    progress: bool = False,
) -> StageContext:
    """A context whose output and scratch folders live under `root` (created if missing)."""
    output, scratch = root / "out", root / "scratch"
    output.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    return StageContext(
        name=name,
        config=config,
        pipeline_config=None,
        upstream=dict(upstream or {}),
        upstream_runs=dict(upstream_runs or {}),
        output_dir=output,
        scratch_dir=scratch,
        workdir=workdir or root,
        seed=seed,
        fingerprint="local",
        tracker=tracker or RecordingTracker(),
        logger=logging.getLogger(f"z2h.{name}"),
        progress=Progress(name, enabled=progress),
    )
