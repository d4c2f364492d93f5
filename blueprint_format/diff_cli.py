"""`blueprint diff A.json B.json`: the command line of blueprint_format.diff.

Exit status: 0 when every check is within its threshold, 1 when one is not or a blueprint is
invalid or the two cannot be compared (`not-comparable`), 2 for usage and I/O errors. Only
argparse is imported at module level, so that `blueprint --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

#: One line of help, as `blueprint --help` lists it.
HELP = "compare two blueprints of the same model: rank correlation, selection overlap, k* and heavy-tail changes"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `diff` subcommand."""
    from blueprint_format.diff import DiffThresholds

    defaults = DiffThresholds()
    p = subparsers.add_parser(
        "diff",
        help=HELP,
        description=(
            "Compare blueprint A (the earlier) with blueprint B of the same model, for the refresh protocol "
            "(SPEC.md 4.2) and publishers' CI. Exit 0 when every check is within its threshold, 1 when one "
            "is not (or a blueprint is invalid, or they describe different models), 2 on usage or I/O errors."
        ),
    )
    p.add_argument("a", metavar="A.json", help="the earlier blueprint")
    p.add_argument("b", metavar="B.json", help="the later blueprint")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--top", type=int, default=10, metavar="N", help="how many of the largest k* changes to list (default 10)")
    checks = (
        ("--min-rank-correlation", defaults.min_rank_correlation, "Spearman's rho of each domain's statistic and of the combined scores"),
        ("--min-overlap", defaults.min_overlap, "overlap 2|A and B|/(|A|+|B|) of the selected parameters"),
        ("--max-k-star-change", defaults.max_k_star_change, "largest |k*_B - k*_A| of a module (absent k* = 0)"),
        ("--max-exponent-change", defaults.max_exponent_change, "|alpha_B - alpha_A| of a domain's density exponent (both fits ok)"),
        ("--max-share-change", defaults.max_share_change, "|change| of a domain's top-10%% mass share"),
    )
    for flag, default, what in checks:
        p.add_argument(flag, type=float, default=default, metavar="X", help=f"{what} (default {default:g})")
    p.set_defaults(handler=cmd_diff)


def _load(path: str) -> Any:
    from blueprint_format.api import load

    return load(path)


def cmd_diff(args: argparse.Namespace) -> int:
    """Load both blueprints, compare them, print the result; the exit status is the verdict."""
    from blueprint_format.api import digest
    from blueprint_format.diff import DiffThresholds, compare
    from blueprint_format.errors import BlueprintError

    thresholds = DiffThresholds(
        min_rank_correlation=args.min_rank_correlation,
        min_overlap=args.min_overlap,
        max_k_star_change=args.max_k_star_change,
        max_exponent_change=args.max_exponent_change,
        max_share_change=args.max_share_change,
    )
    blueprints = []
    for path in (args.a, args.b):
        try:
            blueprints.append(_load(path))
        except BlueprintError as exc:
            for issue in exc.issues:
                print(f"error: {path}: {issue}", file=sys.stderr)
            return exc.exit_status
    a, b = blueprints
    diff = compare(a, b, thresholds, top=args.top)
    sides = {
        side: {"path": path, "digest": digest(bp), "revision": bp.model.revision, "created": bp.provenance.created}
        for side, path, bp in (("a", args.a, a), ("b", args.b, b))
    }
    if args.json:
        sys.stdout.write(json.dumps({**sides, **diff.to_json()}, indent=2) + "\n")
    else:
        print(render(diff, sides))
    return 0 if diff.within else 1


def _f(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def render(diff: Any, sides: dict[str, dict[str, str]]) -> str:
    """The human-readable comparison."""
    from blueprint_format.render import table

    lines = [f"{k.upper()}: {v['path']} (revision {v['revision']}, created {v['created']})" for k, v in sides.items()]
    lines.append(
        f"modules: {diff.common_modules} in common, {len(diff.only_in_a)} only in A, {len(diff.only_in_b)} only in B; "
        f"domains in common: {', '.join(diff.common_domains)}"
    )
    rows = [[c.scope, c.statistic, _f(c.spearman), _f(c.kendall)] for c in diff.correlations]
    lines += ["", "rank correlation", table(["scope", "statistic", "spearman", "kendall"], rows, right={2, 3})]
    s = diff.selection
    lines += [
        "",
        f"selection: A {s.modules_a} modules / {s.parameters_a:,} parameters ({s.granularity_a}), "
        f"B {s.modules_b} modules / {s.parameters_b:,} parameters ({s.granularity_b}); "
        f"overlap: modules {_f(s.module_overlap)}, parameters {_f(s.parameter_overlap)}",
    ]
    if diff.k_star_changes:
        rows = [[c.module, _f(c.a, ".3g"), _f(c.b, ".3g"), f"{c.change:+.3f}"] for c in diff.k_star_changes]
        lines += ["", "largest k* changes", table(["module", "k* A", "k* B", "change"], rows, right={1, 2, 3})]
    rows = [
        [h.domain, f"{h.status_a}/{h.status_b}", _f(h.exponent_a), _f(h.exponent_b), _f(h.exponent_change, "+.3f"),
         _f(h.top_10_a), _f(h.top_10_b), _f(h.share_change, "+.3f")]
        for h in diff.heavy_tail
    ]
    headers = ["domain", "status A/B", "alpha A", "alpha B", "change", "top10 A", "top10 B", "change"]
    lines += ["", "heavy tail (density exponent alpha, top-10% mass share)", table(headers, rows, right=set(range(2, 8)))]
    if diff.stability:
        rows = [[s.domain, _f(s.rank_correlation_a), _f(s.rank_correlation_b), _f(s.selection_overlap_a),
                 _f(s.selection_overlap_b)] for s in diff.stability]
        headers = ["domain", "spearman A", "spearman B", "overlap A", "overlap B"]
        lines += ["", "each blueprint's own bootstrap stability (SPEC 7.7: the noise of its calibration batches)",
                  table(headers, rows, right=set(range(1, 5)))]
    if diff.within:
        lines += ["", "within thresholds"]
    else:
        lines += ["", "OUTSIDE thresholds:"]
        for f in diff.failures:
            bound = "<" if f.check in ("rank-correlation", "selection-overlap") else ">"
            lines.append(f"  {f.check} ({f.scope}): {f.value:.3f} {bound} {f.threshold:g}")
    return "\n".join(lines)
