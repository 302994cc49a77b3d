"""The eval stage's section of the report card: its table.json, tasks by models."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pipeline.report_blocks import Block, Table, Text, fmt
from pipeline.stage import StageReport


def table_section(folder: Path, _metrics: Mapping[str, float]) -> list[Block]:
    table = json.loads((folder / "table.json").read_text())
    models = [str(column) for column in table["columns"]]
    rows = []
    for row in table["rows"]:
        values = row.get("values") or {}
        counts = sorted(set((row.get("n") or {}).values()))
        rows.append(
            [
                row["task"],
                row["metric"],
                "/".join(map(str, counts)) or "–",
                fmt(row.get("chance")),
                *[fmt(values.get(model)) for model in models],
            ]
        )
    note = Text(
        "Rows are tasks, columns the models, all measured with the same settings (`table.json`); "
        "chance: the accuracy of guessing uniformly among each item's options."
    )
    return [note, Table(["task", "metric", "n", "chance", *models], rows)]


SECTION = StageReport("Evaluation", table_section)
