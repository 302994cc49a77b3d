"""MLflow lineage: one parent run per `z2h run`, one nested run per stage.

Stage outputs are datasets (name = output name, digest = fingerprint, source = store
path); a stage logs its upstreams as inputs and its own folder with context "output".
Checkpoints become LoggedModels linked to their source run and datasets, so "which data
and config made this model" is answerable from MLflow alone.

`Tracker` is small and picklable (tracking URI + run id) so stage code running in a Ray
worker logs to the same run as the driver.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import EnvironmentProblem
from pipeline.redact import redact

if TYPE_CHECKING:
    from pipeline.stage import UpstreamOutput

SOURCE_TAG = "z2h"
DATASET_CONTEXT = "mlflow.data.context"


_SQLITE_READY: set[str] = set()  # sqlite stores this process has seen initialised


def mlflow_client(uri: str):
    """The MlflowClient every z2h module uses for `uri`: quiet, and safe on a fresh sqlite store."""
    from mlflow import MlflowClient

    # Schema creation on a fresh sqlite store is routine, not news.
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)

    if uri.startswith("sqlite:///") and uri not in _SQLITE_READY:
        _init_sqlite(uri)
    return MlflowClient(tracking_uri=uri)


def _init_sqlite(uri: str) -> None:
    """MLflow creates a fresh sqlite store's tables on first use; two `z2h run` doing that at once
    on one work dir collide ("duplicate column name"). One process at a time, under an flock."""
    import fcntl

    from mlflow import MlflowClient

    lock = Path(uri.removeprefix("sqlite:///") + ".init.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates or migrates the schema
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    _SQLITE_READY.add(uri)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            text = json.dumps(value) if not isinstance(value, str) else value
            flat[path] = text[:6000]  # MLflow's param value limit
    return flat


@dataclass(frozen=True)
class DatasetRef:
    name: str  # the output's name, e.g. "data" or "tokenizer/shards"
    digest: str  # the producing stage's fingerprint
    source: str  # store path or URI


@dataclass
class Tracker:
    tracking_uri: str
    run_id: str
    experiment_id: str = ""
    _client_cache: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "experiment_id": self.experiment_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    @property
    def client(self):
        if self._client_cache is None:
            self._client_cache = mlflow_client(self.tracking_uri)
        return self._client_cache

    # -- runs ---------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(v)) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, dict(data), artifact_file)

    def log_table(self, data: Mapping[str, list], artifact_file: str) -> None:
        """A column -> values table shown in MLflow's artifact and evaluation views."""
        self.client.log_table(self.run_id, dict(data), artifact_file)

    # -- datasets -----------------------------------------------------------------
    def log_datasets(self, refs: Iterable[DatasetRef], context: str) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for ref in refs:
            with warnings.catch_warnings():  # a local path matches two equivalent source kinds
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(redact(ref.source))
            dataset = MetaDataset(source=source, name=ref.name, digest=ref.digest)
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(DATASET_CONTEXT, context)]))
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)

    # -- models -------------------------------------------------------------------
    def log_model(
        self,
        name: str,
        local_dir: Path | str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int = 0,
        base_model_id: str | None = None,
    ) -> str:
        """Register a checkpoint folder as an MLflow LoggedModel of this run; returns its id.

        `base_model_id` (e.g. the pretrained model an SFT model started from) is logged as
        a model input of this run, so the chain base -> sft -> rl is walkable."""
        from mlflow.entities import LoggedModelInput, LoggedModelOutput

        experiment_id = self.experiment_id or self.client.get_run(self.run_id).info.experiment_id
        model = self.client.create_logged_model(
            experiment_id,
            name=name,
            source_run_id=self.run_id,
            tags={**(tags or {}), **({"z2h.base_model_id": base_model_id} if base_model_id else {})},
            params=flatten(params or {}),
        )
        try:
            self.client.log_model_artifacts(model.model_id, str(local_dir))
        except Exception:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)])
        if base_model_id:
            self.client.log_inputs(self.run_id, models=[LoggedModelInput(base_model_id)])
        return model.model_id


def check_tracking(uri: str) -> None:
    """Fail fast (exit 3) when the tracking store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                response.read()
        except Exception as exc:
            hint = "start it or fix run.tracking_uri"
            raise EnvironmentProblem(redact(f"tracking server {uri} is unreachable ({exc}); {hint}")) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise EnvironmentProblem(f"tracking store {uri}: cannot write in {folder} ({exc.strerror})") from None


def experiment_id(uri: str, name: str, artifact_root: Path | None) -> str:
    """The experiment named after the pipeline, created on first use."""
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = artifact_root.as_uri() if artifact_root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another `z2h run`
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_run(
    uri: str,
    experiment: str,
    run_name: str,
    tags: Mapping[str, Any],
    parent_run_id: str | None = None,
) -> Tracker:
    client = mlflow_client(uri)
    all_tags = {str(k): str(v) for k, v in tags.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags.setdefault("mlflow.source.name", "z2h")
    all_tags.setdefault("mlflow.user", os.environ.get("USER", "z2h"))
    run = client.create_run(experiment, tags=all_tags, run_name=run_name)
    return Tracker(uri, run.info.run_id, experiment)


def end_run(tracker: Tracker, status: str) -> None:
    """status: FINISHED | FAILED | KILLED"""
    tracker.client.set_terminated(tracker.run_id, status=status)


def upstream_model_id(tracker: Tracker, upstream: UpstreamOutput, logger: logging.Logger) -> str | None:
    """The LoggedModel registered by the run that produced an upstream output (`ctx.upstream_output`),
    so a new model can name the one it started from. None, with a warning, when that lineage is
    missing: a model without it must still train."""
    run_id = upstream.run_id
    if run_id is None:
        logger.warning("no run recorded for %s (%s); the base model link is skipped", upstream.stage, upstream.folder)
        return None
    try:
        experiment = tracker.client.get_run(run_id).info.experiment_id
        found = produced_model(tracker.client, experiment, run_id)
    except Exception as exc:  # the tracking store has no such run, or cannot be reached
        logger.warning("no model lineage for %s (%s: %s); the link is skipped", upstream.stage, type(exc).__name__, exc)
        return None
    if found is None:
        logger.warning("run %s (%s) registered no LoggedModel; the link is skipped", run_id, upstream.stage)
        return None
    return found.model_id


def produced_model(client: Any, experiment_id: str, run_id: str) -> Any:
    """The LoggedModel that run `run_id` registered (a stage's final model), or None; `client` is an MlflowClient."""
    found = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=1
    )
    return found[0] if found else None
