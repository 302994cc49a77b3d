"""Console tables: the end-of-run summary and `z2h runs`."""

from __future__ import annotations

import time
from collections.abc import Mapping

from rich.console import Console
from rich.table import Table

from pipeline.redact import redact

TABLE = "table.md"  # a stage's result table, printed after the run summary
STATUS_COLOURS = {"done": "green", "cached": "cyan", "failed": "red", "killed": "yellow", "not run": "dim"}


def key_metrics(metrics: Mapping[str, float], limit: int = 3) -> str:
    shown = list(metrics.items())[:limit]
    return "  ".join(f"{k}={v:.4g}" for k, v in shown)


def print_summary(result, plan, console: Console) -> None:
    table = Table(title=f"{plan.config.run.name}: MLflow run {result.run_id}")
    for column in ("stage", "status", "seconds", "fingerprint", "metrics"):
        table.add_column(column)
    for outcome in result.outcomes:
        colour = STATUS_COLOURS.get(outcome.status, "white")
        detail = outcome.error or key_metrics(outcome.metrics)
        table.add_row(
            outcome.name, f"[{colour}]{outcome.status}[/]", f"{outcome.seconds:.1f}", outcome.fingerprint, detail
        )
    console.print(table)
    print_stage_tables(result, plan, console)
    if result.report:
        console.print(f"[bold]report:[/] {result.report}  (report.md beside it; on the MLflow run too)", soft_wrap=True)


def print_stage_tables(result, plan, console: Console) -> None:
    """Result tables stages leave in their output as `table.md` (the eval stage's base/sft/rl table), from
    the store the run's config names: rendered on a terminal, as the Markdown itself (never re-wrapped)
    in a log or pipe."""
    from rich.markdown import Markdown

    from pipeline.store import open_store

    store = open_store(plan.config.run.store, plan.config.run.workdir)
    for outcome in result.outcomes:
        if outcome.status not in ("done", "cached") or not outcome.fingerprint:
            continue
        manifest = store.lookup(outcome.name, outcome.fingerprint).manifest
        if manifest is None or TABLE not in {f.path for f in manifest.files}:
            continue
        text = (store.materialize(outcome.name, outcome.fingerprint) / TABLE).read_text()
        if console.is_terminal:
            console.print(Markdown(text))
        else:
            console.print(text, markup=False, highlight=False, soft_wrap=True)


def _duration(info) -> str:
    if not info.end_time:
        return "running"
    return f"{(info.end_time - info.start_time) / 1000:.1f}s"


def print_runs(uri: str, experiment: str | None, limit: int, console: Console) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    ids = [e.experiment_id for e in experiments if e is not None]
    shown = redact(uri)
    if not ids:
        console.print(f"no pipeline runs in {shown}")
        return
    parents = client.search_runs(
        ids, "tags.`z2h.kind` = 'pipeline'", max_results=limit, order_by=["attributes.start_time DESC"]
    )
    if not parents:
        console.print(f"no pipeline runs in {shown}")
        return
    table = Table(title=f"pipeline runs in {shown}")
    for column in ("run", "started", "status", "duration", "stages (status, seconds, metrics)"):
        table.add_column(column)
    for parent in parents:
        children = client.search_runs(
            [parent.info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            order_by=["attributes.start_time ASC"],
        )
        lines = []
        for child in children:
            hit = child.data.tags.get("z2h.cache") == "hit"
            status = "cached" if hit else child.info.status.lower()
            lines.append(
                f"{child.info.run_name:<10} {status:<8} {_duration(child.info):>8}  {key_metrics(child.data.metrics)}"
            )
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(parent.info.start_time / 1000))
        table.add_row(
            f"{parent.info.run_name}\n{parent.info.run_id}",
            started,
            parent.info.status,
            _duration(parent.info),
            "\n".join(lines) or "-",
        )
    console.print(table)
