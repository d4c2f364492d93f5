"""Benchmark: throughput scaling of `compute_blueprint` with FSDP2 over processes (issue 12's
target: 2 processes finish a fixed calibration set in at most 0.6x the time of one).

The calibration set is fixed: SmolLM2-135M on chatterbot-corpus English, 3 domains x `--batches`
batches of `--batch-size` x `--seq-len` tokens. One process computes it alone (no sharding); N
processes (torchrun, gloo on the CPU or NCCL on CUDA) shard the model with FSDP2 and each takes
every N-th batch. The CPU threads are split evenly (`--threads` in all, default every core), so
both runs use the same cores. Timed: `compute_blueprint` alone (model loading and sharding
excluded), from a barrier to the returned blueprint, on rank 0.

    python benchmarks/compute_scaling.py [--nproc 2] [--threads 16] [--batches 8] [--device cpu]

This needs a machine with the cores for it: on the 2-core development machine two processes of
one thread each compete with everything else, and the figure says little (state it when quoting).
Writes benchmarks/results/compute_scaling.json (`--out` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("ai", "emotion", "coding")


def worker(args: argparse.Namespace) -> None:
    """One process of a run (alone, or one of torchrun's); rank 0 prints the timing as JSON."""
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.compute_memory import _batches
    from benchmarks.real_models import smollm2_folder
    from reference_impl.compute import ComputeConfig, compute_blueprint
    from reference_impl.losses import causal_lm_loss
    from reference_impl.sharded import launched_by_torchrun, process_group, shard_model

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    data = {c: _batches(tokenizer, c, args.batch_size, args.seq_len, args.batches) for c in CATEGORIES}
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    if not launched_by_torchrun():
        device = torch.device(args.device)
        config = ComputeConfig(model_path=folder, device=device, created="2026-01-01T00:00:00Z",
                               min_examples_per_aggregate=min(32, args.batch_size * args.batches))
        t0 = time.perf_counter()
        bp = compute_blueprint(model, data, causal_lm_loss, config)
        _report(args, bp, time.perf_counter() - t0, 1)
        return
    with process_group(args.device) as device:
        model = shard_model(model, device)
        config = ComputeConfig(model_path=folder, device=device, created="2026-01-01T00:00:00Z",
                               min_examples_per_aggregate=min(32, args.batch_size * args.batches))
        dist.barrier()
        t0 = time.perf_counter()
        bp = compute_blueprint(model, data, causal_lm_loss, config)
        dist.barrier()
        if dist.get_rank() == 0:
            _report(args, bp, time.perf_counter() - t0, dist.get_world_size())


def _report(args: argparse.Namespace, bp: Any, seconds: float, world: int) -> None:
    import torch

    print(json.dumps({"processes": world, "seconds": seconds, "threads_per_process": torch.get_num_threads(),
                      "batches": sum(d.batches for d in bp.domains), "examples": sum(d.examples for d in bp.domains)}))


def _run(cmd: list[str], threads: int) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all, split evenly")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batches", type=int, default=8, help="batches per domain (3 domains)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compute_scaling.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    flags = ["--worker", "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--batches",
             str(args.batches), "--device", args.device]
    one = _run([sys.executable, __file__, *flags], args.threads)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    many = _run([torchrun, "--standalone", f"--nproc_per_node={args.nproc}", __file__, *flags],
                max(1, args.threads // args.nproc))
    result = {"one": one, "many": many, "ratio": many["seconds"] / one["seconds"], "target": 0.6,
              "cores": os.cpu_count(), "settings": vars(args) | {"worker": None}}
    print(f"1 process: {one['seconds']:.1f} s; {args.nproc} processes: {many['seconds']:.1f} s; "
          f"ratio {result['ratio']:.2f} (target <= 0.6 for 2 processes); {os.cpu_count()} cores")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
