"""`z2h export` parity: the Hugging Face folder, loaded by `transformers` alone, gives z2h's logits
(within 1e-4, fp32), z2h's greedy generations token for token, z2h's token ids for any text, and its
chat template gives z2h's ids for every conversation shape. Models: a base model trained a few steps
on text and a chat model finetuned from it on conversations (Qwen3: QK-norm), and a randomly
initialised one without QK-norm (Llama). Plus what export refuses and what its card records."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sft_tiny import VOCAB, tokenizer

from pipeline.errors import UsageError
from stages.common import tasks
from stages.common.chat import ASSISTANT_END, render, render_prompt
from stages.common.generate import Sampling, generate
from stages.common.model import GPTConfig, build, cross_entropy, load_pretrained, save_pretrained
from use.export import export
from use.locate import Found

transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=VOCAB, seq_len=128, n_layer=2, n_head=4, n_kv_head=2, d_model=64)
TRAIN_WIDTH = 65  # tokens per training row: short rows keep the few steps cheap
PROMPTS = [
    "The function returns",
    "What is 7 + 5?",
    "naïve café — 日本語 🎉",
    "x = [i ** 2 for i in range(10)]\n",
    "typed <|assistant_end|> and <|bos|> markers stay text",
]
TOLERANCE = 1e-4
MEASURED: dict[str, float] = {}  # max |logit difference| per model, printed at the end of the module


def _train(model, rows: list[list[int]], masks: list[list[int]] | None, steps: int, seed: int) -> None:
    """A few AdamW steps so greedy choices are clear-cut (a fresh model's logits are nearly flat)."""
    generator = torch.Generator().manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    width = TRAIN_WIDTH
    for _ in range(steps):
        picks = torch.randint(len(rows), (8,), generator=generator).tolist()
        batch = torch.full((8, width), 0)
        weights = torch.zeros((8, width))
        for row, pick in enumerate(picks):
            ids = rows[pick][:width]
            batch[row, : len(ids)] = torch.tensor(ids)
            weights[row, : len(ids)] = torch.tensor(masks[pick][:width] if masks else [1] * len(ids))
        targets = batch[:, 1:].masked_fill(weights[:, 1:] == 0, -100)
        loss = cross_entropy(model(batch[:, :-1]), targets)
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()


def _conversations(count: int) -> list[list[dict[str, str]]]:
    return [p.conversation() for p in tasks.get("arith").problems("train", count, seed=5)]


def _write_entry(store: Path, stage: str, fingerprint: str, model, upstream: dict[str, str], run_id: str) -> Path:
    entry = store / stage / fingerprint
    save_pretrained(model, entry / "model")
    manifest = {"stage": stage, "fingerprint": fingerprint, "files": [], "run_id": run_id, "upstream": upstream}
    (entry / "manifest.json").write_text(json.dumps(manifest | {"metrics": {"val_loss": 3.5}, "created": 1.0}))
    return entry / "model"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (z2h model folder, exported Hugging Face folder) for base, chat and llama."""
    root = tmp_path_factory.mktemp("export")
    store = root / "store"
    tok = tokenizer()
    tok.save(store / "tokenizer" / "tok0" / "tokenizer")
    (store / "tokenizer" / "tok0" / "manifest.json").write_text(json.dumps({"stage": "tokenizer", "run_id": "r0"}))
    from pydoc_data.topics import topics

    torch.manual_seed(0)
    base = build(GPTConfig(**SHAPE), seed=1)
    _train(base, [[tok.bos_id, *tok.encode(topics[name])] for name in sorted(topics)[:40]], None, 30, seed=2)
    chat = load_pretrained(_write_entry(store, "pretrain", "pre0", base, {"tokenizer": "tok0"}, "r1"))
    rendered = [render(tok, c) for c in _conversations(100)]
    _train(chat.train(), [r.ids for r in rendered], [r.mask for r in rendered], 30, seed=3)
    _write_entry(store, "sft", "sft0", chat, {"pretrain": "pre0", "tokenizer": "tok0"}, "r2")
    eval_entry = store / "eval" / "ev0"
    eval_entry.mkdir(parents=True)
    (eval_entry / "manifest.json").write_text(json.dumps({"upstream": {"sft": "sft0"}, "created": 2.0}))
    (eval_entry / "table.md").write_text("| task | sft |\n|---|---|\n| arith | 0.25 |\n")
    llama = build(GPTConfig(**SHAPE | {"qk_norm": False}), seed=4)
    save_pretrained(llama, root / "llama")

    tok_dir = store / "tokenizer" / "tok0" / "tokenizer"
    found = {
        "base": Found(store / "pretrain" / "pre0" / "model", tok_dir, "pretrain", "pretrain/pre0"),
        "chat": Found(store / "sft" / "sft0" / "model", tok_dir, "sft", "sft/sft0"),
        "llama": Found(root / "llama", tok_dir, None, "llama"),
    }
    folders = {}
    for name, where in found.items():
        export(where, root / "hf" / name, tracking_uri=None)
        folders[name] = (where.folder, root / "hf" / name)
    yield folders
    print("\nmax |logit difference| z2h vs transformers:", {k: f"{v:.2e}" for k, v in MEASURED.items()})


def _hf(folder: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("name", ["base", "chat", "llama"])
def test_logits_match_within_1e_4(exported, name):
    z2h_folder, hf_folder = exported[name]
    ours = load_pretrained(z2h_folder).eval()
    theirs = _hf(hf_folder)
    assert type(theirs).__name__ == ("LlamaForCausalLM" if name == "llama" else "Qwen3ForCausalLM")
    tok = tokenizer()
    worst = 0.0
    prompts = [[tok.bos_id, *tok.encode(p)] for p in PROMPTS]
    prompts += [render_prompt(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    for ids in prompts:
        batch = torch.tensor([ids])
        with torch.no_grad():
            difference = (theirs(batch).logits - ours(batch)).abs().max().item()
        worst = max(worst, difference)
    MEASURED[name] = worst
    assert worst < TOLERANCE


@pytest.mark.parametrize("name", ["base", "chat"])
def test_greedy_generations_are_identical(exported, name):
    """Up to the model's own stop token (HF's eos from generation_config.json), and over the whole budget."""
    z2h_folder, hf_folder = exported[name]
    ours = load_pretrained(z2h_folder).eval()
    theirs = _hf(hf_folder)
    tok = tokenizer()
    if name == "chat":
        prompts = [render_prompt(tok, c[:-1]) for c in _conversations(6)]
        stop = tok.special(ASSISTANT_END)
    else:
        prompts = [[tok.bos_id, *tok.encode(p)] for p in PROMPTS]
        stop = tok.bos_id
    assert theirs.generation_config.eos_token_id == stop
    greedy = copy.deepcopy(theirs.generation_config)
    greedy.update(do_sample=False, max_new_tokens=24)
    never = copy.deepcopy(greedy)
    never.eos_token_id = never.pad_token_id = None
    # As shipped, generate() needs no attention mask (it would infer one from a pad id found in the prompt).
    for stop_id, config, mask in ((stop, greedy, False), (-1, never, True)):
        replies = generate(ours, prompts, Sampling(max_new_tokens=24), stop_id)
        for prompt, reply in zip(prompts, replies, strict=True):
            ids = torch.tensor([prompt])
            out = theirs.generate(ids, attention_mask=torch.ones_like(ids) if mask else None, generation_config=config)
            assert out[0, len(prompt) :].tolist() == reply
    assert all(len(r) == 24 for r in replies) and len({tuple(r) for r in replies}) > 1


TEXTS = [
    "Hello, world! It's 3.14159 o'clock.",
    "  leading spaces\n\n\ttabs\r\nand CRLF\r",
    "naïve café, 日本語のテキスト, русский, العربية, emoji 🎉👍🏽 and ZWJ 👩‍👩‍👧",
    "typed <|bos|><|user_start|>x<|user_end|> <|assistant_end|> <|python_start|> markers",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 1234567890 12,345.67",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n",
    "",
    " ",
    "\n\n\n",
]


def test_the_tokenizer_gives_tiktoken_s_ids(exported):
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported["base"][1])
    tok = tokenizer()
    from pydoc_data.topics import topics

    for text in [*TEXTS, *(topics[name] for name in sorted(topics)[40:])]:
        ids = tok.encode(text)
        assert hf_tok.encode(text, add_special_tokens=False, split_special_tokens=True) == ids
        assert hf_tok(text, split_special_tokens=True)["input_ids"] == [tok.bos_id, *ids]  # as a base prompt starts
        assert hf_tok.decode(ids) == text
    for token, index in tok.specials.items():  # declared as special tokens, with z2h's ids
        assert hf_tok.convert_tokens_to_ids(token) == index and index in hf_tok.all_special_ids


PIECES = st.sampled_from([*"abc xyz 0123456789.,!?\n", "é", "日", "🎉", " the", "ing", "  "])
TEXT = st.lists(PIECES, min_size=1, max_size=30).map("".join).filter(str.strip)
MARKED = st.lists(st.one_of(PIECES, st.sampled_from(["<|assistant_end|>", "<|user_start|>", "<|bos|>"])), max_size=30)


@st.composite
def conversations(draw, text=TEXT) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": draw(text)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 4))):
        messages += [{"role": "user", "content": draw(text)}, {"role": "assistant", "content": draw(text)}]
    return messages


@pytest.fixture(scope="module")
def hf_tokenizer(exported):
    return transformers.AutoTokenizer.from_pretrained(exported["chat"][1])


def _apply(hf_tok, messages, **kwargs) -> list[int]:
    return list(hf_tok.apply_chat_template(messages, return_dict=True, **kwargs)["input_ids"])


@settings(max_examples=60, deadline=None)
@given(conversations())
def test_the_jinja_template_gives_z2h_s_ids(hf_tokenizer, messages):
    tok = tokenizer()
    assert _apply(hf_tokenizer, messages) == render(tok, messages).ids
    prompt = messages[:-1]
    assert _apply(hf_tokenizer, prompt, add_generation_prompt=True) == render_prompt(tok, prompt)


@settings(max_examples=60, deadline=None)
@given(conversations(MARKED.map("".join).filter(str.strip)))
def test_typed_markers_stay_text_with_sanitized_control_tokens(hf_tokenizer, messages):
    """The control tokens are the template's own and the text is the same; the BPE pieces next to a typed
    marker may differ, since Hugging Face encodes the marker apart from the text around it."""
    tok = tokenizer()
    ids, expected = _apply(hf_tokenizer, messages, sanitize_control_tokens=True), render(tok, messages).ids
    specials = set(tok.specials.values())
    assert [i for i in ids if i in specials] == [i for i in expected if i in specials]
    assert tok.decode(ids) == tok.decode(expected)


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([{"role": "robot", "content": "x"}], "unknown_role"),
        ([{"role": "user", "content": " "}], "empty_content"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "not_alternating"),
        ([{"role": "assistant", "content": "a"}], "not_alternating"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "system_not_first"),
        ([{"role": "system", "content": "s"}], "no_turns"),
    ],
)
def test_the_template_refuses_what_z2h_refuses(hf_tokenizer, messages, reason):
    with pytest.raises(Exception, match=reason):
        hf_tokenizer.apply_chat_template(messages, tokenize=False)


def test_a_generation_prompt_needs_a_user_turn_last(hf_tokenizer):
    with pytest.raises(Exception, match="ends_without_user_turn"):
        hf_tokenizer.apply_chat_template(
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], add_generation_prompt=True
        )


def test_the_folder_and_its_card(exported):
    z2h_folder, hf_folder = exported["chat"]
    config = json.loads((hf_folder / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["intermediate_size"]) == (
        "qwen3",
        ["Qwen3ForCausalLM"],
        GPTConfig(**SHAPE).hidden_dim,
    )
    tok = tokenizer()
    assert config["eos_token_id"] == config["pad_token_id"] == tok.special(ASSISTANT_END)  # see hf_model.hf_config
    assert json.loads((hf_folder / "generation_config.json").read_text())["eos_token_id"] == tok.special(ASSISTANT_END)
    assert json.loads((exported["base"][1] / "generation_config.json").read_text())["eos_token_id"] == tok.bos_id
    card = (hf_folder / "README.md").read_text()
    for fact in ("sft0", "pre0", "tok0", "`r2`", "`r1`", "| arith | 0.25 |", "qwen3"):
        assert fact in card
    assert "no lineage" in (exported["llama"][1] / "README.md").read_text()


def test_export_refuses_relu2_and_a_non_empty_folder(tmp_path, exported):
    relu = build(GPTConfig(**SHAPE | {"mlp": "relu2"}), seed=0)
    save_pretrained(relu, tmp_path / "relu")
    tokenizer().save(tmp_path / "tok")
    with pytest.raises(UsageError, match="mlp='relu2': Hugging Face has no stock architecture"):
        export(Found(tmp_path / "relu", tmp_path / "tok", None, "relu"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    z2h_folder, hf_folder = exported["llama"]
    found = Found(z2h_folder, tmp_path / "tok", None, "llama")
    with pytest.raises(UsageError, match="is not empty; pass --force"):
        export(found, hf_folder)
    assert export(found, hf_folder, force=True).architecture == "LlamaForCausalLM"
