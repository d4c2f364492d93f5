"""Ghost norms equal a naive per-example loop (one example at a time, plain autograd)."""

from __future__ import annotations

import pytest
import torch

from reference_impl.ghost_norms import per_example_grad_norms, per_example_grad_norms_loop
from tests.data_selection.models import (
    SeqNet,
    TiedLM,
    module_params,
    naive_sq_norms,
    seqnet_loss,
    split_unpadded,
    tied_loss,
)


def _seq_batch(dtype_seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(dtype_seed)
    lengths = [7, 3, 5, 1, 7]
    ids = torch.zeros(len(lengths), 7, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, 4, (n,), generator=g)  # few ids: many repeats within a sequence
    mask = (ids != 0).long()
    labels = torch.tensor([0, 2, 1, 1, 0])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("form", ["auto", "gram", "explicit"])
def test_seqnet_float64_all_forms(form: str) -> None:
    torch.manual_seed(0)
    model = SeqNet().double().eval()
    batch = _seq_batch()
    rows = module_params(model)
    res = per_example_grad_norms(model, batch, seqnet_loss, rows, form=form)
    assert res.modules == list(rows)
    expected = naive_sq_norms(model, split_unpadded(batch), seqnet_loss, rows)
    torch.testing.assert_close(res.sq_norms.double(), expected, rtol=1e-8, atol=1e-12)
    methods = dict(zip(res.modules, res.methods))
    assert methods["emb"] == "embedding"
    assert methods["ln"] == "direct"
    assert methods["scale"] == "vmap"  # no ghost rule: torch.func fallback
    if form != "auto":
        assert methods["l1"] == form
    # T = 7, d = 6, p = 12: 2*49 > 72 -> explicit under the rule; head sees T = 1
    assert form != "auto" or methods["l1"] == "explicit"
    torch.testing.assert_close(res.scores.double(), expected.sum(0).sqrt(), rtol=1e-8, atol=1e-12)


def test_padding_contributes_nothing() -> None:
    """A padded batch gives each example the same norms as that example alone without padding,
    and changing the ids under padding changes nothing."""
    torch.manual_seed(1)
    model = SeqNet(scale=False).double().eval()
    batch = _seq_batch(3)
    rows = module_params(model)
    res = per_example_grad_norms(model, batch, seqnet_loss, rows)
    garbage = dict(batch)
    garbage["input_ids"] = torch.where(batch["attention_mask"] == 1, batch["input_ids"], torch.full_like(batch["input_ids"], 5))
    res2 = per_example_grad_norms(model, garbage, seqnet_loss, rows)
    torch.testing.assert_close(res.sq_norms, res2.sq_norms, rtol=1e-10, atol=1e-14)
    for i, ex in enumerate(split_unpadded(batch)):
        alone = per_example_grad_norms(model, ex, seqnet_loss, rows)
        torch.testing.assert_close(res.sq_norms[:, i : i + 1], alone.sq_norms, rtol=1e-8, atol=1e-14)


def test_float32_tolerance() -> None:
    torch.manual_seed(2)
    model = SeqNet().eval()
    batch = _seq_batch(5)
    rows = module_params(model)
    res = per_example_grad_norms(model, batch, seqnet_loss, rows)
    expected = naive_sq_norms(model, split_unpadded(batch), seqnet_loss, rows)
    torch.testing.assert_close(res.sq_norms.double(), expected, rtol=1e-4, atol=1e-7)


def test_bias_is_norm_of_summed_gradient() -> None:
    """Bias: ||sum_t g_t||^2, not sum_t ||g_t||^2 (they differ whenever T > 1)."""
    torch.manual_seed(3)
    model = SeqNet(scale=False).double().eval()
    batch = _seq_batch(7)
    for p in model.parameters():
        p.requires_grad_(False)
    model.l1.bias.requires_grad_(True)
    rows = {"l1.bias": [model.l1.bias]}
    res = per_example_grad_norms(model, batch, seqnet_loss, rows)
    expected = naive_sq_norms(model, split_unpadded(batch), seqnet_loss, rows)
    torch.testing.assert_close(res.sq_norms, expected, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("form", ["gram", "explicit"])
def test_tied_weights_and_repeated_calls(form: str) -> None:
    torch.manual_seed(4)
    model = TiedLM().double().eval()
    ids = torch.tensor([[1, 2, 1, 1, 3, 2], [4, 4, 4, 4, 4, 4], [0, 8, 7, 1, 0, 8]])
    batch = {"input_ids": ids}
    rows = module_params(model)
    assert set(rows) == {"emb", "mix"}  # out.weight is emb.weight
    res = per_example_grad_norms(model, batch, tied_loss, rows, form=form)
    examples = [{"input_ids": ids[i : i + 1]} for i in range(3)]
    expected = naive_sq_norms(model, examples, tied_loss, rows)
    torch.testing.assert_close(res.sq_norms, expected, rtol=1e-8, atol=1e-14)
    assert dict(zip(res.modules, res.methods))["emb"] == "tied-gram"


def test_unsupported_without_fallback_is_reported() -> None:
    model = SeqNet().double().eval()
    batch = _seq_batch()
    res = per_example_grad_norms(model, batch, seqnet_loss, module_params(model), fallback=False)
    assert "scale" in res.unsupported and "scale" not in res.modules
    assert res.sq_norms.shape == (len(res.modules), 5)


def test_restricted_to_given_modules() -> None:
    model = SeqNet().double().eval()
    batch = _seq_batch()
    res = per_example_grad_norms(model, batch, seqnet_loss, ["l1", "head"])
    full = per_example_grad_norms(model, batch, seqnet_loss)
    assert res.modules == ["l1", "head"]
    idx = [full.modules.index(m) for m in res.modules]
    torch.testing.assert_close(res.sq_norms, full.sq_norms[idx], rtol=1e-10, atol=0)


def test_loop_reference_matches_test_naive() -> None:
    model = SeqNet().double().eval()
    batch = _seq_batch()
    rows = module_params(model)
    exs = split_unpadded(batch)
    torch.testing.assert_close(
        per_example_grad_norms_loop(model, exs, seqnet_loss, rows), naive_sq_norms(model, exs, seqnet_loss, rows)
    )


def test_no_parameter_gradients_left_behind() -> None:
    model = SeqNet().eval()
    per_example_grad_norms(model, _seq_batch(), seqnet_loss)
    assert all(p.grad is None for p in model.parameters())


class _InPlace(torch.nn.Module):
    """Outputs modified in place downstream (residual `+=`, `relu_`), as many models do."""

    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(4, 4)
        self.h = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.l(x)
        y += x
        y.relu_()
        return self.h(y).sum(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_modified_in_place(dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    model = _InPlace().to(dtype)
    x = torch.randn(3, 5, 4, dtype=dtype)
    y = torch.tensor([0, 1, 1])

    def loss(m: torch.nn.Module, b: dict) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(b["x"]), b["y"], reduction="none")

    rows = module_params(model)
    res = per_example_grad_norms(model, {"x": x, "y": y}, loss, rows)
    expected = naive_sq_norms(model, [{"x": x[i : i + 1], "y": y[i : i + 1]} for i in range(3)], loss, rows)
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(res.sq_norms.double(), expected, rtol=tol, atol=1e-10)


def test_non_finite_scores_are_refused() -> None:
    from reference_impl.data_selection import score_batches
    from reference_impl.errors import ComputeError

    model = SeqNet().double().eval()
    with torch.no_grad():
        model.l1.weight[0, 0] = float("nan")
    with pytest.raises(ComputeError) as exc:
        score_batches(model, [_seq_batch()], seqnet_loss)
    assert exc.value.issues[0].code in ("non-finite-gradient", "non-finite-number")
    assert "batch 0" in exc.value.issues[0].message
