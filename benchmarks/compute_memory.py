"""Benchmark: peak memory of `compute_blueprint` on SmolLM2-135M, as a multiple of the fp32 weights.

Each configuration runs in a fresh subprocess, one at a time (so RSS figures do not mix):

1. imports, the tokenizer, the calibration batches (chatterbot-corpus English utterances, one
   domain per category) and the model's code are ready (the model class is built once on the
   meta device, without weights: transformers' modeling code costs about 110 MB of RSS on its
   own): the process baseline RSS is read here;
2. the model is loaded (fp32, or bf16 with --dtype bf16) and the peak RSS counter (VmHWM) is reset
   (`/proc/self/clear_refs`), so the model loader's own transient peak is not counted;
3. `compute_blueprint` runs; the peak RSS is read afterwards.

Reported: (peak - baseline) / fp32 weight bytes, the figure issue 12 bounds (<= 2.3 at element
granularity, <= 2.1 at module granularity, for any number of domains). The `plain` configuration
is the floor any gradient method pays: forward + backward of the same batches, weights plus
gradients plus activations, with the gradients dropped after each batch.

    python benchmarks/compute_memory.py [--domains 1 3] [--granularity plain module element] \
        [--batch-size 8] [--seq-len 32] [--batches 4] [--dtype fp32] [--mmap-threshold BYTES] \
        [--out benchmarks/results/compute_memory.json]

`--mmap-threshold` runs the children with MALLOC_MMAP_THRESHOLD_ set (glibc): tensors above that
size are mapped and unmapped individually instead of being served from the heap, whose freed
space glibc keeps (by default the threshold rises with the largest freed block, up to 32 MiB).

Memory only: the figures do not depend on machine load (timings are not reported).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("ai", "emotion", "coding", "trivia", "psychology")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def _batches(tokenizer: Any, category: str, batch_size: int, seq_len: int, n_batches: int) -> list[dict[str, Any]]:
    from benchmarks.real_models import chatterbot_utterances

    texts = [t for _, t in chatterbot_utterances([category])][: batch_size * n_batches]
    if len(texts) < batch_size * n_batches:
        raise SystemExit(f"category {category!r} has only {len(texts)} utterances")
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], padding="max_length", truncation=True, max_length=seq_len,
                        return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process (see the module docstring)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from benchmarks.real_models import smollm2_folder
    from reference_impl.compute import ComputeConfig, compute_blueprint
    from reference_impl.losses import causal_lm_loss

    torch.set_num_threads(args.threads)
    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    n_domains = args.domains[0]
    data = {c: _batches(tokenizer, c, args.batch_size, args.seq_len, args.batches) for c in CATEGORIES[:n_domains]}
    with torch.device("meta"):  # the model's code, without weights
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))
    baseline = _status_kib("VmRSS")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=dtype)
    model.eval()
    weight_bytes_fp32 = 4 * sum(p.numel() for p in model.parameters())
    loaded = _status_kib("VmRSS")
    _reset_peak()
    granularity = args.granularity[0]
    if granularity == "plain":
        for batches in data.values():
            for b in batches:
                causal_lm_loss(model, b).backward()
                model.zero_grad(set_to_none=True)
    else:
        config = ComputeConfig(model_path=folder, granularity=granularity, device="cpu",
                               min_examples_per_aggregate=min(32, args.batch_size * args.batches),
                               created="2026-01-01T00:00:00Z")
        compute_blueprint(model, data, causal_lm_loss, config)
    peak = _status_kib("VmHWM")
    return {
        "granularity": granularity, "domains": n_domains, "dtype": args.dtype,
        "batch_size": args.batch_size, "seq_len": args.seq_len, "batches_per_domain": args.batches,
        "baseline_mib": baseline / 1024, "after_load_mib": loaded / 1024, "peak_mib": peak / 1024,
        "fp32_weight_mib": weight_bytes_fp32 / 2**20,
        "peak_over_baseline_x_weights": (peak - baseline) * 1024 / weight_bytes_fp32,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }


def markdown(rows: list[dict[str, Any]], before: list[dict[str, Any]] | None = None) -> str:
    """A table of the measurements (and of the same settings measured `before`, when given)."""
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["granularity"], r["domains"], r["batch_size"], r["seq_len"], r.get("malloc_mmap_threshold"))

    old = {key(r): r for r in before or []}
    lines = [
        "| granularity | domains | batch x seq | glibc mmap threshold | peak - baseline (MiB) | / fp32 weights |"
        + (" before this change |" if before else ""),
        "|---|---|---|---|---|---|" + ("---|" if before else ""),
    ]
    for r in rows:
        prev = old.get(key(r))
        lines.append(
            f"| {r['granularity']} | {r['domains']} | {r['batch_size']} x {r['seq_len']} | "
            f"{r.get('malloc_mmap_threshold') or 'default'} | {r['peak_mib'] - r['baseline_mib']:.0f} | "
            f"{r['peak_over_baseline_x_weights']:.2f} |"
            + ((f" {prev['peak_over_baseline_x_weights']:.2f} |" if prev else " - |") if before else "")
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--granularity", nargs="+", default=["plain", "module", "element"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4, help="batches per domain")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mmap-threshold", type=int, default=None, metavar="BYTES",
                    help="run the children with MALLOC_MMAP_THRESHOLD_=BYTES (glibc)")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    ap.add_argument("--append", action="store_true", help="add to the rows already in --out")
    ap.add_argument("--render", nargs="+", metavar="JSON", default=None,
                    help="print the markdown table of a results file (a second file: the rows before)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.render:
        rows = json.loads(Path(args.render[0]).read_text())
        before = json.loads(Path(args.render[1]).read_text()) if len(args.render) > 1 else None
        print(markdown(rows, before), end="")
        return
    rows = []
    for granularity in args.granularity:
        for domains in args.domains if granularity != "plain" else args.domains[-1:]:
            cmd = [sys.executable, __file__, "--worker", "--granularity", granularity, "--domains", str(domains),
                   "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--batches",
                   str(args.batches), "--dtype", args.dtype, "--threads", str(args.threads)]
            env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
            if args.mmap_threshold is not None:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=ROOT)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-3000:])
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{granularity:>8} {domains} domain(s): baseline {row['baseline_mib']:.0f} MiB, "
                  f"peak {row['peak_mib']:.0f} MiB, (peak - baseline) / fp32 weights = "
                  f"{row['peak_over_baseline_x_weights']:.2f}", flush=True)
    if args.out:
        out = Path(args.out)
        old = json.loads(out.read_text()) if args.append and out.is_file() else []
        out.write_text(json.dumps(old + rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
