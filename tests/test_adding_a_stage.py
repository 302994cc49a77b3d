"""docs/adding-a-stage.md's example, exactly as written there, through the real runner: embedded Ray,
a sqlite MLflow store, the store, the summary and the report card."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray import cloudpickle

from pipeline import cli, registry
from pipeline import config as config_io

GUIDE = Path(__file__).parent.parent / "docs" / "adding-a-stage.md"
pytestmark = pytest.mark.slow


def block(text: str, language: str) -> str:
    """The guide's first fenced block in `language`."""
    return re.search(rf"```{language}\n(.*?)```", text, flags=re.S).group(1)


@pytest.fixture
def guide_stages(tmp_path: Path):
    path = tmp_path / "letter_stages.py"
    path.write_text(block(GUIDE.read_text(), "python"))
    spec = importlib.util.spec_from_file_location("letter_stages", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["letter_stages"] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # Ray workers cannot import tmp_path
    for stage in (module.letters, module.counts):
        registry.register(stage)
    yield module
    for name in ("letters", "counts"):
        registry.unregister(name)
    cloudpickle.unregister_pickle_by_value(module)
    sys.modules.pop("letter_stages", None)


def test_the_guide_example_runs(guide_stages, tmp_path, capsys):
    config_path = tmp_path / "letters.yaml"
    config_path.write_text(block(GUIDE.read_text(), "yaml"))
    overrides = ["--set", f"run.workdir={tmp_path / 'work'}", "--set", "cluster.num_cpus=2"]
    assert cli.main(["run", str(config_path), *overrides]) == 0
    summary = capsys.readouterr()
    assert "most_common=" in summary.out + summary.err

    config = config_io.load([config_path], [o for o in overrides if o != "--set"], registry.stages())
    store = config.run.workdir / "store"
    (counts_entry,) = (store / "counts").iterdir()
    manifest = json.loads((counts_entry / "manifest.json").read_text())
    assert list(manifest["metrics"]) == ["most_common", "distinct"]  # the headline first
    written = json.loads((counts_entry / "counts.json").read_text())
    assert len(written["top"]) == 2 and set(written["top"]) <= set("abc")
    client = MlflowClient(tracking_uri=config.run.tracking)
    letters_run = client.get_run(written["letters_run"])  # upstream_output gave the producing run
    assert letters_run.data.tags["z2h.stage"] == "letters" and letters_run.data.metrics["words"] == 300

    (report,) = (config.run.workdir / "reports").glob("*/report.md")
    section = report.read_text().split("## Letter counts\n", 1)[1].split("\n## ", 1)[0]
    assert "distinct letters; the most common:" in section
    assert all(f"| {letter} | {count:,} |" in section for letter, count in written["top"].items())
