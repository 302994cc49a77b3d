"""Datasets by Hugging Face Hub name, or a local folder in the same layout: the data files of one
config's split, so that readers can stream them and parallel readers can divide them by file.

A Hub repository and a local copy of it (`hf download --repo-type dataset NAME --local-dir DIR`, or any
folder laid out the same way) resolve alike, from the list of their files:
- a README whose `configs:` metadata maps each config's splits to file patterns (FineWeb-Edu's
  `sample-10BT` is `sample/10BT/*.parquet`) is followed as `datasets` follows it (`load_dataset_builder`);
- without that metadata, file names follow the Hub's conventions (`layout`), for config C and split S:
    C/S-00000-of-00001.parquet   C/S.jsonl   a config folder (openai/gsm8k, cais/mmlu, allenai/ai2_arc)
    C/S/0000.parquet                         the Hub's parquet export (revision refs/convert/parquet)
    data/S-00000-of-00001.parquet   S.jsonl  the config `default` (Rowan/hellaswag)
  and a repository with one config needs no config name;
- a Hub branch holding a loading script (`<name>.py`, which `datasets` no longer runs) is read from its
  parquet export, revision `refs/convert/parquet`, unless a revision is named.
A `save_to_disk` folder gives its Arrow files, and a builder such as `json` with `data_files` its files.
Hub files come back as `hf://datasets/<name>@<commit>/<path>` URIs, which fsspec reads through
huggingface_hub's HfFileSystem (every reader sees the same commit; `HF_TOKEN` for gated datasets), in
ranges: nothing is downloaded whole. Nothing here reads rows; every failure is a `SourceError` naming the
dataset, key and reason, and a missing config or split names those that exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from stages.common.rows import SourceError

READABLE = (".parquet", ".arrow", ".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
DEFAULT_CONFIG = "default"
PARQUET_EXPORT = "refs/convert/parquet"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}(-[0-9a-f]+)?$")  # push_to_hub's shard names


def describe(dataset: str, config: str | None = None, split: str | None = None, revision: str | None = None) -> str:
    """`dataset 'NAME' revision 'R' config 'C' split 'S'`: the keys a message names."""
    keys = {"dataset": dataset, "revision": revision, "config": config, "split": split}
    return " ".join(f"{key} {value!r}" for key, value in keys.items() if value)


@dataclass(frozen=True)
class Split:
    """The data files of one config's split, in the dataset's order."""

    dataset: str  # as named: a Hub id, a folder or a builder
    config: str | None  # as resolved (the default or only config when none was named)
    split: str
    commit: str | None  # the Hub commit read; None for local files
    root: str  # the repository: its folder, or hf://datasets/<name>@<commit>
    files: tuple[str, ...]

    @property
    def paths(self) -> tuple[str, ...]:
        """Each file's path in the repository (its name when it lies elsewhere)."""
        start = self.root.rstrip("/") + "/"
        inside = bool(self.root)
        return tuple(f[len(start) :] if inside and f.startswith(start) else PurePosixPath(f).name for f in self.files)

    def describe(self) -> str:
        return describe(self.dataset, self.config, self.split)


@dataclass(frozen=True)
class _Repo:
    """A dataset repository's files: `path` is what `datasets` is given (the folder or the Hub name)."""

    path: str
    root: str
    commit: str | None
    files: tuple[str, ...]  # every file's path in the repository

    def read(self, path: str) -> str:
        import fsspec

        with fsspec.open(f"{self.root}/{path}", "r", encoding="utf-8") as handle:
            return handle.read()


def _split_name(filename: str) -> str:
    stem = next((filename[: -len(suffix)] for suffix in READABLE if filename.endswith(suffix)), filename)
    shard = SHARD.match(stem)
    return shard.group("split") if shard else stem


def layout(paths: Iterable[str]) -> dict[tuple[str, str], list[str]]:
    """(config, split) -> its data files, sorted, for every data file of a listing without metadata."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in paths:
        parts = path.split("/")
        if not path.endswith(READABLE) or len(parts) > 3:
            continue
        if len(parts) == 3:  # the parquet export: config/split/0000.parquet
            key = (parts[0], parts[1])
        elif len(parts) == 2:
            key = (DEFAULT_CONFIG if parts[0] == "data" else parts[0], _split_name(parts[1]))
        else:
            key = (DEFAULT_CONFIG, _split_name(parts[0]))
        found.setdefault(key, []).append(path)
    return {key: sorted(files) for key, files in found.items()}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _hub_repo(name: str, revision: str | None) -> _Repo:
    from huggingface_hub import HfApi

    try:
        info = HfApi().dataset_info(name, revision=revision)
    except Exception as exc:  # not found, gated, offline, HTTP errors: each means it cannot be listed
        raise SourceError(f"cannot be reached on the Hub ({_first_line(exc)})") from None
    files = tuple(sibling.rfilename for sibling in info.siblings or [])
    return _Repo(name, f"hf://datasets/{name}@{info.sha}", info.sha, files)


def _repo(dataset: str, revision: str | None) -> _Repo:
    folder = Path(dataset).expanduser()
    if folder.is_dir():
        root = folder.resolve()
        files = tuple(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        return _Repo(dataset, str(root), None, files)
    if not HUB_ID.match(dataset):
        raise SourceError("no such folder, and not a Hub dataset id (owner/name)")
    repo = _hub_repo(dataset, revision)
    script = f"{dataset.rsplit('/', 1)[1]}.py"
    if script in repo.files and revision is None:
        return _hub_repo(dataset, PARQUET_EXPORT)
    if script in repo.files and not layout(repo.files):
        raise SourceError(
            f"holds only a loading script, which datasets no longer runs (try revision {PARQUET_EXPORT!r})"
        )
    return repo


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


def _builder_splits(path: str, config: str | None, data_files: Any, revision: str | None) -> dict[str, list[str]]:
    import datasets

    try:
        builder = datasets.load_dataset_builder(path, config, data_files=data_files, revision=revision)
    except (ConnectionError, FileNotFoundError) as exc:  # offline, no such repository or folder, gated
        raise SourceError(f"cannot be reached or has no data files ({type(exc).__name__}: {exc})") from None
    except (ValueError, RuntimeError) as exc:  # a config datasets refuses, a loading script: it says why
        raise SourceError(str(exc)) from None
    return {str(name): list(files) for name, files in (builder.config.data_files or {}).items()}


def _metadata_configs(repo: _Repo) -> tuple[list[str], str | None] | None:
    """The configs a README's `configs:` metadata names and the default one; None without that metadata."""
    if "README.md" not in repo.files:
        return None
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    try:
        configs = MetadataConfigs.from_dataset_card_data(DatasetCard(repo.read("README.md")).data)
        return (list(configs), configs.get_default_config_name()) if configs else None
    except (OSError, ValueError) as exc:  # unreadable, or YAML metadata that does not parse
        raise SourceError(f"README.md metadata cannot be read ({_first_line(exc)})") from None


def _choose(config: str | None, configs: Collection[str], default: str | None) -> str:
    names = ", ".join(sorted(configs))
    if config is None:
        if default is None and len(configs) > 1:
            raise SourceError(f"several configs ({names}) and no default: name one (config)")
        return default or next(iter(configs))
    if config not in configs:
        raise SourceError(f"no such config (it has: {names})")
    return config


def _pick(splits: dict[str, list[str]], split: str) -> list[str]:
    if split not in splits:
        raise SourceError(f"no such split (it has: {', '.join(sorted(splits)) or 'none'})")
    return splits[split]


def _resolve(dataset: str, config: str | None, split: str, data_files: Any, revision: str | None) -> Split:
    if data_files is not None:  # a builder given its files
        files = _pick(_builder_splits(dataset, config, data_files, None), split)
        return Split(dataset, config, split, None, "", tuple(files))
    folder = Path(dataset).expanduser()
    saved = _saved_files(folder, split) if folder.is_dir() else None
    if saved is not None:
        return Split(dataset, config, split, None, str(folder.resolve()), tuple(saved))
    repo = _repo(dataset, revision)
    metadata = _metadata_configs(repo)
    if metadata is not None:
        config = _choose(config, *metadata)
        files = _pick(_builder_splits(repo.path, config, None, repo.commit), split)
        return Split(dataset, config, split, repo.commit, repo.root, tuple(files))
    found = layout(repo.files)
    if not found:
        raise SourceError(f"no data files ({', '.join(READABLE)}) in a Hub dataset layout")
    configs = {c for c, _ in found}
    config = _choose(config, configs, DEFAULT_CONFIG if DEFAULT_CONFIG in configs else None)
    paths = _pick({s: files for (c, s), files in found.items() if c == config}, split)
    return Split(dataset, config, split, repo.commit, repo.root, tuple(f"{repo.root}/{path}" for path in paths))


def resolve(dataset: str, config: str | None, split: str, data_files: Any = None, revision: str | None = None) -> Split:
    """The files of `dataset`'s `split` (of `config`; None: the default or only one), in the dataset's
    order. `dataset` is a Hub name (at `revision`, a branch, tag or commit; None: main), a local folder in
    the Hub layout, a `save_to_disk` folder, or a builder such as `json` with `data_files`.
    Raises SourceError("dataset ... config ... split ...: why")."""
    try:
        found = _resolve(dataset, config, split, data_files, revision)
    except SourceError as exc:
        raise SourceError(f"{describe(dataset, config, split, revision)}: {exc}") from None
    if not found.files:
        raise SourceError(f"{found.describe()}: no data files")
    unreadable = sorted({Path(f).suffix for f in found.files if not f.endswith(READABLE)})
    if unreadable:
        taken = ", ".join(READABLE)
        raise SourceError(f"{found.describe()}: files of a type not read here ({', '.join(unreadable)}; read: {taken})")
    return found


def data_files(dataset: str, config: str | None, split: str, data_files: Any = None) -> list[str]:
    """The file names or URIs of `resolve`'s split, for readers that divide them among tasks."""
    return list(resolve(dataset, config, split, data_files).files)


def source_uri(dataset: str, config: str | None = None, split: str | None = None) -> str:
    """Where a dataset's rows come from, for lineage: the local folder, or the Hub page."""
    local = Path(dataset)
    if local.exists():
        return str(local.resolve())
    keys = "&".join(f"{key}={value}" for key, value in (("config", config), ("split", split)) if value)
    return f"https://huggingface.co/datasets/{dataset}" + (f"?{keys}" if keys else "")
