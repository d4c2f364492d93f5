"""Typed walks of a parsed document along the pydantic models, without validating it.

Two questions are answered here, each in one pass over the parts of the document that the models
describe (free-form values such as `extensions` are not entered):

* which members a reader of this version does not know (SPEC.md 14: a newer minor version's
  members are ignored with the warning `unknown-member`), wherever they are, including inside the
  parameters of a known allocation rule;
* which arrays and objects hold more entries than the spec allows (SPEC.md 15.2), so that the
  schema validator, which would otherwise examine every entry of a 4-million-member object, is
  only shown the allowed number of them.

The plan of each model (which members it has, which of them lead to further models, and their
entry limits) is derived once from the models' annotations, so it cannot drift from them.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, Union

from annotated_types import MaxLen
from pydantic import BaseModel

from blueprint_format.models import Blueprint
from blueprint_format.pointer import escape


@dataclass(frozen=True)
class _Plan:
    """How to walk one value: the model it is, or the container of models it is, and its limit."""

    kind: str  # "model", "list", "dict", "union" or "leaf"
    max_entries: int | None = None
    model: type[BaseModel] | None = None
    item: _Plan | None = None
    branches: tuple[tuple[str, type[BaseModel]], ...] = ()


@dataclass
class Findings:
    """What a walk found: JSON pointers of unknown members; (pointer, entries, limit) of oversized containers."""

    unknown: list[str] = field(default_factory=list)
    oversized: list[tuple[str, int, int]] = field(default_factory=list)


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _plan(tp: Any, metadata: tuple[Any, ...] = ()) -> _Plan:
    """The plan for a value of annotation `tp` (Annotated and Optional unwrapped)."""
    limits = _max_lengths(metadata)
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            limits += _max_lengths(tp.__metadata__)
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
            return _Plan("union", branches=_branches(args))
        else:
            break
    limit = min(limits) if limits else None
    if _is_model(tp):
        return _Plan("model", model=tp)
    if origin is list:
        return _Plan("list", limit, item=_plan(typing.get_args(tp)[0]))
    if origin is dict:
        return _Plan("dict", limit, item=_plan(typing.get_args(tp)[1]))
    return _Plan("leaf")  # a scalar: its MaxLen, if any, is a string length


def _max_lengths(metadata: typing.Iterable[Any]) -> list[int]:
    """The MaxLen bounds in annotation metadata, including those inside a pydantic FieldInfo."""
    out: list[int] = []
    for item in metadata:
        if isinstance(item, MaxLen):
            out.append(item.max_length)
        else:
            out.extend(m.max_length for m in getattr(item, "metadata", ()) if isinstance(m, MaxLen))
    return out


def _branches(args: list[Any]) -> tuple[tuple[str, type[BaseModel]], ...]:
    """For a union of models told apart by a Literal `name` (the allocation rules): name -> model."""
    out: list[tuple[str, type[BaseModel]]] = []
    for model in args:
        if not _is_model(model):
            continue
        name_field = model.model_fields.get("name")
        annotation = name_field.annotation if name_field is not None else None
        if typing.get_origin(annotation) is Literal:
            out.extend((str(value), model) for value in typing.get_args(annotation))
    return tuple(out)


@cache
def _fields(model: type[BaseModel]) -> dict[str, _Plan]:
    """The members of `model` by their JSON name, each with its plan."""
    return {
        (info.alias or name): _plan(info.annotation, tuple(info.metadata))
        for name, info in model.model_fields.items()
    }


def walk(doc: Any, model: type[BaseModel] = Blueprint) -> Findings:
    """Unknown members and oversized containers of `doc`, read as a `model` document."""
    found = Findings()
    _walk(doc, _Plan("model", model=model), "", found)
    return found


def _walk(value: Any, plan: _Plan, pointer: str, found: Findings) -> None:
    if plan.max_entries is not None and isinstance(value, (list, dict)) and len(value) > plan.max_entries:
        found.oversized.append((pointer, len(value), plan.max_entries))
    if plan.kind == "model" and isinstance(value, dict) and plan.model is not None:
        fields = _fields(plan.model)
        for key, child in value.items():
            child_plan = fields.get(key)
            if child_plan is None:
                found.unknown.append(f"{pointer}/{escape(key)}")
            elif child_plan.kind != "leaf" or child_plan.max_entries is not None:
                _walk(child, child_plan, f"{pointer}/{escape(key)}", found)
    elif plan.kind == "list" and isinstance(value, list) and plan.item is not None:
        if plan.item.kind != "leaf":
            for i, child in enumerate(value[: plan.max_entries]):
                _walk(child, plan.item, f"{pointer}/{i}", found)
    elif plan.kind == "dict" and isinstance(value, dict) and plan.item is not None:
        if plan.item.kind != "leaf":
            for i, (key, child) in enumerate(value.items()):
                if plan.max_entries is not None and i >= plan.max_entries:
                    break
                _walk(child, plan.item, f"{pointer}/{escape(key)}", found)
    elif plan.kind == "union" and isinstance(value, dict):
        name = value.get("name")
        chosen = dict(plan.branches).get(name) if isinstance(name, str) else None
        if chosen is not None:
            _walk(value, _Plan("model", model=chosen), pointer, found)
