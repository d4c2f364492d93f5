"""Human-readable and JSON summaries of a blueprint (used by `blueprint show`)."""

from __future__ import annotations

import statistics
from typing import Any

from pydantic import BaseModel

from blueprint_format.api import digest
from blueprint_format.models import Blueprint, Domain, HeavyTail, Module, Stability


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A plain-text table with aligned columns (columns in `right` are right-aligned)."""
    right = right or set()
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def fit_line(fit: HeavyTail | None) -> str:
    """One line describing a heavy-tail fit, saying FAILED or INSUFFICIENT DATA instead of a number."""
    if fit is None:
        return "no heavy-tail fit recorded"
    shares = fit.mass_shares
    share_text = f"top 10% hold {shares.top_10:.0%}, top 20% hold {shares.top_20:.0%}"
    if fit.status != "ok":
        note = f" ({fit.message})" if fit.message else ""
        return f"{fit.status.upper()}{note}; n={fit.sample_count}; {share_text}"
    return (
        f"{fit.exponent_convention} exponent {_fmt(fit.exponent, '.3f')} ({fit.method}, x_min={_fmt(fit.x_min)}, "
        f"KS={_fmt(fit.ks_distance, '.3f')}, tail {fit.tail_count if fit.tail_count is not None else '?'}"
        f"/{fit.sample_count}); {share_text}"
    )


def _domain_row(d: Domain) -> list[str]:
    return [d.name, f"{d.weight:.3g}", str(d.examples), str(d.batches), fit_line(d.heavy_tail)]


def describe_rule(bp: Blueprint) -> str:
    """The allocation rule with its parameters and cost model, as one line."""
    a = bp.allocation
    raw = a.rule.parameters
    items = raw.model_dump(exclude_none=True) if isinstance(raw, BaseModel) else dict(raw)
    params = ", ".join(f"{k}={v}" for k, v in items.items())
    cost = a.cost_model
    return (
        f"{a.rule.name}({params}) on {a.statistic}, {a.granularity} granularity; "
        f"cost = {cost.fixed:g} + {cost.per_parameter:g} x trainable params [{cost.unit}]"
    )


def _interval_headers(bp: Blueprint) -> list[str]:
    """One column per domain with a stability: its intervals of the resampled statistic."""
    return [f"{_percent(d.stability.confidence)} CI[{d.name}]" for d in _stable_domains(bp) if d.stability]


def _rank_header(bp: Blueprint) -> str:
    # The rank shown is the combined one when the blueprint has it, else the first domain's.
    return "rank[combined]" if bp.modules[0].combined else f"rank[{bp.domain_names[0]}]"


def _rank(bp: Blueprint, m: Module) -> int:
    """The rank `show` displays: the combined one when recorded, else the first domain's."""
    return m.combined.rank if m.combined else m.stats[bp.domain_names[0]].rank


def module_rows(bp: Blueprint, top: int | None = None) -> list[list[str]]:
    """Layer / grad norm per domain / bootstrap interval per domain with a stability / rank /
    parameters / k* rows: every module in document order, or with `top` the `top` best-ranked
    modules in rank order."""
    modules = list(bp.modules)
    if top:
        modules = sorted(modules, key=lambda m: _rank(bp, m))[:top]
    rows = []
    for m in modules:
        grads = [_fmt(m.stats[d].grad_norm_mean) if d in m.stats else "-" for d in bp.domain_names]
        intervals = [_interval_cell(m, d.name) for d in _stable_domains(bp)]
        rows.append([m.name, *grads, *intervals, str(_rank(bp, m)), f"{m.parameter_count:,}", _fmt(m.k_star, ".3g")])
    return rows


def _percent(confidence: float) -> str:
    return f"{confidence * 100:.4g}%"


def _stable_domains(bp: Blueprint) -> list[Domain]:
    """The domains that record a stability (SPEC 7.7), in document order."""
    return [d for d in bp.domains if d.stability is not None]


def _interval_cell(m: Module, domain: str) -> str:
    stats = m.stats.get(domain)
    if stats is None or stats.interval is None:
        return "-"
    return f"[{_fmt(stats.interval.lower)}, {_fmt(stats.interval.upper)}]"


def median_relative_width(bp: Blueprint, d: Domain) -> float | None:
    """Median over the modules of (upper - lower) / value of the resampled statistic on domain `d`:
    how wide the bootstrap intervals are relative to the values they bound (None without any)."""
    if d.stability is None:
        return None
    widths = []
    for m in bp.modules:
        stats = m.stats.get(d.name)
        if stats is None or stats.interval is None:
            continue
        value = float(getattr(stats, d.stability.statistic))
        if value:
            widths.append((stats.interval.upper - stats.interval.lower) / value)
    return statistics.median(widths) if widths else None


def _stability_row(bp: Blueprint, d: Domain, s: Stability) -> list[str]:
    sel = s.selection
    return [
        d.name, s.method, s.statistic, str(s.resamples), _percent(s.confidence), "-" if s.seed is None else str(s.seed),
        f"{s.rank_correlation:.3f}", "-" if sel is None else f"{sel.overlap:.3f}",
        "-" if sel is None else _fmt(sel.budget, ".3g"), _fmt(median_relative_width(bp, d), ".3g"), str(_units(bp, d)),
    ]


def _units(bp: Blueprint, d: Domain) -> int:
    """What the bootstrap resamples (SPEC 5): the domain's batches, or its examples for per-example norms."""
    return d.examples if bp.method.estimator == "per-example-gradient-norm" else d.batches


def stability_lines(bp: Blueprint) -> list[str]:
    """The Stability section of `show`: each domain's bootstrap record (SPEC 7.7), or that none is."""
    stable = _stable_domains(bp)
    if not stable:
        return ["Stability: not recorded (spec 1.1 producers record it per domain, SPEC 7.7)"]
    lines = [
        "Stability (SPEC 7.7: the statistic recomputed on resamples of each domain's calibration units)",
        table(
            ["domain", "method", "statistic", "resamples", "confidence", "seed", "rank corr.", "overlap",
             "at budget", "median CI width", "units"],
            [_stability_row(bp, d, d.stability) for d in stable if d.stability is not None],
            {3, 4, 5, 6, 7, 8, 9, 10},
        ),
        "  rank corr.: mean Spearman between a resample's values and the document's; overlap: expected share of",
        "  one resample's selected parameters another also selects; median CI width: relative to the value",
    ]
    missing = [d.name for d in bp.domains if d.stability is None]
    if missing:
        lines.append(f"  not recorded for: {', '.join(missing)}")
    return lines


def render_text(bp: Blueprint, path: str = "", top: int | None = None) -> str:
    """The summary `blueprint show` prints."""
    selected = [m for m in bp.modules if m.k_star is not None]
    lines = [
        f"Blueprint {path}".rstrip(),
        f"  spec {bp.spec_version}, digest {digest(bp)}",
        f"  model {bp.model.name} @ {bp.model.revision} ({bp.model.structure_digest[:23]}...)",
        f"  made {bp.provenance.created} by {bp.provenance.generator.name} {bp.provenance.generator.version}"
        + (f"; supersedes {bp.provenance.supersedes[:23]}..." if bp.provenance.supersedes else ""),
        f"  method {bp.method.estimator}, loss {bp.method.loss}, >= {bp.method.min_examples_per_aggregate} examples per aggregate",
        "",
        "Domains",
        table(
            ["domain", "weight", "examples", "batches", "heavy tail"],
            [_domain_row(d) for d in bp.domains],
            {1, 2, 3},
        ),
        "",
        *stability_lines(bp),
        "",
        f"Modules ({len(bp.modules)}; {len(selected)} selected)",
        table(
            ["Layer", *(f"Grad[{d}]" for d in bp.domain_names), *_interval_headers(bp), _rank_header(bp), "params",
             "k*"],
            module_rows(bp, top),
            set(range(1, len(bp.domain_names) + len(_stable_domains(bp)) + 4)),
        ),
    ]
    if top and len(bp.modules) > top:
        lines.append(f"  ... {len(bp.modules) - top} more, ranked below (use --top 0 for all, in document order)")
    lines += ["", "Allocation", "  " + describe_rule(bp)]
    if bp.allocation.trainable_fraction is not None:
        lines.append(f"  trainable fraction {bp.allocation.trainable_fraction:.3%}")
    if bp.data_selection is not None:
        ds = bp.data_selection
        lines.append(
            f"Data selection: {ds.method}, keep {ds.direction} {ds.fraction:.0%}: "
            f"{ds.examples_selected} of {ds.examples_total} examples"
        )
    if bp.extensions:
        lines.append(f"Extensions: {', '.join(sorted(bp.extensions))}")
    return "\n".join(lines)


def render_json(bp: Blueprint, path: str = "") -> dict[str, Any]:
    """A machine-readable summary (`blueprint show --json`)."""
    return {
        "path": path,
        "digest": digest(bp),
        "spec_version": bp.spec_version,
        "model": bp.model.model_dump(exclude_none=True),
        "domains": [
            {
                "name": d.name,
                "weight": d.weight,
                "examples": d.examples,
                "batches": d.batches,
                "heavy_tail": d.heavy_tail.model_dump(exclude_none=True) if d.heavy_tail else None,
                "stability": d.stability.model_dump(exclude_none=True) if d.stability else None,
                "median_relative_interval_width": median_relative_width(bp, d),
            }
            for d in bp.domains
        ],
        "allocation": {"rule": bp.allocation.rule.name, "description": describe_rule(bp)},
        "modules": [
            {
                "name": m.name,
                "parameter_count": m.parameter_count,
                "grad_norm_mean": {d: s.grad_norm_mean for d, s in m.stats.items()},
                "interval": {
                    d: s.interval.model_dump() for d, s in m.stats.items() if s.interval is not None
                },
                "combined_rank": m.combined.rank if m.combined else None,
                "k_star": m.k_star,
            }
            for m in bp.modules
        ],
    }
