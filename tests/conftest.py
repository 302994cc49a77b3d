from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ray import cloudpickle

sys.path.insert(0, str(Path(__file__).parent))

import toy_stages  # noqa: E402

from pipeline import registry  # noqa: E402

# Ray workers cannot import the tests folder: ship the toy stages by value.
cloudpickle.register_pickle_by_value(toy_stages)


@pytest.fixture
def toy_registry():
    for stage in toy_stages.ALL:
        registry.register(stage)
    yield {s.name: s for s in toy_stages.ALL}
    for stage in toy_stages.ALL:
        registry.unregister(stage.name)


@pytest.fixture
def toy_config(tmp_path: Path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(
        f"""
run:
  name: toy
  workdir: {tmp_path / "work"}
  seed: 7
cluster:
  num_cpus: 2
stages:
  words:
    count: 300
  count:
    top: 3
  model:
    dim: 4
    heads: 2
"""
    )
    return path


@pytest.fixture(scope="module")
def ray_session():
    """A local 2-CPU Ray for one test module: stage code runs inside Ray and starts Ray work."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()
