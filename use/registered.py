"""Registered-model targets: `models:/<name>@<alias>` or `models:/<name>/<version>` -> the MLflow run
that produced that version (`pipeline.model_registry` registers every pipeline run's models), which
`locate` then finds in the store or fetches back from MLflow. `@latest` and `/latest` are the newest
version (MLflow reserves `latest` as an alias name).
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import UsageError

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w.-]+)|/(?P<version>\d+|latest))$")


def producing_run(target: str, tracking_uri: str | None) -> str:
    """The run id of the registered model version `target` names; a UsageError says what exists instead."""
    match = MODEL_URI.match(target)
    if match is None:
        raise UsageError(f"{target!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    if not tracking_uri or (
        tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file()
    ):
        raise UsageError(f"{target}: no MLflow tracking store to ask (tracking URI {tracking_uri})")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, number = match["name"], match["alias"], match["version"]
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        names = ", ".join(sorted(m.name for m in client.search_registered_models(max_results=20))) or "none"
        raise UsageError(f"{target}: no registered model {name!r} (registered: {names})") from None
    if "latest" in (alias, number):
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise UsageError(f"{target}: {name} has no versions")
        version = max(versions, key=lambda v: int(v.version))
    elif alias:
        if alias not in registered.aliases:
            known = ", ".join(f"@{a}" for a in sorted(registered.aliases)) or "none"
            raise UsageError(f"{target}: {name} has no alias {alias!r} (aliases: {known}, or @latest)")
        version = client.get_model_version(name, registered.aliases[alias])
    else:
        try:
            version = client.get_model_version(name, number)
        except MlflowException:
            raise UsageError(f"{target}: {name} has no version {number}") from None
    if not version.run_id:
        raise UsageError(f"{target}: version {version.version} of {name} names no producing run")
    return version.run_id
