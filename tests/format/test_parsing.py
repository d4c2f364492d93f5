"""Bad bytes get one coded issue with a location, in bounded time and memory."""

from __future__ import annotations

import json
import time

import pytest

from blueprint_format import BlueprintParseError, dumps, loads, validate
from blueprint_format.jsonio import canonical_bytes, loads_json
from blueprint_format.limits import MAX_DEPTH, MAX_DOCUMENT_BYTES
from tests.format.builders import make_doc


def codes(data: bytes | str) -> list[tuple[str, str]]:
    return [(i.code, i.path) for i in validate(data)]


def test_valid_document_has_no_issues() -> None:
    assert validate(json.dumps(make_doc()).encode()) == []


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty-document"),
        (b"  \n\t ", "empty-document"),
        (b'{"spec_version": "1.0.0", "model": {', "parse-error"),
        (b'{"a": 1,}', "parse-error"),
        (b"\xef\xbb\xbf{}", "not-utf8"),
        (b'{"description": "\xff"}', "not-utf8"),
        (b"[1, 2]", "not-an-object"),
        (b"42", "not-an-object"),
        (b'{"x": NaN}', "non-finite-number"),
        (b'{"x": -Infinity}', "non-finite-number"),
        (b'{"x": 1e999}', "non-finite-number"),
        (b'{"x": ' + b"9" * 5000 + b"}", "non-finite-number"),
    ],
)
def test_parse_errors(data: bytes, code: str) -> None:
    issues = validate(data)
    assert [i.code for i in issues] == [code]
    assert issues[0].message and "\n" not in issues[0].message


def test_parse_error_has_line_and_column() -> None:
    (issue,) = validate(b'{\n  "a": 1,\n  "b": \n}')
    assert issue.code == "parse-error"
    assert (issue.line, issue.column) == (4, 1)


def test_duplicate_key_is_located() -> None:
    doc = make_doc()
    text = json.dumps(doc).replace('"revision": "r1"', '"revision": "r1", "revision": "r2"')
    assert codes(text) == [("duplicate-key", "/model")]


def test_non_finite_number_is_located() -> None:
    text = json.dumps(make_doc()).replace('"parameter_count": 4010', '"parameter_count": 1e400')
    assert codes(text) == [("non-finite-number", "/model/parameter_count")]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 2000, 100_000])
def test_deep_nesting_is_refused_quickly(depth: int) -> None:
    data = b"[" * depth + b"]" * depth
    start = time.perf_counter()
    assert [i.code for i in validate(data)] == ["too-deep"]
    assert time.perf_counter() - start < 5


def test_deep_nesting_inside_strings_is_not_counted() -> None:
    doc = make_doc()
    doc["description"] = "[" * 4000
    assert validate(json.dumps(doc)) == []


def test_nesting_at_the_limit_is_accepted_by_the_parser() -> None:
    # depth = MAX_DEPTH: the top-level object is depth 1, then MAX_DEPTH - 1 arrays
    nested = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert loads_json('{"x": ' + nested + "}") is not None


def test_oversized_document_is_refused_before_parsing() -> None:
    data = b" " * (MAX_DOCUMENT_BYTES + 1)
    start = time.perf_counter()
    assert [i.code for i in validate(data)] == ["too-large"]
    assert time.perf_counter() - start < 2


def test_unsupported_major_stops_validation() -> None:
    doc = make_doc()
    doc["spec_version"] = "2.0.0"
    doc["something_new"] = True  # a v2 document may look entirely different: no other issue is reported
    assert codes(json.dumps(doc)) == [("unsupported-version", "/spec_version")]


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "1.0.0-rc1", "01.0.0", "1.0.0\n"])
def test_malformed_version(version: str) -> None:
    doc = make_doc()
    doc["spec_version"] = version
    assert ("bad-version", "/spec_version") in codes(json.dumps(doc))


def test_newer_minor_unknown_members_are_warnings_and_kept_for_the_digest() -> None:
    doc = make_doc()
    doc["spec_version"] = "1.4.0"
    doc["future_member"] = {"a": 1}
    doc["model"]["future_binding"] = "x"
    issues = validate(json.dumps(doc))
    assert {(i.code, i.path, i.severity.value) for i in issues} == {
        ("unknown-member", "/future_member", "warning"),
        ("unknown-member", "/model/future_binding", "warning"),
    }
    bp = loads(json.dumps(doc))
    # Ignored, but kept: SPEC 13 digests the whole document, so a round trip must not drop them.
    assert bp.to_json()["future_member"] == {"a": 1}
    assert bp.to_json()["model"]["future_binding"] == "x"
    assert dumps(bp) == canonical_bytes(json.loads(json.dumps(doc)))


def test_same_minor_unknown_member_is_an_error() -> None:
    doc = make_doc()
    doc["future_member"] = 1
    assert codes(json.dumps(doc)) == [("unknown-field", "/future_member")]


def test_loads_raises_with_issues() -> None:
    with pytest.raises(BlueprintParseError) as info:
        loads(b"{")
    assert info.value.code == "parse-error"


def test_wrong_types_are_reported_per_member() -> None:
    doc = make_doc()
    doc["modules"][0]["parameter_count"] = "1000"
    doc["method"]["seed"] = True
    doc["domains"][0]["weight"] = None
    assert set(codes(json.dumps(doc))) == {
        ("wrong-type", "/modules/0/parameter_count"),
        ("wrong-type", "/method/seed"),
        ("wrong-type", "/domains/0/weight"),
    }
