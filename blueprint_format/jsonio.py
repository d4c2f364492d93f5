"""Strict, bounded JSON reading and RFC 8785 canonical writing.

The reader accepts exactly RFC 8259 JSON in UTF-8 and additionally refuses what the spec refuses
(SPEC.md 15): duplicate member names, NaN/Infinity literals and numbers that overflow a double,
strings holding lone UTF-16 surrogates, documents over the size limit, with more JSON values than
the value limit, or nesting beyond the depth limit. Every refusal is a `BlueprintParseError` with a
stable code and a location.

Cost is bounded before anything proportional to the document is built: the byte size is checked
first, then the number of JSON values is counted on the text (C-speed string methods), and only
then is the text parsed (the standard library's C scanner, with Python called back once per object
only). The tree check after parsing walks iteratively with a stack no deeper than the depth limit.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rfc8785

from blueprint_format.errors import BlueprintParseError, make_error
from blueprint_format.limits import (
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_SAFE_INTEGER,
    MAX_VALUES,
)
from blueprint_format.paths import read_regular_file

#: A JSON string literal (used only to blank strings out before counting structural characters).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
#: A \u escape of a UTF-16 surrogate: the only way JSON text in UTF-8 can spell one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
#: A surrogate code point in a Python str (parsed from such an escape, or handed in as str).
_SURROGATE = re.compile("[\ud800-\udfff]")
#: An empty object or array with whitespace inside (strings already blanked out).
_SPACED_EMPTY = re.compile(r"\{\s+\}|\[\s+\]")


class _NonFinite:
    """Placeholder for a NaN/Infinity literal, located after parsing."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


class _DuplicateKeys(dict[str, Any]):
    """A parsed object that had repeated member names (reported with their path later)."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    marked = _DuplicateKeys(obj)
    marked.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    return marked


def _parse_constant(text: str) -> _NonFinite:
    return _NonFinite(text)


def _abbrev(literal: str) -> str:
    return literal if len(literal) <= 24 else f"{literal[:12]}...({len(literal)} characters)"


def _pointer_token(token: str | int) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def _error(code: str, message: str, keys: list[str | int] | None = None) -> BlueprintParseError:
    path = "".join("/" + _pointer_token(k) for k in keys or [])
    return BlueprintParseError(make_error(code, message, path))


def _decode(data: bytes | str) -> tuple[str, bool]:
    """The document as text, after the size, byte-order-mark, UTF-8 and emptiness rules.

    Also says whether a raw surrogate may be in the text (only a str handed in can hold one).
    """
    if isinstance(data, str):
        # The limit is in bytes of UTF-8; only text that might exceed it is encoded to measure.
        size = len(data)
        if size * 4 > MAX_DOCUMENT_BYTES and not data.isascii():
            size = len(data.encode("utf-8", "surrogatepass"))
        if size > MAX_DOCUMENT_BYTES:
            raise _error("too-large", f"document is {size} bytes of UTF-8; the limit is {MAX_DOCUMENT_BYTES}")
        if data.startswith("\ufeff"):
            raise BlueprintParseError(
                make_error("not-utf8", "document starts with a byte-order mark (U+FEFF)", line=1, column=1)
            )
        text, raw_surrogates = data, not data.isascii()
    else:
        if len(data) > MAX_DOCUMENT_BYTES:
            raise _error("too-large", f"document is {len(data)} bytes; the limit is {MAX_DOCUMENT_BYTES}")
        if data.startswith(b"\xef\xbb\xbf"):
            raise BlueprintParseError(
                make_error("not-utf8", "document starts with a UTF-8 byte-order mark", line=1, column=1)
            )
        try:
            text = data.decode("utf-8")  # strict: refuses encoded surrogates (ED A0 80 ...) too
        except UnicodeDecodeError as exc:
            raise _error("not-utf8", f"invalid UTF-8 at byte offset {exc.start}: {exc.reason}") from None
        raw_surrogates = False
    if not text or text.isspace():  # (not text.strip(), which would copy a 64 MiB text)
        raise _error("empty-document", "the document is empty")
    return text, raw_surrogates


def count_values(text: str) -> tuple[int, int]:
    """How many JSON values (objects, arrays, strings, numbers and literals; member names do not
    count) the JSON text holds, and how many of them are objects or arrays. Exact for well-formed
    JSON; for other text, numbers only used to refuse it early.

    In well-formed JSON every value but the root is an entry of a container, and a container
    with k >= 1 entries holds k - 1 commas, so values = 1 + commas + non-empty containers. Strings
    are blanked out first so that brackets and commas inside them do not count.
    """
    blanked = _STRING.sub("s", text)
    containers = blanked.count("{") + blanked.count("[")
    # Compact empties are counted at C speed; only those with whitespace inside need the regex.
    _, spaced = _SPACED_EMPTY.subn("", blanked)
    empties = blanked.count("{}") + blanked.count("[]") + spaced
    return 1 + blanked.count(",") + containers - empties, containers


def check_counts(text: str) -> None:
    """Refuse a document with more values, or more objects and arrays, than the limits allow."""
    # Cheap upper bounds first (commas and brackets inside strings counted too); the exact count
    # only when a bound is over its limit.
    containers = text.count("{") + text.count("[")
    if text.count(",") + containers + 1 <= MAX_VALUES and containers <= MAX_CONTAINERS:
        return
    values, containers = count_values(text)
    if values > MAX_VALUES:
        raise _error("too-many-values", f"the document holds {values} JSON values; the limit is {MAX_VALUES}")
    if containers > MAX_CONTAINERS:
        raise _error(
            "too-many-values",
            f"the document holds {containers} objects and arrays; the limit is {MAX_CONTAINERS}",
        )


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a large acyclic tree is built.

    Parsing and validating create millions of containers; each collection pass would scan all of
    them again, which more than doubles the time of a large document. JSON trees and the models
    built from them hold no reference cycles, so nothing is lost by collecting later.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def loads_json(data: bytes | str) -> Any:
    """Parse one JSON document under the spec's rules and limits; return plain Python values.

    Integers beyond 2**53 - 1 come back as doubles (RFC 8785 and I-JSON treat every number as a
    double, as a JavaScript reader does), so that the canonical output of a large number re-parses.
    """
    text, raw_surrogates = _decode(data)
    return _loads_text(text, raw_surrogates)


def _loads_text(text: str, raw_surrogates: bool) -> Any:
    check_counts(text)
    with paused_gc():
        return _parse(text, raw_surrogates)


def _parse(text: str, raw_surrogates: bool) -> Any:
    try:
        value = _decode_json(text, located=False)
    except ValueError:  # an integer literal with more digits than Python converts (> 4300)
        value = _decode_json(text, located=True)
    surrogates = raw_surrogates or _SURROGATE_ESCAPE.search(text) is not None
    return _check_tree(value, surrogates)


def _parse_int(literal: str) -> int | _NonFinite:
    # Only for the second parse of a document with an integer literal too long to convert: such a
    # literal overflows a double anyway, and the placeholder lets the walk report where it is.
    return _NonFinite(literal) if len(literal.lstrip("-")) > 309 else int(literal)


def _decode_json(text: str, *, located: bool) -> Any:
    """json.loads with the reader's hooks; malformed text is parse-error, runaway nesting too-deep.

    Without `located`, an over-long integer literal raises ValueError (Python's conversion limit);
    with it, such literals become placeholders that the tree check reports at their place.
    """
    try:
        return json.loads(
            text,
            object_pairs_hook=_pairs_hook,
            parse_constant=_parse_constant,
            parse_int=_parse_int if located else None,
        )
    except json.JSONDecodeError as exc:
        raise BlueprintParseError(
            make_error("parse-error", exc.msg, line=exc.lineno, column=exc.colno)
        ) from None
    except RecursionError:
        # The C scanner guards its recursion (about 1000 levels): pathological nesting ends here,
        # in bounded time and memory; nesting between MAX_DEPTH and that is caught by _check_tree.
        raise _error("too-deep", f"nesting exceeds the maximum depth of {MAX_DEPTH}") from None


def check_values(doc: Any) -> None:
    """Apply the reader's rules on values (depth, finite numbers, no lone surrogates) to values
    built in Python rather than parsed, without changing them. Raises BlueprintParseError."""
    _check_tree(doc, surrogates=True, convert=False)


def _check_tree(root: Any, surrogates: bool, convert: bool = True) -> Any:
    """Walk the parsed tree depth-first with a stack of iterators (at most MAX_DEPTH deep).

    Refuses duplicate names, non-finite numbers, lone surrogates and excess depth, each located
    by the JSON pointer of the keys on the stack; turns integers beyond 2**53 - 1 into doubles.
    Empty containers are checked where they stand, without a stack entry: a document of millions
    of `{}` costs one loop iteration each.
    """
    if type(root) not in (dict, list) or not root:  # a scalar, an empty container or duplicates
        _check_scalar(root, [], surrogates)
        return root
    keys: list[str | int] = []
    stack = [(root, _items(root, keys, surrogates))]
    while stack:
        node, items = stack[-1]
        for key, child in items:
            kind = type(child)
            if kind is int:
                if convert and not -MAX_SAFE_INTEGER <= child <= MAX_SAFE_INTEGER:
                    node[key] = _as_double(child, [*keys, key])
            elif kind is float:
                if child - child != 0:  # inf - inf is nan, and nan != 0
                    _check_scalar(child, [*keys, key], surrogates)
            elif kind is str:
                if surrogates:
                    _check_scalar(child, [*keys, key], surrogates)
            elif kind is dict or kind is list:
                if len(stack) >= MAX_DEPTH:
                    where = "".join("/" + _pointer_token(k) for k in [*keys, key])
                    raise _error("too-deep", f"nesting exceeds the maximum depth of {MAX_DEPTH} at {where}")
                if child:
                    keys.append(key)
                    stack.append((child, _items(child, keys, surrogates)))
                    break
            elif child is not None and kind is not bool:
                _check_scalar(child, [*keys, key], surrogates)
        else:
            stack.pop()
            if keys:
                keys.pop()
    return root


def _items(node: dict[str, Any] | list[Any], keys: list[str | int], surrogates: bool) -> Iterator[tuple[Any, Any]]:
    """The (key, child) pairs of a container about to be walked, after checking its member names."""
    if isinstance(node, list):
        return enumerate(node)
    if surrogates:
        for name in node:
            if isinstance(name, str) and _SURROGATE.search(name):
                # Located at the object: a pointer holding the name could not be written as UTF-8.
                raise _error("lone-surrogate", f"member name {name!a} holds a lone UTF-16 surrogate", keys)
    return iter(node.items())


def _check_scalar(value: Any, keys: list[str | int], surrogates: bool) -> None:
    kind = type(value)
    if kind is _DuplicateKeys:
        raise _error("duplicate-key", f"member {value.duplicates[0]!a} appears more than once", keys)
    if kind is float:
        if value - value != 0:  # inf - inf is nan; nan != 0 too
            raise _error("non-finite-number", f"number {value} is not a finite double", keys)
    elif kind is str:
        if surrogates and _SURROGATE.search(value):
            raise _error(
                "lone-surrogate",
                f"string {_abbrev(ascii(value))} holds a lone UTF-16 surrogate; RFC 8785 and I-JSON forbid them",
                keys,
            )
    elif kind is _NonFinite:
        raise _error("non-finite-number", f"number {_abbrev(value.literal)} is not a finite double", keys)


def _as_double(value: int, keys: list[str | int]) -> float:
    try:
        return float(value)
    except OverflowError:
        raise _error(
            "non-finite-number", f"integer of {len(str(value))} digits overflows a double", keys
        ) from None


def read_document(path: str | Path) -> Any:
    """Read and parse a blueprint file: a regular file (never a FIFO or device), refused when over
    the size limit before a byte of it is read."""
    data = read_regular_file(path, MAX_DOCUMENT_BYTES, _file_too_large)
    text, raw_surrogates = _decode(data)
    del data  # the bytes are not needed while the (larger) parsed tree is built
    return _loads_text(text, raw_surrogates)


def _file_too_large(path: Path, size: int) -> BlueprintParseError:
    return _error("too-large", f"{path} is {size} bytes; the limit is {MAX_DOCUMENT_BYTES}")


def canonical_bytes(obj: Any) -> bytes:
    """RFC 8785 (JCS) canonical serialization of plain JSON values."""
    return rfc8785.dumps(obj)


def sha256_digest(data: bytes) -> str:
    """`sha256:` plus the lowercase hex SHA-256 of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
