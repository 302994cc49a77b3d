"""Every config key with its type, default and description, read from the pydantic models that
validate it (`z2h config --keys`): the list is the schema itself, so it cannot drift from it.

Nested sections recurse (`stages.data.samples.news_pages`); a list of sections shows its item keys
under `[]` (`stages.data.sources[].kind`), a mapping of named sections under `<name>`.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

_BOUNDS = {annotated_types.Ge: ">=", annotated_types.Gt: ">", annotated_types.Le: "<=", annotated_types.Lt: "<"}
_BOUND_ATTRS = ("ge", "gt", "le", "lt")
_MODULE_PATH = re.compile(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)")  # stages.data.config.SourceConfig -> SourceConfig


@dataclass(frozen=True)
class Key:
    path: str
    type: str
    default: str
    description: str
    cosmetic: bool  # left out of the fingerprint


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return _MODULE_PATH.sub(r"\1", str(annotation)).replace("NoneType", "None")


def _bounds(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        for (kind, sign), attr in zip(_BOUNDS.items(), _BOUND_ATTRS, strict=True):
            if isinstance(item, kind):
                found.append(f"{sign}{getattr(item, attr)}")
    return f" {','.join(found)}" if found else ""


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return str(value) if isinstance(value, Path) else value


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    text = json.dumps(_plain(value), default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _sections(annotation: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    """(path suffix, model) for the config sections a field holds: itself, list items or mapping values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "", annotation
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple) and args:
        for _, model in _sections(args[0]):
            yield "[]", model
    elif origin is dict and len(args) == 2:
        for _, model in _sections(args[1]):
            yield ".<name>", model
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _sections(arg)


def keys(model: type[BaseModel], prefix: str) -> list[Key]:
    """The keys of `model` under `prefix`, in declaration order, nested sections after their own key."""
    found = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}"
        nested = list(_sections(field.annotation))
        default = "(section)" if nested and nested[0][0] == "" else _default(field)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        found.append(
            Key(
                path,
                _type_name(field.annotation) + _bounds(field),
                default,
                " ".join((field.description or "").split()),
                bool(extra.get("cosmetic")),
            )
        )
        for suffix, section in nested:
            found += keys(section, path + suffix)
    return found
