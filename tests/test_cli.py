"""The `z2h` command line itself: a help that imports no stage, --version, one way to name where a run
lives, `z2h config` (resolved config, every key), stage commands, and the exit-code map: each
failure class ends with its documented code and one line, never a traceback."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli, lineage, registry
from pipeline.config import StageConfig
from pipeline.errors import EXIT_CODES, EnvironmentProblem, UsageError, exit_code
from pipeline.stage import Stage, StageCommand

ROOT = Path(__file__).resolve().parent.parent


def test_help_and_version_import_no_stage_torch_or_pydantic():
    code = (
        "import sys\n"
        "from pipeline import cli\n"
        "for argv in (['--help'], ['--version']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, done.code\n"
        "heavy = {'stages', 'torch', 'pydantic', 'ray', 'mlflow'}\n"
        "print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "IMPORTED []" in out
    assert re.search(r"^z2h \d+\.\d+", out, re.M)  # --version
    assert "samples" in out and "the data stage's command" in out  # listed by name from its entry point
    for command in ("run", "plan", "runs", "ui", "config", "chat", "sample"):
        assert re.search(rf"^    {command}\s", out, re.M), command


def test_the_exit_code_map_is_documented_in_help_and_readme():
    epilog = cli.EPILOG
    readme = (ROOT / "README.md").read_text()
    for code, meaning in EXIT_CODES.items():
        assert f"  {code:<4} {meaning}" in epilog
        assert re.search(rf"^\| {code} \| .+ \|$", readme, re.M), f"README lacks exit code {code}"
    documented = {int(c) for c in re.findall(r"^\| (\d+) \| ", readme.split("### Exit codes", 1)[1], re.M)}
    assert documented == set(EXIT_CODES)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (UsageError("bad key"), 2),
        (EnvironmentProblem("cannot start Ray"), 3),
        (OSError(errno.ENOSPC, "No space left on device"), 3),
        (PermissionError(errno.EACCES, "Permission denied"), 3),
        (ModuleNotFoundError("No module named 's3fs'"), 3),
        (FileNotFoundError(errno.ENOENT, "No such file"), 4),  # a path z2h got wrong: a bug
        (ValueError("unexpected"), 4),
        (KeyboardInterrupt(), 130),
    ],
)
def test_every_failure_class_maps_to_its_code(exc, code):
    assert exit_code(exc) == code and code in EXIT_CODES


@pytest.fixture
def toolbox(toy_registry):
    """A stage whose command raises what the test puts in `raise_this`, or reports what it received."""
    seen: dict = {}

    def configure(parser):
        parser.add_argument("--what", default="ok")

    def run(args):
        if "raise_this" in seen:
            raise seen["raise_this"]
        seen["run_config"], seen["stage_config"] = args.run_config, args.stage_config
        return 0

    class ToolboxConfig(StageConfig):
        depth: int = 1

    command = StageCommand("a command that raises on demand", configure, run)
    registry.register(Stage("toolbox", ToolboxConfig, lambda ctx: {}, commands={"toolbox-cmd": command}))
    yield seen
    registry.unregister("toolbox")


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (UsageError("stages.x: bad"), 2, "z2h: error: stages.x: bad"),
        (EnvironmentProblem("cannot start Ray (embedded)"), 3, "z2h: environment: cannot start Ray (embedded)"),
        (OSError(errno.ENOSPC, "No space left on device"), 3, "z2h: environment: OSError: [Errno 28] No space left"),
        (ZeroDivisionError("division by zero"), 4, "z2h: internal error: ZeroDivisionError: division by zero"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_main_ends_each_failure_with_its_code_and_one_line(toolbox, capsys, exc, code, line):
    toolbox["raise_this"] = exc
    assert cli.main(["toolbox-cmd"]) == code
    err = capsys.readouterr().err
    assert line in " ".join(err.split()) and "Traceback" not in err


def test_a_stage_command_gets_the_run_and_its_stage_section_from_the_config(toolbox, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"run:\n  workdir: {tmp_path / 'w'}\n  seed: 5\nstages:\n  toolbox:\n    depth: 3\n")
    assert cli.main(["toolbox-cmd", "-c", str(config), "--set", "stages.toolbox.depth=4"]) == 0
    assert toolbox["run_config"].workdir == tmp_path / "w" and toolbox["run_config"].seed == 5
    assert toolbox["stage_config"].depth == 4
    assert cli.main(["toolbox-cmd", "--workdir", str(tmp_path / "v")]) == 0  # no config: defaults
    assert toolbox["run_config"].workdir == tmp_path / "v" and toolbox["stage_config"].depth == 1


def test_config_files_that_cannot_be_used_are_usage_errors_naming_the_file(tmp_path, capsys):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"run:\n  name: caf\xe9\n")
    assert cli.main(["runs", str(latin1)]) == 2
    assert "latin1.yaml: line 2: not UTF-8 text" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["runs", str(tmp_path)]) == 2  # a folder
    assert "cannot read it" in capsys.readouterr().err


def test_ray_that_cannot_start_is_an_environment_problem(monkeypatch, tmp_path):
    import ray

    from cluster import runtime

    def broken(**kwargs):
        raise RuntimeError("Failed to start the GCS server\nmore detail")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", broken)
    with pytest.raises(EnvironmentProblem, match=r"cannot start Ray \(embedded .*\): Failed to start the GCS server$"):
        runtime.start(tmp_path)
    with pytest.raises(EnvironmentProblem, match="tracking server http://127.0.0.1:9 is unreachable"):
        lineage.check_tracking("http://127.0.0.1:9")


def test_config_prints_the_resolved_config_and_null_removes_a_stage(toy_registry, toy_config, monkeypatch, capsys):
    monkeypatch.setattr(registry, "stages", lambda: toy_registry)
    assert cli.main(["config", str(toy_config), "--set", "stages.model=null", "--set", "stages.words.count=9"]) == 0
    out = capsys.readouterr().out
    assert "count: 9" in out and "model:" not in out and "words:" in out
    assert cli.main(["config", str(toy_config), "--set", "stages.count=null"]) == 2
    assert "stages.model: needs stage 'count', which this config removes" in " ".join(capsys.readouterr().err.split())


def test_config_keys_lists_type_default_and_description(toy_registry, monkeypatch, capsys):
    monkeypatch.setattr(registry, "stages", lambda: toy_registry)
    assert cli.main(["config", "--keys"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    by_key = {row[0]: row for row in rows if row}
    assert by_key["run.seed"][1:4] == ["int", ">=0", "1337"]
    assert by_key["stages.words.count"][0] == "stages.words.count" and "stages.model.dim" in by_key
    assert "MLFLOW_TRACKING_URI" in " ".join(by_key["run.tracking_uri"])
    assert cli.main(["config", "--keys", "model"]) == 0  # a stage name is short for stages.<name>
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line.strip()} == {
        "stages.model.dim",
        "stages.model.heads",
    }
    assert cli.main(["config", "--keys", "nosuch"]) == 2
    assert cli.main(["config", "--keys", "--set", "run.seed=1"]) == 2


def test_runs_and_ui_follow_the_one_tracking_rule(tmp_path, monkeypatch):
    from pipeline import reports

    shown = []
    monkeypatch.setattr(reports, "print_runs", lambda uri, name, limit, console: shown.append((uri, name)))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert cli.main(["runs", "--workdir", str(tmp_path)]) == 0
    assert cli.main(["runs", "--workdir", str(tmp_path), "--tracking-uri", "http://flag:5000"]) == 0
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert cli.main(["runs", "--workdir", str(tmp_path)]) == 0
    default = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert shown == [("http://env:5000", None), ("http://flag:5000", None), (default, None)]


def test_the_command_is_the_first_word_that_is_not_an_option():
    assert cli._command_name(["--version"]) is None
    assert cli._command_name(["samples", "--out", "x"]) == "samples"
    assert cli._command_name([]) is None
