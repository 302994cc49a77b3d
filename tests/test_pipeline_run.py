"""The core end to end: real embedded Ray, a real sqlite MLflow store, the toy stages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import cli
from pipeline import config as config_io
from pipeline.store import MANIFEST, LocalStore

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent


def client_for(config_path: Path, registry) -> tuple[MlflowClient, config_io.PipelineConfig]:
    config = config_io.load([config_path], [], registry)
    return MlflowClient(tracking_uri=config.run.tracking), config


def stage_runs(client: MlflowClient, parent_id: str) -> dict[str, object]:
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags["z2h.stage"]: r for r in runs}


def latest_parent(client: MlflowClient, config) -> str:
    experiment = client.get_experiment_by_name(config.run.name)
    runs = client.search_runs(
        [experiment.experiment_id],
        "tags.`z2h.kind` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id


def datasets(run, context: str) -> dict[str, str]:
    found = {}
    for item in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        if tags.get("mlflow.data.context") == context:
            found[item.dataset.name] = item.dataset.digest
    return found


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One full run shared by the lineage tests (starting Ray costs seconds)."""
    import toy_stages

    from pipeline import registry

    for stage in toy_stages.ALL:
        registry.register(stage)
    tmp = tmp_path_factory.mktemp("pipeline")
    path = tmp / "toy.yaml"
    path.write_text(
        f"run: {{name: toy, workdir: {tmp / 'work'}, seed: 7}}\ncluster: {{num_cpus: 2}}\n"
        "stages:\n  words: {count: 300}\n  count: {top: 3}\n  model: {dim: 4, heads: 2}\n"
    )
    code = cli.main(["run", str(path)])
    reg = {s.name: s for s in toy_stages.ALL}
    client, config = client_for(path, reg)
    yield {
        "code": code,
        "path": path,
        "client": client,
        "config": config,
        "registry": reg,
        "parent": latest_parent(client, config),
    }
    for stage in toy_stages.ALL:
        registry.unregister(stage.name)


def test_full_run_commits_every_stage(first_run):
    assert first_run["code"] == 0
    store = LocalStore(first_run["config"].run.workdir / "store")
    for name in ("words", "count", "model"):
        entries = [p for p in (store.root / name).iterdir()]
        assert len(entries) == 1 and (entries[0] / MANIFEST).exists()
    assert not list(store.root.glob("*/.staging-*"))


def test_lineage_parent_children_datasets_and_model(first_run):
    client, parent_id = first_run["client"], first_run["parent"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["z2h.config"] == "toy" and "z2h.git_commit" in parent.data.tags
    assert parent.data.tags["z2h.command"].startswith("z2h run")
    runs = stage_runs(client, parent_id)
    assert set(runs) == {"words", "count", "model"}
    fp = {name: run.data.tags["z2h.fingerprint"] for name, run in runs.items()}
    assert datasets(runs["count"], "input") == {"words": fp["words"]}
    assert datasets(runs["model"], "input") == {"count": fp["count"]}
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["z2h.cache"] == "miss"
        assert datasets(run, "output") == {name: fp[name]}
    assert runs["count"].data.tags["z2h.upstream.words"] == fp["words"]
    assert runs["words"].data.params["count"] == "300"
    assert runs["words"].data.metrics["words"] == 300
    history = client.get_metric_history(runs["words"].info.run_id, "progress")
    assert [m.step for m in history] == [0, 50, 100, 150, 200, 250]
    artifacts = [a.path for a in client.list_artifacts(runs["words"].info.run_id, "logs")]
    assert artifacts == ["logs/words.log"]
    models = client.search_logged_models(experiment_ids=[parent.info.experiment_id])
    assert len(models) == 1
    model = models[0]
    assert model.source_run_id == runs["model"].info.run_id and model.status.to_proto() == 2  # READY
    outputs = runs["model"].outputs.model_outputs
    assert [o.model_id for o in outputs] == [model.model_id]
    # From the model alone: source run -> its input dataset digests -> the producing runs.
    source = client.get_run(model.source_run_id)
    assert datasets(source, "input")["count"] == runs["count"].data.tags["z2h.fingerprint"]


def test_second_run_reuses_everything_and_points_at_producers(first_run):
    assert cli.main(["run", str(first_run["path"])]) == 0
    client = first_run["client"]
    first = stage_runs(client, first_run["parent"])
    again = stage_runs(client, latest_parent(client, first_run["config"]))
    for name in ("words", "count", "model"):
        assert again[name].data.tags["z2h.cache"] == "hit"
        assert again[name].data.tags["z2h.producer_run_id"] == first[name].info.run_id
        assert again[name].data.tags["z2h.fingerprint"] == first[name].data.tags["z2h.fingerprint"]


def test_failing_stage_leaves_no_entry_and_stops_downstream(first_run, capsys):
    code = cli.main(["run", str(first_run["path"]), "--set", "stages.count.fail=true"])
    assert code == 1
    err = capsys.readouterr().err
    assert "RuntimeError: count stage asked to fail" in err
    store = LocalStore(first_run["config"].run.workdir / "store")
    assert len(list((store.root / "count").iterdir())) == 1  # only the good entry from the first run
    assert not list(store.root.glob("*/.staging-*"))
    client = first_run["client"]
    runs = stage_runs(client, latest_parent(client, first_run["config"]))
    assert runs["count"].info.status == "FAILED"
    assert "model" not in runs  # never started
    assert client.get_run(latest_parent(client, first_run["config"])).info.status == "FAILED"


def test_stage_and_force_rerun_one_stage(first_run):
    code = cli.main(["run", str(first_run["path"]), "--stage", "count", "--force", "count"])
    assert code == 0
    client = first_run["client"]
    runs = stage_runs(client, latest_parent(client, first_run["config"]))
    assert set(runs) == {"count"} and runs["count"].data.tags["z2h.cache"] == "miss"


def test_usage_and_environment_errors_exit_2_and_3_and_write_nothing(first_run, tmp_path, capsys):
    store_root = first_run["config"].run.workdir / "store"
    before = sorted(p.relative_to(store_root) for p in store_root.rglob("*"))
    path = str(first_run["path"])
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    cases = [
        (2, "error", ["run", path, "--stage", "nope"]),
        (2, "error", ["run", path, "--set", "stages.words.count=zero"]),
        (2, "error", ["run", str(tmp_path / "missing.yaml")]),
        (2, "error", ["run"]),
        (3, "environment", ["run", path, "--set", f"run.workdir={blocked / 'sub'}"]),
        (3, "environment", ["run", path, "--set", "run.tracking_uri=http://127.0.0.1:9", "--force", "words"]),
    ]
    for code, label, argv in cases:
        assert cli.main(argv) == code, argv
        err = capsys.readouterr().err
        assert f"z2h: {label}:" in err and "Traceback" not in err, err
    assert sorted(p.relative_to(store_root) for p in store_root.rglob("*")) == before


def test_plan_prints_fingerprints_and_status(first_run, capsys):
    assert cli.main(["plan", str(first_run["path"]), "--set", "stages.model.dim=8"]) == 0
    out = capsys.readouterr().out
    assert "cached" in out and "run" in out
    for name in ("words", "count", "model"):
        assert name in out


def test_runs_lists_pipeline_runs(first_run, capsys):
    assert cli.main(["runs", str(first_run["path"]), "-n", "2"]) == 0
    out = capsys.readouterr().out
    latest = latest_parent(first_run["client"], first_run["config"])
    assert f"pipeline runs in {first_run['config'].run.tracking}" in out
    assert latest in out and "cached" in out


def test_ctrl_c_cancels_and_marks_runs_killed(first_run):
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import conftest, toy_stages;"
        "from pipeline import registry, cli; [registry.register(s) for s in toy_stages.ALL];"
        "sys.exit(cli.main(sys.argv[2:]))"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            str(TESTS),
            "run",
            str(first_run["path"]),
            "--set",
            "stages.count.sleep=60",
            "--set",
            "stages.count.top=9",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 90
    seen = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if "running count" in line:
            break
    time.sleep(2)
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + out
    client = first_run["client"]
    parent = latest_parent(client, first_run["config"])
    assert client.get_run(parent).info.status == "KILLED"
    assert stage_runs(client, parent)["count"].info.status == "KILLED"
    store = LocalStore(first_run["config"].run.workdir / "store")
    assert len(list((store.root / "count").iterdir())) == 1
    assert not list(store.root.glob("*/.staging-*"))
