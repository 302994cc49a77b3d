"""The process group and the (pp, dp, tp) device mesh, TP innermost so TP peers share a node.

Ray Train (and torchrun's env) decide who starts the process group: inside Ray Train it already
exists and must not be created again; under torchrun or a spawned test it is created here.
Pretraining uses all three axes; SFT and the RL learner run with pp=1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


def pick_device(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        # torchrun and Ray Train both set LOCAL_RANK; Ray Train shows a node's workers all of the
        # node's assigned GPUs, in local-rank order.
        index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def ensure_process_group(device: torch.device) -> None:
    """Join the group described by torchrun-style env vars unless one exists (Ray Train's)."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


@dataclass
class Mesh:
    """This rank's place in the (pp, dp, tp) grid; `device_mesh` is None for a single process."""

    pp: int
    dp: int
    tp: int
    device: torch.device
    device_mesh: DeviceMesh | None

    @classmethod
    def build(cls, pp: int, dp: int, tp: int, device: torch.device) -> Mesh:
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world != pp * dp * tp:
            raise ValueError(f"{world} processes cannot form a mesh of pp={pp} x dp={dp} x tp={tp}")
        if world == 1:
            return cls(1, 1, 1, device, None)
        names = ("pp", "dp", "tp")
        return cls(pp, dp, tp, device, init_device_mesh(device.type, (pp, dp, tp), mesh_dim_names=names))

    @classmethod
    def data_and_tensor(cls, tp: int, device: torch.device) -> Mesh:
        """dp x tp over every process of the group, dp = processes / tp (SFT and the RL learner)."""
        world = dist.get_world_size() if dist.is_initialized() else 1
        if world % tp:
            raise ValueError(f"{world} processes cannot form tensor-parallel groups of tp={tp}")
        return cls.build(1, world // tp, tp, device)

    @property
    def size(self) -> int:
        """Processes in the mesh."""
        return self.pp * self.dp * self.tp

    @property
    def rank(self) -> int:
        return dist.get_rank() if self.device_mesh is not None else 0

    def coordinate(self, dim: str) -> int:
        return self.device_mesh.get_local_rank(dim) if self.device_mesh is not None else 0

    def sub(self, dim: str) -> DeviceMesh:
        return self.device_mesh[dim]

    @property
    def is_logger(self) -> bool:
        """Global rank 0: logs metrics, shows progress, writes the run's files."""
        return self.rank == 0

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.device_mesh is not None:
            dist.all_reduce(values)
        return values

    def all_max(self, values: torch.Tensor) -> torch.Tensor:
        if self.device_mesh is not None:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values

    def dp_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over the data-parallel ranks only: TP peers hold the same data, so they are not added twice."""
        if self.dp > 1:
            dist.all_reduce(values, group=self.sub("dp").get_group())
        return values

    def barrier(self) -> None:
        if self.device_mesh is not None:
            dist.barrier()
