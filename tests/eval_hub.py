"""Local copies of the standard eval benchmarks in their Hub repositories' layouts and field names (a
few made-up rows each, test splits without gold labels as on the Hub), under `<root>/<owner>/<name>`:
the folder `stages.eval.hub_mirror` reads, so a config naming the Hub ids runs offline."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 8  # labelled rows per split


def _hellaswag(split: str) -> list[dict]:
    return [
        {
            "ind": i,
            "activity_label": "Baking cookies",
            "ctx_a": f"A woman {split} number {i} puts flour in a bowl.",
            "ctx_b": "she",
            "ctx": f"A woman {split} number {i} puts flour in a bowl. [header] she",
            "endings": [f"stirs it with a spoon {j}." for j in range(4)],
            "source_id": f"activitynet~v_{i}",
            "split": split,
            "split_type": "indomain",
            "label": "" if split == "test" else str(i % 4),
        }
        for i in range(ROWS)
    ]


def _arc(config: str, split: str) -> list[dict]:
    labels = ["A", "B", "C", "D"] if config == "ARC-Easy" else ["1", "2", "3", "4"]
    return [
        {
            "id": f"{config}-{split}-{i}",
            "question": f"Which {config} {split} thing number {i} is heavier?",
            "choices": {"text": [f"thing {j}" for j in range(4)], "label": labels},
            "answerKey": labels[i % 4],
        }
        for i in range(ROWS)
    ]


def _piqa(split: str) -> list[dict]:
    return [
        {"goal": f"How do I open jar {i} ({split})?", "sol1": "Twist the lid.", "sol2": "Hit it with a fish."}
        | {"label": -1 if split == "test" else i % 2}
        for i in range(ROWS)
    ]


def _winogrande(split: str) -> list[dict]:
    return [
        {
            "sentence": f"The trophy {i} did not fit in the suitcase because _ was too big ({split}).",
            "option1": "the trophy",
            "option2": "the suitcase",
            "answer": "" if split == "test" else str(1 + i % 2),
        }
        for i in range(ROWS)
    ]


def _mmlu(split: str) -> list[dict]:
    return [
        {
            "question": f"What is {i} + {i} ({split})?",
            "subject": "elementary_mathematics",
            "choices": [str(2 * i + j) for j in range(4)],
            "answer": i % 4,
        }
        for i in range(ROWS)
    ]


def hub_files() -> dict[str, list[dict]]:
    """Path under the mirror -> rows, in each repository's real layout."""
    files: dict[str, list[dict]] = {}
    for split in ("train", "validation", "test"):
        files[f"Rowan/hellaswag/data/{split}-00000-of-00001.parquet"] = _hellaswag(split)
        files[f"allenai/winogrande/winogrande_xl/{split}-00000-of-00001.parquet"] = _winogrande(split)
        files[f"ybisk/piqa/plain_text/{split}/0000.parquet"] = _piqa(split)  # the parquet export's layout
        for config in ("ARC-Easy", "ARC-Challenge"):
            files[f"allenai/ai2_arc/{config}/{split}-00000-of-00001.parquet"] = _arc(config, split)
    for split in ("dev", "validation", "test"):
        files[f"cais/mmlu/all/{split}-00000-of-00001.parquet"] = _mmlu(split)
    return files


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_mirror(root: Path) -> Path:
    for relative, rows in hub_files().items():
        write_rows(root / relative, rows)
    (root / "ybisk/piqa/piqa.py").write_text("# the loading script the Hub repository holds\n")
    return root


SUITE = {  # the benchmarks a real config names, by Hub id (the formats' defaults)
    "hellaswag": {},
    "arc_easy": {"format": "arc", "config": "ARC-Easy"},
    "arc_challenge": {"format": "arc", "config": "ARC-Challenge"},
    "piqa": {},
    "winogrande": {},
    "mmlu": {},
}
