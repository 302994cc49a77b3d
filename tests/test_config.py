from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import config as config_io
from pipeline.errors import UsageError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_config_loads_with_defaults(toy_registry, toy_config):
    config = config_io.load([toy_config], [], toy_registry)
    assert config.run.name == "toy" and config.run.seed == 7
    assert config.stages["words"].count == 300
    assert config.stages["words"].log_every == 50  # default
    assert config.run.tracking == f"sqlite:///{config.run.workdir / 'mlflow.db'}"
    assert list(config.stages) == ["words", "count", "model"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.words.cuont=3", "stages.words.cuont: unknown key"),
        ("stages.words.count=many", "stages.words.count: Input should be a valid integer"),
        ("stages.words.count=0", "stages.words.count: Input should be greater than or equal to 1"),
        ("stages.model.heads=3", "stages.model.heads: 3 does not divide dim=4"),
        ("stages.nosuch.x=1", "stages.nosuch: unknown stage (known: count, model, words)"),
        ("run.seed=-1", "run.seed: Input should be greater than or equal to 0"),
        ("cluster.adress=auto", "cluster.adress: unknown key"),
        ("extra=1", "extra: unknown section"),
    ],
)
def test_invalid_values_name_the_key_and_reason(toy_registry, toy_config, override, message):
    with pytest.raises(UsageError) as caught:
        config_io.load([toy_config], [override], toy_registry)
    assert message in str(caught.value)


def test_all_errors_reported_at_once(toy_registry, toy_config):
    with pytest.raises(UsageError) as caught:
        config_io.load([toy_config], ["stages.words.count=x", "stages.count.top=0"], toy_registry)
    assert "stages.words.count" in str(caught.value) and "stages.count.top" in str(caught.value)


def test_missing_upstream_section_is_an_error(toy_registry, tmp_path):
    path = write(tmp_path, "c.yaml", "stages:\n  count: {}\n")
    with pytest.raises(UsageError, match="stages.count: needs stage 'words'"):
        config_io.load([path], [], toy_registry)


def test_overrides_parse_yaml_values_and_nest(toy_registry, toy_config):
    config = config_io.load(
        [toy_config],
        ["stages.words.count=12", "run.tracking_uri=http://127.0.0.1:5000", "stages.count.fail=true"],
        toy_registry,
    )
    assert config.stages["words"].count == 12
    assert config.stages["count"].fail is True
    assert config.run.tracking == "http://127.0.0.1:5000"


@pytest.mark.parametrize("bad", ["stages.words.count", "=3", "run.name.x=1"])
def test_malformed_overrides(toy_registry, toy_config, bad):
    with pytest.raises(UsageError, match="--set"):
        config_io.load([toy_config], [bad], toy_registry)


def test_files_merge_in_order(toy_registry, toy_config, tmp_path):
    extra = write(tmp_path, "extra.yaml", "stages:\n  words:\n    count: 5\nrun:\n  seed: 9\n")
    config = config_io.load([toy_config, extra], ["run.seed=11"], toy_registry)
    assert config.stages["words"].count == 5
    assert config.stages["count"].top == 3  # untouched keys survive the merge
    assert config.run.seed == 11  # --set wins over files


def test_bad_yaml_names_file_and_line(toy_registry, tmp_path):
    path = write(tmp_path, "bad.yaml", "run:\n  name: x\n   seed: [1\n")
    with pytest.raises(UsageError, match=r"bad.yaml: line \d+, column \d+: invalid YAML"):
        config_io.load([path], [], toy_registry)


def test_missing_config_file(toy_registry, tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        config_io.load([tmp_path / "nope.yaml"], [], toy_registry)


def test_top_level_must_be_mapping(toy_registry, tmp_path):
    with pytest.raises(UsageError, match="top level must be a mapping"):
        config_io.load([write(tmp_path, "list.yaml", "- 1\n- 2\n")], [], toy_registry)


def test_resolved_config_round_trips(toy_registry, toy_config, tmp_path):
    config = config_io.load([toy_config], ["stages.words.count=42"], toy_registry)
    again = config_io.load([write(tmp_path, "resolved.yaml", config.to_yaml())], [], toy_registry)
    assert again.to_dict() == config.to_dict()


def test_a_config_that_is_not_utf8_is_a_usage_error_naming_the_file(toy_registry, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"latin1.yaml: line 2: not UTF-8 text \(byte 0xe9\)"):
        config_io.load([path], [], toy_registry)


def test_null_removes_a_stage_and_its_dependants_must_go_too(toy_registry, toy_config):
    config = config_io.load([toy_config], ["stages.model=null"], toy_registry)
    assert list(config.stages) == ["words", "count"]
    with pytest.raises(UsageError) as caught:
        config_io.load([toy_config], ["stages.words=null"], toy_registry)
    assert "stages.count: needs stage 'words', which this config removes (stages.words: null)" in str(caught.value)
    with pytest.raises(UsageError, match="stages.nosuch: unknown stage"):
        config_io.load([toy_config], ["stages.nosuch=null"], toy_registry)
    kept = config_io.load([toy_config], ["stages.model={}"], toy_registry)
    assert kept.stages["model"].dim == toy_registry["model"].config_model().dim  # {} keeps it with defaults


def test_tracking_uri_config_beats_the_environment_which_beats_the_default(toy_registry, toy_config, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = config_io.load([toy_config], [], toy_registry).run
    assert default.tracking == f"sqlite:///{default.workdir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-host:5000")
    assert config_io.load([toy_config], [], toy_registry).run.tracking == "http://env-host:5000"
    explicit = config_io.load([toy_config], ["run.tracking_uri=http://mine:5000"], toy_registry)
    assert explicit.run.tracking == "http://mine:5000"


def test_run_section_alone_reads_no_stage_and_stage_section_one(toy_registry, toy_config):
    raw = config_io.read_all([toy_config], ["stages.nosuch.x=1", "run.seed=3"])  # a stage error is not its business
    run = config_io.run_section(raw)
    assert (run.name, run.seed) == ("toy", 3)
    assert config_io.run_section({}).workdir.name == ".z2h"
    assert config_io.stage_section(raw, toy_registry["count"]).top == 3
    assert config_io.stage_section({}, toy_registry["count"]) == toy_registry["count"].config_model()
    with pytest.raises(UsageError, match="run.seed: Input should be greater than or equal to 0"):
        config_io.run_section(config_io.read_all([toy_config], ["run.seed=-1"]))
    with pytest.raises(UsageError, match="stages.count.top: "):
        config_io.stage_section(config_io.read_all([toy_config], ["stages.count.top=0"]), toy_registry["count"])
