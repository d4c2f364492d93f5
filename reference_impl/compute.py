"""`compute_blueprint`: gradient statistics of a model on calibration domains, as a valid blueprint.

Definitions (SPEC.md, "Statistics"). For module m and domain d with batches b = 1..B:

* g_{m,b}: gradient of the batch-mean loss of batch b with respect to m's own parameters;
* grad_norm_mean = mean_b ||g_{m,b}||, grad_norm_median = median_b ||g_{m,b}||,
  grad_norm_sq_mean = mean_b ||g_{m,b}||^2, mean_grad_norm = ||mean_b g_{m,b}||
  (the registry in statistics.py);
* rank: 1 for the largest grad_norm_mean within the domain;
* combined score = sum_d w_d * s_{m,d} / sum_{m'} s_{m',d} with s the allocation statistic,
  combined rank 1 for the largest score.

The settings live in one frozen `ComputeConfig`, validated once; the model, the domains and the
loss are the call's arguments. The model runs in eval mode (dropout off, so results are
deterministic for a fixed seed on CPU); torch's generator is reseeded before every batch from
(seed, domain index, batch index). The batches run here; the document is built in assemble.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import TypeAdapter, ValidationError
from torch import nn

from blueprint_format.models import (
    NAME_PATTERN,
    Blueprint,
    Digest,
    Granularity,
    NonEmpty128,
    NonEmpty256,
    Precision,
    SidecarGranularity,
    Text4096,
    Timestamp,
)
from reference_impl.allocation import CostModel, Rule
from reference_impl.assemble import Computation, DomainResult, assemble
from reference_impl.collector import DomainStats, GradientCollector, NonFiniteGradient
from reference_impl.config import ConfigError, choice, config_error, normalised_weights, positive_int
from reference_impl.data_selection import data_fingerprint
from reference_impl.errors import compute_error, input_error
from reference_impl.losses import LossFn, default_loss
from reference_impl.model_binding import ModuleLayout, module_layout
from reference_impl.sharded import is_fsdp1, is_fsdp2
from reference_impl.statistics import STATISTICS

__all__ = [
    "CalibrationDomain",
    "ComputeConfig",
    "batch_examples",
    "batch_tokens",
    "compute_blueprint",
    "data_fingerprint",
    "resolve_device",
    "to_device",
]

_NAME_RE = re.compile(NAME_PATTERN)
DEFAULT_RULE = Rule("global-budget", {"budget": 0.2})
GRANULARITIES: tuple[str, ...] = typing.get_args(Granularity)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
SIDECAR_GRANULARITIES: tuple[str, ...] = typing.get_args(SidecarGranularity)


@dataclass
class CalibrationDomain:
    """Batches of one calibration domain plus what the blueprint records about their data.

    `texts`, when given, are the examples' texts in order; the data fingerprint is SHA-256 of
    their UTF-8 bytes joined by LF (`data_fingerprint`). `fingerprint` overrides it.
    """

    batches: Iterable[Any]
    texts: list[str] | None = None
    fingerprint: str | None = None
    weight: float | None = None
    description: str | None = None
    source: str | None = None


def _fits(name: str, value: Any, annotated: Any) -> None:
    """Refuse a value the blueprint could not hold (the format's own constraints, not restated)."""
    if value is None:
        return
    try:
        TypeAdapter(annotated).validate_python(value, strict=True)
    except ValidationError as exc:
        raise config_error(name, f"{name}: {exc.errors()[0]['msg']} (got {str(value)[:80]!r})") from None


@dataclass(frozen=True)
class ComputeConfig:
    """How `compute_blueprint` computes and what the blueprint records; validated once.

    Binding and naming: `model_path` (a safetensors file or model folder: the blueprint binds
    to those weight files' headers; without it, to the model's state_dict), `model_name`,
    `revision` (default: a digest of the weight files), `loss_name` (default: the loss's name).
    Allocation: `domain_weights` (name -> weight >= 0, normalised; default: the domains' own
    weights, else equal), `rule`, `granularity`, `statistic`, `cost_model`.
    Computation: `device` ("auto": CUDA when available), `precision` (default: the weights'
    dtype; "bf16-autocast"/"fp16-autocast" run the forward under autocast), `seed`,
    `min_examples_per_aggregate`, `max_batches` per domain, `shard_batches` (under
    torch.distributed, each process takes every world_size-th batch), `exact_limit` (total
    trainable elements up to which element shares and gain curves are exact), `progress` (a bar
    on stderr). `batch_size` and `seq_len` are only recorded in the blueprint's method.
    Provenance: `description`, `publisher`, `supersedes`, `created` (default: now).
    Sidecar: write the combined row- or element-level scores (`sidecar_granularity`) to the
    safetensors file `sidecar`, referenced from the blueprint as `sidecar_ref` (default: the
    file's name, i.e. beside the blueprint) with its digest.
    `spill_dir`: where the combined per-element scores of finished domains wait, in a temporary
    file, while further domains run (default: the system's temporary folder); it keeps memory
    from growing with the number of domains (see score_store.py).

    A bad value raises `ConfigError` (code usage-error) located at the field's name.
    """

    model_path: str | Path | None = None
    model_name: str | None = None
    revision: str | None = None
    loss_name: str | None = None
    domain_weights: Mapping[str, float] | None = None
    rule: Rule = DEFAULT_RULE
    granularity: str = "element"
    statistic: str = "grad_norm_mean"
    cost_model: CostModel | None = None
    device: str | torch.device = "auto"
    precision: str | None = None
    seed: int = 0
    min_examples_per_aggregate: int = 32
    max_batches: int | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    shard_batches: bool = True
    exact_limit: int | None = None
    progress: bool = False
    description: str | None = None
    publisher: str | None = None
    supersedes: str | None = None
    created: str | None = None
    sidecar: str | Path | None = None
    sidecar_granularity: str = "row"
    sidecar_ref: str | None = None
    spill_dir: str | Path | None = None

    def __post_init__(self) -> None:
        self._check_allocation()
        self._check_computation()
        for name, annotated in (
            ("model_name", NonEmpty256), ("revision", NonEmpty256), ("loss_name", NonEmpty128),
            ("publisher", NonEmpty256), ("description", Text4096), ("supersedes", Digest), ("created", Timestamp),
        ):
            _fits(name, getattr(self, name), annotated)
        choice("sidecar_granularity", self.sidecar_granularity, SIDECAR_GRANULARITIES)
        for name in ("model_path", "sidecar", "spill_dir"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), (str, Path)):
                raise config_error(name, f"{name} must be a path, got {type(getattr(self, name)).__name__}")

    def _check_allocation(self) -> None:
        if self.domain_weights is not None:
            if not isinstance(self.domain_weights, Mapping):
                raise config_error("domain_weights", "domain_weights must map domain names to weights")
            object.__setattr__(self, "domain_weights", normalised_weights("domain_weights", self.domain_weights))
        if not isinstance(self.rule, Rule):
            raise config_error("rule", f"rule must be a reference_impl.allocation.Rule, got {type(self.rule).__name__}")
        choice("granularity", self.granularity, GRANULARITIES)
        choice("statistic", self.statistic, tuple(STATISTICS))
        if self.cost_model is not None and not isinstance(self.cost_model, CostModel):
            raise config_error("cost_model", "cost_model must be a reference_impl.allocation.CostModel")

    def _check_computation(self) -> None:
        if not isinstance(self.device, torch.device):
            if not isinstance(self.device, str):
                raise config_error("device", f"device must be a string or torch.device, got {self.device!r}")
            if self.device != "auto":
                try:
                    torch.device(self.device)
                except (RuntimeError, ValueError):
                    raise config_error("device", f"device {self.device!r} is not auto or a torch device") from None
        if self.precision is not None:
            choice("precision", self.precision, PRECISIONS)
        positive_int("seed", self.seed, minimum=0)
        positive_int("min_examples_per_aggregate", self.min_examples_per_aggregate)
        for name in ("max_batches", "batch_size", "seq_len"):
            positive_int(name, getattr(self, name), allow_none=True)
        positive_int("exact_limit", self.exact_limit, allow_none=True, minimum=0)
        for name in ("shard_batches", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise config_error(name, f"{name} must be True or False, got {getattr(self, name)!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA when available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def batch_examples(batch: Any) -> int:
    """Number of examples in a batch: the leading dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        for key in ("input_ids", "anchor"):
            if key in batch:
                return batch_examples(batch[key])
        values: Iterable[Any] = batch.values()
    elif isinstance(batch, (tuple, list)):
        values = batch
    else:
        return 0
    for v in values:
        n = batch_examples(v)
        if n:
            return n
    return 0


def batch_tokens(batch: Any) -> int | None:
    """Real tokens in a batch (sum of every attention mask on the host), or None."""
    if not isinstance(batch, Mapping):
        return None
    total = 0
    found = False
    for key, v in batch.items():
        if key == "attention_mask" and isinstance(v, torch.Tensor) and v.device.type == "cpu":
            total += int(v.sum())
            found = True
        elif isinstance(v, Mapping):
            sub = batch_tokens(v)
            if sub is not None:
                total += sub
                found = True
    return total if found else None


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to `device` without blocking."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(to_device(v, device) for v in batch)
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


def _batch_seed(seed: int, domain_index: int, batch_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{domain_index}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, dynamic_ncols=True, leave=True)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16-autocast":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16-autocast":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _model_precision(model: nn.Module) -> str:
    dtypes = {p.dtype for p in model.parameters()}
    for dt, name in ((torch.float64, "fp64"), (torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        if dtypes == {dt}:
            return name
    return "fp32"


def _iterate(batches: Iterable[Any], max_batches: int | None) -> Iterator[tuple[int, Any]]:
    for i, b in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            return
        yield i, b


@dataclass
class _Run:
    """What the batch loop needs, resolved once from the arguments and the config."""

    config: ComputeConfig
    model: nn.Module  # as given (possibly wrapped in DDP)
    inner: nn.Module  # the unwrapped model
    mode: str  # the collector's mode: "stream", "synchronized" (DDP) or "sharded" (FSDP2)
    loss_fn: LossFn
    loss_name: str
    device: torch.device
    precision: str
    layout: ModuleLayout
    names: list[str]
    specs: list[CalibrationDomain]
    weights: list[float]
    rank: int = 0
    world: int = 1
    on_domain_done: Callable[[str, DomainStats], None] | None = field(default=None, repr=False)


def _with_settings(config: ComputeConfig | None, settings: Mapping[str, Any]) -> ComputeConfig:
    """`config` with `settings` (ComputeConfig field names) applied; unknown names are refused."""
    known = {f.name for f in dataclasses.fields(ComputeConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise config_error(unknown[0], f"compute_blueprint got an unknown setting {unknown[0]!r} (see ComputeConfig)")
    if config is None:
        return ComputeConfig(**settings)
    if not isinstance(config, ComputeConfig):
        raise config_error("config", f"config must be a ComputeConfig, got {type(config).__name__}")
    return dataclasses.replace(config, **settings) if settings else config


def compute_blueprint(
    model: nn.Module,
    domains: Mapping[str, Iterable[Any] | CalibrationDomain],
    loss_fn: LossFn | None = None,
    config: ComputeConfig | None = None,
    *,
    tokenizer: Any | None = None,
    on_domain_done: Callable[[str, DomainStats], None] | None = None,
    **settings: Any,
) -> Blueprint:
    """Compute a spec v1 blueprint of `model` on the calibration `domains`.

    `domains` maps a domain name to an iterable of batches (or a `CalibrationDomain`). A batch
    is whatever `loss_fn(model, batch)` accepts; without `loss_fn` the model's own loss is used
    (Hugging Face causal LM, masked LM given `tokenizer`, sequence classification, or any model
    returning `.loss`). `config` holds every setting (`ComputeConfig`); `**settings` is a
    shorthand for `ComputeConfig(**settings)`, or for overriding fields of `config`.
    `on_domain_done(name, stats)` is called after each domain.

    Under torch.distributed each process takes every world_size-th batch (`shard_batches`) and
    the results are combined; every process returns the same blueprint. Models wrapped in DDP or
    sharded with FSDP2 (`fully_shard`) work; a batch is then the union of the processes' batches,
    and under FSDP2 module norms are assembled from the gradient shards (sharded.py). FSDP1
    (FullyShardedDataParallel) is refused: its flattened shards do not map back to parameters.

    Raises ConfigError (usage-error) for bad settings or arguments, ComputeError /
    ComputeInputError (BlueprintError subclasses) for refused input or a failed computation.
    Writes nothing except the sidecar, when asked, after the blueprint validated.
    """
    cfg = _with_settings(config, settings)
    run = _prepare(model, domains, loss_fn, cfg, tokenizer)
    run.on_domain_done = on_domain_done
    if run.mode != "sharded":  # FSDP2 placed the shards already
        run.model.to(run.device)
    was_training = run.model.training
    run.model.eval()
    run.model.zero_grad(set_to_none=True)
    collector = GradientCollector(
        run.layout.modules, run.device, mode=run.mode, spill_dir=cfg.spill_dir, model=run.inner,
        **({"exact_limit": cfg.exact_limit} if cfg.exact_limit is not None else {}),
    )
    try:
        results = _run_domains(run, collector)
        _check_aggregates(results, cfg.min_examples_per_aggregate)
        return assemble(Computation(
            config=cfg, model=run.inner, layout=run.layout, collector=collector, domains=results,
            device=run.device, precision=run.precision, world_size=run.world, loss_name=run.loss_name,
        ))
    finally:
        collector.close()
        run.model.zero_grad(set_to_none=True)
        run.model.train(was_training)


def _prepare(
    model: nn.Module, domains: Mapping[str, Any], loss_fn: LossFn | None, cfg: ComputeConfig, tokenizer: Any
) -> _Run:
    """Check the arguments against the config and resolve device, precision, layout and loss."""
    if not isinstance(domains, Mapping) or not domains:
        raise config_error("domains", "no calibration domains given")
    if is_fsdp1(model):
        raise compute_error(
            "unsupported-model",
            "FSDP1 (FullyShardedDataParallel) is not supported: its flattened shards do not map back to "
            "parameters; shard with FSDP2 (torch.distributed.fsdp.fully_shard) instead",
        )
    names = list(domains)
    for i, n in enumerate(names):
        if not isinstance(n, str) or not _NAME_RE.match(n):
            raise input_error(
                "bad-name", f"domain name {n!r}: letters, digits, '_', '-', '.', at most 64, starting alphanumeric",
                f"/domains/{i}/name",
            )
    specs = [d if isinstance(d, CalibrationDomain) else CalibrationDomain(batches=d) for d in domains.values()]
    ddp = type(model).__name__ == "DistributedDataParallel"
    wrapped = getattr(model, "module", None)
    inner: nn.Module = wrapped if ddp and isinstance(wrapped, nn.Module) else model
    mode = "sharded" if is_fsdp2(inner) else "synchronized" if ddp else "stream"
    if mode == "sharded" and cfg.sidecar is not None:
        raise config_error("sidecar", "score sidecars are not written from FSDP-sharded computations")
    layout = module_layout(inner, model_path=cfg.model_path)
    if not layout.modules:
        raise compute_error(
            "no-trainable-parameters",
            "the model has no trainable parameters that its weight files hold"
            + (f" (not in the weights: {', '.join(layout.unbound[:5])})" if layout.unbound else ""),
        )
    loss_fn, loss_name = _loss(model, loss_fn, cfg, tokenizer)
    is_dist = dist.is_available() and dist.is_initialized()
    return _Run(
        config=cfg, model=model, inner=inner, mode=mode, loss_fn=loss_fn, loss_name=loss_name,
        device=resolve_device(cfg.device), precision=cfg.precision or _model_precision(inner), layout=layout,
        names=names, specs=specs, weights=_domain_weights(names, cfg.domain_weights, [s.weight for s in specs]),
        rank=dist.get_rank() if is_dist else 0, world=dist.get_world_size() if is_dist else 1,
    )


def _loss(model: nn.Module, loss_fn: LossFn | None, cfg: ComputeConfig, tokenizer: Any) -> tuple[LossFn, str]:
    """The loss function and the name the blueprint records for it."""
    name = cfg.loss_name
    if loss_fn is None:
        try:
            loss_fn, default_name = default_loss(model, tokenizer)
        except ValueError as exc:
            raise config_error("loss_fn", str(exc)) from None
        name = name or default_name
    return loss_fn, name or f"custom:{getattr(loss_fn, '__name__', type(loss_fn).__name__)}"[:128]


def _domain_weights(names: list[str], given: Mapping[str, float] | None, defaults: list[float | None]) -> list[float]:
    """Normalised weight per domain: `given` (missing names weigh 0), else the domains' own
    weights, else equal weights."""
    if given is not None:
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise config_error("domain_weights", f"domain_weights names unknown domains: {unknown}")
        raw = {n: float(given.get(n, 0.0)) for n in names}
    elif any(w is not None for w in defaults):
        raw = {n: float(w) if w is not None else 0.0 for n, w in zip(names, defaults)}
    else:
        raw = dict.fromkeys(names, 1.0)
    try:
        weights = list(normalised_weights("domain_weights", raw).values())
    except ConfigError as exc:
        source = "domain_weights" if given is not None else "CalibrationDomain.weight"
        raise config_error(source, exc.issues[0].message) from None
    # Make the sum exactly 1 in floating point where a last-weight correction allows it.
    rest = 1.0 - sum(weights[:-1])
    if 0.0 <= rest <= 1.0:
        weights[-1] = rest
    return weights


def _run_domains(run: _Run, collector: GradientCollector) -> list[DomainResult]:
    """Every domain's batches through the collector; errors of the device mapped to codes."""
    results: list[DomainResult] = []
    current = ""
    try:
        with torch.enable_grad():
            for d_index, name in enumerate(run.names):
                current = name
                results.append(_run_domain(run, collector, d_index))
                if run.on_domain_done is not None:
                    run.on_domain_done(name, results[-1].stats)
    except NonFiniteGradient as exc:
        where = "another process" if exc.batch_index < 0 else f"batch {exc.batch_index}"
        raise compute_error(
            "non-finite-gradient",
            f"domain {current!r}: {where} produced NaN/inf gradients in {', '.join(exc.modules[:5])}; "
            "no blueprint was written",
            f"/domains/{len(results)}",
        ) from None
    except (torch.OutOfMemoryError, MemoryError):
        raise _out_of_memory(run.device, current, "") from None
    except RuntimeError as exc:
        if "out of memory" not in str(exc) and "can't allocate memory" not in str(exc):
            raise
        raise _out_of_memory(run.device, current, f" ({str(exc)[:200]})") from None
    return results


def _out_of_memory(device: torch.device, domain: str, detail: str) -> Exception:
    return compute_error(
        "out-of-memory", f"out of memory on {device.type} in domain {domain!r}{detail}; lower --batch-size or --seq-len"
    )


def _domain_source(run: _Run, batches: Iterable[Any]) -> tuple[Iterable[tuple[int, Any]], int | None]:
    """(index, batch) pairs of one domain and their count when known (for the progress bar)."""
    max_batches = run.config.max_batches
    total: int | None = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    if run.mode != "stream" and run.config.shard_batches and run.world > 1:
        # DDP and FSDP need the same number of backward passes on every process: drop the ragged end.
        listed = list(_iterate(batches, max_batches))
        usable = len(listed) - len(listed) % run.world
        if usable == 0:
            raise input_error("empty-domain", f"a domain has {len(listed)} batches, fewer than the {run.world} "
                              "processes (each needs one per step)")
        return listed[:usable], usable
    return _iterate(batches, max_batches), total


def _run_domain(run: _Run, collector: GradientCollector, d_index: int) -> DomainResult:
    """One domain's batches (this process's share of them) through the collector."""
    name, spec, cfg = run.names[d_index], run.specs[d_index], run.config
    source, total = _domain_source(run, spec.batches)
    shard = cfg.shard_batches and run.world > 1
    examples, n_local = 0, 0
    tokens: int | None = None
    collector.begin_domain()
    with _progress(total, name, cfg.progress and run.rank == 0) as bar:
        for i, batch in source:
            if bar is not None:
                bar.update(1)
            if shard and i % run.world != run.rank:
                continue
            examples += batch_examples(batch)
            t = batch_tokens(batch)
            if t is not None:
                tokens = (tokens or 0) + t
            _backward(run, batch, _batch_seed(cfg.seed, d_index, i))
            collector.accumulate(i)
            n_local += 1
    if n_local == 0 and run.world == 1:
        raise input_error("empty-domain", f"domain {name!r} has no batches", f"/domains/{d_index}")
    if run.world > 1 and dist.is_initialized():
        examples, tokens = _sum_counts(examples, tokens, run.device)
    stats = collector.end_domain(run.weights[d_index], more=d_index < len(run.names) - 1)
    return DomainResult(name, spec, run.weights[d_index], stats, examples, tokens)


def _backward(run: _Run, batch: Any, seed: int) -> None:
    """Forward and backward of one batch (gradients land in the parameters' .grad)."""
    torch.manual_seed(seed)
    run.model.zero_grad(set_to_none=True)
    with _autocast(run.device, run.precision):
        loss = run.loss_fn(run.model, to_device(batch, run.device))
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise compute_error("compute-failed", "loss_fn must return a scalar tensor")
    loss.reshape(()).backward()  # type: ignore[no-untyped-call]


def _sum_counts(examples: int, tokens: int | None, device: torch.device) -> tuple[int, int | None]:
    """Examples and tokens summed over the processes."""
    t = torch.tensor([examples, tokens or 0, 1 if tokens is not None else 0], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    total, tok, has_tok = (int(x) for x in t.tolist())
    return total, (tok if has_tok else None)


def _check_aggregates(results: list[DomainResult], minimum: int) -> None:
    """Refuse a domain with fewer examples than min_examples_per_aggregate (SPEC 18.1)."""
    for i, d in enumerate(results):
        if d.examples < minimum:
            raise input_error(
                "aggregate-too-small",
                f"domain {d.name!r} has {d.examples} examples; at least {minimum} are required "
                "(min_examples_per_aggregate)",
                f"/domains/{i}/examples",
            )
