"""k* allocation rules: which fraction of each module to update, and why.

Inputs: per-module combined scores (domain-weighted shares of the allocation statistic), parameter
counts, and for row/element granularity each module's gain curve G_m(k) (sketch.py). The gain of a
selection {k_m} is

    Gain = sum_m w_m * G_m(k_m),     w_m = score_m / sum(score)   (so Gain(all) = 1),

and its cost follows the linear cost model C = fixed + per_parameter * sum_m k_m * n_m
(SPEC sections 9.2 to 9.5). With module granularity G_m(k) is 0 or 1 (k_m in {0, 1}).

Rules (SPEC names and parameters; each is one entry of RULE_TYPES below):

* global-budget {budget}: at most budget * N parameters trainable (N = sum of the blueprint's
  module sizes). Module granularity: modules in order of combined score, each taken if it still
  fits (first fit). Row/element granularity: segments of all gain curves in order of gain per
  parameter (water-filling; optimal for concave curves) while they fit.
* mass-threshold {threshold}: the smallest prefix, in the same orders, whose gain reaches
  `threshold` (module granularity: modules by score until their score share reaches it).
* marginal {eta, max_fraction}: grow the selection by the segment (or module) with the highest
  marginal gain per marginal cost, dGain/dC = (w_m * dG_m) / (per_parameter * dn), while that ratio
  stays >= eta and at most max_fraction * N parameters are trainable. The fixed cost does not
  change marginal ratios; it is recorded in the cost model for the gain/cost ratio.

Selections are counted in whole parameters (whole rows at row granularity), so
sum_m k_m * n_m is an integer count that never exceeds the budget.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from blueprint_format import models
from reference_impl.config import config_error
from reference_impl.sketch import GainCurve

GRANULARITIES: tuple[str, ...] = typing.get_args(models.Granularity)


@dataclass(frozen=True)
class CostModel:
    """Linear cost C = fixed + per_parameter * trainable parameters, in `unit`.

    `per_parameter=None` means 1/N: cost measured as the fraction of the model's (blueprint's)
    parameters that is trainable, unit "model-fraction". The numbers and the unit are checked
    against the spec's cost model (finite, >= 0, a unit of 1..64 characters) on construction,
    so that a bad value fails before any computation (ConfigError at `cost_fixed`,
    `cost_per_parameter` or `cost_unit`).
    """

    fixed: float = 0.0
    per_parameter: float | None = None
    unit: str = "model-fraction"

    def __post_init__(self) -> None:
        fields = {"fixed": "cost_fixed", "per_parameter": "cost_per_parameter", "unit": "cost_unit"}
        problem = _spec_problem(models.CostModel, self.to_json())
        if problem is not None:
            where, message = problem
            name = fields.get(where, "cost_model")
            raise config_error(name, f"{name}: {message}")

    def resolved(self, total_params: int) -> CostModel:
        if self.per_parameter is not None:
            return self
        return CostModel(self.fixed, 1.0 / total_params, self.unit)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": "linear",
            "fixed": _number(self.fixed),
            "per_parameter": _number(self.per_parameter if self.per_parameter is not None else 0.0),
            "unit": self.unit,
        }


def _number(value: Any) -> Any:
    """`value` as a float when it is a real number (bools and other types are left for the
    spec model to refuse)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _spec_problem(model: type[BaseModel], doc: Mapping[str, Any]) -> tuple[str, str] | None:
    """(member, message) of the first way `doc` breaks the spec model, or None. The spec model
    (blueprint_format.models) is the one source of the allowed ranges."""
    try:
        model.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = str(err["loc"][-1]) if err["loc"] else ""
        if err["type"] == "missing":
            return where, "missing"
        if err["type"] == "extra_forbidden":
            return where, "not a member the spec defines here"
        return where, f"{err['msg'].lower()}, got {err.get('input')!r}"
    return None


# --- Allocation rules: one registry entry per rule --------------------------------------------


@dataclass(frozen=True)
class RuleParameter:
    """A parameter of an allocation rule: its name in the blueprint and the value used when the
    caller gives none (None: optional, left out)."""

    name: str
    help: str
    default: float | None = None


class RuleType:
    """One allocation rule: its spec model, parameters and the decisions that tell it apart.

    The selection loops (`_module_allocation`, `_segment_allocation`) are shared; a rule only says
    in which order modules are considered, which parameter caps the trainable fraction, when to
    stop and how much of a segment to take. Adding a rule = a subclass registered in RULE_TYPES,
    its pydantic model in blueprint_format/models.py (and the schema), and its SPEC text.
    """

    #: The rule's model in blueprint_format.models; its `name` Literal is the rule's name.
    model: type[BaseModel]
    summary: str = ""
    parameters: tuple[RuleParameter, ...] = ()
    #: Module granularity: consider modules by gain per parameter instead of by score.
    by_density: bool = False
    #: The parameter (a fraction of all parameters) that caps the selection, if any.
    cap_parameter: str | None = None

    @property
    def name(self) -> str:
        return str(typing.get_args(self.model.model_fields["name"].annotation)[0])

    def stop(self, params: Mapping[str, float], density: float, gained: float, per_parameter: float) -> bool:
        """Whether to stop before the next candidate, whose gain per parameter is `density`,
        with `gained` already selected; `per_parameter` is the resolved cost per parameter."""
        return False

    def take(self, params: Mapping[str, float], gained: float, gain: float, size: int) -> int:
        """How many of a segment's `size` elements (of total gain `gain`) to take."""
        return size

    def cap(self, params: Mapping[str, float]) -> float:
        """The largest trainable fraction the rule allows."""
        return params.get(self.cap_parameter, 1.0) if self.cap_parameter else 1.0


class GlobalBudget(RuleType):
    model = models.GlobalBudgetRule
    summary = "at most `budget` of all parameters trainable, best first (first fit)"
    parameters = (RuleParameter("budget", "global-budget: trainable fraction of all parameters", 0.2),)
    cap_parameter = "budget"


class MassThreshold(RuleType):
    model = models.MassThresholdRule
    summary = "the fewest parameters whose gain reaches `threshold`"
    parameters = (RuleParameter("threshold", "mass-threshold: share of the gain to reach", 0.8),)

    def stop(self, params: Mapping[str, float], density: float, gained: float, per_parameter: float) -> bool:
        return gained >= params["threshold"] - 1e-12

    def take(self, params: Mapping[str, float], gained: float, gain: float, size: int) -> int:
        # Only as many elements of this segment as the threshold still needs.
        return min(size, math.ceil((params["threshold"] - gained) / gain * size - 1e-9))


class Marginal(RuleType):
    model = models.MarginalRule
    summary = "grow while marginal gain per marginal cost stays >= `eta`, up to `max_fraction`"
    parameters = (
        RuleParameter("eta", "marginal: minimum gain per unit of cost", 1.0),
        RuleParameter("max_fraction", "marginal: cap on the trainable fraction"),
    )
    by_density = True
    cap_parameter = "max_fraction"

    def stop(self, params: Mapping[str, float], density: float, gained: float, per_parameter: float) -> bool:
        return density <= 0 or (per_parameter > 0 and density / per_parameter < params["eta"])


#: The allocation rules this implementation computes, by name.
RULE_TYPES: dict[str, RuleType] = {r.name: r for r in (GlobalBudget(), MassThreshold(), Marginal())}
RULES: tuple[str, ...] = tuple(RULE_TYPES)
#: The rule used when the caller names none.
DEFAULT_RULE_NAME = "global-budget"


@dataclass(frozen=True)
class AllocationRule:
    """An allocation rule with its parameters, as the blueprint records it.

    Checked on construction against the spec's model of the rule: an unknown rule is a
    ConfigError at `rule`; a missing, unknown or out-of-range parameter one at its name.
    """

    name: str
    parameters: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in RULE_TYPES:
            raise config_error("rule", f"rule: unknown allocation rule {self.name!r}; choose one of {', '.join(RULES)}")
        problem = _spec_problem(self.type.model, self.to_json())
        if problem is not None:
            where, message = problem
            raise config_error(where or "rule", f"{where or 'rule'}: {message} (rule {self.name})")

    @property
    def type(self) -> RuleType:
        """The rule's registry entry."""
        return RULE_TYPES[self.name]

    @classmethod
    def from_parameters(cls, name: str, given: Mapping[str, float | None]) -> AllocationRule:
        """The rule `name` with the parameters in `given` that are not None, and the rule's
        defaults for the others."""
        params: dict[str, float] = {}
        for p in RULE_TYPES[name].parameters if name in RULE_TYPES else ():
            value = given.get(p.name)
            if value is None:
                value = p.default
            if value is not None:
                params[p.name] = value
        return cls(name, params)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "parameters": {k: _number(v) for k, v in self.parameters.items()}}


#: Former name, kept so that existing callers keep working.
Rule = AllocationRule


@dataclass(frozen=True)
class Allocation:
    """k* per module (None: not selected) and the resulting totals."""

    k_star: list[float | None]
    selected_params: int
    total_params: int
    gain: float

    @property
    def trainable_fraction(self) -> float:
        return self.selected_params / self.total_params if self.total_params else 0.0


def _cap(fraction: float, n_total: int) -> int:
    """Largest parameter count allowed by `fraction` of `n_total`, with a hair of slack so that
    sum(k* * n) recomputed in floating point cannot land above fraction * N."""
    if fraction >= 1.0:
        return n_total
    return max(0, math.floor(fraction * n_total * (1.0 - 1e-12)))


def _module_allocation(rule: AllocationRule, weights: np.ndarray, sizes: np.ndarray, cost: CostModel) -> np.ndarray:
    """0/1 selection per module: modules in the rule's order, each taken if it still fits under
    the rule's cap (first fit), until the rule says stop."""
    kind, params = rule.type, rule.parameters
    n_total = int(sizes.sum())
    cap = _cap(kind.cap(params), n_total)
    per = float(cost.per_parameter or 0.0)
    key = (lambda i: (-weights[i] / sizes[i], i)) if kind.by_density else (lambda i: (-weights[i], i))
    chosen = np.zeros(len(sizes), dtype=bool)
    used, gained = 0, 0.0
    for i in sorted(range(len(sizes)), key=key):
        if kind.stop(params, float(weights[i] / sizes[i]), gained, per):
            break
        if used + sizes[i] <= cap:
            chosen[i] = True
            used += int(sizes[i])
            gained += float(weights[i])
    return chosen


def _segments(weights: np.ndarray, curves: Sequence[GainCurve]) -> list[tuple[float, int, int, int, float]]:
    """Every non-empty gain-curve segment as (-gain per parameter, module, segment, size, gain),
    best first (ties: by module, then by position in the curve)."""
    segs = []
    for m, c in enumerate(curves):
        for j, (size, g) in enumerate(zip(c.sizes.tolist(), c.gains.tolist())):
            if size > 0:
                gain = float(weights[m]) * float(g)
                segs.append((-gain / size, m, j, int(size), gain))
    segs.sort()
    return segs


def _segment_allocation(
    rule: AllocationRule, weights: np.ndarray, curves: Sequence[GainCurve], cost: CostModel, whole_units: bool
) -> np.ndarray:
    """Selected parameter counts per module: segments of all gain curves in order of gain per
    parameter (water-filling) while they fit under the rule's cap and the rule does not stop."""
    kind, params = rule.type, rule.parameters
    cap = _cap(kind.cap(params), sum(c.size for c in curves))
    per = float(cost.per_parameter or 0.0)
    picked = np.zeros(len(curves), dtype=np.int64)
    used, gained = 0, 0.0
    for neg_density, m, _, size, gain in _segments(weights, curves):
        density = -neg_density
        if kind.stop(params, density, gained, per) or density <= 0 or used >= cap:
            break  # parameters whose gradient mass is zero gain nothing under any rule
        take = size if whole_units or gain <= 0 else kind.take(params, gained, gain, size)
        if take > cap - used:
            if whole_units:
                continue  # a row that does not fit; a smaller one later may
            take = cap - used
        picked[m] += take
        used += take
        gained += gain * take / size
    return picked


def allocate(
    rule: AllocationRule,
    granularity: str,
    scores: Sequence[float],
    sizes: Sequence[int],
    cost: CostModel,
    curves: Sequence[GainCurve] | None = None,
) -> Allocation:
    """Apply `rule` and return k* per module (None where a module is not selected)."""
    if granularity not in GRANULARITIES:
        raise config_error("granularity", f"granularity must be one of {', '.join(GRANULARITIES)}; got {granularity!r}")
    s = np.asarray(scores, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.int64)
    if s.shape != n.shape or s.size == 0:
        raise ValueError("scores and sizes must be non-empty and of equal length")
    total_score = float(s.sum())
    weights = s / total_score if total_score > 0 else np.zeros_like(s)
    total = int(n.sum())
    cost = cost.resolved(total)
    if granularity == "module":
        chosen = _module_allocation(rule, weights, n, cost)
        k: list[float | None] = [1.0 if c else None for c in chosen]
        selected = int(n[chosen].sum())
        gain = float(weights[chosen].sum())
    else:
        if curves is None or len(curves) != len(n):
            raise ValueError(f"{granularity} granularity needs one gain curve per module")
        for c, size in zip(curves, n.tolist()):
            if c.size != size:
                raise ValueError("a gain curve's size differs from its module's parameter count")
        picked = _segment_allocation(rule, weights, curves, cost, whole_units=granularity == "row")
        k = [float(p) / float(size) if p > 0 else None for p, size in zip(picked.tolist(), n.tolist())]
        selected = int(picked.sum())
        gain = float(sum(w * c(kk or 0.0) for w, c, kk in zip(weights.tolist(), curves, k)))
    return Allocation(k_star=k, selected_params=selected, total_params=total, gain=min(gain, 1.0))
