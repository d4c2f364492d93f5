"""Builders of valid blueprint documents for tests, and a repair step that makes schema-drawn
documents satisfy the semantic rules (so property tests can start from any schema instance)."""

from __future__ import annotations

import copy
import math
from typing import Any

from blueprint_format._version import required_spec_version

SHARES = (("top_1", 0.01), ("top_5", 0.05), ("top_10", 0.10), ("top_20", 0.20), ("top_50", 0.50))
DIGEST = "sha256:" + "ab" * 32


def mass_shares(values: list[float]) -> dict[str, float]:
    """Non-parametric shares computed the spec's way (ceil(p*n) largest items)."""
    ordered = sorted(values, reverse=True)
    total = math.fsum(ordered) or 1.0
    return {
        name: min(1.0, math.fsum(ordered[: max(1, math.ceil(p * len(ordered)))]) / total)
        for name, p in SHARES
    }


def make_doc(
    layers: int = 2, domains: tuple[str, ...] = ("general",), k_budget: float = 0.5
) -> dict[str, Any]:
    """A valid blueprint for a small transformer-like model with attn/ffn modules per layer."""
    modules = []
    for layer in range(layers):
        for part in ("attention", "ffn"):
            modules.append(
                {
                    "name": f"encoder.layer.{layer}.{part}",
                    "type": "Linear",
                    "parameter_count": 1000,
                    "stats": {},
                }
            )
    for di, dom in enumerate(domains):
        means = [0.05 / (1 + i) * (1 + 0.1 * di) for i in range(len(modules))]
        order = sorted(range(len(modules)), key=lambda i: -means[i])
        for rank, i in enumerate(order, start=1):
            m = means[i]
            modules[i]["stats"][dom] = {
                "grad_norm_mean": m,
                "grad_norm_median": m * 0.9,
                "grad_norm_sq_mean": m * m * 1.2,
                "mean_grad_norm": m * 0.5,
                "rank": rank,
            }
    n_sel = max(1, int(k_budget * len(modules)))
    for m in modules[:n_sel]:
        m["k_star"] = 1.0
    doc: dict[str, Any] = {
        "spec_version": "1.0.0",
        "model": {
            "name": "example/tiny",
            "revision": "r1",
            "structure_digest": DIGEST,
            "parameter_count": 1000 * len(modules) + 10,
        },
        "provenance": {"created": "2026-11-29T12:00:00Z", "generator": {"name": "tests", "version": "0"}},
        "method": {"estimator": "batch-gradient-norm", "loss": "causal-lm", "min_examples_per_aggregate": 32},
        "domains": [
            {
                "name": d,
                "weight": 1 / len(domains),
                "examples": 64,
                "batches": 2,
                "heavy_tail": {
                    "statistic": "grad_norm_mean",
                    "method": "csn-mle",
                    "exponent_convention": "rank-size",
                    "status": "insufficient-data",
                    "sample_count": len(modules),
                    "mass_shares": mass_shares([m["stats"][d]["grad_norm_mean"] for m in modules]),
                },
            }
            for d in domains
        ],
        "modules": modules,
        "allocation": {
            "rule": {"name": "global-budget", "parameters": {"budget": k_budget}},
            "statistic": "grad_norm_mean",
            "granularity": "module",
            "cost_model": {"name": "linear", "fixed": 1.0, "per_parameter": 1e-6, "unit": "relative"},
        },
    }
    return doc


def _fix_shares(shares: dict[str, float]) -> None:
    previous = 0.0
    for name, p in SHARES:
        shares[name] = min(1.0, max(shares[name], p, previous))
        previous = shares[name]


def _rank_by(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0] * len(values)
    for r, i in enumerate(order, start=1):
        ranks[i] = r
    return ranks


def repair(doc: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a schema-valid document changed just enough to satisfy every semantic rule."""
    doc = copy.deepcopy(doc)
    minimum = doc["method"]["min_examples_per_aggregate"]
    names: list[str] = []
    for i, d in enumerate(doc["domains"]):
        if d["name"] in names:
            d["name"] = f"d{i}"
        names.append(d["name"])
        d["examples"] = max(d["examples"], minimum)
        d["weight"] = 1.0 / len(doc["domains"])
        for key in ("heavy_tail",):
            fit = d.get(key)
            if fit is None:
                continue
            present = ("exponent", "x_min", "ks_distance")
            if fit["status"] == "ok":
                fit.setdefault("exponent", 1.0)
                fit.setdefault("x_min", 0.0)
                fit.setdefault("ks_distance", 0.1)
            else:
                for k in present:
                    fit.pop(k, None)
            fit["sample_count"] = len(doc["modules"])
            if fit.get("tail_count") is not None:
                fit["tail_count"] = min(fit["tail_count"], fit["sample_count"])
            _fix_shares(fit["mass_shares"])
        if "element_mass_shares" in d:
            _fix_shares(d["element_mass_shares"])
    if len(names) > 1:
        total = sum(d["weight"] for d in doc["domains"])
        if abs(total - 1) > 1e-9:  # 1/n rounding for odd n: push the remainder onto the first domain
            doc["domains"][0]["weight"] += 1 - total
    seen: set[str] = set()
    for i, m in enumerate(doc["modules"]):
        if m["name"] in seen:
            m["name"] = f"m{i}.x"
        seen.add(m["name"])
        m["parameter_count"] = min(m["parameter_count"], 10**12)
        template = next(iter(m["stats"].values()))
        m["stats"] = {d: copy.deepcopy(m["stats"].get(d, template)) for d in names}
        for s in m["stats"].values():
            s["grad_norm_mean"] = min(s["grad_norm_mean"], 1e100)
            s["grad_norm_sq_mean"] = max(
                min(s["grad_norm_sq_mean"], 1e250), s["grad_norm_mean"] ** 2 * (1 + 1e-9)
            )
            if "mean_grad_norm" in s:
                s["mean_grad_norm"] = min(s["mean_grad_norm"], s["grad_norm_mean"])
    for d in names:
        ranks = _rank_by([m["stats"][d]["grad_norm_mean"] for m in doc["modules"]])
        for m, r in zip(doc["modules"], ranks):
            m["stats"][d]["rank"] = r
    if any("combined" in m for m in doc["modules"]):
        scores = [m.get("combined", {"score": 0.0})["score"] for m in doc["modules"]]
        for m, s, r in zip(doc["modules"], scores, _rank_by(scores)):
            m["combined"] = {"score": s, "rank": r}
    alloc = doc["allocation"]
    if alloc["granularity"] == "module":
        for m in doc["modules"]:
            if "k_star" in m:
                m["k_star"] = 1.0
    if "domain_weights" in alloc:
        alloc["domain_weights"] = {d["name"]: d["weight"] for d in doc["domains"]}
    total_params = sum(m["parameter_count"] for m in doc["modules"])
    params = alloc["rule"]["parameters"]
    limit = params.get("budget") if alloc["rule"]["name"] == "global-budget" else None
    if alloc["rule"]["name"] == "marginal":
        limit = params.get("max_fraction")
    trainable = math.fsum(m.get("k_star", 0.0) * m["parameter_count"] for m in doc["modules"])
    if limit is not None and alloc["granularity"] == "module":
        for m in doc["modules"]:  # whole modules: drop selections until the budget holds
            if trainable <= limit * total_params:
                break
            if "k_star" in m:
                del m["k_star"]
                trainable -= m["parameter_count"]
    if limit is not None and trainable > limit * total_params:
        scale = limit * total_params / trainable * (1 - 1e-9)
        for m in doc["modules"]:
            if "k_star" in m:
                m["k_star"] = m["k_star"] * scale
                if m["k_star"] <= 0:
                    del m["k_star"]
        trainable = math.fsum(m.get("k_star", 0.0) * m["parameter_count"] for m in doc["modules"])
    if "trainable_fraction" in alloc:
        alloc["trainable_fraction"] = min(1.0, trainable / total_params)
    if "parameter_count" in doc["model"]:
        doc["model"]["parameter_count"] = max(doc["model"]["parameter_count"], total_params)
    for i, s in enumerate(doc.get("sidecars", [])):
        s["path"] = f"scores-{i}.safetensors"
    ds = doc.get("data_selection")
    if ds is not None:
        ds["examples_total"] = max(ds["examples_total"], minimum)
        ds["examples_selected"] = min(round(ds["fraction"] * ds["examples_total"]), ds["examples_total"])
        if "drop_top_fraction" in ds:
            ds["drop_top_fraction"] = min(ds["drop_top_fraction"], 1 - ds["fraction"])
        if "domain" in ds and ds["domain"] not in names:
            ds["domain"] = names[0]
        if "score_quantiles" in ds:
            q = sorted(ds["score_quantiles"].values())
            ds["score_quantiles"] = dict(zip(("p10", "p50", "p90"), q))
    _repair_stability(doc)
    return doc


def _repair_stability(doc: dict[str, Any]) -> None:
    """SPEC 7.7 and 14: intervals exactly on the domains with a stability, lower <= upper, and a
    spec_version that defines the members used."""
    with_stability = {d["name"] for d in doc["domains"] if "stability" in d}
    for m in doc["modules"]:
        for name, s in m["stats"].items():
            if name not in with_stability:
                s.pop("interval", None)
                continue
            bounds = sorted((s.get("interval") or {"lower": 0.0, "upper": s["grad_norm_mean"]}).values())
            s["interval"] = {"lower": bounds[0], "upper": bounds[1]}
    needed = int(required_spec_version(doc).split(".")[1])
    if int(doc["spec_version"].split(".")[1]) < needed:
        doc["spec_version"] = f"1.{needed}.0"
