"""Turn one plain GPT into this rank's pipeline pieces, each laid over the mesh's tp and dp axes
(stages.common.parallel.layout: tensor parallel -> activation checkpointing -> compile -> FSDP2).

Every rank starts from the same fully initialised model (`build` draws all weights from one
seeded generator, so the weights do not depend on which layers a rank keeps) and keeps only the
pipeline stages its pp coordinate owns.
"""

from __future__ import annotations

import copy

from torch import nn

from stages.common.model import GPT
from stages.common.parallel import layout
from stages.common.parallel.mesh import Mesh
from stages.pretrain.config import PretrainConfig


def stage_indices(cfg: PretrainConfig, pp_rank: int) -> list[int]:
    """Pipeline stages this pp rank runs: one, or every pp-th for interleaved (looped) schedules."""
    return list(range(pp_rank, cfg.n_stages, cfg.pp))


def pipeline_piece(full: GPT, stage: int, layers: list[range]) -> GPT:
    """A deep copy of `full` keeping only stage `stage`'s contiguous layers (`layers[stage]`);
    the embedding lives on the first stage, final norm and head on the last. Layer keys keep
    their global index, so parameter names are the same on every mesh (checkpoints reshard)."""
    piece = copy.deepcopy(full)
    n_stages = len(layers)
    keep = {str(i) for i in layers[stage]}
    for name in list(piece.layers):
        if name not in keep:
            del piece.layers[name]
    if stage > 0:
        piece.tok_embeddings = None
    if stage < n_stages - 1:
        piece.norm = None
        piece.output = None
    return piece


def layout_of(cfg: PretrainConfig) -> layout.Layout:
    return layout.Layout(cfg.dp_mode, cfg.loss_parallel, cfg.activation_checkpointing, cfg.compile)


def parallelize(full: GPT, cfg: PretrainConfig, mesh: Mesh) -> list[tuple[int, GPT]]:
    """(stage index, module) for each pipeline stage this rank runs; one entry without PP."""
    pieces = []
    for stage in stage_indices(cfg, mesh.coordinate("pp")):
        piece = pipeline_piece(full, stage, cfg.stage_layers()) if cfg.pp > 1 else full
        last = stage == cfg.n_stages - 1
        pieces.append((stage, layout.parallelize(piece, mesh, layout_of(cfg), first=stage == 0, last=last)))
    return pieces


def parameters(parts: list[tuple[int, nn.Module]]) -> list[nn.Parameter]:
    return [p for _, module in parts for p in module.parameters()]
