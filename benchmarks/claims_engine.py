"""The claims of benchmarks/claims.py that depend on fine-tuning: read from other benchmarks' results.

Each section reads the result file of another benchmark, in benchmarks/results/ (or, for a run
whose results were not copied there yet, benchmarks/output/<benchmark>/), and renders its numbers
with a verdict, or says "pending" with the command that produces the file. Files and what is read:

* k* capability at a memory saving: `finetune.json` of benchmarks/finetune.py (MiniLM; `results`:
  one row per arm and seed with `kind`, `k`, `granularity`, `split`, `accuracy`,
  `initial_accuracy`, `peak_rss_bytes`) and `finetune_causal.json` of benchmarks/finetune_causal.py
  (SmolLM2; `results`: `phase` "cost" rows with `name`, `peak_bytes`, `trainable_params`,
  `selected_fraction`, and `phase` "quality" rows with `name`, `split`, `eval_loss`,
  `initial_eval_loss`);
* data selection by gradient norm: `data_selection.json` of benchmarks/data_selection.py (its
  `summary`: one entry per arm with `model`, `k`, `q`, `band` in all / top / middle / lowest /
  random, `per_label`, `seeds`, the quality (`acc` or `eval_loss`) and its `_sd`, `performance`,
  `rel_flops`, `rel_flops_with_selection`, `rel_time`, and for score bands the paired difference
  to random, `vs_random`, `vs_random_sd`, `vs_random_distinct`); without it, the k = 1 rows of
  `combined_budget.json` (MiniLM, top band against random);
* combined parameter x data selection: `combined_budget.json` of benchmarks/combined_budget.py
  (MiniLM; rows with `k`, `q`, `selection`, `acc`, `acc0`, `train_flops`, `select_flops`, `seed`)
  and the k < 1 arms of `data_selection.json` (SmolLM2).
"""

from __future__ import annotations

import contextlib
import json
import statistics
from pathlib import Path
from typing import Any

#: The seed poster's combined claim.
CLAIM_PERFORMANCE = 0.72
CLAIM_COST = 0.06


def _load(results: Path, name: str, benchmark: str) -> tuple[dict[str, Any] | None, Path]:
    """The JSON document `name` from results/, else from output/<benchmark>/; (None, where) if neither."""
    candidates = [results / name, results.parent / "output" / benchmark / name]
    for path in candidates:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            return doc, path
    return None, candidates[0]


def _pending(path: Path, command: str) -> list[str]:
    return [f"Pending: `{path.name}` is not in benchmarks/results/ yet (or has no rows this report reads). "
            f"Produce it with `{command}`, then rerun `benchmarks/claims.py`.", ""]


def _source(path: Path) -> str:
    return f"`{path.parent.name}/{path.name}`"


def _dict_rows(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    rows = doc.get(key)
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


# ----------------------------------------------------------------------------------------------
# 4. capability kept at a memory saving


def _finetune_arms(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """benchmarks/finetune.py (MiniLM): mean over seeds per arm of the eval rows."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in _dict_rows(doc, "results"):
        if r.get("split", "eval") != "eval" or not isinstance(r.get("accuracy"), (int, float)):
            continue
        name = "full" if r.get("kind") == "full" else f"{r.get('kind')} {r.get('granularity', '')} k={r.get('k')}"
        groups.setdefault(name, []).append(r)
    return [{"arm": name, "k": 1.0 if rs[0].get("kind") == "full" else float(rs[0].get("k", 1.0)),
             "quality": statistics.fmean(float(r["accuracy"]) for r in rs),
             "start": statistics.fmean(float(r.get("initial_accuracy", 0.0)) for r in rs),
             "memory": statistics.fmean(float(r.get("peak_rss_bytes", 0.0)) for r in rs), "seeds": len(rs)}
            for name, rs in groups.items()]


def _causal_arms(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """benchmarks/finetune_causal.py (SmolLM2): the eval quality row of each arm, with its largest
    peak memory and trainable share from the cost rows."""
    rows = _dict_rows(doc, "results")
    cost: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("phase") == "cost":
            cost.setdefault(str(r.get("name")), []).append(r)
    full_params = max((float(r.get("trainable_params", 0)) for r in cost.get("full", [])), default=0.0)
    out = []
    for r in rows:
        if r.get("phase") != "quality" or r.get("split") != "eval" or "eval_loss" not in r:
            continue
        name = str(r.get("name"))
        c = cost.get(name, [])
        share = c[0].get("selected_fraction") if c else None
        if share is None and c and full_params:
            share = float(c[0].get("trainable_params", 0)) / full_params
        out.append({"arm": name, "k": 1.0 if name == "full" else share, "quality": -float(r["eval_loss"]),
                    "start": -float(r.get("initial_eval_loss", r["eval_loss"])),
                    "memory": max((float(x.get("peak_bytes", 0)) for x in c), default=None), "seeds": 1})
    return out


def _capability_table(arms: list[dict[str, Any]], quality: str) -> list[str]:
    full = next((a for a in arms if a["arm"] == "full"), None)
    if full is None:
        return [f"The file has no full fine-tuning arm; arms seen: {sorted(a['arm'] for a in arms)[:20]}"]
    ref_gain = full["quality"] - full["start"]
    lines = [f"| arm | k | {quality} | capability kept | memory / full |", "|---|---|---|---|---|"]
    verdict = "does not hold in this file"
    for a in sorted(arms, key=lambda a: (-(a["k"] or 0.0), a["arm"])):
        kept = (a["quality"] - a["start"]) / ref_gain if ref_gain else None
        mem = a["memory"] / full["memory"] if a["memory"] and full["memory"] else None
        shown = abs(a["quality"]) if quality == "eval loss" else a["quality"]
        k = "-" if a["k"] is None else format(a["k"], ".3g")
        lines.append(f"| {a['arm']} | {k} | {shown:.4g} | "
                     f"{'-' if kept is None else f'{kept:.0%}'} | {'-' if mem is None else f'{mem:.2f}'} |")
        blueprint = str(a["arm"]).startswith("blueprint") and (a["k"] or 1.0) < 1.0
        if blueprint and kept is not None and mem is not None and kept >= 0.9 - 1e-9 and mem <= 0.5 + 1e-9:
            verdict = f"holds ({a['arm']})"
    return [*lines, "", f"Verdict: {verdict}."]


def capability_section(results: Path) -> list[str]:
    """Claim: updating only the k* fraction keeps most capability at a large memory saving."""
    lines = ["## 4. Updating only the k* fraction a blueprint selects keeps most of the capability at a large memory saving", "",
             "Capability kept = (quality gain of the arm) / (gain of full fine-tuning), memory = peak memory "
             "over full fine-tuning's (for SmolLM2 the quality is the eval loss, whose decrease is the gain). "
             "Holds when a blueprint arm with k < 1 keeps >= 90% of the capability at <= 50% of the memory "
             "(random and LoRA arms are the controls).", ""]
    for name, bench, command, reader, quality in (
        ("finetune.json", "finetune", "python benchmarks/finetune.py", _finetune_arms, "accuracy"),
        ("finetune_memory.json", "finetune", "python benchmarks/finetune.py --only-memory --steps 150 --seeds 1",
         _finetune_arms, "accuracy"),
        ("finetune_causal.json", "finetune_causal", "python benchmarks/finetune_causal.py --phase all",
         _causal_arms, "eval loss"),
    ):
        doc, path = _load(results, name, bench)
        arms = reader(doc) if doc else []
        lines += [f"### {name}", ""]
        lines += [*_capability_table(arms, quality), f"Source: {_source(path)}.", ""] if arms else _pending(path, command)
    return lines


# ----------------------------------------------------------------------------------------------
# 5. data selection bands


def _quality_key(entry: dict[str, Any]) -> str:
    return "acc" if "acc" in entry else "eval_loss"


def _band_name(s: dict[str, Any]) -> str:
    return str(s["band"]) + (" per label" if s.get("per_label") else "")


def _band_table(entries: list[dict[str, Any]]) -> list[str]:
    key = _quality_key(entries[0])
    lines = [f"| band | q | seeds | {key} mean (sd) | performance | gain vs random, paired (sd) | FLOPs rel. "
             "(incl. scoring) |", "|---|---|---|---|---|---|---|"]
    for s in entries:
        vs = "-" if "vs_random" not in s else (f"{s['vs_random']:+.4f} ({s.get('vs_random_sd', float('nan')):.4f})"
                                               + (" beyond noise" if s.get("vs_random_distinct") else ""))
        lines.append(f"| {_band_name(s)} | {s['q']:g} | {s['seeds']} | {s[key]:.4f} ({s.get(key + '_sd', float('nan')):.4f}) "
                     f"| {s['performance']:.0%} | {vs} | {s['rel_flops']:.1%} ({s['rel_flops_with_selection']:.1%}) |")
    return lines


def _band_verdict(entries: list[dict[str, Any]]) -> str:
    """The claim for the top band (global) against random, and which band did best."""
    top = next((s for s in entries if s["band"] == "top" and not s.get("per_label") and "vs_random" in s), None)
    if top is None:
        return "not measured (no top band with a paired random band)"
    seeds = top.get("seeds", "?")
    if top.get("vs_random_distinct"):
        head = ("holds: the top band beats random" if top["vs_random"] > 0 else
                "does not hold: the top band does worse than random")
    else:
        head = f"not shown: the top band is not distinguishable from random over {seeds} seeds"
    scored = [s for s in entries if s["band"] != "all" and s["q"] < 1.0]
    best = max(scored, key=lambda s: s["performance"]) if scored else None
    tail = f"; the best band at q = {best['q']:g} is {_band_name(best)} ({best['performance']:.0%} of full fine-tuning's gain)" if best else ""
    return head + tail


def data_selection_section(results: Path) -> list[str]:
    """Claim: data selection by gradient norm (bands), on both models."""
    lines = ["## 5. Data selection by gradient norm (top, middle and lowest bands, both models)", "",
             "Each band keeps the share q of the pool by the untrained model's per-example gradient norms (top: "
             "highest, middle: ranks around the median, lowest), trained with all parameters for the same epochs as "
             "full fine-tuning on all data; performance = gain / full fine-tuning's gain. The claim holds when the "
             "top band beats the random band of the same size beyond the seed noise (a paired t-test over the seeds "
             "at the 5% level).", ""]
    doc, path = _load(results, "data_selection.json", "data_selection")
    summary = _dict_rows(doc, "summary") if doc else []
    models = sorted({str(s["model"]) for s in summary if s.get("k") == 1.0})
    for model in models:
        entries = [s for s in summary if s["model"] == model and s.get("k") == 1.0]
        title = (doc or {}).get("settings", {}).get(model, {})
        lines += [f"### {model}", "", *_band_table(entries), "", f"Verdict: {_band_verdict(entries)}.",
                  f"Source: {_source(path)}" + (f" ({title.get('pool_examples')} pool examples)." if title else "."),
                  ""]
    if models:
        return lines
    lines += _pending(path, "python benchmarks/data_selection.py")
    return lines + _combined_budget_bands(results)


def _combined_budget_bands(results: Path) -> list[str]:
    """Meanwhile: the k = 1 rows of combined_budget.json (MiniLM, top band against random)."""
    doc, _ = _load(results, "combined_budget.json", "combined_budget")
    arms: dict[tuple[float, float, str], dict[str, float]] = {}
    with contextlib.suppress(KeyError, TypeError, ValueError):
        arms = _budget_arms(_dict_rows(doc or {}, "rows"))
    top = [(sel, a["acc"]) for (k, q, sel), a in arms.items() if k == 1.0 and q < 1.0]
    if not top:
        return []
    cells = ", ".join(f"{sel} {acc:.3f}" for sel, acc in sorted(top))
    accs = dict(top)
    random_wins = "random" in accs and "grad-norm" in accs and accs["random"] > accs["grad-norm"]
    return [f"Meanwhile, from `combined_budget.json` (MiniLM, trump_tweets, all parameters trainable, 30% of the "
            f"data): eval accuracy {cells}. Verdict for the top band on MiniLM: "
            + ("does not hold (random selection does better)" if random_wins else "holds") + ".", ""]


# ----------------------------------------------------------------------------------------------
# 6. combined parameter x data selection


def _budget_arms(rows: list[dict[str, Any]]) -> dict[tuple[float, float, str], dict[str, float]]:
    """combined_budget.json: per (k, q, selection) the mean accuracy, accuracy before training,
    training and selection FLOPs."""
    groups: dict[tuple[float, float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((float(r["k"]), float(r["q"]), str(r["selection"])), []).append(r)
    return {
        arm: {key: statistics.fmean(float(r.get(key, 0.0)) for r in rs)
              for key in ("acc", "acc0", "train_flops", "select_flops", "train_s")}
        for arm, rs in groups.items()
    }


def _combined_rows_minilm(results: Path) -> tuple[list[dict[str, Any]], Path]:
    """combined_budget.json as (k, q, selection, performance, cost, cost with selection) entries."""
    doc, path = _load(results, "combined_budget.json", "combined_budget")
    try:
        arms = _budget_arms(_dict_rows(doc or {}, "rows"))
    except (KeyError, TypeError, ValueError):
        arms = {}
    full = arms.get((1.0, 1.0, "all"))
    if not arms or full is None or full["acc"] == full["acc0"] or not full["train_flops"]:
        return [], path
    out = []
    for (k, q, sel), a in arms.items():
        out.append({"k": k, "q": q, "selection": sel, "performance": (a["acc"] - a["acc0"]) / (full["acc"] - full["acc0"]),
                    "cost": a["train_flops"] / full["train_flops"],
                    "cost_sel": (a["train_flops"] + a["select_flops"]) / full["train_flops"],
                    "time": a["train_s"] / full["train_s"] if full["train_s"] else None})
    return out, path


def _combined_rows_summary(results: Path) -> tuple[dict[str, list[dict[str, Any]]], Path]:
    """data_selection.json: per model with k < 1 arms, its entries in the same form."""
    doc, path = _load(results, "data_selection.json", "data_selection")
    by_model: dict[str, list[dict[str, Any]]] = {}
    summary = _dict_rows(doc, "summary") if doc else []
    with_k = {s["model"] for s in summary if s.get("k", 1.0) < 1.0}
    for s in summary:
        if s["model"] in with_k:
            by_model.setdefault(str(s["model"]), []).append({
                "k": float(s["k"]), "q": float(s["q"]), "selection": _band_name(s), "performance": s["performance"],
                "cost": s["rel_flops"], "cost_sel": s["rel_flops_with_selection"], "time": s.get("rel_time")})
    return by_model, path


def _combined_table(entries: list[dict[str, Any]]) -> list[str]:
    lines = ["| k | q | data | k x q | performance | FLOPs rel. | incl. scoring | time rel. |",
             "|---|---|---|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: (-e["k"], -e["q"], e["selection"])):
        time_rel = "-" if e["time"] is None else f"{e['time']:.1%}"
        lines.append(f"| {e['k']:g} | {e['q']:g} | {e['selection']} | {e['k'] * e['q']:.0%} | {e['performance']:.0%} "
                     f"| {e['cost']:.1%} | {e['cost_sel']:.1%} | {time_rel} |")
    return lines


def _combined_verdict(entries: list[dict[str, Any]]) -> str:
    """Against the claim: is there an arm at <= 6% of the measured cost with >= 72% of the performance,
    and what do the arms at k x q = 6% (the nominal cost) actually reach and cost?"""
    within = [e for e in entries if e["cost_sel"] <= CLAIM_COST]
    nominal = [e for e in entries if e["k"] < 1.0 and e["q"] < 1.0]
    best = max(nominal, key=lambda e: e["performance"]) if nominal else None
    if within:
        top = max(within, key=lambda e: e["performance"])
        head = (f"{'holds' if top['performance'] >= CLAIM_PERFORMANCE else 'does not hold'}: the best arm within "
                f"{CLAIM_COST:.0%} of the measured cost reaches {top['performance']:.0%}")
    else:
        head = (f"does not hold as stated: no arm costs {CLAIM_COST:.0%} or less of full fine-tuning's measured "
                "training FLOPs")
    if best is not None:
        head += (f"; at k = {best['k']:g} x q = {best['q']:g} (nominally {best['k'] * best['q']:.0%}) the best data "
                 f"choice, {best['selection']}, reaches {best['performance']:.0%} of the performance at "
                 f"{best['cost']:.1%} of the FLOPs ({best['cost_sel']:.1%} with the scoring pass)"
                 + (f" and {best['time']:.1%} of the training time" if best["time"] is not None else ""))
    return head


def combined_section(results: Path) -> list[str]:
    """Claim: combined parameter x data selection reaches 72% of the performance at 6% of the cost."""
    lines = ["## 6. Combined parameter x data selection reaches 72% of the performance at 6% of the cost", "",
             "Performance = quality gain over the untrained model relative to full fine-tuning's gain (k = 1, q = 1); "
             "cost = training FLOPs relative to full fine-tuning (the data-selection pass added in \"incl. "
             "scoring\"), and training wall time. k x q is the nominal cost the claim multiplies; frozen weights "
             "still cost their forward and activation-gradient FLOPs, so the measured share is larger. Means over "
             "seeds.", ""]
    minilm, mpath = _combined_rows_minilm(results)
    lines += ["### MiniLM (trump_tweets, benchmarks/combined_budget.py)", ""]
    if minilm:
        lines += [*_combined_table(minilm), "", f"Verdict: {_combined_verdict(minilm)}. Source: {_source(mpath)}.", ""]
    else:
        lines += _pending(mpath, "python benchmarks/combined_budget.py")
    by_model, spath = _combined_rows_summary(results)
    for model, entries in sorted(by_model.items()):
        lines += [f"### {model} (benchmarks/data_selection.py)", "", *_combined_table(entries), "",
                  f"Verdict: {_combined_verdict(entries)}. Source: {_source(spath)}.", ""]
    if not by_model:
        lines += ["### smollm2 (benchmarks/data_selection.py)", "", *_pending(spath, "python benchmarks/data_selection.py")]
    return lines


def engine_sections(results: Path) -> list[str]:
    """Sections 4 to 6 of claims.md."""
    return capability_section(results) + data_selection_section(results) + combined_section(results)
