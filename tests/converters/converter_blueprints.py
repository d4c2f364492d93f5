"""Valid blueprints for converter tests: a plain builder and a hypothesis strategy.

Drawing whole documents from the schema almost never satisfies the semantic rules (ranks must
follow the statistics, weights sum to 1, ...), so the strategy draws the free parts (names,
numbers, text, extensions) and derives the dependent ones, then checks the result with
`blueprint_format.validate`. Free text and extension values are drawn from the schema's own
subschemas with hypothesis-jsonschema, so odd Unicode and JSON shapes reach every container.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from blueprint_format import Blueprint, TensorInfo, from_json, load_schema, structure_digest, validate

ZERO_DIGEST = "sha256:" + "0" * 64


def build_document(
    modules: Sequence[tuple[str, int]],
    domains: Sequence[str] = ("general",),
    *,
    means: Sequence[Sequence[float]] | None = None,
    k_stars: Sequence[float | None] | None = None,
    structure: str = ZERO_DIGEST,
    combined: bool = True,
    description: str | None = None,
    extensions: dict[str, Any] | None = None,
    model_name: str = "test/model",
) -> dict[str, Any]:
    """A valid blueprint document for `modules` ((name, parameter count) pairs) and `domains`.

    means[d][i] is module i's grad_norm_mean on domain d (defaults derived from the index).
    """
    n = len(modules)
    if means is None:
        means = [[0.01 + ((i * 7 + d * 3) % 11) / 100 for i in range(n)] for d in range(len(domains))]
    if k_stars is None:
        k_stars = [0.25 if i % 2 == 0 else None for i in range(n)]
    weights = [1.0 / len(domains)] * len(domains)
    weights[-1] = 1.0 - sum(weights[:-1])

    def ranks(values: Sequence[float]) -> list[int]:
        order = sorted(range(len(values)), key=lambda i: (-values[i], i))
        out = [0] * len(values)
        for r, i in enumerate(order, 1):
            out[i] = r
        return out

    per_domain_ranks = [ranks(means[d]) for d in range(len(domains))]
    scores = [sum(weights[d] * means[d][i] for d in range(len(domains))) for i in range(n)]
    combined_ranks = ranks(scores)
    total = sum(p for _, p in modules)
    trainable = sum((k or 0.0) * p for k, (_, p) in zip(k_stars, modules, strict=True))
    shares = {"top_1": 0.2, "top_5": 0.3, "top_10": 0.4, "top_20": 0.55, "top_50": 0.8}
    doc: dict[str, Any] = {
        "spec_version": "1.0.0",
        "model": {"name": model_name, "revision": "main", "structure_digest": structure},
        "provenance": {"created": "2026-01-02T03:04:05Z", "generator": {"name": "tests", "version": "0"}},
        "method": {
            "estimator": "batch-gradient-norm",
            "loss": "cross-entropy",
            "min_examples_per_aggregate": 8,
        },
        "domains": [
            {
                "name": name,
                "weight": weights[d],
                "examples": 64,
                "batches": 4,
                "heavy_tail": {
                    "statistic": "grad_norm_mean",
                    "method": "csn-mle",
                    "exponent_convention": "rank-size",
                    "status": "ok",
                    "exponent": 0.75,
                    "x_min": 0.01,
                    "ks_distance": 0.1,
                    "sample_count": n,
                    "tail_count": n,
                    "mass_shares": shares,
                },
            }
            for d, name in enumerate(domains)
        ],
        "modules": [],
        "allocation": {
            "rule": {"name": "global-budget", "parameters": {"budget": 1.0}},
            "statistic": "grad_norm_mean",
            "granularity": "element",
            "cost_model": {"name": "linear", "fixed": 1.0, "per_parameter": 1e-6, "unit": "s"},
            "trainable_fraction": trainable / total,
        },
    }
    for i, (name, params) in enumerate(modules):
        stats = {}
        for d, dname in enumerate(domains):
            m = means[d][i]
            stats[dname] = {
                "grad_norm_mean": m,
                "grad_norm_median": m * 0.9,
                "grad_norm_sq_mean": m * m * 1.5,
                "rank": per_domain_ranks[d][i],
            }
        module: dict[str, Any] = {"name": name, "parameter_count": params, "stats": stats}
        if combined:
            module["combined"] = {"score": scores[i], "rank": combined_ranks[i]}
        if k_stars[i] is not None:
            module["k_star"] = k_stars[i]
        doc["modules"].append(module)
    if description is not None:
        doc["description"] = description
    if extensions:
        doc["extensions"] = extensions
    return doc


def build_blueprint(*args: Any, **kw: Any) -> Blueprint:
    """`build_document` validated into a Blueprint (fails loudly if the builder is wrong)."""
    doc = build_document(*args, **kw)
    issues = [i for i in validate(doc) if i.is_error]
    assert not issues, issues
    return from_json(doc)


def blueprint_for_tensors(tensors: Sequence[TensorInfo], **kw: Any) -> Blueprint:
    """A valid blueprint bound to a model with exactly these tensors (one module per tensor)."""
    modules = [(t.name, max(t.numel, 1)) for t in tensors if t.numel > 0]
    return build_blueprint(modules, structure=structure_digest(tensors), **kw)


def _subschema(name: str) -> dict[str, Any]:
    schema = load_schema()
    return {"$defs": schema["$defs"], **schema["$defs"][name]} if name in schema["$defs"] else {}


_MODULE_NAME = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,40}\Z")
_DOMAIN_NAME = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
_STAT = st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False)


def _disjoint(names: list[str]) -> bool:
    """No name is another's followed by `.`: modules are disjoint (SPEC 3.6)."""
    present = set(names)
    return not any(n[:i] in present for n in names for i, c in enumerate(n) if c == "." and i > 0)


def _safe_numbers(value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return abs(value) <= 2**53 - 1
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return all(_safe_numbers(v) for v in value)
    if isinstance(value, dict):
        return all(_safe_numbers(v) for v in value.values())
    return False


@st.composite
def blueprints(draw: st.DrawFn, max_modules: int = 6) -> Blueprint:
    """Valid blueprints: drawn names, statistics, k*, free text and extensions."""
    names = draw(st.lists(_MODULE_NAME, min_size=1, max_size=max_modules, unique=True).filter(_disjoint))
    domains = draw(st.lists(_DOMAIN_NAME, min_size=1, max_size=3, unique=True))
    params = draw(st.lists(st.integers(1, 10**9), min_size=len(names), max_size=len(names)))
    means = [draw(st.lists(_STAT, min_size=len(names), max_size=len(names))) for _ in domains]
    k_stars = draw(
        st.lists(
            st.none() | st.floats(min_value=1e-6, max_value=1.0), min_size=len(names), max_size=len(names)
        )
    )
    description = draw(st.none() | st.text(max_size=200))
    # Integers beyond 2**53 are outside the spec's number domain (RFC 8785 cannot encode them).
    extensions = draw(st.none() | from_schema(_subschema("extensions")).filter(_safe_numbers))
    doc = build_document(
        list(zip(names, params, strict=True)),
        domains,
        means=means,
        k_stars=k_stars,
        combined=draw(st.booleans()),
        description=description,
        extensions=extensions,
        structure=draw(st.from_regex(r"\Asha256:[0-9a-f]{64}\Z")),
    )
    # Whole sections drawn from the schema where no semantic rule ties them to the rest.
    if draw(st.booleans()):
        doc["provenance"] = draw(from_schema(_subschema("provenance")))
    if draw(st.booleans()):
        model = draw(from_schema(_subschema("model")))
        model.pop("parameter_count", None)  # must cover the modules' parameters; left out
        doc["model"] = model
    # Round-trip through JSON text: a blueprint is JSON values, never Python-only ones.
    doc = json.loads(json.dumps(doc))
    issues = [i for i in validate(doc) if i.is_error]
    assert not issues, (issues, doc)
    return from_json(doc)
