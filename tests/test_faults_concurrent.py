"""Two `z2h run` at once on one work dir and one (sqlite) tracking store.

Both start from an empty store and plan every stage as "run". Each stage must still be built
exactly once (the build lock: the second run waits, then finds the entry and reuses it), both
runs must finish, the store must hold one verified entry per stage, and MLflow must show for
each run a complete, correct lineage: the builder's stage run as a miss, the other's as a hit
pointing at the builder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.store import LocalStore

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
TESTS = Path(__file__).parent
SCRIPT = (
    "import sys; sys.path.insert(0, sys.argv[1]); import conftest, toy_stages;"
    "from pipeline import registry, cli; [registry.register(s) for s in toy_stages.ALL];"
    "sys.exit(cli.main(sys.argv[2:]))"
)


def test_two_runs_at_once_share_the_work_dir_safely(tmp_path: Path):
    work = tmp_path / "work"
    config = tmp_path / "toy.yaml"
    config.write_text(
        f"run: {{name: toy, workdir: {work}, seed: 7}}\ncluster: {{num_cpus: 2, dashboard: false}}\n"
        "stages:\n  words: {count: 300}\n  count: {top: 3, sleep: 3}\n  model: {dim: 4, heads: 2}\n"
    )
    argv = [sys.executable, "-c", SCRIPT, str(TESTS), "run", str(config)]
    env = {**os.environ, "COLUMNS": "250"}
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outs)

    store = LocalStore(work / "store")
    manifests = {}
    for stage in ("words", "count", "model"):
        (entry,) = [p for p in (store.root / stage).iterdir()]  # one entry, no staging debris
        found = store.lookup(stage, entry.name, checksums=True)
        assert found.hit, found.reason
        manifests[stage] = found.manifest

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("toy").experiment_id
    parents = client.search_runs([experiment], "tags.`z2h.kind` = 'pipeline'")
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    builders: dict[str, list[str]] = {}
    for parent in parents:
        children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        runs = {r.data.tags["z2h.stage"]: r for r in children}
        assert set(runs) == {"words", "count", "model"}
        for stage, run in runs.items():
            assert run.info.status == "FINISHED"
            assert run.data.tags["z2h.fingerprint"] == manifests[stage].fingerprint
            if run.data.tags["z2h.cache"] == "miss":
                builders.setdefault(stage, []).append(run.info.run_id)
            else:
                assert run.data.tags["z2h.producer_run_id"] == manifests[stage].run_id
        inputs = {
            d.dataset.name: d.dataset.digest for d in runs["model"].inputs.dataset_inputs if d.tags[0].value == "input"
        }
        assert inputs == {"count": manifests["count"].fingerprint}
        assert runs["count"].data.tags["z2h.upstream.words"] == manifests["words"].fingerprint
    # Every stage was built once, by one of the two runs, and the store holds that build.
    assert {stage: len(ids) for stage, ids in builders.items()} == {"words": 1, "count": 1, "model": 1}
    assert all(manifests[stage].run_id == ids[0] for stage, ids in builders.items())
    models = client.search_logged_models([experiment])
    assert len(models) == 1 and models[0].source_run_id == manifests["model"].run_id
