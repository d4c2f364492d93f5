"""`blueprint compute`: compute a blueprint for a local model folder (plugin of the blueprint CLI).

The handler works in this order, so that a mistake costs as little as possible: every flag is
checked (usage-error, exit 2) before any file is read; the data files are read and checked
before a model is loaded; the model folder is refused if it names its own code; the blueprint is
validated and bound to the weight files before anything is written, atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blueprint_format.models import SidecarGranularity
from reference_impl.cli_common import (
    add_options,
    command_parser,
    parse_weights,
    quiet_output,
    usage,
    usage_from_config,
)
from reference_impl.config import positive_int
from reference_impl.model_loading import TASK_CLASSES

#: Loss choices: "auto" (the model's own task) or a task the model loader knows.
LOSSES = ("auto", *TASK_CLASSES)
SIDECAR_GRANULARITIES: tuple[str, ...] = typing.get_args(SidecarGranularity)
#: Configuration fields whose flag is not their name with dashes.
FLAGS = {
    "precision": "--dtype",
    "min_examples_per_aggregate": "--min-examples",
    "domain_weights": "--weight",
    "model_name": "--name",
    "sidecar_granularity": "--sidecar",
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `compute` command."""
    from reference_impl.allocation import GRANULARITIES
    from reference_impl.statistics import STATISTICS

    p = command_parser(
        subparsers, "compute",
        "Compute per-module gradient statistics of a model on calibration domains, fit their heavy tail, "
        "allocate k* under a rule, and write a validated blueprint that binds to the model.",
        "Exit status: 0 ok, 1 refused data, model or computation, 2 usage or I/O error.",
    )
    add_options(p, "model", "trust_remote_code")
    p.add_argument(
        "--data", required=True, action="append", metavar="[DOMAIN=]FILE",
        help=".txt (one example per line) or .jsonl (text, label, pair); repeat for more domains",
    )
    add_options(p, "output", overrides={"output": {"help": "blueprint file to write"}})
    add_options(p, "device", "batch_size", "seq_len", "dtype", "seed", "quiet", overrides={
        "seq_len": {"help": "truncate examples to N tokens (default 128, or the model's positions if fewer)"},
    })
    p.add_argument("--max-batches", type=int, default=None, metavar="N", help="per domain")
    p.add_argument("--shuffle", action="store_true", help="shuffle examples (seeded) instead of file order")
    p.add_argument("--loss", "--task", dest="loss", default="auto", choices=LOSSES,
                   help="loss (the task the model is trained for); auto: the model's own task")
    _add_rule_flags(p)
    p.add_argument("--granularity", choices=GRANULARITIES, default="element")
    p.add_argument("--statistic", default="grad_norm_mean", choices=tuple(STATISTICS),
                   help="the statistic k* is allocated on: " + "; ".join(f"{n}: {s.summary}" for n, s in STATISTICS.items()))
    add_options(p, "weight")
    p.add_argument("--cost-fixed", type=float, default=0.0, metavar="A", help="fixed cost (finite, >= 0)")
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
        "--sidecar", choices=SIDECAR_GRANULARITIES, default=None,
        help="also write row- or element-level scores to OUT's stem + .scores.safetensors, referenced by digest",
    )
    add_options(p, "distributed")
    p.set_defaults(handler=cmd_compute)


def _add_rule_flags(p: argparse.ArgumentParser) -> None:
    """--rule and one flag per rule parameter, from the allocation-rule registry."""
    from reference_impl.allocation import DEFAULT_RULE_NAME, RULE_TYPES

    p.add_argument("--rule", choices=tuple(RULE_TYPES), default=None,
                   help=f"allocation rule (default: the one its parameter flag implies, else {DEFAULT_RULE_NAME})")
    seen: set[str] = set()
    for kind in RULE_TYPES.values():
        for param in kind.parameters:
            if param.name in seen:
                continue
            seen.add(param.name)
            default = f" (default {param.default:g})" if param.default is not None else ""
            p.add_argument("--" + param.name.replace("_", "-"), type=float, default=None, metavar="X",
                           help=param.help + default)


@dataclass(frozen=True)
class ComputePlan:
    """What the flags ask for, checked before any file is read: the compute configuration
    (seq_len and loss_name are filled in once the model folder is known) and the outputs."""

    config: Any  # reference_impl.compute.ComputeConfig
    output: Path


def rule_from_flags(args: argparse.Namespace) -> Any:
    """The AllocationRule the flags ask for: --rule, or the rule whose parameter flags are given,
    with the registry's defaults for parameters not given. Conflicts are usage-errors."""
    from reference_impl.allocation import DEFAULT_RULE_NAME, RULE_TYPES, AllocationRule

    given = {p.name: getattr(args, p.name) for k in RULE_TYPES.values() for p in k.parameters}
    implied = [name for name, k in RULE_TYPES.items() if any(given[p.name] is not None for p in k.parameters)]
    flags = {name: "/".join(f"--{p.name.replace('_', '-')}" for p in RULE_TYPES[name].parameters) for name in implied}
    if len(implied) > 1:
        raise usage("--rule", f"{' and '.join(flags.values())} belong to different rules ({', '.join(implied)})")
    name = args.rule or (implied[0] if implied else DEFAULT_RULE_NAME)
    if implied and implied[0] != name:
        raise usage("--rule", f"--rule {name} does not take {flags[implied[0]]} (a parameter of {implied[0]})")
    return AllocationRule.from_parameters(name, given)


def _output_paths(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """-o and the sidecar beside it, refused when they cannot be written."""
    from reference_impl.cli_common import check_output_paths

    out = Path(args.output)
    sidecar = out.with_name(out.stem + ".scores.safetensors") if args.sidecar else None
    check_output_paths(out, *([sidecar] if sidecar else []))
    return out, sidecar


def plan_from_flags(args: argparse.Namespace) -> ComputePlan:
    """Every flag checked, nothing read: a usage-error (exit 2) names the first bad flag."""
    from reference_impl.allocation import CostModel
    from reference_impl.compute import ComputeConfig

    weights = parse_weights(args.weight)
    with usage_from_config(FLAGS):
        config = ComputeConfig(
            model_path=Path(args.model), model_name=args.name, revision=args.revision, domain_weights=weights,
            rule=rule_from_flags(args), granularity=args.granularity, statistic=args.statistic,
            cost_model=CostModel(args.cost_fixed, args.cost_per_parameter, args.cost_unit), device=args.device,
            precision=args.dtype, seed=args.seed, min_examples_per_aggregate=args.min_examples,
            batch_size=args.batch_size, seq_len=args.seq_len, progress=not args.quiet,
            publisher=args.publisher, description=args.description, sidecar_granularity=args.sidecar or "row",
        )
        positive_int("max_batches", args.max_batches, allow_none=True)
    out, sidecar = _output_paths(args)
    if args.distributed is not None:
        from reference_impl.sharded import TORCHRUN_ENV, launched_by_torchrun

        if not launched_by_torchrun():
            raise usage("--distributed", f"--distributed {args.distributed} needs torchrun's processes "
                        f"({', '.join(TORCHRUN_ENV)} unset): torchrun --nproc_per_node N $(which blueprint) compute ...")
        if sidecar is not None:
            raise usage("--sidecar", "--sidecar is not written from a sharded (--distributed fsdp) computation")
    if args.embed and importlib.util.find_spec("converters") is None:
        raise usage("--embed", "--embed needs the converters package (pip install 'gradient-blueprints[all]')")
    return ComputePlan(dataclasses.replace(config, sidecar=sidecar), out)


def read_domains(args: argparse.Namespace, plan: ComputePlan) -> tuple[dict[str, list[Any]], dict[str, Path]]:
    """The examples each domain uses, and its file; refused before a model is loaded (duplicate
    or unnamed domains: usage-error; bad or too small data: the data's own code)."""
    from reference_impl.cli_common import check_weight_names
    from reference_impl.data import parse_data_arg, read_examples, select_examples
    from reference_impl.errors import input_error

    files: dict[str, Path] = {}
    for arg in args.data:
        name, path = parse_data_arg(arg)
        if name in files:
            raise usage("--data", f"--data: domain {name!r} is given twice ({files[name]} and {path})")
        files[name] = path
    check_weight_names(plan.config.domain_weights, list(files))
    used = {
        name: select_examples(read_examples(path), args.batch_size, args.max_batches, args.shuffle, args.seed)
        for name, path in files.items()
    }
    for name, ex in used.items():
        if len(ex) < args.min_examples:
            raise input_error(
                "aggregate-too-small",
                f"domain {name!r} has {len(ex)} examples; at least {args.min_examples} are required "
                "(--min-examples; published aggregates must not describe fewer examples)",
            )
    return used, files


def _seq_len(args: argparse.Namespace, model_path: Path) -> int:
    """--seq-len, or 128 capped at the model's positions (from config.json, before the model is
    loaded); a --seq-len beyond them is refused."""
    from reference_impl.model_loading import read_folder_json

    config = read_folder_json(model_path, "config.json") or {}
    cap = config.get("max_position_embeddings") or config.get("n_positions")
    cap = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None
    if args.seq_len is None:
        return min(128, cap) if cap else 128
    if cap and args.seq_len > cap:
        raise usage("--seq-len", f"--seq-len {args.seq_len} exceeds the model's {cap} positions")
    return int(args.seq_len)


def _loss(task: str, model: Any, tokenizer: Any) -> tuple[Any, str]:
    """The loss function for `task` and the name the blueprint records for it."""
    from reference_impl import losses

    if task == "contrastive":
        return losses.contrastive_pair_loss, "contrastive-in-batch-pairs-mean-pool"
    if task == "sequence-classification":
        return losses.model_output_loss, "sequence-classification-cross-entropy"
    if task == "causal-lm":
        return losses.causal_lm_loss, "causal-lm-next-token-cross-entropy"
    try:
        return losses.default_loss(model, tokenizer)
    except ValueError as exc:  # e.g. a masked-LM loss without a mask token in the tokenizer
        raise usage("--loss", f"--loss {task}: {exc}") from None


def _compute(args: argparse.Namespace, plan: ComputePlan, used: dict[str, list[Any]], files: dict[str, Path]) -> Any:
    """Load the model and compute the blueprint (not yet validated or written)."""
    from reference_impl.cli_common import check_device
    from reference_impl.compute import CalibrationDomain, compute_blueprint
    from reference_impl.data import make_batches
    from reference_impl.errors import compute_error
    from reference_impl.model_loading import load_model

    check_device(args.device)
    seq_len = _seq_len(args, Path(args.model))
    loaded = load_model(Path(args.model), args.loss, args.dtype, args.trust_remote_code)
    calib = {
        name: CalibrationDomain(
            batches=make_batches(ex, loaded.tokenizer, loaded.model, loaded.task, args.batch_size, seq_len,
                                 where=str(files[name])),
            texts=[e.fingerprint_text for e in ex],
            source=files[name].name,
        )
        for name, ex in used.items()
    }
    loss_fn, loss_name = _loss(loaded.task, loaded.model, loaded.tokenizer)
    config = dataclasses.replace(plan.config, seq_len=seq_len, loss_name=loss_name)
    model = loaded.model
    if args.distributed == "fsdp":
        from reference_impl.sharded import shard_model

        model = shard_model(model, config.device)
    try:
        return compute_blueprint(model, calib, loss_fn, config, tokenizer=loaded.tokenizer)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        # Anything the model or loss raises on this data: one line, no traceback, nothing written.
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        raise compute_error("compute-failed", reason) from None


def cmd_compute(args: argparse.Namespace) -> int:
    """Handler of `blueprint compute`."""
    from reference_impl.model_loading import model_folder_tensors, refuse_remote_code

    plan = plan_from_flags(args)
    from reference_impl.sharded import is_main_process, session

    with quiet_output(args.quiet), session(args.distributed, args.device) as device:
        if device is not None:  # this process's device under torchrun
            plan = dataclasses.replace(plan, config=dataclasses.replace(plan.config, device=device))
        used, files = read_domains(args, plan)
        model_path = Path(args.model)
        tensors = model_folder_tensors(model_path)
        refuse_remote_code(model_path, args.trust_remote_code)
        bp = _compute(args, plan, used, files)
        main = is_main_process()
        embedded = _check_and_write(args, plan, bp, tensors) if main else None
    if not args.quiet and main:
        _summary(bp, plan.output, embedded)
    return 0


def _check_and_write(args: argparse.Namespace, plan: ComputePlan, bp: Any, tensors: list[Any]) -> Any:
    """Validate and bind the blueprint, write it atomically, embed it when asked; returns the
    embed result or None."""
    import blueprint_format as bf
    from reference_impl.errors import compute_error

    issues = [i for i in bf.validate(bp) if i.is_error] + bf.check_binding(bp, tensors)
    if issues:  # a bug, not bad input: never write an invalid blueprint
        raise compute_error("inconsistent-statistics", "computed blueprint is invalid: " + "; ".join(map(str, issues)))
    bf.dump(bp, plan.output, indent=2 if args.pretty else None)
    if not args.embed:
        return None
    from converters import embed

    return embed(bp, Path(args.model))


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
