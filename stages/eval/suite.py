"""The standard benchmark suite: configured benchmarks loaded into questions (with few-shot examples),
encoded for a model, its option scores turned into accuracy, and the CORE average.

Every model answers as a base model does, in plain text, by option likelihood (`stages/eval/score.py`):
a shared context is read once for all its options ("choice" work units), partial scoring reads one
context per option ("score" units). Centered accuracy rescales accuracy so that guessing scores 0 and
always right 1: (acc - chance) / (1 - chance), chance the mean of 1/options over the items; CORE is
its mean over the benchmarks, as DCLM defines it.

A benchmark's files are found before any model work (`open_benchmark`). A benchmark with no usable
row, such as a test split whose gold labels are hidden (label -1 or ""), is refused in one line
naming the source, split and reasons; otherwise unusable rows are counted per reason and skipped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.common import hub
from stages.common.prompts import TooLong, fit_text, text_prompt
from stages.common.rows import BadRow, Skips, SourceError, read_files, require_columns
from stages.common.tokenizer import Tokenizer
from stages.eval.benchmarks import FORMATS, Format, Question, parse_row
from stages.eval.choice import select
from stages.eval.config import BenchmarkSpec, benchmark_splits


@dataclass(frozen=True)
class Opened:
    name: str
    spec: BenchmarkSpec
    files: hub.Split
    fewshot_files: hub.Split | None  # None: zero-shot


def open_benchmark(name: str, spec: BenchmarkSpec, mirror: Path | None) -> Opened:
    """The benchmark's files (listing the Hub repository, or the local folder); SourceError names it."""
    try:
        files, shots = benchmark_splits(spec, mirror)
    except SourceError as exc:
        raise SourceError(f"benchmark {name}: {exc}") from None
    return Opened(name, spec, files, shots)


@dataclass
class Loaded:
    name: str
    title: str
    questions: list[Question]  # the selected ones, few-shot examples prepended
    rows: int = 0
    usable: int = 0
    skips: Skips = field(default_factory=Skips)
    source: dict[str, Any] = field(default_factory=dict)


def _questions(name: str, form: Format, files: hub.Split, skips: Skips) -> tuple[list[Question], int]:
    """The split's questions, each row named by its file's path in the repository (`all/test.jsonl:3`)."""
    found, rows = [], 0
    try:
        require_columns(files.files[0], form.columns, files.describe())
        for where, row in read_files(files.files, names=files.paths):
            rows += 1
            parsed = row if isinstance(row, BadRow) else parse_row(form, where, row)
            if isinstance(parsed, BadRow):
                skips.add(parsed.reason, where, parsed.detail)
            else:
                found.append(parsed)
    except SourceError as exc:
        raise SourceError(f"benchmark {name}: {exc}") from None
    if not found:
        if rows and skips.counts["no_gold"] == rows:
            why = f"none of its {rows} rows has a gold label (this split hides its answers): choose a labelled split"
        else:
            why = f"no usable row among {rows} ({', '.join(f'{r} {n}' for r, n in sorted(skips.counts.items()))})"
        raise SourceError(f"benchmark {name}: {files.describe()}: {why}")
    return found, rows


def load(opened: Opened, seed: int) -> Loaded:
    """`spec.count` questions (a seeded sample, the same in every run), each after `spec.fewshot`
    solved examples drawn from the few-shot split (never the question itself)."""
    spec = opened.spec
    form = FORMATS[spec.format or opened.name]
    skips = Skips()
    questions, rows = _questions(opened.name, form, opened.files, skips)
    chosen = select(questions, spec.count or len(questions), seed, f"bench-{opened.name}")
    if opened.fewshot_files is not None:
        same = opened.fewshot_files.files == opened.files.files
        pool = questions if same else _questions(opened.name, form, opened.fewshot_files, Skips())[0]
        if len(pool) - same < spec.fewshot:
            raise SourceError(
                f"benchmark {opened.name}: fewshot {spec.fewshot} needs that many labelled rows besides the item; "
                f"{opened.fewshot_files.describe()} has {len(pool)}"
            )
        chosen = [q.after(_shots(q, pool, spec.fewshot, f"{opened.name}-{seed}")) for q in chosen]
    title = form.title or opened.files.config or opened.name
    source = {
        "source": hub.source_uri(opened.files.dataset),
        "config": opened.files.config,
        "split": opened.files.split,
        "revision": opened.files.commit,
        "files": list(opened.files.paths),
        "fewshot": spec.fewshot,
    }
    return Loaded(opened.name, title, chosen, rows, len(questions), skips, source)


def _shots(question: Question, pool: Sequence[Question], count: int, salt: str) -> list[str]:
    others = [q for q in pool if q.where != question.where]
    return [q.solved() for q in random.Random(f"fewshot-{salt}-{question.where}").sample(others, count)]


# -- one model's work ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    contexts: list[list[int]]  # one shared, or one per option (partial scoring)
    continuations: list[list[int]]  # one per option, or one shared
    option_bytes: list[int]  # UTF-8 bytes of each option's continuation (per-byte normalisation)
    cut: bool  # a context was shortened from its start to fit

    @property
    def partial(self) -> bool:
        return len(self.contexts) > 1


def encode(question: Question, tokenizer: Tokenizer, seq_len: int) -> Encoded:
    """`<|bos|>` + each context's tokens, cut from the start so that context and continuation fit
    seq_len + 1 tokens (the continuation's last token is never fed); TooLong when they cannot."""
    continuations = [tokenizer.encode(text) for text in question.continuations]
    longest = max(len(ids) for ids in continuations)
    if seq_len + 1 - longest < 2 or not all(continuations):
        raise TooLong(f"{question.where}: a continuation of {longest} tokens leaves no room in {seq_len}")
    make = text_prompt(tokenizer)
    fitted = [fit_text(make, prefix, tokenizer, seq_len + 1 - longest) for prefix in question.prefixes]
    per_option = [continuations[i] if len(continuations) > 1 else continuations[0] for i in range(question.options)]
    option_bytes = [max(len(tokenizer.decode_bytes(ids)), 1) for ids in per_option]
    return Encoded([ids for ids, _ in fitted], continuations, option_bytes, any(cut for _, cut in fitted))


def work(encoded: Sequence[Encoded]) -> tuple[list[tuple], list[tuple]]:
    """The items of "choice" units (context, options) and the pairs of "score" units (context, continuation)."""
    shared, pairs = [], []
    for item in encoded:
        if item.partial:
            pairs += [(context, item.continuations[0]) for context in item.contexts]
        else:
            shared.append((item.contexts[0], tuple(item.continuations)))
    return shared, pairs


def option_scores(
    encoded: Sequence[Encoded], shared: Iterator[list[float]], pairs: Iterator[float]
) -> list[list[float]]:
    """Each item's option log-likelihoods, taken in `work`'s order from the units' results."""
    return [[next(pairs) for _ in item.contexts] if item.partial else list(next(shared)) for item in encoded]


# -- the numbers ----------------------------------------------------------------------------------------
def chance(questions: Sequence[Question]) -> float:
    """The accuracy of guessing uniformly among each item's options."""
    return sum(1 / q.options for q in questions) / len(questions)


def centered(accuracy: float, guess: float) -> float:
    """0 for guessing, 1 for always right: (accuracy - chance) / (1 - chance)."""
    return (accuracy - guess) / (1 - guess)


def core(results: Sequence[tuple[float, float | None, float]]) -> tuple[float, float | None]:
    """CORE from (accuracy, its standard error, chance) per benchmark: the mean centered accuracy, and
    its standard error when every benchmark has one (benchmarks are independent samples)."""
    value = sum(centered(acc, guess) for acc, _, guess in results) / len(results)
    if any(se is None for _, se, _ in results):
        return value, None
    variance = sum((se / (1 - guess)) ** 2 for _, se, guess in results)  # type: ignore[operator]
    return value, math.sqrt(variance) / len(results)
