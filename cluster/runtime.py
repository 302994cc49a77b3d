"""Start or join Ray for one `z2h` command.

With no `cluster.address` and no RAY_ADDRESS, an embedded local Ray starts in-process:
dashboard (if asked for) bound to 127.0.0.1, session files under the work dir. With one, the
command joins that cluster as a driver (`ray start` on each node; see cluster/README.md).
Placement checks live in `cluster.placement`, shared-storage rules in `cluster.storage`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pipeline.errors import EnvironmentProblem

# Unix socket paths are capped at 107 bytes; Ray's session folder adds about 70.
_MAX_TEMP_DIR = 36


def ray_temp_dir(workdir: Path) -> Path:
    """`<workdir>/ray` when short enough for Ray's socket paths, else a short per-workdir
    folder under the system temp dir."""
    preferred = workdir / "ray"
    if len(str(preferred)) <= _MAX_TEMP_DIR:
        return preferred
    tag = hashlib.sha1(str(workdir).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"z2h-ray-{tag}"


def resolve_address(address: str | None) -> str | None:
    return address or os.environ.get("RAY_ADDRESS") or None


def start(
    workdir: Path,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard: bool = False,
    env: Mapping[str, str] | None = None,
) -> tuple[str | None, str | None]:
    """Initialise Ray for this process; returns the cluster address (None when embedded) and
    the dashboard URL (None without a dashboard)."""
    import ray

    target = resolve_address(address)
    if ray.is_initialized():
        return target, None
    runtime_env = {"env_vars": dict(env)} if env else None
    try:
        if target:
            context = ray.init(address=target, runtime_env=runtime_env, logging_level=logging.WARNING)
        else:
            temp = ray_temp_dir(workdir)
            temp.mkdir(parents=True, exist_ok=True)
            context = ray.init(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                _temp_dir=str(temp),
                runtime_env=runtime_env,
                logging_level=logging.WARNING,
            )
    except ConnectionError as exc:
        raise EnvironmentProblem(f"cannot connect to the Ray cluster at {target}: {exc}") from None
    except Exception as exc:  # raylet/GCS failed to come up: say so in one line
        where = target or f"embedded (session files in {ray_temp_dir(workdir)})"
        raise EnvironmentProblem(f"cannot start Ray ({where}): {str(exc).strip().splitlines()[0]}") from None
    url = context.dashboard_url
    return target, (url if url.startswith("http") else f"http://{url}") if url else None


def stop() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
