"""The shared Ray Train launcher's settings, checked without starting Ray (the stage tests run it)."""

from __future__ import annotations

from pathlib import Path

from stages.common.worker_group import STARTUP_TRIES, WorkerGroup


def test_every_launch_gets_a_fresh_run_name_and_a_start_up_limit(tmp_path: Path):
    group = WorkerGroup("sft", workers=2, cpus=1.5)
    first, second = group.run_config(tmp_path), group.run_config(tmp_path)
    assert first.name.startswith("sft-") and first.name != second.name
    assert first.storage_path == str(tmp_path)
    assert first.failure_config.max_failures == 0  # no checkpoints to resume from: a lost worker fails the stage
    assert first.failure_config.controller_failure_limit == STARTUP_TRIES > 0  # never wait forever for a group


def test_restarts_are_the_stage_s_choice(tmp_path: Path):
    group = WorkerGroup("pretrain", workers=4, cpus=1.0, max_failures=2)
    assert group.run_config(tmp_path).failure_config.max_failures == 2


def test_workers_are_packed_and_ask_for_gpus_only_when_given():
    cpu = WorkerGroup("rl", workers=2, cpus=1.0).scaling()
    assert (cpu.num_workers, cpu.use_gpu, cpu.placement_strategy) == (2, False, "PACK")
    assert cpu.resources_per_worker == {"CPU": 1.0}
    gpu = WorkerGroup("pretrain", workers=8, cpus=4.0, gpus=1.0).scaling()
    assert gpu.use_gpu and gpu.resources_per_worker == {"CPU": 4.0, "GPU": 1.0}


def _write_and_report(folder: Path | None) -> dict[str, float]:
    import os

    import torch

    assert folder is not None  # the only worker is rank 0
    (folder / "model.txt").write_text("weights")
    return {"pid": float(os.getpid()), "threads": float(torch.get_num_threads())}


def test_a_one_worker_group_runs_in_the_task_that_holds_its_cpus(ray_session, tmp_path: Path):
    import os
    import sys

    import ray
    import ray.cloudpickle

    from stages.common.worker_group import _held_here, launch

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/

    @ray.remote(num_cpus=2)
    def stage_task(into: Path) -> tuple[int, dict[str, float], str]:
        metrics = launch(_write_and_report, WorkerGroup("sft", workers=1, cpus=2), into.parent / "ray_train", into)
        return os.getpid(), metrics, (into / "model.txt").read_text()

    (tmp_path / "result").mkdir()
    (tmp_path / "result" / "stale.txt").write_text("from an earlier attempt")
    pid, metrics, text = ray.get(stage_task.remote(tmp_path / "result"))
    assert metrics == {"pid": float(pid), "threads": 2.0} and text == "weights"  # no Ray Train worker: same process
    assert sorted(p.name for p in (tmp_path / "result").iterdir()) == ["model.txt"]
    assert not (tmp_path / "ray_train").exists()
    # The driver holds no CPUs of its own: a group launched from it starts Ray Train workers.
    assert not _held_here(WorkerGroup("sft", workers=1, cpus=1))
