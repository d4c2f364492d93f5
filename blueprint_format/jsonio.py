"""Strict, bounded JSON reading and RFC 8785 canonical writing.

The reader accepts exactly RFC 8259 JSON in UTF-8 and additionally refuses what the spec refuses:
duplicate member names, NaN/Infinity literals and numbers that overflow a double, documents over
the size limit and nesting beyond the depth limit. Every refusal is a `BlueprintParseError` with a
stable code and a location; nothing here can recurse without bound or read without bound.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import rfc8785

from blueprint_format.errors import BlueprintIOError, BlueprintParseError, make_error
from blueprint_format.limits import MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_SAFE_INTEGER


class _NonFinite:
    """Placeholder for a number that is not a finite double, located after parsing."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


class _DuplicateKeys(dict[str, Any]):
    """A parsed object that had repeated member names (reported with their path later)."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    dups: list[str] = []
    for key, value in pairs:
        if key in obj:
            dups.append(key)
        obj[key] = value
    if dups:
        marked = _DuplicateKeys(obj)
        marked.duplicates = dups
        return marked
    return obj


def _parse_float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _parse_int(text: str) -> int | float:
    # RFC 8785 and I-JSON treat every number as a double: integers beyond 2**53 - 1 are read as
    # doubles (as a JavaScript reader would), so that canonical output of a large double re-parses.
    if len(text) <= 17:  # short enough to convert cheaply (and below Python's int digit limit)
        value = int(text)
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
    as_float = float(text)  # float(str) gives inf on overflow, where float(int) would raise
    return as_float if math.isfinite(as_float) else _NonFinite(text)  # type: ignore[return-value]


def _parse_constant(text: str) -> _NonFinite:
    return _NonFinite(text)


def _abbrev(literal: str) -> str:
    return literal if len(literal) <= 24 else f"{literal[:12]}...({len(literal)} characters)"


def _pointer_token(token: str | int) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def _check_tree(root: Any) -> None:
    """Walk the parsed tree iteratively: depth limit, duplicates and non-finite numbers."""
    stack: list[tuple[Any, str, int]] = [(root, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, _NonFinite):
            raise BlueprintParseError(
                make_error(
                    "non-finite-number", f"number {_abbrev(node.literal)} is not a finite double", path
                )
            )
        if isinstance(node, dict):
            children: Any = node.items()
        elif isinstance(node, list):
            children = enumerate(node)
        else:
            continue
        if depth > MAX_DEPTH:
            raise BlueprintParseError(
                make_error("too-deep", f"nesting exceeds the maximum depth of {MAX_DEPTH} at {path}")
            )
        if isinstance(node, _DuplicateKeys):
            raise BlueprintParseError(
                make_error("duplicate-key", f"member {node.duplicates[0]!r} appears more than once", path)
            )
        for key, child in children:
            stack.append((child, f"{path}/{_pointer_token(key)}", depth + 1))


def loads_json(data: bytes | str) -> Any:
    """Parse one JSON document under the spec's rules and limits; return plain Python values."""
    if isinstance(data, bytes):
        if len(data) > MAX_DOCUMENT_BYTES:
            raise BlueprintParseError(
                make_error("too-large", f"document is {len(data)} bytes; the limit is {MAX_DOCUMENT_BYTES}")
            )
        if data.startswith(b"\xef\xbb\xbf"):
            raise BlueprintParseError(
                make_error("not-utf8", "document starts with a UTF-8 byte-order mark", line=1, column=1)
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BlueprintParseError(
                make_error("not-utf8", f"invalid UTF-8 at byte offset {exc.start}: {exc.reason}")
            ) from None
    else:
        text = data
        if len(text) > MAX_DOCUMENT_BYTES:
            raise BlueprintParseError(make_error("too-large", f"document exceeds {MAX_DOCUMENT_BYTES} bytes"))
    if not text.strip():
        raise BlueprintParseError(make_error("empty-document", "the document is empty"))
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs_hook,
            parse_float=_parse_float,
            parse_int=_parse_int,
            parse_constant=_parse_constant,
        )
    except json.JSONDecodeError as exc:
        raise BlueprintParseError(
            make_error("parse-error", exc.msg, line=exc.lineno, column=exc.colno)
        ) from None
    except RecursionError:
        # The C scanner guards its recursion (about 1000 levels): pathological nesting ends here,
        # in bounded time and memory; nesting between MAX_DEPTH and that is caught by _check_tree.
        raise BlueprintParseError(
            make_error("too-deep", f"nesting exceeds the maximum depth of {MAX_DEPTH}")
        ) from None
    except ValueError as exc:  # e.g. an integer literal with more digits than Python allows
        raise BlueprintParseError(
            make_error("non-finite-number", f"number cannot be represented: {exc}")
        ) from None
    _check_tree(value)
    return value


def read_document(path: str | Path) -> Any:
    """Read and parse a blueprint file, refusing oversized files before reading them."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise BlueprintParseError(
                make_error("too-large", f"file is {size} bytes; the limit is {MAX_DOCUMENT_BYTES}")
            )
        with p.open("rb") as fh:
            data = fh.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise BlueprintIOError(make_error("io-error", f"cannot read {p}: {exc.strerror or exc}")) from None
    return loads_json(data)


def canonical_bytes(obj: Any) -> bytes:
    """RFC 8785 (JCS) canonical serialization of plain JSON values."""
    return rfc8785.dumps(obj)


def sha256_digest(data: bytes) -> str:
    """`sha256:` plus the lowercase hex SHA-256 of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
