"""Allocation rules against brute-force selections, and their recorded budgets."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch

from blueprint_format import models
from reference_impl.allocation import RULE_TYPES, AllocationRule, CostModel, Rule, allocate
from reference_impl.config import ConfigError
from reference_impl.sketch import exact_curve, row_curve, sketch_curve


def _setup(seed: int = 0) -> tuple[list[np.ndarray], list[float]]:
    rng = np.random.default_rng(seed)
    masses = [rng.pareto(1.5, n) ** 2 for n in (50, 120, 7, 300)]
    scores = [0.4, 0.3, 0.2, 0.1]
    return masses, scores


def _densities(masses: list[np.ndarray], scores: list[float]) -> list[tuple[float, int]]:
    """(gain per element, module) for every element: w_m * mass / module mass."""
    total = sum(scores)
    out = []
    for m, (x, s) in enumerate(zip(masses, scores)):
        for v in x.tolist():
            out.append((s / total * v / float(x.sum()), m))
    return sorted(out, key=lambda t: -t[0])


def _picked(alloc_k: list[float | None], sizes: list[int]) -> list[int]:
    return [round((k or 0.0) * n) for k, n in zip(alloc_k, sizes)]


def test_element_global_budget_takes_the_globally_best_elements() -> None:
    masses, scores = _setup()
    curves = [exact_curve(torch.tensor(x)) for x in masses]
    sizes = [len(x) for x in masses]
    budget = 0.1
    a = allocate(AllocationRule("global-budget", {"budget": budget}), "element", scores, sizes, CostModel(), curves)
    cap = math.floor(budget * sum(sizes) * (1 - 1e-12))
    expected = [0] * len(sizes)
    for _, m in _densities(masses, scores)[:cap]:
        expected[m] += 1
    assert _picked(a.k_star, sizes) == expected
    assert a.selected_params == cap and sum((k or 0) * n for k, n in zip(a.k_star, sizes)) <= budget * sum(sizes)
    assert all(k is None or 0 < k <= 1 for k in a.k_star)


def test_element_mass_threshold_stops_at_the_threshold() -> None:
    masses, scores = _setup(1)
    curves = [exact_curve(torch.tensor(x)) for x in masses]
    sizes = [len(x) for x in masses]
    a = allocate(AllocationRule("mass-threshold", {"threshold": 0.7}), "element", scores, sizes, CostModel(), curves)
    gained, count = 0.0, 0
    for d, _ in _densities(masses, scores):
        if gained >= 0.7 - 1e-12:
            break
        gained += d
        count += 1
    assert a.selected_params == count
    assert a.gain >= 0.7 - 1e-9


def test_element_marginal_rule_uses_eta_and_max_fraction() -> None:
    masses, scores = _setup(2)
    curves = [exact_curve(torch.tensor(x)) for x in masses]
    sizes = [len(x) for x in masses]
    n = sum(sizes)
    eta = 2.0  # cost in model-fraction: keep elements whose gain density is >= 2x the average
    a = allocate(AllocationRule("marginal", {"eta": eta}), "element", scores, sizes, CostModel(), curves)
    expected = sum(1 for d, _ in _densities(masses, scores) if d * n >= eta)
    assert a.selected_params == expected
    capped = allocate(AllocationRule("marginal", {"eta": eta, "max_fraction": 0.02}), "element", scores, sizes, CostModel(), curves)
    assert capped.selected_params == math.floor(0.02 * n * (1 - 1e-12)) < expected
    # A large fixed cost leaves marginal decisions unchanged.
    fixed = allocate(AllocationRule("marginal", {"eta": eta}), "element", scores, sizes, CostModel(fixed=100.0), curves)
    assert fixed.k_star == a.k_star


def test_module_global_budget_is_first_fit_by_score() -> None:
    sizes = [600, 100, 250, 50]
    scores = [0.5, 0.3, 0.15, 0.05]
    a = allocate(AllocationRule("global-budget", {"budget": 0.4}), "module", scores, sizes, CostModel())
    # 600 does not fit into 399, 100 and 250 do, then 50 does not (400 > 399).
    assert a.k_star == [None, 1.0, 1.0, None]
    t = allocate(AllocationRule("mass-threshold", {"threshold": 0.8}), "module", scores, sizes, CostModel())
    assert t.k_star == [1.0, 1.0, None, None]
    m = allocate(AllocationRule("marginal", {"eta": 1.5}), "module", scores, sizes, CostModel())
    # Gain per model-fraction: 0.83, 3.0, 0.6, 1.0: only module 1 reaches eta = 1.5.
    assert m.k_star == [None, 1.0, None, None]


def test_row_granularity_takes_whole_rows() -> None:
    rng = np.random.default_rng(4)
    row_mass = [torch.tensor(rng.pareto(1.2, 10) + 0.01) for _ in range(3)]
    curves = [row_curve(torch.full((10,), 8, dtype=torch.int64), rm) for rm in row_mass]
    a = allocate(AllocationRule("global-budget", {"budget": 0.25}), "row", [1.0, 1.0, 1.0], [80, 80, 80], CostModel(), curves)
    for k in a.k_star:
        assert k is None or (k * 80) % 8 == 0
    assert a.selected_params <= 0.25 * 240


def test_sketch_curve_is_close_to_exact_curve() -> None:
    x = torch.tensor(np.random.default_rng(5).pareto(1.1, 100_000) ** 2)
    exact = exact_curve(x)
    sk = sketch_curve(x)
    for k in (0.001, 0.01, 0.1, 0.3, 0.7):
        assert sk(k) == pytest.approx(exact(k), abs=0.02)
    assert sk(1.0) == pytest.approx(1.0) and exact(0.0) == 0.0


def test_rule_validation() -> None:
    with pytest.raises(ConfigError) as info:
        AllocationRule("global-budget", {"threshold": 0.1})
    assert info.value.field == "budget" and "missing" in str(info.value)
    for bad in (1.5, 0.0, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError) as info:
            AllocationRule("global-budget", {"budget": bad})
        assert info.value.field == "budget" and info.value.code == "usage-error"
    with pytest.raises(ConfigError) as info:
        AllocationRule("marginal", {"eta": 1.0, "budget": 0.2})
    assert info.value.field == "budget"
    with pytest.raises(ConfigError) as info:
        AllocationRule("nope", {})
    assert info.value.field == "rule"
    assert AllocationRule("marginal", {"eta": 0.5, "max_fraction": 0.3}).to_json() == {
        "name": "marginal", "parameters": {"eta": 0.5, "max_fraction": 0.3}
    }
    assert Rule is AllocationRule  # the former name still works


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"fixed": float("inf")}, "cost_fixed"), ({"fixed": float("nan")}, "cost_fixed"), ({"fixed": -1.0}, "cost_fixed"),
     ({"per_parameter": -0.5}, "cost_per_parameter"), ({"per_parameter": 1e309}, "cost_per_parameter"),
     ({"unit": ""}, "cost_unit"), ({"unit": "u" * 65}, "cost_unit")],
)
def test_cost_model_is_checked_on_construction(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        CostModel(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_rule_registry_matches_the_spec_models() -> None:
    """Every rule the spec defines (blueprint_format.models.Rule, less x- rules) is registered,
    with exactly the parameters its model declares, and defaults that the model accepts."""
    spec_rules = [m for m in typing.get_args(models.Rule) if m is not models.CustomRule]
    names = {typing.get_args(m.model_fields["name"].annotation)[0] for m in spec_rules}
    assert set(RULE_TYPES) == names
    for name, kind in RULE_TYPES.items():
        params_model = kind.model.model_fields["parameters"].annotation
        assert {p.name for p in kind.parameters} == set(params_model.model_fields)  # type: ignore[union-attr]
        rule = AllocationRule.from_parameters(name, {})
        assert rule.parameters == {p.name: p.default for p in kind.parameters if p.default is not None}


def test_from_parameters_keeps_given_values_and_fills_defaults() -> None:
    rule = AllocationRule.from_parameters("marginal", {"eta": 2.0, "max_fraction": None, "budget": None})
    assert rule.parameters == {"eta": 2.0}
    rule = AllocationRule.from_parameters("marginal", {"max_fraction": 0.5})
    assert rule.parameters == {"eta": 1.0, "max_fraction": 0.5}


def test_a_new_rule_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule added to RULE_TYPES (with its spec model) is validated, allocated, and offered by
    `blueprint compute` (--rule choice and parameter flag) without any other change. An `x-` rule
    needs no schema change: the spec accepts it as a custom rule."""
    import argparse
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    from reference_impl import allocation, compute_cli

    class TopParameters(BaseModel):
        model_config = ConfigDict(strict=True, extra="forbid")
        share: float = Field(gt=0, le=1)

    class TopRule(BaseModel):
        model_config = ConfigDict(strict=True, extra="forbid")
        name: Literal["x-top-share"]
        parameters: TopParameters

    class TopShare(allocation.RuleType):
        model = TopRule
        parameters = (allocation.RuleParameter("share", "x-top-share: trainable fraction", 0.25),)
        cap_parameter = "share"

    monkeypatch.setitem(allocation.RULE_TYPES, "x-top-share", TopShare())
    rule = AllocationRule.from_parameters("x-top-share", {})
    assert rule.to_json() == {"name": "x-top-share", "parameters": {"share": 0.25}}
    with pytest.raises(ConfigError) as info:
        AllocationRule("x-top-share", {"share": 2.0})
    assert info.value.field == "share"
    a = allocate(rule, "module", [0.5, 0.3, 0.2], [90, 100, 210], CostModel())
    assert a.k_star == [1.0, None, None]  # first fit under 25% of 400 parameters
    models.CustomRule.model_validate(rule.to_json())  # what a blueprint records is a valid custom rule

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    compute_cli.register(sub)
    args = parser.parse_args(["compute", "--model", "m", "--data", "d.txt", "-o", "o.json", "--share", "0.5"])
    assert compute_cli.rule_from_flags(args).to_json() == {"name": "x-top-share", "parameters": {"share": 0.5}}
