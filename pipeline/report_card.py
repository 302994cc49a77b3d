"""The report card of one pipeline run: markdown plus a self-contained HTML page.

Everything comes from what a run leaves behind, so a report can be rebuilt for any past run:
the parent MLflow run and its stage runs (tags, metrics and their histories, times), the store
entries they point at (manifests and the files stages write), and the machine it runs on.

The core knows stages only through their contract, so stage-specific sections are found by the
shape of well-known files in a stage's output folder, never by the stage's name:

  stats.json with `blocks` ({block, docs_in, docs_out, bytes_in, bytes_out, removed})  data funnel
  stats.json with `metrics` holding `<split>_bytes_per_token`                          compression
  table.json ({columns, rows: [{task, metric, values: {column: value}}]})              eval table
  MLflow metric histories: names containing "loss" / "reward"                          curves (PNG)

A section with nothing to show says so in one line instead of failing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from pipeline.redact import redact
from pipeline.store import LocalStore, Manifest

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
IMAGES = "images"
CURVES = {"loss": "Loss curves", "reward": "Reward curves"}


# -- the document model ------------------------------------------------------------------


@dataclass
class Text:
    text: str  # one paragraph; `code` spans allowed


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]

    def numeric(self) -> list[bool]:
        """Columns whose every cell reads as a number (right-aligned)."""
        return [
            bool(self.rows) and all(_NUMBER.match(str(row[i])) for row in self.rows if i < len(row))
            for i in range(len(self.columns))
        ]


_NUMBER = re.compile(r"^(–|[-+]?[\d,]*\.?\d+(e[-+]?\d+)?( ?(%|[KMGT]?B))?)$")


@dataclass
class Image:
    name: str  # file name under images/
    png: bytes
    caption: str


@dataclass
class Code:
    text: str
    summary: str = ""  # collapsed in HTML under this summary when given


@dataclass
class Section:
    title: str
    blocks: list[Text | Table | Image | Code] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def not_run(title: str, why: str) -> Section:
    return Section(title, [Text(f"Not run: {why}.")])


# -- what a run left behind --------------------------------------------------------------


@dataclass
class StageView:
    """One stage of the pipeline run, as MLflow and the store recorded it."""

    name: str
    status: str  # done | cached | failed | killed | running | not run
    run: Any = None  # the stage's MLflow run in this pipeline run (None: not run)
    history_run_id: str = ""  # where its metric histories live (the producer, for a cache hit)
    fingerprint: str = ""
    manifest: Manifest | None = None
    resources: str = ""
    store: Any = None

    @property
    def wall(self) -> float | None:
        info = self.run.info if self.run else None
        if info is None or not info.end_time:
            return None
        return (info.end_time - info.start_time) / 1000

    def read_json(self, name: str) -> Any:
        """A JSON file the stage wrote at the top of its output folder (None if it wrote none)."""
        if self.manifest is None or name not in {f.path for f in self.manifest.files}:
            return None
        try:
            # A remote store downloads the entry into its local cache (downstream stages did already).
            return json.loads((self.store.materialize(self.name, self.fingerprint) / name).read_text())
        except (OSError, ValueError):
            return None


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
    store: Any,
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
                view.store, view.manifest = store, store.lookup(name, view.fingerprint).manifest
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


# -- formatting ----------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:,.1f}"


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


# -- sections ------------------------------------------------------------------------------


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
    columns = ["stage", "status", "wall s", "in stage s", "overhead s", "resources", "output", "files"]
    blocks: list[Any] = [Table([*columns, "fingerprint"], rows)]
    info = view.parent.info
    end = info.end_time or time.time() * 1000
    pipeline_wall = (end - info.start_time) / 1000
    blocks.append(
        Text(
            f"Pipeline wall time {pipeline_wall:.1f} s from the parent run's start; stage runs {total_wall:.1f} s, "
            f"of which {total_stage:.1f} s inside stages' `run` (manifest `seconds`). *Overhead* is the rest of a "
            "stage run: starting its Ray task (a fresh worker imports the stage), MLflow logging, the store commit. "
            "Resources are what each stage asked Ray for: workers x (CPUs, GPUs)."
        )
    )
    return Section("Time and resources per stage", blocks)


def key_metrics(view: RunView, limit: int = 8) -> Section:
    rows = []
    for stage in view.stages:
        metrics = stage.manifest.metrics if stage.manifest else {}
        if not metrics and stage.run is not None:
            metrics = stage.run.data.metrics
        shown = list(metrics.items())[:limit]  # stages put their headline metrics first
        rows += [[stage.name, key, fmt(value)] for key, value in shown]
    if not rows:
        return not_run("Key metrics", "no stage finished")
    return Section("Key metrics", [Table(["stage", "metric", "value"], rows)])


def _removed(reasons: Mapping[str, int]) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])) or "–"


def funnel(view: RunView) -> Section:
    title = "Data funnel"
    blocks: list[Any] = []
    for stage in view.stages:
        stats = stage.read_json("stats.json")
        if not isinstance(stats, dict) or not isinstance(stats.get("blocks"), list) or not stats["blocks"]:
            continue
        rows = [
            [
                b["block"],
                fmt(b["docs_in"]),
                fmt(b["docs_out"]),
                pct(b["docs_out"], b["docs_in"]),
                fmt_bytes(b["bytes_in"]),
                fmt_bytes(b["bytes_out"]),
                pct(b["bytes_out"], b["bytes_in"]),
                _removed(b.get("removed", {})),
            ]
            for b in stats["blocks"]
        ]
        first, last = stats["blocks"][0], stats["blocks"][-1]
        docs_in, docs_out = stats.get("documents_in", first["docs_in"]), stats.get("documents_out", last["docs_out"])
        bytes_in, bytes_out = stats.get("bytes_in", first["bytes_in"]), stats.get("bytes_out", last["bytes_out"])
        blocks.append(
            Text(
                f"`{stage.name}`: {docs_in:,} documents in, {docs_out:,} kept ({pct(docs_out, docs_in)}); "
                f"{fmt_bytes(bytes_in)} in, {fmt_bytes(bytes_out)} out ({pct(bytes_out, bytes_in)} of the bytes). "
                "Each row is one filter in the order documents flow through; removals are per named reason."
            )
        )
        columns = ["filter", "docs in", "docs out", "kept", "bytes in", "bytes out", "bytes kept", "removed"]
        blocks.append(Table(columns, rows))
        dedup = stats.get("dedup") or {}
        if dedup:
            shown = {k: v for k, v in dedup.items() if isinstance(v, int | float)}
            blocks.append(Text("Deduplication: " + ", ".join(f"{k} {fmt(v)}" for k, v in shown.items()) + "."))
    return Section(title, blocks) if blocks else not_run(title, "no stage wrote a filter funnel (`stats.json`)")


def compression(view: RunView) -> Section:
    title = "Tokenizer compression"
    blocks: list[Any] = []
    for stage in view.stages:
        stats = stage.read_json("stats.json")
        metrics = stats.get("metrics") if isinstance(stats, dict) else None
        if not isinstance(metrics, dict):
            continue
        splits = [k.removesuffix("_bytes_per_token") for k in metrics if k.endswith("_bytes_per_token")]
        splits = [s for s in splits if not s.endswith("_gpt2")]
        if not splits:
            continue
        rows = [
            [
                split,
                fmt(metrics.get(f"{split}_documents")),
                fmt(metrics.get(f"{split}_tokens")),
                fmt(metrics.get(f"{split}_bytes_per_token")),
                fmt(metrics.get(f"{split}_gpt2_bytes_per_token")),
                fmt(metrics.get(f"{split}_compression_vs_gpt2")),
            ]
            for split in splits
        ]
        facts = [f"`{stage.name}`: vocabulary {fmt(metrics.get('vocab_size'))} tokens"]
        if "train_mb" in metrics:
            facts.append(f"trained on {metrics['train_mb']:.2f} MB in {metrics.get('train_seconds', 0):.1f} s")
        blocks.append(
            Text(
                "; ".join(facts) + ". Bytes per token: higher compresses better; the last column is ours "
                "divided by GPT-2's vocabulary on the same text (above 1: ours compresses better)."
            )
        )
        columns = ["split", "documents", "tokens", "bytes/token", "GPT-2 bytes/token", "vs GPT-2"]
        blocks.append(Table(columns, rows))
    return Section(title, blocks) if blocks else not_run(title, "no stage reported bytes per token (`stats.json`)")


def _rows_of(table: Any) -> tuple[list[str], list[list[Any]]] | None:
    """An eval table in one of the shapes stages write: the eval stage's {columns, rows: [{task,
    metric, values}]}, a list of row dicts, or a dict of column lists."""
    if isinstance(table, dict) and isinstance(table.get("rows"), list) and isinstance(table.get("columns"), list):
        models = [str(c) for c in table["columns"]]
        rows = []
        for row in table["rows"]:
            if not isinstance(row, dict):
                continue
            values = row.get("values") or {}
            counts = sorted(set((row.get("n") or {}).values()))
            rows.append(
                [
                    row.get("task", row.get("key", "?")),
                    row.get("metric", ""),
                    "/".join(map(str, counts)) or "–",
                    fmt(row.get("chance")),
                    *[fmt(values.get(m)) for m in models],
                ]
            )
        return ["task", "metric", "n", "chance", *models], rows
    if isinstance(table, list) and table and all(isinstance(r, dict) for r in table):
        columns = list(dict.fromkeys(k for r in table for k in r))
        return columns, [[fmt(r.get(c)) for c in columns] for r in table]
    if isinstance(table, dict) and table and all(isinstance(v, list) for v in table.values()):
        columns = list(table)
        length = max(len(v) for v in table.values())
        return columns, [[fmt(table[c][i] if i < len(table[c]) else None) for c in columns] for i in range(length)]
    return None


def evaluation(view: RunView) -> Section:
    title = "Evaluation"
    blocks: list[Any] = []
    for stage in view.stages:
        found = _rows_of(stage.read_json("table.json"))
        if found is None:
            continue
        columns, rows = found
        blocks += [Text(f"`{stage.name}` (`table.json`):"), Table(columns, rows)]
    return Section(title, blocks) if blocks else not_run(title, "no stage wrote an eval table (`table.json`)")


def in_step_order(points: Sequence[Any]) -> list[Any]:
    """A metric history by step, without points logged after a later step: the runner logs a stage's
    returned metrics at step 0 once it is done, which would otherwise pull the curve back to its start."""
    ordered = sorted(points, key=lambda m: (m.step, m.timestamp))
    kept, earliest_later = [], float("inf")
    for point in reversed(ordered):
        if point.timestamp <= earliest_later:
            kept.append(point)
            earliest_later = min(earliest_later, point.timestamp)
    return kept[::-1]


def _histories(client: Any, run_id: str, names: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
    curves = {}
    for name in names:
        history = client.get_metric_history(run_id, name)
        if len({m.step for m in history}) == 1:  # logged without steps: plot in logging order
            ordered = sorted(history, key=lambda m: m.timestamp)
            points = [(i, m.value) for i, m in enumerate(ordered)]
        else:
            points = [(m.step, m.value) for m in in_step_order(history)]
        if len(points) > 1:
            curves[name] = points
    return curves


def plot(title: str, curves: Mapping[str, Sequence[tuple[int, float]]], ylabel: str) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    figure = Figure(figsize=(7.0, 3.6), dpi=100)
    axes = figure.add_subplot()
    for name, points in sorted(curves.items()):
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, label=name, marker="." if len(points) < 20 else None, linewidth=1.4)
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def curves(view: RunView, client: Any) -> list[Section]:
    per_kind: dict[str, list[Any]] = {kind: [] for kind in CURVES}
    for stage in view.stages:
        if stage.run is None or stage.status not in ("done", "cached", "failed", "killed"):
            continue
        run_id = stage.history_run_id or stage.run.info.run_id
        try:
            names = list(client.get_run(run_id).data.metrics)
        except Exception:  # the producing run was deleted: nothing to plot
            continue
        for kind in CURVES:
            found = _histories(client, run_id, [n for n in names if kind in n.lower()])
            if found:
                where = "" if run_id == stage.run.info.run_id else f" (from the producing run {run_id})"
                name = f"{kind}_{stage.name}.png"
                per_kind[kind].append(Image(name, plot(f"{stage.name}: {kind}", found, kind), f"{stage.name}{where}"))
    sections = []
    for kind, title in CURVES.items():
        images = per_kind[kind]
        why = f"no stage logged a metric named *{kind}* at more than one step"
        sections.append(Section(title, images) if images else not_run(title, why))
    return sections


def hardware() -> list[list[str]]:
    rows = [["host", platform.node()], ["OS", platform.platform()], ["CPU", _cpu_model()]]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows.append(["cores", f"{os.cpu_count()} ({usable} usable by this process)"])
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        rows.append(["memory", f"{memory / 2**30:.1f} GiB"])
    except (ValueError, OSError, AttributeError):
        pass
    rows.append(["GPUs", _gpus()])
    ray_line = _ray_cluster()
    if ray_line:
        rows.append(["Ray cluster", ray_line])
    versions = [f"Python {platform.python_version()}"]
    for package in ("torch", "ray", "mlflow", "zero2hero"):
        with contextlib.suppress(PackageNotFoundError):
            versions.append(f"{package} {version(package)}")
    rows.append(["software", ", ".join(versions)])
    return rows


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> str:
    """From torch when the process has it loaded (`z2h run` does), else from nvidia-smi: importing
    torch only to count GPUs costs seconds."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "cuda"):
        if not torch.cuda.is_available():
            return "none"
        names = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            names.append(f"{props.name} ({props.total_memory / 2**30:.0f} GiB)")
        return ", ".join(names)
    if shutil.which("nvidia-smi") is None:
        return "none (no nvidia-smi)"
    try:
        query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi failed)"
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return ", ".join(lines) if out.returncode == 0 and lines else "none"


def _ray_cluster() -> str:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    try:
        resources = ray.cluster_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    except Exception:
        return ""
    parts = [f"{nodes} node{'s' if nodes != 1 else ''}", f"{resources.get('CPU', 0):g} CPU"]
    parts.append(f"{resources.get('GPU', 0):g} GPU")
    if "memory" in resources:
        parts.append(f"{resources['memory'] / 2**30:.1f} GiB memory")
    return ", ".join(parts)


def git_state() -> tuple[str, bool | None]:
    """HEAD of the checkout this code runs from, and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return "unknown", None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


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
    store: Any,
    resources: Mapping[str, str] | None = None,
    tracking_uri: str = "",
    config_text: str | None = None,
) -> tuple[RunView, list[Section]]:
    view = collect(client, run_id, store, resources, tracking_uri, config_text)
    commit = view.parent.data.tags.get("z2h.git_commit", "")
    here, dirty = git_state()
    if not commit or commit == "unknown":
        commit = here
    dirty = dirty if commit == here else None
    sections = [
        overview(view, commit or "unknown", dirty),
        timings(view),
        key_metrics(view),
        funnel(view),
        compression(view),
        *curves(view, client),
        evaluation(view),
        Section("Hardware", [Table(["", ""], hardware())]),
        config_section(view),
    ]
    return view, sections


# -- rendering ---------------------------------------------------------------------------------


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, sections: Sequence[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                lines += [block.text, ""]
            elif isinstance(block, Table):
                lines.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
                aligns = ["--:" if numeric else "---" for numeric in block.numeric()]
                lines.append("|" + "|".join(aligns) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                lines.append("")
            elif isinstance(block, Image):
                lines += [f"![{block.caption}]({IMAGES}/{block.name})", "", f"*{block.caption}*", ""]
            elif isinstance(block, Code):
                lines += ["```yaml", block.text.rstrip("\n"), "```", ""]
    return "\n".join(lines)


_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"), (re.compile(r"\*([^*]+)\*"), r"<em>\1</em>")]


def _inline(text: str) -> str:
    out = html.escape(str(text), quote=False)
    for pattern, replacement in _INLINE:
        out = pattern.sub(replacement, out)
    return out


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:8px 0 4px}
h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #e3e6eb;padding-bottom:4px}
nav{font-size:13px;color:#556}nav a{margin-right:12px;color:#2a5db0;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13px}
th,td{border:1px solid #e0e3e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;white-space:nowrap}td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
code{background:#f0f2f5;padding:1px 4px;border-radius:3px;font-size:12px}
pre{background:#f6f8fa;padding:12px;overflow:auto;font-size:12px;border:1px solid #e3e6eb}
figure{margin:8px 0 16px}figcaption{font-size:12px;color:#556}img{max-width:100%}
"""


def to_html(title: str, sections: Sequence[Section]) -> str:
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
        "<nav>" + "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections) + "</nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Text):
                parts.append(f"<p>{_inline(block.text)}</p>")
            elif isinstance(block, Table):
                head = "".join(f"<th>{_inline(c)}</th>" for c in block.columns)
                head = f"<thead><tr>{head}</tr></thead>" if any(block.columns) else ""
                numeric = block.numeric()
                body = []
                for row in block.rows:
                    cells = []
                    for index, cell in enumerate(row):
                        klass = ' class="n"' if index < len(numeric) and numeric[index] else ""
                        cells.append(f"<td{klass}>{_inline(cell)}</td>")
                    body.append("<tr>" + "".join(cells) + "</tr>")
                parts.append(f"<table>{head}<tbody>{''.join(body)}</tbody></table>")
            elif isinstance(block, Image):
                data = base64.b64encode(block.png).decode()
                alt = html.escape(block.caption)
                parts.append(
                    f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
                )
            elif isinstance(block, Code):
                pre = f"<pre>{html.escape(block.text)}</pre>"
                summary = html.escape(block.summary)
                parts.append(f"<details><summary>{summary}</summary>{pre}</details>" if block.summary else pre)
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


# -- entry point --------------------------------------------------------------------------------


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
    store: Any = None,
    resources: Mapping[str, str] | None = None,
    config_text: str | None = None,
    log: Callable[[Path], None] | None = None,
) -> Report:
    """Build the report of pipeline run `run_id` into `<workdir>/reports/<run_id>/` and, when `log`
    is given, hand it the folder (the runner logs it on the parent run).

    `store` (default: `<workdir>/store`), `resources` (stage -> "2x(1 CPU)") and `config_text` come from
    the runner when it has them; without them the resources column stays empty and the config is read
    from the run's `config.yaml` artifact."""
    from mlflow import MlflowClient

    started = time.perf_counter()
    client = MlflowClient(tracking_uri=tracking_uri)
    store = store if store is not None else LocalStore(workdir / "store")
    view, sections = build(client, run_id, store, resources, tracking_uri, config_text)
    folder = workdir / "reports" / run_id
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Image):
                (folder / IMAGES / block.name).write_bytes(block.png)
    title = f"z2h report: {view.parent.data.tags.get('z2h.config', '')} {view.parent.info.run_name}".strip()
    markdown, page = folder / REPORT_MD, folder / REPORT_HTML
    markdown.write_text(to_markdown(title, sections))
    page.write_text(to_html(title, sections))
    if log is not None:
        log(folder)
    return Report(folder, markdown, page, [s.title for s in sections], time.perf_counter() - started)
