"""Every statistic of compute_blueprint against a naive, independent computation."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import blueprint_format as bf
from reference_impl import AllocationRule, CalibrationDomain, compute_blueprint, data_fingerprint
from reference_impl.losses import causal_lm_loss, model_output_loss
from reference_impl.model_binding import module_layout, state_dict_tensors
from tests.compute.conftest import TinyNet, tiny_batches, tiny_bert_mlm, tiny_gpt2, tiny_loss, token_batches
from tests.compute.naive import naive_domain_stats, naive_shares

CREATED = "2026-01-01T00:00:00Z"


def _module_params(model: nn.Module) -> dict[str, list[str]]:
    return {m.name: m.param_names for m in module_layout(model).modules}


def _check_against_naive(bp: bf.Blueprint, naive: dict[str, dict[str, Any]], weights: dict[str, float]) -> None:
    names = [m.name for m in bp.modules]
    for d, ref in naive.items():
        for m in bp.modules:
            got = m.stats[d]
            exp = ref[m.name]
            for key in ("grad_norm_mean", "grad_norm_median", "grad_norm_sq_mean", "mean_grad_norm"):
                assert getattr(got, key) == pytest.approx(exp[key], rel=2e-5, abs=1e-9), (d, m.name, key)
        # Rank 1 = largest grad_norm_mean (naive sort).
        order = sorted(names, key=lambda n: -ref[n]["grad_norm_mean"])
        assert [m.name for m in sorted(bp.modules, key=lambda m: m.stats[d].rank)] == order
        dom = bp.domain(d)
        assert dom.heavy_tail is not None
        shares = naive_shares([ref[n]["grad_norm_mean"] for n in names])
        for key, value in shares.items():
            assert getattr(dom.heavy_tail.mass_shares, key) == pytest.approx(max(value, 0.0), rel=1e-6)
        assert dom.element_mass_shares is not None
        for key, value in naive_shares(ref["__elements__"]).items():
            assert getattr(dom.element_mass_shares, key) == pytest.approx(value, rel=1e-4, abs=1e-6)
    # Combined score: sum_d w_d * s_md / sum_m' s_m'd.
    for m in bp.modules:
        expected = math.fsum(
            weights[d] * ref[m.name]["grad_norm_mean"] / math.fsum(ref[n]["grad_norm_mean"] for n in names)
            for d, ref in naive.items()
        )
        assert m.combined is not None
        assert m.combined.score == pytest.approx(expected, rel=1e-5)
    order = sorted(names, key=lambda n: -bp.module(n).combined.score)  # type: ignore[union-attr]
    assert [m.name for m in sorted(bp.modules, key=lambda m: m.combined.rank)] == order  # type: ignore[union-attr]


def test_small_module_matches_naive(tiny_net: TinyNet) -> None:
    data = {"alpha": tiny_batches(1, 5), "beta": tiny_batches(2, 6)}
    weights = {"alpha": 0.25, "beta": 0.75}
    bp = compute_blueprint(tiny_net, data, tiny_loss, domain_weights=weights, created=CREATED)
    assert bf.validate(bp) == []
    assert bf.check_binding(bp, state_dict_tensors(tiny_net)) == []
    mods = _module_params(tiny_net)
    assert set(mods) == {"emb", "l1", "ln", "l2", "temperature"}  # root parameter listed as a tensor
    naive = {d: naive_domain_stats(tiny_net, b, tiny_loss, mods) for d, b in data.items()}
    _check_against_naive(bp, naive, weights)
    assert [d.batches for d in bp.domains] == [5, 6]
    assert [d.examples for d in bp.domains] == [40, 48]
    assert bp.method.estimator == "batch-gradient-norm"
    assert bp.allocation.domain_weights == weights


@pytest.mark.slow
def test_tiny_bert_masked_lm_matches_naive() -> None:
    model = tiny_bert_mlm()
    data = {"x": token_batches(3, 3, mlm=True, size=11), "y": token_batches(4, 3, mlm=True, size=11)}
    bp = compute_blueprint(model, data, model_output_loss, created=CREATED)
    assert bf.validate(bp) == []
    assert bf.check_binding(bp, state_dict_tensors(model)) == []
    mods = _module_params(model)
    assert "bert.encoder.layer.0.attention.self.query" in mods
    naive = {d: naive_domain_stats(model, b, model_output_loss, mods) for d, b in data.items()}
    _check_against_naive(bp, naive, {"x": 0.5, "y": 0.5})
    assert bp.domains[0].tokens == sum(int(b["attention_mask"].sum()) for b in data["x"])


def test_tiny_gpt2_causal_lm_matches_naive() -> None:
    model = tiny_gpt2()
    data = {"only": token_batches(5, 4, size=8)}
    bp = compute_blueprint(model, data, created=CREATED)  # the model's own loss
    assert bp.method.loss.startswith("causal-lm")
    assert bf.validate(bp) == []
    mods = _module_params(model)
    # Tied output embedding: the shared weight is one module, the lm_head is not listed twice.
    assert "transformer.wte" in mods and "lm_head" not in mods
    naive = {"only": naive_domain_stats(model, data["only"], causal_lm_loss, mods)}
    _check_against_naive(bp, naive, {"only": 1.0})


def test_padding_does_not_change_causal_lm_loss() -> None:
    model = tiny_gpt2().eval()
    ids = torch.randint(5, 40, (1, 5))
    short = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    padded = {
        "input_ids": torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1),
        "attention_mask": torch.cat([torch.ones_like(ids), torch.zeros(1, 3, dtype=torch.long)], 1),
    }
    with torch.no_grad():
        assert float(causal_lm_loss(model, short)) == pytest.approx(float(causal_lm_loss(model, padded)), rel=1e-5)


def test_deterministic_for_fixed_seed_on_cpu() -> None:
    outs = []
    for _ in range(2):
        model = tiny_bert_mlm()
        data = {"x": token_batches(3, 5, size=8)}  # no labels: seeded masking inside the loss

        class Tok:
            mask_token_id = 3
            all_special_ids = (0, 1, 2, 3)

            def __len__(self) -> int:
                return 40

        bp = compute_blueprint(model, data, tokenizer=Tok(), seed=7, created=CREATED, min_examples_per_aggregate=8)
        outs.append(bf.dumps(bp))
    assert outs[0] == outs[1]
    assert bf.loads(outs[0]).method.loss.startswith("masked-lm")


def test_domain_metadata_and_fingerprint(tiny_net: TinyNet) -> None:
    texts = [f"example {i}" for i in range(40)]
    dom = CalibrationDomain(batches=tiny_batches(1, 5), texts=texts, description="d", source="s")
    bp = compute_blueprint(tiny_net, {"a": dom}, tiny_loss, created=CREATED)
    import hashlib

    assert bp.domains[0].data_fingerprint == "sha256:" + hashlib.sha256("\n".join(texts).encode()).hexdigest()
    assert data_fingerprint(texts) == bp.domains[0].data_fingerprint
    assert bp.domains[0].description == "d" and bp.domains[0].source == "s"


def test_sketched_element_shares_are_close_to_exact(tiny_net: TinyNet) -> None:
    data = {"a": tiny_batches(1, 5)}
    exact = compute_blueprint(tiny_net, data, tiny_loss, created=CREATED)
    sketched = compute_blueprint(tiny_net, data, tiny_loss, created=CREATED, exact_limit=0)
    assert exact.domains[0].element_mass_shares is not None and sketched.domains[0].element_mass_shares is not None
    for (_, a), (_, b) in zip(exact.domains[0].element_mass_shares.as_pairs(), sketched.domains[0].element_mass_shares.as_pairs()):
        assert b == pytest.approx(a, abs=0.03)
    assert bf.validate(sketched) == []
    ext = sketched.extensions["org.gradient-blueprints.reference-impl"]  # type: ignore[index]
    assert ext["element_shares_exact"] is False  # type: ignore[index]


def test_module_granularity_rules(tiny_net: TinyNet) -> None:
    data = {"a": tiny_batches(1, 5)}
    for rule in (AllocationRule("global-budget", {"budget": 0.5}), AllocationRule("mass-threshold", {"threshold": 0.6}),
                 AllocationRule("marginal", {"eta": 1.0, "max_fraction": 0.9})):
        bp = compute_blueprint(tiny_net, data, tiny_loss, rule=rule, granularity="module", created=CREATED)
        assert bf.validate(bp) == []
        assert all(m.k_star in (None, 1.0) for m in bp.modules)
        assert bp.allocation.rule.name == rule.name


def test_tied_llama_matches_naive_and_model_is_given_back() -> None:
    """SmolLM2's architecture (RMSNorm, tied input/output embedding): the shared table's norms,
    assembled from the head's blocks, the sparse embedding part and their cross term, equal the
    naive ones; afterwards the model is unchanged (head forward, dense embedding gradients)."""
    from tests.compute.conftest import tiny_llama

    model = tiny_llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    data = {"a": token_batches(8, 3, size=4), "b": token_batches(9, 2, size=4)}
    bp = compute_blueprint(model, data, causal_lm_loss, created=CREATED, min_examples_per_aggregate=8)
    assert "forward" not in model.lm_head.__dict__ and not model.model.embed_tokens.sparse
    assert all(p.grad is None for p in model.parameters())
    mods = _module_params(model)
    naive = {d: naive_domain_stats(model, b, causal_lm_loss, mods) for d, b in data.items()}
    _check_against_naive(bp, naive, {"a": 0.5, "b": 0.5})
