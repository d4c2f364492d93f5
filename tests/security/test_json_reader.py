"""Hostile JSON documents: each gets one coded refusal (or a correct acceptance), never a traceback,
within bounded time and memory (issue 10, items 7, 8, 10, 11, 16 and 20)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import blueprint_format as bf
from blueprint_format import BlueprintError, validate
from blueprint_format._version import SUPPORTED_MINOR
from blueprint_format.jsonio import canonical_bytes, count_values
from blueprint_format.limits import MAX_CONTAINERS, MAX_DOCUMENT_BYTES, MAX_VALUES
from tests.format.builders import make_doc
from tests.security.helpers import LONG, one_line_error, run_cli

MINIMAL = (Path(__file__).resolve().parents[2] / "spec" / "compliance" / "valid" / "minimal.json").read_text()


def _codes(data: bytes | str) -> list[tuple[str, str]]:
    return [(i.code, i.path) for i in validate(data) if i.is_error]


def _with_extension(raw_value: str) -> str:
    """The minimal valid document with `extensions: {"x-a": <raw_value>}` spliced in as text."""
    doc = json.loads(MINIMAL)
    doc["extensions"] = {"x-a": "@VALUE@"}
    return json.dumps(doc).replace('"@VALUE@"', raw_value)


# --- item 7: lone surrogates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (_with_extension('"\\ud800"'), "/extensions/x-a"),
        (_with_extension('"ok \\udfff"'), "/extensions/x-a"),
        (_with_extension('["\\ude00\\ud83d"]'), "/extensions/x-a/0"),
        (_with_extension('{"\\ud800": 1}'), "/extensions/x-a"),
        (MINIMAL.replace('"spec_version"', '"\\ud800": 1, "spec_version"', 1), ""),
    ],
)
def test_lone_surrogates_are_refused_at_parse(text: str, path: str) -> None:
    assert _codes(text) == [("lone-surrogate", path)]
    assert _codes(text.encode()) == [("lone-surrogate", path)]


def test_a_surrogate_pair_escape_is_one_character() -> None:
    text = _with_extension('"smile \\ud83d\\ude00"')
    assert _codes(text) == []
    bp = bf.loads(text)
    assert bp.extensions == {"x-a": "smile \U0001f600"}
    assert bf.digest(bp) == "sha256:" + hashlib.sha256(bf.dumps(bp)).hexdigest()


def test_values_built_in_python_get_the_same_refusal() -> None:
    doc = json.loads(MINIMAL)
    doc["extensions"] = {"x-a": {"key": ["\udc00"]}}
    with pytest.raises(BlueprintError) as caught:
        bf.from_json(doc)
    assert (caught.value.code, caught.value.issues[0].path) == ("lone-surrogate", "/extensions/x-a/key/0")


def test_cli_reports_a_surrogate_member_name_and_goes_on(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(MINIMAL.replace('"spec_version"', '"\\ud800": 1, "spec_version"', 1))
    good = tmp_path / "good.json"
    good.write_text(MINIMAL)
    run = run_cli("validate", str(bad), str(good))
    assert run.returncode == 1
    one_line_error(run, "lone-surrogate")
    assert f"{good}: valid" in run.stdout  # the files after the bad one are still validated
    for command in ("digest", "show"):
        run = run_cli(command, str(bad))
        assert run.returncode == 1
        one_line_error(run, "lone-surrogate")


# --- item 8: numbers and versions beyond Python's int conversion limit --------------------------


@pytest.mark.parametrize(
    ("version", "code"),
    [("9" * 5000 + ".0.0", "unsupported-version"), ("1." + "9" * 5000 + ".0", "bad-version")],
)
def test_huge_version_numbers_get_a_version_code(tmp_path: Path, version: str, code: str) -> None:
    doc = json.loads(MINIMAL)
    doc["spec_version"] = version
    assert [c for c, _ in _codes(json.dumps(doc))] == [code]
    path = tmp_path / "v.json"
    path.write_text(json.dumps(doc))
    run = run_cli("validate", str(path))
    assert run.returncode == 1
    one_line_error(run, code)


def test_huge_integers_are_located() -> None:
    text = _with_extension("[1, " + "7" * 4301 + "]")
    assert _codes(text) == [("non-finite-number", "/extensions/x-a/1")]
    # A 5000-digit literal in text that is malformed further on: the malformation is reported
    # (found by the fuzz suite: the second, locating parse raised JSONDecodeError uncaught).
    assert [c for c, _ in _codes(_with_extension("[" + "7" * 5000 + "] }"))] == ["parse-error"]
    # Below Python's limit but beyond a double: the same code, at the same place.
    assert _codes(_with_extension("[1, " + "7" * 400 + "]")) == [("non-finite-number", "/extensions/x-a/1")]


# --- item 11: the size limit counts bytes, also for text ------------------------------------------


@pytest.mark.slow
def test_text_is_measured_in_utf8_bytes() -> None:
    # 17 million characters, but 68 MB of UTF-8: over the 64 MiB limit however it is handed in.
    filler = "\U0001f600" * (MAX_DOCUMENT_BYTES // 4 + 1)
    text = _with_extension(json.dumps(filler, ensure_ascii=False))
    assert len(text) < MAX_DOCUMENT_BYTES < len(text.encode("utf-8"))
    assert _codes(text) == [("too-large", "")]


# --- item 16: a newer minor's members are part of the document ----------------------------------


def _newer(doc: dict[str, Any]) -> dict[str, Any]:
    doc["spec_version"] = f"1.{SUPPORTED_MINOR + 1}.0"  # a minor this reader does not know
    doc["future"] = {"a": [1, 2]}
    doc["modules"][0]["future_stat"] = 0.5
    doc["allocation"]["rule"]["parameters"]["future_parameter"] = 3
    return doc


def test_a_newer_minor_digest_covers_the_whole_document() -> None:
    doc = _newer(make_doc())
    text = json.dumps(doc)
    issues = validate(text)
    assert {(i.code, i.path, i.severity.value) for i in issues} == {
        ("unknown-member", "/future", "warning"),
        ("unknown-member", "/modules/0/future_stat", "warning"),
        ("unknown-member", "/allocation/rule/parameters/future_parameter", "warning"),
    }
    bp = bf.loads(text)
    whole = canonical_bytes(json.loads(text))
    assert bf.dumps(bp) == whole
    assert bf.digest(bp) == "sha256:" + hashlib.sha256(whole).hexdigest()
    assert bf.loads(bf.dumps(bp)) == bp  # and the round trip keeps them


def test_cli_digest_of_a_newer_minor_document(tmp_path: Path) -> None:
    doc = _newer(make_doc())
    path = tmp_path / "newer.json"
    path.write_text(json.dumps(doc, indent=1))
    run = run_cli("digest", str(path))
    assert run.returncode == 0, run.stderr
    expected = "sha256:" + hashlib.sha256(canonical_bytes(json.loads(path.read_text()))).hexdigest()
    assert run.stdout.strip() == expected


# --- item 20: a byte-order mark is not-utf8 however the text arrives ------------------------------


def test_a_bom_in_text_is_not_utf8() -> None:
    assert _codes("\ufeff" + MINIMAL) == [("not-utf8", "")]
    assert _codes(b"\xef\xbb\xbf" + MINIMAL.encode()) == [("not-utf8", "")]


# --- item 10: bounded cost --------------------------------------------------------------------


def test_value_count_is_exact_on_well_formed_json() -> None:
    samples: list[Any] = [
        {},
        [],
        make_doc(layers=3, domains=("a", "b")),
        {"s": "a,b{c}[d]\\\"", "x": [[], {}, [[]], {"": {}}], "y": [1, 2.5, None, True, "]"]},
    ]
    for value in samples:
        expected = _naive_count(value)
        for text in (json.dumps(value), json.dumps(value, indent=3)):
            assert count_values(text) == expected
    spaced = '{ "a" : [ ] , "b" : {\n\t} , "c" : [ { } , [ [ ] ] ] }'
    assert count_values(spaced) == _naive_count(json.loads(spaced)) == (7, 7)


def _naive_count(value: Any) -> tuple[int, int]:
    if isinstance(value, dict):
        counts = [_naive_count(v) for v in value.values()]
    elif isinstance(value, list):
        counts = [_naive_count(v) for v in value]
    else:
        return 1, 0
    return 1 + sum(c[0] for c in counts), 1 + sum(c[1] for c in counts)


def _hostile(kind: str, count: int) -> str:
    if kind == "members":
        return _with_extension("{" + ",".join(f'"k{i}":0' for i in range(count)) + "}")
    item = {"zeros": "0", "strings": '"ab"', "objects": "{}", "pairs": '{"":{}}', "ones": '{"":0}'}[kind]
    return _with_extension("[" + (item + ",") * (count - 1) + item + "]")


# Just under the limits: the densest documents a reader must accept (about 60 values are the
# minimal document's own), and the 63 MB documents of the issue, which it must refuse early.
UNDER = MAX_VALUES - 100
LONG_ONLY = pytest.mark.skipif(not LONG, reason="long run only (BLUEPRINT_LONG_TESTS=1; see SECURITY.md)")
DENSE = [
    pytest.param("pairs", (MAX_CONTAINERS - 100) // 2, 0, id="pairs"),  # densest in memory per byte
    pytest.param("zeros", 63 * 1024 * 1024 // 2, 1, id="zeros-63MB"),  # the issue's documents
    pytest.param("objects", 63 * 1024 * 1024 // 3, 1, id="objects-63MB"),
    pytest.param("zeros", UNDER, 0, id="zeros", marks=LONG_ONLY),
    pytest.param("strings", UNDER, 0, id="strings", marks=LONG_ONLY),
    pytest.param("objects", MAX_CONTAINERS - 100, 0, id="objects", marks=LONG_ONLY),
    pytest.param("ones", MAX_CONTAINERS - 100, 0, id="ones", marks=LONG_ONLY),
    pytest.param("members", UNDER, 0, id="members", marks=LONG_ONLY),  # 4 million distinct names
]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "count", "status"), DENSE)
def test_cost_is_bounded_by_the_size(tmp_path: Path, kind: str, count: int, status: int) -> None:
    """SPEC 15.2: any document under the size limit validates within 16x its size + 200 MB of
    memory (measured: the peak resident set of the CLI process), or is refused early."""
    path = tmp_path / "hostile.json"
    path.write_text(_hostile(kind, count))
    size = path.stat().st_size
    assert size <= MAX_DOCUMENT_BYTES
    run = run_cli("validate", str(path), measure=True, timeout=300)
    assert run.returncode == status, (run.stdout, run.stderr)
    if status:
        one_line_error(run, "too-many-values")
    assert run.peak_bytes is not None
    assert run.peak_bytes <= 16 * size + 200 * 1024 * 1024, (run.peak_bytes, size)
    # Time is noisy on shared machines; the target (10 s) is checked by the coordinator's run of
    # SECURITY.md's command. Here only an order of magnitude is asserted.
    assert run.seconds < 120
