"""`blueprint finetune`: fine-tune only what a blueprint recommends (plugin of the blueprint CLI).

Every flag is checked (usage-error, exit 2) before any file is read; the data are read and
checked, and the blueprint bound to the model, before any training; nothing is written unless the
run completes. Imports only argparse and the standard library at top level (and the shared option
table); torch and transformers are imported by the handler.
"""

from __future__ import annotations

import argparse
import sys
import typing
from typing import Any

from blueprint_format.models import Granularity
from reference_impl.cli_common import (
    add_hidden_alias,
    add_options,
    check_device,
    command_parser,
    parse_weights,
    quiet_output,
    usage_from_config,
)

#: Configuration fields whose flag is not their name with dashes.
FLAGS = {"domains": "--weight", "use_sidecar": "--sidecar"}
TASKS = ("auto", "causal-lm", "sequence-classification")  # reference_impl.finetune.TASKS (not imported: torch)
GRANULARITIES: tuple[str, ...] = typing.get_args(Granularity)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `finetune` command."""
    p = command_parser(
        subparsers, "finetune",
        "Train the blueprint's selection under --budget (1.0 = full fine-tuning through the same path): a causal "
        "LM on .txt lines or .jsonl `text` (or `prompt` + `response`, the loss on response tokens only), or a "
        "sequence classifier on .jsonl `text` + `label`. Writes update.safetensors, meter.json and summary.json "
        "into OUTDIR.",
        "Exit status: 0 ok, 1 refused data, model or blueprint, 2 usage or I/O error.",
    )
    add_options(p, "model", "trust_remote_code")
    p.add_argument("--blueprint", required=True, help="blueprint JSON file bound to the model")
    p.add_argument("--train", required=True, help="training examples (.txt or .jsonl)")
    p.add_argument("--eval", required=True, help="evaluation examples (.txt or .jsonl)")
    p.add_argument("--task", "--loss", dest="task", choices=TASKS, default="auto",
                   help="causal-lm or sequence-classification; auto: the model's own task (a base encoder with "
                        "labelled data: sequence classification)")
    p.add_argument("--budget", type=float, default=0.2, help="fraction of parameters to train, in (0, 1]")
    p.add_argument("--granularity", choices=("auto", *GRANULARITIES), default="auto",
                   help="unit of selection: whole modules, rows or single elements; auto (default): the "
                        "granularity the blueprint's k* were computed for (allocation.granularity)")
    p.add_argument("--max-steps", type=int, default=100, metavar="N")
    add_options(p, "batch_size", "seq_len", "seed", "device", "dtype", overrides={
        "seq_len": {"default": 64, "help": "cut examples at N tokens (at most the model's maximum; said when "
                                           "a text is cut)"},
        "dtype": {"help": "fp32 (default), bf16 weights, or fp32 weights under bf16-autocast / fp16-autocast"},
    })
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--eval-every", type=int, default=None, metavar="N", help="evaluate every N steps (default: "
                                                                              "4 evaluations in all)")
    p.add_argument("--blend", type=float, default=0.5, help="a in G' = a*published + (1-a)*local")
    add_options(p, "weight", overrides={"weight": {"help": "your domain mixture as NAME=W (repeat); default: the "
                                                           "blueprint's"}})
    add_hidden_alias(p, "--domain", "weight")
    p.add_argument("--eta", type=float, default=None, help="stop when mean dPsi/dGamma (per FLOP) stays below ETA")
    p.add_argument("--sidecar", action="store_true",
                   help="choose rows/elements from the blueprint's score sidecar instead of local gradients")
    p.add_argument("--checkpointing", action="store_true",
                   help="activation checkpointing: recompute activations in backward instead of keeping them")
    p.add_argument("--save-merged", action="store_true",
                   help="also write the trained model as a plain model folder, OUTDIR/merged")
    p.add_argument("--force", action="store_true", help="apply even if the blueprint does not bind (warns)")
    add_options(p, "quiet", "output", overrides={"output": {"metavar": "OUTDIR", "help": "output folder"}})
    p.set_defaults(handler=cmd_finetune)


def finetune_config(args: argparse.Namespace) -> Any:
    """The FinetuneConfig the flags ask for (usage-error naming the flag when a value is wrong)."""
    from reference_impl.finetune import FinetuneConfig

    with usage_from_config(FLAGS):
        return FinetuneConfig(
            task=args.task, budget=args.budget, granularity=args.granularity, max_steps=args.max_steps,
            batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, weight_decay=args.weight_decay,
            seed=args.seed, blend=args.blend, domains=parse_weights(args.weight), force=args.force,
            device=args.device, dtype=args.dtype, eval_every=args.eval_every, eta=args.eta,
            use_sidecar=args.sidecar, checkpointing=args.checkpointing, save_merged=args.save_merged,
            progress=not args.quiet, trust_remote_code=args.trust_remote_code,
        )


def _summary_line(s: dict[str, Any]) -> str:
    if s["task"] == "causal-lm":
        quality = (f"eval loss {s['initial_eval_loss']:.4f} -> {s['eval_loss']:.4f} (perplexity "
                   f"{s['initial_perplexity']:.2f} -> {s['perplexity']:.2f})")
    else:
        quality = f"accuracy {s['initial_accuracy']:.4f} -> {s['accuracy']:.4f}"
    return (
        f"finetune: {quality} in {s['steps']} steps; trained {s['trainable_fraction']:.1%} of the blueprint's "
        f"parameters ({s['granularity']}); trainable state {s['trainable_state_bytes'] / 2**20:.1f} MiB; "
        f"peak memory {s['peak_memory_bytes'] / 2**20:.0f} MiB; update {s['update']}"
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    """Handler of `blueprint finetune`."""
    config = finetune_config(args)
    check_device(config.device)
    from reference_impl.finetune import run_finetune

    with quiet_output(args.quiet):
        summary = run_finetune(args.model, args.blueprint, args.train, args.eval, args.output, config)
    if not args.quiet:
        print(_summary_line(summary), file=sys.stdout)
    return 0
