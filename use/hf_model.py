"""A z2h GPT as a stock Hugging Face architecture: its `config.json` and its weights under that
architecture's parameter names.

The correspondence (checked against transformers' Qwen3 and Llama modelling code, and by the parity
tests): pre-norm blocks with RMSNorm (same eps), RoPE rotating the first half of each head against
the second (`rotate_half`, same theta, head_dim = d_model / n_head), grouped KV heads (query head i
reads KV head i // group in both), SiLU(w1 x) * (w3 x) -> w2 (gate, up, down), no biases anywhere,
an untied output head. QK-norm is an RMSNorm over each head's channels before RoPE: Qwen3 has it,
Llama does not. A ReLU^2 MLP exists in no stock architecture, so such a model is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from stages.common.model import GPTConfig


class NotExportable(ValueError):
    """A model with no stock Hugging Face architecture."""


@dataclass(frozen=True)
class Architecture:
    model_type: str  # config.json's model_type
    class_name: str  # the transformers class that loads it


QWEN3 = Architecture("qwen3", "Qwen3ForCausalLM")
LLAMA = Architecture("llama", "LlamaForCausalLM")

# z2h name -> Hugging Face name, per block ("layers.{i}." -> "model.layers.{i}.") and outside the blocks.
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w3.weight": "mlp.up_proj.weight",
    "mlp.w2.weight": "mlp.down_proj.weight",
}
OUTER_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
HEAD_NAME = ("output.weight", "lm_head.weight")


def architecture(cfg: GPTConfig) -> Architecture:
    if cfg.mlp != "swiglu":
        raise NotExportable(
            f"mlp={cfg.mlp!r}: Hugging Face has no stock architecture with a {cfg.mlp} MLP, so transformers could "
            "not load it without remote code; train with mlp: swiglu (Qwen3 with qk_norm, Llama without) to export"
        )
    return QWEN3 if cfg.qk_norm else LLAMA


def hf_config(cfg: GPTConfig, dtype: torch.dtype, bos_id: int, eos_id: int) -> dict:
    """config.json for `cfg` as its architecture; `eos_id` is where generation stops, and pads.

    z2h has no padding token. Padding with `<|bos|>` would be wrong: called without an attention mask,
    transformers masks every input token equal to the pad id unless it is also the eos id, and every
    prompt starts with `<|bos|>`."""
    arch = architecture(cfg)
    config = {
        "architectures": [arch.class_name],
        "model_type": arch.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # older transformers read this key, newer ones rope_parameters
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,  # = eos: generate() then never takes a prompt's <|bos|> for padding
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if arch is QWEN3:
        config |= {"use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.n_layer}
    else:
        config |= {"mlp_bias": False, "pretraining_tp": 1}
    return config


def hf_state_dict(cfg: GPTConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """z2h parameter names -> the architecture's; every tensor accounted for, contiguous on the CPU."""
    architecture(cfg)
    renamed: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in OUTER_NAMES:
            new = OUTER_NAMES[name]
        elif name == HEAD_NAME[0]:
            new = HEAD_NAME[1]
        else:
            layers, index, rest = name.split(".", 2) if name.startswith("layers.") else ("", "", name)
            if not layers or rest not in BLOCK_NAMES:
                raise NotExportable(f"parameter {name!r} has no counterpart in {architecture(cfg).class_name}")
            new = f"model.layers.{index}.{BLOCK_NAMES[rest]}"
        renamed[new] = tensor.detach().contiguous().cpu()
    return renamed
