"""The validation pipeline: parse -> limits -> version -> structure (schema) -> semantic rules.

Each stage stops the pipeline when it finds errors, so every issue reported is meaningful (no
semantic noise about a document that does not even have the right structure).

The structure stage runs the pydantic models first: they accept exactly what the JSON Schema
accepts (tests prove it on every compliance vector and on documents drawn from the schema) and do
so about ten times faster than a JSON Schema validator. Only a document they refuse is shown to
the schema validator, which reports the coded, located issues, and then only the modules the
models found fault with (at most MAX_REPORTED_MODULES of them) and at most the allowed number of
entries of each array and object. So a valid document of 100,000 modules, or an invalid one with
a broken member in every module, costs about as much as parsing it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from blueprint_format._version import SUPPORTED_MAJOR, SUPPORTED_MINOR
from blueprint_format.errors import BlueprintParseError, Issue, Severity, make_error
from blueprint_format.jsonio import check_values, loads_json, paused_gc, read_document
from blueprint_format.limits import MAX_MODULES
from blueprint_format.members import walk
from blueprint_format.models import PARSED_CONTEXT, Blueprint
from blueprint_format.pointer import CopyOnWrite, get, join
from blueprint_format.schema import schema_issues
from blueprint_format.semantic import semantic_issues

_SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\Z")
#: Schema issues are reported for at most this many modules (the first ones with problems).
MAX_REPORTED_MODULES = 1000


def _version_issue(doc: dict[str, Any]) -> tuple[Issue | None, int]:
    """A version-layer issue (or None) and the document's minor version (0 if unknown).

    Version numbers are compared as digit strings: a major of 5,000 digits is simply not 1, and is
    never converted to an integer (Python refuses to convert more than 4,300 digits).
    """
    if "spec_version" not in doc:
        # Without a version the reader cannot tell which rules apply, so nothing else is reported.
        return make_error("bad-version", "spec_version is missing", "/spec_version"), 0
    version = doc["spec_version"]
    if not isinstance(version, str):
        return None, 0  # the schema reports wrong-type
    shown = version if len(version) <= 40 else f"{version[:20]}...({len(version)} characters)"
    match = _SEMVER.match(version)
    if match is None:
        return make_error("bad-version", f"spec_version {shown!r} is not MAJOR.MINOR.PATCH", "/spec_version"), 0
    major, minor = match.group(1), match.group(2)
    if major != str(SUPPORTED_MAJOR):
        return (
            make_error(
                "unsupported-version",
                f"spec_version {shown} has major version {major if len(major) <= 20 else major[:20] + '...'}; "
                f"this reader supports {SUPPORTED_MAJOR}.x only",
                "/spec_version",
            ),
            0,
        )
    # Minor versions beyond 6 digits are a schema error; here they only need to compare as newer.
    return None, int(minor) if len(minor) <= 9 else SUPPORTED_MINOR + 1


def check_document(doc: Any, *, parsed: bool = False) -> tuple[list[Issue], Blueprint | None]:
    """Validate a parsed document; return its issues and, when it has no errors, the Blueprint.

    `parsed` says that `doc` came from `jsonio.loads_json` (plain JSON, numbers already made
    double-safe), which spares the models a second walk over free-form values.
    """
    if not parsed:
        try:  # values built in Python get the reader's checks on values (e.g. no lone surrogates)
            check_values(doc)
        except BlueprintParseError as exc:
            return exc.issues, None
    if not isinstance(doc, dict):
        kind = "an array" if isinstance(doc, list) else f"a {type(doc).__name__}"
        return [make_error("not-an-object", f"a blueprint is a JSON object, this is {kind}")], None
    version_issue, minor = _version_issue(doc)
    if version_issue is not None:
        return [version_issue], None
    modules = doc.get("modules")
    if isinstance(modules, list) and len(modules) > MAX_MODULES:
        return [
            make_error("too-many-modules", f"{len(modules)} modules; the limit is {MAX_MODULES}", "/modules")
        ], None
    with paused_gc():  # building 100,000 modules' models is twice as fast without collection passes
        return _check_versioned(doc, minor, parsed)


def _check_versioned(doc: dict[str, Any], minor: int, parsed: bool) -> tuple[list[Issue], Blueprint | None]:
    """Structure and semantic stages of a document whose version this reader supports."""
    ignored: list[tuple[str, Any]] = []
    issues: list[Issue] = []
    if minor > SUPPORTED_MINOR:
        doc, ignored = _drop_newer_members(doc)
        issues += [
            Issue(
                "unknown-member",
                pointer,
                f"ignored: member unknown to a 1.{SUPPORTED_MINOR} reader (document is a newer minor version)",
                Severity.WARNING,
            )
            for pointer, _ in ignored
        ]
    bp, structure_issues = _structure(doc, parsed)
    issues += structure_issues
    if bp is None:
        return issues, None
    bp.keep_ignored_members(ignored)
    issues += semantic_issues(bp)
    return issues, (None if any(i.is_error for i in issues) else bp)


def _drop_newer_members(doc: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """`doc` without the members this reader does not know, and those members (pointer, value).

    The original is not modified; only the objects holding an unknown member are copied.
    """
    unknown = walk(doc).unknown
    if not unknown:
        return doc, []
    ignored = [(pointer, get(doc, pointer)) for pointer in unknown]
    edited = CopyOnWrite(doc)
    for pointer in unknown:
        edited.remove(pointer)
    return edited.root, ignored


def _structure(doc: dict[str, Any], parsed: bool) -> tuple[Blueprint | None, list[Issue]]:
    """The Blueprint when the models accept `doc`; else the schema's issues for what they refused."""
    try:
        return Blueprint.model_validate(doc, context=PARSED_CONTEXT if parsed else None), []
    except PydanticValidationError as exc:
        refusal = exc
    focus = _modules_at_fault(doc, refusal)
    reduced = doc if focus is None else {**doc, "modules": [doc["modules"][i] for i in focus]}
    oversized = walk(reduced).oversized
    if oversized:
        # The schema validator would examine every entry of a 4-million-member object; it is shown
        # one entry beyond the limit (enough to report it), and told the true count for the message.
        clipped = CopyOnWrite(reduced)
        for pointer, _, limit in oversized:
            clipped.truncate(pointer, limit + 1)
        reduced = clipped.root
    issues = schema_issues(reduced, sizes={pointer: count for pointer, count, _ in oversized})
    if focus is not None:
        issues = [_relocate(issue, focus) for issue in issues]
    if any(i.is_error for i in issues):
        return None, issues
    # The models refused what the schema accepts: the two disagree, which is a bug; say where.
    return None, issues + [
        make_error("schema-violation", f"model rejected what the schema accepted: {e['msg']}", join(e["loc"]))
        for e in refusal.errors()
    ]


def _modules_at_fault(doc: dict[str, Any], refusal: PydanticValidationError) -> list[int] | None:
    """Indexes of the modules the models refused (at least one, at most MAX_REPORTED_MODULES), or
    None when `modules` itself is at fault (then the schema sees all of it)."""
    modules = doc.get("modules")
    if not isinstance(modules, list) or not modules:
        return None
    at_fault: set[int] = set()
    for error in refusal.errors():
        loc = error["loc"]
        if loc[:1] == ("modules",):
            if len(loc) < 2 or not isinstance(loc[1], int):
                return None
            at_fault.add(loc[1])
    return sorted(at_fault)[:MAX_REPORTED_MODULES] or [0]


_MODULE_POINTER = re.compile(r"^/modules/(\d+)(?=/|$)")


def _relocate(issue: Issue, focus: list[int]) -> Issue:
    """An issue found in the reduced modules list, pointed at the module's index in the document."""
    match = _MODULE_POINTER.match(issue.path)
    if match is None:
        return issue
    path = f"/modules/{focus[int(match.group(1))]}{issue.path[match.end() :]}"
    return Issue(issue.code, path, issue.message, issue.severity, issue.line, issue.column)


def validate(obj: bytes | str | dict[str, Any] | Blueprint) -> list[Issue]:
    """Every issue of a blueprint given as bytes, text, parsed JSON or a model. Empty: valid."""
    if isinstance(obj, Blueprint):
        obj = obj.to_json()
    if isinstance(obj, (bytes, str)):
        try:
            return check_document(loads_json(obj), parsed=True)[0]
        except BlueprintParseError as exc:
            return exc.issues
    return check_document(obj)[0]


def validate_file(path: str | Path) -> list[Issue]:
    """Every issue of the blueprint file at `path`. Raises BlueprintIOError when it cannot be read."""
    try:
        doc = read_document(path)
    except BlueprintParseError as exc:
        return exc.issues
    return check_document(doc, parsed=True)[0]
