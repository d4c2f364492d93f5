"""`blueprint compute`: the CLI plugin of the reference implementation.

Imports only argparse and the standard library at module level; torch and transformers are
imported inside the handler, so other `blueprint` commands start fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

TASKS = ("auto", "causal-lm", "masked-lm", "sequence-classification", "contrastive")
PRECISIONS = ("fp32", "bf16", "fp16", "fp64", "bf16-autocast", "fp16-autocast")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `compute` subcommand."""
    p = subparsers.add_parser(
        "compute",
        help="compute a blueprint for a local Hugging Face model folder on calibration data",
        description=(
            "Compute per-module gradient statistics of a model on calibration domains, fit their heavy "
            "tail, allocate k* under a rule, and write a validated blueprint that binds to the model."
        ),
    )
    p.add_argument("--model", required=True, metavar="PATH", help="local model folder (safetensors weights)")
    p.add_argument(
        "--data", required=True, action="append", metavar="[DOMAIN=]FILE",
        help=".txt (one example per line) or .jsonl (text, label, pair); repeat for more domains",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="blueprint file to write")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=16, metavar="N")
    p.add_argument("--max-batches", type=int, default=None, metavar="N", help="per domain")
    p.add_argument(
        "--seq-len", type=int, default=None, metavar="N",
        help="truncate examples to N tokens (default 128, or the model's positions if fewer)",
    )
    p.add_argument("--dtype", default="fp32", choices=PRECISIONS, help="weights dtype or autocast mode")
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.add_argument("--shuffle", action="store_true", help="shuffle examples (seeded) instead of file order")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("--loss", default="auto", choices=TASKS, help="loss; auto: the model's own task")
    p.add_argument("--rule", choices=("global-budget", "mass-threshold", "marginal"), default=None)
    p.add_argument("--budget", type=float, default=None, metavar="X", help="global-budget fraction (default 0.2)")
    p.add_argument("--threshold", type=float, default=None, metavar="X", help="mass-threshold fraction")
    p.add_argument("--eta", type=float, default=None, metavar="X", help="marginal rule: minimum gain per cost")
    p.add_argument("--max-fraction", type=float, default=None, metavar="X", help="marginal rule: cap")
    p.add_argument("--granularity", choices=("module", "row", "element"), default="element")
    p.add_argument(
        "--statistic", default="grad_norm_mean",
        choices=("grad_norm_mean", "grad_norm_median", "grad_norm_sq_mean", "mean_grad_norm"),
    )
    p.add_argument("--weight", action="append", default=[], metavar="DOMAIN=W", help="domain weight (normalised)")
    p.add_argument("--cost-fixed", type=float, default=0.0, metavar="A")
    p.add_argument("--cost-per-parameter", type=float, default=None, metavar="B", help="default 1/N")
    p.add_argument("--cost-unit", default="model-fraction")
    p.add_argument("--min-examples", type=int, default=32, metavar="N", help="min_examples_per_aggregate")
    p.add_argument("--name", default=None, help="model name to record (default: the folder name)")
    p.add_argument("--revision", default=None, help="model revision (default: digest of the weight files)")
    p.add_argument("--publisher", default=None)
    p.add_argument("--description", default=None)
    p.add_argument("--embed", action="store_true", help="also embed the blueprint into the model folder")
    p.add_argument("--pretty", action="store_true", help="indented JSON instead of canonical JSON")
    p.add_argument(
        "--sidecar", choices=("row", "element"), default=None,
        help="also write row- or element-level scores to OUT's stem + .scores.safetensors, referenced by digest",
    )
    p.set_defaults(handler=cmd_compute)


def _usage(message: str, code: str = "io-error") -> Exception:
    from reference_impl.errors import input_error

    return input_error(code, message)


def _rule(args: argparse.Namespace) -> Any:
    from reference_impl.allocation import Rule

    implied = [
        name for name, value in (
            ("global-budget", args.budget), ("mass-threshold", args.threshold),
            ("marginal", args.eta if args.eta is not None else args.max_fraction),
        ) if value is not None
    ]
    if len(implied) > 1:
        raise _usage(f"--budget, --threshold and --eta/--max-fraction belong to different rules ({implied})", "bad-rule")
    name = args.rule or (implied[0] if implied else "global-budget")
    if implied and implied[0] != name:
        raise _usage(f"--rule {name} does not take the parameter given for {implied[0]}", "bad-rule")
    params: dict[str, float]
    if name == "global-budget":
        params = {"budget": 0.2 if args.budget is None else args.budget}
    elif name == "mass-threshold":
        params = {"threshold": 0.8 if args.threshold is None else args.threshold}
    else:
        params = {"eta": 1.0 if args.eta is None else args.eta}
        if args.max_fraction is not None:
            params["max_fraction"] = args.max_fraction
    try:
        return Rule(name, params)
    except ValueError as exc:
        raise _usage(str(exc), "bad-rule") from None


def _weights(args: argparse.Namespace, names: list[str]) -> dict[str, float] | None:
    if not args.weight:
        return None
    out: dict[str, float] = {}
    for item in args.weight:
        name, sep, value = item.partition("=")
        try:
            w = float(value)
        except ValueError:
            w = -1.0
        if not sep or name not in names or not w >= 0:
            raise _usage(f"--weight {item!r}: expected DOMAIN=W for a declared domain and W >= 0", "unknown-domain")
        out[name] = w
    return out


def _task_for(config: Any, requested: str) -> str:
    if requested != "auto":
        return requested
    arch = (getattr(config, "architectures", None) or [""])[0]
    if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
        return "causal-lm"
    if arch.endswith("ForMaskedLM"):
        return "masked-lm"
    if arch.endswith("ForSequenceClassification"):
        return "sequence-classification"
    raise _usage(
        f"cannot tell the loss of architecture {arch or '(none)'!r}; pass --loss causal-lm, masked-lm, "
        "sequence-classification or contrastive (base encoders: contrastive with .jsonl pairs)",
        "missing-field",
    )


def model_folder_tensors(model_path: Path) -> list[Any]:
    """The tensor inventory of a local model folder, from its safetensors headers only.

    Refuses a path that is not a folder (io-error) and a folder without readable safetensors
    weights (unreadable-model, with a hint when it holds pickle checkpoints instead).
    """
    from blueprint_format.binding import model_tensors
    from reference_impl.errors import input_error

    if not model_path.is_dir():
        raise input_error("io-error", f"{model_path}: not a model folder")
    try:
        return model_tensors(model_path)
    except Exception as exc:
        code = getattr(exc, "code", "unreadable-model")
        has_pickle = any(model_path.glob("*.bin")) or any(model_path.glob("*.pt"))
        hint = " (pickle checkpoints are refused: convert the weights to safetensors)" if has_pickle else ""
        raise input_error(code if code == "header-too-large" else "unreadable-model", f"{exc}{hint}") from None


def _load_model(path: Path, task: str, dtype: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, config) from a local folder, safetensors only (no pickle)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from reference_impl.errors import input_error

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a bad folder
        raise input_error("unreadable-model", f"{path}: cannot read config.json: {exc}") from None
    task = _task_for(config, task)
    classes = {
        "causal-lm": transformers.AutoModelForCausalLM,
        "masked-lm": transformers.AutoModelForMaskedLM,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "contrastive": transformers.AutoModel,
    }
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}.get(dtype, torch.float32)
    try:
        model = classes[task].from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype=torch_dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise input_error("unreadable-model", f"{path}: cannot load the model or tokenizer: {exc}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise input_error("unreadable-model", f"{path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, task


def cmd_compute(args: argparse.Namespace) -> int:
    """Handler of `blueprint compute`."""
    from reference_impl.data import make_batches, parse_data_arg, read_examples, select_examples
    from reference_impl.errors import input_error

    for flag, value in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len or 1),
                        ("--min-examples", args.min_examples)):
        if value < 1:
            raise _usage(f"{flag} must be at least 1")
    if args.max_batches is not None and args.max_batches < 1:
        raise _usage("--max-batches must be at least 1")
    if args.seed < 0:
        raise _usage("--seed must be non-negative")
    rule = _rule(args)
    out = Path(args.output)
    if not out.parent.exists() if str(out.parent) else False:
        raise input_error("io-error", f"{out.parent}: the output folder does not exist")

    # Data first: bad data fails in milliseconds, before a model is loaded.
    domains: dict[str, Path] = {}
    for arg in args.data:
        name, path = parse_data_arg(arg)
        if name in domains:
            raise input_error(
                "duplicate-domain", f"domain {name!r} is given twice ({domains[name]} and {path})"
            )
        domains[name] = path
    examples = {name: read_examples(path) for name, path in domains.items()}
    used = {
        name: select_examples(ex, args.batch_size, args.max_batches, args.shuffle, args.seed)
        for name, ex in examples.items()
    }
    for name, ex in used.items():
        if len(ex) < args.min_examples:
            raise input_error(
                "aggregate-too-small",
                f"domain {name!r} has {len(ex)} examples; at least {args.min_examples} are required "
                "(--min-examples; published aggregates must not describe fewer examples)",
            )
    weights = _weights(args, list(domains))

    model_path = Path(args.model)
    tensors = model_folder_tensors(model_path)

    import torch

    import blueprint_format as bf
    from reference_impl.allocation import CostModel
    from reference_impl.compute import CalibrationDomain, compute_blueprint
    from reference_impl.errors import compute_error

    if args.device == "cuda" and not torch.cuda.is_available():
        raise _usage("--device cuda: no CUDA device is available")
    model, tokenizer, task = _load_model(model_path, args.loss, args.dtype)
    seq_cap = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if args.seq_len is None:
        args.seq_len = min(128, int(seq_cap)) if seq_cap else 128
    elif seq_cap and args.seq_len > int(seq_cap):
        raise _usage(f"--seq-len {args.seq_len} exceeds the model's {seq_cap} positions")
    batches = {
        name: make_batches(ex, tokenizer, model, task, args.batch_size, args.seq_len, where=str(domains[name]))
        for name, ex in used.items()
    }
    loss_fn: Any = None
    loss_name: str | None = None
    if task == "contrastive":
        from reference_impl.losses import contrastive_pair_loss

        loss_fn, loss_name = contrastive_pair_loss, "contrastive-in-batch-pairs-mean-pool"
    elif task == "sequence-classification":
        from reference_impl.losses import model_output_loss

        loss_fn, loss_name = model_output_loss, "sequence-classification-cross-entropy"
    elif task == "causal-lm":
        from reference_impl.losses import causal_lm_loss

        loss_fn, loss_name = causal_lm_loss, "causal-lm-next-token-cross-entropy"
    elif task == "masked-lm":
        from reference_impl.losses import default_loss

        loss_fn, loss_name = default_loss(model, tokenizer)
    calib = {
        name: CalibrationDomain(
            batches=batches[name], texts=[e.fingerprint_text for e in used[name]], source=str(domains[name].name)
        )
        for name in used
    }
    try:
        cost = CostModel(args.cost_fixed, args.cost_per_parameter, args.cost_unit)
    except ValueError as exc:
        raise _usage(str(exc), "bad-rule") from None
    if args.cost_fixed < 0 or (args.cost_per_parameter is not None and args.cost_per_parameter < 0):
        raise _usage("cost model numbers must be non-negative", "bad-rule")
    try:
        bp = _compute(compute_blueprint, model, calib, loss_fn, model_path, args, tokenizer, loss_name, weights, rule,
                      cost, out)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        # Anything the model or loss raises on this data: one line, no traceback, nothing written.
        raise compute_error(
            "compute-failed", f"{type(exc).__name__}: {str(exc)[:500]}", fallback="unreadable-model"
        ) from None
    issues = [i for i in bf.validate(bp) if i.is_error] + bf.check_binding(bp, tensors)
    if issues:  # a bug, not bad input: never write an invalid blueprint
        raise compute_error("inconsistent-statistics", "computed blueprint is invalid: " + "; ".join(map(str, issues)))
    bf.dump(bp, out, indent=2 if args.pretty else None)
    embedded = None
    if args.embed:
        try:
            from converters import embed
        except ImportError:
            raise compute_error("unsupported-container", "--embed needs the converters package", fallback="io-error") from None
        embedded = embed(bp, model_path)
    if not args.quiet:
        _summary(bp, out, embedded)
    return 0


def _compute(
    compute_blueprint: Any, model: Any, calib: Any, loss_fn: Any, model_path: Path, args: argparse.Namespace,
    tokenizer: Any, loss_name: str | None, weights: Any, rule: Any, cost: Any, out: Path,
) -> Any:
    return compute_blueprint(
        model, calib, loss_fn, model_path=model_path, model_name=args.name, revision=args.revision,
        tokenizer=tokenizer, loss_name=loss_name, domain_weights=weights, rule=rule,
        granularity=args.granularity, statistic=args.statistic, cost_model=cost, device=args.device,
        precision=args.dtype, seed=args.seed, min_examples_per_aggregate=args.min_examples,
        batch_size=args.batch_size, seq_len=args.seq_len, progress=not args.quiet,
        publisher=args.publisher, description=args.description,
        sidecar=out.with_name(out.stem + ".scores.safetensors") if args.sidecar else None,
        sidecar_granularity=args.sidecar or "row",
    )


def _summary(bp: Any, out: Path, embedded: Any) -> None:
    selected = sum(1 for m in bp.modules if m.k_star is not None)
    print(
        f"wrote {out}: {len(bp.modules)} modules, {len(bp.domains)} domain(s), {selected} selected by "
        f"{bp.allocation.rule.name} (trainable fraction {bp.allocation.trainable_fraction:.3g})",
        file=sys.stderr,
    )
    for d in bp.domains:
        ht = d.heavy_tail
        if ht is None:
            continue
        if ht.status == "ok":
            fit = f"alpha (pdf) = {ht.exponent:.3f}, x_min = {ht.x_min:.3g}, KS = {ht.ks_distance:.3f}, tail {ht.tail_count}"
        else:
            fit = f"{ht.status}: {ht.message or ''}"
        print(f"  {d.name}: {d.examples} examples, {d.batches} batches; heavy tail {fit}", file=sys.stderr)
    if embedded is not None:
        print(f"embedded into {embedded.path}", file=sys.stderr)
