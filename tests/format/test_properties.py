"""Property tests: instances drawn from the normative schema.

- the pydantic models accept exactly what the schema accepts;
- for any valid blueprint b, loads(dumps(b)) == b and dumps is byte-stable;
- a single-field mutation that breaks a rule is rejected with that rule's code.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from pydantic import ValidationError

from blueprint_format import Blueprint, digest, dumps, loads, validate
from blueprint_format.jsonio import canonical_bytes, loads_json
from blueprint_format.schema import load_schema, schema_issues
from tests.format.builders import repair

SCHEMA_INSTANCES = from_schema(load_schema())
VALID_BLUEPRINTS = SCHEMA_INSTANCES.map(repair)


@settings(max_examples=12)
@given(SCHEMA_INSTANCES)
def test_models_accept_what_the_schema_accepts(doc: dict[str, Any]) -> None:
    assert schema_issues(doc) == []
    Blueprint.model_validate(doc)


@settings(max_examples=12)
@given(SCHEMA_INSTANCES, st.data())
def test_models_reject_what_the_schema_rejects(doc: dict[str, Any], data: st.DataObject) -> None:
    # Break one member at a random place; both layers must agree on the verdict.
    broken = copy.deepcopy(doc)
    paths = list(_leaf_paths(broken))
    parent, key = data.draw(st.sampled_from(paths))
    parent[key] = data.draw(st.sampled_from([None, "text", -1, 1.5, [], {}, True]))
    schema_ok = schema_issues(broken) == []
    try:
        Blueprint.model_validate(broken)
        model_ok = True
    except ValidationError:
        model_ok = False
    assert schema_ok == model_ok, (key, parent[key])


def _leaf_paths(node: Any) -> Any:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        yield node, key
        if isinstance(value, (dict, list)):
            yield from _leaf_paths(value)


@settings(max_examples=12)
@given(VALID_BLUEPRINTS)
def test_repaired_instances_are_valid(doc: dict[str, Any]) -> None:
    assert [(i.code, i.path) for i in validate(doc) if i.is_error] == []


@settings(max_examples=12)
@given(VALID_BLUEPRINTS)
def test_round_trip_and_byte_stability(doc: dict[str, Any]) -> None:
    bp = Blueprint.model_validate(doc)
    data = dumps(bp)
    again = loads(data)
    assert again == bp
    assert dumps(again) == data
    assert data == canonical_bytes(loads_json(data))  # already canonical
    assert digest(again) == digest(bp)
    # canonical form does not depend on member order or whitespace of the input
    shuffled = json.dumps(dict(reversed(list(doc.items()))), indent=3)
    assert dumps(loads(shuffled)) == data


Mutation = Callable[[dict[str, Any]], str | None]


def _k_star_zero(doc: dict[str, Any]) -> str:
    doc["modules"][0]["k_star"] = 0
    return "k-star-out-of-range"


def _k_star_above_one(doc: dict[str, Any]) -> str:
    doc["modules"][-1]["k_star"] = 1.5
    return "k-star-out-of-range"


def _duplicate_module(doc: dict[str, Any]) -> str:
    doc["modules"].append(copy.deepcopy(doc["modules"][0]))
    return "duplicate-module"


def _negative_statistic(doc: dict[str, Any]) -> str:
    stats = next(iter(doc["modules"][0]["stats"].values()))
    stats["grad_norm_median"] = -0.5
    return "negative-statistic"


def _rank_beyond(doc: dict[str, Any]) -> str:
    stats = next(iter(doc["modules"][0]["stats"].values()))
    stats["rank"] = len(doc["modules"]) + 1
    return "rank-not-permutation"


def _rank_swap(doc: dict[str, Any]) -> str | None:
    domain = doc["domains"][0]["name"]
    mods = [m for m in doc["modules"]]
    for a in mods:
        for b in mods:
            sa, sb = a["stats"][domain], b["stats"][domain]
            if sa["grad_norm_mean"] > sb["grad_norm_mean"]:
                sa["rank"], sb["rank"] = sb["rank"], sa["rank"]
                return "rank-order-mismatch"
    return None


def _jensen(doc: dict[str, Any]) -> str | None:
    for m in doc["modules"]:
        for s in m["stats"].values():
            if s["grad_norm_mean"] > 1e-100:
                s["grad_norm_sq_mean"] = s["grad_norm_mean"] ** 2 * 0.5
                return "inconsistent-statistics"
    return None


def _weights(doc: dict[str, Any]) -> str:
    d = doc["domains"][0]
    d["weight"] = d["weight"] + 0.5 if d["weight"] <= 0.5 else d["weight"] - 0.5
    return "domain-weights-sum"


def _digest_case(doc: dict[str, Any]) -> str:
    doc["model"]["structure_digest"] = doc["model"]["structure_digest"].upper().replace("SHA256", "sha256")
    return (
        "bad-digest"
        if doc["model"]["structure_digest"] != doc["model"]["structure_digest"].lower()
        else "none"
    )


def _major(doc: dict[str, Any]) -> str:
    doc["spec_version"] = "2.0.0"
    return "unsupported-version"


def _missing(doc: dict[str, Any]) -> str:
    del doc["model"]["revision"]
    return "missing-field"


def _unknown(doc: dict[str, Any]) -> str:
    doc["spec_version"] = "1.0.0"
    doc["modules"][0]["colour"] = "blue"
    return "unknown-field"


def _unknown_domain(doc: dict[str, Any]) -> str:
    stats = doc["modules"][0]["stats"]
    stats["no-such-domain"] = next(iter(stats.values()))
    return "unknown-domain"


def _fit_status(doc: dict[str, Any]) -> str | None:
    fit = doc["domains"][0].get("heavy_tail")
    if fit is None:
        return None
    if fit["status"] == "ok":
        fit["status"] = "failed"
    else:
        fit["exponent"] = 1.2
    return "fit-status-mismatch"


def _unsafe_sidecar(doc: dict[str, Any]) -> str:
    doc["sidecars"] = [
        {
            "path": "../secrets.safetensors",
            "digest": "sha256:" + "0" * 64,
            "format": "safetensors",
            "granularity": "row",
        }
    ]
    return "unsafe-path"


def _aggregate(doc: dict[str, Any]) -> str:
    doc["method"]["min_examples_per_aggregate"] = doc["domains"][0]["examples"] + 1
    return "aggregate-too-small"


MUTATIONS: list[Mutation] = [
    _k_star_zero,
    _k_star_above_one,
    _duplicate_module,
    _negative_statistic,
    _rank_beyond,
    _rank_swap,
    _jensen,
    _weights,
    _digest_case,
    _major,
    _missing,
    _unknown,
    _unknown_domain,
    _fit_status,
    _unsafe_sidecar,
    _aggregate,
]


@settings(max_examples=30)
@given(VALID_BLUEPRINTS, st.sampled_from(MUTATIONS))
def test_single_mutation_is_rejected_with_its_code(doc: dict[str, Any], mutate: Mutation) -> None:
    broken = copy.deepcopy(doc)
    expected = mutate(broken)
    if expected is None or expected == "none":
        return  # mutation does not apply to this instance
    codes = {i.code for i in validate(broken) if i.is_error}
    assert expected in codes, (mutate.__name__, codes)
