"""Compliance vectors for computation (spec/compliance/compute/): generate and check.

The vector is language-neutral: a tiny MLP in `model.safetensors`, fixed batches in
`batches.json` and the expected statistics with tolerances in `expected.json` (README.md there
defines the model and the loss). Another implementation builds the same model from the tensors,
runs the same batches and compares its numbers with `expected.json`.

    python -m reference_impl.compliance generate spec/compliance/compute
    python -m reference_impl.compliance check spec/compliance/compute
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blueprint_format.models import Blueprint

DEPTH = 12  # hidden layers: layers.0 .. layers.11, then head
WIDTH = 4
CLASSES = 3
CREATED = "2026-01-01T00:00:00Z"
RULE = {"name": "global-budget", "parameters": {"budget": 0.3}}
TOLERANCES = {
    "statistic_rel": 1e-4,
    "statistic_abs": 1e-9,
    "score_rel": 1e-4,
    "exponent_rel": 1e-3,
    "x_min_rel": 1e-4,
    "ks_abs": 1e-4,
    "share_abs": 1e-5,
}


class CompliancePlainMLP(nn.Module):
    """x -> tanh(layers.0) -> ... -> tanh(layers.11) -> head; loss = mean cross-entropy."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)])
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        out: torch.Tensor = self.head(x)
        return out


def mlp_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of the batch."""
    return nn.functional.cross_entropy(model(batch["x"]), batch["y"])


def load_model(folder: Path) -> CompliancePlainMLP:
    """The vector's model with the weights of `model.safetensors`."""
    from safetensors.torch import load_file

    model = CompliancePlainMLP()
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model


def load_batches(folder: Path) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Domain -> batches from `batches.json`."""
    doc = json.loads((folder / "batches.json").read_text(encoding="utf-8"))
    return {
        name: [
            {"x": torch.tensor(b["x"], dtype=torch.float32), "y": torch.tensor(b["y"], dtype=torch.long)}
            for b in batches
        ]
        for name, batches in doc["domains"].items()
    }


def compute(folder: Path) -> Blueprint:
    """The reference implementation's blueprint for the vector in `folder`."""
    from reference_impl.allocation import Rule
    from reference_impl.compute import ComputeConfig, compute_blueprint

    doc = json.loads((folder / "batches.json").read_text(encoding="utf-8"))
    config = ComputeConfig(
        model_path=folder / "model.safetensors", model_name="compliance-mlp", revision="v1",
        loss_name="cross-entropy-mean", domain_weights=doc["weights"],
        rule=Rule(RULE["name"], dict(RULE["parameters"])),  # type: ignore[arg-type]
        granularity="module", device="cpu", seed=0, created=CREATED,
    )
    return compute_blueprint(load_model(folder), load_batches(folder), mlp_loss, config)


def expected_from(bp: Blueprint) -> dict[str, Any]:
    """The expected-values document for a computed blueprint."""
    domains: dict[str, Any] = {}
    for d in bp.domains:
        assert d.heavy_tail is not None and d.element_mass_shares is not None
        ht = d.heavy_tail
        fit: dict[str, Any] = {"status": ht.status, "sample_count": ht.sample_count}
        if ht.status == "ok":
            fit.update(exponent=ht.exponent, x_min=ht.x_min, ks_distance=ht.ks_distance, tail_count=ht.tail_count)
        domains[d.name] = {
            "weight": d.weight,
            "examples": d.examples,
            "batches": d.batches,
            "heavy_tail": {**fit, "statistic": ht.statistic, "exponent_convention": ht.exponent_convention},
            "module_mass_shares": ht.mass_shares.model_dump(),
            "element_mass_shares": d.element_mass_shares.model_dump(),
        }
    modules = {
        m.name: {
            "parameter_count": m.parameter_count,
            # The bootstrap intervals (SPEC 7.7) are draws of numpy's generator: not compared here.
            "stats": {k: v.model_dump(exclude_none=True, exclude={"interval"}) for k, v in m.stats.items()},
            "combined": m.combined.model_dump() if m.combined else None,
            "k_star": m.k_star,
        }
        for m in bp.modules
    }
    return {
        "description": "Expected statistics of the compute compliance vector; see README.md for definitions.",
        "model": {"file": "model.safetensors", "structure_digest": bp.model.structure_digest},
        "method": {"estimator": bp.method.estimator, "loss": "mean cross-entropy per batch", "precision": "fp32"},
        "allocation": {"rule": RULE, "granularity": "module", "statistic": "grad_norm_mean",
                       "trainable_fraction": bp.allocation.trainable_fraction},
        "tolerances": TOLERANCES,
        "domains": domains,
        "modules": modules,
    }


def _close(got: float | None, exp: float | None, rel: float, abs_: float = 0.0) -> bool:
    if got is None or exp is None:
        return got is exp
    return math.isclose(got, exp, rel_tol=rel, abs_tol=abs_)


def compare(bp: Blueprint, expected: dict[str, Any]) -> list[str]:
    """Mismatches between a computed blueprint and the expected document (empty: compliant)."""
    tol = expected["tolerances"]
    bad: list[str] = []
    if bp.model.structure_digest != expected["model"]["structure_digest"]:
        bad.append("structure digest differs")
    for name, exp in expected["domains"].items():
        d = bp.domain(name)
        if (d.examples, d.batches) != (exp["examples"], exp["batches"]):
            bad.append(f"{name}: examples/batches {(d.examples, d.batches)} != {(exp['examples'], exp['batches'])}")
        assert d.heavy_tail is not None and d.element_mass_shares is not None
        ht, eht = d.heavy_tail, exp["heavy_tail"]
        if ht.status != eht["status"] or ht.sample_count != eht["sample_count"] or ht.tail_count != eht.get("tail_count"):
            bad.append(f"{name}: heavy-tail status/counts differ")
        for key, rel, abs_ in (("exponent", tol["exponent_rel"], 0.0), ("x_min", tol["x_min_rel"], 0.0),
                               ("ks_distance", 0.0, tol["ks_abs"])):
            if not _close(getattr(ht, key), eht.get(key), rel, abs_):
                bad.append(f"{name}: heavy_tail.{key} {getattr(ht, key)} != {eht.get(key)}")
        for which, got in (("module_mass_shares", ht.mass_shares), ("element_mass_shares", d.element_mass_shares)):
            for key, value in exp[which].items():
                if not _close(getattr(got, key), value, 0.0, tol["share_abs"]):
                    bad.append(f"{name}: {which}.{key} {getattr(got, key)} != {value}")
    for mname, exp in expected["modules"].items():
        try:
            m = bp.module(mname)
        except KeyError:
            bad.append(f"module {mname} missing")
            continue
        if m.parameter_count != exp["parameter_count"]:
            bad.append(f"{mname}: parameter_count")
        for dname, stats in exp["stats"].items():
            got_stats = m.stats[dname]
            for key, value in stats.items():
                if key == "rank":
                    if got_stats.rank != value:
                        bad.append(f"{mname}/{dname}: rank {got_stats.rank} != {value}")
                elif not _close(getattr(got_stats, key), value, tol["statistic_rel"], tol["statistic_abs"]):
                    bad.append(f"{mname}/{dname}: {key} {getattr(got_stats, key)} != {value}")
        if m.combined is None or not _close(m.combined.score, exp["combined"]["score"], tol["score_rel"]):
            bad.append(f"{mname}: combined score")
        elif m.combined.rank != exp["combined"]["rank"]:
            bad.append(f"{mname}: combined rank")
        if m.k_star != exp["k_star"]:
            bad.append(f"{mname}: k_star {m.k_star} != {exp['k_star']}")
    return bad


def generate(folder: Path, seed: int = 20260101) -> None:
    """Write model.safetensors, batches.json and expected.json into `folder`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    model = CompliancePlainMLP()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Weights scaled by depth position so module norms spread over orders of magnitude.
            scale = 1.4 if name.startswith("layers.") else 1.0
            p.copy_(torch.randn(p.shape, generator=g) * scale / math.sqrt(WIDTH))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))

    def batch(n: int, shift: float) -> dict[str, Any]:
        # Inputs are multiples of 1/64 so that JSON decimals are exact in float32.
        x = torch.round((torch.randn(n, WIDTH, generator=g) + shift) * 64) / 64
        y = torch.randint(0, CLASSES, (n,), generator=g)
        return {"x": x.tolist(), "y": y.tolist()}

    doc = {
        "description": "Fixed calibration batches: x is batch x 4 inputs, y the class index (0..2).",
        "weights": {"d1": 0.5, "d2": 0.5},
        "domains": {"d1": [batch(8, 0.0) for _ in range(5)], "d2": [batch(10, 1.5) for _ in range(4)]},
    }
    (folder / "batches.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    bp = compute(folder)
    (folder / "expected.json").write_text(json.dumps(expected_from(bp), indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="compute compliance vectors")
    ap.add_argument("action", choices=("generate", "check"))
    ap.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    if args.action == "generate":
        generate(args.folder)
        print(f"wrote {args.folder}/model.safetensors, batches.json, expected.json")
        return 0
    expected = json.loads((args.folder / "expected.json").read_text(encoding="utf-8"))
    problems = compare(compute(args.folder), expected)
    for p in problems:
        print(p)
    print("compliant" if not problems else f"{len(problems)} mismatches")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
