"""The GPT's shape (`GPTConfig`) and the file names of a saved model, without torch: configs,
budgets and `z2h plan` read them in processes that never build a model."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Literal

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    seq_len: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: as many as query heads (plain multi-head attention)
    d_model: int = 128
    mlp: Literal["relu2", "swiglu"] = "swiglu"  # swiglu: a Llama/Qwen3 block, exportable (use/hf_model.py)
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"n_head={self.n_head} does not divide d_model={self.d_model}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_kv_head={self.kv_heads} does not divide n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_dim(self) -> int:
        hidden = int(self.mlp_ratio * self.d_model)
        if self.mlp == "swiglu":  # ~ the parameter count of a ReLU^2 MLP of mlp_ratio (three matrices, not two),
            hidden = 8 * math.ceil(2 * hidden / 3 / 8)  # rounded up to a multiple of 8 so tp = 2, 4, 8 divide it
        return hidden

    def num_params(self, embedding: bool = True) -> int:
        d, h, kv = self.d_model, self.head_dim, self.kv_heads
        attn = d * (self.n_head * h) * 2 + d * (kv * h) * 2
        mlp = d * self.hidden_dim * (3 if self.mlp == "swiglu" else 2)
        norms = 2 * d + (2 * h if self.qk_norm else 0)
        body = self.n_layer * (attn + mlp + norms) + d + self.vocab_size * d  # + final norm + head
        return body + (self.vocab_size * d if embedding else 0)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per weight (forward + backward) plus attention scores
        (the PaLM appendix estimate, 12 * layers * d_model * seq_len for causal attention)."""
        return 6 * self.num_params(embedding=False) + 12 * self.n_layer * self.d_model * self.seq_len

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GPTConfig:
        return cls(**json.loads(text))
