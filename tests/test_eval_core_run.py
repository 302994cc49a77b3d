"""The eval stage with the standard benchmarks (read by Hub id from a local mirror) and GSM8K from its
JSONL files, run in this process on the tiny store: a row per benchmark and a CORE row that is the mean
centered accuracy of the benchmarks' details, GSM8K for the chat model only, items traceable to rows."""

from __future__ import annotations

import json

import pytest
from eval_hub import SUITE, write_mirror, write_rows
from eval_tiny import write_store

from pipeline.local import local_context
from stages.eval import stage
from stages.eval.config import EvalConfig


def gsm8k_rows(split: str) -> list[dict]:
    return [
        {"question": f"Tom has {i} apples ({split}) and buys {i} more. How many?", "answer": f"{i} + {i}\n#### {2 * i}"}
        for i in range(1, 9)
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    upstream = write_store(workdir)
    mirror = write_mirror(tmp_path_factory.mktemp("hub"))
    gsm8k = tmp_path_factory.mktemp("gsm8k")
    write_rows(gsm8k / "main" / "test.jsonl", gsm8k_rows("test"))
    cfg = EvalConfig(
        models=["pretrain", "sft"],
        bpb_windows=2,
        samples=0,
        choice={},
        adherence_prompts=0,
        tasks={
            "gsm8k": {"count": 3, "options": {"path": str(gsm8k / "main" / "test.jsonl"), "heldout_fraction": 0.95}}
        },
        max_new_tokens=6,
        hub_mirror=mirror,
        benchmarks=SUITE | {"mmlu": {"count": 5, "fewshot": 1}},
        unit_size=8,
    )
    ctx = local_context("eval", cfg, tmp_path_factory.mktemp("eval"), upstream=upstream, seed=5, workdir=workdir)
    return ctx, stage.run(ctx)


def test_each_benchmark_has_a_row_and_core_is_their_mean_centered_accuracy(finished):
    ctx, metrics = finished
    table = json.loads((ctx.output_dir / "table.json").read_text())
    rows = {row["key"]: row for row in table["rows"]}
    assert list(rows) == ["bpb", "gsm8k", *SUITE, "core", "adherence"]
    assert rows["winogrande"]["task"] == "Winogrande (validation, 0-shot)" and rows["mmlu"]["n"]["base"] == 5
    assert rows["mmlu"]["task"] == "MMLU (test, 1-shot)" and rows["arc_easy"]["task"] == "ARC-Easy (test, 0-shot)"
    assert rows["piqa"]["chance"] == pytest.approx(0.5) and rows["hellaswag"]["chance"] == pytest.approx(0.25)
    details = json.loads((ctx.output_dir / "results.json").read_text())["models"]
    for column in ("base", "sft"):
        centered = [details[column]["details"][name]["centered"] for name in SUITE]
        assert rows["core"]["values"][column] == pytest.approx(sum(centered) / len(centered))
        assert metrics[f"{column}/core"] == rows["core"]["values"][column]
    assert set(rows["gsm8k"]["values"]) == {"sft"} and rows["gsm8k"]["n"] == {"sft": 3}
    assert details["base"]["details"]["piqa"]["source"].endswith("ybisk/piqa")
    assert details["base"]["details"]["piqa"]["files"] == ["plain_text/validation/0000.parquet"]
    assert "| CORE (6 benchmarks) | centered accuracy |" in (ctx.output_dir / "table.md").read_text()


def test_predictions_trace_each_item_to_its_source_row(finished):
    ctx, _ = finished
    lines = [json.loads(line) for line in (ctx.output_dir / "predictions.jsonl").read_text().splitlines()]
    wino = [p for p in lines if p.get("benchmark") == "winogrande" and p["model"] == "base"]
    assert len(wino) == 8 and {p["row"] for p in wino} == {
        f"winogrande_xl/validation-00000-of-00001.parquet:{i}" for i in range(8)
    }
    assert all(p["picked"] in (0, 1) for p in wino)
