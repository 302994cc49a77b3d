"""The report card: every section renders for a small run, missing sections say so, the HTML is
self-contained, the report is logged on the parent run, and `z2h run` prints its path."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import lineage, report_card
from pipeline.store import LocalStore, Manifest, open_store

CORE_SECTIONS = [
    "Run",
    "Time and resources per stage",
    "Key metrics",
    "Loss curves",
    "Reward curves",
    "Hardware",
    "Config",
]
STAGE_SECTIONS = ["Data funnel", "Tokenizer compression", "Evaluation"]  # the stages' own, in pipeline order
SECTIONS = [*CORE_SECTIONS[:3], *STAGE_SECTIONS, *CORE_SECTIONS[3:]]
PNG = b"\x89PNG\r\n\x1a\n"
CONFIG = "run: {name: tiny, seed: 7}\nstages: {data: {tasks: 2}, tokenizer: {vocab_size: 512}}\n"


def data_stats() -> dict:
    """A funnel built by the data stage's own accounting (stages.data.report.build_stats)."""
    from stages.data.funnel import Tally
    from stages.data.report import build_stats

    tally = Tally()
    for index in range(10):
        size = 1000 + index
        tally.block("read")
        tally.count("read.in", size)
        if index == 0:
            tally.remove("read", "http_status", {"url": "u0", "text": ""})
            continue
        tally.count("read.out", size)
        tally.block("url_filter")
        tally.count("url_filter.in", size)
        if index < 3:
            tally.remove("url_filter", "blacklisted", {"url": f"u{index}", "text": "x"})
            continue
        tally.count("url_filter.out", size // 2)
    return build_stats([tally.to_dict()], {"clusters": 1, "largest_cluster": 2}, shards=1)


def tokenizer_stats() -> dict:
    metrics = {"train_tokens": 9000.0, "vocab_size": 512.0, "train_mb": 0.03, "train_seconds": 0.2}
    for split, bpt in (("train", 3.5), ("val", 3.4)):
        metrics |= {
            f"{split}_documents": 10.0,
            f"{split}_tokens": 9000.0,
            f"{split}_bytes_per_token": bpt,
            f"{split}_gpt2_bytes_per_token": 4.5,
            f"{split}_compression_vs_gpt2": bpt / 4.5,
        }
    return {"metrics": metrics, "corpus": {"files": 1}, "shards": {}}


def eval_table() -> dict:
    """The eval stage's table.json shape: rows are tasks, columns the models."""
    rows = [
        {"key": "bpb", "task": "held-out text", "metric": "bits/byte", "chance": None, "values": {"base": 2.4}},
        {
            "key": "arith",
            "task": "arithmetic",
            "metric": "accuracy",
            "chance": 0.0,
            "values": {"base": 0.1, "sft": 0.5, "rl": 0.7},
            "n": {"base": 64, "sft": 64, "rl": 64},
        },
    ]
    return {"columns": ["base", "sft", "rl"], "models": {}, "rows": rows}


def commit(store: LocalStore, stage: str, fp: str, run_id: str, files: dict[str, object], seconds: float) -> None:
    staging = store.staging(stage, fp)
    for name, content in files.items():
        (staging / name).write_text(json.dumps(content))
    metrics = tokenizer_stats()["metrics"] if stage == "tokenizer" else {"headline": 1.5, "second": 2.0}
    manifest = Manifest(stage, fp, [], metrics=metrics, run_id=run_id, seconds=seconds)
    store.commit(staging, manifest)


@pytest.fixture
def tiny_run(tmp_path: Path):
    """A parent run with five stage runs as the runner leaves them: data and tokenizer reused from an
    earlier run, pretrain/rl/eval executed; losses and rewards logged with steps."""
    workdir = tmp_path / "work"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    lineage.check_tracking(uri)
    experiment = lineage.experiment_id(uri, "tiny", workdir / "mlartifacts")
    store = LocalStore(workdir / "store")
    producer = lineage.start_run(uri, experiment, "data-earlier", {"z2h.kind": "stage", "z2h.stage": "data"})
    lineage.end_run(producer, "FINISHED")
    names = ["data", "tokenizer", "pretrain", "rl", "eval"]
    tags = {"z2h.kind": "pipeline", "z2h.config": "tiny", "z2h.stages": ",".join(names), "z2h.git_commit": "abc123"}
    tags |= {"z2h.command": "z2h run configs/tiny.yaml", "z2h.version": "0.1.0"}
    parent = lineage.start_run(uri, experiment, "tiny-1", tags)
    outputs = {
        "data": {"stats.json": data_stats()},
        "tokenizer": {"stats.json": tokenizer_stats()},
        "pretrain": {"train_stats.json": {"metrics": {}}},
        "rl": {"stats.json": {"metrics": {"reward": 0.5}}},
        "eval": {"table.json": eval_table(), "table.md": "| task |"},
    }
    for index, name in enumerate(names):
        fp = f"{name}-fp-{index}"
        cached = name in ("data", "tokenizer")
        run_tags = {"z2h.kind": "stage", "z2h.stage": name, "z2h.fingerprint": fp}
        run_tags |= {"z2h.cache": "hit", "z2h.producer_run_id": producer.run_id} if cached else {"z2h.cache": "miss"}
        stage = lineage.start_run(uri, experiment, name, run_tags, parent_run_id=parent.run_id)
        if name == "pretrain":
            for step in range(0, 50, 10):
                stage.log_metrics({"train/loss": 5.0 - step / 20, "val/loss": 5.2 - step / 25}, step=step)
        if name == "rl":
            for step in range(5):
                stage.log_metrics({"reward_mean": 0.1 * step, "policy_loss": 1.0 / (step + 1)}, step=step)
        if cached:  # histories live on the producing run
            producer.log_metrics({"train_seconds": 1.0})
        commit(store, name, fp, producer.run_id if cached else stage.run_id, outputs[name], seconds=0.5 + index)
        lineage.end_run(stage, "FINISHED")
    return {"uri": uri, "workdir": workdir, "parent": parent, "store": store, "names": names}


def sections_of(markdown: str) -> list[str]:
    return re.findall(r"^## (.+)$", markdown, flags=re.M)


def test_every_section_renders_for_a_tiny_run(tiny_run):
    parent = tiny_run["parent"]
    resources = {"data": "2x(1 CPU)", "pretrain": "2x(1 CPU)"}
    card = report_card.write(
        tiny_run["uri"],
        parent.run_id,
        tiny_run["workdir"],
        store=tiny_run["store"],
        resources=resources,
        config_text=CONFIG,
        log=lambda folder: parent.log_artifact(folder, "report"),
    )
    assert card.folder == tiny_run["workdir"] / "reports" / parent.run_id
    markdown = card.markdown.read_text()
    assert sections_of(markdown) == SECTIONS
    assert "Not run" not in markdown, markdown
    # data funnel per filter, counts and bytes, straight from the data stage's accounting
    assert "| read | 10 | 9 | 90.0% |" in markdown and "http_status 1" in markdown
    assert "| url_filter | 9 | 7 | 77.8% |" in markdown and "blacklisted 2" in markdown
    assert "10 documents in, 7 kept (70.0%)" in markdown
    # tokenizer compression, eval table, timings, resources, fingerprints
    assert "| train | 10 | 9,000 | 3.5 | 4.5 | 0.7778 |" in markdown
    assert "| arithmetic | accuracy | 64 | 0 | 0.1 | 0.5 | 0.7 |" in markdown
    assert "cached (built in 0.5 s)" in markdown and "2x(1 CPU)" in markdown
    assert "abc123" in markdown and report_card.config_fingerprint(CONFIG) in markdown
    assert "`pretrain-fp-2`" in markdown
    # curves: one PNG per stage and kind, written beside the markdown and linked from it
    images = sorted(p.name for p in (card.folder / "images").iterdir())
    assert images == ["loss_pretrain.png", "loss_rl.png", "reward_rl.png"]
    for name in images:
        assert (card.folder / "images" / name).read_bytes().startswith(PNG)
        assert f"(images/{name})" in markdown
    # HTML: the same sections, images inline, nothing fetched from elsewhere
    page = card.html.read_text()
    assert re.findall(r"<h2>(.+?)</h2>", page) == SECTIONS
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1]).startswith(PNG)
    assert not re.search(r'(href|src)="(https?:)?//', page) and "<link" not in page
    # logged on the parent run
    client = MlflowClient(tracking_uri=tiny_run["uri"])
    logged = {a.path for a in client.list_artifacts(parent.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/images"} <= logged


def test_missing_sections_say_not_run(tmp_path: Path):
    workdir = tmp_path / "work"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    lineage.check_tracking(uri)
    experiment = lineage.experiment_id(uri, "toy", workdir / "mlartifacts")
    tags = {"z2h.kind": "pipeline", "z2h.config": "toy", "z2h.stages": "data,tokenizer,eval"}
    parent = lineage.start_run(uri, experiment, "toy-1", tags)
    stage = lineage.start_run(
        uri, experiment, "data", {"z2h.stage": "data", "z2h.fingerprint": "fp1"}, parent_run_id=parent.run_id
    )
    stage.log_metrics({"progress": 0.5}, step=1)
    lineage.end_run(stage, "FAILED")
    # no store entry, no config.yaml artifact
    card = report_card.write(uri, parent.run_id, workdir, store=open_store(None, workdir))
    markdown = card.markdown.read_text()
    assert sections_of(markdown) == SECTIONS
    for title in ("Data funnel", "Tokenizer compression", "Loss curves", "Reward curves", "Evaluation"):
        body = markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
        assert body.strip().startswith("Not run:"), (title, body)
    assert "`data` has no committed output (failed)" in markdown
    assert "| data | failed |" in markdown and "| tokenizer | not run |" in markdown
    assert "no `config.yaml` artifact" in markdown


def test_report_failure_never_fails_the_run(tmp_path, monkeypatch, capsys):
    """The runner's hook turns any error into one warning line and no path."""
    from rich.console import Console

    from pipeline import runner

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_card, "write", broken)
    fake = runner.Runner.__new__(runner.Runner)
    fake.uri, fake.workdir, fake.store = "sqlite:///x.db", tmp_path, None
    fake.plan = type("P", (), {"selected": [], "stages": []})()
    fake.config = type("C", (), {"to_yaml": lambda self: ""})()
    fake.console = Console(file=sys.stderr, highlight=False)
    assert fake._report(lineage.Tracker("sqlite:///x.db", "run")) is None
    assert "no report card (RuntimeError: disk full)" in capsys.readouterr().err


@pytest.mark.slow
def test_z2h_run_writes_logs_and_prints_the_report(toy_registry, toy_config, capsys):
    """Through the CLI with the toy stages: the path is printed last and the report is on the run."""
    from pipeline import cli

    assert cli.main(["run", str(toy_config)]) == 0
    err = capsys.readouterr().err
    line = [row for row in err.splitlines() if row.startswith("report:")][-1]
    page = Path(line.split()[1])
    assert page.name == "report.html" and page.is_file()
    run_id = page.parent.name
    markdown = (page.parent / "report.md").read_text()
    assert sections_of(markdown) == CORE_SECTIONS  # the toy stages declare no section of their own
    assert "| words | done |" in markdown and "1x(1 CPU)" in markdown
    client = MlflowClient(tracking_uri=f"sqlite:///{toy_config.parent / 'work' / 'mlflow.db'}")
    assert client.get_run(run_id).data.tags["z2h.kind"] == "pipeline"
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.md", "report/report.html"} <= logged


def test_a_stage_section_that_fails_says_so_and_the_rest_of_the_report_stands(tiny_run):
    table = tiny_run["store"].materialize("eval", "eval-fp-4") / "table.json"
    table.write_bytes(b"{" * table.stat().st_size)  # same size: the entry still verifies, the file does not parse
    card = report_card.write(tiny_run["uri"], tiny_run["parent"].run_id, tiny_run["workdir"], store=tiny_run["store"])
    markdown = card.markdown.read_text()
    assert sections_of(markdown) == SECTIONS
    assert "Not shown: `eval`'s section failed (JSONDecodeError" in markdown


def test_returned_metrics_never_pull_a_curve_back(tmp_path: Path):
    """The runner logs what a stage returned, but not again what the stage logged itself while it ran."""
    from pipeline.runner import log_summary

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lineage.check_tracking(uri)
    run = lineage.start_run(uri, lineage.experiment_id(uri, "toy", tmp_path / "mlartifacts"), "words", {})
    for step in (1, 2, 3):
        run.log_metrics({"loss": 9.0 - step}, step=step)
    log_summary(run, {"loss": 6.0, "accuracy": 0.5})
    client = MlflowClient(tracking_uri=uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(1, 8.0), (2, 7.0), (3, 6.0)]
    assert client.get_run(run.run_id).data.metrics == {"loss": 6.0, "accuracy": 0.5}
