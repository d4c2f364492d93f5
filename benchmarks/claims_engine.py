"""The claims of benchmarks/claims.py that depend on fine-tuning: read from other benchmarks' results.

Each section reads a result file of another benchmark and renders its numbers with a verdict, or
says "pending" with the command that produces the file. Files and what is read from them:

* k* capability at a memory saving: `finetune.json` (MiniLM) and `finetune_causal.json` (SmolLM2),
  a list `rows` of arms with `k` (trainable fraction; 1 = full fine-tuning), a quality that is
  higher-better (`acc`, `quality`) or lower-better (`eval_loss`, `perplexity`), optionally `acc0` /
  `quality0` (before training), and a peak memory (`peak_memory_bytes`, `peak_rss_bytes`,
  `cuda_max_allocated_bytes`);
* data selection by gradient norm: `data_selection.json` (rows with `model`, `band` in top /
  middle / lowest / random, `q`, quality as above), else the k = 1 rows of `combined_budget.json`
  (MiniLM, top band against random);
* combined parameter x data selection: `combined_budget.json` (rows with `k`, `q`, `selection`,
  `acc`, `acc0`, `train_flops`, `select_flops`, `seed`).
"""

from __future__ import annotations

import contextlib
import json
import statistics
from pathlib import Path
from typing import Any

QUALITY_UP = ("acc", "quality", "eval_accuracy")
QUALITY_DOWN = ("eval_loss", "perplexity")
MEMORY = ("peak_memory_bytes", "peak_rss_bytes", "cuda_max_allocated_bytes")


def _rows(path: Path) -> list[dict[str, Any]] | None:
    """The `rows` (or `arms`) of a results file; None when it is absent or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rows = doc.get("rows", doc.get("arms")) if isinstance(doc, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else None


def _pending(path: Path, command: str) -> list[str]:
    return [f"Pending: `{path.name}` is not in benchmarks/results/ yet (or has no `rows`). Produce it with "
            f"`{command}`, then rerun `benchmarks/claims.py`.", ""]


def _first(row: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, float] | None:
    for key in keys:
        if isinstance(row.get(key), (int, float)):
            return key, float(row[key])
    return None


def capability_section(results: Path) -> list[str]:
    """Claim: updating only the k* fraction keeps most capability at a large memory saving."""
    lines = ["## 4. Updating only the k* fraction a blueprint selects keeps most of the capability at a large memory saving", "",
             "Capability kept = (quality gain of the arm) / (gain of full fine-tuning), memory = peak memory "
             "over full fine-tuning's. Holds when an arm with k < 1 keeps >= 90% of the capability at <= 50% of "
             "the memory.", ""]
    for name, command in (("finetune.json", "python benchmarks/finetune.py"),
                          ("finetune_causal.json", "python benchmarks/finetune_causal.py")):
        path = results / name
        rows = _rows(path)
        lines += [f"### {name}", ""]
        if not rows:
            lines += _pending(path, command)
            continue
        lines += [*_capability_table(rows), ""]
    return lines


def _capability_table(rows: list[dict[str, Any]]) -> list[str]:
    full = [r for r in rows if r.get("k") == 1.0]
    quality = next((q for r in rows if (q := _first(r, QUALITY_UP + QUALITY_DOWN))), None)
    memory = next((m for r in rows if (m := _first(r, MEMORY))), None)
    if not full or quality is None:
        return ["The file has no full fine-tuning arm (k = 1) or no quality figure this report knows; "
                f"keys seen: {sorted(set().union(*(r.keys() for r in rows)))[:20]}"]
    key, sign = quality[0], (1.0 if quality[0] in QUALITY_UP else -1.0)
    base = _first(full[0], ("acc0", "quality0"))
    start = base[1] if base else None
    ref_q = statistics.fmean(float(r[key]) for r in full)
    ref_m = statistics.fmean(float(r[memory[0]]) for r in full if memory and memory[0] in r) if memory else None
    lines = [f"| arm | k | {key} | capability kept | memory / full |", "|---|---|---|---|---|"]
    verdict = "does not hold in this file"
    for r in rows:
        if key not in r:
            continue
        gain = sign * (float(r[key]) - start) if start is not None else None
        ref_gain = sign * (ref_q - start) if start is not None else None
        kept = gain / ref_gain if gain is not None and ref_gain else None
        mem = float(r[memory[0]]) / ref_m if memory and ref_m and memory[0] in r else None
        lines.append(f"| {r.get('arm', r.get('parameters', '?'))} | {r.get('k', '?')} | {float(r[key]):.4g} | "
                     f"{'-' if kept is None else f'{kept:.0%}'} | {'-' if mem is None else f'{mem:.2f}'} |")
        if r.get("k", 1.0) < 1.0 and kept is not None and mem is not None and kept >= 0.9 and mem <= 0.5:
            verdict = "holds"
    return [*lines, "", f"Verdict: {verdict}."]


def _arms(rows: list[dict[str, Any]]) -> dict[tuple[float, float, str], dict[str, float]]:
    """Per (k, q, selection): mean accuracy, accuracy before training, training and selection FLOPs."""
    groups: dict[tuple[float, float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((float(r["k"]), float(r["q"]), str(r["selection"])), []).append(r)
    return {
        arm: {
            key: statistics.fmean(float(r.get(key, 0.0)) for r in rs)
            for key in ("acc", "acc0", "train_flops", "select_flops")
        }
        for arm, rs in groups.items()
    }


def combined_section(results: Path) -> list[str]:
    """Claim: combined parameter x data selection reaches 72% of the performance at 6% of the cost."""
    path = results / "combined_budget.json"
    lines = ["## 6. Combined parameter x data selection reaches 72% of the performance at 6% of the cost", "",
             "Performance = accuracy gain over the untrained head relative to full fine-tuning's gain (k = 1, "
             "q = 1); cost = training FLOPs relative to full fine-tuning (with the data-selection pass added "
             "in the last column). Means over seeds.", ""]
    rows = _rows(path)
    try:
        arms = _arms(rows or [])
    except (KeyError, TypeError, ValueError):
        arms = {}
    full = arms.get((1.0, 1.0, "all"))
    if not arms or full is None or full["acc"] == full["acc0"]:
        return lines + _pending(path, "python benchmarks/combined_budget.py")
    gain_full = full["acc"] - full["acc0"]
    lines += ["| k | q | selection | performance | cost | cost with selection |", "|---|---|---|---|---|---|"]
    best: tuple[float, float] | None = None
    for (k, q, sel), a in sorted(arms.items(), reverse=True):
        perf = (a["acc"] - a["acc0"]) / gain_full
        cost = a["train_flops"] / full["train_flops"]
        with_sel = (a["train_flops"] + a["select_flops"]) / full["train_flops"]
        lines.append(f"| {k:g} | {q:g} | {sel} | {perf:.0%} | {cost:.1%} | {with_sel:.1%} |")
        if with_sel <= 0.06 and (best is None or perf > best[0]):
            best = (perf, with_sel)
    if best is not None and best[0] >= 0.72:
        verdict = f"holds on this task: {best[0]:.0%} at {best[1]:.1%} of the cost"
    elif best is not None:
        verdict = f"does not hold on this task: the best arm within 6% of the cost reaches {best[0]:.0%}"
    else:
        verdict = "not measured: no arm of this grid costs 6% or less (a smaller k x q grid is needed)"
    return [*lines, "", f"Verdict: {verdict}. Source: `{path.name}` (MiniLM, trump_tweets).", ""]


def data_selection_section(results: Path) -> list[str]:
    """Claim: data selection by gradient norm (bands), on both models."""
    lines = ["## 5. Data selection by gradient norm (top, middle and lowest bands, both models)", ""]
    rows = _rows(results / "data_selection.json")
    if rows:
        lines += ["| model | band | q | quality |", "|---|---|---|---|"]
        for r in rows:
            q = _first(r, QUALITY_UP + QUALITY_DOWN)
            lines.append(f"| {r.get('model', '?')} | {r.get('band', '?')} | {r.get('q', '?')} | "
                         f"{'-' if q is None else f'{q[0]} {q[1]:.4g}'} |")
        return [*lines, ""]
    lines += _pending(results / "data_selection.json",
                      "a data-selection benchmark writing rows with model, band (top/middle/lowest/random), q and quality")
    arms = {}
    with contextlib.suppress(KeyError, TypeError, ValueError):
        arms = _arms(_rows(results / "combined_budget.json") or [])
    top = [(sel, a["acc"]) for (k, q, sel), a in arms.items() if k == 1.0 and q < 1.0]
    if top:
        cells = ", ".join(f"{sel} {acc:.3f}" for sel, acc in sorted(top))
        lines += [f"Meanwhile, from `combined_budget.json` (MiniLM, trump_tweets, all parameters trainable, "
                  f"30% of the data): eval accuracy {cells}. Verdict for the top band on MiniLM: "
                  + ("does not hold (random selection does better)" if _random_wins(top) else "holds") + ".", ""]
    return lines


def _random_wins(arms: list[tuple[str, float]]) -> bool:
    accs = dict(arms)
    return "random" in accs and "grad-norm" in accs and accs["random"] > accs["grad-norm"]


def engine_sections(results: Path) -> list[str]:
    """Sections 4 to 6 of claims.md."""
    return capability_section(results) + data_selection_section(results) + combined_section(results)
