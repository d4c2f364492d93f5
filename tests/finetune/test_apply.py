"""apply_blueprint: selection, freezing, values-only state, save/merge/load, refusals."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from blueprint_format.errors import BindingError, BlueprintError
from reference_impl.apply import apply_blueprint, load_update, local_statistics, selected_entries
from reference_impl.model_binding import module_layout
from tests.finetune.conftest import (
    TinyMLP,
    bert_batches,
    mlp_batches,
    mlp_blueprint,
    mlp_loss,
    tiny_bert_cls,
)


def _train(model: nn.Module, params: list[nn.Parameter], steps: int = 3, wd: float = 0.1) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=wd)
    for b in mlp_batches(7, steps):
        mlp_loss(model, b).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt


def test_module_granularity_freezes_the_rest(mlp: TinyMLP) -> None:
    bp = mlp_blueprint(mlp)
    h = apply_blueprint(mlp, bp, budget=0.5, granularity="module")
    chosen = {s.name for s in h.selection if s.selected}
    assert chosen and h.selected_count <= 0.5 * h.bound_parameters
    for name, p in mlp.named_parameters():
        assert p.requires_grad == (name.rsplit(".", 1)[0] in chosen), name
    assert {id(p) for p in h.parameters()} == {id(p) for p in mlp.parameters() if p.requires_grad}


@pytest.mark.parametrize("granularity", ["element", "row"])
def test_optimizer_state_only_for_selected_entries(mlp: TinyMLP, granularity: str) -> None:
    bp = mlp_blueprint(mlp)
    h = apply_blueprint(mlp, bp, budget=0.3, granularity=granularity, local_batches=mlp_batches(3, 2),
                        loss_fn=mlp_loss)
    assert h.sparse, "a partial selection is stored values-only"
    assert 0 < h.selected_count <= 0.3 * h.bound_parameters
    opt = _train(mlp, h.parameters())
    state_elems = sum(v.numel() for p in h.parameters() for k, v in opt.state[p].items() if k != "step")
    assert state_elems == 2 * h.trainable_count == 2 * h.selected_count  # exp_avg + exp_avg_sq
    # No parameter outside the handle gets optimizer state or a gradient buffer.
    assert all(p.grad is None for p in mlp.parameters() if not p.requires_grad)
    b = h.trainable_state_bytes(opt)
    sels = [e.selection for e in h.sparse]
    idx_bytes = sum(s.indices.numel() * s.indices.element_size()
                    + sum(t.numel() * 8 for t in (s.row_ptr, s.active_rows) if t is not None) for s in sels)
    assert b["parameters"] == 4 * h.selected_count and b["indices"] == idx_bytes
    assert b["gradients"] == 0  # _train zeroes them after the last step
    assert b["optimizer"] == 8 * h.selected_count + 4 * len(h.parameters())  # + AdamW's step scalars
    assert b["total"] == b["parameters"] + b["indices"] + b["optimizer"]
    # Rows by int32 number; elements by int16 column within their row (2 bytes an entry).
    assert all(s.indices.dtype == (torch.int32 if s.granularity == "row" else torch.int16) for s in sels)


def test_unselected_weights_bit_identical_after_steps(mlp: TinyMLP) -> None:
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    bp = mlp_blueprint(mlp)
    h = apply_blueprint(mlp, bp, budget=0.25, granularity="element", local_batches=mlp_batches(3, 2),
                        loss_fn=mlp_loss)
    _train(mlp, h.parameters(), steps=4, wd=0.5)  # strong weight decay must not touch frozen entries
    masks = selected_entries(h)
    dense = set(h.dense)
    h.merge()
    after = mlp.state_dict()
    changed_somewhere = False
    for name, old in before.items():
        new = after[name]
        if name in dense:
            continue
        keep = ~masks[name] if name in masks else torch.ones_like(old, dtype=torch.bool)
        assert torch.equal(new[keep], old[keep]), name
        changed_somewhere |= name in masks and not torch.equal(new, old)
    assert changed_somewhere


@pytest.mark.parametrize("granularity", ["module", "row", "element"])
def test_save_load_merge_round_trip(tmp_path, granularity: str) -> None:
    base = tiny_bert_cls()
    bp = __import__("reference_impl.compute", fromlist=["compute_blueprint"]).compute_blueprint(
        base, {"a": bert_batches(0, 3)}, device="cpu", min_examples_per_aggregate=1
    )
    model = copy.deepcopy(base)
    h = apply_blueprint(model, bp, budget=0.2, granularity=granularity, local_batches=bert_batches(1, 2))
    opt = torch.optim.AdamW(h.parameters(), lr=1e-2)
    for b in bert_batches(2, 3):
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad()
    size = h.save_update(tmp_path / "u.safetensors")
    assert size < sum(p.numel() * 4 for p in base.parameters())
    x = bert_batches(9, 1)[0]
    model.eval()
    with torch.no_grad():
        trained = model(**x).logits
        h.merge()
        merged = model(**x).logits
        assert torch.equal(trained, merged)
        other = copy.deepcopy(base)
        changed = load_update(other, tmp_path / "u.safetensors")
        other.eval()
        assert changed
        torch.testing.assert_close(other(**x).logits, merged, rtol=0, atol=1e-6)
        assert not torch.equal(base.eval()(**x).logits, merged)
    # The merged model is a plain model again: its state_dict has the base's keys.
    assert sorted(model.state_dict()) == sorted(base.state_dict())


def test_sparse_update_equals_masked_dense_update(mlp: TinyMLP) -> None:
    bp = mlp_blueprint(mlp)
    dense = copy.deepcopy(mlp)
    h = apply_blueprint(mlp, bp, budget=0.3, granularity="element", local_batches=mlp_batches(3, 2),
                        loss_fn=mlp_loss)
    masks = selected_entries(h)
    batch = mlp_batches(11, 1)[0]
    lr = 0.1
    opt = torch.optim.SGD(h.parameters(), lr=lr)
    mlp_loss(mlp, batch).backward()
    opt.step()
    # Dense reference: full gradient, masked to the same entries (and whole for dense-selected tensors).
    mlp_loss(dense, batch).backward()
    with torch.no_grad():
        for name, p in dense.named_parameters():
            if name in masks:
                p -= lr * p.grad * masks[name]
            elif name in h.dense:
                p -= lr * p.grad
    h.merge()
    for name, p in dense.named_parameters():
        torch.testing.assert_close(mlp.get_parameter(name), p, rtol=0, atol=1e-7)


def test_local_statistics_match_the_compute_collector(mlp: TinyMLP) -> None:
    from reference_impl.collector import GradientCollector

    layout = module_layout(mlp)
    batches = mlp_batches(5, 4)
    stat, elements = local_statistics(mlp, layout.modules, batches, mlp_loss, "grad_norm_mean", True)
    col = GradientCollector(layout.modules, torch.device("cpu"))
    col.begin_domain()
    for i, b in enumerate(batches):
        mlp.zero_grad()
        mlp_loss(mlp, b).backward()
        col.accumulate(i)
    ds = col.end_domain(1.0)
    ref = col.score_tensors("element", list(range(len(layout.modules))))
    for j, m in enumerate(layout.modules):
        assert stat[m.name] == pytest.approx(float(ds.batch_norms[:, j].mean()), rel=1e-6)
    for name, t in ref.items():
        torch.testing.assert_close(elements[name], t, rtol=1e-5, atol=1e-9)


def test_blend_one_ignores_local_statistics(mlp: TinyMLP) -> None:
    bp = mlp_blueprint(mlp)
    a = apply_blueprint(copy.deepcopy(mlp), bp, budget=0.5, granularity="module")
    b = apply_blueprint(copy.deepcopy(mlp), bp, budget=0.5, granularity="module", blend=1.0,
                        local_batches=mlp_batches(99, 2), loss_fn=mlp_loss)
    assert [s.selected for s in a.selection] == [s.selected for s in b.selection]


def test_random_control_and_explicit_modules(mlp: TinyMLP) -> None:
    bp = mlp_blueprint(mlp)
    r = apply_blueprint(copy.deepcopy(mlp), bp, budget=0.3, granularity="element", random_seed=1)
    assert 0 < r.selected_count <= 0.3 * r.bound_parameters
    e = apply_blueprint(copy.deepcopy(mlp), bp, budget=0.5, modules=["l2"])
    assert [s.name for s in e.selection if s.selected] == ["l2"]


def test_full_budget_trains_everything(mlp: TinyMLP) -> None:
    h = apply_blueprint(mlp, mlp_blueprint(mlp), budget=1.0)
    assert h.trainable_count == sum(p.numel() for p in mlp.parameters())
    assert all(p.requires_grad for p in mlp.parameters())


# -- refusals -----------------------------------------------------------------------------------


def _codes(exc: BlueprintError) -> list[str]:
    return [i.code for i in exc.issues]


@pytest.mark.parametrize("budget", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.2"])
def test_bad_budget(mlp: TinyMLP, budget: object) -> None:
    with pytest.raises(BlueprintError) as err:
        apply_blueprint(mlp, mlp_blueprint(mlp), budget=budget)  # type: ignore[arg-type]
    assert _codes(err.value) == ["usage-error"] and err.value.issues[0].path == "budget"
    assert all(p.requires_grad for p in mlp.parameters())  # nothing was changed


def test_unknown_domain_and_bad_weights(mlp: TinyMLP) -> None:
    bp = mlp_blueprint(mlp)
    with pytest.raises(BlueprintError) as err:
        apply_blueprint(mlp, bp, domains={"a": 0.5, "nope": 0.5})
    assert _codes(err.value) == ["unknown-domain"]
    with pytest.raises(BlueprintError) as err:
        apply_blueprint(mlp, bp, domains={"a": 0.5, "b": 0.2})
    assert _codes(err.value) == ["domain-weights-sum"]


def test_domain_weights_change_the_ranking(mlp: TinyMLP) -> None:
    from reference_impl.apply import published_scores

    bp = mlp_blueprint(mlp)
    only_a = published_scores(bp, {"a": 1.0})
    only_b = published_scores(bp, {"b": 1.0})
    half = published_scores(bp, {"a": 0.5, "b": 0.5})
    for n in half:
        assert half[n] == pytest.approx(0.5 * only_a[n] + 0.5 * only_b[n])
    assert sum(only_a.values()) == pytest.approx(1.0)


def test_structure_digest_mismatch_refused_and_force_warns(mlp: TinyMLP) -> None:
    bp = mlp_blueprint(mlp)
    wrong = bp.model_copy(update={"model": bp.model.model_copy(update={"structure_digest": "sha256:" + "0" * 64})})
    with pytest.raises(BindingError) as err:
        apply_blueprint(mlp, wrong, budget=0.5)
    assert "structure-digest-mismatch" in _codes(err.value)
    assert all(p.requires_grad for p in mlp.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = apply_blueprint(mlp, wrong, budget=0.5, force=True)
    assert any("force=True" in str(w.message) for w in caught)
    assert h.selected_count > 0


def test_other_model_refused() -> None:
    bp = mlp_blueprint(TinyMLP())
    with pytest.raises(BindingError) as err:
        apply_blueprint(tiny_bert_cls(), bp, budget=0.5)
    assert "structure-digest-mismatch" in _codes(err.value)


def test_blueprint_missing_model_modules(mlp: TinyMLP) -> None:
    mlp.ln.requires_grad_(False)
    bp = mlp_blueprint(mlp)  # no LayerNorm entry, same tensors
    mlp.ln.requires_grad_(True)
    with pytest.raises(BlueprintError) as err:
        apply_blueprint(mlp, bp, budget=0.5)
    assert _codes(err.value) == ["model-module-not-in-blueprint"]
    assert "lacks" in str(err.value)


class _Matrix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def test_unsupported_module_type_for_element_granularity() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_Matrix(), nn.LayerNorm(6))

    def loss(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(b[0])[:, :3], b[1])

    from reference_impl.compute import compute_blueprint

    bp = compute_blueprint(model, {"a": mlp_batches(0, 3)}, loss, device="cpu", min_examples_per_aggregate=1)
    with pytest.raises(BlueprintError) as err:
        apply_blueprint(model, bp, budget=0.5, granularity="element", local_batches=mlp_batches(1, 2), loss_fn=loss)
    assert _codes(err.value) == ["unsupported-module"]
    assert "Linear, Embedding and Conv" in str(err.value)
    h = apply_blueprint(model, bp, budget=0.8, granularity="module")  # whole modules are fine
    assert h.selected_count > 0


def test_element_granularity_needs_scores(mlp: TinyMLP) -> None:
    with pytest.raises(BlueprintError) as err:
        apply_blueprint(mlp, mlp_blueprint(mlp), budget=0.3, granularity="element")
    assert _codes(err.value) == ["missing-field"]
    with pytest.raises(BlueprintError) as err:
        apply_blueprint(mlp, mlp_blueprint(mlp), budget=0.3, granularity="block")
    assert _codes(err.value) == ["usage-error"] and err.value.issues[0].path == "granularity"


def test_sidecar_scores_choose_the_same_entries_as_local_gradients(tmp_path, mlp: TinyMLP) -> None:
    from reference_impl.apply import sidecar_scores
    from reference_impl.compute import compute_blueprint

    batches = mlp_batches(0, 6)
    bp = compute_blueprint(mlp, {"a": batches}, mlp_loss, device="cpu", min_examples_per_aggregate=1,
                           sidecar=tmp_path / "scores.safetensors", sidecar_granularity="element")
    scores = sidecar_scores(bp, tmp_path)
    for gran in ("element", "row"):
        a = apply_blueprint(copy.deepcopy(mlp), bp, budget=0.3, granularity=gran, element_scores=scores)
        b = apply_blueprint(copy.deepcopy(mlp), bp, budget=0.3, granularity=gran, local_batches=batches,
                            loss_fn=mlp_loss, blend=1.0)
        assert a.selected_count > 0
        assert {e.param_name: e.selection.flat_indices().tolist() for e in a.sparse} == {
            e.param_name: e.selection.flat_indices().tolist() for e in b.sparse
        }
    (tmp_path / "scores.safetensors").write_bytes((tmp_path / "scores.safetensors").read_bytes() + b" ")
    with pytest.raises(BlueprintError) as err:
        sidecar_scores(bp, tmp_path)
    assert _codes(err.value) == ["bad-container"]
    with pytest.raises(BlueprintError) as err:
        sidecar_scores(mlp_blueprint(mlp), tmp_path)
    assert _codes(err.value) == ["missing-field"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_equals_a_naive_sort(seed: int) -> None:
    from reference_impl.selection import _threshold

    g = torch.Generator().manual_seed(seed)
    # Heavy-tailed densities with ties and zeros, in tensors of different unit sizes, plus whole modules.
    parts = [
        ("a", (torch.rand(5000, generator=g) ** 8).mul_(1e-3), 1),
        ("b", torch.randint(0, 50, (300,), generator=g).float().mul_(1e-5), 7),
        ("c", torch.zeros(40), 1),
    ]
    wholes = [("w1", float(torch.tensor(3e-5, dtype=torch.float32)), 11), ("w2", 1e-9, 3)]
    units = [(float(v), size) for _, d, size in parts for v in d.tolist()] + [(d, size) for _, d, size in wholes]
    total = sum(size for v, size in units if v > 0)
    for cap in (1, 97, 1000, total // 3, total - 1, total):
        tau = _threshold(parts, wholes, cap)
        assert tau is not None
        taken = sum(size for v, size in units if v >= tau)
        # Naive: walk the distinct positive densities from the largest down while their units fit.
        per_value: dict[float, int] = {}
        for v, size in units:
            if v > 0:
                per_value[v] = per_value.get(v, 0) + size
        expected = 0
        for v in sorted(per_value, reverse=True):
            if expected + per_value[v] > cap:
                break
            expected += per_value[v]
        assert taken == expected <= cap, (cap, tau)
    assert _threshold([("z", torch.zeros(4), 1)], [], 2) is None
