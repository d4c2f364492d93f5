"""The bootstrap stability of a domain's ranking, against naive loops over the same resamples."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest

from reference_impl.config import ConfigError
from reference_impl.stability import (
    STABILITY_STATISTICS,
    StabilityConfig,
    average_ranks,
    bootstrap_stability,
    expected_overlap,
    first_fit_selection,
    mean_spearman,
    percentile_intervals,
    resample_indices,
    resampled_statistic,
)


def norms(batches: int, modules: int, noise: float, seed: int) -> np.ndarray:
    """(batches x modules) positive per-batch norms: a heavy-tailed module scale times batch noise."""
    rng = np.random.default_rng(seed)
    scale = (1.0 - rng.random(modules)) ** (-1.0 / 1.5)
    return scale[None, :] * np.exp(noise * rng.standard_normal((batches, modules)))


def naive_statistic(rows: list[list[float]], statistic: str) -> list[float]:
    columns = list(zip(*rows))
    if statistic == "grad_norm_mean":
        return [math.fsum(c) / len(c) for c in columns]
    if statistic == "grad_norm_median":
        return [statistics.median(c) for c in columns]
    return [math.fsum(v * v for v in c) / len(c) for c in columns]


def naive_quantile(values: list[float], p: float) -> float:
    """Linear interpolation between order statistics (Hyndman and Fan type 7)."""
    x = sorted(values)
    h = (len(x) - 1) * p
    lo = math.floor(h)
    return x[lo] if lo + 1 >= len(x) else x[lo] + (h - lo) * (x[lo + 1] - x[lo])


def naive_first_fit(values: list[float], sizes: list[int], budget: float) -> set[int]:
    cap = math.floor(budget * sum(sizes) + 1e-9)
    chosen: set[int] = set()
    used = 0
    for m in sorted(range(len(values)), key=lambda i: (-values[i], i)):
        if used + sizes[m] <= cap:
            chosen.add(m)
            used += sizes[m]
    return chosen


def naive_ranks(values: list[float]) -> list[float]:
    return [
        sum(1 for w in values if w < v) + (sum(1 for w in values if w == v) + 1) / 2 for v in values
    ]


def naive_spearman(a: list[float], b: list[float]) -> float:
    ra, rb = naive_ranks(a), naive_ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = math.fsum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(math.fsum((x - ma) ** 2 for x in ra) * math.fsum((y - mb) ** 2 for y in rb))


@pytest.mark.parametrize("statistic", STABILITY_STATISTICS)
def test_resampled_statistics_and_intervals_match_a_naive_loop(statistic: str) -> None:
    bn = norms(7, 9, 0.5, seed=1)
    config = StabilityConfig(resamples=40, confidence=0.8, seed=3)
    idx = resample_indices(7, config)
    assert idx.shape == (40, 7) and idx.min() >= 0 and idx.max() <= 6
    got = resampled_statistic(bn, idx, statistic)
    for r in range(40):
        rows = [bn[i].tolist() for i in idx[r]]
        assert got[r] == pytest.approx(naive_statistic(rows, statistic), rel=1e-12)
    lower, upper = percentile_intervals(got, 0.8)
    for m in range(9):
        column = got[:, m].tolist()
        assert lower[m] == pytest.approx(naive_quantile(column, 0.1), rel=1e-12)
        assert upper[m] == pytest.approx(naive_quantile(column, 0.9), rel=1e-12)


def test_first_fit_selection_matches_a_naive_loop() -> None:
    rng = np.random.default_rng(4)
    values = rng.random((25, 30))
    values[:, 3] = values[:, 4]  # ties go to the lower index
    sizes = rng.integers(1, 200, 30)
    sizes[0] = 10_000  # a module larger than any budget below: always skipped, never a stop
    for budget in (0.01, 0.1, 0.35, 1.0):
        got = first_fit_selection(values, sizes, budget)
        for r in range(25):
            assert set(np.flatnonzero(got[r]).tolist()) == naive_first_fit(values[r].tolist(), sizes.tolist(), budget)


def test_expected_overlap_is_the_mean_over_all_pairs() -> None:
    rng = np.random.default_rng(5)
    selected = rng.random((12, 20)) < 0.3
    sizes = rng.integers(1, 50, 20)
    shared = total = 0.0
    for i, j in itertools.permutations(range(12), 2):
        shared += float(sizes[selected[i] & selected[j]].sum())
        total += float(sizes[selected[i]].sum())
    assert expected_overlap(selected, sizes) == pytest.approx(shared / total, rel=1e-12)
    assert expected_overlap(np.ones((4, 20), dtype=bool), sizes) == pytest.approx(1.0)
    assert expected_overlap(np.zeros((4, 20), dtype=bool), sizes) == 1.0


def test_ranks_and_spearman_match_naive_with_ties() -> None:
    rng = np.random.default_rng(6)
    samples = rng.integers(0, 6, (15, 11)).astype(float)  # many ties
    reference = rng.integers(0, 6, 11).astype(float)
    ranks = average_ranks(samples)
    for r in range(15):
        assert ranks[r].tolist() == naive_ranks(samples[r].tolist())
    expected = statistics.fmean(naive_spearman(samples[r].tolist(), reference.tolist()) for r in range(15))
    assert mean_spearman(samples, reference) == pytest.approx(expected, rel=1e-12)
    assert mean_spearman(np.ones((3, 4)), np.ones(4)) == 1.0
    assert mean_spearman(np.ones((3, 4)), np.arange(4.0)) == 0.0


def test_bootstrap_is_deterministic_and_seeded() -> None:
    bn = norms(8, 40, 0.6, seed=2)
    sizes = np.arange(1, 41) * 10
    reference = bn.mean(axis=0)
    a = bootstrap_stability(bn, "grad_norm_mean", reference, sizes, 0.2, StabilityConfig(seed=1))
    b = bootstrap_stability(bn, "grad_norm_mean", reference, sizes, 0.2, StabilityConfig(seed=1))
    c = bootstrap_stability(bn, "grad_norm_mean", reference, sizes, 0.2, StabilityConfig(seed=2))
    assert np.array_equal(a.lower, b.lower) and a.selection_overlap == b.selection_overlap
    assert not np.array_equal(a.lower, c.lower)
    assert np.all(a.lower <= reference) and np.all(reference <= a.upper)
    assert 0.0 < a.selection_overlap <= 1.0 and -1.0 <= a.rank_correlation <= 1.0


def test_noisier_or_fewer_batches_are_less_stable() -> None:
    sizes = np.full(60, 100)
    results = {}
    for name, batches, noise in (("quiet", 16, 0.05), ("noisy", 16, 1.0), ("few", 3, 1.0)):
        bn = norms(batches, 60, noise, seed=7)
        results[name] = bootstrap_stability(bn, "grad_norm_mean", bn.mean(axis=0), sizes, 0.2)
    quiet, noisy = results["quiet"], results["noisy"]
    assert quiet.selection_overlap is not None and noisy.selection_overlap is not None
    assert quiet.selection_overlap > 0.95 and quiet.rank_correlation > 0.99
    assert quiet.selection_overlap > noisy.selection_overlap
    assert quiet.rank_correlation > noisy.rank_correlation > 0.0
    width = {k: float(np.median((r.upper - r.lower) / (r.upper + r.lower))) for k, r in results.items()}
    assert width["quiet"] < width["noisy"] < width["few"]


def test_one_batch_gives_degenerate_intervals_and_full_overlap() -> None:
    bn = norms(1, 10, 0.5, seed=8)
    s = bootstrap_stability(bn, "grad_norm_median", bn[0], np.full(10, 5), 0.3, StabilityConfig(resamples=5))
    assert np.array_equal(s.lower, bn[0]) and np.array_equal(s.upper, bn[0])
    assert s.selection_overlap == 1.0 and s.rank_correlation == pytest.approx(1.0)


def test_without_a_budget_there_is_no_selection_overlap() -> None:
    bn = norms(4, 10, 0.5, seed=9)
    s = bootstrap_stability(bn, "grad_norm_sq_mean", (bn * bn).mean(axis=0))
    assert s.selection_overlap is None and s.selection_budget is None
    with pytest.raises(ValueError):
        bootstrap_stability(bn, "grad_norm_mean", bn.mean(axis=0), sizes=np.ones(10))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"resamples": 1}, "resamples"), ({"confidence": 1.0}, "confidence"), ({"confidence": 0}, "confidence"),
     ({"confidence": math.nan}, "confidence"), ({"seed": -1}, "seed"), ({"resamples": True}, "resamples")],
)
def test_bad_settings_are_usage_errors_at_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        StabilityConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field and info.value.issues[0].code == "usage-error"


def test_a_statistic_that_needs_gradients_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        resampled_statistic(np.ones((2, 2)), np.zeros((2, 2), dtype=np.int64), "mean_grad_norm")
    assert info.value.field == "statistic"


@pytest.mark.slow
def test_compute_records_the_bootstrap_of_each_domain(tiny_net: object) -> None:
    import blueprint_format as bf
    from reference_impl import compute_blueprint
    from tests.compute.conftest import tiny_batches, tiny_loss

    data = {"a": tiny_batches(1, 5), "b": tiny_batches(2, 4), "one": tiny_batches(3, 1)}
    collected: dict[str, np.ndarray] = {}
    bp = compute_blueprint(
        tiny_net, data, tiny_loss, created="2026-01-01T00:00:00Z", seed=3, min_examples_per_aggregate=8,
        on_domain_done=lambda name, stats: collected.__setitem__(name, stats.batch_norms),
    )
    assert bp.spec_version == "1.1.0" and bf.validate(bp.to_json()) == []
    sizes = np.array([m.parameter_count for m in bp.modules])
    for name in ("a", "b"):
        s = bp.domain(name).stability
        assert s is not None and s.method == "batch-bootstrap" and s.seed == 3 and s.selection is not None
        assert s.selection.budget == pytest.approx(bp.allocation.trainable_fraction)
        values = np.array([m.stats[name].grad_norm_mean for m in bp.modules])
        # The same bootstrap over the collected per-batch norms (every module was reached here).
        ref = bootstrap_stability(collected[name], "grad_norm_mean", values, sizes, s.selection.budget,
                                  StabilityConfig(seed=3))
        assert s.rank_correlation == pytest.approx(ref.rank_correlation)
        assert s.selection.overlap == pytest.approx(ref.selection_overlap)
        for m, lo, hi in zip(bp.modules, ref.lower, ref.upper):
            assert m.stats[name].interval is not None
            assert (m.stats[name].interval.lower, m.stats[name].interval.upper) == pytest.approx((lo, hi))
    # One batch: nothing to resample, no stability and no intervals on that domain.
    assert bp.domain("one").stability is None and all(m.stats["one"].interval is None for m in bp.modules)
    single = compute_blueprint(tiny_net, {"one": tiny_batches(3, 1)}, tiny_loss, min_examples_per_aggregate=8)
    assert single.spec_version == "1.0.0" and single.domain("one").stability is None
