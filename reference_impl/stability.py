"""How stable a domain's module ranking is: a bootstrap over the domain's calibration batches.

A blueprint's statistics are estimates from a few calibration batches; another draw of batches
gives other numbers and perhaps another selection. This module measures that, for one domain,
from the (batches x modules) matrix of per-batch gradient norms ||g_{m,b}|| alone (SPEC.md
section 7.7):

1. draw R bootstrap resamples of the batches (B rows drawn with replacement, seeded);
2. recompute the statistic of every module on each resample;
3. per module, the percentile interval of the R values at the given confidence;
4. per resample, the selection that a module-granularity global budget would make from those
   values (modules by decreasing value, each taken if it still fits: first fit), and the
   expected overlap of two resamples' selections, E[params(A and B)] / E[params(A)];
5. the mean Spearman correlation between each resample's values and the full-data values.

Everything here is pure numpy over the matrix, deterministic for a given seed; `compute` turns
the result into the blueprint's `stability` member and per-module `interval`s.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import numpy as np

from blueprint_format.models import StatisticName
from reference_impl.config import choice, config_error, finite_float, positive_int

#: Statistics a bootstrap over per-batch norms can recompute (the norm of the mean gradient needs
#: the gradients themselves, which are not kept).
STABILITY_STATISTICS: tuple[str, ...] = tuple(s for s in typing.get_args(StatisticName) if s != "mean_grad_norm")
#: Method name recorded in the blueprint.
METHOD = "batch-bootstrap"
#: Matrix elements per block when resampling the median (bounds memory on large models).
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class StabilityConfig:
    """Bootstrap settings: `resamples` R >= 2, `confidence` of the intervals in (0, 1), `seed`."""

    resamples: int = 200
    confidence: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        positive_int("resamples", self.resamples, minimum=2)
        confidence = finite_float("confidence", self.confidence)
        if confidence is None or not 0.0 < confidence < 1.0:
            raise config_error("confidence", f"confidence must be in (0, 1), got {self.confidence!r}")
        positive_int("seed", self.seed, minimum=0)


@dataclass(frozen=True)
class Stability:
    """One domain's bootstrap result: per-module interval bounds (lower, upper), the expected
    selection overlap at `selection_budget` (None: no budget given), the mean rank correlation."""

    statistic: str
    config: StabilityConfig
    lower: np.ndarray
    upper: np.ndarray
    rank_correlation: float
    selection_budget: float | None
    selection_overlap: float | None


def resample_indices(batches: int, config: StabilityConfig) -> np.ndarray:
    """(R, B) batch indices, each row B draws with replacement from range(B) (numpy PCG64, seeded)."""
    rng = np.random.default_rng(config.seed)
    return rng.integers(0, batches, size=(config.resamples, batches))


def resampled_statistic(batch_norms: np.ndarray, indices: np.ndarray, statistic: str) -> np.ndarray:
    """(R, M) values of `statistic` on each resample of the rows of `batch_norms` (B x M)."""
    choice("statistic", statistic, STABILITY_STATISTICS)
    norms = np.asarray(batch_norms, dtype=np.float64)
    resamples, batches = indices.shape
    if statistic != "grad_norm_median":
        # Means over a resample are weighted means over the original rows: counts @ rows / B.
        counts = np.zeros((resamples, norms.shape[0]))
        np.add.at(counts, (np.repeat(np.arange(resamples), batches), indices.ravel()), 1.0)
        rows = norms * norms if statistic == "grad_norm_sq_mean" else norms
        return np.asarray(counts @ rows / batches)
    out = np.empty((resamples, norms.shape[1]))
    width = max(1, _BLOCK_ELEMENTS // (resamples * batches))
    for start in range(0, norms.shape[1], width):
        out[:, start : start + width] = np.median(norms[:, start : start + width][indices], axis=1)
    return out


def percentile_intervals(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the (1 - c)/2 and (1 + c)/2 quantiles of the rows (linear interpolation)."""
    tail = (1.0 - confidence) / 2.0
    lower, upper = np.quantile(samples, [tail, 1.0 - tail], axis=0)
    return np.asarray(lower), np.asarray(upper)


def first_fit_selection(values: np.ndarray, sizes: np.ndarray, budget: float) -> np.ndarray:
    """(R, M) booleans: per row of `values`, the modules a module-granularity global budget selects.

    Modules in order of decreasing value (ties: lower index first) are taken while they still fit
    in floor(budget * sum(sizes)) parameters; one that does not fit is skipped (first fit), as
    `global-budget` does at module granularity (SPEC 9.2).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    cap = int(np.floor(budget * int(sizes.sum()) + 1e-9))
    order = np.argsort(-values, axis=1, kind="stable")
    selected = np.zeros(values.shape, dtype=bool)
    used = np.zeros(values.shape[0], dtype=np.int64)
    rows = np.arange(values.shape[0])
    smallest = int(sizes.min())
    for j in range(values.shape[1]):
        module = order[:, j]
        fits = used + sizes[module] <= cap
        selected[rows, module] = fits
        used += np.where(fits, sizes[module], 0)
        if int((cap - used).max()) < smallest:
            break  # nothing fits in any row any more
    return selected


def expected_overlap(selected: np.ndarray, sizes: np.ndarray) -> float:
    """E[params(A and B)] / E[params(A)] for two distinct resamples A, B, over all ordered pairs.

    With c_m the number of resamples selecting module m of n_m parameters, the pairs share
    sum_m n_m c_m (c_m - 1) parameters and each resample's selection is paired R - 1 times. No
    selection anywhere gives 1 (every resample selects the same, empty, set).
    """
    counts = selected.sum(axis=0).astype(np.float64)
    n = np.asarray(sizes, dtype=np.float64)
    selected_params = float(np.sum(n * counts))
    if selected_params == 0.0:
        return 1.0
    return float(np.sum(n * counts * (counts - 1.0)) / ((selected.shape[0] - 1) * selected_params))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..M of each row's entries (ascending), ties given their average rank."""
    values = np.atleast_2d(values)
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    positions = np.arange(values.shape[1])
    # A run of equal values spans positions [first, last]; each of its entries gets their mean + 1.
    starts = np.ones(values.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(values.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, positions, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, positions, values.shape[1] - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(values.shape)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return ranks


def mean_spearman(samples: np.ndarray, reference: np.ndarray) -> float:
    """Mean over the rows of `samples` of Spearman's rho with `reference` (1 where a side is constant
    and the other is too, 0 where only one is: no ordering information)."""
    ranks = average_ranks(samples)
    ref = average_ranks(reference)[0]
    ref_c = ref - ref.mean()
    rows_c = ranks - ranks.mean(axis=1, keepdims=True)
    denom = np.sqrt((rows_c**2).sum(axis=1) * (ref_c**2).sum())
    both_flat = (denom == 0.0) & (np.abs(rows_c).sum(axis=1) == 0.0) & (np.abs(ref_c).sum() == 0.0)
    rho = np.where(denom > 0.0, (rows_c @ ref_c) / np.where(denom > 0.0, denom, 1.0), np.where(both_flat, 1.0, 0.0))
    return float(np.clip(rho, -1.0, 1.0).mean())


def bootstrap_stability(
    batch_norms: np.ndarray,
    statistic: str,
    reference: np.ndarray,
    sizes: np.ndarray | None = None,
    budget: float | None = None,
    config: StabilityConfig | None = None,
) -> Stability:
    """The stability of one domain (module docstring), from its (B x M) per-batch norms.

    `reference`: the full-data values of `statistic` (the blueprint's); `sizes` and `budget`: the
    modules' parameter counts and the fraction of them a selection may hold (both or neither).
    """
    config = config or StabilityConfig()
    if (sizes is None) != (budget is None):
        raise ValueError("sizes and budget go together")
    samples = resampled_statistic(batch_norms, resample_indices(np.asarray(batch_norms).shape[0], config), statistic)
    lower, upper = percentile_intervals(samples, config.confidence)
    overlap = None
    if sizes is not None and budget is not None:
        overlap = expected_overlap(first_fit_selection(samples, sizes, budget), sizes)
    return Stability(
        statistic=statistic,
        config=config,
        lower=lower,
        upper=upper,
        rank_correlation=mean_spearman(samples, np.asarray(reference, dtype=np.float64)),
        selection_budget=budget,
        selection_overlap=overlap,
    )
