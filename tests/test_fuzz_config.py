"""Config files are outside data: any bytes, any YAML document and any `--set` override end in a
loaded config or a UsageError that names the problem (exit 2), never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from fuzz_strategies import ANY_TEXT, JSON
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline import config as config_io
from pipeline import registry
from pipeline.errors import UsageError

FUZZ = settings(max_examples=80, deadline=None)
STAGES = registry.stages()
SECTION_KEYS = {
    "run": list(config_io.RunConfig.model_fields),
    "cluster": list(config_io.ClusterConfig.model_fields),
    **{name: list(stage.config_model.model_fields) for name, stage in STAGES.items()},
}
ODD = st.sampled_from(["~nosuchuser/x", "~", "", ".", "s3://b/x", "memory://x", "a\x00b", "1e3", -1, 0, 2**70, 0.5, []])
VALUES = ODD | JSON


def _section(name: str) -> st.SearchStrategy:
    """A section with the model's own keys set to odd values or anything, a stray key, or not a mapping."""
    own = st.fixed_dictionaries({}, optional=dict.fromkeys(SECTION_KEYS[name], VALUES))
    return own | st.dictionaries(ANY_TEXT, VALUES, max_size=2) | st.none() | JSON


DOCUMENTS = (
    st.fixed_dictionaries(
        {},
        optional={
            "run": _section("run"),
            "cluster": _section("cluster"),
            "stages": st.dictionaries(st.sampled_from(sorted(STAGES)) | ANY_TEXT, st.one_of(*map(_section, STAGES)))
            | JSON,
        },
    )
    | JSON
)
OVERRIDES = st.lists(
    st.builds(
        "{}={}".format, st.sampled_from(["run.seed", "stages.sft.lr", "stages.data", "run"]) | ANY_TEXT, ANY_TEXT
    ),
    max_size=2,
)


def _load(data: bytes, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(data)
        try:
            config_io.load([path], overrides, STAGES)
        except UsageError as exc:
            assert str(exc).strip()


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_load_or_are_a_usage_error(data):
    _load(data, [])


@FUZZ
@given(DOCUMENTS, OVERRIDES)
@example({"run": {"workdir": "~nosuchuser/runs"}}, [])  # Path.expanduser raised RuntimeError (exit 1)
@example({"run": {"store": "~nosuchuser/store"}}, [])
@example({}, ["run.workdir=~nosuchuser"])
def test_any_yaml_document_loads_or_is_a_usage_error(document, overrides):
    _load(yaml.safe_dump(document, allow_unicode=True).encode(), overrides)
