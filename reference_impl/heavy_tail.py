"""Heavy-tail summaries of per-module statistics: a power-law fit and non-parametric mass shares.

The fit is the continuous maximum-likelihood estimator of Clauset, Shalizi and Newman (SIAM Review
51, 2009) with x_min chosen by the smallest Kolmogorov-Smirnov distance between the empirical tail
and the fitted power law. It estimates the exponent of the *probability density*,
p(x) ~ x^-alpha for x >= x_min, which is what this module records (convention "pdf").

The three conventions in use describe the same tail differently (SPEC.md, RESEARCH.md section 1):

* pdf exponent alpha: p(x) ~ x^-alpha (alpha > 1);
* tail index kappa = alpha - 1: P(X > x) ~ x^-kappa;
* rank-size exponent beta = 1 / kappa: the r-th largest value x_(r) ~ r^-beta.

Use `convert_exponent` to move between them. Only numpy is needed here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The convention of `PowerLawFit.exponent`.
EXPONENT_CONVENTION = "pdf"
#: Method name recorded in the blueprint.
FIT_METHOD = "csn-mle"
#: A fit needs at least this many points in the tail (x >= x_min).
MIN_TAIL_POINTS = 10
#: At most this many x_min candidates are tried (evenly spaced among the distinct values), which
#: keeps the fit O(n * MAX_CANDIDATES) on models with very many modules.
MAX_CANDIDATES = 2000
#: Top fractions of the non-parametric mass shares, keyed as in the schema.
SHARE_LEVELS: tuple[tuple[str, float], ...] = (
    ("top_1", 0.01),
    ("top_5", 0.05),
    ("top_10", 0.10),
    ("top_20", 0.20),
    ("top_50", 0.50),
)


@dataclass(frozen=True)
class PowerLawFit:
    """Result of a CSN fit. Numbers are None unless `status == "ok"`."""

    status: str  # "ok", "failed" or "insufficient-data"
    sample_count: int
    exponent: float | None = None  # pdf alpha
    x_min: float | None = None
    ks_distance: float | None = None
    tail_count: int | None = None
    message: str | None = None

    def exponent_as(self, convention: str) -> float | None:
        """The fitted exponent in another convention ("pdf", "tail-index", "rank-size")."""
        if self.exponent is None:
            return None
        return convert_exponent(self.exponent, "pdf", convention)


def convert_exponent(value: float, source: str, target: str) -> float:
    """Convert an exponent between the "pdf", "tail-index" and "rank-size" conventions."""
    if source == "pdf":
        kappa = value - 1.0
    elif source == "tail-index":
        kappa = value
    elif source == "rank-size":
        kappa = 1.0 / value
    else:
        raise ValueError(f"unknown exponent convention {source!r}")
    if target == "pdf":
        return kappa + 1.0
    if target == "tail-index":
        return kappa
    if target == "rank-size":
        return 1.0 / kappa
    raise ValueError(f"unknown exponent convention {target!r}")


def _fit_at(tail: np.ndarray, x_min: float) -> tuple[float, float]:
    """MLE alpha and KS distance for the tail `tail` (sorted ascending, all >= x_min)."""
    n = tail.size
    log_sum = float(np.sum(np.log(tail / x_min)))
    if not log_sum > 0.0:
        return math.inf, 1.0
    alpha = 1.0 + n / log_sum
    # Model CDF at each sorted point; the empirical CDF steps from i/n to (i+1)/n there.
    model = 1.0 - (tail / x_min) ** (1.0 - alpha)
    upper = np.arange(1, n + 1, dtype=np.float64) / n
    lower = np.arange(0, n, dtype=np.float64) / n
    ks = float(max(np.max(np.abs(upper - model)), np.max(np.abs(model - lower))))
    return alpha, ks


def fit_power_law(values: Sequence[float] | np.ndarray, min_tail: int = MIN_TAIL_POINTS) -> PowerLawFit:
    """Fit p(x) ~ x^-alpha to the positive entries of `values` (CSN: MLE + KS-selected x_min).

    Every distinct value that leaves at least `min_tail` points at or above it is a candidate
    x_min; the candidate with the smallest KS distance wins (ties: the smaller x_min, i.e. the
    longer tail). Fewer than `min_tail` positive values give status "insufficient-data"; a tail
    with no spread or a non-finite result gives status "failed". Zeros and negatives carry no
    tail information and are left out (they still count in `sample_count`). Above MAX_CANDIDATES
    distinct candidates, an evenly spaced subset of them is tried.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    sample_count = int(x.size)
    if not np.all(np.isfinite(x)):
        return PowerLawFit("failed", sample_count, message="non-finite values cannot be fitted")
    positive = np.sort(x[x > 0.0])
    if positive.size < min_tail:
        return PowerLawFit(
            "insufficient-data",
            sample_count,
            message=f"{positive.size} positive values; a fit needs at least {min_tail} in the tail",
        )
    candidates = np.unique(positive[: positive.size - min_tail + 1])
    if candidates.size > MAX_CANDIDATES:
        pick = np.unique(np.linspace(0, candidates.size - 1, MAX_CANDIDATES).round().astype(np.int64))
        candidates = candidates[pick]
    best: tuple[float, float, float, int] | None = None  # (ks, x_min, alpha, tail size)
    for x_min in candidates:
        start = int(np.searchsorted(positive, x_min, side="left"))
        tail = positive[start:]
        if tail.size < min_tail:
            continue
        alpha, ks = _fit_at(tail, float(x_min))
        if not math.isfinite(alpha):
            continue
        if best is None or ks < best[0]:
            best = (ks, float(x_min), alpha, int(tail.size))
    if best is None:
        return PowerLawFit(
            "failed", sample_count, message="every candidate tail has zero spread; no exponent can be estimated"
        )
    ks, x_min, alpha, tail_count = best
    if not (math.isfinite(alpha) and 1.0 < alpha <= 1e6 and 0.0 <= ks <= 1.0):
        return PowerLawFit("failed", sample_count, message=f"fit produced an unusable exponent {alpha!r}")
    return PowerLawFit(
        "ok",
        sample_count,
        exponent=alpha,
        x_min=x_min,
        ks_distance=ks,
        tail_count=tail_count,
        message=None,
    )


def top_counts(n: int) -> dict[str, int]:
    """How many items the top 1/5/10/20/50% of `n` items are: ceil(p * n), at least 1."""
    return {key: max(1, math.ceil(p * n - 1e-9)) for key, p in SHARE_LEVELS}


def mass_shares(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Share of sum(values) held by the ceil(p*n) largest values, for p = 1, 5, 10, 20, 50%.

    Shares are made non-decreasing and at least p (both hold mathematically; the clamps only
    absorb floating-point rounding). All-zero input gives the proportional shares.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())[::-1]
    if x.size == 0:
        raise ValueError("mass shares need at least one value")
    total = float(np.sum(x))
    cum = np.cumsum(x)
    out: dict[str, float] = {}
    previous = 0.0
    for key, p in SHARE_LEVELS:
        k = top_counts(int(x.size))[key]
        share = float(cum[k - 1] / total) if total > 0 else k / x.size
        share = min(1.0, max(share, p, previous))
        out[key] = share
        previous = share
    return out


def shares_from_curve(fractions: np.ndarray, masses: np.ndarray, n_items: int) -> dict[str, float]:
    """Mass shares from a concave gain curve given by vertices (fraction of items, fraction of mass).

    Used when the items (individual parameter elements) are summarised by a sketch; the share at
    p is the curve at ceil(p*n)/n, interpolated linearly between vertices.
    """
    out: dict[str, float] = {}
    previous = 0.0
    counts = top_counts(n_items)
    for key, p in SHARE_LEVELS:
        k = counts[key] / n_items
        share = float(np.interp(k, fractions, masses))
        share = min(1.0, max(share, p, previous))
        out[key] = share
        previous = share
    return out
