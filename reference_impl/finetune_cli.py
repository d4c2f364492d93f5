"""`blueprint finetune`: fine-tune only what a blueprint recommends (plugin of the blueprint CLI).

Imports only argparse and the standard library at top level; torch and transformers are imported
by the handler.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `finetune` command."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune only what a blueprint recommends (needs torch)",
        description="Sequence classification on .jsonl files with `text` and `label`; trains the blueprint's "
        "selection under --budget (1.0 = full fine-tuning through the same path) and writes update.safetensors, "
        "meter.json and summary.json into OUTDIR.",
    )
    p.add_argument("--model", required=True, help="local Hugging Face model folder (safetensors)")
    p.add_argument("--blueprint", required=True, help="blueprint JSON file bound to the model")
    p.add_argument("--train", required=True, help="training examples (.jsonl: text, label)")
    p.add_argument("--eval", required=True, help="evaluation examples (.jsonl: text, label)")
    p.add_argument("--budget", type=float, default=0.2, help="fraction of parameters to train, in (0, 1]")
    p.add_argument("--granularity", choices=("module", "row", "element"), default="module")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blend", type=float, default=0.5, help="a in G' = a*published + (1-a)*local")
    p.add_argument("--domain", action="append", default=[], metavar="NAME=WEIGHT",
                   help="your domain mixture (repeat; weights sum to 1); default: the blueprint's")
    p.add_argument("--eta", type=float, default=None, help="stop when mean dPsi/dGamma (per FLOP) stays below ETA")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--sidecar", action="store_true",
                   help="choose rows/elements from the blueprint's score sidecar instead of local gradients")
    p.add_argument("--force", action="store_true", help="apply even if the blueprint does not bind (warns)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    p.set_defaults(handler=cmd_finetune)


def _domains(items: list[str]) -> dict[str, float] | None:
    from reference_impl.cli_common import parse_weights

    return parse_weights(items, "--domain")


def cmd_finetune(args: argparse.Namespace) -> int:
    """Handler of `blueprint finetune`."""
    from reference_impl.apply import apply_error
    from reference_impl.finetune import run_finetune

    if args.max_steps < 1 or args.batch_size < 1 or args.seq_len < 1:
        raise apply_error("out-of-range", "--max-steps, --batch-size and --seq-len must be positive")
    summary = run_finetune(
        args.model, args.blueprint, args.train, args.eval, args.output, budget=args.budget,
        granularity=args.granularity, max_steps=args.max_steps, batch_size=args.batch_size, seq_len=args.seq_len,
        lr=args.lr, seed=args.seed, blend=args.blend, domains=_domains(args.domain), force=args.force,
        device=args.device, progress=not args.quiet, eta=args.eta, use_sidecar=args.sidecar,
    )
    print(
        f"finetune: accuracy {summary['initial_accuracy']:.4f} -> {summary['accuracy']:.4f} in {summary['steps']} "
        f"steps; trained {summary['trainable_fraction']:.1%} of the blueprint's parameters "
        f"({summary['granularity']}); trainable state {summary['trainable_state_bytes'] / 2**20:.1f} MiB; "
        f"peak memory {summary['peak_memory_bytes'] / 2**20:.0f} MiB; update {summary['update']}",
        file=sys.stdout,
    )
    return 0
