"""k* allocation rules: which fraction of each module to update, and why.

Inputs: per-module combined scores (domain-weighted shares of the allocation statistic), parameter
counts, and for row/element granularity each module's gain curve G_m(k) (sketch.py). The gain of a
selection {k_m} is

    Gain = sum_m w_m * G_m(k_m),     w_m = score_m / sum(score)   (so Gain(all) = 1),

and its cost follows the linear cost model C = fixed + per_parameter * sum_m k_m * n_m
(RESEARCH.md section 1). With module granularity G_m(k) is 0 or 1 (k_m in {0, 1}).

Rules (SPEC names and parameters):

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reference_impl.sketch import GainCurve

GRANULARITIES = ("module", "row", "element")
RULES = ("global-budget", "mass-threshold", "marginal")


@dataclass(frozen=True)
class CostModel:
    """Linear cost C = fixed + per_parameter * trainable parameters, in `unit`.

    `per_parameter=None` means 1/N: cost measured as the fraction of the model's (blueprint's)
    parameters that is trainable, unit "model-fraction".
    """

    fixed: float = 0.0
    per_parameter: float | None = None
    unit: str = "model-fraction"

    def resolved(self, total_params: int) -> CostModel:
        if self.per_parameter is not None:
            return self
        return CostModel(self.fixed, 1.0 / total_params, self.unit)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": "linear",
            "fixed": float(self.fixed),
            "per_parameter": float(self.per_parameter if self.per_parameter is not None else 0.0),
            "unit": self.unit,
        }


@dataclass(frozen=True)
class Rule:
    """An allocation rule with its parameters, as the blueprint records it."""

    name: str
    parameters: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        required = {"global-budget": {"budget"}, "mass-threshold": {"threshold"}, "marginal": {"eta"}}
        allowed = {"global-budget": {"budget"}, "mass-threshold": {"threshold"}, "marginal": {"eta", "max_fraction"}}
        if self.name not in required:
            raise ValueError(f"unknown allocation rule {self.name!r}; choose one of {', '.join(RULES)}")
        keys = set(self.parameters)
        if not required[self.name] <= keys or not keys <= allowed[self.name]:
            raise ValueError(
                f"rule {self.name} takes {sorted(allowed[self.name])} (required {sorted(required[self.name])}), "
                f"got {sorted(keys)}"
            )
        for key, value in self.parameters.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"rule parameter {key} must be a finite non-negative number, got {value}")
            if key in ("budget", "threshold", "max_fraction") and not 0 < value <= 1:
                raise ValueError(f"rule parameter {key} must lie in (0, 1], got {value}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "parameters": {k: float(v) for k, v in self.parameters.items()}}


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


def _module_allocation(rule: Rule, weights: np.ndarray, sizes: np.ndarray, cost: CostModel) -> np.ndarray:
    """0/1 selection per module."""
    n_total = int(sizes.sum())
    chosen = np.zeros(len(sizes), dtype=bool)
    by_score = sorted(range(len(sizes)), key=lambda i: (-weights[i], i))
    if rule.name == "global-budget":
        cap = _cap(rule.parameters["budget"], n_total)
        used = 0
        for i in by_score:
            if used + sizes[i] <= cap:
                chosen[i] = True
                used += int(sizes[i])
    elif rule.name == "mass-threshold":
        gained = 0.0
        for i in by_score:
            if gained >= rule.parameters["threshold"] - 1e-12:
                break
            chosen[i] = True
            gained += float(weights[i])
    else:
        per = float(cost.per_parameter or 0.0)
        cap = _cap(rule.parameters.get("max_fraction", 1.0), n_total)
        by_ratio = sorted(range(len(sizes)), key=lambda i: (-weights[i] / sizes[i], i))
        used = 0
        for i in by_ratio:
            ratio = weights[i] / (per * sizes[i]) if per > 0 else math.inf
            if ratio < rule.parameters["eta"] or weights[i] <= 0:
                break
            if used + sizes[i] <= cap:
                chosen[i] = True
                used += int(sizes[i])
    return chosen


def _segment_allocation(
    rule: Rule, weights: np.ndarray, curves: Sequence[GainCurve], cost: CostModel, whole_units: bool
) -> np.ndarray:
    """Selected parameter counts per module from the modules' gain-curve segments."""
    n_total = sum(c.size for c in curves)
    segs: list[tuple[float, int, int, int, float]] = []  # (-density, module, seg, size, gain)
    for m, c in enumerate(curves):
        for j, (size, g) in enumerate(zip(c.sizes.tolist(), c.gains.tolist())):
            if size <= 0:
                continue
            gain = float(weights[m]) * float(g)
            segs.append((-gain / size, m, j, int(size), gain))
    segs.sort()
    picked = np.zeros(len(curves), dtype=np.int64)
    used = 0
    gained = 0.0
    if rule.name == "global-budget":
        cap = _cap(rule.parameters["budget"], n_total)
    elif rule.name == "marginal":
        cap = _cap(rule.parameters.get("max_fraction", 1.0), n_total)
    else:
        cap = n_total
    per = float(cost.per_parameter or 0.0)
    threshold = rule.parameters.get("threshold", 1.0)
    for neg_density, m, _, size, gain in segs:
        density = -neg_density
        if rule.name == "mass-threshold" and gained >= threshold - 1e-12:
            break
        if rule.name == "marginal" and (density <= 0 or (per > 0 and density / per < rule.parameters["eta"])):
            break
        if density <= 0:
            break  # parameters whose gradient mass is zero gain nothing under any rule
        room = cap - used
        if room <= 0:
            break
        take = size
        if rule.name == "mass-threshold" and not whole_units and gain > 0:
            # Only as many elements of this segment as the threshold still needs.
            take = min(size, math.ceil((threshold - gained) / gain * size - 1e-9))
        if take > room:
            if whole_units:
                continue  # a row that does not fit; a smaller one later may
            take = room
        picked[m] += take
        used += take
        gained += gain * take / size
    return picked


def allocate(
    rule: Rule,
    granularity: str,
    scores: Sequence[float],
    sizes: Sequence[int],
    cost: CostModel,
    curves: Sequence[GainCurve] | None = None,
) -> Allocation:
    """Apply `rule` and return k* per module (None where a module is not selected)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}")
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
