"""Fuzzing the blueprint JSON reader and validator: raw bytes, and near-valid documents mutated at
the byte and at the value level. Only coded issues come out (never another exception), each in
bounded time, and whatever validates also canonicalises, digests and round-trips."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import blueprint_format as bf
from blueprint_format import ERROR_CODES, BlueprintError
from tests.format.builders import make_doc
from tests.fuzz.profile import fuzz_settings

ROOT = Path(__file__).resolve().parents[2]
VALID = [make_doc(layers=2, domains=("general", "code")), json.loads((ROOT / "spec/compliance/valid/minimal.json").read_text())]
TEXTS = [json.dumps(d, indent=1).encode() for d in VALID]

# Pieces of JSON and of the things hostile documents are made of.
FRAGMENTS = [
    b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\\u", b"\\ud800", b"\\udc00", b"\\ud83d\\ude00", b"\\u0000",
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-0", b"9" * 400, b"9" * 5000, b"1.5e-320", b"true", b"null",
    b"\xef\xbb\xbf", b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"[" * 40, b"]" * 40, b" ", b"\n", b'"x":1,"x":2',
]


def _check(data: bytes | str) -> None:
    started = time.perf_counter()
    issues = bf.validate(data)
    assert time.perf_counter() - started < 10
    for issue in issues:
        assert issue.code in ERROR_CODES and "\n" not in issue.message
    if not any(i.is_error for i in issues):
        bp = bf.loads(data)
        canonical = bf.dumps(bp)
        assert bf.loads(canonical) == bp and bf.dumps(bf.loads(canonical)) == canonical
        assert bf.digest(bp).startswith("sha256:")


@fuzz_settings(1000)
@given(st.binary(max_size=300))
def test_raw_bytes(data: bytes) -> None:
    _check(data)


@fuzz_settings(400)
@given(st.sampled_from(TEXTS), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 8), st.sampled_from(FRAGMENTS)), max_size=4))
def test_byte_level_mutations(text: bytes, edits: list[tuple[float, int, bytes]]) -> None:
    data = bytearray(text)
    for where, cut, piece in edits:
        at = int(where * len(data))
        data[at : at + cut] = piece
    _check(bytes(data))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    out = [path]
    for key, child in items:
        out += _leaves(child, (*path, key))
    return out


@fuzz_settings(400)
@given(st.sampled_from(VALID), st.data())
def test_value_level_mutations(doc: dict[str, Any], data: st.DataObject) -> None:
    """Replace a random member or entry of a valid document with a random JSON value (or add a
    random member), then feed it as bytes and as a Python object."""
    doc = json.loads(json.dumps(doc))
    path = data.draw(st.sampled_from(_leaves(doc)[1:]))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    value = data.draw(JSON_VALUES)
    if isinstance(parent, dict) and data.draw(st.booleans()):
        parent[data.draw(st.text(max_size=8))] = value
    else:
        parent[path[-1]] = value
    _check(json.dumps(doc).encode())
    try:
        issues = bf.validate(doc)
    except BlueprintError as exc:  # pragma: no cover - validate reports, it does not raise
        raise AssertionError(exc) from None
    assert all(i.code in ERROR_CODES for i in issues)
