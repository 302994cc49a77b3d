"""The eval table's shapes: Markdown (pipes escaped, standard errors, a dash where a model was not
measured), JSON and MLflow columns, and the end-of-run summary printing it after the stage table."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from pipeline.reports import print_stage_tables
from pipeline.store import Manifest, open_store
from stages.eval.table import Row, as_json, flat_metrics, markdown, mlflow_columns

COLUMNS = ["base", "sft", "rl"]


def rows() -> list[Row]:
    return [
        Row("bpb", "held-out text", "bits/byte", None, {"base": 2.5, "sft": 3.0, "rl": 3.1}, {"base": 64, "sft": 64}),
        Row("mmlu", "MMLU", "accuracy", 0.25, {"base": 0.3, "rl": 0.26}, {"base": 100, "rl": 98}, {"base": 0.046}),
        Row("adherence", "chat format", "ends <|assistant_end|>", None, {"sft": 0.9}, {"sft": 40}),
    ]


def test_markdown_json_and_mlflow_shapes():
    text = markdown(rows(), COLUMNS, title="eval")
    lines = text.splitlines()
    assert lines[2] == "| task | metric | n | chance | base | sft | rl |"
    assert "| MMLU | accuracy | 98/100 | 0.250 | 0.300 ± 0.046 | – | 0.260 |" in lines
    assert "ends <\\|assistant_end\\|>" in text  # a pipe inside a cell does not split it
    table = as_json(rows(), COLUMNS, {"base": {"stage": "pretrain"}})
    assert table["columns"] == COLUMNS and table["rows"][1]["values"] == {"base": 0.3, "rl": 0.26}
    assert mlflow_columns(rows(), COLUMNS)["sft"] == [3.0, None, 0.9]
    assert flat_metrics(rows())["rl/mmlu"] == 0.26


def test_the_run_summary_prints_each_stage_table_from_the_configured_store(tmp_path: Path):
    store_root, workdir = tmp_path / "shared" / "store", tmp_path / "work"  # run.store outside the work dir
    store = open_store(store_root, workdir)
    text = markdown(rows(), COLUMNS, title="eval: base, sft, rl")
    for name, fingerprint in (("eval", "fp1"), ("sft", "fp2")):
        staging = store.staging(name, fingerprint)
        (staging / ("table.md" if name == "eval" else "other.txt")).write_text(text)
        store.commit(staging, Manifest(name, fingerprint, []))
    plan = SimpleNamespace(config=SimpleNamespace(run=SimpleNamespace(workdir=workdir, store=store_root)))
    outcomes = [
        SimpleNamespace(name="eval", status="cached", fingerprint="fp1"),
        SimpleNamespace(name="sft", status="done", fingerprint="fp2"),  # no table: nothing printed
        SimpleNamespace(name="rl", status="failed", fingerprint="fp3"),
    ]
    out = io.StringIO()
    print_stage_tables(SimpleNamespace(outcomes=outcomes), plan, Console(file=out, width=140, force_terminal=True))
    printed = out.getvalue()
    assert "eval: base, sft, rl" in printed and "0.300 ± 0.046" in printed and "<|assistant_end|>" in printed
    logged = io.StringIO()  # not a terminal (a log file): the Markdown itself, one line per row however wide
    print_stage_tables(SimpleNamespace(outcomes=outcomes), plan, Console(file=logged, width=40))
    assert logged.getvalue() == text + "\n"
