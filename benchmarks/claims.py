"""What the seed poster's claims are worth, measured on all-MiniLM-L6-v2 and SmolLM2-135M-Instruct.

Writes benchmarks/results/claims.md (and claims.json with every number). Each claim gets the
numbers, the command that regenerates them and a verdict (holds / does not hold / depends on X).

Measured here (one gradient pass per model through `compute_blueprint`, plus one plain pass for
element-level values):

1. Heavy tails with an exponent in (1, 2), at module level (the blueprint's per-module
   `grad_norm_mean` per domain) and at element level (|mean gradient| of every parameter element on
   one domain, SPEC 8.6; the fit runs on a seeded uniform sample of the elements): the CSN fit
   (SPEC 8.2) in the three conventions, its KS distance, and the CSN likelihood-ratio tests of the
   power law against a log-normal and an exponential above the same x_min (`powerlaw` 2.0).
2. The top 10% of modules / of parameter elements hold about 50% of the gradient mass.
3. How many calibration examples a stable blueprint needs: on one domain's pool of batches, for
   growing numbers of examples, the bootstrap stability (reference_impl.stability) and the
   split-half agreement (selection overlap and Spearman between two disjoint sets of batches of
   the same size).

Read from other benchmarks' result files (sections say "pending" with the command when the file is
absent): k* keeps most capability at a large memory saving; data selection by gradient norm (top,
middle, lowest bands, both models); combined parameter x data selection reaching 72% of the
performance at 6% of the cost.

Models: all-MiniLM-L6-v2 (contrastive in-batch loss on chatterbot-corpus (turn, next turn) pairs,
as `make demo`) and SmolLM2-135M-Instruct (causal-LM loss on chatterbot-corpus utterances), three
domains each (ai, emotion, trivia; trivia is the stability pool).

Run (full size; see the module's FULL sizes):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/claims.py
Smoke test at tiny sizes (seconds to a minute, writes under /tmp unless --out is given):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/claims.py --tiny --out /tmp/claims
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.claims_engine import engine_sections  # noqa: E402
from benchmarks.real_models import chatterbot_utterances, minilm_folder, smollm2_folder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOMAINS = ("ai", "emotion", "trivia")
POOL = "trivia"
BUDGET = 0.2  # module-granularity global budget of the blueprints and of the stability selections


@dataclass(frozen=True)
class Sizes:
    """How much data each measurement uses."""

    examples: int  # per domain (ai, emotion)
    pool_examples: int  # the stability pool (trivia)
    stability_counts: tuple[int, ...]  # examples per half in the stability study (2x must fit the pool)
    batch_size: int
    seq_len: int
    element_sample: int  # elements the element-level fit runs on
    resamples: int


FULL = Sizes(examples=96, pool_examples=256, stability_counts=(16, 32, 64, 128), batch_size=8, seq_len=64,
             element_sample=100_000, resamples=200)
TINY = Sizes(examples=8, pool_examples=16, stability_counts=(4, 8), batch_size=4, seq_len=24,
             element_sample=2_000, resamples=20)


# -- data and models -------------------------------------------------------------------------------

def _pairs(category: str, limit: int) -> list[tuple[str, str]]:
    from reference_impl.demo import corpus_pairs

    return corpus_pairs(category, limit)


def minilm_setup(sizes: Sizes) -> tuple[Any, dict[str, Any], Any, Path]:
    """MiniLM, its contrastive loss and the three domains' CalibrationDomains."""
    from transformers import AutoModel, AutoTokenizer

    from reference_impl import CalibrationDomain
    from reference_impl.losses import contrastive_pair_loss

    folder = minilm_folder()
    model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    domains = {}
    for name in DOMAINS:
        pairs = _pairs(name, sizes.pool_examples if name == POOL else sizes.examples)
        batches = []
        for i in range(0, len(pairs), sizes.batch_size):
            chunk = pairs[i : i + sizes.batch_size]
            enc = [tok([p[j] for p in chunk], padding=True, truncation=True, max_length=sizes.seq_len,
                       return_tensors="pt") for j in (0, 1)]
            batches.append({"anchor": dict(enc[0]), "positive": dict(enc[1])})
        domains[name] = CalibrationDomain(batches=batches, texts=[f"{a}\t{b}" for a, b in pairs],
                                          source=f"chatterbot-corpus/english/{name}.yml (turn, next turn) pairs")
    return model, domains, contrastive_pair_loss, folder


def smollm2_setup(sizes: Sizes) -> tuple[Any, dict[str, Any], Any, Path]:
    """SmolLM2-135M-Instruct, the causal-LM loss and the three domains' CalibrationDomains."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reference_impl import CalibrationDomain
    from reference_impl.data import Example, causal_lm_batches
    from reference_impl.losses import causal_lm_loss

    folder = smollm2_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    domains = {}
    for name in DOMAINS:
        limit = sizes.pool_examples if name == POOL else sizes.examples
        texts = [t for _, t in chatterbot_utterances([name])][:limit]
        batches = causal_lm_batches([Example(t) for t in texts], tok, sizes.batch_size, sizes.seq_len).batches
        domains[name] = CalibrationDomain(batches=batches, texts=texts,
                                          source=f"chatterbot-corpus/english/{name}.yml utterances")
    return model, domains, causal_lm_loss, folder


MODELS = {
    "minilm": ("all-MiniLM-L6-v2", minilm_setup),
    "smollm2": ("SmolLM2-135M-Instruct (causal LM)", smollm2_setup),
}


# -- measurements ---------------------------------------------------------------------------------

def compute(model: Any, domains: dict[str, Any], loss: Any, folder: Path, sizes: Sizes) -> tuple[Any, np.ndarray]:
    """The module-granularity blueprint and the pool domain's (batches x blueprint modules) norms."""
    from reference_impl import AllocationRule, ComputeConfig, compute_blueprint

    stats: dict[str, Any] = {}
    cfg = ComputeConfig(
        model_path=folder, rule=AllocationRule("global-budget", {"budget": BUDGET}), granularity="module",
        seed=0, min_examples_per_aggregate=min(sizes.examples, 32), batch_size=sizes.batch_size,
        seq_len=sizes.seq_len, device="cpu",
    )
    bp = compute_blueprint(model, domains, loss, cfg, on_domain_done=lambda name, s: stats.__setitem__(name, s))
    reached = np.logical_or.reduce([s.reached for s in stats.values()])
    pool = stats[POOL].batch_norms[:, reached]
    mine = pool.mean(axis=0)
    theirs = np.array([m.stats[POOL].grad_norm_mean for m in bp.modules])
    if mine.shape != theirs.shape or not np.allclose(mine, theirs, rtol=1e-9, atol=0):
        raise RuntimeError("the pool's batch norms do not line up with the blueprint's modules")
    return bp, pool


def element_values(model: Any, domain: Any, loss: Any) -> np.ndarray:
    """|mean gradient| of every parameter element the loss reaches, over the domain's batches (SPEC 8.6)."""
    import torch

    params = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
    sums: list[torch.Tensor | None] = [None] * len(params)
    model.eval()
    count = 0
    for batch in domain.batches:
        model.zero_grad(set_to_none=True)
        loss(model, batch).backward()
        for i, p in enumerate(params):
            if p.grad is not None:
                g = p.grad.detach().to(torch.float64)
                sums[i] = g.clone() if sums[i] is None else sums[i].add_(g)
        count += 1
    model.zero_grad(set_to_none=True)
    flat = [(s.abs() / count).to(torch.float32).reshape(-1) for s in sums if s is not None]
    return torch.cat(flat).numpy()


def lr_tests(values: np.ndarray, x_min: float) -> dict[str, Any]:
    """CSN likelihood-ratio tests above x_min: power law vs log-normal and vs exponential.

    R > 0 favours the power law; p is the significance of the sign of R (Vuong's test, as CSN)."""
    import powerlaw

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(values, xmin=x_min, discrete=False, verbose=0)
        out = {}
        for alt in ("lognormal", "exponential"):
            r, p = fit.distribution_compare("power_law", alt, normalized_ratio=True)
            out[alt] = {"R": float(r), "p": float(p)}
    return out


def tail_summary(values: np.ndarray) -> dict[str, Any]:
    """The csn-mle fit in the three conventions, KS, tail, LR tests and the mass shares."""
    from reference_impl.heavy_tail import fit_power_law, mass_shares

    fit = fit_power_law(values)
    row: dict[str, Any] = {"n": int(values.size), "status": fit.status, "shares": mass_shares(values)}
    if fit.status == "ok":
        row.update(
            pdf=fit.exponent, tail_index=fit.exponent_as("tail-index"), rank_size=fit.exponent_as("rank-size"),
            x_min=fit.x_min, ks=fit.ks_distance, tail=fit.tail_count, lr=lr_tests(values, float(fit.x_min)),
        )
    else:
        row["message"] = fit.message
    return row


def element_summary(values: np.ndarray, sample: int) -> dict[str, Any]:
    """Element-level mass shares over all elements, and the fit on a seeded uniform sample."""
    from reference_impl.heavy_tail import top_counts

    n = int(values.size)
    total = float(values.sum(dtype=np.float64))
    shares = {}
    for key, k in top_counts(n).items():
        top = np.partition(values, n - k)[n - k :]
        shares[key] = float(top.sum(dtype=np.float64)) / total if total > 0 else k / n
    rng = np.random.default_rng(0)
    positive = values[values > 0]
    picked = positive[rng.choice(positive.size, size=min(sample, positive.size), replace=False)].astype(np.float64)
    row = tail_summary(picked)
    row.update(elements=n, sampled=int(picked.size), shares=shares)
    return row


def stability_study(pool: np.ndarray, sizes_params: np.ndarray, sizes: Sizes) -> list[dict[str, Any]]:
    """Per example count n: bootstrap stability of the first n examples' batches, and the agreement
    of two disjoint halves (batches [0, k) and [k, 2k)) of n examples each."""
    from reference_impl.stability import StabilityConfig, bootstrap_stability, first_fit_selection
    from reference_impl.stability import mean_spearman as spearman_rows

    rows = []
    for n in sizes.stability_counts:
        k = max(1, n // sizes.batch_size)
        if 2 * k > pool.shape[0]:
            continue
        first, second = pool[:k], pool[k : 2 * k]
        boot = bootstrap_stability(first, "grad_norm_mean", first.mean(axis=0), sizes_params, BUDGET,
                                   StabilityConfig(resamples=sizes.resamples, seed=0))
        halves = np.stack([first.mean(axis=0), second.mean(axis=0)])
        chosen = first_fit_selection(halves, sizes_params, BUDGET)
        shared = float(sizes_params[chosen[0] & chosen[1]].sum())
        split_overlap = 2 * shared / float(sizes_params[chosen[0]].sum() + sizes_params[chosen[1]].sum() or 1)
        rows.append({
            "examples": n, "batches": k, "bootstrap_overlap": boot.selection_overlap,
            "bootstrap_rank_correlation": boot.rank_correlation, "split_half_overlap": split_overlap,
            "split_half_spearman": spearman_rows(halves[1:], halves[0]),
            "median_relative_interval": float(np.median((boot.upper - boot.lower) / np.maximum(halves[0], 1e-300))),
        })
    return rows


def measure(key: str, sizes: Sizes) -> dict[str, Any]:
    """Every self-contained measurement on one model."""
    import torch

    torch.manual_seed(0)
    title, setup = MODELS[key]
    t0 = time.perf_counter()
    model, domains, loss, folder = setup(sizes)
    bp, pool = compute(model, domains, loss, folder, sizes)
    t_compute = time.perf_counter() - t0
    modules = {d: tail_summary(np.array([m.stats[d].grad_norm_mean for m in bp.modules])) for d in DOMAINS}
    elements = element_summary(element_values(model, domains["ai"], loss), sizes.element_sample)
    params = np.array([m.parameter_count for m in bp.modules])
    return {
        "model": title, "modules_count": len(bp.modules), "parameters": int(params.sum()),
        "batches": {d: bp.domain(d).batches for d in DOMAINS}, "examples": {d: bp.domain(d).examples for d in DOMAINS},
        "module_tails": modules, "element_tail": elements, "stability": stability_study(pool, params, sizes),
        "seconds": round(time.perf_counter() - t0, 1), "compute_seconds": round(t_compute, 1),
    }


# -- verdicts and report --------------------------------------------------------------------------

CONVENTIONS = (("pdf", "pdf alpha"), ("tail_index", "tail index kappa"), ("rank_size", "rank-size beta"))


def exponent_verdict(rows: list[dict[str, Any]]) -> str:
    """How many fitted exponents lie in (1, 2) in each convention."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return "does not hold: no fit succeeded"
    counts = {label: sum(1 for r in ok if 1.0 < r[key] < 2.0) for key, label in CONVENTIONS}
    detail = ", ".join(f"{label} {c} of {len(ok)}" for label, c in counts.items())
    every = [label for label, c in counts.items() if c == len(ok)]
    failed = f" ({len(rows) - len(ok)} fits failed)" if len(ok) < len(rows) else ""
    if every:
        return f"holds if the exponent is read as {' or '.join(every)}{failed}; in (1, 2): {detail}"
    if any(counts.values()):
        return f"depends on the convention and the domain{failed}; in (1, 2): {detail}"
    return f"does not hold in any convention{failed}"


def lr_verdict(rows: list[dict[str, Any]]) -> str:
    """Summary of the CSN likelihood-ratio tests (significance 0.1)."""
    words = []
    for alt in ("lognormal", "exponential"):
        tests = [r["lr"][alt] for r in rows if r.get("lr")]
        favoured = sum(1 for t in tests if t["R"] > 0 and t["p"] < 0.1)
        against = sum(1 for t in tests if t["R"] < 0 and t["p"] < 0.1)
        words.append(f"vs {alt}: power law favoured in {favoured}, {alt} in {against}, "
                     f"inconclusive in {len(tests) - favoured - against} of {len(tests)}")
    return "; ".join(words)


def share_verdict(shares: list[float]) -> str:
    inside = [s for s in shares if 0.4 <= s <= 0.6]
    if len(inside) == len(shares):
        return "holds (every top-10% share within 40-60%)"
    if inside:
        return f"depends on the domain/level: {len(inside)} of {len(shares)} shares within 40-60%"
    return f"does not hold: top-10% shares {min(shares):.0%}-{max(shares):.0%}"


def _f(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def tail_table(result: dict[str, Any]) -> list[str]:
    head = "| level | n (fit on) | status | pdf alpha | tail index | rank-size | x_min | KS | tail | LR vs lognormal R (p) | LR vs exponential R (p) | top 10% share |"
    lines = [head, "|" + "---|" * 12]
    rows = [(f"modules, {d}", r) for d, r in result["module_tails"].items()]
    rows.append((f"elements, ai ({result['element_tail']['elements']:,})", result["element_tail"]))
    for label, r in rows:
        lr = r.get("lr", {})
        cells = [label, str(r["n"]), r["status"], _f(r.get("pdf")), _f(r.get("tail_index")), _f(r.get("rank_size")),
                 _f(r.get("x_min"), ".3g"), _f(r.get("ks")), str(r.get("tail", "-"))]
        cells += [f"{t['R']:+.2f} ({t['p']:.2g})" if t else "-" for t in (lr.get("lognormal"), lr.get("exponential"))]
        cells.append(f"{r['shares']['top_10']:.1%}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def stability_table(result: dict[str, Any]) -> list[str]:
    lines = ["| examples | batches | bootstrap overlap | bootstrap Spearman | split-half overlap | split-half Spearman | median interval / value |",
             "|---|---|---|---|---|---|---|"]
    for r in result["stability"]:
        lines.append(f"| {r['examples']} | {r['batches']} | {_f(r['bootstrap_overlap'])} | {_f(r['bootstrap_rank_correlation'])} | "
                     f"{_f(r['split_half_overlap'])} | {_f(r['split_half_spearman'])} | {_f(r['median_relative_interval'])} |")
    return lines


def stable_count(result: dict[str, Any], threshold: float = 0.8) -> str:
    """The smallest example count whose split-half selection overlap reaches `threshold`."""
    for r in result["stability"]:
        if r["split_half_overlap"] >= threshold:
            return f"{r['examples']} examples ({r['batches']} batches) reach a split-half overlap >= {threshold:g}"
    largest = result["stability"][-1]["examples"] if result["stability"] else 0
    return f"not reached up to {largest} examples per half"


def model_sections(results: dict[str, dict[str, Any]], command: str) -> list[str]:
    """The self-contained claims: heavy tails, mass concentration, stability."""
    lines = ["## 1. Gradient norms across submodules are heavy-tailed with exponent in (1, 2)", "",
             "The CSN fit of SPEC 8.2 (`csn-mle`, the rules of `powerlaw` 2.0) on each domain's per-module "
             "`grad_norm_mean`, and on the element-level |mean gradient| of domain ai (fit on a seeded uniform "
             "sample; x_min, KS and the tail refer to the sample). LR: CSN's normalised log-likelihood ratio "
             "R of the power law against the alternative above the same x_min, with the p-value of its sign "
             "(R > 0 favours the power law).", ""]
    for r in results.values():
        lines += [f"### {r['model']}: {r['modules_count']} modules, {r['parameters']:,} parameters", ""]
        lines += [*tail_table(r), ""]
        rows = [*r["module_tails"].values(), r["element_tail"]]
        lines += [f"- exponent in (1, 2): {exponent_verdict(rows)}", f"- likelihood ratios: {lr_verdict(rows)}", ""]
    lines += [f"Regenerate: `{command}`", ""]
    lines += ["## 2. The top 10% of submodules (and of parameters) carry about 50% of the gradient mass", ""]
    lines += ["| model | level | top 1% | top 10% | top 20% | top 50% |", "|---|---|---|---|---|---|"]
    for r in results.values():
        for label, row in [*((f"modules, {d}", x) for d, x in r["module_tails"].items()), ("elements, ai", r["element_tail"])]:
            s = row["shares"]
            lines.append(f"| {r['model']} | {label} | {s['top_1']:.1%} | {s['top_10']:.1%} | {s['top_20']:.1%} | {s['top_50']:.1%} |")
    lines.append("")
    for r in results.values():
        mods = [x["shares"]["top_10"] for x in r["module_tails"].values()]
        lines += [f"- {r['model']}, modules: {share_verdict(mods)}",
                  f"- {r['model']}, parameters: {share_verdict([r['element_tail']['shares']['top_10']])}"]
    lines += ["", f"Regenerate: `{command}`", ""]
    lines += ["## 3. Blueprints stay valid over refreshes: how many calibration examples a stable blueprint needs", "",
              f"Domain {POOL}: for n examples, the bootstrap of SPEC 7.7 over the first n examples' batches "
              f"(expected selection overlap at a module-granularity budget of {BUDGET:g} and mean Spearman), and the "
              "agreement of two disjoint sets of n examples each (overlap 2|A and B|/(|A|+|B|) of their selected "
              "parameters, Spearman of their `grad_norm_mean`). The interval column is the median over modules "
              "of the 90% interval's width over the value.", ""]
    for r in results.values():
        lines += [f"### {r['model']}", "", *stability_table(r), "", f"- {stable_count(r)}", ""]
    lines += [f"Regenerate: `{command}`", ""]
    return lines


def write_report(results: dict[str, dict[str, Any]], out: Path, command: str, sizes: Sizes) -> None:
    """claims.md and claims.json under the stem `out`."""
    lines = ["# What the seed poster's claims are worth", "",
             "Measured by `benchmarks/claims.py` (the module docstring says how); each section names the command "
             "that regenerates it. Sizes: " + json.dumps(asdict(sizes)) + ".", ""]
    for r in results.values():
        lines.append(f"- {r['model']}: examples per domain {r['examples']}, batches {r['batches']}; "
                     f"{r['seconds']} s ({r['compute_seconds']} s for the blueprint)")
    lines.append("")
    lines += model_sections(results, command)
    lines += engine_sections(RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"sizes": asdict(sizes), "models": results}, indent=1) + "\n",
                                        encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke test of every code path")
    ap.add_argument("--models", default="minilm,smollm2", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/claims; /tmp/claims with --tiny)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--reuse", type=Path, default=None, metavar="JSON",
                    help="take the model measurements (sections 1-3) from an earlier claims.json and only "
                         "re-read the other benchmarks' results (sections 4-6), e.g. after a new fine-tuning run")
    args = ap.parse_args()
    if args.reuse:
        earlier = json.loads(args.reuse.read_text(encoding="utf-8"))
        out = Path(args.out or RESULTS / "claims")
        write_report(earlier["models"], out, "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/claims.py",
                     Sizes(**earlier["sizes"]))
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')} (sections 1-3 from {args.reuse})")
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = TINY if args.tiny else FULL
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)}")
    out = Path(args.out or ("/tmp/claims" if args.tiny else RESULTS / "claims"))
    command = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/claims.py" + (" --tiny" if args.tiny else "")
    if args.models != "minilm,smollm2":
        command += f" --models {args.models}"
    results = {}
    for key in keys:
        print(f"== {key}", flush=True)
        results[key] = measure(key, sizes)
        print(f"   {results[key]['seconds']} s", flush=True)
    write_report(results, out, command, sizes)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
