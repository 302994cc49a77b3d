"""The pipeline on a real three-node Ray cluster on this machine, and the failures clusters have.

One head (0 CPUs, as on a real cluster: it coordinates) and two worker nodes of 2 CPUs, each a
`ray start` raylet on its own loopback address; an `mlflow server` for tracking; the work dir
marked shared (every node here sees the same disk). `z2h run` runs as a subprocess, as a user
would run it. Each fault test ends by checking nothing was lost or duplicated.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_support import LocalCluster, MlflowServer, session_pids, short_root
from mlflow import MlflowClient

from pipeline import config as config_io
from pipeline import registry
from pipeline.store import LocalStore
from stages.pretrain.launch import run_local
from stages.pretrain.train import Job

# Minutes on a quiet 2-core machine; the limit leaves room for a machine shared with other work.
pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yaml"

DATA = [
    "stages.data.samples.news_pages=10",
    "stages.data.samples.bbc_articles=40",
    "stages.data.samples.wikipedia=40",
    "stages.data.samples.shakespeare_scenes=4",
    "stages.data.samples.warc_files=4",
    "stages.data.tasks=4",
    "stages.data.workers=4",
    "stages.data.minhash.num_buckets=4",
    # FineWeb's 0.1 s extraction timeout makes the kept pages depend on how loaded the CPUs are;
    # the comparisons with an uninterrupted run need the same pages whatever the load.
    "stages.data.extraction.timeout=30",
    "stages.tokenizer.vocab_size=512",
]
SMALL_MODEL = [
    "stages.pretrain.model.seq_len=64",
    "stages.pretrain.model.n_layer=2",
    "stages.pretrain.model.n_head=2",
    "stages.pretrain.model.d_model=64",
    "stages.pretrain.peak_flops=1e9",
    "stages.pretrain.progress=false",
    "stages.pretrain.log_every=1",
]
# pp=2 x tp=2 on two 2-CPU nodes: a TP pair on each node, the pipeline across them.
MESH = ["stages.pretrain.pp=2", "stages.pretrain.tp=2", "stages.pretrain.dp=1", "stages.pretrain.micro_batch=4"]
MESH += ["stages.pretrain.cpus_per_worker=1"]
MESH += ["stages.pretrain.batch_tokens=256", "stages.pretrain.max_steps=4", "stages.pretrain.eval_every=4"]
MESH += ["stages.pretrain.eval_batches=2", "stages.pretrain.checkpoint_every=4"]
# dp=2 on a model big enough to be interrupted mid-run: 40 steps, a checkpoint every 4.
LONG = ["stages.pretrain.model.seq_len=128", "stages.pretrain.model.n_layer=4", "stages.pretrain.model.n_head=4"]
LONG += ["stages.pretrain.model.d_model=128", "stages.pretrain.dp=2", "stages.pretrain.micro_batch=4"]
LONG += ["stages.pretrain.batch_tokens=1024", "stages.pretrain.cpus_per_worker=1"]
LONG += ["stages.pretrain.max_steps=40", "stages.pretrain.checkpoint_every=4", "stages.pretrain.eval_every=40"]
LONG += ["stages.pretrain.eval_batches=2", "stages.pretrain.max_failures=2", "stages.pretrain.warmup_steps=2"]


@pytest.fixture(scope="module")
def cluster():
    root = short_root()
    cluster = LocalCluster(root)
    server = MlflowServer(root / "mlflow")
    try:
        cluster.start_head(cpus=0)
        cluster.wait_for(["head"])
        cluster.add_node("w1", "127.0.0.3", cpus=2)
        cluster.wait_for(["head", "w1"])  # one node joining at a time is gentler on a busy machine
        cluster.add_node("w2", "127.0.0.4", cpus=2)
        cluster.ids = cluster.wait_for(["head", "w1", "w2"])
        cluster.tracking = server.wait()
        yield cluster
    finally:
        cluster.shutdown()
        server.stop()


def workdir(path: Path) -> Path:
    """A work dir whose sample packages are the repo's shared download (fetched once per machine)."""
    packages = REPO / ".z2h" / "samples" / "packages"
    packages.mkdir(parents=True, exist_ok=True)
    (path / "samples").mkdir(parents=True)
    (path / "samples" / "packages").symlink_to(packages)
    return path


def command(cluster: LocalCluster, work: Path, *extra: str, until: str = "pretrain", address: bool = True) -> list[str]:
    argv = [sys.executable, "-m", "pipeline.cli", "run", str(TINY), "--until", until]
    if address:
        argv += ["--address", cluster.address]
    for item in [
        f"run.workdir={work}",
        "run.shared_storage=true",
        f"run.tracking_uri={cluster.tracking}",
        *DATA,
        *SMALL_MODEL,
        *extra,
    ]:
        argv += ["--set", item]
    return argv


def z2h(cluster: LocalCluster, argv: list[str], env: dict | None = None, timeout: float = 1500):
    done = subprocess.run(argv, env=env or cluster.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def pipeline_config(cluster: LocalCluster, work: Path, *extra: str):
    overrides = [f"run.workdir={work}", "run.shared_storage=true", f"run.tracking_uri={cluster.tracking}"]
    return config_io.load([TINY], [*overrides, *DATA, *SMALL_MODEL, *extra], registry.stages())


def entries(work: Path, stage: str) -> list[Path]:
    folder = work / "store" / stage
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def documents(entry: Path) -> dict[str, list[dict]]:
    found = {}
    for shard in sorted((entry / "documents").glob("*.jsonl.gz")):
        with gzip.open(shard, "rt") as handle:
            found[shard.name] = [json.loads(line) for line in handle]
    return found


def stage_runs(client: MlflowClient, parent_id: str) -> dict:
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags["z2h.stage"]: r for r in runs}


def parents(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("tiny")
    return client.search_runs(
        [experiment.experiment_id], "tags.`z2h.kind` = 'pipeline'", order_by=["attributes.start_time ASC"]
    )


def processes_titled(cluster: LocalCluster, node: str, prefix: str) -> list[int]:
    """Pids of this node's Ray workers whose process title starts with `prefix` (Ray sets
    `ray::<task or actor>` while a worker runs one)."""
    found = []
    for pid in session_pids(cluster.nodes[node].sid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if title.startswith(prefix):
            found.append(pid)
    return found


def wait_for_checkpoint(scratch: Path, before: set[Path], proc: subprocess.Popen, timeout: float = 900) -> Path:
    """The first complete checkpoint of a pretrain fingerprint that had none in `before`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [p for p in scratch.glob("*/checkpoints/step_*/state.json") if p.parent.parent.parent not in before]
        if found:
            return found[0].parent
        if proc.poll() is not None:
            raise AssertionError(f"z2h exited ({proc.returncode}) before a checkpoint: {proc.stdout.read()}")
        time.sleep(0.2)
    raise TimeoutError("no checkpoint appeared")


def test_multi_node_cluster_refuses_local_storage_and_absent_gpus(cluster, tmp_path):
    work = workdir(tmp_path / "work")
    argv = [sys.executable, "-m", "pipeline.cli", "run", str(TINY), "--until", "data", "--address", cluster.address]
    code, out = z2h(cluster, [*argv, "--set", f"run.workdir={work}"])
    assert code == 2, out
    assert "the Ray cluster has 3 nodes" in out and "run.shared_storage: true" in out and "mlflow server" in out
    assert "Traceback" not in out
    shared = ["--set", "run.shared_storage=true", "--set", f"run.tracking_uri={cluster.tracking}"]
    code, out = z2h(
        cluster,
        [*argv, "--set", f"run.workdir={work}", *shared, "--until", "pretrain"]
        + ["--set", "stages.pretrain.gpus_per_worker=1", "--set", "stages.pretrain.dp=2"]
        + ["--set", "stages.pretrain.cpus_per_worker=1"],
    )
    assert code == 2, out
    assert "stage 'pretrain' needs 2 workers of (1 CPU 1 GPU)" in out and "3 nodes: 1x(0 CPU), 2x(2 CPU)" in out
    assert not (work / "store").exists()  # refused before anything ran


@pytest.fixture(scope="module")
def spread(cluster, tmp_path_factory):
    """data -> tokenizer -> pretrain (pp=2 x tp=2) across the nodes; shared by the fault tests."""
    work = workdir(tmp_path_factory.mktemp("multinode") / "work")
    started = time.time()
    code, out = z2h(cluster, command(cluster, work, *MESH))
    (work.parent / "z2h.out").write_text(out)  # the run's console, for a failing test's reader
    return {"work": work, "code": code, "out": out, "seconds": time.time() - started}


def test_data_and_pretrain_work_spreads_over_the_nodes(cluster, spread):
    assert spread["code"] == 0, spread["out"][-5000:]
    workers = {cluster.ids["w1"], cluster.ids["w2"]}
    # Data: the filter tasks ran on both worker nodes, the bucket tasks on worker nodes too. (At
    # least 4: Ray retries a stage task its memory monitor kills on a crowded machine, and the
    # retry resubmits the shards, which return at once from their markers.)
    tasks = [t for t in cluster.tasks("filter_shard", "find_bucket_pairs") if t["state"] == "FINISHED"]
    filters = [t for t in tasks if t["name"] == "filter_shard"]
    assert len(filters) >= 4 and {t["node"] for t in filters} == workers
    buckets = [t for t in tasks if t["name"] == "find_bucket_pairs"]
    assert len(buckets) >= 4 and {t["node"] for t in buckets} <= workers

    # Pretrain: each TP pair on one node, the two pipeline stages on different nodes.
    (entry,) = entries(spread["work"], "pretrain")
    placement = json.loads((entry / "train_stats.json").read_text())["placement"]
    node_of = {p["rank"]: p["node"] for p in placement}
    assert sorted(node_of) == [0, 1, 2, 3]
    assert node_of[0] == node_of[1] and node_of[2] == node_of[3]  # tp groups (ranks 2k, 2k+1)
    assert {node_of[0], node_of[2]} == workers  # pp spans the nodes

    client = MlflowClient(tracking_uri=cluster.tracking)
    (parent,) = parents(client)
    runs = stage_runs(client, parent.info.run_id)
    assert {name: r.info.status for name, r in runs.items()} == dict.fromkeys(
        ("data", "tokenizer", "pretrain"), "FINISHED"
    )
    assert runs["pretrain"].data.tags["z2h.upstream.tokenizer"] == entries(spread["work"], "tokenizer")[0].name


def test_sigkill_of_a_training_worker_restarts_from_the_last_checkpoint(cluster, spread, tmp_path):
    assert spread["code"] == 0
    work = spread["work"]
    scratch = work / "scratch" / "pretrain"
    before = set(scratch.glob("*")) if scratch.exists() else set()
    actors_before = {a["actor_id"] for a in cluster.actors("RayTrainWorker")}
    proc = subprocess.Popen(
        command(cluster, work, *LONG),
        env=cluster.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        checkpoint = wait_for_checkpoint(scratch, before, proc)
        victims = processes_titled(cluster, "w1", "ray::RayTrainWorker") + processes_titled(
            cluster, "w2", "ray::RayTrainWorker"
        )
        assert victims, "no training worker process found"
        os.kill(victims[0], signal.SIGKILL)
        killed_after = int(checkpoint.name.removeprefix("step_")) + 1
        out, _ = proc.communicate(timeout=1500)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-5000:]

    config = pipeline_config(cluster, work, *LONG)
    cfg = config.stages["pretrain"]
    fingerprint = checkpoint.parent.parent.name
    store = LocalStore(work / "store")
    found = store.lookup("pretrain", fingerprint, checksums=True)
    assert found.hit  # one complete, verified entry; its scratch (checkpoints) is gone
    assert not (scratch / fingerprint).exists() and not list((work / "store" / "pretrain").glob(".staging-*"))

    # A new worker group replaced the one that lost a worker.
    started = [a for a in cluster.actors("RayTrainWorker") if a["actor_id"] not in actors_before]
    assert len(started) == 2 * cfg.world, started

    # Every step's loss logged, none lost; the steps before the checkpoint were not trained again.
    client = MlflowClient(tracking_uri=cluster.tracking)
    history = client.get_metric_history(found.manifest.run_id, "train/loss")
    by_step: dict[int, set[float]] = {}
    for metric in history:
        by_step.setdefault(metric.step, set()).add(metric.value)
    assert sorted(by_step) == list(range(1, cfg.max_steps + 1))
    assert all(len(values) == 1 for values in by_step.values())  # a retrained step gives the same loss
    assert sum(1 for m in history if m.step <= killed_after) == killed_after

    # The same final losses as an uninterrupted run of the same job (two local processes, no Ray).
    tokenizer = store.entry("tokenizer", found.manifest.upstream["tokenizer"])
    whole = run_local(
        Job(cfg, tokenizer / "shards", tmp_path / "ckpt", seed=config.run.seed, export_dir=tmp_path / "model")
    )
    assert found.manifest.metrics["train_loss"] == pytest.approx(whole.metrics["train_loss"], rel=1e-6, abs=1e-7)
    assert found.manifest.metrics["val_loss"] == pytest.approx(whole.metrics["val_loss"], rel=1e-6, abs=1e-7)
    assert found.manifest.metrics["tokens_seen"] == cfg.max_steps * cfg.batch_tokens


def test_killed_driver_rerun_reuses_finished_stages_and_resumes(cluster, spread):
    assert spread["code"] == 0
    work = spread["work"]
    scratch = work / "scratch" / "pretrain"
    before = set(scratch.glob("*"))
    variant = [*LONG, "stages.pretrain.lr=0.002"]
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}  # the other way to name the cluster
    argv = command(cluster, work, *variant, address=False)
    proc = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        checkpoint = wait_for_checkpoint(scratch, before, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started on this machine
    finally:
        proc.wait(timeout=30)
    fingerprint = checkpoint.parent.parent.name
    saved = int(checkpoint.name.removeprefix("step_")) + 1

    code, out = z2h(cluster, argv, env=env)
    assert code == 0, out[-5000:]
    assert "cached  data" in out and "cached  tokenizer" in out and "running pretrain" in out

    client = MlflowClient(tracking_uri=cluster.tracking)
    killed, rerun = parents(client)[-2:]
    # The rerun found the dead run's record in the build lock and closed its MLflow runs.
    assert f"run {killed.info.run_id} died building it: marked KILLED" in out
    assert killed.info.status == "KILLED"
    assert stage_runs(client, killed.info.run_id)["pretrain"].info.status == "KILLED"
    runs = stage_runs(client, rerun.info.run_id)
    producers = stage_runs(client, parents(client)[0].info.run_id)
    for name in ("data", "tokenizer"):
        assert runs[name].data.tags["z2h.cache"] == "hit"
        assert runs[name].data.tags["z2h.producer_run_id"] == producers[name].info.run_id
    assert runs["pretrain"].data.tags["z2h.cache"] == "miss"
    steps = sorted(m.step for m in client.get_metric_history(runs["pretrain"].info.run_id, "train/loss"))
    assert steps[0] > saved and steps[-1] == 40  # resumed after the checkpoint, not from step 1

    found = LocalStore(work / "store").lookup("pretrain", fingerprint, checksums=True)
    assert found.hit and found.manifest.run_id == runs["pretrain"].info.run_id
    assert found.manifest.metrics["tokens_seen"] == 40 * 1024
    assert not list((work / "store" / "pretrain").glob(f".staging-{fingerprint}-*"))  # the killed run's staging
    models = client.search_logged_models(
        [rerun.info.experiment_id], filter_string=f"source_run_id = '{runs['pretrain'].info.run_id}'"
    )
    assert len(models) == 1


def test_node_death_during_data_redoes_only_unfinished_tasks(cluster, spread, tmp_path):
    """Kill worker node w2 while it runs data tasks: its unfinished tasks run again on w1, the
    finished ones do not, and the documents equal those of the uninterrupted run."""
    assert spread["code"] == 0
    work = workdir(tmp_path / "work")
    phases = ("filter_shard", "find_bucket_pairs", "cluster", "finalize_shard")
    seen_before = {t["task_id"] for t in cluster.tasks(*phases)}
    proc = subprocess.Popen(
        command(cluster, work, until="data"),
        env=cluster.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            done = list((work / "scratch" / "data").glob("*/markers/*/*.json"))
            running = [p for name in phases[:2] for p in processes_titled(cluster, "w2", f"ray::{name}")]
            if done and running:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        else:
            raise TimeoutError("never saw a finished data task and a running one on w2")
        cluster.kill("w2")
        out, _ = proc.communicate(timeout=1500)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-5000:]

    # From Ray's task records: every task finished exactly once; the ones that ran again are
    # those w2 had not finished (their first attempt failed there) and they finished on w1.
    attempts: dict[str, list[dict]] = {}
    for row in cluster.tasks(*phases):
        if row["task_id"] not in seen_before:
            attempts.setdefault(row["task_id"], []).append(row)
    assert len(attempts) >= 4 + 4 + 1 + 4  # more if Ray's memory monitor made the stage task start over
    for rows in attempts.values():
        assert [r["state"] for r in rows].count("FINISHED") == 1, rows
    retried = {tid: rows for tid, rows in attempts.items() if any(r["attempt"] > 0 for r in rows)}
    assert 1 <= len(retried) <= len(attempts) - len(done)  # no task with a marker at the kill
    for rows in retried.values():
        first = next(r for r in rows if r["attempt"] == 0)
        final = next(r for r in rows if r["state"] == "FINISHED")
        assert first["state"] == "FAILED" and first["node"] == cluster.ids["w2"], rows
        assert final["node"] == cluster.ids["w1"], rows

    # The output: the same documents as the uninterrupted run, nothing lost or duplicated.
    (entry,) = entries(work, "data")
    (reference,) = entries(spread["work"], "data")
    assert entry.name == reference.name
    ours, theirs = documents(entry), documents(reference)
    assert ours == theirs
    ids = [d["id"] for docs in ours.values() for d in docs]
    assert len(ids) == len(set(ids)) > 20
    assert LocalStore(work / "store").lookup("data", entry.name, checksums=True).hit
