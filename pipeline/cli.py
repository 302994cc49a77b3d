"""`z2h`: run pipelines, plan them, list runs, open the MLflow UI, plus stage commands.

Exit codes: 0 success, 1 a stage failed, 2 bad usage or config, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import traceback

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline import config as config_io
from pipeline import graph, registry, reports
from pipeline.errors import UsageError
from pipeline.store import open_store

EPILOG = """examples:
  z2h run configs/tiny.yaml                       run the whole pipeline, reusing cached stages
  z2h run configs/tiny.yaml --until tokenizer     run tokenizer and everything it needs
  z2h run configs/tiny.yaml --stage tokenizer     rerun one stage from cached upstreams
  z2h run configs/tiny.yaml --force data --set stages.data.tasks=8
  z2h run configs/gpt-1b-multinode.yaml --address head:6379   on a running Ray cluster
  z2h plan configs/tiny.yaml                      show the DAG, fingerprints and cache status
  z2h runs configs/tiny.yaml                      recent pipeline runs from MLflow
  z2h ui configs/tiny.yaml                        MLflow UI on 127.0.0.1
  z2h chat                                        chat with the latest model (rl, else sft, else pretrain)
  z2h sample base -p "The king"                   one-shot completions from a stage's model
"""


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="pipeline YAML (e.g. configs/tiny.yaml)")
    parser.add_argument(
        "-c",
        "--config-file",
        action="append",
        default=[],
        metavar="FILE",
        help="more YAML merged on top, in order (repeatable)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one value, e.g. --set stages.pretrain.lr=3e-4 (repeatable; YAML values)",
    )


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


def build_parser(stages: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="z2h",
        description="zero2hero: raw web crawl to chat model (data, tokenizer, pretrain, sft) on Ray, "
        "tracked in MLflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline (cached stages are reused)")
    _config_args(run)
    _selection_args(run)
    run.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="run on this Ray cluster (same as --set cluster.address=...; default: RAY_ADDRESS, else embedded Ray)",
    )

    plan = sub.add_parser("plan", help="print the DAG with fingerprints, cache status and resources; runs nothing")
    _config_args(plan)
    _selection_args(plan)
    plan.add_argument("--verify", action="store_true", help="also check every stored file's sha256")

    runs = sub.add_parser("runs", help="list recent pipeline runs and their stages from MLflow")
    _config_args(runs)
    runs.add_argument("-n", "--limit", type=int, default=10, help="how many runs (default 10)")

    ui = sub.add_parser("ui", help="serve the MLflow UI for this work dir on 127.0.0.1")
    _config_args(ui)
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--workers", type=int, default=1, help="server processes (default 1: one user, starts fastest)")

    for stage in stages.values():
        for name, command in stage.commands.items():
            extra = sub.add_parser(name, help=command.help)
            command.configure(extra)
            extra.set_defaults(stage_command=command)
    return parser


def _load(args: argparse.Namespace, stages: dict) -> config_io.PipelineConfig:
    files = ([args.config] if args.config else []) + args.config_file
    address = getattr(args, "address", None)
    overrides = [*args.overrides, *([f"cluster.address={address}"] if address else [])]
    return config_io.load(files, overrides, stages)


def _selection(args: argparse.Namespace) -> graph.Selection:
    return graph.Selection(
        stages=tuple(args.stage),
        from_stage=args.from_stage,
        until_stage=args.until_stage,
        force=tuple(args.force),
        with_deps=args.with_deps,
    )


def _plan(args: argparse.Namespace, stages: dict) -> graph.Plan:
    config = _load(args, stages)
    store = open_store(config.run.store, config.run.workdir)
    label = args.config or (args.config_file[0] if args.config_file else "CONFIG")
    return graph.build_plan(config, stages, store, _selection(args), config_label=label)


def cmd_plan(args: argparse.Namespace, stages: dict, console: Console) -> int:
    plan = _plan(args, stages)
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
            item.stage.summary(item.config, plan.config) if item.stage.summary else "",
        )
    stdout_console().print(table)
    return 0


def cmd_run(args: argparse.Namespace, stages: dict, console: Console) -> int:
    from pipeline import runner

    plan = _plan(args, stages)
    result = runner.run(plan, command=["z2h", *args.argv], console=console)
    reports.print_summary(result, plan, console)
    return result.exit_code


def stdout_console() -> Console:
    """Tables for stdout; when piped, wide enough that run ids and paths stay on one line."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _tracking_uri(args: argparse.Namespace, stages: dict) -> tuple[str, str | None]:
    if args.config or args.config_file:
        config = _load(args, stages)
        return config.run.tracking, config.run.name
    default = config_io.RunConfig()
    return os.environ.get("MLFLOW_TRACKING_URI") or default.tracking, None


def cmd_runs(args: argparse.Namespace, stages: dict, console: Console) -> int:
    uri, name = _tracking_uri(args, stages)
    reports.print_runs(uri, name, args.limit, stdout_console())
    return 0


def cmd_ui(args: argparse.Namespace, stages: dict, console: Console) -> int:
    uri, _ = _tracking_uri(args, stages)
    url = f"http://127.0.0.1:{args.port}"
    console.print(f"MLflow UI for {uri} at {url}  (Ctrl-C stops it)")
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


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "runs": cmd_runs, "ui": cmd_ui}


def main(argv: list[str] | None = None) -> int:
    console = Console(stderr=True, highlight=False)
    try:
        stages = registry.stages()
        parser = build_parser(stages)
        argv = sys.argv[1:] if argv is None else list(argv)
        args = parser.parse_args(argv)
        args.argv = argv
        if args.command is None:
            parser.print_help()
            return 2
        if getattr(args, "stage_command", None) is not None:
            return args.stage_command.run(args)
        if args.command in ("run", "plan") and not (args.config or args.config_file):
            raise UsageError(f"z2h {args.command} needs a config, e.g. `z2h {args.command} configs/tiny.yaml`")
        return COMMANDS[args.command](args, stages, console)
    except UsageError as exc:
        console.print(f"[red]z2h: error:[/] {escape(str(exc))}", soft_wrap=True)  # one line, never re-wrapped
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except Exception as exc:  # an internal error: one line, the traceback on request
        if os.environ.get("Z2H_DEBUG"):
            traceback.print_exc()
        console.print(f"[red]z2h: internal error:[/] {type(exc).__name__}: {exc}  (Z2H_DEBUG=1 shows the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
