"""The shared chat template: the loss mask, the two input formats, prompts, system text, truncation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sft_tiny import tokenizer

from stages.common.chat import (
    ASSISTANT_END,
    ASSISTANT_START,
    ConversationError,
    prompt_and_reply,
    render,
    render_prompt,
)
from stages.sft.formats import to_messages

# Pieces, not characters, so typed special-token strings show up often.
PIECES = st.sampled_from([*"abc xyz 0123456789.,!?\n", "é", "日", "<|assistant_end|>", "<|user_start|>", "<|bos|>"])
TEXT = st.lists(PIECES, min_size=1, max_size=30).map("".join).filter(str.strip)


@st.composite
def conversations(draw) -> list[dict[str, str]]:
    turns = draw(st.integers(1, 4))
    messages = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    for _ in range(turns):
        messages += [{"role": "user", "content": draw(TEXT)}, {"role": "assistant", "content": draw(TEXT)}]
    return messages


@settings(max_examples=150, deadline=None)
@given(conversations())
def test_mask_is_one_exactly_on_assistant_text_and_its_end(messages):
    tok = tokenizer()
    rendered = render(tok, messages)
    start, end = tok.special(ASSISTANT_START), tok.special(ASSISTANT_END)
    assert len(rendered.ids) == len(rendered.mask)
    # Walk the ids: inside an assistant span (after its start marker, up to and including its end
    # marker) the mask must be 1; everywhere else 0.
    expected, inside = [], False
    for token in rendered.ids:
        expected.append(int(inside))
        if token == start:
            inside = True
        elif token == end:
            inside = False
    assert rendered.mask == expected
    spans = [tok.encode(m["content"]) + [end] for m in messages if m["role"] == "assistant"]
    assert [t for t, m in zip(rendered.ids, rendered.mask, strict=True) if m] == [t for s in spans for t in s]
    # Typed special-token strings stay text: one real end marker per assistant turn, no more.
    assert rendered.ids.count(end) == len(spans)


@settings(max_examples=50, deadline=None)
@given(conversations())
def test_prompt_is_the_conversation_up_to_the_last_reply(messages):
    tok = tokenizer()
    prompt_messages, reply = prompt_and_reply(messages)
    prompt = render_prompt(tok, prompt_messages)
    whole = render(tok, messages).ids
    assert prompt[-1] == tok.special(ASSISTANT_START)
    assert whole[: len(prompt)] == prompt
    assert whole[len(prompt) :] == tok.encode(reply) + [tok.special(ASSISTANT_END)]


def test_sharegpt_and_openai_render_identically():
    openai = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "Answer: 4"},
        ]
    }
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in openai["messages"]]}
    tok = tokenizer()
    assert render(tok, to_messages(openai)) == render(tok, to_messages(sharegpt, "sharegpt"))


def test_system_text_is_folded_into_the_first_user_turn():
    tok = tokenizer()
    with_system = render(tok, [{"role": "system", "content": "Be brief."}, *_pair("Hi", "Yo")])
    folded = render(tok, _pair("Be brief.\n\nHi", "Yo"))
    assert with_system == folded


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([{"role": "robot", "content": "x"}], "unknown_role"),
        ([{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}], "empty_content"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}], "non_string_content"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "not_alternating"),
        ([{"role": "assistant", "content": "a"}], "not_alternating"),
        ([{"role": "user", "content": "a"}], "ends_without_assistant_turn"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "system_not_first"),
        ([], "no_turns"),
        (["not a dict"], "bad_message"),
    ],
)
def test_bad_conversations_name_their_reason(messages, reason):
    with pytest.raises(ConversationError) as caught:
        render(tokenizer(), messages)
    assert caught.value.reason == reason


def test_truncation_policies():
    tok = tokenizer()
    messages = _pair("question " * 5, "answer " * 30)
    full = render(tok, messages)
    with pytest.raises(ConversationError, match="too_long"):
        render(tok, messages, max_tokens=len(full.ids) - 1)
    cut = render(tok, messages, max_tokens=len(full.ids) - 5, truncation="truncate")
    assert cut.truncated and cut.ids == full.ids[:-5] and cut.mask == full.mask[:-5]
    prompt_only = render_prompt(tok, messages[:1])
    with pytest.raises(ConversationError, match="too_long"):  # no assistant token would survive
        render(tok, messages, max_tokens=len(prompt_only), truncation="truncate")


def _pair(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
