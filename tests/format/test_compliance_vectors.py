"""The language-neutral compliance vectors in spec/compliance/, run against this implementation.

The files and spec/compliance/manifest.json are the contract: every valid vector gives no error
(and exactly its listed warnings), every invalid vector gives its listed (code, JSON pointer)
errors. Independently of `blueprint_format.validate`, the raw JSON Schema (python-jsonschema with
ECMA-262 pattern semantics) and the pydantic model must agree on every vector that parses.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from pydantic import ValidationError as PydanticValidationError

import blueprint_format
import blueprint_format.schema
from blueprint_format import ERROR_CODES, Blueprint, BlueprintError, validate
from blueprint_format.limits import MAX_DOCUMENT_BYTES, MAX_MODULES

ROOT = Path(__file__).resolve().parents[2]
COMPLIANCE = ROOT / "spec" / "compliance"
SCHEMA_FILE = ROOT / "spec" / "v1" / "blueprint.schema.json"
GENERATOR = COMPLIANCE / "tools" / "make_vectors.py"
MANIFEST: dict[str, Any] = json.loads((COMPLIANCE / "manifest.json").read_text(encoding="utf-8"))
VALID: list[dict[str, Any]] = MANIFEST["valid"]
INVALID: list[dict[str, Any]] = MANIFEST["invalid"]
GENERATED: list[dict[str, Any]] = MANIFEST["generated"]
STOPPING_LAYERS = {"parse", "limit", "version"}  # SPEC 17.1: an error there is the only one reported

# Where blueprint_format disagrees with SPEC.md (the vectors follow SPEC.md). Strict: once the
# implementation is fixed the test passes unexpectedly and fails, so the entry must be removed.
VALIDATOR_GAPS: dict[str, str] = {}
MODEL_GAPS: dict[str, str] = {}


def _params(entries: list[dict[str, Any]], gaps: dict[str, str]) -> list[Any]:
    return [
        pytest.param(e, id=_id(e), marks=pytest.mark.xfail(strict=True, reason=gaps[e["file"]]))
        if e.get("file") in gaps
        else pytest.param(e, id=_id(e))
        for e in entries
    ]


def _id(entry: dict[str, Any]) -> str:
    return str(entry.get("file") or entry["code"])


def _read(entry: dict[str, Any]) -> bytes:
    return (COMPLIANCE / str(entry["file"])).read_bytes()


def _pairs(items: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(item["code"], item["path"]) for item in items]


# ---------------------------------------------------------------------------------------------
# An independent reading of the raw schema


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    # JSON Schema patterns are ECMA-262 regexes: an unescaped `$` at the end matches only at the very
    # end of the string. Python's `$` also matches before a final "\n", so plain python-jsonschema
    # would accept "attn.0\n" as a name; `\Z` gives the ECMA meaning for this schema's anchored patterns.
    if not isinstance(instance, str):
        return
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    if re.search(pattern, instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_EcmaValidator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})  # type: ignore[no-untyped-call]
SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
Draft202012Validator.check_schema(SCHEMA)
RAW = _EcmaValidator(SCHEMA)


class _NotPlainJson(ValueError):
    pass


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _NotPlainJson("duplicate key")
    return dict(pairs)


def _reject_constant(literal: str) -> Any:
    raise _NotPlainJson(literal)


def _plain_parse(data: bytes) -> tuple[bool, Any]:
    """Parse with the standard library alone; (False, None) for text this spec refuses to parse."""
    if not data.strip() or data.startswith(b"\xef\xbb\xbf") or len(data) > MAX_DOCUMENT_BYTES:
        return False, None
    try:
        obj = json.loads(
            data.decode("utf-8"), object_pairs_hook=_strict_pairs, parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False, None
    if any(_infinite(v) or _lone_surrogate(v) for v in _values(obj)):
        return False, None
    return True, obj


def _values(obj: Any) -> Iterator[Any]:
    """Every value of a parsed tree and every member name (iteratively)."""
    stack = [obj]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, dict):
            stack.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _infinite(value: Any) -> bool:
    return isinstance(value, float) and value in (float("inf"), float("-inf"))


def _lone_surrogate(value: Any) -> bool:
    return isinstance(value, str) and any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)


def _pointer(parts: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _schema_errors(obj: Any) -> list[ValidationError]:
    return list(RAW.iter_errors(obj))


def _unknown_member_pointers(errors: list[ValidationError]) -> set[str]:
    """Pointers of the members that `additionalProperties: false` refused."""
    out: set[str] = set()
    for e in errors:
        if e.validator == "oneOf":
            # An unknown parameter of a known rule fails every branch; the branch whose `name`
            # matches refuses it with additionalProperties.
            name = e.instance.get("name") if isinstance(e.instance, dict) else None
            branches = e.schema.get("oneOf", []) if isinstance(e.schema, dict) else []
            matching = [
                sub
                for sub in e.context or []
                if sub.validator == "additionalProperties"
                and branches[sub.relative_schema_path[0]].get("properties", {}).get("name", {}).get("const")
                == name
            ]
            assert matching, e.message
            out |= _unknown_member_pointers(matching)
            continue
        assert e.validator == "additionalProperties", e.message
        schema: Any = e.schema
        instance: Any = e.instance
        known = set(schema.get("properties", {}))
        out |= {_pointer([*e.absolute_path, k]) for k in instance if k not in known}
    return out


# ---------------------------------------------------------------------------------------------
# The manifest itself


def test_validator_schema_is_pristine() -> None:
    """The schema the validator uses is still the file's content.

    hypothesis_jsonschema.from_schema() resolves $refs in place; given blueprint_format's cached
    schema dict it silently strips the x-error-code annotations and every later validation in the
    session reports wrong codes. Callers must pass a copy.
    """
    assert blueprint_format.schema.load_schema() == SCHEMA, "someone mutated the cached schema in place"


def test_manifest_lists_exactly_the_files() -> None:
    listed = {e["file"] for e in VALID + INVALID}
    on_disk = {f"{sub}/{p.name}" for sub in ("valid", "invalid") for p in (COMPLIANCE / sub).iterdir()}
    assert listed == on_disk
    assert len(VALID) >= 12 and len(INVALID) >= 36
    assert MANIFEST["spec_version"] == blueprint_format.SPEC_VERSION


@pytest.mark.parametrize("entry", INVALID, ids=_id)
def test_invalid_entry_is_well_formed(entry: dict[str, Any]) -> None:
    name = Path(entry["file"]).name
    code = name.split("--")[0]
    assert entry["errors"], "an invalid vector lists at least one error"
    assert entry["errors"][0]["code"] == code, "files are named <code>--<what>.json"
    for err in entry["errors"]:
        assert err["code"] in ERROR_CODES
        assert err["path"] == "" or err["path"].startswith("/")
        # A vector's layer is its code's layer, except prose rules reported with a schema-table code.
        assert entry["layer"] == ERROR_CODES[err["code"]].layer or (
            entry["layer"] == "semantic" and ERROR_CODES[err["code"]].layer == "schema"
        )
        if entry["layer"] == "parse":
            assert err["path"] == "" or err["code"] in ("duplicate-key", "non-finite-number", "lone-surrogate")


def test_every_document_code_is_covered() -> None:
    """Each parse/limit/version/schema/semantic code has a vector (unknown-member as a warning)."""
    wanted = {
        c
        for c, row in ERROR_CODES.items()
        if row.layer in {"parse", "limit", "version", "schema", "semantic"}
    }
    # schema-violation is the fallback for keywords without a mapping; v1's schema uses none of those.
    wanted.discard("schema-violation")
    covered = {err["code"] for e in INVALID for err in e["errors"]} | {g["code"] for g in GENERATED}
    warned = {w["code"] for e in VALID for w in e.get("warnings", [])}
    assert wanted - covered - warned == set()
    assert "unknown-member" in warned


def test_generator_layer_table_matches_error_codes() -> None:
    generator = _load_generator()
    assert {c: ERROR_CODES[c].layer for c in generator.LAYERS} == generator.LAYERS


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_vectors", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_is_deterministic(tmp_path: Path) -> None:
    """Re-running the generator reproduces the committed files byte for byte."""
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)], check=True, capture_output=True)
    fresh = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*.json")}
    committed = {
        p.relative_to(COMPLIANCE).as_posix(): p.read_bytes()
        for p in COMPLIANCE.rglob("*.json")
        if p.parent.name in ("valid", "invalid") or p.name == "manifest.json"
    }
    assert sorted(fresh) == sorted(committed)
    changed = [name for name in fresh if fresh[name] != committed[name]]
    assert changed == []


# ---------------------------------------------------------------------------------------------
# The implementation against the vectors


@pytest.mark.parametrize("entry", VALID, ids=_id)
def test_valid_vector(entry: dict[str, Any]) -> None:
    data = _read(entry)
    issues = validate(data)
    assert [str(i) for i in issues if i.is_error] == []
    assert sorted((i.code, i.path) for i in issues if not i.is_error) == sorted(
        _pairs(entry.get("warnings", []))
    )
    bp = blueprint_format.loads(data)
    # What a reader keeps survives its own canonical round trip.
    again = blueprint_format.loads(blueprint_format.dumps(bp))
    assert again == bp
    assert blueprint_format.dumps(again) == blueprint_format.dumps(bp)


@pytest.mark.parametrize("entry", _params(INVALID, VALIDATOR_GAPS))
def test_invalid_vector(entry: dict[str, Any]) -> None:
    data = _read(entry)
    issues = validate(data)
    errors = [(i.code, i.path) for i in issues if i.is_error]
    expected = _pairs(entry["errors"])
    for pair in expected:
        assert pair in errors, f"expected {pair}, got {errors}"
    if entry["layer"] in STOPPING_LAYERS:
        assert sorted(set(errors)) == sorted(set(expected)), "parse/limit/version errors are reported alone"
    with pytest.raises(BlueprintError) as caught:
        blueprint_format.loads(data)
    assert {(i.code, i.path) for i in caught.value.issues} >= set(expected)


def test_vectors_through_files() -> None:
    """validate_file (what the CLI uses) agrees with validate(bytes) on every vector."""
    differ = []
    for entry in VALID + INVALID:
        from_file = {
            (i.code, i.path, i.severity) for i in blueprint_format.validate_file(COMPLIANCE / entry["file"])
        }
        from_bytes = {(i.code, i.path, i.severity) for i in validate(_read(entry))}
        if from_file != from_bytes:
            differ.append(entry["file"])
    assert differ == []


def test_cli_json_over_all_vectors() -> None:
    """`blueprint validate --json` on every vector at once: exit 1, one verdict per file."""
    files = [str(COMPLIANCE / e["file"]) for e in VALID + INVALID]
    run = subprocess.run(
        [sys.executable, "-m", "blueprint_format", "validate", "--json", *files],
        capture_output=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert b"Traceback" not in run.stderr
    verdicts = {Path(r["path"]).resolve(): r for r in json.loads(run.stdout)}
    assert len(verdicts) == len(files)
    for entry in VALID:
        assert verdicts[(COMPLIANCE / entry["file"]).resolve()]["valid"] is True, entry["file"]
    for entry in INVALID:
        if entry["file"] in VALIDATOR_GAPS:
            continue
        verdict = verdicts[(COMPLIANCE / entry["file"]).resolve()]
        assert verdict["valid"] is False, entry["file"]
        got = {(e["code"], e["path"]) for e in verdict["errors"]}
        assert set(_pairs(entry["errors"])) <= got, entry["file"]


# ---------------------------------------------------------------------------------------------
# Raw schema and pydantic model, each on its own


PARSED = [e for e in VALID + INVALID if _plain_parse(_read(e))[0]]


@pytest.mark.parametrize("entry", PARSED, ids=_id)
def test_raw_schema_agrees_with_layer(entry: dict[str, Any]) -> None:
    _, obj = _plain_parse(_read(entry))
    errors = _schema_errors(obj)
    layer = entry.get("layer", "valid")
    if layer == "valid" and "warnings" in entry:
        # A newer minor's members are unknown to the 1.0 schema, and nothing else is wrong.
        assert _unknown_member_pointers(errors) == {w["path"] for w in entry["warnings"]}
    elif layer in ("valid", "semantic"):
        assert [e.message for e in errors] == []
    elif layer == "limit":
        pass  # limits are not the schema's business (too-deep documents may be schema-valid)
    else:
        assert errors, "a schema-, version- or parse-layer document must fail the raw schema"
        if layer == "schema":
            located = {_pointer(e.absolute_path) for e in errors}
            for _code, path in _pairs(entry["errors"]):
                # Violations of required/additionalProperties/propertyNames sit on the parent object.
                parent = path.rsplit("/", 1)[0]
                assert path in located or parent in located, (path, located)


@pytest.mark.parametrize("entry", _params(PARSED, MODEL_GAPS))
def test_pydantic_model_agrees_with_raw_schema(entry: dict[str, Any]) -> None:
    _, obj = _plain_parse(_read(entry))
    schema_ok = not _schema_errors(obj)
    try:
        Blueprint.model_validate(obj)
        model_ok = True
    except PydanticValidationError:
        model_ok = False
    assert model_ok == schema_ok, f"schema accepts: {schema_ok}, model accepts: {model_ok}"


# ---------------------------------------------------------------------------------------------
# Vectors too large to store: built in memory from the manifest's recipes


def _build(entry: dict[str, Any]) -> bytes:
    base_text = (COMPLIANCE / entry["base"]).read_text(encoding="utf-8")
    build = entry["build"]
    if build["kind"] == "pad":
        data = base_text.encode("utf-8")
        return bytes(data + b" " * (int(build["total_bytes"]) - len(data)))
    base = json.loads(base_text)
    if build["kind"] == "replicate-modules":
        module = base["modules"][0]
        template = json.dumps({**module, "name": "@NAME@"})
        domain = next(iter(module["stats"]))
        parts = []
        for i in range(build["count"]):
            value = 1 - i * 1e-6
            stats = {
                "grad_norm_mean": value,
                "grad_norm_median": value,
                "grad_norm_sq_mean": value * value,
                "rank": i + 1,
            }
            parts.append(
                template.replace('"@NAME@"', f'"m{i}"').replace(
                    json.dumps({domain: module["stats"][domain]}), json.dumps({domain: stats})
                )
            )
        base["modules"] = []
        text = json.dumps(base)
        return text.replace('"modules": []', '"modules": [' + ",".join(parts) + "]").encode("utf-8")
    if build["kind"] == "extension-array":
        base["extensions"] = {build["member"]: "@ITEMS@"}
        items = "[" + ",".join([build["item"]] * int(build["count"])) + "]"
        return json.dumps(base).replace('"@ITEMS@"', items).encode("utf-8")
    if build["kind"] == "nest":
        depth = build["depth"]
        base["extensions"] = {build["member"]: "@DEEP@"}
        return json.dumps(base).replace('"@DEEP@"', "[" * depth + "0" + "]" * depth).encode("utf-8")
    raise AssertionError(f"unknown recipe {build['kind']}")


@pytest.mark.slow
@pytest.mark.parametrize("entry", GENERATED, ids=_id)
def test_generated_vector(entry: dict[str, Any]) -> None:
    data = _build(entry)
    if entry["code"] == "too-large":
        assert len(data) == MAX_DOCUMENT_BYTES + 1
    if entry["code"] == "too-many-modules":
        assert len(json.loads(data)["modules"]) == MAX_MODULES + 1
    started = time.perf_counter()
    issues = validate(data)
    elapsed = time.perf_counter() - started
    errors = sorted({(i.code, i.path) for i in issues if i.is_error})
    assert errors == sorted(_pairs(entry["errors"]))
    assert elapsed < 10, f"{entry['code']} took {elapsed:.1f} s"


def test_generated_recipe_at_the_limit_is_accepted() -> None:
    """The too-many-modules recipe with 1000 modules is a valid document: the refusal above is
    about the count, not about what the recipe builds."""
    entry = next(g for g in GENERATED if g["code"] == "too-many-modules")
    small = {**entry, "build": {**entry["build"], "count": 1000}}
    assert [str(i) for i in validate(_build(small)) if i.is_error] == []
