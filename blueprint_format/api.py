"""Load, dump and digest blueprints."""

from __future__ import annotations

from pathlib import Path

from blueprint_format.atomic import atomic_write_bytes
from blueprint_format.errors import BlueprintParseError, BlueprintValidationError, Issue
from blueprint_format.jsonio import canonical_bytes, loads_json, read_document, sha256_digest
from blueprint_format.models import Blueprint
from blueprint_format.validator import check_document


def _checked(doc: object, *, parsed: bool = False) -> Blueprint:
    issues, bp = check_document(doc, parsed=parsed)
    if bp is None:
        errors = [i for i in issues if i.is_error]
        raise BlueprintValidationError(errors)
    return bp


def loads(data: bytes | str) -> Blueprint:
    """Parse and fully validate a blueprint document. Raises a BlueprintError subclass if invalid."""
    return _checked(loads_json(data), parsed=True)


def load(path: str | Path) -> Blueprint:
    """Read and fully validate the blueprint file at `path`."""
    return _checked(read_document(path), parsed=True)


def dumps(bp: Blueprint) -> bytes:
    """The RFC 8785 canonical bytes of `bp` (the form that is digested and embedded)."""
    return canonical_bytes(bp.to_json())


def dump(bp: Blueprint, path: str | Path, *, indent: int | None = None) -> None:
    """Write `bp` atomically: canonical bytes by default, or indented JSON for people to read."""
    if indent is None:
        data = dumps(bp)
    else:
        import json

        data = (json.dumps(bp.to_json(), indent=indent, ensure_ascii=False, sort_keys=True) + "\n").encode(
            "utf-8"
        )
    atomic_write_bytes(path, data)


def digest(bp: Blueprint) -> str:
    """The blueprint digest: `sha256:` + hex SHA-256 of the canonical bytes."""
    return sha256_digest(dumps(bp))


def from_json(doc: object) -> Blueprint:
    """Validate already-parsed JSON values into a Blueprint (raises if invalid)."""
    return _checked(doc)


__all__ = ["BlueprintParseError", "Issue", "digest", "dump", "dumps", "from_json", "load", "loads"]
