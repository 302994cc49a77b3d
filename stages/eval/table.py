"""The eval table: rows are tasks, columns are the models (base / sft / rl), as JSON and Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    key: str  # metric name stem: "bpb", "mmlu", "arith", "adherence"
    task: str  # what was measured, for people
    metric: str  # "bits/byte ↓", "accuracy", ...
    chance: float | None = None  # what guessing scores (None: no such baseline)
    values: dict[str, float] = field(default_factory=dict)  # column -> value; absent: not measured
    n: dict[str, int] = field(default_factory=dict)  # column -> items behind the value
    se: dict[str, float] = field(default_factory=dict)  # column -> standard error of the value (accuracies)


def _cell(value: float | None, se: float | None = None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def _count(row: Row, columns: Sequence[str]) -> str:
    counts = sorted({row.n[c] for c in columns if c in row.n})
    return "/".join(str(c) for c in counts) or "–"


NOTE = "± one standard error; chance: the accuracy of guessing uniformly among each item's options."


def markdown(rows: Sequence[Row], columns: Sequence[str], title: str = "", note: str = NOTE) -> str:
    head = ["task", "metric", "n", "chance", *columns]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * (len(head) - 2)) + "|"]
    for row in rows:
        cells = [row.task.replace("|", "\\|"), row.metric.replace("|", "\\|"), _count(row, columns), _cell(row.chance)]
        cells += [_cell(row.values.get(column), row.se.get(column)) for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"


def as_json(rows: Sequence[Row], columns: Sequence[str], models: dict[str, dict]) -> dict:
    return {"columns": list(columns), "models": models, "rows": [asdict(row) for row in rows]}


def mlflow_columns(rows: Sequence[Row], columns: Sequence[str]) -> dict[str, list]:
    """Column -> values, the shape `log_table` wants (None where a model was not measured)."""
    table: dict[str, list] = {"task": [r.task for r in rows], "metric": [r.metric for r in rows]}
    table["chance"] = [r.chance for r in rows]
    for column in columns:
        table[column] = [r.values.get(column) for r in rows]
    return table


def flat_metrics(rows: Sequence[Row]) -> dict[str, float]:
    """`<column>/<row key>` -> value, for MLflow metrics and the manifest."""
    return {f"{column}/{row.key}": value for row in rows for column, value in row.values.items()}
