"""Data selection by per-example gradient norm: top, middle, lowest and random bands on two models,
and the combined parameter x data budget on SmolLM2.

Question: does training on the share q of a pool picked by per-example gradient norm (ghost norms,
`blueprint select-data`) do better than a random share of the same size, and which band of the
ranking helps: the highest norms (the claim), the ranks around the median, or the lowest? And
does parameter selection (a blueprint at k = 0.2, the sparse engine) times data selection
(q = 0.3) keep "72% of the performance at 6% of the cost" of full fine-tuning on all data?

Tasks and bands: benchmarks/data_selection_arms.py (MiniLM + new head on trump_tweets, accuracy;
SmolLM2-135M-Instruct causal LM on chatterbot-corpus utterances with 20% held out, eval loss).
The pool is scored once per model (per seed for MiniLM, whose new head depends on the seed) by
the untrained model over all its modules, and every band of that seed is cut from those scores.
Arms per model and seed: all data (q = 1) and each band at q, all parameters trainable (k = 1);
for the models in `--combined`, the same again at k (element granularity, the publisher's
blueprint and its sidecar). MiniLM also runs the bands within each label (`per_label`, the
`--balance-labels` of select-data), since an untrained head's norms favour one class. Every arm
uses the same optimizer (AdamW), learning rate, batch size and number of epochs over its own
subset, so a q = 0.3 arm takes about 0.3 of the steps.

Quality: eval accuracy (MiniLM) or token-weighted mean eval loss (SmolLM2); gain = the change from
the untrained model in the direction of better; performance = gain / gain of full fine-tuning on
all data. Cost: training FLOPs (reference_impl.meter.FlopCounter through the fine-tuning meter:
forward, activation gradients, and weight gradients of what is trained, the sparse engine's share
for k < 1) and training wall time (evaluation excluded), both relative to full fine-tuning on all
data; "incl. scoring" adds the scoring pass (a forward and the activation gradients over the
whole pool) to every band chosen by scores. Each arm is a process of its own with `--threads`
torch threads, arms interleaved within a seed; a band is told from noise by the paired
difference to the random band of the same seed (mean, sd, and whether a paired t-test over the
seeds rejects "no difference" at the 5% level, two-sided).

Run (alone on the machine, one torch thread per arm, 3 seeds; estimated from the counted FLOPs at
25-50 GFLOP/s per thread, not measured: MiniLM 35-70 minutes, SmolLM2 2-4 hours, a third less
with `--seeds 2`, about half with `--set smollm2.epochs=1`):
`HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/data_selection.py`. Writes
benchmarks/results/data_selection.{json,md,png}, rewritten after every arm. `--models minilm` or
`--models smollm2` runs one model and keeps the other model's rows of the results file it
rewrites, so the two can run at different times; `--reuse FILE` keeps the rows of an earlier run
with the same settings (more seeds, a cut run); `--set smollm2.lr=1e-4` changes one setting.
`--tiny` is a smoke run on slices of the data (minutes; results under
benchmarks/output/data_selection/tiny/).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.data_selection_arms import BANDS, TASKS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "benchmarks" / "output" / "data_selection"
#: Per-model settings (n_pool / n_eval None: the whole split).
FULL: dict[str, dict[str, Any]] = {
    "minilm": {"n_pool": 1200, "n_eval": 800, "batch": 16, "eval_batch": 64, "seq_len": 64, "epochs": 2,
               "lr": 1e-4, "bp_batches": 16},
    "smollm2": {"n_pool": None, "n_eval": None, "batch": 16, "eval_batch": 32, "seq_len": 64, "epochs": 2,
                "lr": 5e-5, "bp_batches": 16},
}
TINY: dict[str, dict[str, Any]] = {
    "minilm": {"n_pool": 48, "n_eval": 32, "batch": 8, "eval_batch": 32, "seq_len": 32, "epochs": 1,
               "lr": 1e-4, "bp_batches": 2},
    "smollm2": {"n_pool": 40, "n_eval": 16, "batch": 4, "eval_batch": 16, "seq_len": 32, "epochs": 1,
                "lr": 5e-5, "bp_batches": 2},
}
#: What a row's arm is: rows of different seeds with the same key are the same arm.
ARM_KEY = ("model", "k", "q", "band", "per_label")


# ----------------------------------------------------------------------------------------------
# preparation and child processes


def prepare(name: str, settings: dict[str, Any], folder: Path, blueprint: bool) -> tuple[dict[str, str], dict[str, int]]:
    """Write the pool and eval files, and the publisher's blueprint when k < 1 arms need it;
    returns the paths and the example counts."""
    from benchmarks.data_selection_arms import compute_publisher_blueprint, pool_and_eval, write_jsonl

    folder.mkdir(parents=True, exist_ok=True)
    pool, held = pool_and_eval(name, settings["n_pool"], settings["n_eval"])
    paths = {"pool": str(folder / "pool.jsonl"), "eval": str(folder / "eval.jsonl")}
    write_jsonl(Path(paths["pool"]), pool)
    write_jsonl(Path(paths["eval"]), held)
    if blueprint:  # cached per calibration data and shape: a changed pool or --set gets its own
        made_of = {k: settings[k] for k in ("batch", "seq_len", "bp_batches")}
        key = hashlib.sha256(Path(paths["pool"]).read_bytes() + json.dumps(made_of).encode()).hexdigest()[:12]
        bp = folder / f"blueprint-{key}.json"
        if not bp.exists():
            t0 = time.perf_counter()
            compute_publisher_blueprint({"model": name, **settings, **paths}, bp)
            print(f"{name}: blueprint computed in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        paths["blueprint"] = str(bp)
    print(f"{name}: pool {len(pool)}, eval {len(held)} examples", file=sys.stderr, flush=True)
    return paths, {"pool_examples": len(pool), "eval_examples": len(held)}


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one scoring or training arm in a process of its own, with its thread count."""
    from benchmarks.arm_process import run_arm

    return run_arm(__file__, spec, f"{spec.get('band', spec['phase'])} of {spec['model']}")


def _arm_main(spec: dict[str, Any]) -> int:
    import torch

    from benchmarks.data_selection_arms import run_score, run_train

    torch.set_num_threads(int(spec["threads"]))
    print(json.dumps(run_score(spec) if spec["phase"] == "score" else run_train(spec)))
    return 0


def arms_of(name: str, q: float, ks: list[float], per_label: bool) -> list[dict[str, Any]]:
    """The arms of one model for one seed, in the order they run."""
    out = []
    for k in ks:
        out.append({"k": k, "q": 1.0, "band": "all", "per_label": False})
        for band in BANDS:
            out.append({"k": k, "q": q, "band": band, "per_label": False})
        if per_label and TASKS[name].labelled:
            out += [{"k": k, "q": q, "band": b, "per_label": True} for b in BANDS if b != "random"]
    return out


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in ARM_KEY)


def run_model_seed(name: str, seed: int, base: dict[str, Any], ks: list[float], rows: list[dict[str, Any]],
                   scoring: dict[str, dict[str, Any]], report: Any) -> None:
    """Score the pool (when this seed needs its own scores) and run every arm not in `rows`."""
    task = TASKS[name]
    done = {(*_key(r), r["seed"]) for r in rows}
    todo = [a for a in arms_of(name, base["q"], ks, base["per_label"])
            if (name, a["k"], a["q"], a["band"], a["per_label"], seed) not in done]
    if not todo:
        return
    score_seed = seed if task.seeded_init else 0
    scores = str(Path(base["folder"]) / f"scores-seed{score_seed}.jsonl")
    if scores not in scoring:
        scoring[scores] = spawn({**base, "phase": "score", "seed": score_seed, "scores": scores})
        print(f"  {name} seed {score_seed}: scored the pool in {scoring[scores]['select_s']:.1f} s "
              f"({scoring[scores]['select_flops'] / 1e9:.1f} GFLOPs)", file=sys.stderr, flush=True)
    cost = scoring[scores]
    for arm in todo:
        by_scores = arm["band"] not in ("all", "random")
        r = spawn({**base, **arm, "phase": "train", "seed": seed, "scores": scores})
        rows.append({"model": name, **arm, "seed": seed, "lr": base["lr"], "epochs": base["epochs"],
                     "granularity": base["granularity"] if arm["k"] < 1 else "all", **r,
                     "select_flops": cost["select_flops"] if by_scores else 0,
                     "select_s": cost["select_s"] if by_scores else 0.0})
        q_key = TASKS[name].quality
        print(f"  {name} seed {seed} k={arm['k']:g} q={arm['q']:g} {arm['band']}{' per-label' if arm['per_label'] else ''}"
              f": {q_key} {r[q_key]:.4f} (from {r[q_key + '0']:.4f}), {r['steps']} steps, {r['train_s']:.0f} s",
              file=sys.stderr, flush=True)
        report()


# ----------------------------------------------------------------------------------------------
# summary


def _sign(name: str) -> float:
    return 1.0 if TASKS[name].higher_is_better else -1.0


def _gain(r: dict[str, Any]) -> float:
    key = TASKS[r["model"]].quality
    return _sign(r["model"]) * (float(r[key]) - float(r[key + "0"]))


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per arm: means over seeds relative to full fine-tuning on all data of the same
    model, and the paired difference to the random band of the same (model, k, q, seed)."""
    arms: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        arms.setdefault(_key(r), []).append(r)
    out = []
    for key, rs in arms.items():
        name = key[0]
        full = arms.get((name, 1.0, 1.0, "all", False))
        if not full:
            continue
        qk = TASKS[name].quality
        f_gain = statistics.fmean(_gain(r) for r in full)
        f_flops = statistics.fmean(r["train_flops"] for r in full)
        f_time = statistics.fmean(r["train_s"] for r in full)
        flops = statistics.fmean(r["train_flops"] for r in rs)
        sel = statistics.fmean(r["select_flops"] for r in rs)
        entry = {
            **dict(zip(ARM_KEY, key)), "seeds": len(rs), qk: statistics.fmean(r[qk] for r in rs),
            f"{qk}_sd": _sd([r[qk] for r in rs]), f"{qk}0": statistics.fmean(r[qk + "0"] for r in rs),
            "gain": statistics.fmean(_gain(r) for r in rs),
            "performance": statistics.fmean(_gain(r) for r in rs) / f_gain if f_gain else float("nan"),
            "rel_flops": flops / f_flops, "rel_flops_with_selection": (flops + sel) / f_flops,
            "rel_time": statistics.fmean(r["train_s"] for r in rs) / f_time,
            "rel_time_with_selection": statistics.fmean(r["train_s"] + r["select_s"] for r in rs) / f_time,
            "steps": statistics.fmean(r["steps"] for r in rs), "examples": rs[0]["examples"],
            "tokens": statistics.fmean(r.get("tokens", float("nan")) for r in rs),
            "trainable_params": rs[0]["trainable_params"], "score_mean": statistics.fmean(r["score_mean"] for r in rs),
        }
        if "label1_share" in rs[0]:
            entry["label1_share"] = statistics.fmean(r["label1_share"] for r in rs)
        entry.update(_versus_random(rs, arms.get((name, key[1], key[2], "random", False), [])))
        out.append(entry)
    return out


#: Two-sided 95% quantiles of Student's t with 1..30 degrees of freedom (the normal's beyond).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def _versus_random(rs: list[dict[str, Any]], rnd: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired (same seed) difference of the gain to the random band's; `distinct`: a paired t-test
    over the seeds rejects "no difference" at the 5% level (two-sided)."""
    by_seed = {r["seed"]: r for r in rnd}
    diffs = [_gain(r) - _gain(by_seed[r["seed"]]) for r in rs if r["seed"] in by_seed]
    if not diffs or rs[0]["band"] in ("random", "all"):
        return {}
    mean, sd = statistics.fmean(diffs), _sd(diffs)
    n = len(diffs)
    distinct = n > 1 and sd == sd and abs(mean) > (T975[n - 2] if n - 1 <= len(T975) else 1.96) * sd / n**0.5
    return {"vs_random": mean, "vs_random_sd": sd, "vs_random_seeds": len(diffs), "vs_random_distinct": distinct}


# ----------------------------------------------------------------------------------------------
# report


def _arm_name(s: dict[str, Any]) -> str:
    return str(s["band"]) + (" per label" if s["per_label"] else "")


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None or x != x else format(x, spec)


def model_table(name: str, summary: list[dict[str, Any]]) -> list[str]:
    """The markdown table of one model's arms."""
    qk = TASKS[name].quality
    labelled = TASKS[name].labelled
    lines = [f"| k | q | band | seeds | {qk} mean (sd) | performance | gain vs random (sd) | FLOPs rel. | incl. scoring "
             f"| time rel. | incl. scoring | steps | examples | tokens per epoch | mean score |"
             + (" iPhone share |" if labelled else ""), "|---" * (15 + labelled) + "|"]
    for s in sorted((s for s in summary if s["model"] == name), key=lambda s: (-s["k"], -s["q"], s["per_label"],
                                                                               ["all", *BANDS].index(s["band"]))):
        vs = "-" if "vs_random" not in s else (f"{s['vs_random']:+.4f} ({_fmt(s['vs_random_sd'], '.4f')})"
                                               + (" *" if s["vs_random_distinct"] else ""))
        lines.append(
            f"| {s['k']:g} | {s['q']:g} | {_arm_name(s)} | {s['seeds']} | {s[qk]:.4f} ({_fmt(s[qk + '_sd'], '.4f')}) "
            f"| {s['performance']:.0%} | {vs} | {s['rel_flops']:.1%} | {s['rel_flops_with_selection']:.1%} "
            f"| {s['rel_time']:.1%} | {s['rel_time_with_selection']:.1%} | {s['steps']:.0f} | {s['examples']} "
            f"| {_fmt(s['tokens'], '.0f')} | {s['score_mean']:.3g} |" + (f" {s['label1_share']:.2f} |" if labelled else ""))
    return lines


def band_verdict(name: str, summary: list[dict[str, Any]], q: float) -> list[str]:
    """Which band at q (all parameters trainable) beats the random band, beyond the seed noise."""
    arms = [s for s in summary if s["model"] == name and s["k"] == 1.0 and s["q"] == q and "vs_random" in s]
    if not arms:
        return []
    out = []
    for s in arms:
        if s["vs_random_distinct"]:
            word = "better than" if s["vs_random"] > 0 else "worse than"
        else:
            word = "not distinguishable from"
        out.append(f"- {_arm_name(s)}: {word} random ({s['vs_random']:+.4f} gain over {s['vs_random_seeds']} "
                   "paired seeds)")
    return out


def combined_verdict(name: str, summary: list[dict[str, Any]]) -> list[str]:
    """The seed poster's 72% of the performance at 6% of the cost, for every k < 1, q < 1 arm."""
    arms = [s for s in summary if s["model"] == name and s["k"] < 1.0 and s["q"] < 1.0]
    out = []
    for s in sorted(arms, key=lambda s: -s["performance"]):
        out.append(f"- k = {s['k']:g} x q = {s['q']:g}, {_arm_name(s)}: {s['performance']:.0%} of full fine-tuning's "
                   f"gain at {s['rel_flops']:.1%} of its training FLOPs ({s['rel_flops_with_selection']:.1%} with the "
                   f"scoring pass) and {s['rel_time']:.1%} of its training time ({s['rel_time_with_selection']:.1%})")
    return out


def write_report(rows: list[dict[str, Any]], meta: dict[str, Any], dest: Path) -> str:
    """data_selection.{json,md,png} under `dest` (a stem); returns the markdown."""
    summary = summarise(rows)
    lines = ["# Data selection by per-example gradient norm: bands on two models, and parameter x data selection",
             "", f"Command: `{meta['command']}`; {meta['wall_s'] / 60:.0f} min, {meta['threads']} torch thread(s) "
             "per arm, arms interleaved within each seed. Performance = gain over the untrained model / full "
             "fine-tuning's gain (k = 1, all data). Gain vs random: paired by seed, * = a paired t-test over the seeds rejects no difference at 5%. "
             "Relative cost: against full fine-tuning on all data; \"incl. scoring\" adds the scoring pass over "
             "the whole pool.", ""]
    if meta.get("reused"):
        lines += [f"Merged with the rows of an earlier run with the same settings: `{meta['reused']}` (its command: "
                  f"`{meta['reused_command']}`).", ""]
    for model, command in meta["sources"].items():
        if command != meta["command"]:
            lines += [f"Rows of {model} kept from an earlier run: `{command}`.", ""]
    for name in meta["models"]:
        st = meta["settings"][name]
        lines += [f"## {TASKS[name].title}", "",
                  f"Pool {st['pool_examples']}, eval {st['eval_examples']} examples; batch {st['batch']}, seq len <= "
                  f"{st['seq_len']}, {st['epochs']} epoch(s) over each arm's data, AdamW lr {st['lr']:g}; q = {meta['q']}"
                  + (f"; k < 1: blueprint {meta['granularity']} selection (sparse engine)" if name in meta["combined"]
                     else "") + ".", "", *model_table(name, summary), ""]
        lines += ["Bands against the random band at the same q (all parameters trainable):", "",
                  *band_verdict(name, summary, meta["q"]), ""]
        if name in meta["combined"]:
            lines += ["Parameter x data selection against full fine-tuning on all data (seed claim: 72% of the "
                      "performance at 6% of the cost):", "", *combined_verdict(name, summary), ""]
    text = "\n".join(lines)
    dest.parent.mkdir(parents=True, exist_ok=True)
    doc = {**meta, "rows": rows, "summary": summary}
    dest.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    dest.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    if summary:
        _plot(summary, meta["models"], dest.with_suffix(".png"))
    return text


def _plot(summary: list[dict[str, Any]], models: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    markers = {"all": "*", "top": "^", "middle": "o", "lowest": "v", "random": "s"}
    for ax, name in zip(axes[0], models):
        for s in (s for s in summary if s["model"] == name):
            color = "tab:blue" if s["k"] >= 1.0 else "tab:orange"
            ax.scatter(s["rel_flops_with_selection"], s["performance"], marker=markers[s["band"]], color=color,
                       s=60 if s["band"] == "all" else 40, alpha=0.5 if s["per_label"] else 1.0, zorder=3)
            ax.annotate(f"{_arm_name(s)} k={s['k']:g}", (s["rel_flops_with_selection"], s["performance"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0.0, color="gray", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (+ scoring pass) / full fine-tuning on all data, log scale")
        ax.set_ylabel("performance: gain / full fine-tuning's gain")
        ax.set_title(TASKS[name].title, fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# the driver


def _settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-model settings: the defaults of the size, then every `--set model.key=value`."""
    chosen = {m: dict(v) for m, v in (TINY if args.tiny else FULL).items()}
    for item in args.set:
        target, _, value = item.partition("=")
        model, _, key = target.partition(".")
        if model not in chosen or key not in chosen[model]:
            raise SystemExit(f"--set {item!r}: expected MODEL.KEY=VALUE with MODEL in {list(chosen)} and KEY in "
                             f"{list(FULL['minilm'])}")
        try:
            chosen[model][key] = None if value == "none" else float(value) if key == "lr" else int(value)
        except ValueError:
            raise SystemExit(f"--set {item!r}: {key} takes {'a number' if key == 'lr' else 'an integer'}") from None
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="minilm,smollm2", help="comma list of: " + ", ".join(TASKS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--q", type=float, default=0.3, help="data fraction of the bands")
    ap.add_argument("--k", type=float, default=0.2, help="parameter fraction of the combined arms")
    ap.add_argument("--combined", default="smollm2", help="models that also run every arm at k (comma list, or '')")
    ap.add_argument("--granularity", default="element", choices=("element", "row", "module"))
    ap.add_argument("--no-per-label", action="store_true", help="skip MiniLM's bands within each label")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per arm")
    ap.add_argument("--set", action="append", default=[], metavar="MODEL.KEY=VALUE",
                    help="change a per-model setting, e.g. smollm2.lr=1e-4 or minilm.n_pool=2000")
    ap.add_argument("--reuse", default=None, help="results JSON of an earlier run with the same settings")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/data_selection)")
    ap.add_argument("--tiny", action="store_true", help="smoke run on slices of the data (2 seeds)")
    args = ap.parse_args(argv)
    if args.tiny and "--seeds" not in (argv if argv is not None else sys.argv):
        args.seeds = 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.arm:
        return _arm_main(json.loads(args.arm))
    t0 = time.perf_counter()
    models = [m for m in args.models.split(",") if m]
    combined = [m for m in args.combined.split(",") if m]
    unknown = [m for m in models + combined if m not in TASKS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; expected {list(TASKS)}")
    settings = _settings(args)
    root = OUT / ("tiny" if args.tiny else "full")
    dest = Path(args.out) if args.out else (root / "data_selection" if args.tiny else RESULTS / "data_selection")
    meta: dict[str, Any] = {
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/data_selection.py " + " ".join(sys.argv[1:]),
        "models": models, "combined": combined, "q": args.q, "k": args.k, "granularity": args.granularity,
        "per_label": not args.no_per_label, "seeds": args.seeds, "threads": args.threads, "tiny": args.tiny,
        "settings": {}, "wall_s": 0.0,
    }
    meta["sources"] = {m: meta["command"] for m in models}  # the command that produced each model's rows
    bases = {}
    for name in models:
        paths, counts = prepare(name, settings[name], root / name, name in combined)
        meta["settings"][name] = {**settings[name], **counts}
        bases[name] = {**settings[name], **paths, "model": name, "folder": str(root / name), "q": args.q,
                       "threads": args.threads, "granularity": args.granularity, "per_label": not args.no_per_label}
    rows = _reused(args.reuse, meta) if args.reuse else []
    rows += _other_models(dest.with_suffix(".json"), meta)

    scoring: dict[str, dict[str, Any]] = {}  # scores file -> cost of its pass, modules left out
    meta["scoring"] = scoring

    def report() -> None:
        meta["wall_s"] = time.perf_counter() - t0
        write_report(rows, meta, dest)

    for seed in range(args.seeds):
        for name in models:
            ks = [1.0, args.k] if name in combined else [1.0]
            run_model_seed(name, seed, bases[name], ks, rows, scoring, report)
    meta["wall_s"] = time.perf_counter() - t0
    print(write_report(rows, meta, dest))
    return 0


SAME = ("q", "k", "granularity", "per_label", "threads")


def _other_models(path: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the models this run leaves out, kept from the results file it rewrites (so that
    `--models minilm` and `--models smollm2` run one after the other fill one report); their
    settings and combined flags are carried into `meta`. Nothing is kept from a file with other
    common settings."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    others = [m for m in old.get("models", []) if m in TASKS and m not in meta["models"]]
    if not others:
        return []
    if [x for x in SAME if old.get(x) != meta[x]]:
        print(f"not keeping {others} from {path}: other settings", file=sys.stderr)
        return []
    meta["models"] = [m for m in TASKS if m in meta["models"] or m in others]
    meta["combined"] = sorted(set(meta["combined"]) | {m for m in old.get("combined", []) if m in others})
    meta["settings"].update({m: old["settings"][m] for m in others})
    meta["sources"].update({m: old.get("sources", {}).get(m, old["command"]) for m in others})
    print(f"keeping the rows of {others} from {path}", file=sys.stderr)
    return [r for r in old["rows"] if r["model"] in others]


def _reused(path: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of an earlier run whose models were run with the same settings."""
    old = json.loads(Path(path).read_text(encoding="utf-8"))
    diff = [x for x in SAME if old.get(x) != meta[x]]
    diff += [f"settings.{m}" for m in meta["models"] if m in old.get("settings", {})
             and old["settings"][m] != meta["settings"][m]]
    if diff:
        raise SystemExit(f"--reuse: settings differ ({diff})")
    meta["reused"], meta["reused_command"] = path, old.get("command")
    return [r for r in old["rows"] if r["model"] in meta["models"]]


if __name__ == "__main__":
    sys.exit(main())
