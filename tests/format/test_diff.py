"""`blueprint diff`: rank correlations against naive pair counts, overlaps, k* and heavy-tail
changes, thresholds and the command's exit statuses."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

import blueprint_format as bf
from blueprint_format.cli import main
from blueprint_format.diff import DiffThresholds, average_ranks, compare, dice, kendall_tau_b, spearman
from blueprint_format.errors import BlueprintError, UsageError
from tests.format.builders import DIGEST, mass_shares

SHARE_KEYS = ("top_1", "top_5", "top_10", "top_20", "top_50")


def make_blueprint(
    values: dict[str, list[float]],
    sizes: list[int],
    k_stars: list[float | None],
    exponents: dict[str, float | None] | None = None,
    granularity: str = "module",
    digest: str = DIGEST,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """A valid document whose modules have `values[domain]` as grad_norm_mean, with ranks, combined
    scores (SPEC 7.5, equal domain weights) and a heavy-tail fit of the given pdf exponent."""
    n = len(sizes)
    names = names or [f"layer.{i}" for i in range(n)]
    domains = list(values)
    modules: list[dict[str, Any]] = [
        {"name": names[i], "type": "Linear", "parameter_count": sizes[i], "stats": {}} for i in range(n)
    ]
    scores = [0.0] * n
    for d in domains:
        order = sorted(range(n), key=lambda i: (-values[d][i], i))
        total = math.fsum(values[d])
        for rank, i in enumerate(order, start=1):
            v = values[d][i]
            modules[i]["stats"][d] = {
                "grad_norm_mean": v, "grad_norm_median": v, "grad_norm_sq_mean": v * v, "rank": rank,
            }
            scores[i] += v / total / len(domains)
    for rank, i in enumerate(sorted(range(n), key=lambda i: (-scores[i], i)), start=1):
        modules[i]["combined"] = {"score": scores[i], "rank": rank}
    for m, k in zip(modules, k_stars):
        if k is not None:
            m["k_star"] = k
    fits = []
    for d in domains:
        alpha = (exponents or {}).get(d)
        fit: dict[str, Any] = {
            "statistic": "grad_norm_mean", "method": "csn-mle", "exponent_convention": "pdf",
            "status": "ok" if alpha else "failed", "sample_count": n, "mass_shares": mass_shares(values[d]),
        }
        if alpha:
            fit.update(exponent=alpha, x_min=min(values[d]), ks_distance=0.1, tail_count=n)
        fits.append(fit)
    return {
        "spec_version": "1.0.0",
        "model": {"name": "t", "revision": "r1", "structure_digest": digest},
        "provenance": {"created": "2026-12-01T00:00:00Z", "generator": {"name": "tests", "version": "0"}},
        "method": {"estimator": "batch-gradient-norm", "loss": "ce", "min_examples_per_aggregate": 1},
        "domains": [
            {"name": d, "weight": 1 / len(domains), "examples": 8, "batches": 2, "heavy_tail": fit}
            for d, fit in zip(domains, fits)
        ],
        "modules": modules,
        "allocation": {
            "rule": {"name": "x-test", "parameters": {}},
            "statistic": "grad_norm_mean",
            "granularity": granularity,
            "cost_model": {"name": "linear", "fixed": 0.0, "per_parameter": 1.0, "unit": "parameters"},
        },
    }


def naive_kendall_b(a: list[float], b: list[float]) -> float:
    concordant = discordant = tie_a = tie_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if da == 0 and db == 0:
            continue
        if da == 0:
            tie_a += 1
        elif db == 0:
            tie_b += 1
        elif (da > 0) == (db > 0):
            concordant += 1
        else:
            discordant += 1
    return (concordant - discordant) / math.sqrt((concordant + discordant + tie_a) * (concordant + discordant + tie_b))


def naive_spearman(a: list[float], b: list[float]) -> float:
    def ranks(x: list[float]) -> list[float]:
        return [sum(w < v for w in x) + (sum(w == v for w in x) + 1) / 2 for v in x]

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


@pytest.mark.parametrize("seed", range(12))
def test_rank_correlations_match_naive_pair_counts(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 60)
    levels = rng.choice([3, 10, 1000])  # few levels: many ties
    a = [float(rng.randrange(levels)) for _ in range(n)]
    b = [x + rng.randrange(levels) * rng.random() for x in a]
    if len(set(a)) == 1 or len(set(b)) == 1:
        return
    assert kendall_tau_b(a, b) == pytest.approx(naive_kendall_b(a, b), abs=1e-12)
    assert spearman(a, b) == pytest.approx(naive_spearman(a, b), abs=1e-12)
    assert average_ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]


def test_correlation_extremes() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert spearman(x, x) == 1.0 and kendall_tau_b(x, x) == 1.0
    assert spearman(x, x[::-1]) == -1.0 and kendall_tau_b(x, x[::-1]) == -1.0
    assert spearman([1.0] * 5, [2.0] * 5) == 1.0 and kendall_tau_b([1.0] * 5, x) == 0.0


def test_dice_overlaps() -> None:
    assert dice([0, 0], [0, 0]) == 1.0
    assert dice([10, 0, 5], [10, 5, 0]) == pytest.approx(2 * 10 / 30)
    assert dice([4.0, 2.0], [1.0, 2.0]) == pytest.approx(2 * 3 / 9)


def base(n: int = 20, seed: int = 0) -> tuple[dict[str, list[float]], list[int], list[float | None]]:
    rng = random.Random(seed)
    values = {d: [rng.paretovariate(1.5) for _ in range(n)] for d in ("ai", "bio")}
    sizes = [rng.randrange(100, 10_000) for _ in range(n)]
    k = [1.0 if i % 3 == 0 else None for i in range(n)]
    return values, sizes, k


def test_identical_blueprints_are_within_every_threshold() -> None:
    values, sizes, k = base()
    doc = make_blueprint(values, sizes, k, {"ai": 2.1, "bio": 2.4})
    d = compare(bf.from_json(doc), bf.from_json(copy.deepcopy(doc)))
    assert d.within and d.failures == []
    assert [c.scope for c in d.correlations] == ["domain ai", "domain bio", "combined"]
    assert all(c.spearman == 1.0 and c.kendall == 1.0 and c.modules == 20 for c in d.correlations)
    assert d.selection.module_overlap == 1.0 and d.selection.parameter_overlap == 1.0
    assert d.k_star_changes == [] and all(h.exponent_change == 0.0 for h in d.heavy_tail)


def test_a_reversed_domain_and_changed_selection_fail_their_checks() -> None:
    values, sizes, k = base()
    a = make_blueprint(values, sizes, k, {"ai": 2.1, "bio": 2.4})
    changed = {"ai": values["ai"], "bio": [1.0 / v for v in values["bio"]]}
    k_b = [0.5 if i % 3 == 0 else None for i in range(20)]
    k_b[1] = 1.0
    b = make_blueprint(changed, sizes, k_b, {"ai": 3.5, "bio": None}, granularity="element")
    d = compare(bf.from_json(a), bf.from_json(b))
    bio = next(c for c in d.correlations if c.scope == "domain bio")
    assert bio.spearman == pytest.approx(-1.0) and bio.kendall == pytest.approx(-1.0)
    # Selected parameters: A takes modules 0, 3, ... whole; B half of them plus module 1 whole.
    pa = [sizes[i] if i % 3 == 0 else 0 for i in range(20)]
    pb = [sizes[i] / 2 if i % 3 == 0 else 0 for i in range(20)]
    pb[1] = sizes[1]
    assert d.selection.parameter_overlap == pytest.approx(2 * sum(min(x, y) for x, y in zip(pa, pb)) / (sum(pa) + sum(pb)))
    assert d.selection.module_overlap == pytest.approx(2 * 7 / (7 + 8))
    assert d.k_star_changes[0].module == "layer.1" and d.k_star_changes[0].change == 1.0
    assert [abs(c.change) for c in d.k_star_changes] == sorted((abs(c.change) for c in d.k_star_changes), reverse=True)
    ai = next(h for h in d.heavy_tail if h.domain == "ai")
    assert ai.exponent_change == pytest.approx(1.4)
    bio_tail = next(h for h in d.heavy_tail if h.domain == "bio")
    assert bio_tail.status_b == "failed" and bio_tail.exponent_change is None
    checks = {(f.check, f.scope) for f in d.failures}
    assert ("rank-correlation", "domain bio") in checks and ("k-star-change", "layer.1") in checks
    assert ("exponent-change", "domain ai") in checks and ("selection-overlap", "parameters") in checks
    assert ("rank-correlation", "domain ai") not in checks
    loose = DiffThresholds(min_rank_correlation=-1, min_overlap=0, max_k_star_change=1, max_exponent_change=2,
                           max_share_change=1)
    assert compare(bf.from_json(a), bf.from_json(b), loose).within


def test_exponents_are_compared_as_density_exponents() -> None:
    values, sizes, k = base()
    a = make_blueprint(values, sizes, k, {"ai": 2.5, "bio": 2.0})
    b = copy.deepcopy(a)
    fit = b["domains"][0]["heavy_tail"]
    fit["exponent_convention"], fit["exponent"] = "rank-size", 1 / 1.5  # the same alpha = 2.5
    b["domains"][1]["heavy_tail"]["exponent_convention"] = "tail-index"  # 2.0 as a tail index: alpha 3
    b["domains"][1]["heavy_tail"]["exponent"] = 2.0
    d = compare(bf.from_json(a), bf.from_json(b))
    assert d.heavy_tail[0].exponent_b == pytest.approx(2.5) and d.heavy_tail[0].exponent_change == pytest.approx(0)
    assert d.heavy_tail[1].exponent_b == pytest.approx(3.0)


def test_modules_and_domains_in_one_blueprint_only_are_listed() -> None:
    values, sizes, k = base()
    a = make_blueprint(values, sizes, k)
    b = make_blueprint({"ai": values["ai"][:15], "other": values["bio"][:15]}, sizes[:15], k[:15])
    d = compare(bf.from_json(a), bf.from_json(b))
    assert d.common_modules == 15 and d.only_in_a == [f"layer.{i}" for i in range(15, 20)] and d.only_in_b == []
    assert d.common_domains == ["ai"] and d.domains_only_in_a == ["bio"] and d.domains_only_in_b == ["other"]


def test_each_blueprints_own_stability_is_shown_beside_the_comparison() -> None:
    values, sizes, k = base()
    a = make_blueprint(values, sizes, k)
    b = copy.deepcopy(a)
    b["spec_version"] = "1.1.0"
    b["domains"][1]["stability"] = {
        "method": "batch-bootstrap", "statistic": "grad_norm_mean", "resamples": 50, "confidence": 0.9,
        "rank_correlation": 0.93, "selection": {"budget": 0.2, "overlap": 0.81},
    }
    for m in b["modules"]:
        v = m["stats"]["bio"]["grad_norm_mean"]
        m["stats"]["bio"]["interval"] = {"lower": v * 0.9, "upper": v * 1.1}
    d = compare(bf.from_json(a), bf.from_json(b))
    assert [(s.domain, s.rank_correlation_a, s.rank_correlation_b, s.selection_overlap_b) for s in d.stability] == [
        ("bio", None, 0.93, 0.81)
    ]
    assert d.within and d.to_json()["stability"][0]["selection_overlap_b"] == 0.81


def test_different_models_or_nothing_in_common_are_not_comparable() -> None:
    values, sizes, k = base()
    a = bf.from_json(make_blueprint(values, sizes, k))
    other = bf.from_json(make_blueprint(values, sizes, k, digest="sha256:" + "cd" * 32))
    with pytest.raises(BlueprintError) as info:
        compare(a, other)
    assert info.value.code == "not-comparable" and info.value.issues[0].path == "/model/structure_digest"
    renamed = bf.from_json(make_blueprint(values, sizes, k, names=[f"x.{i}" for i in range(20)]))
    with pytest.raises(BlueprintError, match="no module"):
        compare(a, renamed)
    no_domain = bf.from_json(make_blueprint({"zz": values["ai"]}, sizes, k))
    with pytest.raises(BlueprintError, match="no calibration domain"):
        compare(a, no_domain)


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_rank_correlation", 1.5), ("min_overlap", -0.1), ("max_k_star_change", math.nan),
     ("max_exponent_change", -1.0), ("max_share_change", True)],
)
def test_bad_thresholds_are_usage_errors_naming_the_flag(field: str, value: float) -> None:
    with pytest.raises(UsageError) as info:
        DiffThresholds(**{field: value})  # type: ignore[arg-type]
    assert info.value.issues[0].path == "--" + field.replace("_", "-")


def write(tmp_path: Path, name: str, doc: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def test_command_exit_statuses_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values, sizes, k = base()
    a = write(tmp_path, "a.json", make_blueprint(values, sizes, k, {"ai": 2.1, "bio": 2.4}))
    b_doc = make_blueprint({"ai": values["ai"], "bio": values["bio"][::-1]}, sizes, k, {"ai": 2.1, "bio": 2.4})
    b = write(tmp_path, "b.json", b_doc)
    assert main(["diff", a, a]) == 0
    assert "within thresholds" in capsys.readouterr().out
    assert main(["diff", a, b, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["within_thresholds"] is False and out["a"]["path"] == a and out["b"]["digest"].startswith("sha256:")
    assert {f["check"] for f in out["failures"]} >= {"rank-correlation"}
    assert main(["diff", a, b, "--min-rank-correlation", "-1", "--min-overlap", "0", "--max-share-change", "1"]) == 0
    capsys.readouterr()
    assert main(["diff", a, b]) == 1
    assert "OUTSIDE thresholds" in capsys.readouterr().out


def test_command_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values, sizes, k = base()
    a = write(tmp_path, "a.json", make_blueprint(values, sizes, k))
    other = write(tmp_path, "o.json", make_blueprint(values, sizes, k, digest="sha256:" + "cd" * 32))
    invalid = write(tmp_path, "bad.json", {"spec_version": "1.0.0"})
    cases = [
        (["diff", a, other], 1, "not-comparable"),
        (["diff", a, invalid], 1, "missing-field"),
        (["diff", a, str(tmp_path / "absent.json")], 2, "io-error"),
        (["diff", a, a, "--min-overlap", "2"], 2, "usage-error at --min-overlap"),
        (["diff", a, a, "--max-k-star-change", "lots"], 2, "usage-error at --max-k-star-change"),
        (["diff", a, a, "--top", "0"], 2, "usage-error at --top"),
        (["diff", a], 2, "usage-error"),
    ]
    for argv, status, text in cases:
        assert main(argv) == status, argv
        err = capsys.readouterr().err
        assert text in err and "Traceback" not in err and len(err.strip().splitlines()) >= 1
