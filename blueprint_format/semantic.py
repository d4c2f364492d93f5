"""Semantic rules: what the schema cannot say (SPEC.md names each rule and its code).

Each check takes a structurally valid `Blueprint` and returns issues located by JSON pointer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import PurePosixPath

from blueprint_format._version import newer_members
from blueprint_format.errors import Issue, make_error
from blueprint_format.models import Blueprint, GlobalBudgetRule, MarginalRule, MassShares
from blueprint_format.pointer import escape

#: Relative tolerance for inequalities between statistics that are computed in floating point.
STAT_RTOL = 1e-6
#: Tolerance on sums of weights.
WEIGHT_ATOL = 1e-6
#: Tolerance on budget and share comparisons.
FRACTION_ATOL = 1e-9


def _overlapping_modules(bp: Blueprint, names: set[str]) -> Iterable[Issue]:
    """SPEC 3.6: modules are disjoint, so no module name is another's followed by `.` (a module
    matches every tensor under its dotted prefix). Reported at the inner module; linear in the
    total length of the names."""
    for i, m in enumerate(bp.modules):
        cut = m.name.rfind(".")
        while cut > 0:
            outer = m.name[:cut]
            if outer in names:
                yield make_error(
                    "overlapping-modules",
                    f"module {m.name!r} lies inside module {outer!r}: their tensors overlap (SPEC 3.6)",
                    f"/modules/{i}/name",
                )
                break
            cut = m.name.rfind(".", 0, cut)


def check_names(bp: Blueprint) -> Iterable[Issue]:
    """Module and domain names are unique; every domain reference resolves."""
    seen: set[str] = set()
    for i, m in enumerate(bp.modules):
        if m.name in seen:
            yield make_error("duplicate-module", f"module {m.name!r} is listed twice", f"/modules/{i}/name")
        seen.add(m.name)
    yield from _overlapping_modules(bp, seen)
    domains: set[str] = set()
    for i, d in enumerate(bp.domains):
        if d.name in domains:
            yield make_error("duplicate-domain", f"domain {d.name!r} is declared twice", f"/domains/{i}/name")
        domains.add(d.name)
    for i, m in enumerate(bp.modules):
        for key in m.stats:
            if key not in domains:
                yield make_error(
                    "unknown-domain",
                    f"statistics for undeclared domain {key!r}",
                    f"/modules/{i}/stats/{escape(key)}",
                )
        missing = [d for d in bp.domain_names if d not in m.stats]
        if missing:
            yield make_error(
                "missing-domain-stats",
                f"module {m.name!r} has no statistics for domain(s) {', '.join(missing)}",
                f"/modules/{i}/stats",
            )
    for key in bp.allocation.domain_weights or {}:
        if key not in domains:
            yield make_error(
                "unknown-domain",
                f"weight for undeclared domain {key!r}",
                f"/allocation/domain_weights/{escape(key)}",
            )
    ds = bp.data_selection
    if ds is not None and ds.domain is not None and ds.domain not in domains:
        yield make_error("unknown-domain", f"undeclared domain {ds.domain!r}", "/data_selection/domain")


def _check_ranking(
    entries: list[tuple[int, int, float]], rank_path: Callable[..., str], what: str
) -> Iterable[Issue]:
    """entries: (module index, rank, value). Ranks must be 1..N and follow value, largest first."""
    n = len(entries)
    by_rank: dict[int, tuple[int, float]] = {}
    for index, rank, value in entries:
        if rank > n or rank in by_rank:
            reason = f"exceeds the number of ranked modules ({n})" if rank > n else "is used twice"
            yield make_error("rank-not-permutation", f"{what} rank {rank} {reason}", rank_path(index))
            return
        by_rank[rank] = (index, value)
    for r in range(1, n):
        (_, v_hi), (j, v_lo) = by_rank[r], by_rank[r + 1]
        if v_lo > v_hi:
            yield make_error(
                "rank-order-mismatch",
                f"{what} rank {r + 1} has a larger value ({v_lo:.6g}) than rank {r} ({v_hi:.6g})",
                rank_path(j),
            )
            return


def check_ranks(bp: Blueprint) -> Iterable[Issue]:
    """Per-domain ranks and combined ranks are permutations consistent with their values."""
    for d in bp.domain_names:
        entries = [
            (i, m.stats[d].rank, m.stats[d].grad_norm_mean) for i, m in enumerate(bp.modules) if d in m.stats
        ]
        prefix = f"/stats/{escape(d)}/rank"
        yield from _check_ranking(entries, lambda i, suffix=prefix: f"/modules/{i}{suffix}", f"domain {d!r}")
    with_combined = [i for i, m in enumerate(bp.modules) if m.combined is not None]
    if with_combined and len(with_combined) != len(bp.modules):
        first_missing = next(i for i, m in enumerate(bp.modules) if m.combined is None)
        yield make_error(
            "rank-not-permutation",
            "`combined` must be given for every module or for none",
            f"/modules/{first_missing}",
        )
        return
    if with_combined:
        entries = [
            (i, m.combined.rank, m.combined.score) for i, m in enumerate(bp.modules) if m.combined is not None
        ]
        yield from _check_ranking(entries, lambda i: f"/modules/{i}/combined/rank", "combined")


def check_statistics(bp: Blueprint) -> Iterable[Issue]:
    """Mean square >= squared mean (Jensen); norm of the mean <= mean of the norms (triangle inequality)."""
    for i, m in enumerate(bp.modules):
        for d, s in m.stats.items():
            base = f"/modules/{i}/stats/{escape(d)}"
            squared_mean = s.grad_norm_mean * s.grad_norm_mean
            if s.grad_norm_sq_mean < squared_mean * (1 - STAT_RTOL):
                yield make_error(
                    "inconsistent-statistics",
                    f"grad_norm_sq_mean {s.grad_norm_sq_mean:.6g} is below grad_norm_mean^2 {squared_mean:.6g}",
                    f"{base}/grad_norm_sq_mean",
                )
            if s.mean_grad_norm is not None and s.mean_grad_norm > s.grad_norm_mean * (1 + STAT_RTOL):
                yield make_error(
                    "inconsistent-statistics",
                    f"mean_grad_norm {s.mean_grad_norm:.6g} exceeds grad_norm_mean {s.grad_norm_mean:.6g}",
                    f"{base}/mean_grad_norm",
                )


def _check_shares(shares: MassShares, base: str) -> Iterable[Issue]:
    previous, previous_name = 0.0, ""
    for (fraction, share), name in zip(shares.as_pairs(), ("top_1", "top_5", "top_10", "top_20", "top_50")):
        if share < previous - FRACTION_ATOL:
            yield make_error(
                "shares-not-monotone",
                f"{name} ({share:.6g}) is below {previous_name} ({previous:.6g})",
                f"{base}/{name}",
            )
            return
        if share < fraction - FRACTION_ATOL:
            yield make_error(
                "shares-not-monotone",
                f"{name} ({share:.6g}) is below its proportional share {fraction}: the top items hold at least that",
                f"{base}/{name}",
            )
            return
        previous, previous_name = share, name


def check_domains(bp: Blueprint) -> Iterable[Issue]:
    """Weights sum to 1, aggregates are large enough, heavy-tail summaries are coherent."""
    total = math.fsum(d.weight for d in bp.domains)
    if abs(total - 1.0) > WEIGHT_ATOL:
        yield make_error("domain-weights-sum", f"domain weights sum to {total:.9g}, not 1", "/domains")
    weights = bp.allocation.domain_weights
    if weights is not None:
        total = math.fsum(weights.values())
        if abs(total - 1.0) > WEIGHT_ATOL:
            yield make_error(
                "domain-weights-sum",
                f"allocation weights sum to {total:.9g}, not 1",
                "/allocation/domain_weights",
            )
    minimum = bp.method.min_examples_per_aggregate
    for i, d in enumerate(bp.domains):
        base = f"/domains/{i}"
        if d.examples < minimum:
            yield make_error(
                "aggregate-too-small",
                f"domain {d.name!r} aggregates {d.examples} examples; min_examples_per_aggregate is {minimum}",
                f"{base}/examples",
            )
        if d.element_mass_shares is not None:
            yield from _check_shares(d.element_mass_shares, f"{base}/element_mass_shares")
        fit = d.heavy_tail
        if fit is None:
            continue
        numbers = {"exponent": fit.exponent, "x_min": fit.x_min, "ks_distance": fit.ks_distance}
        present = [k for k, v in numbers.items() if v is not None]
        if fit.status == "ok" and len(present) != len(numbers):
            missing = ", ".join(k for k in numbers if k not in present)
            yield make_error(
                "fit-status-mismatch", f"status is ok but {missing} is missing", f"{base}/heavy_tail/status"
            )
        elif fit.status != "ok" and present:
            yield make_error(
                "fit-status-mismatch",
                f"status is {fit.status} but {', '.join(present)} is given; a failed fit reports no numbers",
                f"{base}/heavy_tail/status",
            )
        if fit.sample_count != len(bp.modules):
            yield make_error(
                "inconsistent-fit",
                f"sample_count {fit.sample_count} differs from the {len(bp.modules)} modules it summarises",
                f"{base}/heavy_tail/sample_count",
            )
        if fit.tail_count is not None and fit.tail_count > fit.sample_count:
            yield make_error(
                "inconsistent-fit",
                f"tail_count {fit.tail_count} exceeds sample_count {fit.sample_count}",
                f"{base}/heavy_tail/tail_count",
            )
        yield from _check_shares(fit.mass_shares, f"{base}/heavy_tail/mass_shares")


def check_allocation(bp: Blueprint) -> Iterable[Issue]:
    """Parameter counts add up; k* values respect the rule's budget and the stated trainable fraction."""
    total = sum(m.parameter_count for m in bp.modules)
    if bp.model.parameter_count is not None and total > bp.model.parameter_count:
        yield make_error(
            "parameter-count-mismatch",
            f"modules hold {total} parameters, more than the model's {bp.model.parameter_count}",
            "/model/parameter_count",
        )
    if bp.allocation.granularity == "module":
        for i, m in enumerate(bp.modules):
            if m.k_star is not None and m.k_star != 1.0:
                yield make_error(
                    "k-star-out-of-range",
                    f"k_star {m.k_star:.6g} at module granularity: a module is selected whole (1) or not at all",
                    f"/modules/{i}/k_star",
                )
    trainable = math.fsum((m.k_star or 0.0) * m.parameter_count for m in bp.modules)
    rule = bp.allocation.rule
    limit: float | None = None
    if isinstance(rule, GlobalBudgetRule):
        limit, where = rule.parameters.budget, "/allocation/rule/parameters/budget"
    elif isinstance(rule, MarginalRule) and rule.parameters.max_fraction is not None:
        limit, where = rule.parameters.max_fraction, "/allocation/rule/parameters/max_fraction"
    if limit is not None and trainable > limit * total * (1 + FRACTION_ATOL) + FRACTION_ATOL:
        yield make_error(
            "budget-exceeded",
            f"k* selects {trainable / total:.6g} of the parameters; the rule allows {limit}",
            where,
        )
    stated = bp.allocation.trainable_fraction
    if stated is not None and abs(stated - trainable / total) > 1e-6:
        yield make_error(
            "inconsistent-statistics",
            f"trainable_fraction {stated:.6g} differs from the k*-weighted parameter share {trainable / total:.6g}",
            "/allocation/trainable_fraction",
        )


def unsafe_path_reason(path: str) -> str | None:
    """Why a sidecar path is unsafe, or None when it is a plain relative POSIX path inside the folder."""
    if "\x00" in path:
        return "contains a NUL character"
    if "\\" in path:
        return "contains a backslash; use '/'"
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return "is absolute"
    parts = PurePosixPath(path).parts
    if ".." in parts:
        return "leaves its folder with '..'"
    if not parts or any(p in ("", ".") for p in path.split("/")):
        return "has empty or '.' segments"
    return None


def check_stability(bp: Blueprint) -> Iterable[Issue]:
    """SPEC 7.7 and 14: no member newer than the declared version; an interval on every module's
    statistics exactly on the domains that have a stability; lower <= upper."""
    declared = int(bp.spec_version.split(".")[1])
    newer = list(newer_members(bp, declared))
    for pointer, since in newer:
        yield make_error(
            "unknown-field",
            f"{pointer.rsplit('/', 1)[-1]} is defined from spec 1.{since}.0; this document declares {bp.spec_version}",
            pointer,
        )
    if newer:
        return
    with_stability = {d.name for d in bp.domains if d.stability is not None}
    for i, m in enumerate(bp.modules):
        for key, s in m.stats.items():
            where = f"/modules/{i}/stats/{escape(key)}/interval"
            if s.interval is None:
                if key in with_stability:
                    yield make_error(
                        "stability-incomplete", f"domain {key!r} has a stability but module {m.name!r} no interval", where
                    )
            elif key not in with_stability:
                yield make_error("stability-incomplete", f"an interval on domain {key!r}, which has no stability", where)
            elif s.interval.lower > s.interval.upper:
                yield make_error(
                    "inconsistent-statistics",
                    f"interval lower {s.interval.lower:g} exceeds upper {s.interval.upper:g}",
                    where,
                )


def check_files(bp: Blueprint) -> Iterable[Issue]:
    """Sidecar paths stay inside the blueprint's folder; data-selection counts agree."""
    for i, sidecar in enumerate(bp.sidecars or []):
        reason = unsafe_path_reason(sidecar.path)
        if reason:
            yield make_error("unsafe-path", f"sidecar path {sidecar.path!r} {reason}", f"/sidecars/{i}/path")
    ds = bp.data_selection
    if ds is None:
        return
    if ds.examples_selected > ds.examples_total:
        yield make_error(
            "data-selection-inconsistent",
            f"{ds.examples_selected} examples selected out of {ds.examples_total}",
            "/data_selection/examples_selected",
        )
    elif abs(ds.examples_selected - ds.fraction * ds.examples_total) > 1:
        yield make_error(
            "data-selection-inconsistent",
            f"{ds.examples_selected} examples selected, but fraction {ds.fraction:.6g} of {ds.examples_total} is "
            f"{ds.fraction * ds.examples_total:.6g}",
            "/data_selection/examples_selected",
        )
    if ds.drop_top_fraction is not None and ds.drop_top_fraction + ds.fraction > 1 + FRACTION_ATOL:
        yield make_error(
            "data-selection-inconsistent",
            "drop_top_fraction + fraction exceeds 1",
            "/data_selection/drop_top_fraction",
        )
    q = ds.score_quantiles
    if q is not None and not (q.p10 <= q.p50 <= q.p90):
        yield make_error(
            "data-selection-inconsistent",
            "score quantiles must satisfy p10 <= p50 <= p90",
            "/data_selection/score_quantiles",
        )
    if ds.examples_total < bp.method.min_examples_per_aggregate:
        yield make_error(
            "aggregate-too-small",
            f"data selection aggregates {ds.examples_total} examples; the minimum is {bp.method.min_examples_per_aggregate}",
            "/data_selection/examples_total",
        )


RULES: tuple[Callable[[Blueprint], Iterable[Issue]], ...] = (
    check_names,
    check_ranks,
    check_statistics,
    check_domains,
    check_allocation,
    check_stability,
    check_files,
)


def semantic_issues(bp: Blueprint) -> list[Issue]:
    """Every semantic-rule violation of a structurally valid blueprint."""
    return [issue for rule in RULES for issue in rule(bp)]
