"""Stage discovery: the `zero2hero.stages` entry-point group, plus stages registered in
process (tests, notebooks). The core never imports a stage by name."""

from __future__ import annotations

from importlib.metadata import entry_points

from pipeline.errors import UsageError
from pipeline.stage import Stage

ENTRY_POINT_GROUP = "zero2hero.stages"
_extra: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add a stage for this process (overrides an installed stage of the same name)."""
    _extra[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    _extra.pop(name, None)


def stages() -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            stage = point.load()
        except Exception as exc:
            raise UsageError(f"stage '{point.name}' ({point.value}) failed to import: {exc}") from exc
        if not isinstance(stage, Stage) or stage.name != point.name:
            raise UsageError(f"entry point {point.name} = {point.value} is not a Stage named '{point.name}'")
        found[point.name] = stage
    found.update(_extra)
    return found
