"""Runs one stage inside a Ray task: builds its context, calls `run`, commits the entry.

The driver creates the staging folder and removes it once the task failed or, cancelled, ended;
this side writes the manifest and renames the folder into the store only after `run`
returned, so an interrupted stage never looks complete. A task retried after a system
failure (its node died) starts from an empty staging folder and the scratch folder its
first attempt left: the stage resumes from its checkpoints and task markers.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.lineage import Tracker
from pipeline.progress import Progress
from pipeline.stage import Stage, StageConfig, StageContext
from pipeline.store import MANIFEST, Manifest, Store


@dataclass
class StageJob:
    """Everything the Ray task needs; pickled to the worker."""

    stage: Stage
    config: StageConfig
    pipeline_config: Any
    fingerprint: str
    upstream_fingerprints: dict[str, str]
    store: Store
    staging: Path
    workdir: Path
    log_file: Path
    tracker: Tracker
    replace: bool = False
    ray_address: str | None = None


class _Tee:
    """Copies a stream into the stage's log file, so prints reach MLflow as well."""

    def __init__(self, stream: Any, sink: Any):
        self.stream, self.sink = stream, sink

    def write(self, text: str) -> int:
        self.sink.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.sink.flush()
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def stage_logger(name: str, log_file: Path) -> logging.Logger:
    logger = logging.getLogger(f"z2h.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)  # sys.stderr is teed into log_file
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    return logger


def _clean_metrics(name: str, metrics: Mapping[str, Any] | None) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"stage '{name}' returned {type(metrics).__name__}; run() must return a dict of numbers")
    clean = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
            raise TypeError(f"stage '{name}' returned metric {key}={value!r}; metrics must be finite numbers")
        clean[str(key)] = float(value)
    return clean


def _empty(folder: Path) -> None:
    """The staging folder as the driver made it: empty (a retried task's first attempt may have
    written into it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _producing_run(entry: Path) -> str:
    """The MLflow run that produced a committed store entry, as its manifest records it."""
    return Manifest.from_json((entry / MANIFEST).read_text()).run_id or ""


def execute(job: StageJob) -> Manifest:
    name = job.stage.name
    store = job.store
    _empty(job.staging)
    job.log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(job.log_file, "a", buffering=1) as sink:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, sink), _Tee(err, sink)
        try:
            upstream = {n: store.materialize(n, fp) for n, fp in job.upstream_fingerprints.items()}
            ctx = StageContext(
                name=name,
                config=job.config,
                pipeline_config=job.pipeline_config,
                upstream=upstream,
                upstream_runs={n: _producing_run(folder) for n, folder in upstream.items()},
                output_dir=job.staging,
                scratch_dir=store.scratch(name, job.fingerprint),
                workdir=job.workdir,
                seed=job.pipeline_config.run.seed,
                fingerprint=job.fingerprint,
                tracker=job.tracker,
                logger=stage_logger(name, job.log_file),
                progress=Progress(prefix=name),
                ray_address=job.ray_address,
            )
            try:
                metrics = job.stage.ordered(_clean_metrics(name, job.stage.run(ctx)))
            except BaseException:
                traceback.print_exc()
                raise
            manifest = Manifest(
                stage=name,
                fingerprint=job.fingerprint,
                files=[],
                metrics=metrics,
                run_id=job.tracker.run_id,
                upstream=dict(job.upstream_fingerprints),
                seconds=round(time.time() - started, 3),
            )
            store.commit(job.staging, manifest, replace=job.replace)
            store.clean_scratch(name, job.fingerprint)
            return manifest
        finally:
            sys.stdout, sys.stderr = out, err
