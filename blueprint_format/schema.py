"""The normative JSON Schema and its mapping from violations to stable error codes.

The schema file is `spec/v1/blueprint.schema.json`. An installed wheel carries that same file as
`blueprint_format/_spec/v1/blueprint.schema.json` (pyproject force-include); a source checkout
reads it from spec/ directly, so there is never a second copy to drift.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from blueprint_format.errors import Issue
from blueprint_format.pointer import join

_SCHEMA_RELATIVE = Path("v1") / "blueprint.schema.json"


def schema_path() -> Path:
    """Where the schema file is: inside the installed package, or in the source tree's spec/."""
    packaged = Path(__file__).parent / "_spec" / _SCHEMA_RELATIVE
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "spec" / _SCHEMA_RELATIVE


def schema_text() -> str:
    """The schema file's exact text."""
    return schema_path().read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _parsed_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded


def load_schema() -> dict[str, Any]:
    """The parsed schema: a fresh copy, since some consumers (hypothesis-jsonschema) edit it in place."""
    return copy.deepcopy(_parsed_schema())


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    # JSON Schema patterns are ECMA-262 regexes, where an unescaped trailing `$` matches only at
    # the very end. Python's `$` also matches before a final newline, which would accept
    # "name\n"; `\Z` restores the ECMA meaning for the anchored patterns this schema uses.
    if not isinstance(instance, str):
        return
    if _compiled(pattern).search(instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


_Validator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _ecma_pattern}
)


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with every local `$ref` replaced by its definition (v1 has no recursive refs).

    Resolving references costs about a third of validation time in jsonschema; inlining them
    once gives the same verdicts (error.schema is still the definition, x-error-code included).
    """
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        siblings = {k: _inline_refs(v, defs) for k, v in node.items() if k != "$ref"}
        return {"allOf": [target], **siblings} if siblings else target
    return {k: (v if k == "$defs" else _inline_refs(v, defs)) for k, v in node.items()}


@lru_cache(maxsize=1)
def schema_validator() -> Any:
    """A Draft 2020-12 validator for the schema, with ECMA-262 pattern semantics."""
    schema = _parsed_schema()
    return _Validator(_inline_refs(schema, schema.get("$defs", {})))


_KEYWORD_CODES = {
    "required": "missing-field",
    "additionalProperties": "unknown-field",
    "unevaluatedProperties": "unknown-field",
    "type": "wrong-type",
    "minimum": "out-of-range",
    "maximum": "out-of-range",
    "exclusiveMinimum": "out-of-range",
    "exclusiveMaximum": "out-of-range",
    "minItems": "out-of-range",
    "maxItems": "out-of-range",
    "minLength": "out-of-range",
    "maxLength": "out-of-range",
    "minProperties": "out-of-range",
    "maxProperties": "out-of-range",
    "pattern": "bad-format",
    "enum": "bad-enum",
    "const": "bad-enum",
}
# Keywords whose meaning is structural: their code is fixed, whatever the subschema's x-error-code says.
_STRUCTURAL = {"required", "additionalProperties", "unevaluatedProperties", "type"}

_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _code_for(error: ValidationError) -> str:
    keyword = str(error.validator)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if keyword not in _STRUCTURAL:
        declared = schema.get("x-error-code")
        if isinstance(declared, str):
            return declared
        if isinstance(declared, dict) and keyword in declared:
            return str(declared[keyword])
    return _KEYWORD_CODES.get(keyword, "schema-violation")


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _issues_for(error: ValidationError, sizes: Mapping[str, int] | None = None) -> list[Issue]:
    """One or more issues for a jsonschema error, located at the offending member.

    `sizes` gives the true entry count of arrays and objects the validator was shown clipped.
    """
    keyword = str(error.validator)
    base = join(error.absolute_path)
    instance: Any = error.instance
    value: Any = error.validator_value
    code = _code_for(error)
    if keyword == "required" and isinstance(instance, dict):
        missing = [name for name in value if name not in instance]
        return [Issue(code, f"{base}/{name}", f"required member {name!r} is missing") for name in missing]
    if keyword in ("additionalProperties", "unevaluatedProperties") and isinstance(instance, dict):
        known = set(error.schema.get("properties", {})) if isinstance(error.schema, dict) else set()
        extras = [k for k in instance if k not in known]
        return [
            Issue(code, f"{base}/{join([k])[1:]}", f"member {k!r} is not defined by the spec")
            for k in extras
        ]
    if "propertyNames" in error.schema_path:
        return [
            Issue(
                code, f"{base}/{join([instance])[1:]}", f"member name {_short(instance)} is not allowed"
            )
        ]
    if keyword == "type":
        expected = value
        expected_text = " or ".join(expected) if isinstance(expected, list) else str(expected)
        message = f"expected {expected_text}, got {_json_type(instance)}"
    elif keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        relation = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[
            keyword
        ]
        message = f"{_short(instance)} must be {relation} {value}"
    elif keyword in ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"):
        size = (sizes or {}).get(base, len(instance) if hasattr(instance, "__len__") else "?")
        bound = "at least" if keyword.startswith("min") else "at most"
        message = f"has {size} entries/characters; must have {bound} {value}"
    elif keyword == "pattern":
        message = f"{_short(instance)} does not have the required form ({value})"
    elif keyword in ("enum", "const"):
        allowed = value if keyword == "enum" else [value]
        message = f"{_short(instance)} is not one of {', '.join(map(str, allowed))}"
    elif keyword == "oneOf":
        message = _rule_message(error)
    else:
        message = error.message
    return [Issue(code, base, message)]


def _rule_message(error: ValidationError) -> str:
    instance = error.instance
    name = instance.get("name") if isinstance(instance, dict) else None
    branches = [
        sub
        for sub in error.context or []
        if sub.relative_schema_path and sub.relative_schema_path[0] is not None
    ]
    for sub in branches:
        # Prefer the branch whose `name` matched, so the message talks about its parameters.
        branch_schema = (
            error.schema.get("oneOf", [])[sub.relative_schema_path[0]]
            if isinstance(error.schema, dict)
            else {}
        )
        const = branch_schema.get("properties", {}).get("name", {}).get("const")
        if const is not None and const == name and "name" not in list(sub.relative_path)[:1]:
            where = join(sub.relative_path)
            return f"rule {name!r}: {where or 'rule'}: {_issues_for(sub)[0].message}"
    return f"rule {_short(name)} is not a known rule (global-budget, mass-threshold, marginal, or x-...) with valid parameters"


def schema_issues(document: Any, sizes: Mapping[str, int] | None = None) -> list[Issue]:
    """Every schema violation of `document`, each with its code and JSON pointer.

    `sizes` maps the pointers of arrays and objects that were clipped before validation (see
    validator._structure) to their true entry counts, for the messages.
    """
    seen: dict[tuple[str, str], Issue] = {}
    for error in schema_validator().iter_errors(document):
        # jsonschema reports `required` once per missing member but each report lists them all.
        for issue in _issues_for(error, sizes):
            seen.setdefault((issue.path, issue.code), issue)
    return sorted(seen.values(), key=lambda i: (i.path, i.code))
