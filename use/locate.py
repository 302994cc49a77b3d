"""TARGET -> the model folder a model command (`z2h chat`, `z2h sample`) uses, and its tokenizer.

A target is one of:
  (nothing)            the latest model in the store: rl, else sft, else pretrain (newest entry)
  pretrain | sft | rl  the newest entry of that stage (`base` means pretrain)
  STAGE/FINGERPRINT    a store entry (a unique fingerprint prefix is enough)
  PATH                 a model folder (config.json + model.safetensors) or a store entry holding model/
  RUN_ID               an MLflow run: a pipeline run (its latest model stage) or a model stage's run;
                       read from the store, or downloaded from MLflow when the store lost it
  models:/NAME@ALIAS   a registered model version (also models:/NAME/VERSION): the run that produced it
Anything else is a one-line error that lists what exists. Where to look is a run's `Place`: its
store, its MLflow tracking store and a cache for models fetched back from MLflow. A store on a URI
(`s3://...`) is not listed: name a run id there (its model is fetched from MLflow) or a folder.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UsageError
from pipeline.lineage import mlflow_client, produced_model
from pipeline.store import is_uri
from stages.common.model_folder import MANIFEST, is_model_folder, read_manifest, recorded_tokenizer
from stages.common.tokenizer import META_FILE

MODEL_STAGES = ("rl", "sft", "pretrain")  # preference order for "the latest model"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Place:
    """Where a run keeps its models."""

    store: Path | None  # the local store folder; None when the store is on a URI
    tracking_uri: str | None  # None: no MLflow to ask
    cache: Path  # models fetched back from MLflow land here
    store_uri: str = ""  # the store as the config names it, for messages

    @classmethod
    def of(cls, run) -> Place:
        """The place a `RunConfig` names (work dir, `run.store`, the tracking rule)."""
        workdir = Path(run.workdir)
        local = run.store is None or not is_uri(run.store)
        store = (Path(run.store) if run.store else workdir / "store") if local else None
        return cls(store, run.tracking, workdir / "cache" / "models", run.store or str(store))


@dataclass(frozen=True)
class Found:
    folder: Path  # the model folder
    tokenizer: Path | None  # the tokenizer folder it was trained with, when known
    stage: str | None  # pretrain | sft | rl; None when unknown (a bare folder)
    label: str  # how to name it to the user


@dataclass(frozen=True)
class Entry:
    stage: str
    fingerprint: str
    path: Path
    created: float


def store_models(store: Path | None) -> list[Entry]:
    """Committed model entries of a local store, newest first."""
    found = []
    for stage in MODEL_STAGES if store is not None else ():
        for manifest in sorted((store / stage).glob(f"*/{MANIFEST}")):
            entry = manifest.parent
            if entry.name.startswith(".") or not is_model_folder(entry / "model"):
                continue
            try:
                created = float(json.loads(manifest.read_text()).get("created", 0))
            except (OSError, ValueError):
                continue
            found.append(Entry(stage, entry.name, entry, created))
    return sorted(found, key=lambda e: -e.created)


def _from_entry(entry: Entry) -> Found:
    folder = entry.path / "model"
    return Found(folder, recorded_tokenizer(folder), entry.stage, f"{entry.stage}/{entry.fingerprint}")


def _what_exists(place: Place) -> str:
    if place.store is None:
        parts = [f"run.store {place.store_uri} is not a local folder, so only run ids and model folders are looked up"]
    else:
        shown = ", ".join(
            f"{e.stage}/{e.fingerprint} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(e.created))})"
            for e in store_models(place.store)[:6]
        )
        parts = [f"models in {place.store}: {shown or 'none'}"]
    runs = _recent_pipeline_runs(place.tracking_uri)
    if runs:
        parts.append("pipeline runs in MLflow: " + ", ".join(runs))
    return "; ".join(parts)


def _sqlite_missing(uri: str) -> bool:
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()


def _recent_pipeline_runs(uri: str | None, limit: int = 5) -> list[str]:
    if not uri or _sqlite_missing(uri):
        return []
    try:
        client = mlflow_client(uri)
        ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(
            ids, "tags.`z2h.kind` = 'pipeline'", max_results=limit, order_by=["attributes.start_time DESC"]
        )
    except Exception:  # listing is a courtesy inside an error message; never a second error
        return []
    return [f"{r.info.run_id} ({r.info.run_name})" for r in runs]


def _from_path(path: Path, place: Place) -> Found:
    for folder in (path, path / "model"):
        if is_model_folder(folder):
            stage = read_manifest(folder.parent).get("stage")
            return Found(folder.absolute(), recorded_tokenizer(folder), stage, str(folder))
    raise UsageError(f"{path} holds no model (config.json + model.safetensors); {_what_exists(place)}")


def _from_run(run_id: str, place: Place) -> Found | None:
    """The model a run id names, or None when no MLflow run has that id."""
    uri = place.tracking_uri
    if not uri or _sqlite_missing(uri):
        return None
    client = mlflow_client(uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        return None
    tags = run.data.tags
    if tags.get("z2h.kind") == "pipeline":
        children = client.search_runs(
            [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=100
        )
        by_stage = {c.data.tags.get("z2h.stage"): c for c in children if c.info.status == "FINISHED"}
        for stage in MODEL_STAGES:
            if stage in by_stage:
                return _from_stage_run(by_stage[stage], place, client)
        stages = ", ".join(sorted(s for s in by_stage if s)) or "none"
        raise UsageError(f"pipeline run {run_id} made no model (finished stages: {stages})")
    return _from_stage_run(run, place, client)


def _from_stage_run(run, place: Place, client) -> Found:
    tags = run.data.tags
    stage, fingerprint = tags.get("z2h.stage"), tags.get("z2h.fingerprint")
    if stage not in MODEL_STAGES:
        raise UsageError(f"run {run.info.run_id} is the {stage or 'unknown'} stage's; it has no model")
    store = place.store
    entry = store / stage / str(fingerprint) if store else None
    tokenizer_fp = tags.get("z2h.upstream.tokenizer")
    tokenizer = store / "tokenizer" / tokenizer_fp / "tokenizer" if store and tokenizer_fp else None
    if entry is not None and is_model_folder(entry / "model") and (entry / MANIFEST).is_file():
        found = _from_entry(Entry(stage, entry.name, entry, 0.0))
        return Found(found.folder, found.tokenizer or tokenizer, stage, f"{stage}/{entry.name} (run {run.info.run_id})")
    # The store lost it: the producing run's LoggedModel holds the same files.
    model = produced_model(client, run.info.experiment_id, tags.get("z2h.producer_run_id") or run.info.run_id)
    if model is None:
        where = f"no store entry at {entry}" if entry else f"run.store {place.store_uri} is not a local folder"
        raise UsageError(f"run {run.info.run_id} ({stage}): {where} and no logged model in MLflow")
    from mlflow.artifacts import download_artifacts

    target = place.cache / model.model_id
    if not is_model_folder(target):
        target.mkdir(parents=True, exist_ok=True)
        download_artifacts(artifact_uri=model.artifact_location, dst_path=str(target))
    folder = target if is_model_folder(target) else target / "artifacts"
    if tokenizer is None or not (tokenizer / META_FILE).is_file():
        tokenizer = None
    label = f"{stage} model {model.model_id} from MLflow (run {run.info.run_id})"
    return Found(folder, tokenizer, stage, label)


def resolve(target: str | None, place: Place) -> Found:
    entries = store_models(place.store)
    if target is None:
        for stage in MODEL_STAGES:
            of_stage = [e for e in entries if e.stage == stage]
            if of_stage:
                return _from_entry(of_stage[0])
        if place.store is None:
            raise UsageError(f"name a model: {_what_exists(place)}")
        raise UsageError(f"no model in {place.store} yet: run `z2h run configs/tiny.yaml` first")
    if target.startswith("models:/"):  # a registered model version: found as the run that produced it
        from use.registered import producing_run

        target = producing_run(target, place.tracking_uri)
    stage = "pretrain" if target == "base" else target
    if stage in MODEL_STAGES:
        of_stage = [e for e in entries if e.stage == stage]
        if not of_stage:
            raise UsageError(f"no {stage} model in the store; {_what_exists(place)}")
        return _from_entry(of_stage[0])
    prefix = target.partition("/")
    if prefix[1] and prefix[0] in MODEL_STAGES:
        matches = [e for e in entries if e.stage == prefix[0] and e.fingerprint.startswith(prefix[2])]
        if len(matches) == 1:
            return _from_entry(matches[0])
    path = Path(target).expanduser()
    if path.exists():
        return _from_path(path, place)
    if RUN_ID.match(target):
        found = _from_run(target, place)
        if found is not None:
            return found
    raise UsageError(f"no run or model {target!r}; {_what_exists(place)}")
