"""Compare two blueprints of the same model: is a refreshed blueprint still the same advice?

Used by `blueprint diff A.json B.json` (the refresh protocol of SPEC.md section 4.2, and model
publishers' CI). Over the modules both documents describe it reports:

* per common domain, the rank correlation (Spearman's rho and Kendall's tau-b) of the modules'
  allocation statistic, and the same for the combined scores when both documents have them;
* the overlap of the two selections: of the selected module sets, and of the selected parameters
  (k* x parameter count per module: the overlap of two selections that take each module's top
  elements by one shared order), both as 2 |A and B| / (|A| + |B|);
* the largest k* changes;
* per common domain, the change of the heavy-tail exponent (as a density exponent, SPEC 8.3) and
  of the top-10% mass share;
* beside them, each blueprint's own bootstrap stability of the domain (SPEC 7.7) where recorded,
  the noise that the sampling of calibration batches alone explains.

Each figure is checked against a threshold (`DiffThresholds`); the result says which checks fail.
Pure Python: no numpy, so that the format package keeps its few dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from blueprint_format.errors import BlueprintError, make_error, usage_error

if TYPE_CHECKING:  # the models (pydantic) load only when blueprints are compared, not for --help
    from blueprint_format.models import Blueprint, HeavyTail


@dataclass(frozen=True)
class DiffThresholds:
    """Limits a refreshed blueprint must stay within. Every check must pass for `within` to hold.

    `min_rank_correlation`: Spearman's rho of each common domain's statistic and of the combined
    scores; `min_overlap`: parameter overlap of the selections; `max_k_star_change`: the largest
    |k*_B - k*_A| (an absent k* counts as 0); `max_exponent_change`: |alpha_B - alpha_A| where both
    fits are ok; `max_share_change`: |top_10_B - top_10_A| of each common domain's mass shares.
    """

    min_rank_correlation: float = 0.8
    min_overlap: float = 0.7
    max_k_star_change: float = 0.5
    max_exponent_change: float = 1.0
    max_share_change: float = 0.1

    def __post_init__(self) -> None:
        bounds = {
            "min_rank_correlation": (-1.0, 1.0),
            "min_overlap": (0.0, 1.0),
            "max_k_star_change": (0.0, 1.0),
            "max_exponent_change": (0.0, math.inf),
            "max_share_change": (0.0, 1.0),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise usage_error(f"{flag} must be a finite number, got {value!r}", flag)
            if not low <= value <= high:
                raise usage_error(f"{flag} must be in [{low:g}, {high:g}], got {value:g}", flag)


@dataclass(frozen=True)
class Correlation:
    """Rank agreement of one scope ("domain NAME" or "combined") over the common modules."""

    scope: str
    statistic: str
    modules: int
    spearman: float
    kendall: float


@dataclass(frozen=True)
class Selection:
    """How much the two selections share (None granularity: the document has no allocation k*)."""

    granularity_a: str
    granularity_b: str
    modules_a: int
    modules_b: int
    parameters_a: int
    parameters_b: int
    module_overlap: float
    parameter_overlap: float


@dataclass(frozen=True)
class KStarChange:
    module: str
    a: float | None
    b: float | None
    change: float


@dataclass(frozen=True)
class TailChange:
    """One common domain's heavy-tail summaries side by side (exponents as density exponents)."""

    domain: str
    status_a: str | None
    status_b: str | None
    exponent_a: float | None
    exponent_b: float | None
    exponent_change: float | None
    top_10_a: float | None
    top_10_b: float | None
    share_change: float | None


@dataclass(frozen=True)
class DomainStability:
    """A common domain's own bootstrap figures (SPEC 7.7) in each blueprint, where recorded: the
    noise floor of its rank correlation and selection overlap."""

    domain: str
    rank_correlation_a: float | None
    rank_correlation_b: float | None
    selection_overlap_a: float | None
    selection_overlap_b: float | None


@dataclass(frozen=True)
class Failure:
    """A check outside its threshold."""

    check: str
    scope: str
    value: float
    threshold: float


@dataclass(frozen=True)
class Diff:
    """The comparison of blueprint A (the earlier one) with blueprint B."""

    common_modules: int
    only_in_a: list[str]
    only_in_b: list[str]
    common_domains: list[str]
    domains_only_in_a: list[str]
    domains_only_in_b: list[str]
    correlations: list[Correlation]
    selection: Selection
    k_star_changes: list[KStarChange]
    heavy_tail: list[TailChange]
    stability: list[DomainStability]
    thresholds: DiffThresholds
    failures: list[Failure] = field(default_factory=list)

    @property
    def within(self) -> bool:
        """True when every check passes."""
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["within_thresholds"] = self.within
        return out


def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n in ascending order of `values`, ties given the average of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks. 1.0 when both sides are
    constant (identical orderings), 0.0 when only one is (no ordering to agree with)."""
    ra, rb = average_ranks(a), average_ranks(b)
    n = len(ra)
    ma, mb = math.fsum(ra) / n, math.fsum(rb) / n
    sa = math.fsum((x - ma) ** 2 for x in ra)
    sb = math.fsum((y - mb) ** 2 for y in rb)
    if sa == 0.0 or sb == 0.0:
        return 1.0 if sa == sb else 0.0
    cov = math.fsum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return max(-1.0, min(1.0, cov / math.sqrt(sa * sb)))


def _tied_pairs(sorted_values: Sequence[float]) -> int:
    """Pairs of equal values in an ascending sequence."""
    pairs, run = 0, 1
    for i in range(1, len(sorted_values)):
        if sorted_values[i] == sorted_values[i - 1]:
            run += 1
        else:
            pairs += run * (run - 1) // 2
            run = 1
    return pairs + run * (run - 1) // 2


def _count_inversions(values: list[float]) -> int:
    """Pairs i < j with values[i] > values[j] (bottom-up merge sort; `values` is used as scratch)."""
    n, width, swaps = len(values), 1, 0
    buffer = values[:]
    while width < n:
        for lo in range(0, n, 2 * width):
            mid, hi = min(lo + width, n), min(lo + 2 * width, n)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                if values[j] < values[i]:
                    buffer[k] = values[j]
                    swaps += mid - i
                    j += 1
                else:
                    buffer[k] = values[i]
                    i += 1
                k += 1
            buffer[k : k + mid - i] = values[i:mid]
            k += mid - i
            buffer[k : k + hi - j] = values[j:hi]
        values, buffer = buffer, values
        width *= 2
    return swaps


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b in O(n log n) (Knight's algorithm): concordant minus discordant pairs over
    the geometric mean of the pairs not tied in a and not tied in b. Constant sides as `spearman`."""
    n = len(a)
    pairs = sorted(zip(a, b))
    total = n * (n - 1) // 2
    ties_a = _tied_pairs([p[0] for p in pairs])
    ties_ab, run = 0, 1
    for i in range(1, n):
        if pairs[i] == pairs[i - 1]:
            run += 1
        else:
            ties_ab += run * (run - 1) // 2
            run = 1
    ties_ab += run * (run - 1) // 2
    bs = [p[1] for p in pairs]
    discordant = _count_inversions(list(bs))
    ties_b = _tied_pairs(sorted(bs))
    untied_a, untied_b = total - ties_a, total - ties_b
    if untied_a == 0 or untied_b == 0:
        return 1.0 if untied_a == untied_b else 0.0
    concordant_minus_discordant = total - ties_a - ties_b + ties_ab - 2 * discordant
    return max(-1.0, min(1.0, concordant_minus_discordant / math.sqrt(untied_a * untied_b)))


def dice(a: Sequence[float], b: Sequence[float]) -> float:
    """2 sum(min) / (sum(a) + sum(b)) of two non-negative weightings; 1.0 when both are empty."""
    total = math.fsum(a) + math.fsum(b)
    if total == 0.0:
        return 1.0
    return min(1.0, 2.0 * math.fsum(min(x, y) for x, y in zip(a, b)) / total)


def pdf_exponent(fit: HeavyTail | None) -> float | None:
    """A fit's exponent as a density exponent alpha (SPEC 8.3: alpha = kappa + 1 = 1 + 1/beta)."""
    if fit is None or fit.status != "ok" or fit.exponent is None:
        return None
    if fit.exponent_convention == "tail-index":
        return fit.exponent + 1.0
    if fit.exponent_convention == "rank-size":
        return 1.0 + 1.0 / fit.exponent
    return fit.exponent


def _not_comparable(message: str, path: str) -> BlueprintError:
    return BlueprintError(make_error("not-comparable", message, path))


def _statistic(a: Blueprint, b: Blueprint) -> str:
    """The statistic both rankings are compared on: the allocations' when they agree and every
    module has it, else grad_norm_mean (always present)."""
    name = a.allocation.statistic
    if name != b.allocation.statistic:
        return "grad_norm_mean"
    has_it = all(getattr(s, name) is not None for bp in (a, b) for m in bp.modules for s in m.stats.values())
    return name if has_it else "grad_norm_mean"


def _correlations(a: Blueprint, b: Blueprint, common: list[str], domains: list[str]) -> list[Correlation]:
    statistic = _statistic(a, b)
    ma, mb = {m.name: m for m in a.modules}, {m.name: m for m in b.modules}
    out = []
    for d in domains:
        xa = [float(getattr(ma[n].stats[d], statistic)) for n in common]
        xb = [float(getattr(mb[n].stats[d], statistic)) for n in common]
        out.append(Correlation(f"domain {d}", statistic, len(common), spearman(xa, xb), kendall_tau_b(xa, xb)))
    if all(ma[n].combined is not None and mb[n].combined is not None for n in common):
        xa = [ma[n].combined.score for n in common]  # type: ignore[union-attr]
        xb = [mb[n].combined.score for n in common]  # type: ignore[union-attr]
        out.append(Correlation("combined", "score", len(common), spearman(xa, xb), kendall_tau_b(xa, xb)))
    return out


def _selection(a: Blueprint, b: Blueprint, common: list[str]) -> tuple[Selection, list[KStarChange]]:
    ma, mb = {m.name: m for m in a.modules}, {m.name: m for m in b.modules}
    ka = [ma[n].k_star or 0.0 for n in common]
    kb = [mb[n].k_star or 0.0 for n in common]
    sizes = [ma[n].parameter_count for n in common]
    pa = [k * s for k, s in zip(ka, sizes)]
    pb = [k * s for k, s in zip(kb, sizes)]
    selection = Selection(
        granularity_a=a.allocation.granularity,
        granularity_b=b.allocation.granularity,
        modules_a=sum(1 for k in ka if k > 0),
        modules_b=sum(1 for k in kb if k > 0),
        parameters_a=round(math.fsum(pa)),
        parameters_b=round(math.fsum(pb)),
        module_overlap=dice([float(k > 0) for k in ka], [float(k > 0) for k in kb]),
        parameter_overlap=dice(pa, pb),
    )
    changes = [
        KStarChange(n, ma[n].k_star, mb[n].k_star, y - x) for n, x, y in zip(common, ka, kb) if x != y
    ]
    changes.sort(key=lambda c: -abs(c.change))  # stable: equal changes stay in document order
    return selection, changes


def _tail_changes(a: Blueprint, b: Blueprint, domains: list[str]) -> list[TailChange]:
    out = []
    for d in domains:
        fa, fb = a.domain(d).heavy_tail, b.domain(d).heavy_tail
        ea, eb = pdf_exponent(fa), pdf_exponent(fb)
        sa = fa.mass_shares.top_10 if fa else None
        sb = fb.mass_shares.top_10 if fb else None
        out.append(
            TailChange(
                domain=d,
                status_a=fa.status if fa else None,
                status_b=fb.status if fb else None,
                exponent_a=ea,
                exponent_b=eb,
                exponent_change=None if ea is None or eb is None else eb - ea,
                top_10_a=sa,
                top_10_b=sb,
                share_change=None if sa is None or sb is None else sb - sa,
            )
        )
    return out


def _stability(a: Blueprint, b: Blueprint, domains: list[str]) -> list[DomainStability]:
    out = []
    for d in domains:
        sa, sb = a.domain(d).stability, b.domain(d).stability
        if sa is None and sb is None:
            continue
        out.append(DomainStability(
            domain=d,
            rank_correlation_a=sa.rank_correlation if sa else None,
            rank_correlation_b=sb.rank_correlation if sb else None,
            selection_overlap_a=sa.selection.overlap if sa and sa.selection else None,
            selection_overlap_b=sb.selection.overlap if sb and sb.selection else None,
        ))
    return out


def _failures(diff: Diff) -> list[Failure]:
    t = diff.thresholds
    out = [
        Failure("rank-correlation", c.scope, c.spearman, t.min_rank_correlation)
        for c in diff.correlations
        if c.spearman < t.min_rank_correlation
    ]
    if diff.selection.parameter_overlap < t.min_overlap:
        out.append(Failure("selection-overlap", "parameters", diff.selection.parameter_overlap, t.min_overlap))
    if diff.k_star_changes and abs(diff.k_star_changes[0].change) > t.max_k_star_change:
        top = diff.k_star_changes[0]
        out.append(Failure("k-star-change", top.module, abs(top.change), t.max_k_star_change))
    for h in diff.heavy_tail:
        if h.exponent_change is not None and abs(h.exponent_change) > t.max_exponent_change:
            out.append(Failure("exponent-change", f"domain {h.domain}", abs(h.exponent_change), t.max_exponent_change))
        if h.share_change is not None and abs(h.share_change) > t.max_share_change:
            out.append(Failure("share-change", f"domain {h.domain}", abs(h.share_change), t.max_share_change))
    return out


def compare(a: Blueprint, b: Blueprint, thresholds: DiffThresholds | None = None, top: int = 10) -> Diff:
    """Compare blueprint `a` (earlier) with `b` (later) of the same model.

    Raises BlueprintError `not-comparable` when they describe different models (structure digests
    differ) or share no module or no domain. `top`: how many of the largest k* changes to keep.
    """
    thresholds = thresholds or DiffThresholds()
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise usage_error(f"--top must be a positive integer, got {top!r}", "--top")
    if a.model.structure_digest != b.model.structure_digest:
        raise _not_comparable(
            f"the blueprints describe different models (structure digests {a.model.structure_digest[:19]}... "
            f"and {b.model.structure_digest[:19]}...)",
            "/model/structure_digest",
        )
    names_b = {m.name for m in b.modules}
    common = [m.name for m in a.modules if m.name in names_b]
    if not common:
        raise _not_comparable("the blueprints share no module", "/modules")
    domains = [d for d in a.domain_names if d in set(b.domain_names)]
    if not domains:
        raise _not_comparable("the blueprints share no calibration domain", "/domains")
    names_a = set(common)
    selection, changes = _selection(a, b, common)
    diff = Diff(
        common_modules=len(common),
        only_in_a=[m.name for m in a.modules if m.name not in names_b],
        only_in_b=[m.name for m in b.modules if m.name not in names_a],
        common_domains=domains,
        domains_only_in_a=[d for d in a.domain_names if d not in domains],
        domains_only_in_b=[d for d in b.domain_names if d not in domains],
        correlations=_correlations(a, b, common, domains),
        selection=selection,
        k_star_changes=changes[:top],
        heavy_tail=_tail_changes(a, b, domains),
        stability=_stability(a, b, domains),
        thresholds=thresholds,
    )
    return replace(diff, failures=_failures(diff))
