"""The in-place sparse update engine (reference_impl/sparse_update.py), checked against dense autograd
and a hand-written masked AdamW, with allocation tracking."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from reference_impl.sparse_update import SparseEngine, attach_sparse

VOCAB, DIM, HIDDEN = 64, 32, 48


class TinyLM(nn.Module):
    """Embedding tied to the output layer, a Linear with bias, a GPT-2 Conv1D and a LayerNorm."""

    def __init__(self) -> None:
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.up = nn.Linear(DIM, HIDDEN)
        self.down = Conv1D(DIM, HIDDEN)  # weight (HIDDEN, DIM): rows are input features
        self.norm = nn.LayerNorm(DIM)
        self.out = nn.Linear(DIM, VOCAB, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + self.down(torch.tanh(self.up(h)))
        return self.out(self.norm(h))


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    ids, target = batch
    return nn.functional.cross_entropy(model(ids).reshape(-1, VOCAB), target.reshape(-1))


def lm_batches(seed: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    # Token 0 (the padding row) occurs too: its gradient must stay zero.
    return [(torch.randint(0, VOCAB, (4, 9), generator=g), torch.randint(0, VOCAB, (4, 9), generator=g))
            for _ in range(n)]


def tiny_lm(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


def random_targets(model: nn.Module, granularity: str, share: float, seed: int = 1,
                   skip: tuple[str, ...] = ("norm.",)) -> list[tuple[str, torch.Tensor, str]]:
    """About `share` of each tensor's units, drawn at random."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, p in model.named_parameters():
        if name.startswith(skip):
            continue
        units = p.numel() if granularity == "element" or p.dim() <= 1 else int(p.shape[0])
        out.append((name, torch.randperm(units, generator=g)[: max(1, int(share * units))], granularity))
    return out


def gathered(sel: Any, dense: torch.Tensor) -> torch.Tensor:
    idx = sel.flat_indices()
    return dense.index_select(0, idx) if sel.granularity == "row" else dense.reshape(-1).index_select(0, idx)


@pytest.mark.parametrize("granularity", ["element", "row"])
def test_selected_gradients_equal_dense_autograd(granularity: str) -> None:
    model = tiny_lm()
    reference = copy.deepcopy(model)
    model.norm.requires_grad_(False)
    engine = attach_sparse(model, random_targets(model, granularity, 0.3))
    batch = lm_batches(0, 1)[0]
    lm_loss(model, batch).backward()
    lm_loss(reference, batch).backward()
    ref = dict(reference.named_parameters())
    assert set(engine.selections) == {"emb.weight", "up.weight", "up.bias", "down.weight", "down.bias"}
    for name, sel in engine.selections.items():
        # emb.weight is tied to out.weight: both uses add to one gradient.
        torch.testing.assert_close(sel.values.grad, gathered(sel, ref[name].grad), rtol=1e-5, atol=1e-7)
    # The frozen LayerNorm passes gradients on to the lower layers, but keeps none itself.
    assert all(p.grad is None for n, p in model.named_parameters() if not n.endswith(".values"))


def test_few_active_rows_form_only_those_rows() -> None:
    model = tiny_lm()
    reference = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    rows = torch.tensor([3, 17, 40])  # of the tied embedding / output weight (VOCAB rows)
    cols = torch.tensor([0, 5, 31])
    flat = (rows[:, None] * DIM + cols[None, :]).reshape(-1)
    up_flat = torch.tensor([2 * DIM + 1, 2 * DIM + 7, 9 * DIM])  # rows 2 and 9 of up.weight
    engine = attach_sparse(model, [("emb.weight", flat, "element"), ("up.weight", up_flat, "element")])
    emb, up = engine.selections["emb.weight"], engine.selections["up.weight"]
    assert emb.active_rows is not None and emb.active_rows.tolist() == rows.tolist()
    assert emb.weight_grad_fraction() == 3 / VOCAB and up.weight_grad_fraction() == 2 / HIDDEN
    batch = lm_batches(7, 1)[0]
    batch[0][0, :3] = rows  # the embedding rows occur in the batch too
    lm_loss(model, batch).backward()
    lm_loss(reference, batch).backward()
    ref = dict(reference.named_parameters())
    for name, sel in engine.selections.items():
        torch.testing.assert_close(sel.values.grad, gathered(sel, ref[name].grad), rtol=1e-5, atol=1e-7)


def test_padding_row_gets_no_gradient() -> None:
    model = tiny_lm()
    model.out.weight = nn.Parameter(model.out.weight.detach().clone())  # untie: embedding only
    engine = attach_sparse(model, [("emb.weight", torch.arange(2 * DIM), "element")])  # rows 0 and 1
    ids = torch.zeros(2, 5, dtype=torch.long)
    ids[:, 0] = 1
    model(ids).sum().backward()
    grad = engine.selections["emb.weight"].values.grad
    assert grad is not None
    assert torch.equal(grad[:DIM], torch.zeros(DIM)) and bool(grad[DIM:].abs().sum() > 0)


def _masked_adamw_reference(model: nn.Module, masks: dict[str, torch.Tensor], batches: list[Any], lr: float,
                            wd: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """AdamW written out by hand on dense tensors, updating only the entries in `masks`."""
    params = dict(model.named_parameters())
    m = {n: torch.zeros_like(params[n]) for n in masks}
    v = {n: torch.zeros_like(params[n]) for n in masks}
    for t, batch in enumerate(batches, start=1):
        model.zero_grad(set_to_none=True)
        lm_loss(model, batch).backward()
        with torch.no_grad():
            for n, mask in masks.items():
                p, g = params[n], params[n].grad
                m[n] = betas[0] * m[n] + (1 - betas[0]) * g
                v[n] = betas[1] * v[n] + (1 - betas[1]) * g * g
                m_hat = m[n] / (1 - betas[0] ** t)
                v_hat = v[n] / (1 - betas[1] ** t)
                new = p * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
                p.copy_(torch.where(mask, new, p))


@pytest.mark.parametrize("granularity", ["element", "row"])
def test_trajectory_equals_masked_adamw_and_the_rest_stays_bit_identical(granularity: str) -> None:
    model = tiny_lm()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = copy.deepcopy(model)
    engine = attach_sparse(model, random_targets(model, granularity, 0.25))
    masks = {n: s.mask() for n, s in engine.selections.items()}
    batches = lm_batches(3, 6)
    lr, wd = 1e-2, 0.5  # strong weight decay: it must not reach unselected entries
    opt = torch.optim.AdamW([s.values for s in engine.selections.values()], lr=lr, weight_decay=wd)
    for batch in batches:
        lm_loss(model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _masked_adamw_reference(reference, masks, batches, lr, wd)
    engine.remove()
    after = dict(model.named_parameters())
    ref = dict(reference.named_parameters())
    for name, p in after.items():
        mask = masks.get(name, torch.zeros_like(p, dtype=torch.bool))
        assert torch.equal(p[~mask], initial[name][~mask]), f"{name}: an unselected entry changed"
        torch.testing.assert_close(p, ref[name], rtol=1e-5, atol=1e-6)
        if name in masks:
            assert not torch.equal(p[mask], initial[name][mask]), f"{name}: the selection did not train"


def test_weights_are_written_after_each_step_and_gradients_accumulate() -> None:
    model = tiny_lm()
    engine = attach_sparse(model, random_targets(model, "element", 0.3))
    sel = engine.selections["up.weight"]
    opt = torch.optim.SGD([s.values for s in engine.selections.values()], lr=0.1)
    b1, b2 = lm_batches(5, 2)
    lm_loss(model, b1).backward()
    first = sel.values.grad.clone()
    lm_loss(model, b2).backward()  # accumulation: the second backward adds to the first
    reference = tiny_lm()
    (lm_loss(reference, b1) + lm_loss(reference, b2)).backward()
    torch.testing.assert_close(sel.values.grad, gathered(sel, reference.up.weight.grad), rtol=1e-5, atol=1e-7)
    assert not torch.equal(first, sel.values.grad)
    opt.step()
    # No forward since the step: the global step hook already wrote the new values into W.
    torch.testing.assert_close(model.up.weight.detach().reshape(-1)[sel.flat_indices()], sel.values.detach())


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=False),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),  # fused kernels do not advance version counters
], ids=["for-loop", "foreach", "fused"])
def test_every_optimizer_implementation_reaches_the_weights(make: Callable[[list[nn.Parameter]], Any]) -> None:
    model = tiny_lm()
    engine = attach_sparse(model, random_targets(model, "element", 0.3))
    opt = make([s.values for s in engine.selections.values()])
    for batch in lm_batches(2, 2):
        lm_loss(model, batch).backward()
        opt.step()
        opt.zero_grad()
        for sel in engine.selections.values():
            got = sel.weight.detach().reshape(-1).index_select(0, sel.flat_indices())
            assert torch.equal(got, sel.values.detach())


def test_remove_leaves_a_plain_model() -> None:
    model = tiny_lm()
    keys = sorted(model.state_dict())
    engine = attach_sparse(model, random_targets(model, "row", 0.5))
    assert any(k.endswith("sparse_weight.values") for k in model.state_dict())
    opt = torch.optim.AdamW([s.values for s in engine.selections.values()], lr=1e-2)
    lm_loss(model, lm_batches(1, 1)[0]).backward()
    opt.step()
    trained = model(lm_batches(2, 1)[0][0]).detach()
    engine.remove()
    assert sorted(model.state_dict()) == keys
    assert "forward" not in model.up.__dict__ and "forward" not in model.emb.__dict__
    assert torch.equal(model(lm_batches(2, 1)[0][0]).detach(), trained)


def test_backward_stops_at_the_lowest_trainable_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    from reference_impl import sparse_kernels

    model = tiny_lm()
    model.out.weight = nn.Parameter(model.out.weight.detach().clone(), requires_grad=False)
    for p in model.parameters():
        p.requires_grad_(False)
    attach_sparse(model, [("up.weight", torch.arange(10), "element"), ("down.weight", torch.arange(3), "row")])
    calls: list[bool] = []
    original = sparse_kernels.LinearOp.grad_input

    def spy(self: Any, *args: Any) -> torch.Tensor:
        calls.append(self.transposed)
        return original(self, *args)

    monkeypatch.setattr(sparse_kernels.LinearOp, "grad_input", spy)
    lm_loss(model, lm_batches(0, 1)[0]).backward()
    # `down` needs the gradient of its input (it flows on to `up`); `up` is the lowest trainable
    # module and its input comes from a frozen embedding: no input gradient is formed there.
    assert calls == [True]


class AllocationRecorder(TorchDispatchMode):
    """Records the storage size of every tensor an operator creates (views and in-place results excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.sizes.append((str(func), int(t.untyped_storage().nbytes())))
        return out


class WideLM(nn.Module):
    """A model whose Linear weight is much larger than any activation of a small batch."""

    def __init__(self, dim: int = 64, wide: int = 1024) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.wide = nn.Linear(dim, wide)
        self.head = nn.Linear(wide, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.wide(self.emb(ids))))


def _largest_allocation_of_a_step(model: nn.Module, params: list[nn.Parameter]) -> int:
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, VOCAB, (2, 3))

    def step() -> None:
        nn.functional.cross_entropy(model(ids).reshape(-1, VOCAB), ids.reshape(-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the optimizer's state is created in the first step
    recorder = AllocationRecorder()
    with recorder:
        step()
    return max(size for _, size in recorder.sizes)


@pytest.mark.parametrize("granularity", ["element", "row"])
def test_no_weight_sized_tensor_is_allocated_per_step(granularity: str) -> None:
    torch.manual_seed(0)
    weight_bytes = 1024 * 64 * 4
    dense = WideLM()
    for p in dense.parameters():
        p.requires_grad_(False)
    dense.wide.weight.requires_grad_(True)
    # The detector works: a dense step allocates the weight's gradient.
    assert _largest_allocation_of_a_step(dense, [dense.wide.weight]) >= weight_bytes
    sparse = WideLM()
    for p in sparse.parameters():
        p.requires_grad_(False)
    share = 0.2
    units = 1024 * 64 if granularity == "element" else 1024
    engine = attach_sparse(sparse, [("wide.weight", torch.randperm(units)[: int(share * units)], granularity)])
    largest = _largest_allocation_of_a_step(sparse, [engine.selections["wide.weight"].values])
    assert largest <= weight_bytes // 4, f"a {largest}-byte tensor was allocated (weight: {weight_bytes} bytes)"


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    from torch.utils.checkpoint import checkpoint

    model = tiny_lm()
    engine = attach_sparse(model, random_targets(model, "element", 0.3))
    batch = lm_batches(4, 1)[0]
    lm_loss(model, batch).backward()
    plain = {n: s.values.grad.clone() for n, s in engine.selections.items()}
    for s in engine.selections.values():
        s.values.grad = None

    def block(h: torch.Tensor) -> torch.Tensor:
        return h + model.down(torch.tanh(model.up(h)))

    ids, target = batch
    h = checkpoint(block, model.emb(ids), use_reentrant=False)
    nn.functional.cross_entropy(model.out(model.norm(h)).reshape(-1, VOCAB), target.reshape(-1)).backward()
    for n, s in engine.selections.items():
        torch.testing.assert_close(s.values.grad, plain[n], rtol=1e-5, atol=1e-7)


def test_conv2d_selection() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2))
    reference = copy.deepcopy(model)
    engine = attach_sparse(model, [("0.weight", torch.arange(0, 108, 3), "element"), ("2.weight", torch.tensor([1]), "row"),
                                   ("2.bias", torch.tensor([0]), "element")])
    x = torch.randn(2, 3, 8, 8)
    model(x).square().sum().backward()
    reference(x).square().sum().backward()
    ref = dict(reference.named_parameters())
    for name, sel in engine.selections.items():
        torch.testing.assert_close(sel.values.grad, gathered(sel, ref[name].grad), rtol=1e-5, atol=1e-6)


def _cuda_or_skip() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("granularity", ["element", "row"])
@pytest.mark.parametrize("backward_inside", [False, True])
def test_bf16_autocast_matches_fp32(device: str, granularity: str, backward_inside: bool) -> None:
    dev = _cuda_or_skip() if device == "cuda" else torch.device("cpu")
    model = tiny_lm().to(dev)
    reference = copy.deepcopy(model)
    engine = attach_sparse(model, random_targets(model, granularity, 0.3))
    batch = tuple(t.to(dev) for t in lm_batches(0, 1)[0])
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        loss = lm_loss(model, batch)  # type: ignore[arg-type]
        if backward_inside:  # backward inside the autocast context must give the same gradients
            loss.backward()
    if not backward_inside:
        loss.backward()
    lm_loss(reference, batch).backward()  # type: ignore[arg-type]
    ref = dict(reference.named_parameters())
    for name, sel in engine.selections.items():
        assert sel.values.grad is not None and sel.values.grad.dtype == torch.float32
        expected = gathered(sel, ref[name].grad)
        error = float((sel.values.grad - expected).norm() / expected.norm().clamp_min(1e-12))
        assert error < 0.05, f"{name}: relative error {error:.3g} under bf16 autocast"


@pytest.mark.cuda
def test_cuda_peak_memory_of_a_sparse_step_is_below_a_dense_step() -> None:
    device = _cuda_or_skip()

    def peak(setup: Callable[[nn.Module], list[nn.Parameter]]) -> int:
        torch.manual_seed(0)
        model = WideLM(dim=1024, wide=8192).to(device)  # 8.9 M parameters: state dominates the peak
        params = setup(model)
        opt = torch.optim.AdamW(params, lr=1e-3)
        ids = torch.randint(0, VOCAB, (2, 3), device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(ids).reshape(-1, VOCAB).float(), ids.reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated(device)) - base

    def full(model: nn.Module) -> list[nn.Parameter]:
        return list(model.parameters())

    def sparse(model: nn.Module) -> list[nn.Parameter]:
        for p in model.parameters():
            p.requires_grad_(False)
        targets = [(n, torch.randperm(p.numel())[: p.numel() // 5], "element") for n, p in model.named_parameters()]
        engine: SparseEngine = attach_sparse(model, targets)
        return [s.values for s in engine.selections.values()]

    assert peak(sparse) < 0.6 * peak(full)
    assert math.isfinite(float(torch.cuda.max_memory_allocated(device)))
