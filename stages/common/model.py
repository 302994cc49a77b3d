"""A modern decoder-only GPT, plain enough to read in one sitting.

Token embedding -> N x [RMSNorm -> causal self-attention (RoPE, optional QK-norm, grouped
KV heads) -> RMSNorm -> MLP (SwiGLU, or ReLU^2)] -> RMSNorm -> untied output head. No biases.
With SwiGLU this is Hugging Face's Qwen3 (with QK-norm) or Llama (without) block, so `z2h export`
writes it as one; ReLU^2 has no stock architecture and stays inside z2h.
Parallelism lives elsewhere (torchtitan style): layers sit in a ModuleDict keyed by their
index so a pipeline stage can delete the ones it does not own, and the embedding, final
norm and head may be None on stages that do not hold them. Attention reshapes with -1
heads so tensor-parallel shards (fewer local heads) run the same code.

Generation passes a `KVCache` (stages/common/kv_cache.py): each attention layer appends its new
keys and values and attends over everything cached so far; rows may be left-padded, so the cache
also supplies each token's RoPE position and the attention mask. Training never passes one.

Checkpoints are `model.safetensors` + `config.json`: loading never unpickles.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from stages.common.model_config import CONFIG_FILE, WEIGHTS_FILE, GPTConfig

if TYPE_CHECKING:
    from stages.common.kv_cache import KVCache


def rope_tables(seq_len: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of x: (batch, heads, time, head_dim)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        batch, time, _ = x.shape
        q = self.wq(x).view(batch, time, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(batch, time, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(batch, time, -1, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        grouped = q.shape[1] != k.shape[1]
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=grouped)
        else:
            k, v = cache.append(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.mask, enable_gqa=grouped)
        return self.wo(y.transpose(1, 2).reshape(batch, time, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind = cfg.mlp
        self.w1 = nn.Linear(cfg.d_model, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.d_model, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.hidden_dim, bias=False) if cfg.mlp == "swiglu" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w3 is not None:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.relu(self.w1(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache=cache, layer=layer)  # TP plans see 3 args
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.n_layer)})
        self.norm: nn.RMSNorm | None = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.output: nn.Linear | None = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """tokens (batch, time) ids -> logits (batch, time, vocab). On a pipeline stage without
        the embedding, `tokens` is the previous stage's hidden state; without the head, the
        hidden state is returned. With a cache, `tokens` continue the cached sequences."""
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        time = h.shape[1]
        if cache is None:
            cos, sin = self.rope_cos[:time], self.rope_sin[:time]
        else:  # per-row positions (rows are left-padded): (batch, 1, time, head_dim / 2)
            positions = cache.begin(time)
            cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)
        for index, layer in enumerate(self.layers.values()):
            h = layer(h, cos, sin, cache=cache, layer=index)
        if cache is not None:
            cache.commit(time)
        if self.norm is not None:
            h = self.norm(h)
        return self.output(h) if self.output is not None else h

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Deterministic from the seed alone: the same weights on every device and rank.
        Normal(0, 0.02); residual projections scaled by 1/sqrt(2 * n_layer) (GPT-2); the MLP's input
        projections at fan-in scale, 1/sqrt(d_model). The MLP multiplies two of them (SwiGLU) or squares
        one (ReLU^2), so at 0.02 its output and gradients start (0.02 * sqrt(d_model))^2 small and learn
        late (tiny.yaml's shape and steps, one process: held-out loss 5.70 -> 5.01 SwiGLU, 5.39 -> 5.10
        ReLU^2)."""
        generator = torch.Generator().manual_seed(seed)
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        mlp_in_std = self.cfg.d_model**-0.5
        for name, param in sorted(self.named_parameters()):
            if param.dim() == 1:  # norm weights
                param.fill_(1.0)
                continue
            if name.endswith(("wo.weight", "w2.weight")):
                std = residual_std
            else:
                std = mlp_in_std if name.endswith(("w1.weight", "w3.weight")) else 0.02
            values = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
            param.copy_(values.to(param.dtype))
        cos, sin = rope_tables(self.cfg.seq_len, self.cfg.head_dim, self.cfg.rope_theta, self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token loss over positions whose target is not `ignore_index`."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)


def build(cfg: GPTConfig, seed: int, device: torch.device | str = "cpu") -> GPT:
    """A GPT built on the meta device, then materialised and initialised on `device`."""
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device=device)
    model.init_weights(seed)
    return model


def save_pretrained(model: GPT, folder: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write `model.safetensors` + `config.json`; `state` overrides the model's own state dict
    (e.g. one gathered from a sharded model)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = state if state is not None else model.state_dict()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(model.cfg.to_json())


def load_pretrained(folder: Path, device: torch.device | str = "cpu") -> GPT:
    """Load a saved GPT; names what is missing or mismatched instead of failing deep inside."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}; not a saved model folder")
    cfg = GPTConfig.from_json((folder / CONFIG_FILE).read_text())
    model = build(cfg, seed=0, device=device)
    state = load_file(str(folder / WEIGHTS_FILE), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS_FILE}: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    return model
