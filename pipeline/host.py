"""The machine a report is written on: hardware, software versions, the Ray cluster joined, and the
git state of the checkout the code runs from."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def hardware() -> list[list[str]]:
    """(what, value) rows: host, OS, CPU, cores, memory, GPUs, Ray cluster, package versions."""
    rows = [["host", platform.node()], ["OS", platform.platform()], ["CPU", _cpu_model()]]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows.append(["cores", f"{os.cpu_count()} ({usable} usable by this process)"])
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        rows.append(["memory", f"{memory / 2**30:.1f} GiB"])
    except (ValueError, OSError, AttributeError):
        pass
    rows.append(["GPUs", _gpus()])
    ray_line = _ray_cluster()
    if ray_line:
        rows.append(["Ray cluster", ray_line])
    versions = [f"Python {platform.python_version()}"]
    for package in ("torch", "ray", "mlflow", "zero2hero"):
        with contextlib.suppress(PackageNotFoundError):
            versions.append(f"{package} {version(package)}")
    rows.append(["software", ", ".join(versions)])
    return rows


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> str:
    """From torch when the process has it loaded (`z2h run` does), else from nvidia-smi: importing
    torch only to count GPUs costs seconds."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "cuda"):
        if not torch.cuda.is_available():
            return "none"
        names = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            names.append(f"{props.name} ({props.total_memory / 2**30:.0f} GiB)")
        return ", ".join(names)
    if shutil.which("nvidia-smi") is None:
        return "none (no nvidia-smi)"
    try:
        query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return "unknown (nvidia-smi failed)"
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return ", ".join(lines) if out.returncode == 0 and lines else "none"


def _ray_cluster() -> str:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    try:
        resources = ray.cluster_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    except Exception:
        return ""
    parts = [f"{nodes} node{'s' if nodes != 1 else ''}", f"{resources.get('CPU', 0):g} CPU"]
    parts.append(f"{resources.get('GPU', 0):g} GPU")
    if "memory" in resources:
        parts.append(f"{resources['memory'] / 2**30:.1f} GiB memory")
    return ", ".join(parts)


def git_state() -> tuple[str, bool | None]:
    """HEAD of the checkout this code runs from, and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return "unknown", None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
