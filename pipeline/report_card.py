"""The report card of one pipeline run: what the run left behind, collected into sections
(`pipeline.report_blocks`) and written as report.md plus a self-contained report.html
(`pipeline.report_render`).

Everything comes from what a run leaves behind, so a report can be rebuilt for any past run: the
parent MLflow run and its stage runs (tags, metrics and their histories, times), the store entries
they point at, and the machine it runs on. The core writes the sections every pipeline has (run,
time, key metrics, curves, hardware, config); each stage that declares a `Stage.report` adds its
own, built from its committed output folder and metrics, in pipeline order after the key metrics.
A section with nothing to show says so in one line instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import host, report_render
from pipeline.redact import redact
from pipeline.report_blocks import Code, Image, Section, Table, Text, fmt, fmt_bytes, fmt_seconds, not_run
from pipeline.report_curves import CurveSource, curve_sections
from pipeline.stage import Stage, StageReport
from pipeline.store import Manifest, Store

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
IMAGES = "images"


@dataclass
class StageView:
    """One stage of the pipeline run, as MLflow and the store recorded it."""

    name: str
    status: str  # done | cached | failed | killed | running | not run
    run: Any = None  # the stage's MLflow run in this pipeline run (None: not run)
    history_run_id: str = ""  # where its metric histories live (the producer, for a cache hit)
    fingerprint: str = ""
    manifest: Manifest | None = None  # its committed store entry (None: none)
    resources: str = ""

    @property
    def wall(self) -> float | None:
        info = self.run.info if self.run else None
        if info is None or not info.end_time:
            return None
        return (info.end_time - info.start_time) / 1000


@dataclass
class RunView:
    parent: Any
    stages: list[StageView]
    config_text: str
    tracking_uri: str


def _status(run: Any) -> str:
    if run.data.tags.get("z2h.cache") == "hit":
        return "cached"
    return {"FINISHED": "done", "FAILED": "failed", "KILLED": "killed"}.get(run.info.status, "running")


def collect(
    client: Any,
    run_id: str,
    store: Store,
    resources: Mapping[str, str] | None = None,
    tracking_uri: str = "",
    config_text: str | None = None,
) -> RunView:
    parent = client.get_run(run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    by_name = {c.data.tags.get("z2h.stage", c.info.run_name): c for c in children}
    planned = [s for s in parent.data.tags.get("z2h.stages", "").split(",") if s]
    names = planned + [n for n in by_name if n not in planned]
    stages = []
    for name in names:
        run = by_name.get(name)
        view = StageView(name, "not run", resources=(resources or {}).get(name, ""))
        if run is not None:
            tags = run.data.tags
            view.run, view.status = run, _status(run)
            view.fingerprint = tags.get("z2h.fingerprint", "")
            view.history_run_id = tags.get("z2h.producer_run_id", "") if view.status == "cached" else run.info.run_id
            if view.history_run_id in ("", "unknown"):
                view.history_run_id = run.info.run_id
            if view.fingerprint:
                view.manifest = store.lookup(name, view.fingerprint).manifest
        stages.append(view)
    if config_text is None:
        config_text = _config_text(client, run_id)
    return RunView(parent, stages, config_text, tracking_uri)


def _config_text(client: Any, run_id: str) -> str:
    """The resolved config the runner logged as `config.yaml` on the parent run."""
    import tempfile

    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    saved = {key: os.environ.get(key) for key in quiet}
    os.environ.update(quiet)
    try:
        with tempfile.TemporaryDirectory() as folder:
            return Path(client.download_artifacts(run_id, "config.yaml", folder)).read_text()
    except Exception:  # an old run without the artifact, or an unreachable artifact store
        return ""
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- the core's sections -------------------------------------------------------------------


def overview(view: RunView, commit: str, dirty: bool | None) -> Section:
    info, tags = view.parent.info, view.parent.data.tags
    end = info.end_time or time.time() * 1000
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.start_time / 1000))
    counts: dict[str, int] = {}
    for stage in view.stages:
        counts[stage.status] = counts.get(stage.status, 0) + 1
    status = info.status if info.end_time else ("FAILED" if counts.get("failed") else "FINISHED")
    rows = [
        ["pipeline", tags.get("z2h.config", "?")],
        ["MLflow run", f"{info.run_name} ({info.run_id})"],
        ["status", status],
        ["stages", ", ".join(f"{n} {k}" for k, n in counts.items()) or "none"],
        ["started", started],
        ["wall time", f"{(end - info.start_time) / 1000:.1f} s"],
        ["command", f"`{tags.get('z2h.command', '?')}`"],
        ["config files", tags.get("z2h.config_files", "?")],
        ["git commit", commit + (" (uncommitted changes)" if dirty else "")],
        ["z2h version", tags.get("z2h.version", "?")],
        ["tracking", redact(view.tracking_uri)],
    ]
    return Section("Run", [Table(["", ""], rows)])


def timings(view: RunView) -> Section:
    """Wall time per stage, the part spent in the stage itself, and what it held."""
    rows = []
    total_wall = total_stage = 0.0
    for stage in view.stages:
        manifest = stage.manifest
        wall = stage.wall
        inside = manifest.seconds if manifest and stage.status == "done" else None
        overhead = wall - inside if wall is not None and inside is not None else None
        total_wall += wall or 0.0
        total_stage += inside or 0.0
        built = f"cached (built in {fmt_seconds(manifest.seconds)} s)" if stage.status == "cached" and manifest else ""
        rows.append(
            [
                stage.name,
                built or stage.status,
                fmt_seconds(wall),
                fmt_seconds(inside),
                fmt_seconds(overhead),
                stage.resources or "–",
                fmt_bytes(manifest.total_bytes) if manifest else "–",
                f"{len(manifest.files):,}" if manifest else "–",
                f"`{stage.fingerprint}`" if stage.fingerprint else "–",
            ]
        )
    columns = ["stage", "status", "wall s", "in stage s", "overhead s", "resources", "output", "files", "fingerprint"]
    info = view.parent.info
    pipeline_wall = ((info.end_time or time.time() * 1000) - info.start_time) / 1000
    note = Text(
        f"Pipeline wall time {pipeline_wall:.1f} s from the parent run's start; stage runs {total_wall:.1f} s, "
        f"of which {total_stage:.1f} s inside stages' `run` (manifest `seconds`). *Overhead* is the rest of a "
        "stage run: starting its Ray task (a fresh worker imports the stage), MLflow logging, the store commit. "
        "Resources are what each stage asked Ray for: workers x (CPUs, GPUs)."
    )
    return Section("Time and resources per stage", [Table(columns, rows), note])


def key_metrics(view: RunView, stages: Mapping[str, Stage], limit: int = 8) -> Section:
    """Each stage's first `limit` metrics, its headline first."""
    rows = []
    for stage in view.stages:
        metrics = stage.manifest.metrics if stage.manifest else {}
        if not metrics and stage.run is not None:
            metrics = stage.run.data.metrics
        if stage.name in stages:
            metrics = stages[stage.name].ordered(metrics)
        rows += [[stage.name, key, fmt(value)] for key, value in list(metrics.items())[:limit]]
    if not rows:
        return not_run("Key metrics", "no stage finished")
    return Section("Key metrics", [Table(["stage", "metric", "value"], rows)])


def stage_section(report: StageReport, view: StageView, store: Store) -> Section:
    """The section a stage declares, built from its committed output; 'Not run' without one."""
    title = report.title
    if view.manifest is None:
        return not_run(title, f"`{view.name}` has no committed output ({view.status})")
    try:
        blocks = report.build(store.materialize(view.name, view.fingerprint), view.manifest.metrics)
    except Exception as exc:  # one unreadable output must not cost the whole report
        return Section(title, [Text(f"Not shown: `{view.name}`'s section failed ({type(exc).__name__}: {exc}).")])
    return Section(title, list(blocks))


def config_fingerprint(config_text: str) -> str:
    """sha256 of the resolved config (canonical JSON of the YAML), first 20 hex digits."""
    data = yaml.safe_load(config_text) if config_text else None
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def config_section(view: RunView) -> Section:
    rows = []
    if view.config_text:
        rows.append(["resolved config", f"`{config_fingerprint(view.config_text)}` (sha256 of `config.yaml`)"])
    prints = [f"{s.name}={s.fingerprint}" for s in view.stages if s.fingerprint]
    if prints:
        outputs = hashlib.sha256("\n".join(prints).encode()).hexdigest()[:20]
        rows.append(["stage outputs", f"`{outputs}` (sha256 of the stage fingerprints)"])
    rows += [[f"stage `{s.name}`", f"`{s.fingerprint}`"] for s in view.stages if s.fingerprint]
    blocks: list[Any] = [Table(["", "fingerprint"], rows)]
    if view.config_text:
        blocks.append(Code(view.config_text, "resolved config.yaml"))
    else:
        blocks.append(Text("Not run: the parent run has no `config.yaml` artifact."))
    return Section("Config", blocks)


def build(
    client: Any,
    run_id: str,
    store: Store,
    stages: Mapping[str, Stage],
    resources: Mapping[str, str] | None = None,
    tracking_uri: str = "",
    config_text: str | None = None,
) -> tuple[RunView, list[Section]]:
    view = collect(client, run_id, store, resources, tracking_uri, config_text)
    commit = view.parent.data.tags.get("z2h.git_commit", "")
    here, dirty = host.git_state()
    if not commit or commit == "unknown":
        commit = here
    dirty = dirty if commit == here else None
    reports = {name: stage.report for name, stage in stages.items() if stage.report is not None}
    plotted = [
        CurveSource(s.name, s.run.info.run_id, s.history_run_id)
        for s in view.stages
        if s.run is not None and s.status in ("done", "cached", "failed", "killed")
    ]
    sections = [
        overview(view, commit or "unknown", dirty),
        timings(view),
        key_metrics(view, stages),
        *(stage_section(reports[s.name], s, store) for s in view.stages if s.name in reports),
        *curve_sections(plotted, client),
        Section("Hardware", [Table(["", ""], host.hardware())]),
        config_section(view),
    ]
    return view, sections


@dataclass
class Report:
    folder: Path
    markdown: Path
    html: Path
    sections: list[str]
    seconds: float


def write(
    tracking_uri: str,
    run_id: str,
    workdir: Path,
    *,
    store: Store,
    stages: Mapping[str, Stage] | None = None,
    resources: Mapping[str, str] | None = None,
    config_text: str | None = None,
    log: Callable[[Path], None] | None = None,
) -> Report:
    """Build the report of pipeline run `run_id` into `<workdir>/reports/<run_id>/` and, when `log`
    is given, hand it the folder (the runner logs it on the parent run).

    `store` holds the run's outputs (the one its config names). `stages` (default: every installed
    stage) supply the stage sections; `resources` (stage -> "2x(1 CPU)") and `config_text` come from
    the runner when it has them: without them the resources column stays empty and the config is read
    from the run's `config.yaml` artifact."""
    from mlflow import MlflowClient

    from pipeline import registry

    started = time.perf_counter()
    client = MlflowClient(tracking_uri=tracking_uri)
    stages = registry.stages() if stages is None else stages
    view, sections = build(client, run_id, store, stages, resources, tracking_uri, config_text)
    folder = workdir / "reports" / run_id
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Image):
                (folder / IMAGES / block.name).write_bytes(block.png)
    title = f"z2h report: {view.parent.data.tags.get('z2h.config', '')} {view.parent.info.run_name}".strip()
    markdown, page = folder / REPORT_MD, folder / REPORT_HTML
    markdown.write_text(report_render.to_markdown(title, sections, IMAGES))
    page.write_text(report_render.to_html(title, sections))
    if log is not None:
        log(folder)
    return Report(folder, markdown, page, [s.title for s in sections], time.perf_counter() - started)
