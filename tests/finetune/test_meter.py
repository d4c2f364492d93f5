"""Meter: FLOP accounting against a hand count, trainable-state bytes, dPsi/dGamma, the stopping rule."""

from __future__ import annotations

import pytest
import torch

from reference_impl.apply import apply_blueprint
from reference_impl.meter import Meter, MeterPoint, StoppingRule, peak_rss_bytes
from tests.finetune.conftest import TinyMLP, mlp_blueprint, mlp_loss

# TinyMLP: Linear(4, 8) -> ReLU -> LayerNorm(8) -> Linear(8, 3); a batch of 5 examples.
# Forward (2 x multiply-adds of the weight products): l1 = 2*5*4*8 = 320, l2 = 2*5*8*3 = 240.
L1, L2 = 320, 240


def _one_step(model: torch.nn.Module, meter: Meter) -> dict[str, float]:
    x = torch.randn(5, 4)
    y = torch.randint(0, 3, (5,))
    mlp_loss(model, (x, y)).backward()
    meter.step(examples=5)
    g = meter.gamma()
    return {k: g[k] for k in ("flops_forward", "flops_activation_grad", "flops_weight_grad", "flops")}


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        (None, (L1 + L2, L2, L1 + L2)),  # full: activation grad below l2 only (nothing runs before l1)
        (["l2"], (L1 + L2, 0, L2)),  # last layer: backward stops at l2
        (["l1"], (L1 + L2, L2, L1)),  # first layer: activation grad through l2, weight grad of l1 only
        (["ln"], (L1 + L2, L2, 0)),  # a LayerNorm: its cost is not counted, but backward passes l2
    ],
)
def test_flops_match_hand_count(mlp: TinyMLP, train: list[str] | None, expected: tuple[int, int, int]) -> None:
    if train is not None:
        apply_blueprint(mlp, mlp_blueprint(mlp), budget=1.0 if train is None else 0.9, modules=train)
    meter = Meter(mlp)
    got = _one_step(mlp, meter)
    assert (got["flops_forward"], got["flops_activation_grad"], got["flops_weight_grad"]) == expected
    assert got["flops"] == sum(expected)
    # Evaluation forwards (no grad) are not training cost.
    with torch.no_grad():
        mlp(torch.randn(5, 4))
    meter.step()
    assert meter.gamma()["flops_forward"] == expected[0]


def test_sparse_selection_is_credited_like_its_module(mlp: TinyMLP) -> None:
    from tests.finetune.conftest import mlp_batches

    h = apply_blueprint(mlp, mlp_blueprint(mlp), budget=0.2, granularity="element", modules=None,
                        local_batches=mlp_batches(1, 2), loss_fn=mlp_loss)
    trainable = {s.name for s in h.selection if s.selected}
    meter = Meter(mlp, handle=h)
    got = _one_step(mlp, meter)
    # A partly trained Linear is credited the share of its weight gradient that backward forms
    # (the row blocks holding a selected entry); a dense one all of it.
    share = {name: h.weight_grad_fraction(mlp.get_submodule(name)) for name in ("l1", "l2")}
    assert any(v is not None and v < 1 for v in share.values()), "some module is trained in part"
    wgrad = sum(round(f * (1.0 if share[n] is None else share[n])) for n, f in (("l1", L1), ("l2", L2))
                if n in trainable)
    assert got["flops_weight_grad"] == wgrad
    assert got["flops_activation_grad"] == (L2 if "l1" in trainable or "ln" in trainable else 0)


def test_trainable_state_bytes_and_report(mlp: TinyMLP) -> None:
    opt = torch.optim.AdamW(mlp.parameters(), lr=0.01)
    meter = Meter(mlp, optimizer=opt)
    meter.evaluate(0.25)
    meter.start()
    mlp_loss(mlp, (torch.randn(5, 4), torch.randint(0, 3, (5,)))).backward()
    opt.step()
    meter.step(5)
    n = sum(p.numel() for p in mlp.parameters())
    # params + grads + exp_avg + exp_avg_sq in float32, + one step scalar per tensor.
    assert meter.trainable_state_bytes() == 4 * n * 4 + 4 * len(list(mlp.parameters()))
    meter.pause()
    p = meter.evaluate(0.75)
    assert p.rate["flops"] == pytest.approx(0.5 / p.gamma["flops"])
    rep = meter.report()
    assert rep["dpsi_dgamma"]["flops"] == pytest.approx(0.5 / p.gamma["flops"])
    assert rep["points"][1]["gamma"]["peak_memory_bytes"] >= 1 << 20
    assert peak_rss_bytes() > 0


def _feed(rule: StoppingRule, rates: list[float]) -> list[bool]:
    out = []
    for i, r in enumerate(rates):
        rule(None, MeterPoint(step=i, psi=0.0, gamma={}, rate={"flops": r}))  # type: ignore[arg-type]
        out.append(rule.should_stop)
    return out


def test_stopping_rule_window_and_patience() -> None:
    rule = StoppingRule(eta=1.0, window=2, patience=2)
    # window means: 5, 5, 5, 3, 0.75 (<1), 0.25 (<1) -> fires at the 6th check.
    fired = _feed(rule, [5, 5, 5, 1, 0.5, 0.0, 0.0])
    assert fired == [False, False, False, False, False, True, True]
    assert rule.stopped_at == 5
    rule = StoppingRule(eta=1.0, window=1, patience=2)
    assert _feed(rule, [0.5, 2.0, 0.5, 2.0, 0.5]) == [False] * 5  # never two in a row
    rule(None, MeterPoint(step=9, psi=0.0, gamma={}, rate={}))  # type: ignore[arg-type]  # no rate: ignored
    assert not rule.should_stop
    with pytest.raises(ValueError):
        StoppingRule(eta=1.0, window=0)


def test_stopping_rule_as_meter_callback(mlp: TinyMLP) -> None:
    rule = StoppingRule(eta=1e9, window=1, patience=1)
    meter = Meter(mlp, callbacks=[rule])
    meter.evaluate(0.1)
    meter.start()
    mlp_loss(mlp, (torch.randn(5, 4), torch.randint(0, 3, (5,)))).backward()
    meter.step(5)
    meter.evaluate(0.2)
    assert rule.should_stop
