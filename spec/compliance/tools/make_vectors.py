#!/usr/bin/env python3
"""Generate the spec v1 compliance vectors: valid/, invalid/ and manifest.json.

Standard library only and deterministic: running it twice, on any machine, writes the same bytes.
The files it writes are the contract; this script only documents how they were made and lets a
maintainer change them consistently. Usage:

    python spec/compliance/tools/make_vectors.py            # rewrite spec/compliance/
    python spec/compliance/tools/make_vectors.py --out DIR  # write elsewhere (e.g. to compare)

Every valid document is checked here against an independent, naive implementation of the
semantic rules (`semantic_issues`), and every semantic-layer invalid vector is checked to break
exactly the rule it is named after, so a vector cannot silently test two things.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The spec version of these vectors (the manifest's); documents declare the lowest version that
#: defines the members they use (SPEC 1.4): DOC_VERSION unless they use a member added in 1.1.
SPEC_VERSION = "1.1.0"
DOC_VERSION = "1.0.0"
SCHEMA_URI = "https://gradient-blueprints.org/spec/v1/blueprint.schema.json"
SHARE_POINTS: tuple[tuple[str, float], ...] = (
    ("top_1", 0.01),
    ("top_5", 0.05),
    ("top_10", 0.10),
    ("top_20", 0.20),
    ("top_50", 0.50),
)
# Layers of the error codes the vectors use (a copy of blueprint_format.errors.ERROR_CODES'
# layers, kept here so this script needs nothing but the standard library; a test checks both agree).
LAYERS: dict[str, str] = {
    "empty-document": "parse",
    "not-utf8": "parse",
    "parse-error": "parse",
    "duplicate-key": "parse",
    "non-finite-number": "parse",
    "lone-surrogate": "parse",
    "not-an-object": "parse",
    "too-large": "limit",
    "too-deep": "limit",
    "too-many-values": "limit",
    "too-many-modules": "limit",
    "unsupported-version": "version",
    "bad-version": "version",
    "unknown-member": "version",
    "missing-field": "schema",
    "unknown-field": "schema",
    "wrong-type": "schema",
    "out-of-range": "schema",
    "negative-statistic": "schema",
    "k-star-out-of-range": "schema",
    "bad-digest": "schema",
    "bad-name": "schema",
    "bad-format": "schema",
    "bad-enum": "schema",
    "bad-rule": "schema",
    "bad-extension-name": "schema",
    "schema-violation": "schema",
    "duplicate-module": "semantic",
    "overlapping-modules": "semantic",
    "duplicate-domain": "semantic",
    "unknown-domain": "semantic",
    "missing-domain-stats": "semantic",
    "rank-not-permutation": "semantic",
    "rank-order-mismatch": "semantic",
    "inconsistent-statistics": "semantic",
    "shares-not-monotone": "semantic",
    "fit-status-mismatch": "semantic",
    "inconsistent-fit": "semantic",
    "domain-weights-sum": "semantic",
    "aggregate-too-small": "semantic",
    "budget-exceeded": "semantic",
    "parameter-count-mismatch": "semantic",
    "unsafe-path": "semantic",
    "data-selection-inconsistent": "semantic",
    "stability-incomplete": "semantic",
}
WEIGHT_TOLERANCE = 1e-6
MAX_SAFE_INTEGER = 2**53 - 1
BUDGET_TOLERANCE = 1e-9

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Small helpers


def fake_digest(label: str) -> str:
    """A well-formed digest derived from a label (the vectors bind to no real file)."""
    return "sha256:" + hashlib.sha256(label.encode("utf-8")).hexdigest()


def sig(x: float, digits: int = 6) -> float:
    """Round to `digits` significant digits so the files hold short, exact-looking numbers."""
    return float(f"{x:.{digits}g}")


def pretty(doc: Any) -> bytes:
    """The vectors' text form: 2-space indent, UTF-8 (not escaped), trailing newline."""
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def ptr_tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    assert pointer.startswith("/"), pointer
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def esc(token: str | int) -> str:
    """Escape one JSON-pointer reference token (RFC 6901)."""
    return str(token).replace("~", "~0").replace("/", "~1")


def _walk(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for t in tokens:
        node = node[int(t)] if isinstance(node, list) else node[t]
    return node


def get_at(doc: Any, pointer: str) -> Any:
    return _walk(doc, ptr_tokens(pointer))


def set_at(doc: Any, pointer: str, value: Any) -> None:
    tokens = ptr_tokens(pointer)
    parent = _walk(doc, tokens[:-1])
    if isinstance(parent, list):
        parent[int(tokens[-1])] = value
    else:
        parent[tokens[-1]] = value


def del_at(doc: Any, pointer: str) -> None:
    tokens = ptr_tokens(pointer)
    parent = _walk(doc, tokens[:-1])
    if isinstance(parent, list):
        del parent[int(tokens[-1])]
    else:
        assert tokens[-1] in parent, pointer
        del parent[tokens[-1]]


# ---------------------------------------------------------------------------------------------
# Building consistent documents (SPEC.md sections 7 to 10)


def mass_shares(values: list[float]) -> dict[str, float]:
    """SPEC 8.6: top_P = (v_1 + ... + v_kP) / T with k_P = ceil(P*n/100) in integer arithmetic."""
    ordered = sorted(values, reverse=True)
    n = len(ordered)
    total = math.fsum(ordered)
    out: dict[str, float] = {}
    for key, p in SHARE_POINTS:
        k = (round(p * 100) * n + 99) // 100
        out[key] = math.fsum(ordered[:k]) / total if total > 0 else k / n
    return out


def csn_fit(values: list[float]) -> dict[str, float | int]:
    """Continuous power-law MLE with x_min = the candidate with the smallest KS distance, under the
    rules of SPEC 8.2 as of 1.0.0 (every distinct value a candidate, no exponent range, KS over both
    steps of the empirical CDF). The vectors' fits are illustrative numbers that validators never
    recompute; they keep this rule so that the files stay as they are. Under the 1.1 rules their
    narrow synthetic values (all within a factor of 2) would fit no exponent below 3.
    spec/compliance/compute checks fitting itself, under the current rules.

    Returns alpha (pdf convention) with x_min, the KS distance and the tail count.
    """
    xs = sorted(v for v in values if v > 0)
    best: dict[str, float | int] | None = None
    for x_min in sorted(set(xs)):
        tail = [x for x in xs if x >= x_min]
        t = len(tail)
        log_sum = math.fsum(math.log(x / x_min) for x in tail)
        if log_sum <= 0:
            continue  # a single distinct value: no tail to fit
        alpha = 1 + t / log_sum
        ks = 0.0
        for i, x in enumerate(tail):
            model_cdf = 1 - (x / x_min) ** (1 - alpha)
            ks = max(ks, abs(model_cdf - i / t), abs(model_cdf - (i + 1) / t))
        if best is None or ks < best["ks_distance"]:
            best = {"alpha": alpha, "x_min": x_min, "ks_distance": ks, "tail_count": t}
    assert best is not None
    return best


def convert_exponent(alpha: float, convention: str) -> float:
    """SPEC 8.3: alpha (pdf) -> kappa = alpha - 1 (tail-index) -> beta = 1 / kappa (rank-size)."""
    return {"pdf": alpha, "tail-index": alpha - 1, "rank-size": 1 / (alpha - 1)}[convention]


def heavy_tail(
    values: list[float], status: str = "ok", message: str | None = None, convention: str = "rank-size"
) -> Doc:
    """A heavy-tail summary of `values` (the per-module grad_norm_mean of one domain)."""
    out: Doc = {
        "statistic": "grad_norm_mean",
        "method": "csn-mle",
        "exponent_convention": convention,
        "status": status,
        "sample_count": len(values),
    }
    if status == "ok":
        fit = csn_fit(values)
        out["exponent"] = sig(convert_exponent(float(fit["alpha"]), convention))
        out["x_min"] = fit["x_min"]
        out["ks_distance"] = sig(float(fit["ks_distance"]))
        out["tail_count"] = fit["tail_count"]
    if message is not None:
        out["message"] = message
    out["mass_shares"] = mass_shares(values)
    return out


def module_stats(mean: float, rank: int) -> Doc:
    """Per-domain statistics of one module, derived from its mean gradient norm.

    median < mean (right-skewed per-batch norms), mean square = 1.21 * mean^2 (coefficient of
    variation 0.46) and the norm of the mean gradient well below the mean norm (cancellation
    across batches), so every inequality of SPEC 7.3 holds with margin.
    """
    return {
        "grad_norm_mean": mean,
        "grad_norm_median": sig(mean * 0.93),
        "grad_norm_sq_mean": sig(mean * mean * 1.21),
        "mean_grad_norm": sig(mean * 0.38),
        "rank": rank,
    }


def ranks_desc(values: list[float]) -> list[int]:
    """SPEC 7.4: rank 1 = largest value; ties keep array order."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    ranks = [0] * len(values)
    for r, i in enumerate(order, start=1):
        ranks[i] = r
    return ranks


def combined_scores(grads: dict[str, list[float]], weights: dict[str, float]) -> list[float]:
    """SPEC 7.5: score_m = sum_d w_d * s_md / sum_m' s_m'd (a domain absent from `weights` weighs 0)."""
    n = len(next(iter(grads.values())))
    totals = {d: math.fsum(v) for d, v in grads.items()}
    return [
        math.fsum(w * grads[d][i] / totals[d] for d, w in weights.items() if totals[d] > 0) for i in range(n)
    ]


def select_whole_modules(rule: Doc, param_counts: list[int], scores: list[float]) -> list[float | None]:
    """SPEC 9.2 at module granularity: the k* (1 or absent) that `rule` selects."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    chosen: set[int] = set()
    if rule["name"] == "global-budget":
        limit = rule["parameters"]["budget"] * sum(param_counts)
        used = 0
        for i in order:
            if used + param_counts[i] > limit:
                break
            used += param_counts[i]
            chosen.add(i)
    elif rule["name"] == "mass-threshold":
        target = rule["parameters"]["threshold"] * math.fsum(scores)
        reached = 0.0
        for i in order:
            if reached >= target:
                break
            reached += scores[i]
            chosen.add(i)
    else:
        raise ValueError(rule["name"])
    return [1 if i in chosen else None for i in range(len(scores))]


def build_modules(
    names: list[str],
    param_counts: list[int],
    grads: dict[str, list[float]],
    weights: dict[str, float] | None,
    k_stars: list[float | None] | None = None,
    types: list[str] | None = None,
) -> list[Doc]:
    """Modules with stats for every domain in `grads`, ranks derived from the values, and (when
    `weights` is given) combined scores and ranks per SPEC 7.5."""
    domain_ranks = {d: ranks_desc(v) for d, v in grads.items()}
    modules: list[Doc] = []
    for i, name in enumerate(names):
        m: Doc = {"name": name}
        if types is not None:
            m["type"] = types[i]
        m["parameter_count"] = param_counts[i]
        m["stats"] = {d: module_stats(grads[d][i], domain_ranks[d][i]) for d in grads}
        modules.append(m)
    if weights is not None:
        scores = combined_scores(grads, weights)
        for m, score, rank in zip(modules, scores, ranks_desc(scores)):
            m["combined"] = {"score": score, "rank": rank}
    if k_stars is not None:
        for m, k in zip(modules, k_stars):
            if k is not None:
                m["k_star"] = k
    return modules


def trainable_fraction(modules: list[Doc]) -> float:
    """SPEC 9.1: sum of k* n_m over sum of n_m."""
    total = sum(m["parameter_count"] for m in modules)
    return float(math.fsum(m.get("k_star", 0) * m["parameter_count"] for m in modules) / total)


def skeleton(name: str, *, created: str = "2025-11-03T09:30:00Z", min_examples: int = 64) -> Doc:
    """The members every document needs, with a model, provenance and method."""
    return {
        "spec_version": DOC_VERSION,
        "model": {
            "name": name,
            "revision": "2f1c9a7e4b3d",
            "structure_digest": fake_digest("structure:" + name),
        },
        "provenance": {
            "created": created,
            "generator": {"name": "gradient-blueprints", "version": "0.1.0"},
        },
        "method": {
            "estimator": "batch-gradient-norm",
            "loss": "cross-entropy",
            "min_examples_per_aggregate": min_examples,
        },
    }


def linear_cost(per_parameter: float = 4.0e-9, fixed: float = 0.5) -> Doc:
    return {"name": "linear", "fixed": fixed, "per_parameter": per_parameter, "unit": "gpu-hours"}


# ---------------------------------------------------------------------------------------------
# The valid documents

# A 6-layer encoder with hidden size 384 (MiniLM-like): attention = 4 projections with bias,
# feed-forward = 384 -> 1536 -> 384 with biases.
ATTN_PARAMS = 4 * (384 * 384 + 384)
FFN_PARAMS = 384 * 1536 + 1536 + 1536 * 384 + 384
# Mean gradient norms per module, modelled on the seed's table (attn.0 0.052, ffn.0 0.033,
# attn.1 0.045); the biomedical domain peaks in the middle layers.
GENERAL_ATTN = [0.052, 0.045, 0.040, 0.037, 0.035, 0.047]
GENERAL_FFN = [0.033, 0.031, 0.036, 0.034, 0.039, 0.044]
BIO_ATTN = [0.041, 0.046, 0.055, 0.058, 0.049, 0.043]
BIO_FFN = [0.030, 0.037, 0.048, 0.051, 0.040, 0.035]
# k* per layer (element granularity); layer 0/1 are the seed's 0.15 / 0.25 / 0.13.
SEED_K = {"attention": [0.15, 0.13, 0.18, 0.2, 0.12, 0.1], "ffn": [0.25, 0.08, 0.1, 0.12, 0.09, 0.11]}
TWO_DOMAINS = {"general": 0.6, "biomedical": 0.4}


def transformer_doc(convention: str = "rank-size") -> Doc:
    """Realistic: a 6-layer transformer, two domains (general 0.6, biomedical 0.4)."""
    names: list[str] = []
    pcs: list[int] = []
    types: list[str] = []
    general: list[float] = []
    bio: list[float] = []
    ks: list[float | None] = []
    for layer in range(6):
        for part, pc, typ, g, b in (
            ("attention", ATTN_PARAMS, "BertAttention", GENERAL_ATTN, BIO_ATTN),
            ("ffn", FFN_PARAMS, "BertFeedForward", GENERAL_FFN, BIO_FFN),
        ):
            names.append(f"encoder.layer.{layer}.{part}")
            pcs.append(pc)
            types.append(typ)
            general.append(g[layer])
            bio.append(b[layer])
            ks.append(SEED_K[part][layer])
    doc = skeleton("example-org/minilm-6l-384h")
    doc["description"] = (
        "Blueprint for a 6-layer, 384-wide encoder measured on a general and a biomedical corpus; "
        "k* from a 15% global parameter budget at element granularity."
    )
    doc["model"].update(
        {
            "architecture": "BertModel",
            "weights_digest": fake_digest("weights:minilm-6l-384h"),
            "tensor_count": 101,
            "parameter_count": 22_713_216,
        }
    )
    doc["provenance"]["publisher"] = "Example Org"
    doc["method"].update(
        {
            "estimator": "per-example-gradient-norm",
            "batch_size": 32,
            "seq_len": 128,
            "precision": "fp32",
            "seed": 1234,
            "device_kind": "cpu",
            "world_size": 1,
            "min_examples_per_aggregate": 256,
        }
    )
    doc["domains"] = [
        {
            "name": "general",
            "weight": 0.6,
            "description": "Web text and encyclopedia paragraphs.",
            "source": "example-org/general-calibration@v3",
            "examples": 4096,
            "batches": 128,
            "tokens": 524_288,
            "data_fingerprint": fake_digest("data:general"),
            "heavy_tail": heavy_tail(general, convention=convention),
            "element_mass_shares": {
                "top_1": 0.09,
                "top_5": 0.27,
                "top_10": 0.43,
                "top_20": 0.62,
                "top_50": 0.88,
            },
        },
        {
            "name": "biomedical",
            "weight": 0.4,
            "description": "Abstracts of biomedical papers.",
            "source": "example-org/pubmed-abstracts-calibration@v1",
            "examples": 2048,
            "batches": 64,
            "tokens": 262_144,
            "data_fingerprint": fake_digest("data:biomedical"),
            "heavy_tail": heavy_tail(bio, convention=convention),
            "element_mass_shares": {
                "top_1": 0.11,
                "top_5": 0.31,
                "top_10": 0.5,
                "top_20": 0.69,
                "top_50": 0.91,
            },
        },
    ]
    doc["modules"] = build_modules(
        names, pcs, {"general": general, "biomedical": bio}, TWO_DOMAINS, ks, types
    )
    doc["allocation"] = {
        "rule": {"name": "global-budget", "parameters": {"budget": 0.15}},
        "statistic": "grad_norm_mean",
        "granularity": "element",
        "gain_model": "power:0.5",
        "cost_model": linear_cost(),
        "domain_weights": dict(TWO_DOMAINS),
        "trainable_fraction": trainable_fraction(doc["modules"]),
    }
    return doc


def minimal_doc() -> Doc:
    """Only required members: one domain, one module; a 50% module budget selects nothing."""
    doc = skeleton("example-org/tiny", min_examples=1)
    doc["domains"] = [{"name": "general", "weight": 1, "examples": 8, "batches": 1}]
    doc["modules"] = [
        {
            "name": "linear",
            "parameter_count": 10,
            "stats": {
                "general": {
                    "grad_norm_mean": 0.5,
                    "grad_norm_median": 0.5,
                    "grad_norm_sq_mean": 0.25,
                    "rank": 1,
                }
            },
        }
    ]
    doc["allocation"] = {
        "rule": {"name": "global-budget", "parameters": {"budget": 0.5}},
        "statistic": "grad_norm_mean",
        "granularity": "module",
        "cost_model": linear_cost(per_parameter=0, fixed=0),
    }
    return doc


def seed_table_doc() -> Doc:
    """Exactly the seed poster's table; three modules are too few for a heavy-tail fit."""
    grads = [0.052, 0.033, 0.045]
    doc = skeleton("example-org/seed-poster-model")
    doc["domains"] = [
        {
            "name": "general",
            "weight": 1.0,
            "examples": 512,
            "batches": 16,
            "heavy_tail": heavy_tail(
                grads, status="insufficient-data", message="3 modules; a fit needs at least 10"
            ),
        }
    ]
    doc["modules"] = build_modules(
        ["attn.0", "ffn.0", "attn.1"],
        [ATTN_PARAMS, FFN_PARAMS, ATTN_PARAMS],
        {"general": grads},
        None,
        [0.15, 0.25, 0.13],
    )
    doc["allocation"] = {
        "rule": {"name": "global-budget", "parameters": {"budget": 0.2}},
        "statistic": "grad_norm_mean",
        "granularity": "element",
        "cost_model": linear_cost(),
    }
    return doc


# The ten-module document every invalid vector mutates (it holds every optional member): five
# 768-wide blocks, modules in the order attn.0, ffn.0, attn.1, ffn.1, ...
BASE_NAMES = [f"{part}.{layer}" for layer in range(5) for part in ("attn", "ffn")]
BASE_PCS = [2_362_368, 4_722_432] * 5
BASE_GENERAL = [0.052, 0.033, 0.045, 0.031, 0.040, 0.036, 0.037, 0.034, 0.035, 0.039]
BASE_BIO = [0.041, 0.030, 0.046, 0.037, 0.055, 0.048, 0.058, 0.051, 0.049, 0.040]
BASE_K: list[float | None] = [0.15, 0.25, 0.13, None, 0.2, None, 0.2, None, None, None]


def base_doc() -> Doc:
    """A document with every optional member present; the invalid vectors mutate it."""
    doc = skeleton("example-org/five-layer-768h")
    doc["description"] = "Five transformer blocks, every optional member present."
    doc["model"].update(
        {
            "architecture": "GPT2Model",
            "weights_digest": fake_digest("weights:five-layer-768h"),
            "tensor_count": 62,
            "parameter_count": 60_000_000,
        }
    )
    doc["provenance"].update(
        {
            "publisher": "Example Org",
            "supersedes": fake_digest("blueprint:five-layer-768h:2025-10"),
            "change_note": "Recomputed after the October weight refresh.",
        }
    )
    doc["method"].update(
        {
            "batch_size": 16,
            "seq_len": 256,
            "precision": "bf16-autocast",
            "seed": 7,
            "device_kind": "cuda",
            "world_size": 2,
        }
    )
    doc["domains"] = [
        {
            "name": "general",
            "weight": 0.6,
            "description": "General web text.",
            "source": "example-org/general-calibration@v3",
            "examples": 1024,
            "batches": 64,
            "tokens": 262_144,
            "data_fingerprint": fake_digest("data:general"),
            "heavy_tail": heavy_tail(BASE_GENERAL),
            "element_mass_shares": {
                "top_1": 0.08,
                "top_5": 0.25,
                "top_10": 0.41,
                "top_20": 0.6,
                "top_50": 0.87,
            },
        },
        {
            "name": "biomedical",
            "weight": 0.4,
            "examples": 512,
            "batches": 32,
            "heavy_tail": heavy_tail(
                BASE_BIO, status="failed", message="bootstrap goodness-of-fit p = 0.02; no power-law tail"
            ),
        },
    ]
    doc["modules"] = build_modules(
        BASE_NAMES,
        BASE_PCS,
        {"general": BASE_GENERAL, "biomedical": BASE_BIO},
        TWO_DOMAINS,
        BASE_K,
        ["attention", "mlp"] * 5,
    )
    doc["allocation"] = {
        "rule": {"name": "global-budget", "parameters": {"budget": 0.1}},
        "statistic": "grad_norm_mean",
        "granularity": "element",
        "gain_model": "mass-share",
        "cost_model": linear_cost(),
        "domain_weights": dict(TWO_DOMAINS),
        "trainable_fraction": trainable_fraction(doc["modules"]),
    }
    doc["data_selection"] = {
        "method": "per-example-gradient-norm",
        "domain": "biomedical",
        "direction": "highest",
        "fraction": 0.3,
        "drop_top_fraction": 0.01,
        "examples_total": 512,
        "examples_selected": 153,
        "score_quantiles": {"p10": 0.8, "p50": 1.6, "p90": 3.9},
    }
    doc["sidecars"] = [
        {
            "path": "scores/element_scores.safetensors",
            "digest": fake_digest("sidecar:element"),
            "format": "safetensors",
            "granularity": "element",
            "statistic": "grad_sq_mean",
        },
        {
            "path": "row_scores.safetensors",
            "digest": fake_digest("sidecar:row"),
            "format": "safetensors",
            "granularity": "row",
        },
    ]
    doc["extensions"] = {"org.example.training": {"optimizer": "adamw", "lr": 0.0002}}
    return doc


def rule_doc(rule: Doc, granularity: str, k_stars: list[float | None] | None = None) -> Doc:
    """The ten-module shape with another allocation rule and granularity.

    At module granularity with a spec rule, k* are derived from the rule (SPEC 9.2).
    """
    doc = skeleton("example-org/five-layer-768h")
    doc["domains"] = [
        {"name": "general", "weight": 0.6, "examples": 1024, "batches": 64},
        {"name": "biomedical", "weight": 0.4, "examples": 512, "batches": 32},
    ]
    grads = {"general": BASE_GENERAL, "biomedical": BASE_BIO}
    if k_stars is None:
        k_stars = select_whole_modules(rule, BASE_PCS, combined_scores(grads, TWO_DOMAINS))
    doc["modules"] = build_modules(BASE_NAMES, BASE_PCS, grads, TWO_DOMAINS, k_stars)
    doc["allocation"] = {
        "rule": rule,
        "statistic": "grad_norm_mean",
        "granularity": granularity,
        "cost_model": linear_cost(),
        "trainable_fraction": trainable_fraction(doc["modules"]),
    }
    return doc


def failed_fit_doc() -> Doc:
    """Ten modules whose fit failed: status failed, no exponent, x_min or KS distance."""
    grads = [0.04, 0.039, 0.041, 0.0405, 0.0395, 0.04025, 0.03975, 0.04075, 0.0401, 0.0399]
    names = [f"blocks.{i}.mlp" for i in range(10)]
    doc = skeleton("example-org/flat-10")
    doc["domains"] = [
        {
            "name": "general",
            "weight": 1.0,
            "examples": 2000,
            "batches": 40,
            "heavy_tail": heavy_tail(
                grads, status="failed", message="all values within 5% of each other; no tail to fit"
            ),
        }
    ]
    doc["domains"][0]["heavy_tail"]["tail_count"] = 0
    doc["modules"] = build_modules(names, [1_000_000] * 10, {"general": grads}, None, [0.5] + [None] * 9)
    doc["allocation"] = {
        "rule": {"name": "global-budget", "parameters": {"budget": 0.05}},
        "statistic": "grad_norm_mean",
        "granularity": "row",
        "cost_model": linear_cost(),
    }
    return doc


def sidecars_doc() -> Doc:
    doc = transformer_doc()
    doc["description"] = "Element-level k* with element and row scores in safetensors sidecars."
    doc["sidecars"] = [
        {
            "path": "blueprint/element_scores.safetensors",
            "digest": fake_digest("sidecar:element-scores"),
            "format": "safetensors",
            "granularity": "element",
            "statistic": "grad_sq_mean",
        },
        {
            "path": "row_scores.safetensors",
            "digest": fake_digest("sidecar:row-scores"),
            "format": "safetensors",
            "granularity": "row",
            "statistic": "grad_norm_mean",
        },
        {
            "path": "scores/v2/more-scores..safetensors",
            "digest": fake_digest("sidecar:more"),
            "format": "safetensors",
            "granularity": "element",
        },
    ]
    return doc


ELEMENT_RULE = {"name": "global-budget", "parameters": {"budget": 0.1}}


def data_selection_doc() -> Doc:
    doc = rule_doc(ELEMENT_RULE, "element", BASE_K)
    doc["description"] = "Parameter selection plus a data-selection summary (aggregates only)."
    doc["data_selection"] = {
        "method": "per-example-gradient-norm",
        "domain": "biomedical",
        "direction": "highest",
        "fraction": 0.3,
        "drop_top_fraction": 0.01,
        "examples_total": 512,
        "examples_selected": 154,
        "score_quantiles": {"p10": 0.8, "p50": 1.6, "p90": 3.9},
    }
    return doc


def data_selection_all_domains_doc() -> Doc:
    doc = minimal_doc()
    doc["data_selection"] = {
        "method": "el2n",
        "direction": "lowest",
        "fraction": 1,
        "examples_total": 8,
        "examples_selected": 8,
        "score_quantiles": {"p10": 0.5, "p50": 0.5, "p90": 0.5},
    }
    return doc


def extensions_doc() -> Doc:
    doc = rule_doc(ELEMENT_RULE, "element", BASE_K)
    doc["extensions"] = {
        "org.example.peft": {
            "target_modules": ["attn.0", "ffn.0", "attn.1"],
            "rank_pattern": {"attn\\.\\d+": 8, "ffn\\.\\d+": 16},
            "nested": {"a": {"b": {"c": [1, 2.5, None, True, "text", {"d": []}]}}},
        },
        "x-notes": "free-form",
        "x-benchmark.results": [
            {"task": "pubmedqa", "accuracy": 0.71},
            {"task": "medmcqa", "accuracy": 0.52},
        ],
        "com.example-lab.v2": {},
        "x-null": None,
    }
    return doc


def depth_limit_doc() -> Doc:
    """Nesting exactly at the limit: top object (1), extensions (2), then 30 arrays (3..32)."""
    doc = minimal_doc()
    deep: Any = 0
    for _ in range(30):
        deep = [deep]
    doc["extensions"] = {"x-deep": deep}
    return doc


def schema_member_doc() -> Doc:
    doc = {"$schema": SCHEMA_URI}
    doc.update(minimal_doc())
    return doc


def newer_minor_doc() -> Doc:
    doc = minimal_doc()
    doc["spec_version"] = "1.3.0"
    doc["calibration_budget"] = {"gpu_hours": 0.5, "energy_kwh": 0.2}
    return doc


def newer_minor_nested_doc() -> Doc:
    doc = minimal_doc()
    doc["spec_version"] = "1.12.4"
    doc["model"]["license"] = "apache-2.0"
    doc["modules"][0]["stats"]["general"]["grad_norm_p90"] = 0.9
    return doc


def newer_minor_rule_parameter_doc() -> Doc:
    doc = minimal_doc()
    doc["spec_version"] = "1.2.0"
    doc["allocation"]["rule"]["parameters"]["min_module_fraction"] = 0.01
    return doc


def patch_version_doc() -> Doc:
    doc = minimal_doc()
    doc["spec_version"] = "1.0.7"
    return doc


def provenance_doc() -> Doc:
    doc = minimal_doc()
    doc["provenance"].update(
        {
            "created": "2026-01-15T08:00:00.123456+01:00",
            "publisher": "Example Org Model Releases",
            "supersedes": fake_digest("blueprint:tiny:2025-11"),
            "change_note": "Model revision 2f1c9a7e4b3d replaced 81aa02d; statistics recomputed on the same data.",
        }
    )
    return doc


def integral_floats_doc() -> Doc:
    """Counts written as integral floats (5.0); JSON Schema counts them as integers."""
    doc = seed_table_doc()
    doc["method"]["min_examples_per_aggregate"] = 64.0
    doc["method"]["batch_size"] = 32.0
    doc["method"]["seed"] = 0.0
    doc["model"]["parameter_count"] = 5_000_000.0
    doc["domains"][0]["examples"] = 512.0
    doc["domains"][0]["batches"] = 16.0
    doc["domains"][0]["heavy_tail"]["sample_count"] = 3.0
    for m in doc["modules"]:
        m["parameter_count"] = float(m["parameter_count"])
        m["stats"]["general"]["rank"] = float(m["stats"]["general"]["rank"])
    return doc


def unicode_doc() -> Doc:
    doc = rule_doc(ELEMENT_RULE, "element", BASE_K)
    doc["description"] = (
        'Blueprint für ein Modell — 生物医学 calibration, naïve café ✓ 🧬 (non-BMP) and "quotes".'
    )
    doc["domains"][0]["description"] = "Allgemeiner Text / texte général / 一般文本"
    doc["domains"][1]["description"] = "Biomédical: résumés d'articles, Ωμέγα-3 \u2028 line separator"
    doc["provenance"]["publisher"] = "Лаборатория Пример"
    doc["provenance"]["change_note"] = "Première version.\nSecond line after an escaped newline.\ttab."
    return doc


def tf_names_doc() -> Doc:
    """Module names with '/', ':' and '_' (TensorFlow-style paths) and a leading underscore."""
    doc = rule_doc(ELEMENT_RULE, "element", BASE_K)
    for i, m in enumerate(doc["modules"]):
        layer, part = divmod(i, 2)
        m["name"] = f"bert/encoder/layer_{layer}/{('attention', 'ffn')[part]}:0"
    doc["modules"][-1]["name"] = "_orig_mod.bert/encoder/layer_4/ffn"
    return doc


def ties_doc() -> Doc:
    """Two modules with equal grad_norm_mean, ranked in reverse array order (SPEC 7.4 forbids only
    a smaller rank with a strictly smaller value)."""
    grads = [0.03, 0.05, 0.05, 0.01]
    rule = {"name": "global-budget", "parameters": {"budget": 0.5}}
    doc = skeleton("example-org/ties")
    doc["domains"] = [{"name": "general", "weight": 1.0, "examples": 100, "batches": 10}]
    scores = combined_scores({"general": grads}, {"general": 1.0})
    ks = select_whole_modules(rule, [100] * 4, scores)
    doc["modules"] = build_modules(["a", "b", "c", "d"], [100] * 4, {"general": grads}, {"general": 1.0}, ks)
    for key in ("stats", "combined"):
        b, c = doc["modules"][1][key], doc["modules"][2][key]
        if key == "stats":
            b, c = b["general"], c["general"]
        b["rank"], c["rank"] = c["rank"], b["rank"]
    doc["allocation"] = {
        "rule": rule,
        "statistic": "grad_norm_mean",
        "granularity": "module",
        "cost_model": linear_cost(),
    }
    return doc


def ten_domains_doc() -> Doc:
    """Ten domains of weight 0.1: the float sum is 0.9999999999999999, within the 1e-6 tolerance."""
    names = [f"domain-{i}" for i in range(10)]
    assert sum([0.1] * 10) != 1.0
    doc = skeleton("example-org/ten-domains", min_examples=10)
    doc["domains"] = [{"name": n, "weight": 0.1, "examples": 10, "batches": 1} for n in names]
    grads = {n: [sig(0.02 + 0.001 * i), sig(0.03 - 0.001 * i)] for i, n in enumerate(names)}
    weights = {"domain-0": 0.7, "domain-9": 0.3}
    rule = {"name": "mass-threshold", "parameters": {"threshold": 0.5}}
    ks = select_whole_modules(rule, [4096, 4096], combined_scores(grads, weights))
    doc["modules"] = build_modules(["layers.0", "layers.1"], [4096, 4096], grads, weights, ks)
    doc["allocation"] = {
        "rule": rule,
        "statistic": "grad_norm_mean",
        "granularity": "module",
        "cost_model": linear_cost(),
        "domain_weights": weights,
    }
    return doc


def domain_weights_override_doc() -> Doc:
    """allocation.domain_weights re-weights the domains (biomedical 0.8) and drives `combined`."""
    weights = {"general": 0.2, "biomedical": 0.8}
    rule = {"name": "global-budget", "parameters": {"budget": 0.3}}
    grads = {"general": BASE_GENERAL, "biomedical": BASE_BIO}
    doc = rule_doc(rule, "module", [None] * 10)
    ks = select_whole_modules(rule, BASE_PCS, combined_scores(grads, weights))
    doc["modules"] = build_modules(BASE_NAMES, BASE_PCS, grads, weights, ks)
    doc["allocation"]["domain_weights"] = weights
    doc["allocation"]["trainable_fraction"] = trainable_fraction(doc["modules"])
    return doc


def boundary_doc() -> Doc:
    """Values exactly at their allowed bounds."""
    long_domain = "b" + "-" * 62 + "z"  # 64 characters, the maximum
    long_module = "m" + "." * 510 + "x"  # 512 characters, the maximum
    assert len(long_domain) == 64 and len(long_module) == 512
    doc = skeleton("example-org/boundaries", created="2026-12-31T23:59:59.999999999-23:59", min_examples=1)
    doc["description"] = ""
    doc["model"]["tensor_count"] = MAX_SAFE_INTEGER
    doc["model"]["parameter_count"] = MAX_SAFE_INTEGER
    doc["provenance"]["change_note"] = ""
    doc["method"].update({"batch_size": 1, "seed": 0, "world_size": 1})
    zero = {"grad_norm_mean": 0, "grad_norm_median": 0, "grad_norm_sq_mean": 0, "mean_grad_norm": 0}
    doc["domains"] = [
        {
            "name": "a",
            "weight": 1,
            "examples": 1,
            "batches": 1,
            "heavy_tail": {
                "statistic": "grad_norm_mean",
                "method": "x-" + "z" * 63,
                "exponent_convention": "pdf",
                "status": "ok",
                "exponent": 1e6,
                "x_min": 0.5,
                "ks_distance": 0,
                "sample_count": 2,
                "tail_count": 1,
                "message": "",
                "mass_shares": mass_shares([0.5, 0]),
            },
        },
        {
            "name": long_domain,
            "weight": 0.0,
            "examples": 1,
            "batches": 1,
            "heavy_tail": {
                "statistic": "grad_norm_sq_mean",
                "method": "csn-mle",
                "exponent_convention": "tail-index",
                "status": "insufficient-data",
                "sample_count": 2,
                "tail_count": 0,
                "mass_shares": mass_shares([0, 0]),
            },
        },
    ]
    doc["modules"] = [
        {
            "name": "m0",
            "parameter_count": 1,
            "stats": {
                "a": {"grad_norm_mean": 0.5, "grad_norm_median": 1e300, "grad_norm_sq_mean": 0.25, "rank": 1},
                long_domain: {**zero, "rank": 1},
            },
            "combined": {"score": 1.0, "rank": 1},
            "k_star": 1,
        },
        {
            "name": long_module,
            "parameter_count": MAX_SAFE_INTEGER - 1,
            "stats": {"a": {**zero, "rank": 2}, long_domain: {**zero, "rank": 2}},
            "combined": {"score": 0, "rank": 2},
        },
    ]
    doc["allocation"] = {
        "rule": {"name": "global-budget", "parameters": {"budget": 1}},
        "statistic": "grad_norm_mean",
        "granularity": "element",
        "cost_model": linear_cost(per_parameter=0, fixed=0),
        "domain_weights": {"a": 1, long_domain: 0},
        "trainable_fraction": trainable_fraction(doc["modules"]),
    }
    doc["data_selection"] = {
        "method": "x",
        "direction": "lowest",
        "fraction": 0.001,
        "drop_top_fraction": 0,
        "examples_total": 1000,
        "examples_selected": 0,
        "score_quantiles": {"p10": 0, "p50": 0, "p90": 1e300},
    }
    doc["sidecars"] = []
    doc["extensions"] = {}
    return doc


STABILITY = {
    "method": "batch-bootstrap",
    "statistic": "grad_norm_mean",
    "resamples": 200,
    "confidence": 0.9,
    "seed": 7,
    "rank_correlation": 0.962,
    "selection": {"budget": 0.1, "overlap": 0.87},
}


def stability_doc() -> Doc:
    """base_doc() at 1.1.0 with a bootstrap stability on `general` and intervals on every module's
    general statistics (SPEC 7.7); `biomedical` has none."""
    doc = base_doc()
    doc["spec_version"] = "1.1.0"
    doc["domains"][0]["stability"] = copy.deepcopy(STABILITY)
    for m in doc["modules"]:
        s = m["stats"]["general"]
        s["interval"] = {"lower": sig(s["grad_norm_mean"] * 0.82), "upper": sig(s["grad_norm_mean"] * 1.21)}
    return doc


def newer_minor_stability_doc() -> Doc:
    doc = stability_doc()
    doc["spec_version"] = "1.4.0"
    doc["domains"][0]["stability"]["block_length"] = 4
    return doc


def valid_vectors() -> list[tuple[str, str, Doc, list[dict[str, str]]]]:
    """(stem, description, document, expected warnings)."""
    return [
        ("minimal", "Only the required members: one domain, one module, no k*.", minimal_doc(), []),
        (
            "transformer-6-layer-two-domains",
            "Realistic: 6-layer, 384-wide encoder, domains general (0.6) and biomedical (0.4), per-domain "
            "statistics and ranks, combined scores, rank-size heavy-tail fits with status ok, module and "
            "element mass shares, k* under a 15% global budget (seed table: attn.0 0.052/0.15, ffn.0 0.033/0.25, "
            "attn.1 0.045/0.13).",
            transformer_doc(),
            [],
        ),
        (
            "seed-table-insufficient-data",
            "The seed poster's three rows exactly; the heavy-tail summary says insufficient-data and has no "
            "exponent, x_min or ks_distance, but keeps its non-parametric shares.",
            seed_table_doc(),
            [],
        ),
        (
            "all-optional-members",
            "Every optional member present; the base the invalid vectors mutate.",
            base_doc(),
            [],
        ),
        (
            "heavy-tail-failed",
            "A failed fit: status failed with a message, tail_count 0, no exponent, x_min or ks_distance; row granularity.",
            failed_fit_doc(),
            [],
        ),
        (
            "heavy-tail-tail-index-convention",
            "The realistic document with its exponents in the tail-index convention (kappa = 1 / beta).",
            transformer_doc("tail-index"),
            [],
        ),
        (
            "heavy-tail-pdf-convention",
            "The realistic document with its exponents in the pdf convention (alpha = 1 + kappa).",
            transformer_doc("pdf"),
            [],
        ),
        (
            "rule-global-budget-module-granularity",
            "global-budget at module granularity: modules in combined-score order while the budget holds, k* = 1.",
            rule_doc({"name": "global-budget", "parameters": {"budget": 0.25}}, "module"),
            [],
        ),
        (
            "rule-mass-threshold-module-granularity",
            "mass-threshold at module granularity: the shortest prefix reaching half the combined score, k* = 1.",
            rule_doc({"name": "mass-threshold", "parameters": {"threshold": 0.5}}, "module"),
            [],
        ),
        (
            "rule-marginal-row-granularity",
            "marginal rule (eta, max_fraction) at row granularity.",
            rule_doc(
                {"name": "marginal", "parameters": {"eta": 0.002, "max_fraction": 0.5}},
                "row",
                [0.4, 0.05, 0.5, 0.02, 0.3, None, 0.35, None, 0.1, None],
            ),
            [],
        ),
        (
            "rule-custom-x",
            "A custom x- rule with nested parameters, module granularity.",
            rule_doc(
                {
                    "name": "x-lisa-random-layers",
                    "parameters": {"layers_per_step": 2, "schedule": {"period": 50, "always": ["ffn.4"]}},
                },
                "module",
                [1, 1, None, None, None, None, None, None, 1, 1],
            ),
            [],
        ),
        (
            "sidecars",
            "Element and row score sidecars with relative POSIX paths ('..' inside a name is fine).",
            sidecars_doc(),
            [],
        ),
        ("data-selection", "A data-selection summary for one declared domain.", data_selection_doc(), []),
        (
            "data-selection-no-domain",
            "A data-selection summary over all domains that keeps every example (fraction 1), equal quantiles.",
            data_selection_all_domains_doc(),
            [],
        ),
        (
            "extensions",
            "Extensions with reverse-DNS and x- names holding nested values (objects, arrays, null, booleans).",
            extensions_doc(),
            [],
        ),
        (
            "depth-at-limit",
            "Nesting depth exactly 32 (top-level object, extensions, 30 nested arrays): allowed.",
            depth_limit_doc(),
            [],
        ),
        ("schema-member", 'A "$schema" member naming the schema\'s $id.', schema_member_doc(), []),
        (
            "newer-minor-unknown-member",
            "spec_version 1.3.0 with a top-level member unknown to 1.0: valid for a 1.0 reader, which warns "
            "unknown-member and ignores it.",
            newer_minor_doc(),
            [{"code": "unknown-member", "path": "/calibration_budget"}],
        ),
        (
            "newer-minor-nested-unknown-members",
            "spec_version 1.12.4 with unknown members inside model and inside module statistics: each is "
            "ignored with an unknown-member warning.",
            newer_minor_nested_doc(),
            [
                {"code": "unknown-member", "path": "/model/license"},
                {"code": "unknown-member", "path": "/modules/0/stats/general/grad_norm_p90"},
            ],
        ),
        (
            "newer-minor-rule-parameter",
            "spec_version 1.2.0 with a parameter unknown to 1.0 inside a known rule's parameters: the rule "
            "is still recognised, and the parameter is ignored with an unknown-member warning (SPEC 14).",
            newer_minor_rule_parameter_doc(),
            [{"code": "unknown-member", "path": "/allocation/rule/parameters/min_module_fraction"}],
        ),
        (
            "patch-version",
            "spec_version 1.0.7: a patch release of 1.0, read like 1.0.0.",
            patch_version_doc(),
            [],
        ),
        (
            "provenance-supersedes",
            "Refresh provenance: supersedes (by digest), change_note, a fractional-second timestamp with offset.",
            provenance_doc(),
            [],
        ),
        (
            "integral-floats",
            "Counts and ranks written as integral floats (5.0); JSON Schema counts them as integers.",
            integral_floats_doc(),
            [],
        ),
        (
            "boundary-values",
            "Values at their bounds: counts of 2^53 - 1, k* = 1, weights 0 and 1, zero statistics, a "
            "statistic of 1e300, exponent 1e6, KS distance 0, shares of 1, a 512-character module name, a "
            "64-character domain name, 9 fractional digits in the timestamp, empty strings and arrays.",
            boundary_doc(),
            [],
        ),
        ("unicode", "Non-ASCII text (including non-BMP and U+2028) in descriptions.", unicode_doc(), []),
        ("module-names-paths", "Module names with '/', ':' and a leading underscore.", tf_names_doc(), []),
        (
            "rank-ties",
            "Two modules with equal statistics and equal combined scores, ranked against document order: "
            "only a smaller rank with a strictly smaller value is an error.",
            ties_doc(),
            [],
        ),
        (
            "ten-domains-float-sum",
            "Ten domains weighing 0.1 each (floating-point sum 0.9999999999999999, within tolerance); the "
            "allocation weights only two of them (the others weigh 0).",
            ten_domains_doc(),
            [],
        ),
        (
            "domain-weights-override",
            "allocation.domain_weights differ from the domains' defaults and drive the combined ranking.",
            domain_weights_override_doc(),
            [],
        ),
        (
            "stability",
            "spec_version 1.1.0: a batch-bootstrap stability on domain general (200 resamples, 90% "
            "intervals, rank correlation, selection overlap at the allocation's budget) and an interval in "
            "every module's general statistics; biomedical has neither (SPEC 7.7).",
            stability_doc(),
            [],
        ),
        (
            "newer-minor-stability-member",
            "spec_version 1.4.0 with a member unknown to 1.1 inside a stability: the stability is still "
            "validated, and the member is ignored with an unknown-member warning.",
            newer_minor_stability_doc(),
            [{"code": "unknown-member", "path": "/domains/0/stability/block_length"}],
        ),
    ]


# ---------------------------------------------------------------------------------------------
# An independent, naive check of the semantic rules (for self-checking the vectors only)


def _shares_issues(shares: Doc, path: str) -> list[tuple[str, str]]:
    prev = 0.0
    for key, p in SHARE_POINTS:
        value = shares[key]
        if value < prev - BUDGET_TOLERANCE or value < p - BUDGET_TOLERANCE:
            return [("shares-not-monotone", f"{path}/{key}")]
        prev = value
    return []


def _rank_issues(entries: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """entries: (rank pointer, value, rank). Permutation of 1..N, and rank order agrees with value."""
    n = len(entries)
    seen: set[int] = set()
    for path, _value, rank in entries:
        if not 1 <= rank <= n or rank in seen:
            return [("rank-not-permutation", path)]
        seen.add(int(rank))
    ordered = sorted(entries, key=lambda e: e[2])
    for (_, v1, _r1), (p2, v2, _r2) in itertools.pairwise(ordered):
        if v2 > v1:
            return [("rank-order-mismatch", p2)]
    return []


def _unsafe(path: str) -> bool:
    segments = path.split("/")
    return (
        path == ""
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or (len(path) >= 2 and path[1] == ":" and path[0].isalpha())
        or ".." in segments
    )


def _stability_issues(doc: Doc) -> list[tuple[str, str]]:
    """SPEC 7.7 and 14: 1.1 members only from 1.1; intervals exactly on domains with a stability."""
    minor = int(doc["spec_version"].split(".")[1])
    newer = []
    if minor < 1:
        newer += [("unknown-field", f"/domains/{i}/stability") for i, d in enumerate(doc["domains"]) if "stability" in d]
        newer += [
            ("unknown-field", f"/modules/{i}/stats/{esc(k)}/interval")
            for i, m in enumerate(doc["modules"])
            for k, s in m["stats"].items()
            if "interval" in s
        ]
    if newer:
        return newer
    out = []
    with_stability = {d["name"] for d in doc["domains"] if "stability" in d}
    for i, m in enumerate(doc["modules"]):
        for k, s in m["stats"].items():
            where = f"/modules/{i}/stats/{esc(k)}/interval"
            if ("interval" in s) != (k in with_stability):
                out.append(("stability-incomplete", where))
            elif "interval" in s and s["interval"]["lower"] > s["interval"]["upper"]:
                out.append(("inconsistent-statistics", where))
    return out


def semantic_issues(doc: Doc) -> list[tuple[str, str]]:
    """(code, path) of every semantic rule the (schema-valid) document breaks."""
    out: list[tuple[str, str]] = []
    domains = doc["domains"]
    modules = doc["modules"]
    allocation = doc["allocation"]
    declared: list[str] = []
    for i, d in enumerate(domains):
        if d["name"] in declared:
            out.append(("duplicate-domain", f"/domains/{i}/name"))
        else:
            declared.append(d["name"])
    if abs(math.fsum(d["weight"] for d in domains) - 1) > WEIGHT_TOLERANCE:
        out.append(("domain-weights-sum", "/domains"))
    dw = allocation.get("domain_weights")
    if dw is not None:
        for k in dw:
            if k not in declared:
                out.append(("unknown-domain", f"/allocation/domain_weights/{esc(k)}"))
        if abs(math.fsum(dw.values()) - 1) > WEIGHT_TOLERANCE:
            out.append(("domain-weights-sum", "/allocation/domain_weights"))
    min_ex = doc["method"]["min_examples_per_aggregate"]
    for i, d in enumerate(domains):
        if d["examples"] < min_ex:
            out.append(("aggregate-too-small", f"/domains/{i}/examples"))
        ht = d.get("heavy_tail")
        if ht is not None:
            base = f"/domains/{i}/heavy_tail"
            numbers = [k in ht for k in ("exponent", "x_min", "ks_distance")]
            if (ht["status"] == "ok" and not all(numbers)) or (ht["status"] != "ok" and any(numbers)):
                out.append(("fit-status-mismatch", base + "/status"))
            if ht.get("tail_count", 0) > ht["sample_count"]:
                out.append(("inconsistent-fit", base + "/tail_count"))
            out += _shares_issues(ht["mass_shares"], base + "/mass_shares")
        if "element_mass_shares" in d:
            out += _shares_issues(d["element_mass_shares"], f"/domains/{i}/element_mass_shares")
    out += _stability_issues(doc)
    names: set[str] = set()
    for i, m in enumerate(modules):
        if m["name"] in names:
            out.append(("duplicate-module", f"/modules/{i}/name"))
        names.add(m["name"])
    all_names = {m["name"] for m in modules}
    for i, m in enumerate(modules):
        # SPEC 3.6: disjoint modules; a name inside another module's dotted prefix overlaps it.
        if any(m["name"].startswith(other + ".") for other in all_names):
            out.append(("overlapping-modules", f"/modules/{i}/name"))
    for i, m in enumerate(modules):
        for key in m["stats"]:
            if key not in declared:
                out.append(("unknown-domain", f"/modules/{i}/stats/{esc(key)}"))
        if any(d not in m["stats"] for d in declared):
            out.append(("missing-domain-stats", f"/modules/{i}/stats"))
        for key, s in m["stats"].items():
            p = f"/modules/{i}/stats/{esc(key)}"
            if s["grad_norm_sq_mean"] < s["grad_norm_mean"] ** 2 * (1 - 1e-6):
                out.append(("inconsistent-statistics", p + "/grad_norm_sq_mean"))
            if "mean_grad_norm" in s and s["mean_grad_norm"] > s["grad_norm_mean"] * (1 + 1e-6):
                out.append(("inconsistent-statistics", p + "/mean_grad_norm"))
        if allocation["granularity"] == "module" and m.get("k_star", 1) != 1:
            out.append(("k-star-out-of-range", f"/modules/{i}/k_star"))
    for d in declared:
        entries = [
            (f"/modules/{i}/stats/{esc(d)}/rank", m["stats"][d]["grad_norm_mean"], m["stats"][d]["rank"])
            for i, m in enumerate(modules)
            if d in m["stats"]
        ]
        out += _rank_issues(entries)
    with_combined = [i for i, m in enumerate(modules) if "combined" in m]
    if with_combined and len(with_combined) != len(modules):
        missing = next(i for i, m in enumerate(modules) if "combined" not in m)
        out.append(("rank-not-permutation", f"/modules/{missing}"))
    elif with_combined:
        out += _rank_issues(
            [
                (f"/modules/{i}/combined/rank", m["combined"]["score"], m["combined"]["rank"])
                for i, m in enumerate(modules)
            ]
        )
    rule = allocation["rule"]
    params = rule["parameters"]
    total = sum(m["parameter_count"] for m in modules)
    selected = math.fsum(m.get("k_star", 0) * m["parameter_count"] for m in modules)
    limit_key = {"global-budget": "budget", "marginal": "max_fraction"}.get(rule["name"])
    if (
        limit_key in params
        and selected > params[limit_key] * total * (1 + BUDGET_TOLERANCE) + BUDGET_TOLERANCE
    ):
        out.append(("budget-exceeded", f"/allocation/rule/parameters/{limit_key}"))
    stated = allocation.get("trainable_fraction")
    if stated is not None and abs(stated - selected / total) > 1e-6 * max(abs(stated), 1e-300):
        out.append(("inconsistent-statistics", "/allocation/trainable_fraction"))
    model_pc = doc["model"].get("parameter_count")
    if model_pc is not None and total > model_pc:
        out.append(("parameter-count-mismatch", "/model/parameter_count"))
    for i, s in enumerate(doc.get("sidecars", [])):
        if _unsafe(s["path"]):
            out.append(("unsafe-path", f"/sidecars/{i}/path"))
    ds = doc.get("data_selection")
    if ds is not None:
        too_many = ds["examples_selected"] > ds["examples_total"]
        off_fraction = abs(ds["examples_selected"] - ds["fraction"] * ds["examples_total"]) > 1
        if too_many or off_fraction:
            out.append(("data-selection-inconsistent", "/data_selection/examples_selected"))
        if ds["fraction"] + ds.get("drop_top_fraction", 0) > 1 + BUDGET_TOLERANCE:
            out.append(("data-selection-inconsistent", "/data_selection/drop_top_fraction"))
        q = ds.get("score_quantiles")
        if q is not None and not q["p10"] <= q["p50"] <= q["p90"]:
            out.append(("data-selection-inconsistent", "/data_selection/score_quantiles"))
        if "domain" in ds and ds["domain"] not in declared:
            out.append(("unknown-domain", "/data_selection/domain"))
        if ds["examples_total"] < min_ex:
            out.append(("aggregate-too-small", "/data_selection/examples_total"))
    return out


def check_producer_formulas(doc: Doc) -> None:
    """Assert what SPEC requires of producers beyond the validator's rules (7.4, 7.5, 8.6)."""
    modules = doc["modules"]
    weights = doc["allocation"].get("domain_weights") or {d["name"]: d["weight"] for d in doc["domains"]}
    grads = {d["name"]: [m["stats"][d["name"]]["grad_norm_mean"] for m in modules] for d in doc["domains"]}
    if "combined" in modules[0]:
        for m, expected in zip(modules, combined_scores(grads, weights)):
            assert abs(m["combined"]["score"] - expected) <= 1e-12 * max(expected, 1e-300), (
                m["name"],
                expected,
            )
    for d in doc["domains"]:
        ht = d.get("heavy_tail")
        if ht is not None and ht["statistic"] == "grad_norm_mean":
            assert ht["mass_shares"] == mass_shares(grads[d["name"]]), d["name"]
            assert ht["sample_count"] == len(modules)


# ---------------------------------------------------------------------------------------------
# The invalid documents


class Vector:
    """One invalid vector: its file stem, description, layer, expected errors and content.

    The layer is where the broken rule is checked: normally the layer of its code, but a rule of
    the prose (e.g. k* = 1 at module granularity) reports a schema-table code from the semantic layer.
    """

    def __init__(
        self,
        stem: str,
        description: str,
        errors: list[tuple[str, str]],
        content: Doc | bytes,
        layer: str | None = None,
    ) -> None:
        self.stem = stem
        self.description = description
        self.errors = errors
        self.content = content
        layers = {LAYERS[code] for code, _ in errors}
        assert len(layers) == 1, (stem, layers)
        self.layer = layer or layers.pop()
        assert stem.split("--")[0] == errors[0][0], stem


def mutated(base: Doc, *edits: tuple[str, str, Any]) -> Doc:
    """A deep copy of `base` with edits ("set", pointer, value) / ("del", pointer, None) applied."""
    doc = copy.deepcopy(base)
    for op, pointer, value in edits:
        if op == "set":
            set_at(doc, pointer, value)
        elif op == "del":
            del_at(doc, pointer)
        else:
            raise ValueError(op)
    return doc


def with_fn(base: Doc, fn: Callable[[Doc], None]) -> Doc:
    doc = copy.deepcopy(base)
    fn(doc)
    return doc


def text_replace(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, (old, text.count(old))
    return text.replace(old, new)


def module_with_rank(doc: Doc, domain: str, rank: int) -> int:
    """Index of the module holding `rank` on `domain`."""
    return next(i for i, m in enumerate(doc["modules"]) if m["stats"][domain]["rank"] == rank)


def invalid_vectors() -> list[Vector]:
    """Every invalid vector, each breaking one rule of `base_doc()` (or of a stated valid document)."""
    base = base_doc()
    text = pretty(base).decode("utf-8")
    n_modules = len(base["modules"])
    v: list[Vector] = []

    def add(
        stem: str,
        description: str,
        errors: list[tuple[str, str]],
        content: Doc | bytes,
        layer: str | None = None,
    ) -> None:
        v.append(Vector(stem, description, errors, content, layer))

    # --- parse layer (raw bytes, written exactly; SPEC 15.1)
    add("empty-document--empty", "A file of zero bytes.", [("empty-document", "")], b"")
    add("empty-document--whitespace", "Only whitespace.", [("empty-document", "")], b"  \n\t\r\n ")
    # A sentinel is replaced by a single 0xff byte inside the description string.
    not_utf8 = text_replace(text, "every optional member present.", "every optional member present @@FF@@.")
    add(
        "not-utf8--byte-ff",
        "A 0xff byte (never valid in UTF-8) inside the description string.",
        [("not-utf8", "")],
        not_utf8.encode("utf-8").replace(b"@@FF@@", b"\xff"),
    )
    add(
        "not-utf8--latin1",
        "The description encoded in ISO-8859-1 ('Caf\\xe9') instead of UTF-8.",
        [("not-utf8", "")],
        text_replace(text, "Five transformer blocks", "Caf\u00e9 transformer blocks").encode("latin-1"),
    )
    add(
        "not-utf8--byte-order-mark",
        "A valid document preceded by a UTF-8 byte-order mark (EF BB BF).",
        [("not-utf8", "")],
        b"\xef\xbb\xbf" + text.encode("utf-8"),
    )
    add(
        "parse-error--truncated",
        "The valid base document cut off in the middle.",
        [("parse-error", "")],
        text.encode("utf-8")[: len(text) // 2],
    )
    add(
        "parse-error--trailing-comma",
        "A trailing comma after the last member of `model`.",
        [("parse-error", "")],
        text_replace(text, '"parameter_count": 60000000\n', '"parameter_count": 60000000,\n').encode("utf-8"),
    )
    add(
        "parse-error--comment",
        "A // comment (JSON has none).",
        [("parse-error", "")],
        text_replace(
            text, '  "spec_version": "1.0.0",\n', '  // written by hand\n  "spec_version": "1.0.0",\n'
        ).encode("utf-8"),
    )
    add(
        "parse-error--two-documents",
        "Two JSON documents one after the other (trailing data).",
        [("parse-error", "")],
        (text + text).encode("utf-8"),
    )
    add(
        "duplicate-key--model-revision",
        "`model` has the member `revision` twice (the second would silently win in many parsers).",
        [("duplicate-key", "/model")],
        text_replace(
            text,
            '    "revision": "2f1c9a7e4b3d",\n',
            '    "revision": "2f1c9a7e4b3d",\n    "revision": "0000000",\n',
        ).encode("utf-8"),
    )
    add(
        "duplicate-key--escaped-name",
        "`model` has `revision` and `revi\\u0073ion`: the same name once unescaped.",
        [("duplicate-key", "/model")],
        text_replace(
            text,
            '    "revision": "2f1c9a7e4b3d",\n',
            '    "revision": "2f1c9a7e4b3d",\n    "revi\\u0073ion": "0000000",\n',
        ).encode("utf-8"),
    )
    add(
        "duplicate-key--top-level",
        "The top-level object has `spec_version` twice, with different values.",
        [("duplicate-key", "")],
        text_replace(
            text, '  "spec_version": "1.0.0",\n', '  "spec_version": "1.0.0",\n  "spec_version": "2.0.0",\n'
        ).encode("utf-8"),
    )
    gnm = '"grad_norm_mean": 0.052,'
    assert text.count(gnm) == 1
    for stem, literal, what in (
        ("nan", "NaN", "The NaN literal (not JSON)"),
        ("infinity", "Infinity", "The Infinity literal (not JSON)"),
        ("minus-infinity", "-Infinity", "The -Infinity literal (not JSON)"),
        ("overflow", "1e999", "1e999: well-formed JSON, but it overflows a double,"),
    ):
        add(
            f"non-finite-number--{stem}",
            f"{what} as a gradient statistic.",
            [("non-finite-number", "/modules/0/stats/general/grad_norm_mean")],
            text.replace(gnm, f'"grad_norm_mean": {literal},').encode("utf-8"),
        )
    median = '"grad_norm_median": 0.04836,'
    assert text.count(median) == 1
    for stem, digits in (("huge-integer", 401), ("5001-digit-integer", 5001)):
        add(
            f"non-finite-number--{stem}",
            f"An integer literal of {digits} digits as a statistic: it overflows a double.",
            [("non-finite-number", "/modules/0/stats/general/grad_norm_median")],
            text.replace(median, '"grad_norm_median": 1' + "0" * (digits - 1) + ",").encode("utf-8"),
        )
    description = "every optional member present."
    for stem, escape, what in (
        ("high", "\\ud800", "A lone high surrogate"),
        ("low", "\\udc00", "A lone low surrogate"),
        ("reversed-pair", "\\ude00\\ud83d", "A surrogate pair in the wrong order (two lone surrogates)"),
    ):
        add(
            f"lone-surrogate--{stem}",
            f"{what}, as a \\u escape inside the description: well-formed JSON, but no Unicode text "
            "(RFC 8785, I-JSON).",
            [("lone-surrogate", "/description")],
            text_replace(text, description, f"every optional member present {escape}.").encode("utf-8"),
        )
    add(
        "lone-surrogate--member-name",
        "An extension member whose name escapes a lone surrogate; located at the object holding it.",
        [("lone-surrogate", "/extensions")],
        text_replace(text, '"extensions": {\n', '"extensions": {\n    "x-\\udbff": 1,\n').encode("utf-8"),
    )
    add(
        "not-an-object--array",
        "The top-level value is an array holding a valid document.",
        [("not-an-object", "")],
        ("[\n" + text + "]\n").encode("utf-8"),
    )
    add(
        "not-an-object--string", "The top-level value is a string.", [("not-an-object", "")], b'"blueprint"\n'
    )
    add("not-an-object--null", "The top-level value is null.", [("not-an-object", "")], b"null\n")

    # --- limit layer (the big ones are in the manifest's "generated" list; SPEC 15.2)
    deep: Any = "bottom"
    for _ in range(40):
        deep = [deep]
    add(
        "too-deep--extension-40-levels",
        "An extension value nested 40 arrays deep (the limit is 32 levels in all).",
        [("too-deep", "")],
        pretty(mutated(base, ("set", "/extensions/x-deep", deep))),
    )
    just_over = depth_limit_doc()
    just_over["extensions"]["x-deep"] = [just_over["extensions"]["x-deep"]]
    add(
        "too-deep--depth-33",
        "valid/depth-at-limit.json with one more array: depth 33.",
        [("too-deep", "")],
        pretty(just_over),
    )

    # --- version layer (SPEC 14)
    add(
        "unsupported-version--major-2",
        "spec_version 2.0.0: a v1 reader must refuse another major version.",
        [("unsupported-version", "/spec_version")],
        pretty(mutated(base, ("set", "/spec_version", "2.0.0"))),
    )
    add(
        "unsupported-version--major-0",
        "spec_version 0.9.0: a major version this reader does not support.",
        [("unsupported-version", "/spec_version")],
        pretty(mutated(base, ("set", "/spec_version", "0.9.0"))),
    )
    add(
        "unsupported-version--major-2-other-errors",
        "spec_version 2.1.0 with members 1.0 does not know: only unsupported-version is reported.",
        [("unsupported-version", "/spec_version")],
        pretty(mutated(base, ("set", "/spec_version", "2.1.0"), ("set", "/blueprint_v2", {"layers": []}))),
    )
    add(
        "unsupported-version--major-5000-digits",
        "spec_version with a major version of 5000 digits: not 1, and never converted to an integer.",
        [("unsupported-version", "/spec_version")],
        pretty(mutated(base, ("set", "/spec_version", "9" * 5000 + ".0.0"))),
    )
    for stem, value, what in (
        ("two-parts", "1.0", "only MAJOR.MINOR"),
        ("v-prefix", "v1.0.0", "a 'v' prefix"),
        ("leading-zero", "1.01.0", "a leading zero in MINOR"),
        ("minor-seven-digits", "1.1234567.0", "MINOR longer than 6 digits"),
        ("pre-release", "1.0.0-rc.1", "a pre-release suffix"),
        ("trailing-newline", "1.0.0\n", "a trailing newline (a '$' anchor must not match before it)"),
    ):
        add(
            f"bad-version--{stem}",
            f"spec_version {value!r}: {what}.",
            [("bad-version", "/spec_version")],
            pretty(mutated(base, ("set", "/spec_version", value))),
        )
    add(
        "bad-version--missing",
        "No spec_version member (SPEC 14: bad-version when missing or malformed).",
        [("bad-version", "/spec_version")],
        pretty(mutated(base, ("del", "/spec_version", None))),
    )

    # --- schema layer (SPEC 17.1 maps failing keywords to codes)
    def schema(stem: str, description: str, code: str, path: str, *edits: tuple[str, str, Any]) -> None:
        add(f"{code}--{stem}", description, [(code, path)], pretty(mutated(base, *edits)))

    schema(
        "model-revision",
        "model.revision is absent.",
        "missing-field",
        "/model/revision",
        ("del", "/model/revision", None),
    )
    schema(
        "modules",
        "The top-level modules member is absent.",
        "missing-field",
        "/modules",
        ("del", "/modules", None),
    )
    schema(
        "heavy-tail-mass-shares",
        "A heavy-tail summary without its mass_shares.",
        "missing-field",
        "/domains/0/heavy_tail/mass_shares",
        ("del", "/domains/0/heavy_tail/mass_shares", None),
    )
    schema(
        "stats-rank",
        "Module statistics without a rank.",
        "missing-field",
        "/modules/3/stats/biomedical/rank",
        ("del", "/modules/3/stats/biomedical/rank", None),
    )
    schema(
        "cost-model",
        "The allocation has no cost model (a k* never comes without its rule and cost).",
        "missing-field",
        "/allocation/cost_model",
        ("del", "/allocation/cost_model", None),
    )
    schema(
        "model-member",
        "An unknown member inside `model` in a 1.0.0 document.",
        "unknown-field",
        "/model/hidden_size",
        ("set", "/model/hidden_size", 768),
    )
    schema(
        "top-level-in-1.0",
        "An unknown top-level member in a 1.0.0 document (in a newer minor it would only warn).",
        "unknown-field",
        "/calibration_budget",
        ("set", "/calibration_budget", {"gpu_hours": 0.5}),
    )
    schema(
        "pointer-escaping",
        "An unknown member named 'a/b~c' in statistics: the pointer escapes '/' as ~1 and '~' as ~0.",
        "unknown-field",
        "/modules/0/stats/general/a~1b~0c",
        ("set", "/modules/0/stats/general/a~1b~0c", 1),
    )
    schema(
        "schema-uri-by-field-name",
        'The member `schema_uri` (an implementation\'s internal name for "$schema") is not part of the format.',
        "unknown-field",
        "/schema_uri",
        ("set", "/schema_uri", SCHEMA_URI),
    )
    schema(
        "examples-string",
        'domains[0].examples given as the string "1024".',
        "wrong-type",
        "/domains/0/examples",
        ("set", "/domains/0/examples", "1024"),
    )
    schema(
        "fractional-count",
        "domains[0].batches given as 64.5 (counts are integers; 64.0 would be fine).",
        "wrong-type",
        "/domains/0/batches",
        ("set", "/domains/0/batches", 64.5),
    )
    schema(
        "model-name-number",
        "model.name given as a number.",
        "wrong-type",
        "/model/name",
        ("set", "/model/name", 42),
    )
    schema(
        "modules-object",
        "modules given as an object instead of an array.",
        "wrong-type",
        "/modules",
        ("set", "/modules", {"attn.0": {}}),
    )
    schema(
        "boolean-statistic",
        "A statistic given as the boolean true (not a number in JSON).",
        "wrong-type",
        "/modules/1/stats/general/grad_norm_median",
        ("set", "/modules/1/stats/general/grad_norm_median", True),
    )
    schema(
        "null-optional",
        "An optional member given as null (absent members are omitted, never null).",
        "wrong-type",
        "/model/architecture",
        ("set", "/model/architecture", None),
    )
    schema(
        "spec-version-number",
        "spec_version given as the number 1.0 (a failing `type` is wrong-type).",
        "wrong-type",
        "/spec_version",
        ("set", "/spec_version", 1.0),
    )
    schema(
        "batch-size-zero",
        "method.batch_size 0 (must be at least 1).",
        "out-of-range",
        "/method/batch_size",
        ("set", "/method/batch_size", 0),
    )
    schema("seed-negative", "method.seed -1.", "out-of-range", "/method/seed", ("set", "/method/seed", -1))
    schema(
        "ks-distance-above-one",
        "A KS distance of 1.5 (a distance between CDFs lies in [0, 1]).",
        "out-of-range",
        "/domains/0/heavy_tail/ks_distance",
        ("set", "/domains/0/heavy_tail/ks_distance", 1.5),
    )
    schema(
        "exponent-zero",
        "A heavy-tail exponent of 0 (must be > 0).",
        "out-of-range",
        "/domains/0/heavy_tail/exponent",
        ("set", "/domains/0/heavy_tail/exponent", 0),
    )
    schema(
        "count-above-2-53",
        "model.tensor_count 2^53 (above the largest exactly representable integer).",
        "out-of-range",
        "/model/tensor_count",
        ("set", "/model/tensor_count", 2**53),
    )
    schema(
        "weight-above-one",
        "A domain weight of 1.5 in allocation.domain_weights (weights are fractions).",
        "out-of-range",
        "/allocation/domain_weights/general",
        ("set", "/allocation/domain_weights/general", 1.5),
    )
    schema(
        "median",
        "A negative median gradient norm.",
        "negative-statistic",
        "/modules/2/stats/general/grad_norm_median",
        ("set", "/modules/2/stats/general/grad_norm_median", -0.01),
    )
    schema(
        "cost-fixed",
        "A negative fixed cost.",
        "negative-statistic",
        "/allocation/cost_model/fixed",
        ("set", "/allocation/cost_model/fixed", -0.5),
    )
    schema(
        "huge",
        "A statistic of 1e301 (statistics are bounded by 1e300).",
        "negative-statistic",
        "/data_selection/score_quantiles/p90",
        ("set", "/data_selection/score_quantiles/p90", 1e301),
    )
    schema(
        "zero",
        "k_star 0 (k* lies in (0, 1]).",
        "k-star-out-of-range",
        "/modules/0/k_star",
        ("set", "/modules/0/k_star", 0),
    )
    schema(
        "above-one",
        "k_star 1.5.",
        "k-star-out-of-range",
        "/modules/1/k_star",
        ("set", "/modules/1/k_star", 1.5),
    )
    schema(
        "negative",
        "k_star -0.1.",
        "k-star-out-of-range",
        "/modules/2/k_star",
        ("set", "/modules/2/k_star", -0.1),
    )
    good = base["model"]["structure_digest"]
    schema(
        "uppercase-hex",
        "structure_digest with uppercase hex digits.",
        "bad-digest",
        "/model/structure_digest",
        ("set", "/model/structure_digest", "sha256:" + good[7:].upper()),
    )
    schema(
        "short",
        "weights_digest with 63 hex digits.",
        "bad-digest",
        "/model/weights_digest",
        ("set", "/model/weights_digest", good[:-1]),
    )
    schema(
        "other-algorithm",
        "provenance.supersedes names another algorithm (sha512: prefix).",
        "bad-digest",
        "/provenance/supersedes",
        ("set", "/provenance/supersedes", "sha512:" + good[7:]),
    )
    schema(
        "sidecar",
        "A sidecar digest without the sha256: prefix.",
        "bad-digest",
        "/sidecars/0/digest",
        ("set", "/sidecars/0/digest", good[7:]),
    )
    schema(
        "module-space",
        "A module name containing a space.",
        "bad-name",
        "/modules/3/name",
        ("set", "/modules/3/name", "ffn 1"),
    )
    schema(
        "module-trailing-newline",
        "A module name ending in a newline (a '$' anchor must not match before it).",
        "bad-name",
        "/modules/3/name",
        ("set", "/modules/3/name", "ffn.1\n"),
    )
    schema(
        "module-empty", "An empty module name.", "bad-name", "/modules/3/name", ("set", "/modules/3/name", "")
    )
    schema(
        "data-selection-domain",
        "data_selection.domain starting with '-'.",
        "bad-name",
        "/data_selection/domain",
        ("set", "/data_selection/domain", "-biomedical"),
    )
    schema(
        "timestamp-no-offset",
        "provenance.created without 'T' and without a UTC offset.",
        "bad-format",
        "/provenance/created",
        ("set", "/provenance/created", "2025-11-03 09:30:00"),
    )
    schema(
        "timestamp-date-only",
        "provenance.created as a bare date.",
        "bad-format",
        "/provenance/created",
        ("set", "/provenance/created", "2025-11-03"),
    )
    schema(
        "estimator",
        "An estimator the spec does not define.",
        "bad-enum",
        "/method/estimator",
        ("set", "/method/estimator", "hutchinson"),
    )
    schema(
        "granularity",
        "Allocation granularity 'layer'.",
        "bad-enum",
        "/allocation/granularity",
        ("set", "/allocation/granularity", "layer"),
    )
    schema(
        "exponent-convention",
        "exponent_convention 'alpha' (ambiguous: the spec makes the convention explicit).",
        "bad-enum",
        "/domains/0/heavy_tail/exponent_convention",
        ("set", "/domains/0/heavy_tail/exponent_convention", "alpha"),
    )
    schema(
        "sidecar-format",
        "A sidecar in a format other than safetensors.",
        "bad-enum",
        "/sidecars/1/format",
        ("set", "/sidecars/1/format", "npz"),
    )
    schema(
        "fit-method",
        "A heavy-tail method that is neither csn-mle nor an x- name.",
        "bad-enum",
        "/domains/0/heavy_tail/method",
        ("set", "/domains/0/heavy_tail/method", "loglog-regression"),
    )
    schema(
        "newer-minor-unknown-value",
        "A 1.3.0 document with granularity 'block': a newer minor's unknown value of a known member is "
        "an error, not a warning.",
        "bad-enum",
        "/allocation/granularity",
        ("set", "/spec_version", "1.3.0"),
        ("set", "/allocation/granularity", "block"),
    )
    schema(
        "unknown-name",
        "An allocation rule named 'greedy' (not a spec rule and not x- prefixed).",
        "bad-rule",
        "/allocation/rule",
        ("set", "/allocation/rule", {"name": "greedy", "parameters": {"budget": 0.1}}),
    )
    schema(
        "parameters-of-another-rule",
        "global-budget with mass-threshold's parameter.",
        "bad-rule",
        "/allocation/rule",
        ("set", "/allocation/rule/parameters", {"threshold": 0.5}),
    )
    schema(
        "missing-parameters",
        "A rule without parameters.",
        "bad-rule",
        "/allocation/rule",
        ("del", "/allocation/rule/parameters", None),
    )
    schema(
        "budget-zero",
        "global-budget with budget 0 (an open fraction): any failure inside a rule is bad-rule.",
        "bad-rule",
        "/allocation/rule",
        ("set", "/allocation/rule/parameters/budget", 0),
    )
    schema(
        "uppercase",
        "An extension named 'Org.Example' (names are lowercase).",
        "bad-extension-name",
        "/extensions/Org.Example",
        ("set", "/extensions/Org.Example", {"a": 1}),
    )
    schema(
        "no-namespace",
        "An extension named 'notes' (neither reverse-DNS nor x-).",
        "bad-extension-name",
        "/extensions/notes",
        ("set", "/extensions/notes", "free text"),
    )
    schema(
        "empty-domains",
        "An empty domains array: minItems carries no x-error-code, so the keyword decides: out-of-range (SPEC 17.1).",
        "out-of-range",
        "/domains",
        ("set", "/domains", []),
    )
    schema(
        "65-sidecars",
        "65 sidecars; at most 64 are allowed (SPEC 15.2: out-of-range).",
        "out-of-range",
        "/sidecars",
        (
            "set",
            "/sidecars",
            [
                {
                    "path": f"scores/part-{i:02d}.safetensors",
                    "digest": fake_digest(f"sidecar:{i}"),
                    "format": "safetensors",
                    "granularity": "row",
                }
                for i in range(65)
            ],
        ),
    )
    schema(
        "model-name-too-long",
        "model.name of 257 characters (maxLength carries no x-error-code: out-of-range).",
        "out-of-range",
        "/model/name",
        ("set", "/model/name", "m" * 257),
    )

    # --- semantic layer: each document breaks exactly the named rule (checked below)
    def sem(
        stem: str, description: str, code: str, path: str, content: Doc, layer: str | None = None
    ) -> None:
        got = semantic_issues(content)
        assert got == [(code, path)], (stem, got)
        add(f"{code}--{stem}", description, [(code, path)], pretty(content), layer)

    sem(
        "second-copy",
        "Two modules named attn.0.",
        "duplicate-module",
        "/modules/2/name",
        mutated(base, ("set", "/modules/2/name", "attn.0")),
    )

    sem(
        "nested-name",
        "Module attn.1 renamed attn.0.q: it lies inside module attn.0, so their tensors overlap.",
        "overlapping-modules",
        "/modules/2/name",
        mutated(base, ("set", "/modules/2/name", "attn.0.q")),
    )
    sem(
        "inner-listed-first",
        "Module attn.0 renamed ffn.2.out: it lies inside module ffn.2, listed after it.",
        "overlapping-modules",
        "/modules/0/name",
        mutated(base, ("set", "/modules/0/name", "ffn.2.out")),
    )

    def dup_domain(doc: Doc) -> None:
        doc["domains"].append({"name": "general", "weight": 0, "examples": 1024, "batches": 64})

    sem(
        "third-general",
        "A third domain, weight 0, also named general.",
        "duplicate-domain",
        "/domains/2/name",
        with_fn(base, dup_domain),
    )

    def stats_unknown(doc: Doc) -> None:
        doc["modules"][0]["stats"]["nosuch"] = module_stats(0.01, 1)

    sem(
        "stats-key",
        "Module statistics for a domain that `domains` does not declare.",
        "unknown-domain",
        "/modules/0/stats/nosuch",
        with_fn(base, stats_unknown),
    )
    sem(
        "data-selection",
        "data_selection names an undeclared domain.",
        "unknown-domain",
        "/data_selection/domain",
        mutated(base, ("set", "/data_selection/domain", "legal")),
    )
    sem(
        "allocation-weights",
        "allocation.domain_weights names an undeclared domain.",
        "unknown-domain",
        "/allocation/domain_weights/legal",
        mutated(base, ("set", "/allocation/domain_weights", {"general": 0.6, "legal": 0.4})),
    )
    # The module with the last biomedical rank: without its stats, the others still rank 1..N-1.
    last_bio = module_with_rank(base, "biomedical", n_modules)
    sem(
        "no-biomedical",
        f"{BASE_NAMES[last_bio]} has no statistics for the declared domain biomedical.",
        "missing-domain-stats",
        f"/modules/{last_bio}/stats",
        mutated(base, ("del", f"/modules/{last_bio}/stats/biomedical", None)),
    )
    last_general = module_with_rank(base, "general", n_modules)
    sem(
        "rank-too-large",
        f"{BASE_NAMES[last_general]}'s general rank is {n_modules + 1} among {n_modules} modules.",
        "rank-not-permutation",
        f"/modules/{last_general}/stats/general/rank",
        mutated(base, ("set", f"/modules/{last_general}/stats/general/rank", n_modules + 1)),
    )
    # Give the last-ranked module the rank of the one before it: the later one in array order repeats it.
    before_last = module_with_rank(base, "general", n_modules - 1)
    sem(
        "duplicate-rank",
        f"Two modules share general rank {n_modules - 1} and none has rank {n_modules}; the one later in "
        "the array repeats a rank.",
        "rank-not-permutation",
        f"/modules/{max(last_general, before_last)}/stats/general/rank",
        mutated(base, ("set", f"/modules/{last_general}/stats/general/rank", n_modules - 1)),
    )
    sem(
        "combined-rank-too-large",
        f"attn.0's combined rank is {n_modules + 1} among {n_modules} modules.",
        "rank-not-permutation",
        "/modules/0/combined/rank",
        mutated(base, ("set", "/modules/0/combined/rank", n_modules + 1)),
    )
    sem(
        "combined-missing-on-one-module",
        "Every module but one has `combined` (all or none).",
        "rank-not-permutation",
        "/modules/3",
        mutated(base, ("del", "/modules/3/combined", None)),
    )

    first, second = module_with_rank(base, "general", 1), module_with_rank(base, "general", 2)

    def swap_general(doc: Doc) -> None:
        a, b = doc["modules"][first]["stats"]["general"], doc["modules"][second]["stats"]["general"]
        a["rank"], b["rank"] = b["rank"], a["rank"]

    sem(
        "swapped-ranks",
        f"{BASE_NAMES[second]} ranked 1 above {BASE_NAMES[first]}, which has the larger general grad_norm_mean; "
        "reported at the rank of the second module of the misordered pair.",
        "rank-order-mismatch",
        f"/modules/{first}/stats/general/rank",
        with_fn(base, swap_general),
    )
    c_first = next(i for i, m in enumerate(base["modules"]) if m["combined"]["rank"] == 1)
    c_second = next(i for i, m in enumerate(base["modules"]) if m["combined"]["rank"] == 2)
    sem(
        "combined",
        "The two best combined scores have their ranks swapped.",
        "rank-order-mismatch",
        f"/modules/{c_first}/combined/rank",
        mutated(
            base,
            ("set", f"/modules/{c_first}/combined/rank", 2),
            ("set", f"/modules/{c_second}/combined/rank", 1),
        ),
    )
    sem(
        "mean-square-below-square-of-mean",
        "grad_norm_sq_mean < grad_norm_mean^2 (impossible: E[X^2] >= E[X]^2).",
        "inconsistent-statistics",
        "/modules/1/stats/general/grad_norm_sq_mean",
        mutated(base, ("set", "/modules/1/stats/general/grad_norm_sq_mean", 0.001)),
    )
    sem(
        "norm-of-mean-above-mean-norm",
        "mean_grad_norm > grad_norm_mean (impossible: ||E[g]|| <= E[||g||]).",
        "inconsistent-statistics",
        "/modules/1/stats/biomedical/mean_grad_norm",
        mutated(base, ("set", "/modules/1/stats/biomedical/mean_grad_norm", 0.05)),
    )
    sem(
        "trainable-fraction",
        "allocation.trainable_fraction 0.5 while the k* select about 7.9% of the parameters.",
        "inconsistent-statistics",
        "/allocation/trainable_fraction",
        mutated(base, ("set", "/allocation/trainable_fraction", 0.5)),
    )
    shares = base["domains"][0]["heavy_tail"]["mass_shares"]
    sem(
        "decreasing",
        "top_20 smaller than top_10.",
        "shares-not-monotone",
        "/domains/0/heavy_tail/mass_shares/top_20",
        mutated(base, ("set", "/domains/0/heavy_tail/mass_shares/top_20", shares["top_10"] - 0.01)),
    )
    sem(
        "below-proportional",
        "Element top_50 share 0.45: the top half of the elements must hold at least half the mass.",
        "shares-not-monotone",
        "/domains/0/element_mass_shares/top_50",
        mutated(base, ("set", "/domains/0/element_mass_shares/top_50", 0.45)),
    )
    sem(
        "ok-without-exponent",
        "status ok but no exponent.",
        "fit-status-mismatch",
        "/domains/0/heavy_tail/status",
        mutated(base, ("del", "/domains/0/heavy_tail/exponent", None)),
    )
    sem(
        "failed-with-exponent",
        "status failed but an exponent, x_min and KS distance are given.",
        "fit-status-mismatch",
        "/domains/1/heavy_tail/status",
        mutated(
            base,
            ("set", "/domains/1/heavy_tail/exponent", 0.4),
            ("set", "/domains/1/heavy_tail/x_min", 0.04),
            ("set", "/domains/1/heavy_tail/ks_distance", 0.2),
        ),
    )
    sem(
        "insufficient-data-with-x-min",
        "status insufficient-data but an x_min is given.",
        "fit-status-mismatch",
        "/domains/0/heavy_tail/status",
        mutated(
            base,
            ("set", "/domains/0/heavy_tail/status", "insufficient-data"),
            ("del", "/domains/0/heavy_tail/exponent", None),
            ("del", "/domains/0/heavy_tail/ks_distance", None),
        ),
    )
    sem(
        "tail-count-above-sample-count",
        f"tail_count {n_modules + 1} > sample_count {n_modules}.",
        "inconsistent-fit",
        "/domains/0/heavy_tail/tail_count",
        mutated(base, ("set", "/domains/0/heavy_tail/tail_count", n_modules + 1)),
    )
    sem(
        "domains",
        "Domain weights 0.6 + 0.5 = 1.1.",
        "domain-weights-sum",
        "/domains",
        mutated(base, ("set", "/domains/1/weight", 0.5)),
    )
    sem(
        "allocation",
        "allocation.domain_weights 0.6 + 0.3 = 0.9.",
        "domain-weights-sum",
        "/allocation/domain_weights",
        mutated(base, ("set", "/allocation/domain_weights/biomedical", 0.3)),
    )
    sem(
        "examples",
        "biomedical covers 512 examples but min_examples_per_aggregate is 600.",
        "aggregate-too-small",
        "/domains/1/examples",
        mutated(base, ("set", "/method/min_examples_per_aggregate", 600), ("del", "/data_selection", None)),
    )
    sem(
        "data-selection-pool",
        "The data-selection pool has 40 examples, fewer than min_examples_per_aggregate (64).",
        "aggregate-too-small",
        "/data_selection/examples_total",
        mutated(
            base,
            ("set", "/data_selection/examples_total", 40),
            ("set", "/data_selection/examples_selected", 12),
        ),
    )
    sem(
        "global-budget",
        "The k* select about 7.9% of the module parameters but the global budget is 5%.",
        "budget-exceeded",
        "/allocation/rule/parameters/budget",
        mutated(base, ("set", "/allocation/rule/parameters/budget", 0.05)),
    )
    sem(
        "marginal-max-fraction",
        "A marginal rule whose max_fraction (5%) is below what the k* select (about 7.9%).",
        "budget-exceeded",
        "/allocation/rule/parameters/max_fraction",
        mutated(
            base,
            (
                "set",
                "/allocation/rule",
                {"name": "marginal", "parameters": {"eta": 0.01, "max_fraction": 0.05}},
            ),
        ),
    )
    sem(
        "modules-exceed-model",
        "The modules hold 35,424,000 parameters, the model only 10,000,000.",
        "parameter-count-mismatch",
        "/model/parameter_count",
        mutated(base, ("set", "/model/parameter_count", 10_000_000)),
    )
    for stem, path, what in (
        ("parent", "../scores.safetensors", "climbs out of the blueprint's folder"),
        ("parent-inside", "scores/../../x.safetensors", "climbs out through an inner '..' segment"),
        ("absolute", "/etc/scores.safetensors", "is absolute"),
        ("backslash", "scores\\element.safetensors", "uses a backslash"),
        ("drive-letter", "C:/scores.safetensors", "has a drive prefix"),
        ("nul", "scores.safetensors\u0000.txt", "contains a NUL character"),
    ):
        sem(
            stem,
            f"A sidecar path that {what}.",
            "unsafe-path",
            "/sidecars/1/path",
            mutated(base, ("set", "/sidecars/1/path", path)),
        )
    sem(
        "selected-above-total",
        "513 examples selected out of 512 (fraction 1, so only this rule breaks).",
        "data-selection-inconsistent",
        "/data_selection/examples_selected",
        mutated(
            base,
            ("set", "/data_selection/fraction", 1),
            ("del", "/data_selection/drop_top_fraction", None),
            ("set", "/data_selection/examples_selected", 513),
        ),
    )
    sem(
        "selected-disagrees-with-fraction",
        "fraction 0.3 of 512 is 153.6 examples, but 100 are reported selected (the difference may be at most 1).",
        "data-selection-inconsistent",
        "/data_selection/examples_selected",
        mutated(base, ("set", "/data_selection/examples_selected", 100)),
    )
    sem(
        "drop-plus-fraction",
        "drop_top_fraction 0.8 + fraction 0.3 > 1.",
        "data-selection-inconsistent",
        "/data_selection/drop_top_fraction",
        mutated(base, ("set", "/data_selection/drop_top_fraction", 0.8)),
    )
    sem(
        "quantiles-unordered",
        "score quantiles with p50 above p90.",
        "data-selection-inconsistent",
        "/data_selection/score_quantiles",
        mutated(base, ("set", "/data_selection/score_quantiles/p50", 5.0)),
    )
    module_rule = {"name": "global-budget", "parameters": {"budget": 0.25}}
    whole = rule_doc(module_rule, "module")
    chosen = next(i for i, m in enumerate(whole["modules"]) if "k_star" in m)

    def half_module(doc: Doc) -> None:
        doc["modules"][chosen]["k_star"] = 0.5
        doc["allocation"]["trainable_fraction"] = trainable_fraction(doc["modules"])

    sem(
        "fraction-at-module-granularity",
        "valid/rule-global-budget-module-granularity.json with one k* of 0.5: at module granularity every "
        "k* must be 1 (SPEC 9.3).",
        "k-star-out-of-range",
        f"/modules/{chosen}/k_star",
        with_fn(whole, half_module),
        layer="semantic",
    )
    _stability_vectors(base, add, sem)
    return v


def _stability_vectors(base: Doc, add: Callable[..., None], sem: Callable[..., None]) -> None:
    """Invalid vectors of the 1.1 stability members (SPEC 7.7 and 14)."""
    stab = stability_doc()

    def schema(stem: str, description: str, code: str, path: str, *edits: tuple[str, str, Any]) -> None:
        add(f"{code}--{stem}", description, [(code, path)], pretty(mutated(stab, *edits)))

    at = "/domains/0/stability"
    schema("stability-confidence", "A stability whose confidence is 1 (it must lie strictly between 0 and 1).",
           "out-of-range", f"{at}/confidence", ("set", f"{at}/confidence", 1))
    schema("stability-resamples", "A stability of 1 resample (at least 2 are needed).", "out-of-range",
           f"{at}/resamples", ("set", f"{at}/resamples", 1))
    schema("stability-rank-correlation", "A rank correlation of 1.5.", "out-of-range", f"{at}/rank_correlation",
           ("set", f"{at}/rank_correlation", 1.5))
    schema("stability-method", "A stability method that is neither batch-bootstrap nor an x- name.", "bad-enum",
           f"{at}/method", ("set", f"{at}/method", "jackknife"))
    schema("stability-statistic", "A stability of mean_grad_norm, which per-unit norms cannot resample.",
           "bad-enum", f"{at}/statistic", ("set", f"{at}/statistic", "mean_grad_norm"))
    schema("stability-selection-overlap", "A stability selection without its overlap.", "missing-field",
           f"{at}/selection/overlap", ("del", f"{at}/selection/overlap", None))
    schema("interval-upper", "An interval without its upper bound.", "missing-field",
           "/modules/2/stats/general/interval/upper", ("del", "/modules/2/stats/general/interval/upper", None))
    schema("interval-lower", "An interval whose lower bound is negative.", "negative-statistic",
           "/modules/2/stats/general/interval/lower", ("set", "/modules/2/stats/general/interval/lower", -0.01))
    sem("missing-interval", "valid/stability.json without the interval of one module on the domain with a "
        "stability.", "stability-incomplete", "/modules/3/stats/general/interval",
        mutated(stab, ("del", "/modules/3/stats/general/interval", None)))
    sem("interval-without-stability", "valid/stability.json with an interval on biomedical, which has no "
        "stability.", "stability-incomplete", "/modules/0/stats/biomedical/interval",
        mutated(stab, ("set", "/modules/0/stats/biomedical/interval", {"lower": 0.01, "upper": 0.02})))
    inverted = stab["modules"][1]["stats"]["general"]["interval"]
    sem("interval-inverted", "An interval whose lower bound exceeds its upper bound.", "inconsistent-statistics",
        "/modules/1/stats/general/interval",
        mutated(stab, ("set", "/modules/1/stats/general/interval",
                       {"lower": inverted["upper"], "upper": inverted["lower"]})))
    sem("stability-in-1-0-document", "A stability in a 1.0.0 document: the member is defined from 1.1.0, so "
        "a 1.0 document that uses it is invalid (SPEC 14).", "unknown-field", at,
        mutated(base, ("set", at, STABILITY)), layer="semantic")
    sem("interval-in-1-0-document", "An interval in a 1.0.0 document (defined from 1.1.0).", "unknown-field",
        "/modules/0/stats/general/interval",
        mutated(base, ("set", "/modules/0/stats/general/interval", {"lower": 0.01, "upper": 0.02})),
        layer="semantic")


def generated_vectors() -> list[Doc]:
    """Vectors too large to store; the manifest says how to build them in memory."""
    return [
        {
            "code": "too-many-values",
            "layer": "limit",
            "errors": [{"code": "too-many-values", "path": ""}],
            "base": "valid/minimal.json",
            "build": {"kind": "extension-array", "member": "x-values", "item": "0", "count": 4_000_000},
            "recipe": 'valid/minimal.json with an extensions member {"x-values": [0, 0, ...]} of 4000000 '
            "zeros: about 8 MB, but over the limit of 4000000 JSON values.",
        },
        {
            "code": "too-many-values",
            "layer": "limit",
            "errors": [{"code": "too-many-values", "path": ""}],
            "base": "valid/minimal.json",
            "build": {"kind": "extension-array", "member": "x-objects", "item": "{}", "count": 1_500_000},
            "recipe": 'valid/minimal.json with an extensions member {"x-objects": [{}, {}, ...]} of 1500000 '
            "empty objects: about 4.5 MB, under the value limit but over the limit of 1500000 objects and "
            "arrays.",
        },
        {
            "code": "too-large",
            "layer": "limit",
            "errors": [{"code": "too-large", "path": ""}],
            "base": "valid/minimal.json",
            "build": {"kind": "pad", "total_bytes": 64 * 1024 * 1024 + 1},
            "recipe": "valid/minimal.json with spaces appended until the document is 64 MiB + 1 byte "
            "(67108865 bytes). It is well-formed JSON; only its size is wrong.",
        },
        {
            "code": "too-many-modules",
            "layer": "limit",
            "errors": [{"code": "too-many-modules", "path": "/modules"}],
            "base": "valid/minimal.json",
            "build": {"kind": "replicate-modules", "count": 100_001},
            "recipe": "valid/minimal.json whose modules array holds 100001 copies of its module, named "
            "m0 .. m100000, with general rank i+1 and grad_norm_mean 1 - i*1e-6 for module i "
            "(grad_norm_median = grad_norm_mean, grad_norm_sq_mean = its square). The limit is 100000.",
        },
        {
            "code": "too-deep",
            "layer": "limit",
            "errors": [{"code": "too-deep", "path": ""}],
            "base": "valid/minimal.json",
            "build": {"kind": "nest", "member": "x-deep", "depth": 100_000},
            "recipe": 'valid/minimal.json with an extensions member {"x-deep": [[[...0...]]]} of 100000 '
            "nested arrays. A reader must refuse it without recursing 100000 levels.",
        },
    ]


# ---------------------------------------------------------------------------------------------
# Writing


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_all() -> dict[str, bytes]:
    """Every file (relative path -> bytes), manifest included."""
    files: dict[str, bytes] = {}
    manifest: Doc = {
        "spec_version": SPEC_VERSION,
        "valid": [],
        "invalid": [],
        "generated": generated_vectors(),
    }
    for stem, description, doc, warnings in valid_vectors():
        issues = semantic_issues(doc)
        assert issues == [], (stem, issues)
        check_producer_formulas(doc)
        name = f"valid/{stem}.json"
        assert name not in files, name
        files[name] = pretty(doc)
        entry: Doc = {"file": name, "description": description}
        if warnings:
            entry["warnings"] = warnings
        manifest["valid"].append(entry)
    for vec in invalid_vectors():
        name = f"invalid/{vec.stem}.json"
        assert name not in files, name
        files[name] = vec.content if isinstance(vec.content, bytes) else pretty(vec.content)
        manifest["invalid"].append(
            {
                "file": name,
                "description": vec.description,
                "layer": vec.layer,
                "errors": [{"code": c, "path": p} for c, p in vec.errors],
            }
        )
    files["manifest.json"] = pretty(manifest)
    return files


def write_all(out: Path) -> dict[str, bytes]:
    """Write every vector and the manifest under `out`, removing stale vector files."""
    files = build_all()
    for sub in ("valid", "invalid"):
        folder = out / sub
        if folder.is_dir():
            for old in folder.glob("*.json"):
                if f"{sub}/{old.name}" not in files:
                    old.unlink()
    for rel, data in files.items():
        atomic_write(out / rel, data)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent, help="output folder"
    )
    args = parser.parse_args(argv)
    files = write_all(args.out)
    n_valid = sum(1 for f in files if f.startswith("valid/"))
    n_invalid = sum(1 for f in files if f.startswith("invalid/"))
    print(f"wrote {n_valid} valid and {n_invalid} invalid vectors and manifest.json to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
