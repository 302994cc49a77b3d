"""z2h's tokenizer and chat template in Hugging Face's format.

`tokenizer.json` is a byte-level BPE built with the `tokenizers` library from the tiktoken ranks:
the same split pattern, every mergeable token under GPT-2's byte-to-character alphabet, a merge
(a, b) for every way a token splits into two tokens, ordered by the rank of what it makes (tiktoken
merges the adjacent pair whose result ranks lowest), and `ignore_merges` so a pre-token that is a
whole token is looked up, as tiktoken does, rather than rebuilt by merging. Special tokens take their
z2h ids. Plain encoding adds `<|bos|>` in front, as z2h's base-model prompts start; chat templates
write their own.

`tokenizer_config.json` carries a Jinja `chat_template` that writes exactly what
`stages.common.chat` renders: `<|bos|>`, user turns in `<|user_start|>..<|user_end|>`, assistant
turns in `<|assistant_start|>..<|assistant_end|>`, a leading system message folded into the first
user turn after a blank line, and `<|assistant_start|>` as the generation prompt. Conversations z2h
refuses raise with z2h's reason key. Text between control tokens is encoded on its own in both, so
the ids agree. Special-token strings typed inside messages: z2h encodes them as text; Hugging Face
does only with `apply_chat_template(..., sanitize_control_tokens=True)` (otherwise they become control
tokens, as for every Hugging Face chat model), and then encodes each typed marker apart from the text
around it, so the ids next to it can differ from z2h's (same text, no forged control token).
"""

from __future__ import annotations

import json
from functools import cache

from stages.common.chat import ASSISTANT_END, ASSISTANT_START, SYSTEM_SEPARATOR, USER_END, USER_START
from stages.common.tokenizer import BOS, Tokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

_TEMPLATE = """
{%- set ns = namespace(system='', turns=0, last='') -%}
{{- BOS -}}
{%- for message in messages -%}
  {%- if message['role'] not in ['system', 'user', 'assistant'] -%}
    {{- raise_exception('unknown_role: message ' ~ loop.index0 ~ ' has role ' ~ message['role']) -}}
  {%- endif -%}
  {%- if message['content'] is not string -%}
    {{- raise_exception('non_string_content: message ' ~ loop.index0 ~ ' content is not a string') -}}
  {%- endif -%}
  {%- if message['content'] | trim == '' -%}
    {{- raise_exception('empty_content: message ' ~ loop.index0 ~ ' (' ~ message['role'] ~ ') is empty') -}}
  {%- endif -%}
  {%- if message['role'] == 'system' -%}
    {%- if not loop.first -%}
      {{- raise_exception('system_not_first: system message at position ' ~ loop.index0) -}}
    {%- endif -%}
    {%- set ns.system = message['content'] ~ SEPARATOR -%}
  {%- else -%}
    {%- set expected = 'user' if ns.turns % 2 == 0 else 'assistant' -%}
    {%- if message['role'] != expected -%}
      {{- raise_exception('not_alternating: message ' ~ loop.index0 ~ ' is ' ~ message['role'] ~ ', expected '
          ~ expected) -}}
    {%- endif -%}
    {%- if message['role'] == 'user' -%}
      {{- USER_START ~ ns.system ~ message['content'] ~ USER_END -}}
      {%- set ns.system = '' -%}
    {%- else -%}
      {{- ASSISTANT_START ~ message['content'] ~ ASSISTANT_END -}}
    {%- endif -%}
    {%- set ns.turns = ns.turns + 1 -%}
    {%- set ns.last = message['role'] -%}
  {%- endif -%}
{%- endfor -%}
{%- if ns.turns == 0 -%}
  {{- raise_exception('no_turns: no user or assistant message') -}}
{%- endif -%}
{%- if add_generation_prompt -%}
  {%- if ns.last != 'user' -%}
    {{- raise_exception('ends_without_user_turn: a prompt must end with a user message') -}}
  {%- endif -%}
  {{- ASSISTANT_START -}}
{%- endif -%}
"""


@cache
def chat_template() -> str:
    """The Jinja template, its markers spelled from `stages.common.chat` so the two cannot drift."""
    names = {
        "SEPARATOR": SYSTEM_SEPARATOR,
        "ASSISTANT_START": ASSISTANT_START,
        "ASSISTANT_END": ASSISTANT_END,
        "USER_START": USER_START,
        "USER_END": USER_END,
        "BOS": BOS,
    }
    text = _TEMPLATE.strip()
    for name, value in names.items():
        text = text.replace(name, json.dumps(value))  # a JSON string is a valid Jinja string literal
    return text


@cache
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of `tokenizers`' ByteLevel: printable
    Latin-1 bytes stand for themselves, the other 68 take the characters from U+0100 on, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            alphabet[byte] = chr(byte)
        else:
            alphabet[byte] = chr(256 + shifted)
            shifted += 1
    return alphabet


def _spell(token: bytes) -> str:
    alphabet = byte_alphabet()
    return "".join(alphabet[b] for b in token)


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary (spelled token -> rank) and merges of tiktoken `ranks`."""
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    vocab = {_spell(token): rank for token, rank in ranks.items()}
    return vocab, [(_spell(left), _spell(right)) for *_, left, right in merges]


def build_fast_tokenizer(tokenizer: Tokenizer):
    """A `tokenizers.Tokenizer` that encodes every text to the ids z2h's tiktoken encoding gives."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as FastTokenizer

    vocab, merges = vocab_and_merges(tokenizer.encoding._mergeable_ranks)  # tiktoken keeps no public accessor
    fast = FastTokenizer(models.BPE(vocab, merges, ignore_merges=True))
    fast.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(tokenizer.encoding._pat_str), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    fast.decoder = decoders.ByteLevel()
    specials = sorted(tokenizer.specials.items(), key=lambda item: item[1])
    fast.add_special_tokens([AddedToken(token, special=True, normalized=False) for token, _ in specials])
    for token, expected in specials:
        if fast.token_to_id(token) != expected:
            raise ValueError(f"special token {token} got id {fast.token_to_id(token)}, z2h uses {expected}")
    fast.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.bos_id)]
    )
    return fast


def tokenizer_config(tokenizer: Tokenizer, eos: str, max_length: int) -> dict:
    """tokenizer_config.json: the special tokens by role, the chat template and the context length."""
    others = [token for token in sorted(tokenizer.specials, key=tokenizer.specials.get) if token not in (BOS, eos)]
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": eos,
        "pad_token": eos,  # the eos token, as config.json pads (see hf_model.hf_config)
        "additional_special_tokens": others,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "chat_template": chat_template(),
    }


def special_tokens_map(tokenizer: Tokenizer, eos: str) -> dict:
    config = tokenizer_config(tokenizer, eos, 0)
    return {key: config[key] for key in ("bos_token", "eos_token", "pad_token", "additional_special_tokens")}
