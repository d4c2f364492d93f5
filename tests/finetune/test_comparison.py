"""A short version of the measured comparison (benchmarks/finetune.py) on a tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

from reference_impl.apply import apply_blueprint
from reference_impl.compute import compute_blueprint
from reference_impl.finetune import train
from tests.finetune.conftest import bert_batches, tiny_bert_cls


@pytest.mark.slow
def test_arms_share_one_path_and_partial_updates_hold_less_state() -> None:
    base = tiny_bert_cls()
    bp = compute_blueprint(base, {"a": bert_batches(0, 4)}, device="cpu", min_examples_per_aggregate=1)
    train_b, eval_b = bert_batches(1, 6), bert_batches(2, 2)
    out = {}
    for name, kw in {
        "full": {"budget": 1.0},
        "blueprint": {"budget": 0.2, "granularity": "element", "local_batches": train_b[:2]},
        "random": {"budget": 0.2, "granularity": "element", "random_seed": 0},
        "module": {"budget": 0.2, "granularity": "module", "local_batches": train_b[:2]},
    }.items():
        model = copy.deepcopy(base)
        h = apply_blueprint(model, bp, **kw)  # type: ignore[arg-type]
        res = train(model, h.parameters(), train_b, eval_b, handle=h, max_steps=6, lr=1e-2, progress=False,
                    eval_every=3)
        rep = res.meter.report()
        out[name] = (h, res, rep)
        assert res.steps == 6 and len(rep["points"]) == 3
        assert 0.0 <= res.accuracy <= 1.0
    full_state = out["full"][2]["points"][-1]["gamma"]["trainable_state_bytes"]
    n_full = sum(p.numel() for p in base.parameters())
    assert full_state == 4 * 4 * n_full + 4 * len(list(base.parameters()))  # params, grads, two AdamW moments, steps
    for name in ("blueprint", "random", "module"):
        h, res, rep = out[name]
        state = rep["points"][-1]["gamma"]["trainable_state_bytes"]
        assert state < 0.35 * full_state, name
        g = rep["points"][-1]["gamma"]
        assert g["flops_forward"] == out["full"][2]["points"][-1]["gamma"]["flops_forward"]
        assert g["flops_weight_grad"] <= out["full"][2]["points"][-1]["gamma"]["flops_weight_grad"]
    # The full arm went through apply_blueprint too and trained every parameter.
    assert out["full"][0].trainable_count == n_full
    assert torch.isfinite(torch.tensor(out["full"][1].step_time_s))
