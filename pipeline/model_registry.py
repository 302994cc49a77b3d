"""The MLflow Model Registry: a pipeline's models as versions of one registered model, named after
the pipeline (`run.name`).

After a run, every stage run (built, or reused from the store) whose producing run logged a
LoggedModel registers it as a version, once per LoggedModel: a rerun that reuses a stage adds no
version, it only moves the aliases. The alias is the LoggedModel's name, which says what the model
is (`base`, `sft`, `rl`), so `models:/<pipeline>@sft` is always the latest run's SFT model. MLflow
reserves the alias `latest`: the newest version is `models:/<pipeline>/latest` (and `z2h` reads
`@latest` the same way). Each version's tags link it to its producing run, fingerprint and upstream
fingerprints, and to the pipeline run that registered it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.lineage import Tracker

UPSTREAM_TAG = "z2h.upstream."
MODEL_ID_TAG = "z2h.model_id"  # the LoggedModel a version registers


@dataclass(frozen=True)
class Registered:
    alias: str
    version: str
    model_id: str
    new: bool  # False: an earlier run registered this LoggedModel


def register(parent: Tracker, name: str, stage_runs: Iterable[str]) -> list[Registered]:
    """Register the models of the stage runs of the pipeline run `parent` under `name`; set their aliases."""
    client = parent.client
    _ensure_registered_model(client, name)
    versions = client.search_model_versions(f"name = '{name}'")  # sqlite's search leaves model_id empty: a tag
    known = {v.tags[MODEL_ID_TAG]: v for v in versions if MODEL_ID_TAG in v.tags}
    done = []
    for run_id in stage_runs:
        run = client.get_run(run_id)
        producer = run.data.tags.get("z2h.producer_run_id") or run_id  # a reused stage points at its producer
        models = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{producer}'", max_results=1
        )
        if not models:
            continue  # not a model stage
        model = models[0]
        version = known.get(model.model_id)
        new = version is None
        if new:
            tags = {key: value for key, value in run.data.tags.items() if key.startswith(UPSTREAM_TAG)}
            tags |= {
                "z2h.stage": run.data.tags.get("z2h.stage", ""),
                "z2h.fingerprint": run.data.tags.get("z2h.fingerprint", ""),
                "z2h.producer_run_id": producer,
                "z2h.pipeline_run_id": parent.run_id,
                MODEL_ID_TAG: model.model_id,
            }
            version = client.create_model_version(
                name,
                source=model.artifact_location,  # not models:/<id>: MLflow resolves that on the global tracking URI
                run_id=producer,
                tags=tags,
                model_id=model.model_id,
                description=f"{model.name} model of pipeline run {parent.run_id}",
            )
            known[model.model_id] = version
        client.set_registered_model_alias(name, model.name, version.version)
        done.append(Registered(model.name, str(version.version), model.model_id, new))
    if done:
        parent.set_tags({"z2h.registered": ", ".join(f"{r.alias}=v{r.version}" for r in done)})
    return done


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description=f"models of the z2h pipeline {name!r}")
        except MlflowException:  # registered meanwhile by another run of the same pipeline
            client.get_registered_model(name)
