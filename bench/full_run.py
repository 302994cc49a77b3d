"""Pipeline benchmark: the whole tiny pipeline from a cold start, then again with nothing changed.

Run 1 starts from an empty work dir (no store, no MLflow database, no Ray) in a fresh `z2h run`
process; only the PyPI archives the stages read are shared with the repo's `.z2h/cache/packages`
(symlinked, so nothing is downloaded and downloads are not timed). Its wall time is split into:

  startup        process start -> the pipeline's MLflow run exists (imports, config, plan, Ray
                 start-up, MLflow schema); `imports` is measured apart in a separate process
  stages         each stage run (MLflow start -> end), of which
    work         time inside the stage's `run` (manifest `seconds`), less its
    before_step  time before its first logged step, extrapolated from the metric history
                 timestamps: Ray Train group start-up, model build, but also the stage's own
                 preparation (SFT's data, RL's held-out accuracy before training)
    dispatch     the rest of the stage run: Ray task start-up (a fresh worker imports the stage),
                 MLflow logging, store commit
  gaps           between stage runs (opening the next run, logging its params and datasets)
  teardown       last stage done -> process exit (report card, Ray shutdown)

Non-stage share: (startup + dispatch + gaps + teardown) / wall, and with `before_step` added as
its upper bound. Run 2 repeats the command: every stage must be a cache hit, in seconds. The
report card of run 1 is rendered again in this process to time it.

Each cold run also reads the tiny pipeline's proofs from its MLflow runs (issue-level targets in
PROOFS): pretraining's held-out loss, SFT's adherence on its own prompts and eval's chat-format row
for the SFT model, RL's held-out gain and its skill gain (the gain beyond an answer prior), each
at 2+ standard errors. `--seeds 1337,7,42` repeats the cold run once per `run.seed`, each in its
own work dir, for the robustness table (the cached run follows the first seed only).

Both runs use a snapshot of the source taken at the start (`<workdir>/src`, first on PYTHONPATH):
a fingerprint hashes the stage's code, so an edit in a shared checkout between the two runs
would otherwise make run 2 rebuild. Prints a table to stderr and a JSON line last.

    python bench/full_run.py [--config configs/tiny.yaml] [--until sft] [--seeds 1337,7,42] [--set KEY=VALUE ...]

Its smallest run (the CI smoke test, tests/test_bench_smoke.py) is `--until tokenizer` with the
`--set` overrides that shrink the sample corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 600  # the tiny pipeline on this 2-core machine
CACHED_TARGET_SECONDS = 15  # every stage a cache hit
# (stage, metric, least, most): what the tiny pipeline must show on every seed (missing stages are skipped)
PROOFS = (
    ("pretrain", "val_loss", None, 5.59),
    ("sft", "adherence", 0.95, None),
    ("eval", "sft/adherence", 0.90, None),
    ("rl", "accuracy_gain", 0.10, None),
    ("rl", "skill_gain", 0.10, None),  # the gain beyond an answer prior (stages/rl/learner.skill_metrics)
    ("rl", "heldout_problems", 500, None),
)
RL_GAIN_STANDARD_ERRORS = 2.0  # for accuracy_gain and skill_gain alike


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sources() -> list[str]:
    """The packages the distribution ships (pyproject's `include` patterns), and the configs."""
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return [pattern.rstrip("*") for pattern in found["include"]] + ["configs"]


def snapshot(target: Path) -> Path:
    """The importable source as it is now (see the module docstring)."""
    target.mkdir(parents=True)
    for name in sources():
        shutil.copytree(REPO / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


class CpuMeter:
    """CPU seconds (user + system) of a process and all its descendants (the embedded Ray's raylet,
    workers, Ray Train groups), sampled every second: processes shorter than that are missed."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.seen: dict[int, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        import psutil

        while not self.done.wait(1.0):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    self.seen[proc.pid] = times.user + times.system
                except psutil.Error:
                    continue

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return sum(self.seen.values())


def z2h_run(args: list[str], log_file: Path, echo: bool, source: Path) -> tuple[float, list, int, float]:
    """Run `z2h run ...` in a fresh process on the code in `source`: wall seconds, (seconds since
    start, line) pairs, exit code, CPU seconds of its process tree."""
    command = [sys.executable, "-m", "pipeline.cli", "run", *args]
    path = os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", "PYTHONPATH": path}
    lines: list[tuple[float, str]] = []
    started = time.time()
    with open(log_file, "a", buffering=1) as sink:
        sink.write(f"$ {' '.join(command)}\n")
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=source
        )
        assert proc.stdout is not None
        meter = CpuMeter(proc.pid)
        for line in proc.stdout:
            at = time.time() - started
            lines.append((at, line.rstrip("\n")))
            sink.write(f"{at:8.2f} {line}")
            if echo:
                sys.stderr.write(line)
        code = proc.wait()
        cpu = meter.stop()
    return time.time() - started, lines, code, cpu


def import_seconds() -> float:
    """What a `z2h` process spends importing the pipeline and every registered stage."""
    code = "import time; t = time.time(); from pipeline import cli, registry; registry.stages(); print(time.time() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def pipeline_runs(uri: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, "tags.`z2h.kind` = 'pipeline'", order_by=["attributes.start_time ASC"])


def stage_runs(uri: str, parent: Any) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client.search_runs(
        [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )


def before_first_step(uri: str, run: Any) -> float | None:
    """Seconds from the stage run's start to its step 0, extrapolated back from the logged steps of its
    most frequently logged metric (None when it logged no steps while it ran)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    best: list[Any] = []
    for name in run.data.metrics:
        history = client.get_metric_history(run.info.run_id, name)
        if len({m.step for m in history}) > len({m.step for m in best}):
            best = history
    points = [(m.step, m.timestamp) for m in sorted(best, key=lambda m: (m.step, m.timestamp))]
    if len(points) < 3:
        return None
    (s0, t0), (s1, t1) = points[0], points[-1]
    if s1 <= s0 or t1 <= t0:  # logged all at once at the end: no timing in it
        return None
    per_step = (t1 - t0) / (s1 - s0)
    start = (t0 - s0 * per_step - run.info.start_time) / 1000
    return max(0.0, start)


def analyse(uri: str, store_root: Path, wall: float, spawn: float) -> dict[str, Any]:
    """Split run 1's wall time (see the module docstring). `spawn` is the epoch time the process started."""
    from pipeline.store import LocalStore

    parent = pipeline_runs(uri)[-1]
    runs = stage_runs(uri, parent)
    store = LocalStore(store_root)
    stages: dict[str, dict[str, Any]] = {}
    gaps, previous_end = 0.0, parent.info.start_time
    for run in runs:
        name = run.data.tags["z2h.stage"]
        info = run.info
        stage_wall = (info.end_time - info.start_time) / 1000
        lookup = store.lookup(name, run.data.tags["z2h.fingerprint"])
        inside = lookup.manifest.seconds if lookup.manifest else 0.0
        ahead = before_first_step(uri, run) if run.data.tags.get("z2h.cache") == "miss" else None
        ahead = min(ahead, inside) if ahead is not None else 0.0
        stages[name] = {
            "status": "cached" if run.data.tags.get("z2h.cache") == "hit" else "done",
            "wall_s": round(stage_wall, 2),
            "work_s": round(inside - ahead, 2),
            "before_step_s": round(ahead, 2),
            "dispatch_s": round(max(0.0, stage_wall - inside), 2),
        }
        gaps += max(0.0, (info.start_time - previous_end) / 1000)
        previous_end = info.end_time
    startup = parent.info.start_time / 1000 - spawn
    teardown = spawn + wall - previous_end / 1000
    work = sum(s["work_s"] for s in stages.values())
    before = sum(s["before_step_s"] for s in stages.values())
    split = {
        "startup_s": round(startup, 2),
        "before_step_s": round(before, 2),
        "dispatch_s": round(sum(s["dispatch_s"] for s in stages.values()), 2),
        "gaps_s": round(gaps, 2),
        "teardown_s": round(teardown, 2),
    }
    return {
        "parent": parent,
        "stages": stages,
        "overhead": split,
        "stage_work_s": round(work, 2),
        "non_stage_share": round(1 - (work + before) / wall, 4),
        "non_stage_share_max": round(1 - work / wall, 4),
    }


def proofs(uri: str, parent: Any) -> dict[str, Any]:
    """The proofs' numbers from one pipeline run's stage runs, each with whether it met its target."""
    metrics = {r.data.tags["z2h.stage"]: r.data.metrics for r in stage_runs(uri, parent)}
    found: dict[str, Any] = {}
    for stage, key, least, most in PROOFS:
        value = metrics.get(stage, {}).get(key)
        if value is None:
            continue
        met = (least is None or value >= least) and (most is None or value <= most)
        found[f"{stage}/{key}"] = {"value": round(value, 4), "met": met}
    rl = metrics.get("rl", {})
    for gain, name in (("accuracy_gain", "gain_in_se"), ("skill_gain", "skill_gain_in_se")):
        if gain in rl and f"{gain}_se" in rl:
            z = rl[gain] / max(rl[f"{gain}_se"], 1e-9)
            found[f"rl/{name}"] = {"value": round(z, 2), "met": z >= RL_GAIN_STANDARD_ERRORS}
    for key in ("accuracy_before", "accuracy_after", "unpaired_before", "unpaired_after"):
        if key in rl:
            found[f"rl/{key}"] = {"value": round(rl[key], 4), "met": True}
    return found


def cold_run(args: argparse.Namespace, workdir: Path, seed: int | None) -> dict[str, Any] | None:
    """One cold `z2h run` in the empty `workdir` (PyPI archives shared, source snapshotted): its
    timing split, proofs and the arguments that repeat it; None when it failed."""
    packages = REPO / ".z2h" / "cache" / "packages"
    packages.mkdir(parents=True, exist_ok=True)
    (workdir / "cache").mkdir(parents=True)
    (workdir / "cache" / "packages").symlink_to(packages)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    source = snapshot(workdir / "src")
    config = Path(args.config).resolve()
    if config.is_relative_to(REPO / "configs"):
        config = source / config.relative_to(REPO)
    run_args = [str(config), "--set", f"run.workdir={workdir}"]
    run_args += ["--set", f"run.seed={seed}"] if seed is not None else []
    run_args += [item for override in args.overrides for item in ("--set", override)]
    run_args += ["--until", args.until] if args.until else []
    log_file = workdir / "bench.log"
    load = os.getloadavg()[0]
    log(f"bench/full_run.py: cold run (seed {seed or 'of the config'}) in {workdir} (log: {log_file}); load {load:.1f}")
    spawn = time.time()
    wall, lines, code, cpu = z2h_run(run_args, log_file, args.echo, source)
    if code != 0:
        log("\n".join(line for _, line in lines[-40:]))
        log(f"bench/full_run.py: the cold run failed (exit {code}); log: {log_file}")
        return None
    cold = analyse(uri, workdir / "store", wall, spawn)
    found = proofs(uri, cold["parent"])
    log(
        f"  cold run: {wall:.1f} s; proofs "
        + ", ".join(f"{k} {v['value']}{'' if v['met'] else ' (MISSED)'}" for k, v in found.items())
    )
    return cold | {
        "seed": seed,
        "wall": wall,
        "cpu": cpu,
        "uri": uri,
        "source": source,
        "run_args": run_args,
        "workdir": workdir,
        "log_file": log_file,
        "load": load,
        "proofs": found,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    parser.add_argument("--until", help="run this stage and everything upstream (default: the whole pipeline)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--workdir", type=Path, help="an empty folder to use (default: a fresh temp folder)")
    parser.add_argument("--seeds", help="comma-separated run.seed values: one cold run each (default: the config's)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (printed) afterwards")
    parser.add_argument("--echo", action="store_true", help="show z2h's output while it runs")
    args = parser.parse_args()

    base = args.workdir or Path(tempfile.mkdtemp(prefix="z2h-bench-full-run-"))
    base.mkdir(parents=True, exist_ok=True)
    if any(base.iterdir()):
        log(f"bench/full_run.py: {base} is not empty; a cold start needs an empty work dir")
        return 2
    seeds: list[int | None] = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
    runs = []
    for seed in seeds:
        run = cold_run(args, base / f"seed-{seed}" if args.seeds else base, seed)
        if run is None:
            return 1
        runs.append(run)
    first = cold = runs[0]
    uri, wall1, cpu1, load_before, workdir = first["uri"], first["wall"], first["cpu"], first["load"], first["workdir"]
    log("  the first cold run's command again")
    wall2, lines2, code2, _ = z2h_run(first["run_args"], first["log_file"], args.echo, first["source"])
    runs2 = stage_runs(uri, pipeline_runs(uri)[-1])
    hits = [r.data.tags.get("z2h.cache") == "hit" for r in runs2]
    all_hits = code2 == 0 and bool(hits) and all(hits) and len(runs2) == len(cold["stages"])

    from pipeline import report_card
    from pipeline.store import LocalStore

    store = LocalStore(workdir / "store")
    card = report_card.write(uri, cold["parent"].info.run_id, workdir / "bench-report", store=store)
    imports = import_seconds()
    load_after = os.getloadavg()[0]

    log("")
    log(f"{'stage':<10} {'status':<8} {'wall s':>8} {'work s':>8} {'before step s':>14} {'dispatch s':>11}")
    for name, row in cold["stages"].items():
        log(
            f"{name:<10} {row['status']:<8} {row['wall_s']:>8.1f} {row['work_s']:>8.1f} "
            f"{row['before_step_s']:>14.1f} {row['dispatch_s']:>11.1f}"
        )
    split = cold["overhead"]
    log(
        f"cold run {wall1:.1f} s (target < {TARGET_SECONDS} s): stage work {cold['stage_work_s']:.1f} s, "
        f"not stage work {100 * cold['non_stage_share']:.1f}% (up to {100 * cold['non_stage_share_max']:.1f}% "
        f"counting all time before first steps): start-up {split['startup_s']:.1f} s "
        f"(imports alone {imports:.1f} s), before first step {split['before_step_s']:.1f} s, "
        f"dispatch/tracking/store {split['dispatch_s'] + split['gaps_s']:.1f} s, teardown {split['teardown_s']:.1f} s"
    )
    log(f"second run {wall2:.1f} s, {sum(hits)}/{len(runs2)} cache hits; report card rendered in {card.seconds:.1f} s")
    log(
        f"cold run CPU time {cpu1:.0f} s (z2h, Ray and its workers; {cpu1 / (os.cpu_count() or 1):.0f} s of wall "
        f"time on {os.cpu_count()} idle cores); load average {load_before:.1f} before, {load_after:.1f} after "
        "(other work on the machine stretches wall times)"
    )
    if len(runs) > 1:
        log(f"{'seed':>6} {'cold s':>8} " + " ".join(f"{k:>22}" for k in runs[0]["proofs"]))
        for run in runs:
            cells = [f"{v['value']:>21}{' ' if v['met'] else '!'}" for v in run["proofs"].values()]
            log(f"{run['seed']:>6} {run['wall']:>8.1f} " + " ".join(cells))
    if args.keep:
        log(f"work dir kept: {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)

    result = {
        "bench": "full_run",
        "config": Path(args.config).name,
        "until": args.until,
        "overrides": args.overrides,
        "cold_wall_s": round(wall1, 1),
        "cold_cpu_s": round(cpu1, 1),
        "under_target": wall1 < TARGET_SECONDS,
        "stage_work_s": cold["stage_work_s"],
        "non_stage_share": cold["non_stage_share"],
        "non_stage_share_max": cold["non_stage_share_max"],
        "non_stage_s": cold["overhead"],
        "imports_s": round(imports, 2),
        "stages": cold["stages"],
        "cached_wall_s": round(wall2, 1),
        "cached_all_hits": all_hits,
        "cached_under_target": wall2 < CACHED_TARGET_SECONDS,
        "report_render_s": round(card.seconds, 2),
        "proofs": first["proofs"],
        "proofs_met": all(v["met"] for run in runs for v in run["proofs"].values()),
        "seeds": [
            {
                "seed": r["seed"],
                "cold_wall_s": round(r["wall"], 1),
                "stages": {k: v["wall_s"] for k, v in r["stages"].items()},
                "proofs": {k: v["value"] for k, v in r["proofs"].items()},
            }
            for r in runs
        ],
        "load_average": [round(load_before, 1), round(load_after, 1)],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0 if all_hits else 1


if __name__ == "__main__":
    sys.exit(main())
