"""Every benchmark runs the way its docstring says, in its smallest mode: started from the repo root
as `python bench/<name>.py ...` (gpu.py and torchrun'd pretrain.py in a Python that holds only torch
and the few packages their docstrings name), it exits 0 and its last stdout line is JSON with the
keys its readers use. Numbers are never checked against a speed."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# For bench/full_run.py: the tiny pipeline's data slice (as in test_tiny_pipeline), in one data worker.
SLICE = [
    "stages.data.samples.news_pages=10",
    "stages.data.samples.bbc_articles=30",
    "stages.data.samples.wikipedia=30",
    "stages.data.samples.shakespeare_scenes=4",
    "stages.data.samples.warc_files=2",
    "stages.data.tasks=2",
    "stages.data.workers=1",
    "stages.tokenizer.vocab_size=512",
]


def last_json_line(command: str, *extra: str, python: Path | str = sys.executable) -> dict:
    """Run `python <command> <extra>` from the repo root: the last stdout line, parsed."""
    argv = [str(python), *shlex.split(command), *extra]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    shown = shlex.join(argv[1:])
    assert proc.returncode == 0, f"{shown} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{shown} printed nothing on stdout:\n{proc.stderr[-2000:]}"
    return json.loads(lines[-1])


def _requirements(names: list[str]) -> set[str]:
    """The distributions `names` need, transitively (extras left out)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        dist = metadata.distribution(todo.pop())
        name = dist.metadata["Name"].lower()
        if name in seen:
            continue
        seen.add(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def bare_python(folder: Path, packages: list[str]) -> Path:
    """A virtual environment holding only `packages` and their requirements (linked from this one):
    a GPU box with torch and nothing of this project's stack."""
    venv.create(folder, with_pip=False)
    site = next(folder.glob("lib/python3*/site-packages"))
    for name in _requirements(packages):
        dist = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(str(dist.locate_file(top)))
            if top in ("..", "__pycache__") or top.endswith(".pth") or not source.exists():
                continue  # scripts, caches and path hooks
            if not (site / top).exists():
                (site / top).symlink_to(source)
    return folder / "bin" / "python"


def test_gpu_checks_dry_run_on_cpu_with_torch_alone(tmp_path: Path):
    python = bare_python(tmp_path / "torch-only", ["torch"])
    command = "bench/gpu.py --device cpu --model tiny --steps 2 --batch 2 --prompts 2 --new-tokens 8"
    result = last_json_line(command, "--skip", "train_compiled", python=python)
    assert result["device"] == "cpu" and result["train_compiled"] == "skipped"
    for check in ("flash_attention", "train_eager", "nccl", "generate_fp32", "generate_bf16"):
        assert "error" not in result[check], (check, result[check])
    assert result["nccl"]["all_reduce_ok"]


def test_pretrain_under_torchrun_with_torch_numpy_pydantic_safetensors(tmp_path: Path):
    python = bare_python(tmp_path / "torch-only", ["torch", "numpy", "pydantic", "safetensors"])
    # `torchrun` is this module's console script; the bare environment has no scripts.
    command = (
        "-m torch.distributed.run --standalone --nproc-per-node 2 "
        "bench/pretrain.py --model tiny --steps 2 --tokens 20000 --micro-batch 2 --tp 2"
    )
    result = last_json_line(command, "--workdir", str(tmp_path / "work"), python=python)
    assert result["mesh"] == {"dp": 1, "tp": 2, "pp": 1} and result["tokens_per_s"] > 0


def test_pretrain_single_worker_against_the_plain_loop():
    command = "bench/pretrain.py --model tiny --steps 4 --rounds 1 --tokens 20000 --micro-batch 2 --meshes ''"
    result = last_json_line(command)
    assert result["plain_tokens_per_s"] > 0 and result["single_tokens_per_s"] > 0 and result["meshes"] == {}


def test_eval_micro_benchmark():
    result = last_json_line("bench/eval.py --batch-sizes 2 --pairs 8 --new-tokens 8 --repeats 1")
    assert result["score_tokens_per_s_b2"] > 0 and result["greedy_tokens_per_s_b2"] > 0


def test_rl_generation_and_grpo_steps_on_a_random_model(tmp_path: Path):
    command = "bench/rl.py --prompts 4 --max-new-tokens 8 --steps 1 --prompts-per-step 2 --group-size 2 --threads 1"
    result = last_json_line(command, "--workdir", str(tmp_path))  # an empty work dir: no SFT model
    assert result["model"].startswith("random init")
    assert result["generation"]["greedy_tokens_identical"] and result["grpo"]["steps"] == 1


def test_sft_packing_and_throughput():
    result = last_json_line("bench/sft.py --steps 2 --seq-len 128 --limit 200 --arith 200 --vocab 512")
    assert 0 < result["padded_efficiency"] <= result["packed_efficiency"] <= 1
    assert {"packed_bf16_assistant_tokens_per_s", "packed_fp32_assistant_tokens_per_s"} <= set(result)


def test_serve_against_one_at_a_time():
    result = last_json_line("bench/serve.py --smoke")
    assert [level["clients"] for level in result["served"]] == [1, 2]
    assert all(level["replies_equal_alone"] for level in result["served"])  # greedy: batching changes nothing


@pytest.mark.slow
def test_tokenizer_benchmark_on_ray():
    result = last_json_line("bench/tokenizer.py --mb 0.3 --vocab 512")
    assert result["vocab_size"] == 512 and result["shard_mb_per_s_2_tasks"] > 0


@pytest.mark.slow
def test_data_benchmark_on_ray():
    result = last_json_line("bench/data.py --scale 0.1 --tasks 2 --workers 1 --minhash-sizes 100")
    assert result["documents_in"] >= result["documents_out"] > 0
    assert [row["docs"] for row in result["minhash_scaling"]] == [100]


@pytest.mark.slow
def test_full_run_cold_then_cached(tmp_path: Path):
    overrides = [item for assignment in SLICE for item in ("--set", assignment)]
    result = last_json_line("bench/full_run.py --until tokenizer", "--workdir", str(tmp_path), *overrides)
    assert set(result["stages"]) == {"data", "tokenizer"} and result["cached_all_hits"]
