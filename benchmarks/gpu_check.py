"""The GPU check's driver: every step on one CUDA device, results in ONE file (see gpu_check.sh).

Steps, each in its own process with its own time limit (together at most 8 minutes):

* tests: the `cuda`-marked tests (`pytest -m cuda`);
* compute: SmolLM2-135M blueprints on chatterbot-corpus domains with bf16 weights (fp32
  accumulation of statistics) and, for reference, fp32 weights: wall time (CUDA-synchronised),
  torch.cuda.max_memory_allocated, and the bf16-vs-fp32 differences of benchmarks/compute_bf16.py;
* finetune: the fine-tuning engine's arms, `benchmarks/finetune_causal.py --device cuda --tiny`
  (its cost phase: step time from CUDA events, max_memory_allocated per arm);
* ghost_norms: `benchmarks/bench_ghost_norms.py --device cuda` (CUDA timings and peak memory).

The benchmarks run in a scratch copy of benchmarks/ (their own result files land there, not in
the repository); the driver gathers their JSON into the one results file,
benchmarks/results/gpu_check.json by default.

`--dry-run` runs the same steps on the CPU at tiny sizes: every step finds "SmolLM2" through
`benchmarks.real_models.smollm2_folder()`, which honours GB_MODEL_CACHE, and the dry run points
it at a stand-in folder holding a tiny random Llama (2 layers, hidden size 16, tied embeddings,
SmolLM2's vocabulary) with SmolLM2's own tokenizer; the benchmarks run at their `--tiny` sizes
(the engine with two arms) and the cuda tests skip. It proves the script works on a machine
without a GPU, and a test runs it.

    python benchmarks/gpu_check.py [--dry-run] [--out FILE] [--steps tests,compute,finetune,ghost_norms]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("tests", "compute", "finetune", "ghost_norms")
#: Seconds each step may take on the GPU machine; their sum stays under the 8-minute budget.
LIMITS = {"tests": 90, "compute": 120, "finetune": 180, "ghost_norms": 60}
#: The CPU rehearsal's steps are smaller but the CPU is slower: this many times the limits.
DRY_RUN_SLACK = 4
CATEGORIES = ("ai", "emotion", "coding")


# ----------------------------------------------------------------------------------------------
# The compute step (runs in a child process: `--child compute`)


def stand_in_smollm2(cache: Path) -> Path:
    """`cache`/smollm2-135m-instruct: a tiny random Llama (RMSNorm, tied embeddings, SmolLM2's
    vocabulary) with SmolLM2's tokenizer files, for the dry run (see the module docstring).

    The tokenizer and config come from the converted folder when it is cached, else straight from
    the GGUF's metadata: a fresh clone need not convert 540 MB of weights to rehearse."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from benchmarks.real_models import CACHE, smollm2_gguf

    real = Path(os.environ.get("GB_MODEL_CACHE", CACHE)) / "smollm2-135m-instruct"
    source: dict[str, Any] = {}
    if not (real / "tokenizer.json").is_file():
        gguf = smollm2_gguf()
        real, source = gguf.parent, {"gguf_file": gguf.name}
    target = cache / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    config = AutoConfig.from_pretrained(real, local_files_only=True, **source)
    config.update({"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "num_key_value_heads": 1, "head_dim": 8, "tie_word_embeddings": True})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(real, local_files_only=True, **source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(target)
    return target


def _calibration(dry_run: bool, folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Domain -> batches of chatterbot utterances (8 x 128 tokens, 8 batches; dry run 4 x 32, 2)."""
    from transformers import AutoTokenizer

    from benchmarks.compute_memory import _batches

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    size, seq_len, n = (4, 32, 2) if dry_run else (8, 128, 8)
    return {c: _batches(tokenizer, c, size, seq_len, n) for c in CATEGORIES}


def _timed_blueprint(folder: Path, data: dict[str, Any], dtype: str, device: str) -> tuple[Any, dict[str, Any]]:
    """A blueprint of the model in `folder`, with its wall time and peak device memory."""
    import torch
    from transformers import AutoModelForCausalLM

    from reference_impl.compute import ComputeConfig, compute_blueprint
    from reference_impl.losses import causal_lm_loss

    cuda = device == "cuda"
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=torch_dtype)
    model.to(device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    config = ComputeConfig(model_path=folder, device=device, precision=dtype, created="2026-01-01T00:00:00Z",
                           min_examples_per_aggregate=8)
    t0 = time.perf_counter()
    bp = compute_blueprint(model, data, causal_lm_loss, config)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    stats: dict[str, Any] = {"dtype": dtype, "seconds": seconds, "modules": len(bp.modules),
                             "batches": sum(d.batches for d in bp.domains), "device_kind": bp.method.device_kind}
    if cuda:
        stats["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        stats["weights_and_before_mib"] = before / 2**20
    return bp, stats


def compute_child(dry_run: bool, device: str) -> dict[str, Any]:
    """The compute step's result (see the module docstring)."""
    import blueprint_format as bf
    from benchmarks.compute_bf16 import compare
    from benchmarks.real_models import smollm2_folder

    folder = smollm2_folder()
    data = _calibration(dry_run, folder)
    low, low_stats = _timed_blueprint(folder, data, "bf16", device)
    ref, ref_stats = _timed_blueprint(folder, data, "fp32", device)
    problems = [str(i) for i in bf.validate(low) if i.is_error]
    model = "tiny stand-in Llama with SmolLM2's tokenizer" if dry_run else "SmolLM2-135M-Instruct"
    return {"model": model, "bf16": low_stats,
            "fp32": ref_stats, "bf16_vs_fp32": compare(ref, low), "bf16_blueprint_valid": not problems,
            "problems": problems[:5]}


# ----------------------------------------------------------------------------------------------
# Running the steps


def _sandbox(tmp: Path) -> Path:
    """A scratch copy of benchmarks/ beside links to the packages: the benchmarks' own result
    files land in it. Scripts are copied (they locate results from their own path)."""
    (tmp / "benchmarks").mkdir()
    for f in (ROOT / "benchmarks").glob("*.py"):
        shutil.copy(f, tmp / "benchmarks" / f.name)
    cache = ROOT / "benchmarks" / ".cache"
    cache.mkdir(exist_ok=True)
    (tmp / "benchmarks" / ".cache").symlink_to(cache)
    for pkg in ("reference_impl", "blueprint_format", "converters", "spec", "tests"):
        (tmp / pkg).symlink_to(ROOT / pkg)
    return tmp


def _commands(step: str, dry_run: bool, device: str, box: Path) -> tuple[list[str], str | None]:
    """The step's command line and the name of the JSON file it leaves somewhere under the
    scratch copy's benchmarks/ (None: parse its stdout)."""
    py = sys.executable
    if step == "tests":
        return [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")], None
    if step == "compute":
        return [py, str(Path(__file__).resolve()), "--child", "compute", *(["--dry-run"] if dry_run else [])], None
    if step == "finetune":
        cmd = [py, str(box / "benchmarks" / "finetune_causal.py"), "--device", device, "--tiny"]
        if dry_run:
            cmd += ["--arms", "blueprint element"]
        return cmd, "finetune_causal_tiny" + ("_cuda" if device == "cuda" else "") + ".json"
    out = box / "benchmarks" / "results" / "ghost_norms_check"
    cmd = [py, str(box / "benchmarks" / "bench_ghost_norms.py"), "--device", device, "--out", str(out)]
    return cmd + (["--tiny"] if dry_run else []), out.name + ".json"


def run_step(step: str, dry_run: bool, device: str, box: Path) -> dict[str, Any]:
    """Run one step in its own process within its time limit; its status, time and result."""
    cmd, produced = _commands(step, dry_run, device, box)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(box))
    if dry_run:
        env["GB_MODEL_CACHE"] = str(box / "stand-in-models")
    t0 = time.perf_counter()
    record: dict[str, Any] = {"command": " ".join(cmd)}
    try:
        limit = LIMITS[step] * (DRY_RUN_SLACK if dry_run else 1)
        proc = subprocess.run(cmd, env=env, cwd=box, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        record.update(status="timeout", seconds=time.perf_counter() - t0, output_tail=tail[-2000:])
        return record
    record.update(seconds=time.perf_counter() - t0, returncode=proc.returncode,
                  status="ok" if proc.returncode == 0 else "failed",
                  output_tail=(proc.stdout + proc.stderr)[-2000:])
    found = sorted((box / "benchmarks").rglob(produced)) if produced is not None else []
    if proc.returncode == 0:
        if found:
            record["result"] = json.loads(found[0].read_text())
        elif step == "compute":
            record["result"] = json.loads(proc.stdout.strip().splitlines()[-1])
        elif step == "tests":
            record["result"] = {"summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""}
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, same steps")
    ap.add_argument("--out", default=None, help="the results file (default benchmarks/results/gpu_check.json; "
                    "dry run: benchmarks/output/gpu_check_dry_run.json)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--child", choices=("compute",), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if args.child:
        print(json.dumps(compute_child(args.dry_run, device)))
        return 0
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        ap.error(f"--steps: unknown step(s) {unknown}; choose from {','.join(STEPS)}")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; use --dry-run for the CPU rehearsal", file=sys.stderr)
            return 2
    default = "benchmarks/output/gpu_check_dry_run.json" if args.dry_run else "benchmarks/results/gpu_check.json"
    out = Path(args.out) if args.out else ROOT / default
    report: dict[str, Any] = {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "dry_run": args.dry_run,
        "device": device, "limits_s": {s: LIMITS[s] for s in steps}, "steps": {},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        box = _sandbox(Path(tmp))
        if args.dry_run:
            stand_in_smollm2(box / "stand-in-models")
        for step in steps:
            report["steps"][step] = run_step(step, args.dry_run, device, box)
            print(f"gpu_check: {step}: {report['steps'][step]['status']} in {report['steps'][step]['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
    report["seconds"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: wrote {out} ({report['seconds']:.0f} s)", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
