"""The CSN power-law fitter against synthetic Pareto samples, and the mass shares."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference_impl.heavy_tail import (
    MIN_TAIL_POINTS,
    convert_exponent,
    fit_power_law,
    mass_shares,
    shares_from_curve,
)
from tests.compute.naive import naive_shares


def pareto(alpha: float, x_min: float, n: int, seed: int) -> np.ndarray:
    """Inverse-CDF samples of p(x) ~ x^-alpha for x >= x_min."""
    u = np.random.default_rng(seed).random(n)
    return x_min * (1.0 - u) ** (-1.0 / (alpha - 1.0))


@pytest.mark.parametrize("alpha", [1.5, 2.0, 2.5, 3.2])
def test_recovers_known_exponent(alpha: float) -> None:
    fit = fit_power_law(pareto(alpha, 0.01, 4000, seed=int(alpha * 10)))
    assert fit.status == "ok"
    assert fit.exponent == pytest.approx(alpha, rel=0.06)
    assert fit.ks_distance is not None and fit.ks_distance < 0.05
    assert fit.x_min is not None and fit.x_min >= 0.01
    assert fit.tail_count is not None and MIN_TAIL_POINTS <= fit.tail_count <= 4000


def test_x_min_is_found_above_a_non_power_law_body() -> None:
    rng = np.random.default_rng(3)
    body = rng.uniform(0.0, 1.0, 3000)  # no power law below 1
    tail = pareto(2.5, 1.0, 3000, seed=4)
    fit = fit_power_law(np.concatenate([body, tail]))
    assert fit.status == "ok"
    assert fit.x_min is not None and 0.8 <= fit.x_min <= 2.0
    assert fit.exponent == pytest.approx(2.5, rel=0.08)


def test_mle_formula_on_a_fixed_tail() -> None:
    # With all points in the tail (x_min = smallest value) alpha = 1 + n / sum(ln(x / x_min)).
    x = np.array([1.0, 1.2, 1.5, 2.0, 2.2, 3.0, 4.0, 6.0, 9.0, 15.0])
    fit = fit_power_law(x)
    assert fit.status == "ok" and fit.x_min == 1.0 and fit.tail_count == 10
    assert fit.exponent == pytest.approx(1 + 10 / sum(math.log(v) for v in x))
    # KS distance against the fitted CDF, computed by brute force.
    a = fit.exponent
    model = [1 - v ** (1 - a) for v in sorted(x)]
    ks = max(max(abs((i + 1) / 10 - c), abs(c - i / 10)) for i, c in enumerate(model))
    assert fit.ks_distance == pytest.approx(ks)


def test_insufficient_and_failed() -> None:
    few = fit_power_law([0.1, 0.2, 0.3, 0.0, 0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])  # 9 positive values
    assert few.status == "insufficient-data" and few.exponent is None and few.x_min is None
    assert few.sample_count == 11 and few.message
    flat = fit_power_law([0.5] * 30)
    assert flat.status == "failed" and flat.exponent is None and flat.ks_distance is None
    bad = fit_power_law([1.0, math.nan] * 10)
    assert bad.status == "failed"


def test_exponent_conversions() -> None:
    assert convert_exponent(2.5, "pdf", "tail-index") == pytest.approx(1.5)
    assert convert_exponent(2.5, "pdf", "rank-size") == pytest.approx(1 / 1.5)
    assert convert_exponent(0.76, "rank-size", "pdf") == pytest.approx(1 + 1 / 0.76)
    for conv in ("pdf", "tail-index", "rank-size"):
        assert convert_exponent(convert_exponent(1.7, "tail-index", conv), conv, "tail-index") == pytest.approx(1.7)


def test_rank_size_exponent_matches_sorted_pareto_sample() -> None:
    # For tail index kappa the r-th largest of n samples is ~ x_min * (n / r)^(1/kappa).
    x = np.sort(pareto(2.4, 1.0, 20000, seed=9))[::-1]
    r = np.arange(1, 2001)
    slope = -np.polyfit(np.log(r[10:]), np.log(x[10:2000]), 1)[0]
    fit = fit_power_law(x)
    assert fit.exponent_as("rank-size") == pytest.approx(slope, rel=0.1)


def test_mass_shares_match_naive_and_are_monotone() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 52, 273, 1000):
        x = rng.pareto(1.3, n) + 0.01
        got = mass_shares(x)
        exp = naive_shares(x.tolist())
        assert got == pytest.approx(exp)
        values = list(got.values())
        assert values == sorted(values)
        assert all(v >= p for v, p in zip(values, (0.01, 0.05, 0.1, 0.2, 0.5)))
    assert mass_shares([0.0, 0.0, 0.0]) == {"top_1": 1 / 3, "top_5": 1 / 3, "top_10": 1 / 3, "top_20": 1 / 3, "top_50": 2 / 3}


def test_research_example_shares() -> None:
    # RESEARCH.md: rank-size exponent 1.5 over 10,000 items -> the top 10% hold ~98%.
    r = np.arange(1, 10001, dtype=float)
    assert mass_shares(r ** -1.5)["top_10"] == pytest.approx(0.98, abs=0.01)


def test_shares_from_curve() -> None:
    fractions = np.array([0.0, 0.1, 1.0])
    masses = np.array([0.0, 0.5, 1.0])
    s = shares_from_curve(fractions, masses, 1000)
    assert s["top_10"] == pytest.approx(0.5)
    assert s["top_1"] == pytest.approx(0.05)
    assert s["top_50"] == pytest.approx(0.5 + 0.5 * 0.4 / 0.9)


def test_many_modules_stay_fast() -> None:
    import time

    x = pareto(2.2, 1.0, 100_000, seed=11)  # the spec's maximum module count
    t0 = time.perf_counter()
    fit = fit_power_law(x)
    assert time.perf_counter() - t0 < 30
    assert fit.status == "ok" and fit.exponent == pytest.approx(2.2, rel=0.05)
