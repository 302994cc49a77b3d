"""One forward/backward (or forward-only) pass over a micro-batch, with or without a pipeline.

Without PP this is `loss.backward()`. With PP the batch goes through a
`torch.distributed.pipelining` schedule in microbatches; only the last stage sees the loss.
With TP and loss_parallel the logits are a DTensor sharded on the vocabulary: the loss and its
backward run under `loss_parallel()`, and the losses reported are plain tensors again.
"""

from __future__ import annotations

import contextlib

import torch
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from stages.common.model import GPT, GPTConfig, cross_entropy
from stages.common.parallel.compute import compute, plain
from stages.common.parallel.mesh import Mesh
from stages.pretrain.config import PretrainConfig

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class ScaledLoss:
    """The pipeline's loss function; `scale` (1 / accumulation steps) changes between train and eval."""

    def __init__(self) -> None:
        self.scale = 1.0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, targets) * self.scale


class Engine:
    def __init__(self, parts: list[tuple[int, GPT]], cfg: PretrainConfig, mesh: Mesh, model_cfg: GPTConfig):
        self.parts, self.cfg, self.mesh = parts, cfg, mesh
        indices = [index for index, _ in parts]
        self.has_first = 0 in indices
        self.has_last = cfg.n_stages - 1 in indices
        self.loss_fn = ScaledLoss()
        self.schedule = self._schedule(model_cfg) if cfg.pp > 1 else None

    def _schedule(self, model_cfg: GPTConfig):
        cfg, mesh = self.cfg, self.mesh
        rows = cfg.micro_batch // cfg.pp_microbatches
        time, width = model_cfg.seq_len, model_cfg.d_model
        # Shapes given up front: shape inference would run the TP-sharded stages on meta tensors.
        hidden = torch.empty(rows, time // cfg.tp, width, device=mesh.device, requires_grad=True)
        logits_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        logits = torch.empty(rows, time, model_cfg.vocab_size, device=mesh.device, dtype=logits_dtype)
        tokens = torch.empty(rows, time, dtype=torch.long, device=mesh.device)
        group = mesh.sub("pp").get_group()
        stages = [
            PipelineStage(
                module,
                index,
                cfg.n_stages,
                mesh.device,
                input_args=tokens if index == 0 else hidden,
                output_args=logits if index == cfg.n_stages - 1 else hidden,
                group=group,
            )
            for index, module in self.parts
        ]
        if cfg.pp_schedule == "interleaved_1f1b":
            return ScheduleInterleaved1F1B(stages, cfg.pp_microbatches, loss_fn=self.loss_fn, scale_grads=False)
        return SCHEDULES[cfg.pp_schedule](stages[0], cfg.pp_microbatches, loss_fn=self.loss_fn, scale_grads=False)

    def autocast(self) -> contextlib.ExitStack:
        """bf16 autocast if configured, and the vocab-parallel loss if the logits are sharded."""
        return compute(self.mesh.device, self.cfg.precision == "bf16", self.cfg.tp > 1 and self.cfg.loss_parallel)

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor | None:
        """Accumulate gradients of `scale * loss`; returns this rank's mean loss, or None off the last stage."""
        with self.autocast():
            if self.schedule is None:
                loss = cross_entropy(self.parts[0][1](inputs), targets)
                (loss * scale).backward()
                return plain(loss.detach())
            # The schedule's own grad scaling would also rescale gradients accumulated by earlier
            # micro-steps, so the loss carries the 1/microbatches factor instead.
            self.loss_fn.scale = scale / self.cfg.pp_microbatches
            losses: list[torch.Tensor] = []
            self.schedule.step(*self._args(inputs), target=targets if self.has_last else None, losses=losses)
        return _mean(losses) / self.loss_fn.scale if self.has_last else None

    @torch.no_grad()
    def eval_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        with self.autocast():
            if self.schedule is None:
                return plain(cross_entropy(self.parts[0][1](inputs), targets))
            self.loss_fn.scale = 1.0
            losses: list[torch.Tensor] = []
            self.schedule.eval(*self._args(inputs), target=targets if self.has_last else None, losses=losses)
        return _mean(losses) if self.has_last else None

    def _args(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (inputs,) if self.has_first else ()

    def set_train(self, mode: bool) -> None:
        for _, module in self.parts:
            module.train(mode)


def _mean(losses: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([plain(loss.detach()) for loss in losses]).mean()
