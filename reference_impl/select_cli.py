"""`blueprint select-data`: keep the training examples with the largest per-example gradient norms.

Imports only argparse and the standard library at module level; torch and transformers are
imported inside the handler (and not at all when selecting from a saved scores file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `select-data` subcommand."""
    p = subparsers.add_parser(
        "select-data",
        help="keep the training examples with the largest gradient norms (needs torch)",
        description=(
            "Score each example by the L2 norm of the gradient of its own loss (the model's loss for that "
            "example alone, padding excluded) over all trainable modules, or over the modules a blueprint "
            "selects, in one forward and backward pass per batch (ghost norms); keep the highest-scoring "
            "fraction (or the lowest with --direction lowest). --drop-top F first discards the top F of the "
            "pool as outliers (very large norms are often mislabelled or garbled examples). Selected "
            "examples are written in input order, as their original lines."
        ),
        epilog="Exit status: 0 ok, 1 refused input (non-finite scores, scores of another model), 2 usage/I-O.",
    )
    p.add_argument("--model", required=True, metavar="PATH", help="local Hugging Face model folder (safetensors)")
    p.add_argument("--data", required=True, metavar="FILE", help=".txt (one example per line) or .jsonl (text, label)")
    p.add_argument("--fraction", required=True, type=float, metavar="Q", help="share of the pool to keep, in (0, 1]")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="selected examples (.jsonl or .txt)")
    p.add_argument("--blueprint", default=None, metavar="FILE", help="score only the modules this blueprint selects")
    p.add_argument(
        "--scores", default=None, metavar="FILE",
        help="also write one JSON line per example, in input order: index, score, and the method, "
        "structure_digest (model), modules_digest and data_digest it was computed with",
    )
    p.add_argument(
        "--from-scores", default=None, metavar="FILE",
        help="select from a scores file written earlier for this model and data (refused if it scores another model)",
    )
    p.add_argument("--drop-top", type=float, default=0.0, metavar="F", help="discard the top F of the pool first")
    p.add_argument("--direction", choices=("highest", "lowest"), default="highest")
    p.add_argument(
        "--balance-labels", action="store_true",
        help="select within each `label` (.jsonl), keeping every label's share of the pool; advised for "
        "classification with a new head, whose gradient norms favour one class",
    )
    p.add_argument("--batch-size", type=int, default=16, metavar="N")
    p.add_argument("--seq-len", type=int, default=128, metavar="N", help="truncate examples to N tokens")
    p.add_argument("--loss", default="auto", choices=("auto", "causal-lm", "sequence-classification"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--domain", default=None, metavar="NAME", help="declared domain the pool belongs to (summary)")
    p.add_argument(
        "--update-blueprint", default=None, metavar="OUT",
        help="write --blueprint with its data_selection summary (aggregates only) to OUT",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(handler=cmd_select_data)


def _original_lines(path: Path) -> list[str]:
    """The non-blank lines of a data file, as `read_examples` counts examples (same order)."""
    text = path.read_bytes().decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    return [line for line in text.splitlines() if line.strip()]


def _output_bytes(lines: list[str], keep: list[int], data: Path, out: Path) -> bytes:
    if data.suffix.lower() == ".txt" and out.suffix.lower() == ".jsonl":
        chosen = [json.dumps({"text": lines[i]}, ensure_ascii=False) for i in keep]
    else:
        chosen = [lines[i] for i in keep]
    return ("\n".join(chosen) + "\n").encode("utf-8")


def _max_length(model: Any, tokenizer: Any, seq_len: int) -> int:
    limit = seq_len
    n_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None) or getattr(
        getattr(model, "config", None), "n_positions", None
    )
    if isinstance(n_pos, int) and n_pos > 0:
        limit = min(limit, n_pos)
    mml = getattr(tokenizer, "model_max_length", None)
    if isinstance(mml, int) and 0 < mml < 1_000_000:
        limit = min(limit, mml)
    return limit


def cmd_select_data(args: argparse.Namespace) -> int:
    """Handler of `blueprint select-data`."""
    from blueprint_format.binding import structure_digest
    from reference_impl.data import read_examples
    from reference_impl.data_selection import (
        METHOD,
        check_fraction,
        read_scores,
        select_indices,
        selection_summary,
        write_scores,
    )
    from reference_impl.errors import compute_error, input_error

    check_fraction(args.fraction, args.drop_top)
    for flag, value in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len)):
        if value < 1:
            raise input_error("out-of-range", f"{flag} must be at least 1")
    if args.update_blueprint and not args.blueprint:
        raise input_error("missing-field", "--update-blueprint needs --blueprint FILE")
    if args.from_scores and args.scores:
        raise input_error("io-error", "--scores and --from-scores exclude each other")
    out = Path(args.output)
    targets = [Path(x) for x in (args.output, args.scores, args.update_blueprint) if x]
    for t in targets:
        if str(t.parent) and not t.parent.exists():
            raise input_error("io-error", f"{t.parent}: the output folder does not exist")
    data = Path(args.data)
    examples = read_examples(data)  # bad data fails before a model is loaded
    lines = _original_lines(data)
    if len(lines) != len(examples):  # a bug, not input: the two readers must agree
        raise compute_error("inconsistent-statistics", "example count mismatch between readers")

    from reference_impl.cli import model_folder_tensors

    model_path = Path(args.model)
    tensors = model_folder_tensors(model_path)
    digest = structure_digest(tensors)

    bp = None
    if args.blueprint:
        import blueprint_format as bf

        bp = bf.load(args.blueprint)
        issues = bf.check_binding(bp, tensors)
        if issues:
            first = issues[0]
            raise compute_error(first.code, f"{args.blueprint} does not bind to {model_path}: {first.message}")
        declared = [d.name for d in bp.domains]
        if args.domain is not None and args.domain not in declared:
            raise input_error("unknown-domain", f"--domain {args.domain!r} is not declared by the blueprint {declared}")
        if args.update_blueprint and len(examples) < bp.method.min_examples_per_aggregate:
            raise input_error(
                "aggregate-too-small",
                f"{len(examples)} examples: a published data-selection summary needs at least "
                f"{bp.method.min_examples_per_aggregate} (the blueprint's min_examples_per_aggregate)",
            )

    from reference_impl.data_selection import data_fingerprint, modules_digest

    ddigest = data_fingerprint(e.fingerprint_text for e in examples)

    if args.from_scores:
        wanted_modules = None
        if bp is not None:
            wanted_modules = modules_digest([m.name for m in bp.modules if m.k_star is not None])
        scores = read_scores(args.from_scores, digest, len(examples), wanted_modules or "all", ddigest)
        mdigest = wanted_modules or "all"
    else:
        scores, mdigest = _score(args, examples, bp, model_path)

    labels = None
    if args.balance_labels:
        labels = [e.label for e in examples]
        if any(y is None for y in labels):
            raise input_error("missing-field", "--balance-labels needs a `label` on every example (.jsonl)")
    keep = select_indices(scores, args.fraction, args.direction, args.drop_top, labels)
    method = METHOD + ("-label-balanced" if labels is not None else "")
    summary = selection_summary(scores, args.fraction, args.direction, args.drop_top, len(keep), args.domain, method)
    new_bp = None
    if args.update_blueprint and bp is not None:
        import blueprint_format as bf
        from blueprint_format.models import DataSelection

        new_bp = bp.model_copy(update={"data_selection": DataSelection.model_validate(summary)})
        problems = [i for i in bf.validate(new_bp) if i.is_error]
        if problems:
            raise compute_error(problems[0].code, f"the updated blueprint is invalid: {problems[0].message}")

    # Everything is computed: now write, each file atomically.
    from blueprint_format.atomic import atomic_write_bytes

    if args.scores:
        write_scores(args.scores, scores, digest, mdigest, data_digest_=ddigest)
    try:
        atomic_write_bytes(out, _output_bytes(lines, keep, data, out))
    except OSError as exc:
        raise input_error("write-failed", f"cannot write {out}: {exc.strerror or exc}") from None
    if new_bp is not None:
        import blueprint_format as bf

        bf.dump(new_bp, args.update_blueprint, indent=2)
    if not args.quiet:
        q = summary["score_quantiles"]
        print(
            f"kept {len(keep)} of {len(scores)} examples ({args.direction} gradient norms"
            f"{', top ' + str(args.drop_top) + ' dropped' if args.drop_top else ''}); score p10/p50/p90 = "
            f"{q['p10']:.4g}/{q['p50']:.4g}/{q['p90']:.4g}; wrote {out}",
            file=sys.stderr,
        )
    return 0


def _score(args: argparse.Namespace, examples: list[Any], bp: Any, model_path: Path) -> tuple[list[float], str]:
    """Load the model and score every example; (scores, modules digest)."""
    import torch

    from reference_impl.cli import _load_model
    from reference_impl.compute import resolve_device
    from reference_impl.data import make_batches
    from reference_impl.data_selection import blueprint_selected_modules, score_batches
    from reference_impl.errors import input_error
    from reference_impl.ghost_norms import default_per_example_loss

    if args.device == "cuda" and not torch.cuda.is_available():
        raise input_error("io-error", "--device cuda: no CUDA device is available")
    model, tokenizer, task = _load_model(model_path, args.loss, "fp32")
    if task not in ("causal-lm", "sequence-classification"):
        raise input_error("bad-enum", f"select-data scores causal-LM and sequence-classification models, not {task}")
    limit = _max_length(model, tokenizer, args.seq_len)
    lengths = [len(ids) for ids in tokenizer([e.text for e in examples], truncation=False, verbose=False)["input_ids"]]
    long = [i for i, n in enumerate(lengths) if n > limit]
    if long:
        print(
            f"warning: {len(long)} of {len(examples)} examples are longer than {limit} tokens and are truncated "
            f"(first: example {long[0]}, {lengths[long[0]]} tokens)",
            file=sys.stderr,
        )
    device = resolve_device(args.device)
    model.to(device)
    batches = make_batches(examples, tokenizer, model, task, args.batch_size, limit, where=str(args.data))
    modules = blueprint_selected_modules(bp, model, model_path) if bp is not None else None
    loss_fn, _ = default_per_example_loss(model)
    bar = None
    if not args.quiet:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(examples), desc="scoring", unit="ex", file=sys.stderr)
        except ImportError:
            bar = None
    try:
        res = score_batches(model, batches, loss_fn, modules, device=device, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if res.unsupported:
        print(f"warning: modules left out of the scores: {sorted(res.unsupported)[:5]}", file=sys.stderr)
    return res.scores, res.modules_digest
