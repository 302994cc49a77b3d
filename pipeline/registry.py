"""Stage discovery: the `zero2hero.stages` entry-point group, plus stages registered in
process (tests, notebooks). The core never imports a stage by name.

Stage commands (`z2h samples`) are found the same way, in the `zero2hero.commands` group: each
entry names a command and points at the stage that provides it (`samples = "stages.data:stage"`).
Reading entry points costs no import, so the CLI builds its parser, `z2h --help` included, without
importing any stage (torch, datatrove); a stage is imported when its command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from pipeline.errors import EnvironmentProblem, UsageError

if TYPE_CHECKING:  # imported when a stage loads: pydantic is not needed to list commands
    from pipeline.stage import Stage, StageCommand

ENTRY_POINT_GROUP = "zero2hero.stages"
COMMAND_GROUP = "zero2hero.commands"
_extra: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add a stage for this process (overrides an installed stage of the same name)."""
    _extra[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    _extra.pop(name, None)


def _load(point: EntryPoint) -> Stage:
    from pipeline.stage import Stage

    try:
        stage = point.load()
    except Exception as exc:
        raise EnvironmentProblem(f"stage '{point.name}' ({point.value}) failed to import: {exc}") from exc
    if not isinstance(stage, Stage):
        raise UsageError(f"entry point {point.group}: {point.name} = {point.value} is not a Stage")
    return stage


def stages() -> dict[str, Stage]:
    """Every stage, imported."""
    found: dict[str, Stage] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        stage = _load(point)
        if stage.name != point.name:
            raise UsageError(f"entry point {point.name} = {point.value} is not a Stage named '{point.name}'")
        found[point.name] = stage
    found.update(_extra)
    return found


@dataclass(frozen=True)
class CommandRef:
    """A stage command known by name before its stage is imported."""

    name: str
    stage: str  # the providing stage's name
    load: Callable[[], tuple[Stage, StageCommand]]


def _entry_point_command(point: EntryPoint, stage_names: dict[str, str]) -> CommandRef:
    def load() -> tuple[Stage, StageCommand]:
        stage = _load(point)
        if point.name not in stage.commands:
            raise UsageError(f"entry point {COMMAND_GROUP}: {point.name} = {point.value}: stage has no such command")
        return stage, stage.commands[point.name]

    return CommandRef(point.name, stage_names.get(point.value, point.value), load)


def commands() -> dict[str, CommandRef]:
    """Stage commands by name: installed ones from metadata (nothing imported), then in-process stages'."""
    stage_names = {point.value: point.name for point in entry_points(group=ENTRY_POINT_GROUP)}
    found = {point.name: _entry_point_command(point, stage_names) for point in entry_points(group=COMMAND_GROUP)}
    for stage in _extra.values():
        for name, command in stage.commands.items():
            found[name] = CommandRef(name, stage.name, lambda stage=stage, command=command: (stage, command))
    return found
