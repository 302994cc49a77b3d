"""Datasets by Hugging Face Hub name, or a local folder in the same layout: the data files of one
config's split, so that readers can stream them and parallel readers can divide them by file.

Files are resolved the way `datasets` resolves them (`load_dataset_builder`): a repository's README
`configs:` metadata (FineWeb-Edu's `sample-10BT` is `sample/10BT/*.parquet`), else its file-name
patterns (`data/train-00000-of-00004.parquet`, `train/*.jsonl`, ...). A local copy of a Hub repository
(`hf download --repo-type dataset NAME --local-dir DIR`) therefore resolves exactly like the Hub; a local
folder without metadata may also hold one folder per config (`DIR/<config>/<split>-*.parquet`,
`DIR/<config>/<split>/*.parquet`). A `save_to_disk` folder gives its Arrow files. Hub files come back as
`hf://datasets/<name>@<commit>/<path>` URIs, which fsspec reads through huggingface_hub's HfFileSystem
(every reader sees the same commit; `HF_TOKEN` for gated datasets), in ranges: nothing is downloaded
whole. Nothing here reads rows; every failure is a `SourceError` naming the dataset, key and reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.common.rows import SourceError

READABLE = (".parquet", ".arrow", ".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")


def describe(dataset: str, config: str | None = None, split: str | None = None) -> str:
    """`dataset 'NAME' config 'C' split 'S'`: the keys a message names."""
    keys = [f"dataset {dataset!r}"]
    keys += [f"config {config!r}"] if config else []
    keys += [f"split {split!r}"] if split else []
    return " ".join(keys)


def _saved_files(folder: Path, split: str) -> list[str] | None:
    """A `save_to_disk` folder's Arrow files (a DatasetDict's `split`), or None for other folders."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        if split not in splits:
            raise SourceError(f"no such split (it has: {', '.join(splits)})")
        folder = folder / split
    state = folder / "state.json"
    if not state.is_file():
        return None
    return [str(folder / entry["filename"]) for entry in json.loads(state.read_text())["_data_files"]]


def _builder_files(dataset: str, config: str | None, split: str, data_files: Any) -> list[str]:
    import datasets

    local = Path(dataset)
    if config and local.is_dir() and not (local / "README.md").is_file() and (local / config).is_dir():
        dataset, config = str(local / config), None  # a config folder in a folder without metadata
    try:
        builder = datasets.load_dataset_builder(dataset, config, data_files=data_files)
    except (ConnectionError, FileNotFoundError) as exc:  # offline, no such repository or folder, gated
        raise SourceError(f"cannot be reached or has no data files ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:  # no such config, or several and none named: datasets lists them
        raise SourceError(str(exc)) from None
    found = builder.config.data_files or {}
    splits = {str(name): list(files) for name, files in found.items()}
    if split not in splits:
        raise SourceError(f"no such split (it has: {', '.join(sorted(splits)) or 'none'})")
    return splits[split]


def data_files(dataset: str, config: str | None, split: str, data_files: Any = None) -> list[str]:
    """The files of `dataset`'s `split` (of `config`; None: the default or only one), in the dataset's
    order. `dataset` is a Hub name, a local folder in the Hub layout, a `save_to_disk` folder, or a
    builder such as `json` with `data_files`. Raises SourceError("dataset ... config ... split ...: why")."""
    where = describe(dataset, config, split)
    try:
        files = _saved_files(Path(dataset), split) if Path(dataset).is_dir() else None
        if files is None:
            files = _builder_files(dataset, config, split, data_files)
    except SourceError as exc:
        raise SourceError(f"{where}: {exc}") from None
    if not files:
        raise SourceError(f"{where}: no data files")
    unreadable = sorted({Path(f).suffix for f in files if not f.endswith(READABLE)})
    if unreadable:
        taken = ", ".join(READABLE)
        raise SourceError(f"{where}: files of a type not read here ({', '.join(unreadable)}; read: {taken})")
    return files


def source_uri(dataset: str, config: str | None = None, split: str | None = None) -> str:
    """Where a dataset's rows come from, for lineage: the local folder, or the Hub page."""
    local = Path(dataset)
    if local.exists():
        return str(local.resolve())
    keys = "&".join(f"{key}={value}" for key, value in (("config", config), ("split", split)) if value)
    return f"https://huggingface.co/datasets/{dataset}" + (f"?{keys}" if keys else "")
