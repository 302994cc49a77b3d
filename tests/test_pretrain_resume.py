"""Checkpoints: interrupt + resume equals an uninterrupted run exactly; a checkpoint written on
one mesh (dp=2, FSDP2) resumes on another (pp=2, interleaved: two chunks per rank) and stays on
the single-process trajectory."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from pretrain_support import VOCAB, run_job, small_config, write_shards
from safetensors.torch import load_file

from stages.common.shards import ShardError
from stages.pretrain import checkpoint
from stages.pretrain.train import Job

STEPS, HALT = 5, 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


def job(shards: Path, folder: Path, halt: int | None = None, **mesh) -> Job:
    cfg = small_config(max_steps=STEPS, checkpoint_every=2, keep_checkpoints=1, **mesh)
    return Job(cfg, shards, folder / "ckpt", seed=4, export_dir=folder / "model", halt_after=halt)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("whole")
    return run_job(job(shards, folder)), folder


def test_resume_is_exact(shards: Path, uninterrupted, tmp_path: Path) -> None:
    whole, whole_dir = uninterrupted
    first = run_job(job(shards, tmp_path, halt=HALT))
    assert len(first["losses"]) == HALT and not (tmp_path / "model").exists()
    assert [p.name for p in checkpoint.complete(tmp_path / "ckpt")] == [f"step_{HALT - 1:08d}"]
    second = run_job(job(shards, tmp_path))
    assert first["losses"] + second["losses"] == whole["losses"]  # bit for bit
    for key, value in weights(whole_dir).items():
        assert torch.equal(weights(tmp_path)[key], value), key
    again = run_job(job(shards, tmp_path))  # restarted after the last checkpoint: reports, trains nothing
    assert again["losses"] == [] and again["val_loss"] == second["val_loss"]
    assert again["tokens_seen"] == second["tokens_seen"]


def test_checkpoint_reshards_onto_another_mesh(shards: Path, uninterrupted, tmp_path: Path) -> None:
    whole, _ = uninterrupted
    first = run_job(job(shards, tmp_path, halt=HALT, dp=2))
    second = run_job(job(shards, tmp_path, pp=2, pp_schedule="interleaved_1f1b"))
    assert first["losses"] + second["losses"] == pytest.approx(whole["losses"], abs=1e-5)


def test_incomplete_checkpoints_are_ignored_and_data_position_must_fit(shards: Path, tmp_path: Path) -> None:
    (tmp_path / "ckpt" / "step_00000009").mkdir(parents=True)  # a crash mid-save: no state.json
    assert checkpoint.complete(tmp_path / "ckpt") == []
    run_job(job(shards, tmp_path, halt=HALT))
    with pytest.raises(ShardError, match="cannot resume the data position"):
        run_job(job(shards, tmp_path, micro_batch=12, batch_tokens=384))


class _Planted:
    """A pickle that creates a file when unpickled: what a tampered `.metadata` could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_swapped_metadata_is_refused_before_unpickling(shards: Path, tmp_path: Path) -> None:
    run_job(job(shards, tmp_path, halt=HALT))
    saved = checkpoint.complete(tmp_path / "ckpt")[-1]
    planted = tmp_path / "unpickled"
    (saved / checkpoint.METADATA_FILE).write_bytes(pickle.dumps(_Planted(planted)))
    with pytest.raises(checkpoint.CheckpointError, match=f"checkpoint {saved}: .metadata has sha256"):
        run_job(job(shards, tmp_path))
    with pytest.raises(checkpoint.CheckpointError, match="refusing to unpickle"):
        checkpoint.export(saved, small_config().model.gpt(VOCAB), tmp_path / "export")
    assert not planted.exists()
