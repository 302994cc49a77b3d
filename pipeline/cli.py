"""`z2h`: run pipelines, plan them, list runs, open the MLflow UI, show configs, use models, plus
stage commands.

Building the parser imports no stage: the model commands' arguments come from `use.commands`
(argparse only) and stage commands are known by name from entry points (`pipeline.registry`), so
`z2h --help` answers at once; a command imports what it needs when it runs. Exit codes:
`pipeline.errors.EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from pipeline import registry
from pipeline.errors import ENVIRONMENT, INTERNAL, UsageError, describe_exit_codes, exit_code
from pipeline.redact import redact
from use import commands as use_commands

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rich.console import Console
    from rich.table import Table

    from pipeline import config as config_io
    from pipeline.budget import Budget
    from pipeline.graph import Plan

EPILOG = f"""examples:
  z2h run configs/tiny.yaml                       run the whole pipeline, reusing cached stages
  z2h run configs/tiny.yaml --until tokenizer     run tokenizer and everything it needs
  z2h run configs/tiny.yaml --stage tokenizer     rerun one stage from cached upstreams
  z2h run configs/tiny.yaml --force data --set stages.data.tasks=8
  z2h run configs/tiny.yaml --set stages.eval=null   without a stage (stages.X: null removes X)
  z2h run configs/gpt-1b-multinode.yaml --address head:6379   on a running Ray cluster
  z2h plan configs/tiny.yaml                      show the DAG, fingerprints and cache status
  z2h runs configs/tiny.yaml                      recent pipeline runs from MLflow
  z2h ui configs/tiny.yaml                        MLflow UI on 127.0.0.1
  z2h config --keys stages.pretrain               every key: type, default, description
  z2h chat                                        chat with the latest model (rl, else sft, else pretrain)
  z2h sample base -p "The king" -c configs/tiny.yaml   one-shot completions from a stage's model
  z2h export models:/tiny@rl out/tiny-rl          a registered model as a Hugging Face folder (transformers)

where a run lives: every command reads it from a config (CONFIG or -c FILE; none: the defaults,
  work dir .z2h); --workdir DIR and --tracking-uri URI are short for --set run.workdir=DIR and
  --set run.tracking_uri=URI.
MLflow tracking, for every command: run.tracking_uri (config, --set, --tracking-uri), else
  $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db.

exit codes:
{describe_exit_codes()}
"""


def _version() -> str:
    try:
        return version("zero2hero")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _where_args(parser: argparse.ArgumentParser, positional: bool) -> None:
    """How every command names where a run lives: a config (files merged in order) plus overrides."""
    if positional:
        parser.add_argument("config", nargs="?", help="pipeline YAML (e.g. configs/tiny.yaml)")
    parser.add_argument(
        "-c",
        "--config",
        "--config-file",
        dest="config_file",
        action="append",
        default=[],
        metavar="FILE",
        help="pipeline YAML" + (", merged on top of CONFIG" if positional else "") + " (repeatable, in order)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one value, e.g. --set stages.pretrain.lr=3e-4 (repeatable; YAML values; null removes)",
    )
    parser.add_argument("--workdir", metavar="DIR", help="short for --set run.workdir=DIR")
    parser.add_argument("--tracking-uri", metavar="URI", help="short for --set run.tracking_uri=URI")


def _selection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this stage (repeatable); its upstreams must be in the store",
    )
    parser.add_argument("--from", dest="from_stage", metavar="NAME", help="run this stage and everything downstream")
    parser.add_argument("--until", dest="until_stage", metavar="NAME", help="run this stage and everything upstream")
    parser.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="NAME",
        help="rebuild this stage even if the store has it (repeatable)",
    )
    parser.add_argument(
        "--with-deps", action="store_true", help="also run upstreams of the selection that the store lacks"
    )


def _files(args: argparse.Namespace) -> list[str]:
    return ([args.config] if getattr(args, "config", None) else []) + args.config_file


def _overrides(args: argparse.Namespace) -> list[str]:
    shortcuts = {"workdir": "run.workdir", "tracking_uri": "run.tracking_uri", "address": "cluster.address"}
    given = [f"{key}={getattr(args, flag)}" for flag, key in shortcuts.items() if getattr(args, flag, None)]
    return [*args.overrides, *given]


def _load(args: argparse.Namespace, stages: dict) -> config_io.PipelineConfig:
    """The whole config, every stage in it validated."""
    from pipeline import config as config_io

    files = _files(args)
    if not files:
        raise UsageError(f"z2h {args.command} needs a config, e.g. `z2h {args.command} configs/tiny.yaml`")
    return config_io.load(files, _overrides(args), stages)


def _run_config(args: argparse.Namespace) -> config_io.RunConfig:
    """Only where the run lives (work dir, store, tracking): no stage is imported."""
    from pipeline import config as config_io

    return config_io.run_section(config_io.read_all(_files(args), _overrides(args)))


def _plan(args: argparse.Namespace):
    from pipeline import graph
    from pipeline.store import open_store

    stages = registry.stages()
    config = _load(args, stages)
    selection = graph.Selection(
        stages=tuple(args.stage),
        from_stage=args.from_stage,
        until_stage=args.until_stage,
        force=tuple(args.force),
        with_deps=args.with_deps,
    )
    store = open_store(config.run.store, config.run.workdir)
    return graph.build_plan(config, stages, store, selection, config_label=_files(args)[0])


def stdout_console() -> Console:
    """Tables for stdout; when piped, wide enough that run ids and paths stay on one line."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def cmd_plan(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from pipeline import budget
    from pipeline.store import open_store

    plan = _plan(args)
    budgets = budget.estimate(plan)
    store = open_store(plan.config.run.store, plan.config.run.workdir)
    if args.verify:
        for item in plan.stages:
            item.lookup = store.lookup(item.name, item.fingerprint, checksums=True)
    table = Table(title=f"plan: {plan.config.run.name}  (store: {store.describe})")
    for column in ("stage", "needs", "fingerprint", "status", "resources", "note", "details"):
        table.add_column(column)
    colours = {"cached": "cyan", "run": "green", "skip": "dim"}
    for item in plan.stages:
        note = item.lookup.reason or ("pulled in by --with-deps" if item.pulled_in else "")
        if item.forced:
            note = "forced"
        status = item.status
        table.add_row(
            item.name,
            ",".join(item.needs) or "-",
            item.fingerprint,
            f"[{colours[status]}]{status}[/]",
            item.resources.describe(),
            note,
            budgets[item.name].details if item.name in budgets else "",
        )
    stdout_console().print(table)
    stdout_console().print(_budget_table(plan, budgets))
    budget.refuse_unfit(plan, budgets)
    return 0


def _budget_table(plan: Plan, budgets: Mapping[str, Budget]) -> Table:
    """Each stage's estimated cost on `cluster.hardware` (time only where the config names it)."""
    from rich.table import Table

    from pipeline.budget import amount, capacity_gb, duration

    hardware = plan.config.cluster.hardware
    where = hardware.describe() if hardware else "no cluster.hardware: no time estimates or memory checks"
    table = Table(title=f"budgets: {where}")
    for column in ("stage", "data", "tokens", "steps", "FLOPs", "memory/worker", "holds", "time"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for item in plan.stages:
        found = budgets.get(item.name)
        if found is None:
            continue
        memory = "-" if found.memory_gb is None else f"{found.memory_gb:.1f} GB" + (" GPU" if found.on_gpu else "")
        holds = f"{capacity_gb(item, found, hardware):.0f} GB" if hardware and found.memory_gb is not None else "-"
        table.add_row(
            item.name,
            amount(found.data_bytes, "B"),
            amount(found.tokens),
            "-" if found.steps is None else f"{found.steps:,}",
            "-" if found.flops is None else f"{found.flops:.2e}",
            memory,
            holds,
            duration(found.seconds),
        )
    return table


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from pipeline import budget, reports, runner

    plan = _plan(args)
    budget.refuse_unfit(plan)  # before anything runs: a stage whose memory cannot fit is a config error
    result = runner.run(plan, command=["z2h", *args.argv], console=console)
    reports.print_summary(result, plan, console)
    return result.exit_code


def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    from pipeline import reports

    run = _run_config(args)
    reports.print_runs(run.tracking, run.name if _files(args) else None, args.limit, stdout_console())
    return 0


def cmd_ui(args: argparse.Namespace, console: Console) -> int:
    import subprocess

    uri = _run_config(args).tracking
    url = f"http://127.0.0.1:{args.port}"
    console.print(f"MLflow UI for {redact(uri)} at {url}  (Ctrl-C stops it)")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",  # MLflow's default is 4, each importing mlflow: slow to start on a small machine
        str(args.workers),
    ]
    # MLflow's job runner (GenAI judges and scheduled jobs: seven more processes) is not needed to browse runs.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0


def cmd_config(args: argparse.Namespace, console: Console) -> int:
    if args.keys is None:
        print(_load(args, registry.stages()).to_yaml(), end="")
        return 0
    if _files(args) or _overrides(args):
        raise UsageError("z2h config --keys lists the keys every config may hold; it takes no config or --set")
    from rich.markup import escape
    from rich.table import Table

    from pipeline import config as config_io
    from pipeline.config_keys import keys

    sections = [(config_io.RunConfig, "run"), (config_io.ClusterConfig, "cluster")]
    sections += [(stage.config_model, f"stages.{name}") for name, stage in registry.stages().items()]
    found = [key for model, prefix in sections for key in keys(model, prefix)]
    if args.keys:
        found = [key for key in found if key.path.startswith((args.keys, f"stages.{args.keys}"))]
        if not found:
            raise UsageError(f"--keys {args.keys}: no key starts with it (try run, cluster, stages.<stage>)")
    table = Table(box=None, pad_edge=False)
    for column in ("key", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for key in found:
        note = " [dim](cosmetic: not in the fingerprint)[/]" if key.cosmetic else ""
        table.add_row(key.path, escape(key.type), escape(key.default), escape(key.description) + note)
    stdout_console().print(table)
    return 0


def _with_run_config(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace, Console], int]:
    """A command that only reads a run's files: it gets `args.run_config` (where the run lives)."""

    def handler(args: argparse.Namespace, console: Console) -> int:
        args.run_config = _run_config(args)
        return run(args)

    return handler


def _stage_command(ref: registry.CommandRef) -> Callable[[argparse.Namespace, Console], int]:
    """A stage's command: it gets `args.run_config` and `args.stage_config` (its stage's section, defaults
    without a config)."""

    def handler(args: argparse.Namespace, console: Console) -> int:
        from pipeline import config as config_io

        stage, command = ref.load()
        raw = config_io.read_all(_files(args), _overrides(args))
        args.run_config, args.stage_config = config_io.run_section(raw), config_io.stage_section(raw, stage)
        return command.run(args)

    return handler


def build_parser(commands: dict[str, registry.CommandRef], wanted: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; only the stage command `wanted` (the one on the command line) has its options."""
    parser = argparse.ArgumentParser(
        prog="z2h",
        description="zero2hero: raw web crawl to chat model (data, tokenizer, pretrain, sft, rl, eval) on Ray, "
        "tracked in MLflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"z2h {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline (cached stages are reused)")
    _where_args(run, positional=True)
    _selection_args(run)
    run.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="run on this Ray cluster (short for --set cluster.address=...; default: RAY_ADDRESS, else embedded Ray)",
    )
    run.set_defaults(handler=cmd_run)

    plan = sub.add_parser("plan", help="print the DAG with fingerprints, cache status and resources; runs nothing")
    _where_args(plan, positional=True)
    _selection_args(plan)
    plan.add_argument("--verify", action="store_true", help="also check every stored file's sha256")
    plan.set_defaults(handler=cmd_plan)

    runs = sub.add_parser("runs", help="list recent pipeline runs and their stages from MLflow")
    _where_args(runs, positional=True)
    runs.add_argument("-n", "--limit", type=int, default=10, help="how many runs (default 10)")
    runs.set_defaults(handler=cmd_runs)

    ui = sub.add_parser("ui", help="serve the MLflow UI for this work dir on 127.0.0.1")
    _where_args(ui, positional=True)
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--workers", type=int, default=1, help="server processes (default 1: one user, starts fastest)")
    ui.set_defaults(handler=cmd_ui)

    config = sub.add_parser("config", help="print a config as resolved (files merged, --set applied), or list keys")
    _where_args(config, positional=True)
    config.add_argument(
        "--keys",
        nargs="?",
        const="",
        metavar="PREFIX",
        help="list every key a config may hold, with type, default and description (PREFIX: e.g. stages.sft)",
    )
    config.set_defaults(handler=cmd_config)

    for name, command in use_commands.COMMANDS.items():
        model = sub.add_parser(name, help=command.help)
        command.configure(model)
        _where_args(model, positional=False)
        model.set_defaults(handler=_with_run_config(command.run))

    for name, ref in commands.items():
        if name in sub.choices:
            raise UsageError(f"stage {ref.stage}'s command '{name}' clashes with z2h's own command of that name")
        if name != wanted:  # listed by name; its stage is imported only when it runs
            sub.add_parser(name, help=f"the {ref.stage} stage's command (z2h {name} --help shows its options)")
            continue
        _, command = ref.load()
        extra = sub.add_parser(name, help=command.help)
        command.configure(extra)
        _where_args(extra, positional=False)
        extra.set_defaults(handler=_stage_command(ref))
    return parser


def _command_name(argv: list[str]) -> str | None:
    """The subcommand on the command line: the top level takes no option with a value, so it is the
    first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _command_name(argv) != "chat" or threading.current_thread() is not threading.main_thread():
        return _main(argv)
    from use.sigint import hold_sigint, release_sigint

    hold_sigint()  # before numpy starts its thread pool; `z2h chat` releases it once its threads run
    try:
        return _main(argv)
    finally:
        release_sigint()


def _main(argv: list[str]) -> int:
    try:
        parser = build_parser(registry.commands(), wanted=_command_name(argv))
        args = parser.parse_args(argv)
        args.argv = argv
        if args.command is None:
            parser.print_help()
            return 2
        return args.handler(args, stderr_console())
    except KeyboardInterrupt:
        stderr_console().print("[yellow]interrupted[/]")
        return exit_code(KeyboardInterrupt())
    except Exception as exc:
        from rich.markup import escape

        console, code = stderr_console(), exit_code(exc)
        if code == INTERNAL:  # a bug: one line, the traceback on request
            if os.environ.get("Z2H_DEBUG"):
                import traceback

                traceback.print_exc()
            message = f"[red]z2h: internal error:[/] {escape(f'{type(exc).__name__}: {exc}')}"
            console.print(f"{message}  (Z2H_DEBUG=1 shows the traceback)", soft_wrap=True)
        else:
            label = "environment" if code == ENVIRONMENT else "error"
            text = str(exc) if hasattr(exc, "exit_code") else f"{type(exc).__name__}: {exc}"
            console.print(f"[red]z2h: {label}:[/] {escape(text)}", soft_wrap=True)  # one line, never re-wrapped
        return code


if __name__ == "__main__":
    sys.exit(main())
