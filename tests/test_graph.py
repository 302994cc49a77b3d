from __future__ import annotations

import dataclasses

import pytest

from pipeline import config as config_io
from pipeline import graph
from pipeline.errors import UsageError
from pipeline.store import LocalStore, Manifest


def plan_for(toy_registry, toy_config, overrides=(), selection=None, store=None):
    config = config_io.load([toy_config], list(overrides), toy_registry)
    store = store or LocalStore(config.run.workdir / "store")
    return graph.build_plan(config, toy_registry, store, selection or graph.Selection())


def fingerprints(plan) -> dict[str, str]:
    return {s.name: s.fingerprint for s in plan.stages}


def fake_commit(plan, *names):
    store = LocalStore(plan.config.run.workdir / "store")
    for name in names:
        item = plan[name]
        staging = store.staging(name, item.fingerprint)
        (staging / "x").write_text(name)
        store.commit(staging, Manifest(stage=name, fingerprint=item.fingerprint, files=[]))
    return store


def test_fingerprints_are_stable(toy_registry, toy_config):
    assert fingerprints(plan_for(toy_registry, toy_config)) == fingerprints(plan_for(toy_registry, toy_config))


def test_changing_a_stage_changes_it_and_downstream_only(toy_registry, toy_config):
    base = fingerprints(plan_for(toy_registry, toy_config))
    changed = fingerprints(plan_for(toy_registry, toy_config, ["stages.count.top=4"]))
    assert changed["words"] == base["words"]
    assert changed["count"] != base["count"]
    assert changed["model"] != base["model"]
    leaf = fingerprints(plan_for(toy_registry, toy_config, ["stages.model.dim=8"]))
    assert leaf["words"] == base["words"] and leaf["count"] == base["count"] and leaf["model"] != base["model"]


def test_cosmetic_keys_and_workdir_do_not_change_fingerprints(toy_registry, toy_config, tmp_path):
    base = fingerprints(plan_for(toy_registry, toy_config))
    assert fingerprints(plan_for(toy_registry, toy_config, ["stages.words.log_every=7"])) == base
    assert fingerprints(plan_for(toy_registry, toy_config, [f"run.workdir={tmp_path / 'other'}"])) == base


def test_seed_changes_every_fingerprint(toy_registry, toy_config):
    base = fingerprints(plan_for(toy_registry, toy_config))
    other = fingerprints(plan_for(toy_registry, toy_config, ["run.seed=8"]))
    assert all(base[name] != other[name] for name in base)


def test_source_code_is_part_of_the_fingerprint(toy_registry, toy_config, monkeypatch):
    base = fingerprints(plan_for(toy_registry, toy_config))
    real = graph.code_hash
    monkeypatch.setattr(graph, "code_hash", lambda stage: real(stage) + ("!" if stage.name == "words" else ""))
    edited = fingerprints(plan_for(toy_registry, toy_config))
    assert all(edited[name] != base[name] for name in base)


def test_declared_input_files_are_part_of_the_fingerprint(toy_registry, toy_config):
    base = fingerprints(plan_for(toy_registry, toy_config))
    identity = {"words:corpus.txt": "sha256:aa"}
    reader = dataclasses.replace(toy_registry["words"], inputs=lambda cfg: identity)
    registry = {**toy_registry, "words": reader}
    first = fingerprints(plan_for(registry, toy_config))
    identity["words:corpus.txt"] = "sha256:bb"  # the file was edited
    edited = fingerprints(plan_for(registry, toy_config))
    assert all(first[name] != base[name] != edited[name] != first[name] for name in base)


def statuses(plan) -> dict[str, str]:
    return {s.name: s.status for s in plan.stages}


def test_default_selection_runs_everything_missing(toy_registry, toy_config):
    plan = plan_for(toy_registry, toy_config)
    assert statuses(plan) == {"words": "run", "count": "run", "model": "run"}
    fake_commit(plan, "words")
    assert statuses(plan_for(toy_registry, toy_config)) == {"words": "cached", "count": "run", "model": "run"}


def test_until_and_from(toy_registry, toy_config):
    until = plan_for(toy_registry, toy_config, selection=graph.Selection(until_stage="count"))
    assert statuses(until) == {"words": "run", "count": "run", "model": "skip"}
    with pytest.raises(UsageError, match="needs 'count'.*--until count.*--with-deps"):
        plan_for(toy_registry, toy_config, selection=graph.Selection(from_stage="model"))
    fake_commit(until, "words", "count")
    later = plan_for(toy_registry, toy_config, selection=graph.Selection(from_stage="count"))
    assert statuses(later) == {"words": "skip", "count": "cached", "model": "run"}


def test_stage_requires_cached_upstream_or_with_deps(toy_registry, toy_config):
    with pytest.raises(UsageError, match="stage 'model' needs 'count'"):
        plan_for(toy_registry, toy_config, selection=graph.Selection(stages=("model",)))
    pulled = plan_for(toy_registry, toy_config, selection=graph.Selection(stages=("model",), with_deps=True))
    assert statuses(pulled) == {"words": "run", "count": "run", "model": "run"}
    assert pulled["words"].pulled_in and not pulled["model"].pulled_in
    fake_commit(pulled, "words")
    partly = plan_for(toy_registry, toy_config, selection=graph.Selection(stages=("model",), with_deps=True))
    assert statuses(partly) == {"words": "skip", "count": "run", "model": "run"}


def test_force_reruns_a_cached_stage(toy_registry, toy_config):
    fake_commit(plan_for(toy_registry, toy_config), "words", "count")
    plan = plan_for(toy_registry, toy_config, selection=graph.Selection(force=("words",)))
    assert statuses(plan) == {"words": "run", "count": "cached", "model": "run"}
    with pytest.raises(UsageError, match="--force words: 'words' is not among the selected"):
        plan_for(toy_registry, toy_config, selection=graph.Selection(stages=("model",), force=("words",)))


@pytest.mark.parametrize("flag", ["stages", "force", "from_stage", "until_stage"])
def test_unknown_stage_names_are_usage_errors(toy_registry, toy_config, flag):
    value = ("nope",) if flag in ("stages", "force") else "nope"
    with pytest.raises(UsageError, match="no such stage.*it has: words, count, model"):
        plan_for(toy_registry, toy_config, selection=graph.Selection(**{flag: value}))


def test_damaged_upstream_is_reported_in_the_error(toy_registry, toy_config):
    plan = plan_for(toy_registry, toy_config)
    store = fake_commit(plan, "words")
    (store.entry("words", plan["words"].fingerprint) / "x").unlink()
    with pytest.raises(UsageError, match="x is listed in the manifest but missing"):
        plan_for(toy_registry, toy_config, selection=graph.Selection(stages=("count",)))
