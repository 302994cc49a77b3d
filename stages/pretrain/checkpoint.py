"""Distributed checkpoints (torch.distributed.checkpoint) and the consolidated safetensors export.

A checkpoint `step_NNNNNNNN/` holds DCP shards of the model and optimiser state (tensors only,
keyed by parameter name, so it loads onto any mesh), `rng_<rank>.safetensors`, and `state.json`
(step, loader position, sha256 of DCP's `.metadata`), written last by rank 0: a folder without
`state.json` is incomplete.
DCP's `.metadata` is a pickle that `dcp.load` unpickles (its tensor shards load with
`weights_only=True`; the rest is JSON and safetensors). Its sha256, recorded when the checkpoint
is written, is checked before every load: a metadata file swapped on shared storage is refused
rather than unpickled.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from stages.common.model import GPT, GPTConfig, build, save_pretrained
from stages.common.parallel.mesh import Mesh
from stages.common.shards import ShardError, WindowLoader

STATE_FILE = "state.json"
METADATA_FILE = ".metadata"  # DCP's pickled index of the shards


class CheckpointError(RuntimeError):
    """A checkpoint that must not be loaded."""


class _Shell(nn.Module):
    """Several pipeline stages of one rank seen as one module whose parameter names are the
    global ones (interleaved schedules hold e.g. layers 0-1 and 4-5 on the same rank)."""

    def __init__(self, parts: list[GPT]):
        super().__init__()
        self.layers = nn.ModuleDict({name: block for part in parts for name, block in part.layers.items()})
        for attr in ("tok_embeddings", "norm", "output"):
            found = [getattr(part, attr) for part in parts if getattr(part, attr) is not None]
            if found:
                setattr(self, attr, found[0])


def _module(parts: list[GPT]) -> nn.Module:
    return parts[0] if len(parts) == 1 else _Shell(parts)


def _states(parts: list[GPT], optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], list[dict]]:
    """Tensor-only state for DCP, plus the optimiser's param groups (rebuilt from config, not saved)."""
    model_state, optim_state = get_state_dict(_module(parts), optimizer)
    return {"model": model_state, "optim": optim_state["state"]}, optim_state["param_groups"]


def complete(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    return sorted(p.parent for p in root.glob(f"step_*/{STATE_FILE}"))


def save(
    root: Path, step: int, parts: list[GPT], optimizer: torch.optim.Optimizer, extra: dict, mesh: Mesh, keep: int
) -> Path:
    path = root / f"step_{step:08d}"
    state, _ = _states(parts, optimizer)
    dcp.save(state, checkpoint_id=path, no_dist=mesh.device_mesh is None)
    save_file({"cpu": torch.get_rng_state()}, str(path / f"rng_{mesh.rank}.safetensors"))
    mesh.barrier()
    if mesh.is_logger:
        state_json = {"step": step, **extra, "metadata_sha256": _metadata_sha256(path)}
        (path / STATE_FILE).write_text(json.dumps(state_json, indent=2))
        for old in complete(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    mesh.barrier()
    return path


def _metadata_sha256(path: Path) -> str:
    return hashlib.sha256((path / METADATA_FILE).read_bytes()).hexdigest()


def verify(path: Path) -> dict:
    """state.json, once the metadata DCP will unpickle is the one recorded at save time."""
    try:
        saved = json.loads((path / STATE_FILE).read_text())
        recorded, actual = saved["metadata_sha256"], _metadata_sha256(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: cannot check its {METADATA_FILE} ({exc!r}); not loading it"
        ) from None
    if recorded != actual:
        raise CheckpointError(
            f"checkpoint {path}: {METADATA_FILE} has sha256 {actual}, but {recorded} was recorded when it was "
            "written; refusing to unpickle it (delete the checkpoint to start over)"
        )
    return saved


def load(path: Path, parts: list[GPT], optimizer: torch.optim.Optimizer, mesh: Mesh) -> dict:
    """Load model + optimiser (resharding to this mesh) and this rank's RNG; returns state.json."""
    saved = verify(path)
    state, groups = _states(parts, optimizer)
    dcp.load(state, checkpoint_id=path, no_dist=mesh.device_mesh is None)
    set_state_dict(
        _module(parts),
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict={"state": state["optim"], "param_groups": groups},
    )
    rng = path / f"rng_{mesh.rank}.safetensors"
    if rng.is_file():  # absent when this mesh has more ranks than the one that saved
        torch.set_rng_state(load_file(str(rng))["cpu"])
    return saved


def loader_state(loader: WindowLoader) -> dict[str, int]:
    """Position as windows consumed this epoch by all dp ranks together: the same on any mesh."""
    return {
        "epoch": loader.epoch,
        "windows": loader.batch * loader.batch_size * loader.world_size,
        "seed": loader.seed,
        "n_windows": loader.n_windows,
    }


def restore_loader(loader: WindowLoader, saved: dict[str, int]) -> None:
    """Rank r of W takes windows r, r+W, ... of each epoch's order, so after k batches of b the
    ranks together have consumed the first k*b*W windows whatever W is: a position carries over
    to another dp size or micro-batch as long as it falls on a batch boundary there."""
    mine = loader_state(loader)
    clash = {k: (saved[k], mine[k]) for k in ("seed", "n_windows") if saved[k] != mine[k]}
    rows = loader.batch_size * loader.world_size
    if saved["windows"] % rows:
        clash["windows"] = (saved["windows"], f"a multiple of {rows}")
    if clash:
        raise ShardError(f"cannot resume the data position: saved vs current {clash}")
    loader.epoch, loader.batch = saved["epoch"], saved["windows"] // rows


def export(path: Path, model_cfg: GPTConfig, folder: Path) -> GPT:
    """Consolidate a checkpoint's model into `model.safetensors` + `config.json` (one process)."""
    verify(path)
    model = build(model_cfg, seed=0)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=path, no_dist=True)
    save_pretrained(model, folder, state=state["model"])
    return model
