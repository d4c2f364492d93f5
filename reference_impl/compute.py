"""`compute_blueprint`: gradient statistics of a model on calibration domains, as a valid blueprint.

Definitions (SPEC.md, "Statistics"). For module m and domain d with batches b = 1..B:

* g_{m,b}: gradient of the batch-mean loss of batch b with respect to m's own parameters;
* grad_norm_mean = mean_b ||g_{m,b}||, grad_norm_median = median_b ||g_{m,b}||,
  grad_norm_sq_mean = mean_b ||g_{m,b}||^2, mean_grad_norm = ||mean_b g_{m,b}||;
* rank: 1 for the largest grad_norm_mean within the domain;
* combined score = sum_d w_d * s_{m,d} / sum_{m'} s_{m',d} with s the allocation statistic,
  combined rank 1 for the largest score.

The model runs in eval mode (dropout off, so results are deterministic for a fixed seed on CPU);
torch's generator is reseeded before every batch from (seed, domain index, batch index).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from blueprint_format._version import SPEC_VERSION, __version__
from blueprint_format.models import Blueprint
from reference_impl import heavy_tail
from reference_impl.allocation import CostModel, Rule, allocate
from reference_impl.collector import DomainStats, GradientCollector, NonFiniteGradient
from reference_impl.errors import compute_error, input_error
from reference_impl.losses import LossFn, default_loss
from reference_impl.model_binding import ModuleLayout, module_layout

GENERATOR_NAME = "gradient-blueprints"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_RULE = Rule("global-budget", {"budget": 0.2})
STATISTICS = ("grad_norm_mean", "grad_norm_median", "grad_norm_sq_mean", "mean_grad_norm")
PRECISIONS = ("fp32", "fp64", "bf16", "fp16", "bf16-autocast", "fp16-autocast")
#: Extension member where the reference implementation records details outside the spec.
EXTENSION = "org.gradient-blueprints.reference-impl"
#: What a score sidecar holds.
SIDECAR_STATISTIC = "combined-normalised-squared-mean-gradient"


@dataclass
class CalibrationDomain:
    """Batches of one calibration domain plus what the blueprint records about their data.

    `texts`, when given, are the examples' texts in order; the data fingerprint is SHA-256 of
    their UTF-8 bytes joined by LF. `fingerprint` overrides it.
    """

    batches: Iterable[Any]
    texts: list[str] | None = None
    fingerprint: str | None = None
    weight: float | None = None
    description: str | None = None
    source: str | None = None


def data_fingerprint(texts: Iterable[str]) -> str:
    """`sha256:` + hex SHA-256 of the texts' UTF-8 encoding joined by "\\n"."""
    return "sha256:" + hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


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
        for v in batch.values():
            n = batch_examples(v)
            if n:
                return n
        return 0
    if isinstance(batch, (tuple, list)):
        for v in batch:
            n = batch_examples(v)
            if n:
                return n
    return 0


def batch_tokens(batch: Any) -> int | None:
    """Real tokens in a batch (sum of every attention mask on the host), or None."""
    if isinstance(batch, Mapping):
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
    return None


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


def _is_fsdp(model: nn.Module) -> bool:
    if "FullyShardedDataParallel" in type(model).__name__:
        return True
    return any(type(p).__name__ == "DTensor" or "DTensor" in type(p.data).__name__ for p in model.parameters())


def _weights_revision(model_path: Path) -> str:
    """A revision string derived from the bytes of the weight files (first 16 hex of SHA-256)."""
    files = sorted(model_path.glob("*.safetensors")) if model_path.is_dir() else [model_path]
    h = hashlib.sha256()
    for f in files:
        fh = hashlib.sha256()
        with f.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 22), b""):
                fh.update(chunk)
        h.update(f.name.encode() + b"\0" + fh.digest())
    return "weights-sha256:" + h.hexdigest()[:16]


def _normalise_weights(names: list[str], given: Mapping[str, float] | None, defaults: list[float | None]) -> list[float]:
    raw: list[float]
    if given is not None:
        unknown = set(given) - set(names)
        if unknown:
            raise ValueError(f"domain weights name unknown domains: {sorted(unknown)}")
        raw = [float(given.get(n, 0.0)) for n in names]
    elif any(w is not None for w in defaults):
        raw = [float(w) if w is not None else 0.0 for w in defaults]
    else:
        raw = [1.0] * len(names)
    if any(not math.isfinite(w) or w < 0 for w in raw) or sum(raw) <= 0:
        raise ValueError("domain weights must be finite, non-negative and not all zero")
    total = sum(raw)
    weights = [w / total for w in raw]
    # Make the sum exactly 1 in floating point where a last-weight correction allows it.
    rest = 1.0 - sum(weights[:-1])
    if 0.0 <= rest <= 1.0:
        weights[-1] = rest
    return weights


def _ranks(values: np.ndarray) -> list[int]:
    """1 for the largest value; ties in module order."""
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
    ranks = [0] * len(values)
    for r, i in enumerate(order, start=1):
        ranks[i] = r
    return ranks


def _domain_module_stats(stats: DomainStats, keep: list[int]) -> dict[str, np.ndarray]:
    """Per-module statistics in float64, made exactly consistent (sq_mean >= mean^2 etc.)."""
    bn = stats.batch_norms[:, keep]
    mean = bn.mean(axis=0)
    median = np.median(bn, axis=0)
    sq_mean = (bn * bn).mean(axis=0)
    mgn = stats.mean_grad_norm[keep]
    # Jensen and the triangle inequality hold exactly; these clamps only absorb rounding.
    sq_mean = np.maximum(sq_mean, mean * mean)
    mgn = np.minimum(mgn, mean)
    return {"grad_norm_mean": mean, "grad_norm_median": median, "grad_norm_sq_mean": sq_mean, "mean_grad_norm": mgn}


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


def compute_blueprint(
    model: nn.Module,
    domains: Mapping[str, Iterable[Any] | CalibrationDomain],
    loss_fn: LossFn | None = None,
    *,
    model_path: str | Path | None = None,
    model_name: str | None = None,
    revision: str | None = None,
    tokenizer: Any | None = None,
    loss_name: str | None = None,
    domain_weights: Mapping[str, float] | None = None,
    rule: Rule = DEFAULT_RULE,
    granularity: str = "element",
    statistic: str = "grad_norm_mean",
    cost_model: CostModel | None = None,
    device: str | torch.device = "auto",
    precision: str | None = None,
    seed: int = 0,
    min_examples_per_aggregate: int = 32,
    max_batches: int | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    shard_batches: bool = True,
    progress: bool = False,
    description: str | None = None,
    publisher: str | None = None,
    supersedes: str | None = None,
    created: str | None = None,
    exact_limit: int | None = None,
    on_domain_done: Callable[[str, DomainStats], None] | None = None,
    sidecar: str | Path | None = None,
    sidecar_granularity: str = "row",
    sidecar_ref: str | None = None,
) -> Blueprint:
    """Compute a spec v1 blueprint of `model` on the calibration `domains`.

    `domains` maps a domain name to an iterable of batches (or a `CalibrationDomain`). A batch
    is whatever `loss_fn(model, batch)` accepts; without `loss_fn` the model's own loss is used
    (Hugging Face causal LM, masked LM given `tokenizer`, sequence classification, or any model
    returning `.loss`). `model_path` (a safetensors file or model folder) binds the blueprint to
    those weight files' headers; without it the blueprint binds to the model's state_dict.
    Under torch.distributed each process takes every world_size-th batch (`shard_batches`) and
    the results are combined; every process returns the same blueprint. DDP-wrapped models work
    (a batch is then the union of the processes' batches); FSDP is refused, because its processes
    hold only shards of flattened gradients (see `reference_impl.collector`). Raises ComputeError /
    ComputeInputError (BlueprintError subclasses) for refused input.

    `sidecar`: also write the combined row- or element-level scores (`sidecar_granularity`) of
    every module to this safetensors file (atomically; the only file this function writes) and
    reference it from the blueprint by `sidecar_ref` (default: the file's name, i.e. beside the
    blueprint) and SHA-256 digest.
    """
    if sidecar is not None and sidecar_granularity not in ("row", "element"):
        raise ValueError("sidecar_granularity must be 'row' or 'element'")
    if not domains:
        raise input_error("missing-field", "no calibration domains given")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}")
    if _is_fsdp(model):
        raise compute_error(
            "unsupported-model",
            "FSDP-sharded models are not supported: per-module norms need whole gradients (see collector docs)",
            fallback="unsupported-container",
        )
    is_dist = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if is_dist else 0
    world = dist.get_world_size() if is_dist else 1
    ddp = type(model).__name__ == "DistributedDataParallel"
    wrapped = getattr(model, "module", None)
    inner: nn.Module = wrapped if ddp and isinstance(wrapped, nn.Module) else model
    dev = resolve_device(device)
    if precision is None:
        precision = _model_precision(inner)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")

    layout: ModuleLayout = module_layout(inner, model_path=model_path)
    if not layout.modules:
        raise compute_error(
            "no-trainable-parameters",
            "the model has no trainable parameters that its weight files hold"
            + (f" (not in the weights: {', '.join(layout.unbound[:5])})" if layout.unbound else ""),
            fallback="parameter-count-mismatch",
        )
    if loss_fn is None:
        try:
            loss_fn, default_name = default_loss(model, tokenizer)
        except ValueError as exc:
            raise compute_error("missing-field", str(exc), fallback="missing-field") from None
        loss_name = loss_name or default_name
    loss_name = loss_name or f"custom:{getattr(loss_fn, '__name__', type(loss_fn).__name__)}"[:128]

    names = list(domains)
    for i, n in enumerate(names):
        if not isinstance(n, str) or not _NAME_RE.match(n):
            raise input_error(
                "bad-name", f"domain name {n!r}: letters, digits, '_', '-', '.', at most 64, starting alphanumeric",
                f"/domains/{i}/name",
            )
    specs = [d if isinstance(d, CalibrationDomain) else CalibrationDomain(batches=d) for d in domains.values()]
    try:
        weights = _normalise_weights(names, domain_weights, [s.weight for s in specs])
    except ValueError as exc:
        raise input_error("domain-weights-sum", str(exc), "/allocation/domain_weights") from None

    model.to(dev)
    was_training = model.training
    model.eval()
    collector = GradientCollector(
        layout.modules, dev, synchronized_grads=ddp, **({"exact_limit": exact_limit} if exact_limit is not None else {})
    )
    results: list[DomainStats] = []
    counts: list[tuple[int, int, int | None]] = []  # (examples, batches, tokens)
    try:
        with torch.enable_grad():
            for d_index, (name, spec) in enumerate(zip(names, specs)):
                results.append(
                    _run_domain(
                        model, collector, loss_fn, name, spec, d_index, weights[d_index], dev, precision, seed,
                        max_batches, shard_batches, rank, world, ddp, progress, counts,
                    )
                )
                if on_domain_done is not None:
                    on_domain_done(name, results[-1])
    except NonFiniteGradient as exc:
        where = "another process" if exc.batch_index < 0 else f"batch {exc.batch_index}"
        raise compute_error(
            "non-finite-gradient",
            f"domain {names[len(results)]!r}: {where} produced NaN/inf gradients in "
            f"{', '.join(exc.modules[:5])}; no blueprint was written",
            f"/domains/{len(results)}",
            fallback="non-finite-number",
        ) from None
    except (torch.OutOfMemoryError, MemoryError):
        raise compute_error(
            "out-of-memory",
            f"out of memory on {dev.type} in domain {names[len(results)]!r}; lower --batch-size or --seq-len",
            fallback="io-error",
        ) from None
    except RuntimeError as exc:
        if "out of memory" not in str(exc) and "can't allocate memory" not in str(exc):
            raise
        raise compute_error(
            "out-of-memory",
            f"out of memory on {dev.type} in domain {names[len(results)]!r} ({str(exc)[:200]}); "
            "lower --batch-size or --seq-len",
            fallback="io-error",
        ) from None
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)

    for i, (name, (examples, _, _)) in enumerate(zip(names, counts)):
        if examples < min_examples_per_aggregate:
            raise input_error(
                "aggregate-too-small",
                f"domain {name!r} has {examples} examples; at least {min_examples_per_aggregate} are required "
                "(min_examples_per_aggregate)",
                f"/domains/{i}/examples",
            )

    return _assemble(
        inner, layout, collector, names, specs, weights, results, counts,
        model_path=model_path, model_name=model_name, revision=revision, loss_name=loss_name, rule=rule,
        granularity=granularity, statistic=statistic, cost_model=cost_model or CostModel(), dev=dev,
        precision=precision, seed=seed, min_examples=min_examples_per_aggregate, batch_size=batch_size,
        seq_len=seq_len, world=world, description=description, publisher=publisher, supersedes=supersedes,
        created=created, sidecar=(Path(sidecar), sidecar_granularity, sidecar_ref) if sidecar is not None else None,
    )


def _write_sidecar(path: Path, tensors: dict[str, torch.Tensor], granularity: str) -> str:
    """Write the scores as safetensors atomically; return the file's digest."""
    from safetensors.torch import save

    from blueprint_format.atomic import atomic_write_bytes

    data = save(tensors, metadata={"granularity": granularity, "statistic": SIDECAR_STATISTIC})
    atomic_write_bytes(path, data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _run_domain(
    model: nn.Module,
    collector: GradientCollector,
    loss_fn: LossFn,
    name: str,
    spec: CalibrationDomain,
    d_index: int,
    weight: float,
    dev: torch.device,
    precision: str,
    seed: int,
    max_batches: int | None,
    shard: bool,
    rank: int,
    world: int,
    ddp: bool,
    progress: bool,
    counts: list[tuple[int, int, int | None]],
) -> DomainStats:
    batches: Iterable[Any] = spec.batches
    total: int | None = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    if ddp and shard and world > 1:
        # DDP needs the same number of backward passes on every process: drop the ragged end.
        listed = list(_iterate(batches, max_batches))
        usable = len(listed) - len(listed) % world
        source: Iterable[tuple[int, Any]] = listed[:usable]
        total = usable
    else:
        source = _iterate(batches, max_batches)
    examples = 0
    tokens: int | None = None
    n_local = 0
    collector.begin_domain()
    with _progress(total, name, progress and rank == 0) as bar:
        for i, batch in source:
            if bar is not None:
                bar.update(1)
            if shard and world > 1 and i % world != rank:
                continue
            examples += batch_examples(batch)
            t = batch_tokens(batch)
            if t is not None:
                tokens = (tokens or 0) + t
            torch.manual_seed(_batch_seed(seed, d_index, i))
            model.zero_grad(set_to_none=True)
            with _autocast(dev, precision):
                loss = loss_fn(model, to_device(batch, dev))
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise compute_error("compute-failed", "loss_fn must return a scalar tensor", fallback="wrong-type")
            loss.reshape(()).backward()  # type: ignore[no-untyped-call]
            collector.accumulate(i)
            n_local += 1
    if n_local == 0 and world == 1:
        raise input_error("empty-document", f"domain {name!r} has no batches", f"/domains/{d_index}")
    if world > 1 and dist.is_initialized():
        t_tensor = torch.tensor([examples, tokens or 0, 1 if tokens is not None else 0, n_local],
                                dtype=torch.long, device=dev)
        dist.all_reduce(t_tensor, op=dist.ReduceOp.SUM)
        examples, tok, has_tok, _ = (int(x) for x in t_tensor.tolist())
        tokens = tok if has_tok else None
    stats = collector.end_domain(weight)
    counts.append((examples, int(stats.batch_norms.shape[0]), tokens))
    return stats


def _assemble(
    inner: nn.Module,
    layout: ModuleLayout,
    collector: GradientCollector,
    names: list[str],
    specs: list[CalibrationDomain],
    weights: list[float],
    results: list[DomainStats],
    counts: list[tuple[int, int, int | None]],
    *,
    model_path: str | Path | None,
    model_name: str | None,
    revision: str | None,
    loss_name: str,
    rule: Rule,
    granularity: str,
    statistic: str,
    cost_model: CostModel,
    dev: torch.device,
    precision: str,
    seed: int,
    min_examples: int,
    batch_size: int | None,
    seq_len: int | None,
    world: int,
    description: str | None,
    publisher: str | None,
    supersedes: str | None,
    created: str | None,
    sidecar: tuple[Path, str, str | None] | None = None,
) -> Blueprint:
    reached = np.zeros(len(layout.modules), dtype=bool)
    for r in results:
        reached |= r.reached
    keep = [i for i in range(len(layout.modules)) if reached[i]]
    if not keep:
        raise compute_error(
            "no-trainable-parameters",
            "the loss reached none of the model's trainable parameters",
            fallback="parameter-count-mismatch",
        )
    unreached = [layout.modules[i].name for i in range(len(layout.modules)) if not reached[i]]
    mods = [layout.modules[i] for i in keep]
    per_domain = [_domain_module_stats(r, keep) for r in results]
    for d, stats in zip(names, per_domain):
        for key, arr in stats.items():
            if not np.all(np.isfinite(arr)):
                raise compute_error(
                    "non-finite-gradient", f"domain {d!r}: {key} is not finite", fallback="non-finite-number"
                )

    # Combined score over domains (shares of the allocation statistic, weighted).
    score = np.zeros(len(mods))
    for w, stats in zip(weights, per_domain):
        s = stats[statistic]
        total = float(s.sum())
        if total > 0:
            score += w * s / total
    combined_rank = _ranks(score)
    sizes = [m.parameter_count for m in mods]
    curves = None
    if granularity != "module":
        all_curves = collector.gain_curves(granularity)
        curves = [all_curves[i] for i in keep]
    alloc = allocate(rule, granularity, score.tolist(), sizes, cost_model, curves)
    resolved_cost = cost_model.resolved(alloc.total_params)

    domain_ranks = [_ranks(stats["grad_norm_mean"]) for stats in per_domain]
    modules_json: list[dict[str, Any]] = []
    for j, m in enumerate(mods):
        entry: dict[str, Any] = {
            "name": m.name,
            "type": m.type[:128],
            "parameter_count": m.parameter_count,
            "stats": {
                d: {
                    "grad_norm_mean": float(per_domain[k]["grad_norm_mean"][j]),
                    "grad_norm_median": float(per_domain[k]["grad_norm_median"][j]),
                    "grad_norm_sq_mean": float(per_domain[k]["grad_norm_sq_mean"][j]),
                    "mean_grad_norm": float(per_domain[k]["mean_grad_norm"][j]),
                    "rank": domain_ranks[k][j],
                }
                for k, d in enumerate(names)
            },
            "combined": {"score": float(score[j]), "rank": combined_rank[j]},
        }
        k_star = alloc.k_star[j]
        if k_star is not None:
            entry["k_star"] = float(k_star)
        modules_json.append(entry)

    domains_json: list[dict[str, Any]] = []
    for k, (d, spec, (examples, batches, tokens), r) in enumerate(zip(names, specs, counts, results)):
        values = per_domain[k][statistic]
        fit = heavy_tail.fit_power_law(values)
        ht: dict[str, Any] = {
            "statistic": statistic,
            "method": heavy_tail.FIT_METHOD,
            "exponent_convention": heavy_tail.EXPONENT_CONVENTION,
            "status": fit.status,
            "sample_count": fit.sample_count,
            "mass_shares": heavy_tail.mass_shares(values),
        }
        if fit.status == "ok":
            ht.update(exponent=fit.exponent, x_min=fit.x_min, ks_distance=fit.ks_distance, tail_count=fit.tail_count)
        if fit.message:
            ht["message"] = fit.message[:1024]
        dom: dict[str, Any] = {"name": d, "weight": weights[k], "examples": examples, "batches": batches}
        if tokens:
            dom["tokens"] = tokens
        fp = spec.fingerprint or (data_fingerprint(spec.texts) if spec.texts is not None else None)
        if fp:
            dom["data_fingerprint"] = fp
        if spec.description:
            dom["description"] = spec.description[:4096]
        if spec.source:
            dom["source"] = spec.source[:1024]
        dom["heavy_tail"] = ht
        dom["element_mass_shares"] = r.element_shares
        domains_json.append(dom)

    config = getattr(inner, "config", None)
    archs = getattr(config, "architectures", None) or []
    path = Path(model_path) if model_path is not None else None
    name = model_name or (path.name if path is not None else getattr(config, "_name_or_path", "") or type(inner).__name__)
    if revision is None:
        revision = _weights_revision(path) if path is not None else "unspecified"
    float_params = sum(t.numel for t in layout.tensors if t.dtype in ("F64", "F32", "F16", "BF16"))
    model_json: dict[str, Any] = {
        "name": name[:256] or "model",
        "revision": revision[:256],
        "architecture": (archs[0] if archs else type(inner).__name__)[:256],
        "structure_digest": layout.structure_digest,
        "tensor_count": len(layout.tensors),
    }
    if float_params > 0:
        model_json["parameter_count"] = float_params
    method: dict[str, Any] = {
        "estimator": "batch-gradient-norm",
        "loss": loss_name[:128],
        "precision": precision,
        "seed": int(seed),
        "device_kind": _device_kind(dev),
        "world_size": world,
        "min_examples_per_aggregate": int(min_examples),
    }
    if batch_size:
        method["batch_size"] = int(batch_size)
    if seq_len:
        method["seq_len"] = int(seq_len)
    provenance: dict[str, Any] = {
        "created": created or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "generator": {"name": GENERATOR_NAME, "version": __version__},
    }
    if publisher:
        provenance["publisher"] = publisher
    if supersedes:
        provenance["supersedes"] = supersedes
    allocation: dict[str, Any] = {
        "rule": rule.to_json(),
        "statistic": statistic,
        "granularity": granularity,
        "cost_model": resolved_cost.to_json(),
        "domain_weights": dict(zip(names, weights)),
        "trainable_fraction": alloc.trainable_fraction,
    }
    if granularity != "module":
        allocation["gain_model"] = f"top-k squared mean-gradient mass per {granularity}, score-weighted"
    doc: dict[str, Any] = {
        "spec_version": SPEC_VERSION,
        "model": model_json,
        "provenance": provenance,
        "method": method,
        "domains": domains_json,
        "modules": modules_json,
        "allocation": allocation,
        "extensions": {
            EXTENSION: {
                "element_statistic": "abs-mean-gradient",
                "element_shares_exact": all(r.element_shares_exact for r in results),
                "gain_curves_exact": collector.exact,
                "expected_gain": alloc.gain,
                "unreached_modules": unreached[:1000],
                "unbound_parameters": layout.unbound[:1000],
            }
        },
    }
    if description:
        doc["description"] = description[:4096]
    bp = Blueprint.model_validate(doc)  # validate before writing anything
    if sidecar is not None:
        path, sc_granularity, ref = sidecar
        digest = _write_sidecar(path, collector.score_tensors(sc_granularity, keep), sc_granularity)
        doc["sidecars"] = [{
            "path": ref or path.name, "digest": digest, "format": "safetensors", "granularity": sc_granularity,
            "statistic": SIDECAR_STATISTIC,
        }]
        bp = Blueprint.model_validate(doc)
    return bp


def _device_kind(dev: torch.device) -> str:
    if dev.type == "cuda":
        try:
            return f"cuda:{torch.cuda.get_device_name(dev)}"[:64]
        except Exception:  # pragma: no cover - name lookup is best effort
            return "cuda"
    return dev.type
