"""Executes a plan: each selected stage runs as a Ray task (or is reused from the store),
with one MLflow parent run for the command and one nested run per stage."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from rich.console import Console

from cluster import placement, runtime, storage
from pipeline import lineage
from pipeline.errors import INTERRUPTED, OK, STAGE_FAILED, EnvironmentProblem, UsageError
from pipeline.execute import StageJob, execute
from pipeline.graph import Plan, PlannedStage
from pipeline.lineage import DatasetRef, Tracker
from pipeline.redact import redact
from pipeline.store import Store, open_store

VERSION = version("zero2hero")
# A stage task lost to a system failure (its node died, its worker was OOM-killed) runs again,
# resuming from its scratch folder; an exception raised by the stage's code is not retried.
STAGE_TASK_RETRIES = 2
# Ctrl-C: how long to wait for a cancelled stage task to end before leaving its staging folder to
# the next run (a force-cancelled task's worker is killed asynchronously and may still write).
CANCEL_WAIT_S = 30.0


@dataclass
class StageOutcome:
    name: str
    status: str  # done | cached | failed | killed | not run
    seconds: float = 0.0
    fingerprint: str = ""
    run_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass
class RunResult:
    run_id: str
    outcomes: list[StageOutcome]
    exit_code: int
    report: Path | None = None  # the report card's HTML page (None: not written)


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def check_workdir(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir):
            pass
    except OSError as exc:
        raise EnvironmentProblem(f"work dir {workdir} is not writable ({exc.strerror}); set run.workdir") from None


def worker_env(workdir: Path) -> dict[str, str]:
    """Caches that libraries would otherwise put in $HOME live under the work dir."""
    cache = workdir / "cache"
    return {
        "HF_HOME": str(cache / "huggingface"),
        "TLDEXTRACT_CACHE": str(cache / "tldextract"),
    }


def dataset_ref(store: Store, item: PlannedStage) -> DatasetRef:
    return DatasetRef(name=item.name, digest=item.fingerprint, source=store.location(item.name, item.fingerprint))


def log_summary(tracker: Tracker, metrics: Mapping[str, float]) -> None:
    """A built stage's returned metrics on its run, but for those the stage logged itself while it ran:
    their histories are the stage's own, and a second point at step 0 would pull each curve back to its
    start (MLflow shows a metric's value at its highest step anyway)."""
    logged = tracker.client.get_run(tracker.run_id).data.metrics
    tracker.log_metrics({key: value for key, value in metrics.items() if key not in logged})


class Runner:
    def __init__(self, plan: Plan, command: list[str], console: Console | None = None):
        self.plan = plan
        self.config = plan.config
        self.command = command
        self.console = console or Console(stderr=True, highlight=False)
        self.workdir = self.config.run.workdir
        self.store = open_store(self.config.run.store, self.workdir)
        self.uri = self.config.run.tracking

    # -- set-up -------------------------------------------------------------------
    def _prepare(self) -> tuple[str, Tracker]:
        check_workdir(self.workdir)
        lineage.check_tracking(self.uri)
        env = worker_env(self.workdir)
        os.environ.update(env)
        cluster = self.config.cluster
        address = None
        if any(item.status == "run" for item in self.plan.selected):  # all cached: no Ray to start
            address, dashboard = runtime.start(
                self.workdir, cluster.address, cluster.num_cpus, cluster.num_gpus, cluster.dashboard, env=env
            )
            if dashboard:
                self.console.print(f"[bold]z2h[/] Ray dashboard: {dashboard}")
            try:
                self._check_cluster()
            except BaseException:
                runtime.stop()
                raise
        # A tracking server keeps artifacts where it is configured to; a local store beside itself.
        served = self.uri.startswith(("http://", "https://", "databricks"))
        experiment = lineage.experiment_id(
            self.uri, self.config.run.name, None if served else self.workdir / "mlartifacts"
        )
        parent = lineage.start_run(
            self.uri,
            experiment,
            run_name=f"{self.config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                "z2h.kind": "pipeline",
                "z2h.config": self.config.run.name,
                "z2h.config_files": ",".join(self.config.sources),
                "z2h.git_commit": git_commit(),
                "z2h.version": VERSION,
                "z2h.command": shlex.join(self.command),
                "z2h.stages": ",".join(s.name for s in self.plan.selected),
            },
        )
        resolved = self.config.to_dict()
        parent.log_params({"run": resolved["run"], "cluster": resolved["cluster"]})
        parent.log_text(redact(self.config.to_yaml()), "config.yaml")
        return address or "", parent

    def _check_cluster(self) -> None:
        """Shared storage on a multi-node cluster; every stage to run fits the nodes present."""
        nodes = placement.alive_nodes()
        storage.check(self.config.run, len(nodes))
        if self.config.cluster.check_resources:
            for item in self.plan.selected:
                if item.status == "run" and (problem := placement.problem(item.name, item.resources, nodes)):
                    raise UsageError(problem)
        self.store.check()  # last: its write probe creates the store, and a refused run leaves nothing behind

    def _stage_run(self, parent: Tracker, item: PlannedStage, extra_tags: dict[str, str]) -> Tracker:
        tags = {
            "z2h.kind": "stage",
            "z2h.stage": item.name,
            "z2h.fingerprint": item.fingerprint,
            **{f"z2h.upstream.{need}": self.plan[need].fingerprint for need in item.needs},
            **extra_tags,
        }
        tracker = lineage.start_run(self.uri, parent.experiment_id, item.name, tags, parent_run_id=parent.run_id)
        tracker.log_params(item.config.model_dump(mode="json"))
        tracker.log_datasets([dataset_ref(self.store, self.plan[n]) for n in item.needs], context="input")
        return tracker

    # -- execution ----------------------------------------------------------------
    def run(self) -> RunResult:
        address, parent = self._prepare()
        self.console.print(f"[bold]z2h[/] {self.config.run.name}: MLflow run {parent.run_id} ({redact(self.uri)})")
        outcomes: list[StageOutcome] = []
        status = "FINISHED"
        failed = False
        report: Path | None = None
        try:
            for item in self.plan.selected:
                if failed:
                    outcomes.append(StageOutcome(item.name, "not run", fingerprint=item.fingerprint))
                    continue
                if item.status == "cached":
                    outcomes.append(self._reuse(parent, item))
                    continue
                outcome = self._build(parent, item, address)
                outcomes.append(outcome)
                failed = outcome.status == "failed"
            self._register(parent, outcomes)
            report = self._report(parent)
        except KeyboardInterrupt:
            status = "KILLED"
            self.console.print("[yellow]interrupted: Ray work cancelled, runs marked KILLED, no store entry kept[/]")
            outcomes.append(StageOutcome("(interrupted)", "killed"))
        except BaseException:
            failed = True
            raise
        finally:
            if failed:
                status = "FAILED"
            lineage.end_run(parent, status)
            runtime.stop()
        exit_code = {"FINISHED": OK, "FAILED": STAGE_FAILED, "KILLED": INTERRUPTED}[status]
        return RunResult(parent.run_id, outcomes, exit_code, report)

    def _reuse(self, parent: Tracker, item: PlannedStage) -> StageOutcome:
        manifest = item.lookup.manifest
        assert manifest is not None
        tracker = self._stage_run(
            parent, item, {"z2h.cache": "hit", "z2h.producer_run_id": manifest.run_id or "unknown"}
        )
        tracker.log_datasets([dataset_ref(self.store, item)], context="output")
        tracker.log_metrics(manifest.metrics)
        lineage.end_run(tracker, "FINISHED")
        self.console.print(f"  [cyan]cached[/]  {item.name:<10} {item.fingerprint}  (run {manifest.run_id})")
        return StageOutcome(item.name, "cached", 0.0, item.fingerprint, tracker.run_id, manifest.metrics)

    def _build(self, parent: Tracker, item: PlannedStage, address: str) -> StageOutcome:
        """Run the stage while holding its build lock; if another `z2h run` on this work dir
        committed it meanwhile, reuse that entry instead."""

        def waiting() -> None:
            self.console.print(
                f"  [yellow]waiting[/] {item.name:<10} {item.fingerprint}  another z2h run is building it"
            )

        with self.store.lock(item.name, item.fingerprint, on_wait=waiting) as held:
            if held.previous:
                self._close_dead_runs(item, held.previous)
            if not item.forced:
                item.lookup = self.store.lookup(item.name, item.fingerprint)
                if item.lookup.hit:
                    return self._reuse(parent, item)
            self.store.clear_staging(item.name, item.fingerprint)  # left by a run that was killed
            return self._execute(parent, item, address, held)

    def _close_dead_runs(self, item: PlannedStage, record: str) -> None:
        """The last run building this stage died without a word (SIGKILL, OOM, power): its MLflow
        runs would stay RUNNING forever. Mark them KILLED."""
        try:
            dead = json.loads(record)
            client = lineage.Tracker(dead["tracking_uri"], dead["stage_run"]).client
            for run_id in (dead["stage_run"], dead["pipeline_run"]):
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_terminated(run_id, status="KILLED")
        except Exception:  # a record we cannot read or a store we cannot reach: nothing to clean
            return
        self.console.print(
            f"  [yellow]note[/]    {item.name:<10} run {dead['pipeline_run']} died building it: marked KILLED"
        )

    def _execute(self, parent: Tracker, item: PlannedStage, address: str, held=None) -> StageOutcome:
        import ray

        if self.config.cluster.check_resources:  # nodes may have left since the run started
            problem = placement.problem(item.name, item.resources, placement.alive_nodes())
            if problem:
                self.console.print(f"  [red]failed[/]  {item.name:<10} {problem}")
                return StageOutcome(item.name, "failed", 0.0, item.fingerprint, "", {}, problem)
        tracker = self._stage_run(parent, item, {"z2h.cache": "miss"})
        if held is not None:  # who is building it, for the run that finds this lock if we die
            held.record(
                json.dumps({"tracking_uri": self.uri, "pipeline_run": parent.run_id, "stage_run": tracker.run_id})
            )
        staging = self.store.staging(item.name, item.fingerprint)
        log_file = self.workdir / "logs" / parent.run_id / f"{item.name}.log"
        job = StageJob(
            stage=item.stage,
            config=item.config,
            pipeline_config=self.config,
            fingerprint=item.fingerprint,
            upstream_fingerprints={n: self.plan[n].fingerprint for n in item.needs},
            store=self.store,
            staging=staging,
            workdir=self.workdir,
            log_file=log_file,
            tracker=tracker,
            replace=item.forced,
            ray_address=address or None,
        )
        res = item.resources
        own = {"num_cpus": res.cpus, "num_gpus": res.gpus} if res.workers == 1 else {"num_cpus": 0}
        # max_calls=1: each stage gets a fresh worker process, so nothing an earlier stage left in it
        # (threads, allocator state, module globals) slows or changes this one.
        task = ray.remote(max_retries=STAGE_TASK_RETRIES, max_calls=1, **own)(execute)
        self.console.print(f"  [blue]running[/] {item.name:<10} {item.fingerprint}  {res.describe()}")
        started = time.time()
        ref = task.remote(job)
        try:
            manifest = self._wait(ref)
        except KeyboardInterrupt:
            if not cancel_stage_task(ref, self.store, staging):
                self.console.print(f"  [yellow]note[/]    {item.name:<10} task still running after cancel")
            self._upload_log(tracker, log_file)
            lineage.end_run(tracker, "KILLED")
            raise
        except Exception as exc:
            self.store.discard(staging)
            self._upload_log(tracker, log_file)
            lineage.end_run(tracker, "FAILED")
            reason = _one_line(exc)
            self.console.print(f"  [red]failed[/]  {item.name:<10} {time.time() - started:7.1f}s  {reason}")
            self.console.print(f"          full log: {log_file}")
            seconds = time.time() - started
            return StageOutcome(item.name, "failed", seconds, item.fingerprint, tracker.run_id, {}, reason)
        tracker.log_datasets([dataset_ref(self.store, item)], context="output")
        log_summary(tracker, {**manifest.metrics, "store_bytes": manifest.total_bytes})
        self._upload_log(tracker, log_file)
        lineage.end_run(tracker, "FINISHED")
        seconds = time.time() - started
        self.console.print(f"  [green]done[/]    {item.name:<10} {seconds:7.1f}s")
        return StageOutcome(item.name, "done", seconds, item.fingerprint, tracker.run_id, manifest.metrics)

    def _wait(self, ref):
        """The stage task's result. Ctrl-C is caught by a handler of our own while waiting: a
        KeyboardInterrupt raised inside Ray's wait can be lost, leaving the stage to run on."""
        import ray

        interrupted = threading.Event()
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set()) if main else None
        try:
            while not interrupted.is_set():
                ready, _ = ray.wait([ref], timeout=0.5)
                if ready:
                    return ray.get(ref)
            raise KeyboardInterrupt
        finally:
            if main:  # a handler installed outside Python reads as None
                signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)

    @staticmethod
    def _upload_log(tracker: Tracker, log_file: Path) -> None:
        if log_file.exists():
            tracker.log_artifact(log_file, "logs")

    def _register(self, parent: Tracker, outcomes: list[StageOutcome]) -> None:
        """The run's models become versions of the registered model named after the pipeline, with aliases
        (pipeline/model_registry.py). The registry is a view of the run: a failure there never fails it."""
        from pipeline import model_registry

        runs = [o.run_id for o in outcomes if o.status in ("done", "cached") and o.run_id]
        try:
            registered = model_registry.register(parent, self.config.run.name, runs)
        except Exception as exc:
            self.console.print(f"[yellow]z2h: models not registered ({type(exc).__name__}: {exc})[/]")
            return
        if registered:
            shown = ", ".join(f"@{r.alias} v{r.version}" + ("" if r.new else " (kept)") for r in registered)
            self.console.print(f"[bold]z2h[/] registered models:/{self.config.run.name}: {shown}")

    def _report(self, parent: Tracker) -> Path | None:
        """The report card (markdown + self-contained HTML) under `<workdir>/reports/<run id>/`, logged
        on the parent run as `report/`. A report that cannot be built never fails the run."""
        from pipeline import report_card

        try:
            card = report_card.write(
                self.uri,
                parent.run_id,
                self.workdir,
                store=self.store,
                stages={item.name: item.stage for item in self.plan.stages},
                resources={item.name: item.resources.describe() for item in self.plan.selected},
                config_text=redact(self.config.to_yaml()),
                log=lambda folder: parent.log_artifact(folder, "report"),
            )
        except Exception as exc:
            self.console.print(f"[yellow]z2h: no report card ({type(exc).__name__}: {exc})[/]")
            return None
        return card.html


def cancel_stage_task(ref, store: Store, staging: Path, wait_s: float = CANCEL_WAIT_S) -> bool:
    """Force-cancel a stage task and remove its staging folder once the task has ended (bounded
    wait). A task still running keeps its folder, which the next run holding the build lock clears."""
    import ray

    ray.cancel(ref, force=True)
    ended, _ = ray.wait([ref], timeout=wait_s)
    if ended:
        store.discard(staging)
    return bool(ended)


def _one_line(exc: BaseException) -> str:
    """The innermost error of a (Ray-wrapped) stage failure, as one line."""
    cause = getattr(exc, "cause", None)
    inner = cause if isinstance(cause, BaseException) else exc
    text = str(inner).strip().splitlines()
    message = text[-1] if text else ""
    return f"{type(inner).__name__}: {message}" if message else type(inner).__name__


def run(plan: Plan, command: list[str] | None = None, console: Console | None = None) -> RunResult:
    if not plan.selected:
        raise UsageError("nothing selected to run")
    return Runner(plan, command or sys.argv, console).run()
