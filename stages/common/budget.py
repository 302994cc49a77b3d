"""How stages estimate their `pipeline.budget.Budget`: the model arithmetic (training and forward FLOPs, the
memory of a training state, of activations, of weights and KV caches), decoding time, and the rates of the
text stages. Each constant names its source: a public figure or a measurement made in this repository.
Estimates, not promises: `z2h plan` prints them as such.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.budget import GB, Budget, Hardware
from stages.common.model_config import GPTConfig

# -- text -------------------------------------------------------------------------------------------------
# CommonCrawl CC-MAIN-2024-18: 2.7 billion pages, 386 TiB uncompressed, in 90,000 WARC files of about 1 GB
# compressed each (the crawl's announcement and its warc.paths.gz).
CC_PAGES_PER_FILE = 30_000
CC_FILE_BYTES = 1.1e9
# FineWeb kept ~15T GPT-2 tokens from 96 crawls of ~90,000 WARC files: ~1.7M tokens of text a file.
CC_KEPT_TOKENS_PER_FILE = 15e12 / 96 / 90_000
# FineWeb-Edu sample-10BT: 10B GPT-2 tokens in 9.67M documents; GPT-2's vocabulary reads ~4.5 bytes a token.
WEB_DOC_TOKENS = 10e9 / 9.67e6
GPT2_BYTES_PER_TOKEN = 4.5
# The tiny run's 4,096-token vocabulary reads 3.36 bytes a token (5.56 nats at 2.387 bits per byte).
SMALL_VOCAB, SMALL_BYTES_PER_TOKEN = 4096, 3.36
GPT2_VOCAB = 50_304
# CPU seconds a core spends per page on the FineWeb recipe: 0.036 s in the filter blocks (bench/data.py's
# blocks on the sample corpus, timed as process CPU) plus trafilatura in its sandbox process.
RECIPE_CPU_S_PER_PAGE = 0.045
# MinHash signatures: 0.43 MB of text a CPU second (same measurement); reading parquet is noise beside it.
DEDUP_CPU_S_PER_MB = 1 / 0.43
# A data task's peak memory: 1.06 GB for the blocks in one process plus 0.77 GB for the extraction sandbox.
DATA_TASK_GB = 2.0
# The sample corpus: ~30 KB a WARC record; the tiny run keeps ~0.9 KB of text a page (343k tokens of 1,362).
SAMPLE_PAGE_BYTES, SAMPLE_KEPT_BYTES_PER_PAGE = 30e3, 900
# Tokenizer: rustbpe trains at ~0.31 s a MB of text (bench/tokenizer.py, 8k vocabulary) and holds ~7 bytes
# a training character with the text itself (80 MB with a long tail of rare words: +550 MB); one encoding
# task shards ~8.8 MB of text a second.
BPE_TRAIN_S_PER_MB, BPE_BYTES_PER_CHAR, ENCODE_MB_PER_S = 0.31, 7.0, 8.8

# -- models -----------------------------------------------------------------------------------------------
# Activations kept for backward per token and layer, in bytes: 34 * d_model in 16-bit with flash attention
# (Korthikanti et al. 2022, no attention scores kept), twice that in fp32; with activation checkpointing a
# layer keeps only its input. Logits cost ~10 bytes a token and vocabulary entry in bf16 (the bf16 logits,
# their fp32 copy for the loss and its gradient), 12 in fp32. A GPU worker adds ~2 GB (CUDA context, NCCL
# buffers, allocator slack). Checked against bench/results/h100.md: GPT-2 shape, 16 x 1024 tokens a micro
# batch, bf16, compiled: 18.0 GB estimated, 18.6 GB (17.3 GiB) measured.
ACTIVATION_BYTES = 34
LOGIT_BYTES = {True: 10, False: 12}
GPU_OVERHEAD_GB, CPU_OVERHEAD_GB = 2.0, 0.5
# Decoding one token for a batch is bound by kernel launches at these sizes: ~14 ms a step for the
# 12-layer GPT-2 shape at batch 32 on an H100 (bench/results/h100.md).
DECODE_S_PER_LAYER = 14e-3 / 12
# Tokens of a task's prompt in the chat template: a GSM8K question is ~60-120 words (~80-160 tokens).
TASK_PROMPT_TOKENS = 128
# A multiple-choice item: ~4 options of ~100 tokens (question and option text; HellaSwag's contexts and
# endings, ARC's and MMLU's questions), each solved example before it adding as much again.
CHOICE_OPTIONS, CHOICE_TOKENS = 4, 100


def bytes_per_token(vocab: int) -> float:
    """Bytes of English web text a token of a `vocab`-entry BPE covers, log-linear between the two anchors."""
    share = (math.log2(vocab) - math.log2(SMALL_VOCAB)) / (math.log2(GPT2_VOCAB) - math.log2(SMALL_VOCAB))
    return SMALL_BYTES_PER_TOKEN + share * (GPT2_BYTES_PER_TOKEN - SMALL_BYTES_PER_TOKEN)


def cpu_seconds(cpu_s: float, cores: float) -> float:
    return cpu_s / max(cores, 1.0)


@dataclass(frozen=True)
class Memory:
    """A worker's peak memory and what makes it up."""

    gb: float
    parts: str


def training_memory(
    model: GPTConfig,
    *,
    micro_tokens: float,
    shards: int,
    tp: int = 1,
    pp: int = 1,
    in_flight: int = 1,
    bf16: bool = True,
    checkpointing: bool = False,
    on_gpu: bool = True,
) -> Memory:
    """Training state (fp32 weights, grads and two Adam moments: 16 bytes a parameter, over `shards`), the
    activations of `in_flight` micro batches of `micro_tokens` tokens for this rank's layers (split over tp
    by sequence parallelism) and their logits."""
    state = 16 * model.num_params() / shards / GB
    per_layer = ACTIVATION_BYTES * model.d_model * (1 if bf16 else 2)
    layers = model.n_layer / pp
    kept = (layers * 2 * model.d_model * (1 if bf16 else 2) + per_layer) if checkpointing else layers * per_layer
    activations = micro_tokens * in_flight * kept / tp / GB
    logits = micro_tokens * model.vocab_size * LOGIT_BYTES[bf16] / tp / GB
    overhead = GPU_OVERHEAD_GB if on_gpu else CPU_OVERHEAD_GB
    parts = f"state {state:.1f} + activations {activations:.1f} + logits {logits:.1f} + runtime {overhead:.1f} GB"
    return Memory(state + activations + logits + overhead, parts)


def inference_memory(
    model: GPTConfig, *, batch: int, context: int, bf16: bool, score: bool, on_gpu: bool = True
) -> Memory:
    """Weights, the KV cache of `batch` sequences of `context` tokens and the logits: every position's when
    scoring (`score`), the last one's when sampling."""
    width = 2 if bf16 else 4
    weights = model.num_params() * width / GB
    cache = batch * context * model.n_layer * 2 * model.kv_heads * model.head_dim * width / GB
    logits = batch * (context if score else 1) * model.vocab_size * 4 / GB
    overhead = GPU_OVERHEAD_GB if on_gpu else CPU_OVERHEAD_GB
    parts = f"weights {weights:.1f} + KV cache {cache:.1f} + logits {logits:.1f} + runtime {overhead:.1f} GB"
    return Memory(weights + cache + logits + overhead, parts)


def forward_flops(model: GPTConfig, tokens: float) -> float:
    """A forward pass is a third of a training step's FLOPs (backward is two forwards)."""
    return model.flops_per_token() / 3 * tokens


def decode_seconds(
    model: GPTConfig, hardware: Hardware, *, sequences: float, new_tokens: int, batch: int, gpus: float
) -> float:
    """Sampling `new_tokens` for `sequences` sequences in batches of `batch` over `gpus` GPUs: a step costs
    its kernel launches or its FLOPs at the assumed MFU, whichever is more."""
    rounds = math.ceil(sequences / max(batch * max(gpus, 1.0), 1))
    flops = forward_flops(model, batch)
    step = max(model.n_layer * DECODE_S_PER_LAYER, flops / (hardware.peak_tflops * 1e12 * hardware.mfu))
    return rounds * new_tokens * step


def gpu_time(hardware: Hardware | None, flops: float, gpus: float) -> float | None:
    return hardware.gpu_seconds(flops, gpus) if hardware is not None else None


def upstream_model(upstream: Mapping[str, Budget], stage: str) -> GPTConfig | None:
    """The model shape an upstream model stage's budget hands on (None when it is not in this plan)."""
    found: Any = upstream[stage].output.get("model") if stage in upstream else None
    return found if isinstance(found, GPTConfig) else None


def model_line(model: GPTConfig) -> str:
    return f"{model.num_params() / 1e6:.1f}M params (d{model.d_model} x {model.n_layer} layers, seq {model.seq_len})"
