"""`blueprint select-data`: keep the training examples with the largest per-example gradient norms.

The flags become a `SelectConfig`, checked before any file is read (usage-error, exit 2). The
pool is read and checked before a model is loaded; torch and transformers are not imported at
all when selecting from a saved scores file. Every output is written atomically, and only after
everything was computed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blueprint_format.models import NAME_PATTERN
from reference_impl.cli_common import (
    DEVICES,
    DISTRIBUTED,
    add_options,
    command_parser,
    quiet_output,
    usage_from_config,
)
from reference_impl.config import choice, config_error, finite_float, fraction, positive_int
from reference_impl.data_selection import DIRECTIONS

#: Tasks whose per-example losses ghost norms can score.
SELECT_LOSSES = ("auto", "causal-lm", "sequence-classification")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `select-data` command."""
    p = command_parser(
        subparsers, "select-data",
        "Score each example by the L2 norm of the gradient of its own loss (the model's loss for that "
        "example alone, padding excluded) over all trainable modules, or over the modules a blueprint "
        "selects, in one forward and backward pass per batch (ghost norms); keep the highest-scoring "
        "fraction (or the lowest with --direction lowest). --drop-top F first discards the top F of the "
        "pool as outliers (very large norms are often mislabelled or garbled examples). Selected "
        "examples are written in input order, as their original lines.",
        "Exit status: 0 ok, 1 refused input (bad data, non-finite scores, scores of another model), "
        "2 usage or I/O error.",
    )
    add_options(p, "model", "trust_remote_code")
    p.add_argument("--data", required=True, metavar="FILE", help=".txt (one example per line) or .jsonl (text, label)")
    p.add_argument("--fraction", required=True, type=float, metavar="Q", help="share of the pool to keep, in (0, 1]")
    add_options(p, "output", overrides={"output": {"help": "selected examples (.jsonl or .txt)"}})
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
    p.add_argument("--direction", choices=DIRECTIONS, default="highest")
    p.add_argument(
        "--balance-labels", action="store_true",
        help="select within each `label` (.jsonl), keeping every label's share of the pool; advised for "
        "classification with a new head, whose gradient norms favour one class",
    )
    add_options(p, "batch_size", "seq_len", "device", "quiet", overrides={"seq_len": {"default": 128}})
    p.add_argument("--loss", "--task", dest="loss", default="auto", choices=SELECT_LOSSES,
                   help="loss the norms are taken of (the model's task); auto: the model's own task")
    p.add_argument("--domain", default=None, metavar="NAME", help="declared domain the pool belongs to (summary)")
    p.add_argument(
        "--update-blueprint", default=None, metavar="OUT",
        help="write --blueprint with its data_selection summary (aggregates only) to OUT",
    )
    add_options(p, "distributed")
    p.set_defaults(handler=cmd_select_data)


@dataclass(frozen=True)
class SelectConfig:
    """Everything `select-data` does, validated once (ConfigError located at the field).

    Inputs: `model` (folder), `data` (.txt/.jsonl pool), `blueprint` (restrict scoring to the
    modules it selects), `from_scores` (select from an earlier scores file instead of scoring).
    Selection: keep `fraction` of the pool in `direction`, after dropping the top `drop_top`;
    `balance_labels` keeps every label's share. Scoring: `batch_size`, `seq_len`, `loss`,
    `device`. Outputs: `output` (selected lines), `scores`, `update_blueprint` (the blueprint
    with its data_selection summary for `domain`).
    """

    model: Path
    data: Path
    output: Path
    fraction: float
    drop_top: float = 0.0
    direction: str = "highest"
    blueprint: Path | None = None
    scores: Path | None = None
    from_scores: Path | None = None
    update_blueprint: Path | None = None
    domain: str | None = None
    balance_labels: bool = False
    batch_size: int = 16
    seq_len: int = 128
    loss: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    quiet: bool = False
    distributed: str | None = None

    def __post_init__(self) -> None:
        import re

        fraction("fraction", self.fraction)
        finite_float("drop_top", self.drop_top, minimum=0.0)
        if not self.drop_top < 1.0:
            raise config_error("drop_top", f"drop_top must be < 1, got {self.drop_top:g}")
        if self.fraction + self.drop_top > 1 + 1e-9:
            raise config_error("drop_top", f"drop_top {self.drop_top:g} + fraction {self.fraction:g} exceeds 1: "
                                           "not enough examples would remain")
        choice("direction", self.direction, DIRECTIONS)
        choice("loss", self.loss, SELECT_LOSSES)
        choice("device", self.device, DEVICES)
        positive_int("batch_size", self.batch_size)
        positive_int("seq_len", self.seq_len)
        if self.update_blueprint is not None and self.blueprint is None:
            raise config_error("update_blueprint", "update_blueprint needs blueprint (--blueprint FILE)")
        if self.from_scores is not None and self.scores is not None:
            raise config_error("from_scores", "from_scores and scores exclude each other (--scores, --from-scores)")
        if self.domain is not None and not re.match(NAME_PATTERN, self.domain):
            raise config_error("domain", f"domain {self.domain!r} is not a domain name")
        if self.distributed is not None:
            choice("distributed", self.distributed, DISTRIBUTED)
            from reference_impl.sharded import TORCHRUN_ENV, launched_by_torchrun

            if not launched_by_torchrun():
                raise config_error("distributed", f"distributed {self.distributed} needs torchrun's processes "
                                                  f"({', '.join(TORCHRUN_ENV)} unset): torchrun --nproc_per_node N "
                                                  "$(which blueprint) select-data ...")

    @property
    def outputs(self) -> list[Path]:
        """Every file this run writes."""
        return [p for p in (self.output, self.scores, self.update_blueprint) if p is not None]


def config_from_flags(args: argparse.Namespace) -> SelectConfig:
    """The SelectConfig of the command line; a bad flag is a usage-error naming it."""
    from reference_impl.cli_common import check_output_paths

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    with usage_from_config():
        cfg = SelectConfig(
            model=Path(args.model), data=Path(args.data), output=Path(args.output), fraction=args.fraction,
            drop_top=args.drop_top, direction=args.direction, blueprint=path(args.blueprint),
            scores=path(args.scores), from_scores=path(args.from_scores),
            update_blueprint=path(args.update_blueprint), domain=args.domain, balance_labels=args.balance_labels,
            batch_size=args.batch_size, seq_len=args.seq_len, loss=args.loss, device=args.device,
            trust_remote_code=args.trust_remote_code, quiet=args.quiet, distributed=args.distributed,
        )
    check_output_paths(*cfg.outputs)
    return cfg


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


@dataclass
class _Pool:
    """The examples to select from, their original lines and the digests that bind scores."""

    examples: list[Any]
    lines: list[str]
    structure_digest: str
    data_digest: str


def _read_pool(cfg: SelectConfig) -> _Pool:
    """Read the data and the model folder's tensor inventory (no model is loaded)."""
    from blueprint_format.binding import structure_digest
    from reference_impl.data import read_examples
    from reference_impl.data_selection import data_fingerprint
    from reference_impl.errors import compute_error
    from reference_impl.model_loading import model_folder_tensors

    examples = read_examples(cfg.data)  # bad data fails before a model is loaded
    lines = _original_lines(cfg.data)
    if len(lines) != len(examples):  # a bug, not input: the two readers must agree
        raise compute_error("inconsistent-statistics", "example count mismatch between readers")
    digest = structure_digest(model_folder_tensors(cfg.model))
    return _Pool(examples, lines, digest, data_fingerprint(e.fingerprint_text for e in examples))


def _load_blueprint(cfg: SelectConfig, n_examples: int) -> Any:
    """The --blueprint, bound to the model; None without one."""
    if cfg.blueprint is None:
        return None
    import blueprint_format as bf
    from reference_impl.cli_common import usage
    from reference_impl.errors import compute_error, input_error
    from reference_impl.model_loading import model_folder_tensors

    bp = bf.load(cfg.blueprint)
    issues = bf.check_binding(bp, model_folder_tensors(cfg.model))
    if issues:
        first = issues[0]
        raise compute_error(first.code, f"{cfg.blueprint} does not bind to {cfg.model}: {first.message}")
    declared = [d.name for d in bp.domains]
    if cfg.domain is not None and cfg.domain not in declared:
        raise usage("--domain", f"--domain {cfg.domain!r} is not declared by the blueprint {declared}")
    if cfg.update_blueprint and n_examples < bp.method.min_examples_per_aggregate:
        raise input_error(
            "aggregate-too-small",
            f"{n_examples} examples: a published data-selection summary needs at least "
            f"{bp.method.min_examples_per_aggregate} (the blueprint's min_examples_per_aggregate)",
        )
    return bp


def _pool_scores(cfg: SelectConfig, pool: _Pool, bp: Any) -> tuple[list[float], str]:
    """(score per example, modules digest): read from --from-scores, else computed."""
    if cfg.from_scores is None:
        return _score(cfg, pool.examples, bp)
    from blueprint_format.paths import require_regular_input
    from reference_impl.data_selection import modules_digest, read_scores

    require_regular_input(cfg.from_scores)
    wanted = "all"
    if bp is not None:
        wanted = modules_digest([m.name for m in bp.modules if m.k_star is not None])
    return read_scores(cfg.from_scores, pool.structure_digest, len(pool.examples), wanted, pool.data_digest), wanted


def _selection(cfg: SelectConfig, pool: _Pool, scores: list[float]) -> tuple[list[int], dict[str, Any]]:
    """The kept indices (input order) and the data_selection summary."""
    from reference_impl.data_selection import METHOD, select_indices, selection_summary
    from reference_impl.errors import input_error

    labels = None
    if cfg.balance_labels:
        labels = [e.label for e in pool.examples]
        if any(y is None for y in labels):
            raise input_error("missing-field", "--balance-labels needs a `label` on every example (.jsonl)")
    keep = select_indices(scores, cfg.fraction, cfg.direction, cfg.drop_top, labels)
    method = METHOD + ("-label-balanced" if labels is not None else "")
    summary = selection_summary(scores, cfg.fraction, cfg.direction, cfg.drop_top, len(keep), cfg.domain, method)
    return keep, summary


def _updated_blueprint(bp: Any, summary: dict[str, Any]) -> Any:
    """`bp` with its data_selection summary, validated."""
    import blueprint_format as bf
    from blueprint_format.models import DataSelection
    from reference_impl.errors import compute_error

    new_bp = bp.model_copy(update={"data_selection": DataSelection.model_validate(summary)})
    problems = [i for i in bf.validate(new_bp) if i.is_error]
    if problems:
        raise compute_error(problems[0].code, f"the updated blueprint is invalid: {problems[0].message}")
    return new_bp


def cmd_select_data(args: argparse.Namespace) -> int:
    """Handler of `blueprint select-data`."""
    cfg = config_from_flags(args)
    main = True
    with quiet_output(cfg.quiet), _processes(cfg):
        pool = _read_pool(cfg)
        bp = _load_blueprint(cfg, len(pool.examples))
        scores, mdigest = _pool_scores(cfg, pool, bp)
        keep, summary = _selection(cfg, pool, scores)
        new_bp = _updated_blueprint(bp, summary) if cfg.update_blueprint and bp is not None else None
        main = _is_main_process(cfg)
        if main:
            _write(cfg, pool, scores, mdigest, keep, new_bp)
    if not cfg.quiet and main:
        q = summary["score_quantiles"]
        dropped = f", top {cfg.drop_top} dropped" if cfg.drop_top else ""
        print(
            f"kept {len(keep)} of {len(scores)} examples ({cfg.direction} gradient norms{dropped}); score "
            f"p10/p50/p90 = {q['p10']:.4g}/{q['p50']:.4g}/{q['p90']:.4g}; wrote {cfg.output}",
            file=sys.stderr,
        )
    return 0


def _processes(cfg: SelectConfig) -> Any:
    """With --distributed, the torchrun process group for the command's duration."""
    import contextlib

    if cfg.distributed is None:
        return contextlib.nullcontext(None)
    from reference_impl.sharded import session

    return session(cfg.distributed, cfg.device)


def _is_main_process(cfg: SelectConfig) -> bool:
    if cfg.distributed is None:
        return True
    from reference_impl.sharded import is_main_process

    return is_main_process()


def _write(cfg: SelectConfig, pool: _Pool, scores: list[float], mdigest: str, keep: list[int], new_bp: Any) -> None:
    """Write every output, each atomically (everything was computed before)."""
    import blueprint_format as bf
    from blueprint_format.atomic import atomic_write_bytes
    from reference_impl.data_selection import write_scores
    from reference_impl.errors import input_error

    if cfg.scores is not None:
        write_scores(cfg.scores, scores, pool.structure_digest, mdigest, data_digest_=pool.data_digest)
    try:
        atomic_write_bytes(cfg.output, _output_bytes(pool.lines, keep, cfg.data, cfg.output))
    except OSError as exc:
        raise input_error("write-failed", f"cannot write {cfg.output}: {exc.strerror or exc}") from None
    if new_bp is not None and cfg.update_blueprint is not None:
        bf.dump(new_bp, cfg.update_blueprint, indent=2)


def _warn_truncated(examples: list[Any], tokenizer: Any, limit: int, quiet: bool) -> None:
    """Say how many examples are longer than `limit` tokens (they are truncated)."""
    if quiet:
        return
    lengths = [len(ids) for ids in tokenizer([e.text for e in examples], truncation=False, verbose=False)["input_ids"]]
    long = [i for i, n in enumerate(lengths) if n > limit]
    if long:
        print(
            f"warning: {len(long)} of {len(examples)} examples are longer than {limit} tokens and are truncated "
            f"(first: example {long[0]}, {lengths[long[0]]} tokens)",
            file=sys.stderr,
        )


def _score(cfg: SelectConfig, examples: list[Any], bp: Any) -> tuple[list[float], str]:
    """Load the model and score every example; (scores, modules digest)."""
    from reference_impl.cli_common import check_device, usage
    from reference_impl.compute import resolve_device
    from reference_impl.data import make_batches
    from reference_impl.data_selection import blueprint_selected_modules, score_batches
    from reference_impl.ghost_norms import default_per_example_loss
    from reference_impl.model_loading import load_model

    check_device(cfg.device)
    loaded = load_model(cfg.model, cfg.loss, "fp32", cfg.trust_remote_code)
    if loaded.task not in SELECT_LOSSES:
        raise usage("--loss", f"select-data scores causal-LM and sequence-classification models, not {loaded.task}; "
                              "pass --loss causal-lm or sequence-classification")
    model, tokenizer = loaded.model, loaded.tokenizer
    limit = _max_length(model, tokenizer, cfg.seq_len)
    _warn_truncated(examples, tokenizer, limit, cfg.quiet)
    device = resolve_device(cfg.device)
    if cfg.distributed == "fsdp":
        from reference_impl.sharded import local_device, shard_model

        device = local_device(cfg.device)  # this process's own device under torchrun
        model = shard_model(model, device)
    else:
        model.to(device)
    batches = make_batches(examples, tokenizer, model, loaded.task, cfg.batch_size, limit, where=str(cfg.data))
    modules = blueprint_selected_modules(bp, model, cfg.model) if bp is not None else None
    loss_fn, _ = default_per_example_loss(model)
    bar = None
    if not cfg.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), desc="scoring", unit="ex", file=sys.stderr)
    try:
        res = score_batches(model, batches, loss_fn, modules, device=device, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if res.unsupported and not cfg.quiet:
        print(f"warning: modules left out of the scores: {sorted(res.unsupported)[:5]}", file=sys.stderr)
    return res.scores, res.modules_digest
