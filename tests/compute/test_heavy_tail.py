"""The CSN power-law fitter: against a naive loop over the SPEC 8.2 rules, against the reference
implementation `powerlaw` 2.0 on real and synthetic data, on synthetic Pareto samples, and the
mass shares."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from reference_impl import heavy_tail
from reference_impl.heavy_tail import (
    MAX_EXPONENT,
    MIN_POSITIVE_VALUES,
    convert_exponent,
    fit_power_law,
    mass_shares,
    shares_from_curve,
)
from tests.compute.naive import naive_shares

REAL = json.loads((Path(__file__).parent / "data" / "heavy_tail_real.json").read_text(encoding="utf-8"))
REAL_SETS = [(model, name) for model, entry in REAL["models"].items() for name in entry["sets"]]


def pareto(alpha: float, x_min: float, n: int, seed: int) -> np.ndarray:
    """Inverse-CDF samples of p(x) ~ x^-alpha for x >= x_min."""
    u = np.random.default_rng(seed).random(n)
    return x_min * (1.0 - u) ** (-1.0 / (alpha - 1.0))


def synthetic(kind: str, n: int, seed: int) -> np.ndarray:
    """Fixed synthetic data sets of several shapes (power laws, other laws, ties, zeros)."""
    rng = np.random.default_rng(seed)
    if kind.startswith("pareto"):
        return pareto(float(kind.removeprefix("pareto")), 1.0, n, seed)
    if kind == "lognormal":
        return rng.lognormal(0.0, 1.0, n)
    if kind == "exponential":
        return rng.exponential(1.0, n)
    if kind == "body+tail":
        return np.concatenate([rng.uniform(0.0, 1.0, n // 2), pareto(2.5, 1.0, n - n // 2, seed + 1)])
    if kind == "ties":
        return np.round(pareto(2.2, 1.0, n, seed), 1)
    if kind == "zeros":
        x = pareto(2.3, 1.0, n, seed)
        x[: n // 5] = 0.0
        return x
    raise ValueError(kind)


def naive_fit(values: np.ndarray, max_exponent: float = MAX_EXPONENT) -> tuple[float, float, float, int] | None:
    """(x_min, alpha, D, tail size) by a plain loop over the rules of SPEC 8.2; None: no admissible x_min."""
    x = sorted(float(v) for v in values if v > 0)
    distinct = sorted(set(x))
    best = None
    for x_min in distinct[:-2]:
        tail = [v for v in x if v >= x_min]
        t = len(tail)
        alpha = 1.0 + t / math.fsum(math.log(v / x_min) for v in tail)
        if not alpha < max_exponent:
            continue
        d = 0.0
        for v in sorted(set(tail)):
            below = sum(1 for w in tail if w < v) / t
            d = max(d, abs((1.0 - (v / x_min) ** (1.0 - alpha)) - below))
        if best is None or d < best[2]:
            best = (x_min, alpha, d, t)
    return best


@pytest.mark.parametrize("kind", ["pareto2", "body+tail", "lognormal", "ties", "zeros"])
@pytest.mark.parametrize("n", [12, 60])
def test_matches_a_naive_loop_over_the_spec_rules(kind: str, n: int) -> None:
    x = synthetic(kind, n, seed=n)
    fit, naive = fit_power_law(x), naive_fit(x)
    if naive is None:
        assert fit.status == "failed" and fit.exponent is None
        return
    assert fit.status == "ok"
    assert (fit.x_min, fit.tail_count) == (naive[0], naive[3])
    assert fit.exponent == pytest.approx(naive[1], rel=1e-12)
    assert fit.ks_distance == pytest.approx(naive[2], abs=1e-12)


def _powerlaw_fit(x: np.ndarray) -> object:
    powerlaw = pytest.importorskip("powerlaw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return powerlaw.Fit(x, discrete=False, verbose=0)


def _assert_agrees_with_powerlaw(x: np.ndarray) -> None:
    """Same x_min, exponent, tail and D where powerlaw finds a valid x_min; `failed` where it flags none."""
    ref = _powerlaw_fit(x)
    fit = fit_power_law(x)
    if ref.noise_flag:  # type: ignore[attr-defined]
        assert fit.status == "failed" and fit.exponent is None
        return
    assert fit.status == "ok", fit.message
    assert fit.x_min == ref.xmin  # type: ignore[attr-defined]
    assert fit.exponent == pytest.approx(ref.alpha, abs=1e-6)  # type: ignore[attr-defined]
    assert fit.tail_count == int(ref.n_tail)  # type: ignore[attr-defined]
    assert fit.ks_distance == pytest.approx(ref.D, abs=1e-9)  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "name"), REAL_SETS)
def test_agrees_with_powerlaw_on_real_module_statistics(model: str, name: str) -> None:
    _assert_agrees_with_powerlaw(np.array(REAL["models"][model]["sets"][name]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind", ["pareto1.3", "pareto1.8", "pareto2.5", "pareto2.9", "pareto3.2", "lognormal", "exponential",
             "body+tail", "ties", "zeros"]
)
@pytest.mark.parametrize("n", [25, 200])
def test_agrees_with_powerlaw_on_synthetic_data(kind: str, n: int) -> None:
    _assert_agrees_with_powerlaw(synthetic(kind, n, seed=7))


def test_steep_tails_fail_where_the_reference_flags_no_valid_x_min() -> None:
    # Pareto quantiles with alpha = 5: every candidate's MLE exponent exceeds 3. powerlaw then flags
    # noise and returns its boundary value; the spec's method reports `failed`, never that value.
    n = 40
    x = (1.0 - (np.arange(1, n + 1) - 0.5) / n) ** (-1.0 / 4.0)
    fit = fit_power_law(x)
    assert fit.status == "failed" and fit.exponent is None and fit.message and "below 3" in fit.message
    ref = _powerlaw_fit(x)
    assert ref.noise_flag  # type: ignore[attr-defined]
    # Without the exponent window the same data fit at about 5.
    unbounded = fit_power_law(x, max_exponent=math.inf)
    assert unbounded.status == "ok" and unbounded.exponent == pytest.approx(5.0, rel=0.15)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 2.5, 2.8])
def test_recovers_known_exponent(alpha: float) -> None:
    fit = fit_power_law(pareto(alpha, 0.01, 4000, seed=int(alpha * 10)))
    assert fit.status == "ok"
    assert fit.exponent == pytest.approx(alpha, rel=0.06)
    assert fit.ks_distance is not None and fit.ks_distance < 0.05
    assert fit.x_min is not None and fit.x_min >= 0.01
    assert fit.tail_count is not None and 3 <= fit.tail_count <= 4000


def test_x_min_is_found_above_a_non_power_law_body() -> None:
    rng = np.random.default_rng(3)
    body = rng.uniform(0.0, 1.0, 3000)  # no power law below 1
    tail = pareto(2.5, 1.0, 3000, seed=4)
    fit = fit_power_law(np.concatenate([body, tail]))
    assert fit.status == "ok"
    assert fit.x_min is not None and 0.8 <= fit.x_min <= 2.0
    assert fit.exponent == pytest.approx(2.5, rel=0.08)


def test_mle_formula_and_ks_on_a_fixed_tail() -> None:
    # At the chosen x_min, alpha = 1 + t / sum(ln(x / x_min)) over the t values >= x_min.
    x = np.array([1.0, 1.2, 1.5, 2.0, 2.2, 3.0, 4.0, 6.0, 9.0, 15.0])
    fit = fit_power_law(x)
    assert fit.status == "ok" and fit.x_min == 1.5 and fit.tail_count == 8
    tail = [v for v in x if v >= 1.5]
    assert fit.exponent == pytest.approx(1 + 8 / sum(math.log(v / 1.5) for v in tail))
    # D compares the fitted CDF with the share of tail values strictly below each value (SPEC 8.2).
    a = fit.exponent
    assert fit.ks_distance == pytest.approx(max(abs(1 - (v / 1.5) ** (1 - a) - i / 8) for i, v in enumerate(tail)))
    # x_min = 1 (all ten values) has the larger D, so it lost.
    a1 = 1 + 10 / sum(math.log(v) for v in x)
    assert max(abs(1 - v ** (1 - a1) - i / 10) for i, v in enumerate(x)) > fit.ks_distance


def test_insufficient_and_failed() -> None:
    few = fit_power_law([0.1, 0.2, 0.3, 0.0, 0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])  # 9 positive values
    assert MIN_POSITIVE_VALUES == 10
    assert few.status == "insufficient-data" and few.exponent is None and few.x_min is None
    assert few.sample_count == 11 and few.message
    flat = fit_power_law([0.5] * 30)
    assert flat.status == "failed" and flat.exponent is None and flat.ks_distance is None
    three = fit_power_law([1.0, 2.0, 3.0] * 5)  # 3 distinct values leave one candidate: not a scan
    assert three.status == "failed" and "distinct" in (three.message or "")
    bad = fit_power_law([1.0, math.nan] * 10)
    assert bad.status == "failed"


def test_candidates_are_thinned_evenly_above_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    x = pareto(2.2, 1.0, 1500, seed=5)
    exhaustive = fit_power_law(x)
    monkeypatch.setattr(heavy_tail, "MAX_CANDIDATES", 300)
    thinned = fit_power_law(x)
    assert thinned.status == "ok" and thinned.x_min in set(x.tolist())
    assert thinned.exponent == pytest.approx(exhaustive.exponent, rel=0.05)
    assert thinned.ks_distance is not None and exhaustive.ks_distance is not None
    assert thinned.ks_distance >= exhaustive.ks_distance  # a subset cannot beat the full scan


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


def test_rank_size_example_shares() -> None:
    # SPEC 8.4: rank-size exponent 1.5 over 10,000 items -> the top 10% hold ~98%.
    r = np.arange(1, 10001, dtype=float)
    assert mass_shares(r ** -1.5)["top_10"] == pytest.approx(0.98, abs=0.01)


def test_shares_from_curve() -> None:
    fractions = np.array([0.0, 0.1, 1.0])
    masses = np.array([0.0, 0.5, 1.0])
    s = shares_from_curve(fractions, masses, 1000)
    assert s["top_10"] == pytest.approx(0.5)
    assert s["top_1"] == pytest.approx(0.05)
    assert s["top_50"] == pytest.approx(0.5 + 0.5 * 0.4 / 0.9)


@pytest.mark.slow
def test_many_modules_stay_fast() -> None:
    import time

    x = pareto(2.2, 1.0, 100_000, seed=11)  # the spec's maximum module count
    t0 = time.perf_counter()
    fit = fit_power_law(x)
    assert time.perf_counter() - t0 < 30
    assert fit.status == "ok" and fit.exponent == pytest.approx(2.2, rel=0.05)
