"""The reference implementation reproduces spec/compliance/compute/ (in float32 and in float64)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

import blueprint_format as bf
from reference_impl import compliance

VECTOR = Path(__file__).resolve().parents[2] / "spec" / "compliance" / "compute"


def _expected() -> dict:
    return json.loads((VECTOR / "expected.json").read_text(encoding="utf-8"))


def test_vector_files_are_real_formats() -> None:
    with safe_open(str(VECTOR / "model.safetensors"), framework="pt") as fh:
        keys = sorted(fh.keys())
    assert len(keys) == 26 and "head.weight" in keys
    assert bf.structure_digest(bf.model_tensors(VECTOR / "model.safetensors")) == _expected()["model"]["structure_digest"]
    doc = json.loads((VECTOR / "batches.json").read_text(encoding="utf-8"))
    assert set(doc["domains"]) == {"d1", "d2"}


def test_reference_reproduces_expected() -> None:
    bp = compliance.compute(VECTOR)
    assert bf.validate(bp) == []
    assert compliance.compare(bp, _expected()) == []


def test_float64_computation_is_within_tolerance() -> None:
    """An implementation computing in float64 passes too: the tolerances are not float32-specific."""
    from reference_impl import AllocationRule, compute_blueprint

    model = compliance.load_model(VECTOR).double()
    batches = {
        d: [{"x": b["x"].double(), "y": b["y"]} for b in bs] for d, bs in compliance.load_batches(VECTOR).items()
    }
    bp = compute_blueprint(
        model, batches, compliance.mlp_loss, model_path=VECTOR / "model.safetensors",
        domain_weights={"d1": 0.5, "d2": 0.5}, rule=AllocationRule("global-budget", {"budget": 0.3}), granularity="module",
        created=compliance.CREATED,
    )
    problems = compliance.compare(bp, _expected())
    # The float64 model has F64 tensors, so only the structure digest may differ.
    assert problems in ([], ["structure digest differs"])


def test_a_wrong_implementation_fails() -> None:
    bp = compliance.compute(VECTOR)
    doc = bp.to_json()
    doc["modules"][0]["stats"]["d1"]["grad_norm_mean"] *= 1.001
    assert any("grad_norm_mean" in p for p in compliance.compare(bf.from_json(doc), _expected()))


def test_generation_is_deterministic(tmp_path: Path) -> None:
    compliance.generate(tmp_path)
    for name in ("model.safetensors", "batches.json", "expected.json"):
        assert (tmp_path / name).read_bytes() == (VECTOR / name).read_bytes(), name
    assert torch.equal(compliance.load_batches(tmp_path)["d1"][0]["x"], compliance.load_batches(VECTOR)["d1"][0]["x"])
