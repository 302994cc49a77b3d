"""Real text for the tokenizer tests: Python's own reference documentation (`pydoc_data`),
written as the data stage writes documents (gzip JSONL, one document per line)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from pydoc_data.topics import topics


def doc_texts() -> list[str]:
    return [topics[name] for name in sorted(topics)]


def write_documents(data_dir: Path, texts: list[str], per_file: int = 100, extra_lines: tuple[str, ...] = ()) -> Path:
    """A data-stage output folder with `texts` as documents; `extra_lines` go verbatim at the end."""
    folder = data_dir / "documents"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "id": f"doc-{i}",
                "text": text,
                "url": f"https://docs.python.org/{i}",
                "language": "en",
                "language_score": 0.99,
                "source": "pydoc_data",
            }
        )
        for i, text in enumerate(texts)
    ] + list(extra_lines)
    for start in range(0, max(len(lines), 1), per_file):
        with gzip.open(folder / f"part-{start // per_file:05d}.jsonl.gz", "wt", encoding="utf-8") as file:
            file.writelines(line + "\n" for line in lines[start : start + per_file])
    return data_dir
