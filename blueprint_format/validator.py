"""The validation pipeline: parse -> limits -> version -> schema -> model -> semantic rules.

Each stage stops the pipeline when it finds errors, so every issue reported is meaningful (no
semantic noise about a document that does not even have the right structure).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from blueprint_format._version import SUPPORTED_MAJOR, SUPPORTED_MINOR
from blueprint_format.errors import BlueprintParseError, Issue, Severity, make_error
from blueprint_format.jsonio import loads_json, read_document
from blueprint_format.limits import MAX_MODULES
from blueprint_format.models import Blueprint
from blueprint_format.schema import schema_issues
from blueprint_format.semantic import semantic_issues

_SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\Z")


def _version_issue(doc: dict[str, Any]) -> tuple[Issue | None, int]:
    """A version-layer issue (or None) and the document's minor version (0 if unknown)."""
    if "spec_version" not in doc:
        # Without a version the reader cannot tell which rules apply, so nothing else is reported.
        return make_error("bad-version", "spec_version is missing", "/spec_version"), 0
    version = doc["spec_version"]
    if not isinstance(version, str):
        return None, 0  # the schema reports wrong-type
    match = _SEMVER.match(version)
    if match is None:
        return (
            make_error(
                "bad-version", f"spec_version {version[:40]!r} is not MAJOR.MINOR.PATCH", "/spec_version"
            ),
            0,
        )
    major, minor = int(match.group(1)), int(match.group(2))
    if major != SUPPORTED_MAJOR:
        return (
            make_error(
                "unsupported-version",
                f"spec_version {version} has major version {major}; this reader supports {SUPPORTED_MAJOR}.x only",
                "/spec_version",
            ),
            minor,
        )
    return None, minor


def _remove_member(doc: Any, pointer: str) -> None:
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]
    node = doc
    for token in tokens[:-1]:
        node = node[int(token)] if isinstance(node, list) else node[token]
    if isinstance(node, dict):
        node.pop(tokens[-1], None)


def check_document(doc: Any) -> tuple[list[Issue], Blueprint | None]:
    """Validate a parsed document; return its issues and, when it has no errors, the Blueprint."""
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

    issues = schema_issues(doc)
    if minor > SUPPORTED_MINOR:
        # A newer minor may add optional members; this reader ignores them with a warning.
        newer = [i for i in issues if i.code == "unknown-field"]
        if newer:
            doc = copy.deepcopy(doc)
            for issue in newer:
                _remove_member(doc, issue.path)
            issues = [i for i in issues if i.code != "unknown-field"] + [
                Issue(
                    "unknown-member",
                    i.path,
                    f"ignored: member unknown to a 1.{SUPPORTED_MINOR} reader (document is a newer minor version)",
                    Severity.WARNING,
                )
                for i in newer
            ]
    if any(i.is_error for i in issues):
        return issues, None
    try:
        bp = Blueprint.model_validate(doc)
    except PydanticValidationError as exc:  # the schema accepted it: the two disagree, which is a bug
        return issues + [
            make_error(
                "schema-violation", f"model rejected what the schema accepted: {e['msg']}", _loc(e["loc"])
            )
            for e in exc.errors()
        ], None
    issues += semantic_issues(bp)
    return issues, (None if any(i.is_error for i in issues) else bp)


def _loc(loc: tuple[Any, ...]) -> str:
    return "".join(f"/{p}" for p in loc)


def validate(obj: bytes | str | dict[str, Any] | Blueprint) -> list[Issue]:
    """Every issue of a blueprint given as bytes, text, parsed JSON or a model. Empty: valid."""
    if isinstance(obj, Blueprint):
        obj = obj.to_json()
    if isinstance(obj, (bytes, str)):
        try:
            obj = loads_json(obj)
        except BlueprintParseError as exc:
            return exc.issues
    return check_document(obj)[0]


def validate_file(path: str | Path) -> list[Issue]:
    """Every issue of the blueprint file at `path`. Raises BlueprintIOError when it cannot be read."""
    try:
        doc = read_document(path)
    except BlueprintParseError as exc:
        return exc.issues
    return check_document(doc)[0]
