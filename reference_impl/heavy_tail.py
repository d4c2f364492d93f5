"""Heavy-tail summaries of per-module statistics: a power-law fit and non-parametric mass shares.

The fit is the continuous maximum-likelihood estimator of Clauset, Shalizi and Newman (SIAM Review
51, 2009) with x_min chosen by the smallest Kolmogorov-Smirnov distance, under exactly the rules of
the reference implementation `powerlaw` 2.0 (`powerlaw.Fit(x, discrete=False)`), so that another
tool computes the same x_min and exponent (SPEC.md section 8.2 states the rules; the tests compare
against `powerlaw` on real and synthetic data). It estimates the exponent of the *probability
density*, p(x) ~ x^-alpha for x >= x_min, which is what this module records (convention "pdf").

The three conventions in use describe the same tail differently (SPEC.md section 8.3):

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
#: A fit is attempted only with at least this many positive values (SPEC 8.5: insufficient-data).
MIN_POSITIVE_VALUES = 10
#: A candidate x_min is admissible only if its fitted density exponent is below this: the default
#: parameter range (0, 3) of `powerlaw` 2.0, which keeps short noisy tails with very steep fits
#: from winning the KS scan (SPEC 8.2 gives the measured consequences for steeper true tails).
MAX_EXPONENT = 3.0
#: Up to this many x_min candidates the scan is exhaustive (as in the reference); above it an evenly
#: spaced subset is tried, which keeps the fit fast at the spec's 100,000 modules (SPEC 8.2).
MAX_CANDIDATES = 4000
#: Matrix elements per block of the vectorised KS scan (small enough to stay in cache).
_BLOCK_ELEMENTS = 1 << 16
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


@dataclass(frozen=True)
class _Sample:
    """The positive values as distinct values `u` (ascending), how many values lie strictly below
    each (`below`) and their total count `n`: everything the scan needs, ties included."""

    u: np.ndarray
    below: np.ndarray
    n: int

    @classmethod
    def of(cls, positive: np.ndarray) -> _Sample:
        u, counts = np.unique(positive, return_counts=True)
        below = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        return cls(u=u, below=below, n=int(positive.size))

    def exponents(self) -> tuple[np.ndarray, np.ndarray]:
        """MLE alpha = 1 + t / sum(ln(x / x_min)) and tail size t for x_min = each distinct value."""
        counts = np.diff(np.append(self.below, self.n))
        log_u = np.log(self.u)
        # sum over the tail of ln(x) - t ln(x_min), from suffix sums: O(n) for all candidates at once.
        suffix = np.cumsum((counts * log_u)[::-1])[::-1]
        tail = self.n - self.below
        spread = suffix - tail * log_u
        with np.errstate(divide="ignore"):
            alpha = np.where(spread > 0.0, 1.0 + tail / np.where(spread > 0.0, spread, 1.0), np.inf)
        return alpha, tail

    def ks_distances(self, idx: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """KS distance D of the fit at x_min = u[i] for each i in `idx` (ascending), as the reference
        computes it: over the distinct tail values v, |P(v) - S(v)| with the fitted CDF
        P(v) = 1 - (v / x_min)^(1 - alpha) and S(v) the share of tail values strictly below v."""
        log_u = np.log(self.u)
        cdf = self.below / self.n  # share of all positive values strictly below each distinct value
        out = np.empty(idx.size)
        rows = max(1, _BLOCK_ELEMENTS // (self.u.size - int(idx[0])))
        for start in range(0, idx.size, rows):
            block = idx[start : start + rows]
            first = int(block[0])
            # (v / x_min)^(1 - alpha) as exp((1 - alpha) ln(v / x_min)), in place; values below a
            # row's x_min are clamped to x_min, where both CDFs are 0 and add nothing to the max.
            power = log_u[None, first:] - log_u[block][:, None]
            np.maximum(power, 0.0, out=power)
            power *= (1.0 - alpha[block])[:, None]
            np.exp(power, out=power)
            dropped = cdf[block][:, None]
            empirical = np.maximum((cdf[None, first:] - dropped) / (1.0 - dropped), 0.0)
            empirical += power  # |(1 - power) - empirical| = |1 - (power + empirical)|
            np.subtract(1.0, empirical, out=empirical)
            out[start : start + block.size] = np.max(np.abs(empirical), axis=1)
        return out


def _candidates(distinct: int) -> np.ndarray:
    """Indices of the x_min candidates among `distinct` ascending distinct values: all but the two
    largest (as the reference does), thinned evenly above MAX_CANDIDATES."""
    count = distinct - 2
    if count <= MAX_CANDIDATES:
        return np.arange(max(count, 0), dtype=np.int64)
    return np.unique(np.linspace(0, count - 1, MAX_CANDIDATES).round().astype(np.int64))


def fit_power_law(
    values: Sequence[float] | np.ndarray,
    min_positive: int = MIN_POSITIVE_VALUES,
    max_exponent: float = MAX_EXPONENT,
) -> PowerLawFit:
    """Fit p(x) ~ x^-alpha to the positive entries of `values` (CSN: MLE + KS-selected x_min).

    The rules are those of `powerlaw.Fit(values, discrete=False)` 2.0 (SPEC 8.2): every distinct
    positive value except the two largest is a candidate x_min; a candidate is admissible when its
    MLE alpha is below `max_exponent`; the admissible candidate with the smallest KS distance wins
    (ties: the smaller x_min). Zeros and negatives carry no tail information and are left out (they
    still count in `sample_count`). Fewer than `min_positive` positive values give status
    "insufficient-data"; non-finite values, fewer than 4 distinct positive values or no admissible
    candidate give "failed" (the reference would return NaN or a flagged boundary value there).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    sample_count = int(x.size)
    if not np.all(np.isfinite(x)):
        return PowerLawFit("failed", sample_count, message="non-finite values cannot be fitted")
    positive = x[x > 0.0]
    if positive.size < min_positive:
        return PowerLawFit(
            "insufficient-data",
            sample_count,
            message=f"{positive.size} positive values; a fit needs at least {min_positive}",
        )
    sample = _Sample.of(positive)
    idx = _candidates(sample.u.size)
    if idx.size < 2:
        return PowerLawFit(
            "failed", sample_count, message=f"{sample.u.size} distinct positive values; a fit needs at least 4"
        )
    alpha, tail = sample.exponents()
    idx = idx[alpha[idx] < max_exponent]
    if idx.size == 0:
        return PowerLawFit(
            "failed",
            sample_count,
            message=f"no x_min gives a density exponent below {max_exponent:g}: the tail is steeper than "
            "the range csn-mle fits (SPEC 8.2)",
        )
    distances = sample.ks_distances(idx, alpha)
    best = int(idx[int(np.argmin(distances))])
    thinned = sample.u.size - 2 > MAX_CANDIDATES
    return PowerLawFit(
        "ok",
        sample_count,
        exponent=float(alpha[best]),
        x_min=float(sample.u[best]),
        ks_distance=float(np.min(distances)),
        tail_count=int(tail[best]),
        message=f"x_min scanned over {MAX_CANDIDATES} evenly spaced of {sample.u.size - 2} candidates (SPEC 8.2)"
        if thinned
        else None,
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
