"""Benchmark: what bf16 weights do to a blueprint's statistics, against fp32, on SmolLM2-135M.

Two blueprints of the same model on the same calibration batches (chatterbot-corpus English
utterances, one domain per category), element granularity, global budget 0.2:

* fp32: weights and statistics in float32 (the reference);
* bf16: weights loaded in bfloat16 (`blueprint compute --dtype bf16`), forward and backward in
  bf16; the collector accumulates every gradient norm in float64 and keeps the running gradient
  sums in float32 (reference_impl/collector.py), so only the gradients themselves carry bf16 error.

Reported: relative differences |bf16 - fp32| / fp32 of every per-module statistic (median, 90th
percentile, max over modules and domains), Spearman rank correlation of the combined scores,
and the k* allocation: overlap of the selected parameters (sum over modules of min(k*) x size,
over the budget) and the largest per-module change of k*.

    python benchmarks/compute_bf16.py [--batch-size 4] [--seq-len 32] [--batches 4] [--domains 2] \
        [--out benchmarks/results/compute_bf16]    # writes OUT.json and OUT.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CATEGORIES = ("ai", "emotion", "coding", "trivia", "psychology")
STATS = ("grad_norm_mean", "grad_norm_median", "grad_norm_sq_mean", "mean_grad_norm")


def _blueprint(dtype: str, args: argparse.Namespace) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.compute_memory import _batches
    from benchmarks.real_models import smollm2_folder
    from reference_impl.compute import ComputeConfig, compute_blueprint
    from reference_impl.losses import causal_lm_loss

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    data = {c: _batches(tokenizer, c, args.batch_size, args.seq_len, args.batches) for c in CATEGORIES[: args.domains]}
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=torch_dtype)
    config = ComputeConfig(model_path=folder, device=args.device, precision=dtype, created="2026-01-01T00:00:00Z",
                           min_examples_per_aggregate=min(32, args.batch_size * args.batches))
    return compute_blueprint(model, data, causal_lm_loss, config)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(ref: Any, low: Any) -> dict[str, Any]:
    """The differences the module docstring lists, bf16 (`low`) against fp32 (`ref`)."""
    rel: dict[str, list[float]] = {k: [] for k in STATS}
    largest: list[tuple[float, str, str, float]] = []  # (rel. diff of grad_norm_mean, module, domain, fp32 value)
    for mr, ml in zip(ref.modules, low.modules):
        for d in ref.domain_names:
            for k in STATS:
                x, y = getattr(mr.stats[d], k), getattr(ml.stats[d], k)
                rel[k].append(abs(y - x) / x if x > 0 else 0.0)
            largest.append((rel["grad_norm_mean"][-1], mr.name, d, mr.stats[d].grad_norm_mean))
    largest.sort(reverse=True)
    median_norm = float(np.median([w[3] for w in largest]))
    sizes = np.array([m.parameter_count for m in ref.modules], dtype=np.float64)
    k_ref = np.array([m.k_star or 0.0 for m in ref.modules])
    k_low = np.array([m.k_star or 0.0 for m in low.modules])
    selected = float((k_ref * sizes).sum())
    worst = int(np.argmax(np.abs(k_low - k_ref)))
    return {
        "relative_difference": {
            k: {"median": float(np.median(v)), "p90": float(np.quantile(v, 0.9)), "max": float(np.max(v))}
            for k, v in rel.items()
        },
        "combined_score_spearman": _spearman(
            np.array([m.combined.score for m in ref.modules]), np.array([m.combined.score for m in low.modules])
        ),
        "selected_parameter_overlap": float((np.minimum(k_ref, k_low) * sizes).sum() / selected) if selected else 1.0,
        "trainable_fraction": {"fp32": ref.allocation.trainable_fraction, "bf16": low.allocation.trainable_fraction},
        "largest_k_star_change": {"module": ref.modules[worst].name, "fp32": float(k_ref[worst]),
                                  "bf16": float(k_low[worst])},
        "modules": len(ref.modules),
        "median_grad_norm_mean": median_norm,
        "largest_grad_norm_mean_differences": [
            {"module": m, "domain": d, "relative_difference": r, "fp32_grad_norm_mean": v} for r, m, d, v in largest[:5]
        ],
    }


def _markdown(result: dict[str, Any], cmd: str) -> str:
    lines = [
        "# bf16 weights vs fp32: effect on SmolLM2-135M's blueprint",
        "",
        f"Command: `{cmd}`. Settings: {json.dumps(result['settings'])}.",
        "",
        "bf16: weights in bfloat16, forward and backward in bf16; gradient norms accumulated in float64",
        "and running gradient sums kept in float32 (fp32 accumulation of statistics).",
        "",
        "| statistic | median rel. diff | p90 | max |",
        "| --- | --- | --- | --- |",
    ]
    for k, v in result["relative_difference"].items():
        lines.append(f"| {k} | {v['median']:.2e} | {v['p90']:.2e} | {v['max']:.2e} |")
    k = result["largest_k_star_change"]
    lines += [
        "",
        f"- Spearman rank correlation of combined scores over {result['modules']} modules: "
        f"{result['combined_score_spearman']:.4f}",
        f"- Selected parameters shared by both allocations: {result['selected_parameter_overlap']:.4f} of the budget",
        f"- Trainable fraction: fp32 {result['trainable_fraction']['fp32']:.4f}, bf16 {result['trainable_fraction']['bf16']:.4f}",
        f"- Largest k* change: {k['module']} {k['fp32']:.4f} (fp32) -> {k['bf16']:.4f} (bf16)",
        "",
        f"Largest differences of grad_norm_mean (the median module's fp32 value is {result['median_grad_norm_mean']:.3g}):",
        "",
        "| module | domain | rel. diff | fp32 grad_norm_mean |",
        "| --- | --- | --- | --- |",
        *[f"| {w['module']} | {w['domain']} | {w['relative_difference']:.3f} | {w['fp32_grad_norm_mean']:.3g} |"
          for w in result["largest_grad_norm_mean_differences"]],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4, help="batches per domain")
    ap.add_argument("--domains", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    ref = _blueprint("fp32", args)
    print("fp32 blueprint done", file=sys.stderr, flush=True)
    low = _blueprint("bf16", args)
    print("bf16 blueprint done", file=sys.stderr, flush=True)
    result = compare(ref, low)
    result["settings"] = {k: getattr(args, k) for k in ("batch_size", "seq_len", "batches", "domains", "device")}
    cmd = "python benchmarks/compute_bf16.py " + " ".join(sys.argv[1:])
    print(_markdown(result, cmd))
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
        Path(args.out + ".md").write_text(_markdown(result, cmd))


if __name__ == "__main__":
    main()
