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
