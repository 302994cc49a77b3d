"""A stage's fingerprint covers the code its `run` uses: the module defining it and the project modules
it imports, transitively, and nothing else."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from ray import cloudpickle

from pipeline import config as config_io
from pipeline import graph, registry
from pipeline.errors import UsageError
from pipeline.stage import Stage, StageConfig, deferred
from pipeline.store import open_store

COUNTDOWN = "stages/common/tasks/countdown.py"
REPO = Path(__file__).resolve().parent.parent


def write_package(root: Path) -> None:
    files = {
        "walk/__init__.py": "",
        "walk/alpha/__init__.py": "from walk.alpha.report import SECTION\nfrom walk.alpha.run import run\n",
        "walk/alpha/report.py": "SECTION = 'made no outputs'\n",
        "walk/alpha/run.py": "from ..shared import used\n\n\ndef run(ctx):\n    from walk.shared.lazy import THING\n"
        "    return {'x': used.X + THING}\n",
        "walk/shared/__init__.py": "",
        "walk/shared/used.py": "X = 1\n",
        "walk/shared/lazy.py": "THING = 2\n",
        "walk/shared/unused.py": "Y = 3\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_imports_of_run_are_followed_relative_lazy_and_transitive(tmp_path, monkeypatch):
    write_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    stage = Stage("alpha", StageConfig, importlib.import_module("walk.alpha").run)
    files = graph.code_files(stage)
    assert set(files) == {
        "walk/__init__.py",
        "walk/alpha/__init__.py",
        "walk/alpha/run.py",
        "walk/shared/__init__.py",
        "walk/shared/used.py",
        "walk/shared/lazy.py",
    }
    before = graph.code_hash(stage)
    (tmp_path / "walk/shared/unused.py").write_text("Y = 4\n")
    (tmp_path / "walk/alpha/report.py").write_text("SECTION = 'reworded'\n")
    graph.file_hash.cache_clear()
    assert graph.code_hash(stage) == before
    (tmp_path / "walk/shared/lazy.py").write_text("THING = 5\n")
    graph.file_hash.cache_clear()
    assert graph.code_hash(stage) != before
    declared = Stage("alpha", StageConfig, stage.run, code=("walk.shared.unused",))
    assert "walk/shared/unused.py" in graph.code_files(declared)


def test_a_deferred_run_imports_its_module_only_when_called_and_is_fingerprinted_the_same(tmp_path, monkeypatch):
    write_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "walk" or m.startswith("walk.")]:
        monkeypatch.delitem(sys.modules, name)
    stage = Stage("alpha", StageConfig, deferred("walk.alpha.run:run"))
    assert "walk.alpha.run" not in sys.modules
    eager = Stage("alpha", StageConfig, importlib.import_module("walk.alpha.run").run)
    assert graph.code_files(stage) == graph.code_files(eager)
    shipped = cloudpickle.loads(cloudpickle.dumps(stage))  # as a Ray stage task receives it
    assert shipped.run(None) == {"x": 3}
    with pytest.raises(ValueError, match="expected 'module:function'"):
        deferred("walk.alpha.run")


def test_an_unknown_declared_module_is_a_usage_error(tmp_path, monkeypatch):
    write_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    stage = Stage("alpha", StageConfig, importlib.import_module("walk.alpha").run, code=("walk.nope",))
    with pytest.raises(UsageError, match="stage .alpha.: cannot find module 'walk.nope'"):
        graph.code_files(stage)


@pytest.fixture(scope="module")
def real_stages():
    return registry.stages()


def test_shared_code_counts_only_for_the_stages_that_import_it(real_stages):
    files = {name: graph.code_files(stage) for name, stage in real_stages.items()}
    assert COUNTDOWN in files["rl"] and COUNTDOWN in files["eval"]
    assert COUNTDOWN not in files["tokenizer"] and COUNTDOWN not in files["data"]
    assert "stages/common/packages.py" in files["data"]  # the sample corpus fetches pinned archives
    assert not any(key.startswith("stages/rl/") for key in files["eval"])  # stages never import each other
    assert "stages/tokenizer/report.py" not in files["tokenizer"]  # its report section makes no outputs


def test_editing_a_module_only_rl_uses_refingerprints_rl_and_not_the_tokenizer(real_stages, tmp_path, monkeypatch):
    tiny = config_io.load([Path(__file__).parent.parent / "configs" / "tiny.yaml"], [], real_stages)

    def fingerprints() -> dict[str, str]:
        plan = graph.build_plan(tiny, real_stages, open_store(None, tmp_path))
        return {item.name: item.fingerprint for item in plan.stages}

    base = fingerprints()
    real = graph.file_hash
    monkeypatch.setattr(graph, "file_hash", lambda path: real(path) + ("!" if path.match(COUNTDOWN) else ""))
    edited = fingerprints()
    assert edited["rl"] != base["rl"] and edited["eval"] != base["eval"]
    assert edited["tokenizer"] == base["tokenizer"] and edited["data"] == base["data"]
    assert edited["pretrain"] == base["pretrain"]


def test_loading_every_stage_imports_no_training_code():
    """`z2h plan` and a run served from the cache load every stage: torch, Ray and datatrove's
    pipeline stay out of that process (a fresh one: this one has them already)."""
    check = (
        "import sys; from pipeline import registry; registry.stages(); "
        "print(sorted(m for m in ('torch', 'ray', 'datatrove.pipeline') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
