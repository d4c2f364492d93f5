"""The blueprint document from a finished computation: one small function per record.

`compute_blueprint` (compute.py) runs the batches and hands a `Computation` to `assemble`, which
keeps the modules the loss reached, derives every registered statistic (statistics.py), the
combined score (SPEC 7.5) and the allocation (allocation.py), and builds the document's records:
`model`, `provenance`, `method`, one `domain_record` per calibration domain, one `module_record`
per module, `allocation`, the implementation's extension, and the optional score sidecar. The
document is validated before anything is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from blueprint_format._version import SPEC_VERSION, __version__, required_spec_version
from blueprint_format.jsonio import sha256_digest
from blueprint_format.models import Blueprint, Domain, HeavyTail
from reference_impl import heavy_tail
from reference_impl.allocation import Allocation, CostModel, allocate
from reference_impl.collector import DomainStats, GradientCollector
from reference_impl.config import spec_max_length
from reference_impl.data_selection import data_fingerprint
from reference_impl.errors import compute_error
from reference_impl.model_binding import ModuleLayout
from reference_impl.stability import METHOD as STABILITY_METHOD
from reference_impl.stability import STABILITY_STATISTICS, StabilityConfig, bootstrap_stability
from reference_impl.statistics import RANK_STATISTIC, STATISTICS, module_statistics, ranks

if TYPE_CHECKING:
    from reference_impl.compute import CalibrationDomain, ComputeConfig

GENERATOR_NAME = "gradient-blueprints"
#: Extension member where the reference implementation records details outside the spec.
EXTENSION = "org.gradient-blueprints.reference-impl"
#: What a score sidecar holds.
SIDECAR_STATISTIC = "combined-normalised-squared-mean-gradient"
#: safetensors dtype codes of floating-point tensors (the model's `parameter_count` counts them).
_FLOAT_CODES = ("F64", "F32", "F16", "BF16")


@dataclass
class DomainResult:
    """One calibration domain after its batches ran: what it is and what it measured."""

    name: str
    spec: CalibrationDomain
    weight: float  # normalised domain weight
    stats: DomainStats  # raw per-batch norms etc. (stats.batch_norms: batches x modules)
    examples: int
    tokens: int | None

    @property
    def batches(self) -> int:
        return int(self.stats.batch_norms.shape[0])


@dataclass
class Computation:
    """Everything `assemble` needs: the settings, the model, and the per-domain results."""

    config: ComputeConfig
    model: nn.Module  # the unwrapped model (not its DDP wrapper)
    layout: ModuleLayout
    collector: GradientCollector
    domains: list[DomainResult]
    device: torch.device
    precision: str
    world_size: int
    loss_name: str


def assemble(c: Computation) -> Blueprint:
    """The validated blueprint of a finished computation (writes the sidecar when asked)."""
    keep, unreached = _kept_modules(c)
    per_domain = [_domain_values(d, keep) for d in c.domains]
    cfg = c.config
    score = _combined_scores([d.weight for d in c.domains], per_domain, cfg.statistic)
    mods = [c.layout.modules[i] for i in keep]
    curves = None
    if cfg.granularity != "module":
        all_curves = c.collector.gain_curves(cfg.granularity)
        curves = [all_curves[i] for i in keep]
    cost_model = cfg.cost_model or CostModel()
    alloc = allocate(cfg.rule, cfg.granularity, score.tolist(), [m.parameter_count for m in mods], cost_model, curves)
    domain_ranks = [ranks(v[RANK_STATISTIC]) for v in per_domain]
    combined_rank = ranks(score)
    names = [d.name for d in c.domains]
    doc: dict[str, Any] = {
        "spec_version": SPEC_VERSION,  # lowered below to the version the document needs
        "model": model_record(c),
        "provenance": provenance_record(cfg),
        "method": method_record(c),
        "domains": [domain_record(d, values, cfg.statistic) for d, values in zip(c.domains, per_domain)],
        "modules": [
            module_record(m.name, m.type, m.parameter_count, {
                name: {**{k: float(v[k][j]) for k in STATISTICS}, "rank": r[j]}
                for name, v, r in zip(names, per_domain, domain_ranks)
            }, float(score[j]), combined_rank[j], alloc.k_star[j])
            for j, m in enumerate(mods)
        ],
        "allocation": allocation_record(c, alloc, cost_model),
        "extensions": {EXTENSION: _extension(c, alloc, unreached)},
    }
    if cfg.description:
        doc["description"] = cfg.description
    for i, d in enumerate(c.domains):
        add_stability(doc, i, d, keep, per_domain[i], cfg, alloc.trainable_fraction)
    doc["spec_version"] = required_spec_version(doc)  # the lowest version defining what it holds
    bp = Blueprint.model_validate(doc)  # validate before writing anything
    if cfg.sidecar is not None:
        doc["sidecars"] = [_write_sidecar(c, keep)]
        bp = Blueprint.model_validate(doc)
    return bp


def _kept_modules(c: Computation) -> tuple[list[int], list[str]]:
    """Indices of the modules the loss reached in some domain, and the names of the others."""
    reached = np.zeros(len(c.layout.modules), dtype=bool)
    for d in c.domains:
        reached |= d.stats.reached
    keep = [i for i in range(len(reached)) if reached[i]]
    if not keep:
        raise compute_error("no-trainable-parameters", "the loss reached none of the model's trainable parameters")
    return keep, [c.layout.modules[i].name for i in range(len(reached)) if not reached[i]]


def _domain_values(d: DomainResult, keep: list[int]) -> dict[str, np.ndarray]:
    """The registered statistics of the kept modules on one domain; refuses non-finite values."""
    values = module_statistics(d.stats.batch_norms[:, keep], d.stats.mean_grad_norm[keep])
    for key, arr in values.items():
        if not np.all(np.isfinite(arr)):
            raise compute_error("non-finite-gradient", f"domain {d.name!r}: {key} is not finite")
    return values


def _combined_scores(weights: list[float], per_domain: list[dict[str, np.ndarray]], statistic: str) -> np.ndarray:
    """sum_d w_d * s_{m,d} / sum_{m'} s_{m',d} (SPEC 7.5): shares of the statistic, weighted."""
    score = np.zeros(len(per_domain[0][statistic]))
    for w, values in zip(weights, per_domain):
        s = values[statistic]
        total = float(s.sum())
        if total > 0:
            score += w * s / total
    return score


def module_record(
    name: str, type_name: str, parameter_count: int, stats: dict[str, dict[str, Any]], score: float, rank: int,
    k_star: float | None,
) -> dict[str, Any]:
    """One entry of `modules` (SPEC 7.1)."""
    entry: dict[str, Any] = {
        "name": name,
        "type": type_name[:128],
        "parameter_count": parameter_count,
        "stats": stats,
        "combined": {"score": score, "rank": rank},
    }
    if k_star is not None:
        entry["k_star"] = float(k_star)
    return entry


def heavy_tail_record(values: np.ndarray, statistic: str) -> dict[str, Any]:
    """A domain's `heavy_tail` member (SPEC 8): the power-law fit and mass shares of `values`."""
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
        ht["message"] = fit.message[: spec_max_length(HeavyTail, "message")]
    return ht


def domain_record(d: DomainResult, values: dict[str, np.ndarray], statistic: str) -> dict[str, Any]:
    """One entry of `domains` (SPEC 6): counts, data fingerprint, heavy tail and element shares.

    `values` are the registered statistics of the kept modules on this domain; the raw per-batch
    norms (batches x all modules) are `d.stats.batch_norms`.
    """
    record: dict[str, Any] = {"name": d.name, "weight": d.weight, "examples": d.examples, "batches": d.batches}
    if d.tokens:
        record["tokens"] = d.tokens
    spec = d.spec
    fingerprint = spec.fingerprint or (data_fingerprint(spec.texts) if spec.texts is not None else None)
    if fingerprint:
        record["data_fingerprint"] = fingerprint
    if spec.description:
        record["description"] = spec.description[: spec_max_length(Domain, "description")]
    if spec.source:
        record["source"] = spec.source[: spec_max_length(Domain, "source")]
    record["heavy_tail"] = heavy_tail_record(values[statistic], statistic)
    record["element_mass_shares"] = d.stats.element_shares
    return record


def add_stability(
    doc: dict[str, Any], i: int, d: DomainResult, keep: list[int], values: dict[str, np.ndarray],
    cfg: ComputeConfig, budget: float | None,
) -> None:
    """Domain i's `stability` and its modules' `interval`s (SPEC 7.7), from a bootstrap over its
    batches; nothing with fewer than 2 batches. The statistic is the allocation's when per-batch
    norms can resample it, else grad_norm_mean; the selection overlap is taken at the allocation's
    trainable fraction."""
    if d.batches < 2:
        return
    statistic = cfg.statistic if cfg.statistic in STABILITY_STATISTICS else "grad_norm_mean"
    settings = StabilityConfig(seed=cfg.seed)
    sizes = np.array([m["parameter_count"] for m in doc["modules"]]) if budget else None
    s = bootstrap_stability(
        d.stats.batch_norms[:, keep], statistic, values[statistic], sizes, budget or None, settings
    )
    record: dict[str, Any] = {
        "method": STABILITY_METHOD, "statistic": statistic, "resamples": settings.resamples,
        "confidence": settings.confidence, "seed": settings.seed, "rank_correlation": s.rank_correlation,
    }
    if s.selection_overlap is not None:
        record["selection"] = {"budget": budget, "overlap": s.selection_overlap}
    doc["domains"][i]["stability"] = record
    for module, lower, upper in zip(doc["modules"], s.lower, s.upper):
        module["stats"][d.name]["interval"] = {"lower": float(lower), "upper": float(upper)}


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


def model_record(c: Computation) -> dict[str, Any]:
    """The `model` object (SPEC 3.1): name, revision, architecture and the binding digests."""
    cfg, layout = c.config, c.layout
    config = getattr(c.model, "config", None)
    archs = getattr(config, "architectures", None) or []
    path = Path(cfg.model_path) if cfg.model_path is not None else None
    fallback_name = path.name if path is not None else getattr(config, "_name_or_path", "") or type(c.model).__name__
    name = cfg.model_name or fallback_name
    revision = cfg.revision or (_weights_revision(path) if path is not None else "unspecified")
    record: dict[str, Any] = {
        "name": name[:256] or "model",
        "revision": revision[:256],
        "architecture": (archs[0] if archs else type(c.model).__name__)[:256],
        "structure_digest": layout.structure_digest,
        "tensor_count": len(layout.tensors),
    }
    float_params = sum(t.numel for t in layout.tensors if t.dtype in _FLOAT_CODES)
    if float_params > 0:
        record["parameter_count"] = float_params
    return record


def _device_kind(dev: torch.device) -> str:
    if dev.type == "cuda":
        try:
            return f"cuda:{torch.cuda.get_device_name(dev)}"[:64]
        except Exception:  # pragma: no cover - name lookup is best effort
            return "cuda"
    return dev.type


def method_record(c: Computation) -> dict[str, Any]:
    """The `method` object (SPEC 5): estimator, loss, precision, seed, device and world size."""
    cfg = c.config
    record: dict[str, Any] = {
        "estimator": "batch-gradient-norm",
        "loss": c.loss_name[:128],
        "precision": c.precision,
        "seed": cfg.seed,
        "device_kind": _device_kind(c.device),
        "world_size": c.world_size,
        "min_examples_per_aggregate": cfg.min_examples_per_aggregate,
    }
    if cfg.batch_size:
        record["batch_size"] = cfg.batch_size
    if cfg.seq_len:
        record["seq_len"] = cfg.seq_len
    return record


def provenance_record(cfg: ComputeConfig) -> dict[str, Any]:
    """The `provenance` object (SPEC 4.1)."""
    record: dict[str, Any] = {
        "created": cfg.created or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "generator": {"name": GENERATOR_NAME, "version": __version__},
    }
    if cfg.publisher:
        record["publisher"] = cfg.publisher
    if cfg.supersedes:
        record["supersedes"] = cfg.supersedes
    return record


def allocation_record(c: Computation, alloc: Allocation, cost_model: CostModel) -> dict[str, Any]:
    """The `allocation` object (SPEC 9.1): rule, statistic, granularity, cost model, weights."""
    cfg = c.config
    record: dict[str, Any] = {
        "rule": cfg.rule.to_json(),
        "statistic": cfg.statistic,
        "granularity": cfg.granularity,
        "cost_model": cost_model.resolved(alloc.total_params).to_json(),
        "domain_weights": {d.name: d.weight for d in c.domains},
        "trainable_fraction": alloc.trainable_fraction,
    }
    if cfg.granularity != "module":
        record["gain_model"] = f"top-k squared mean-gradient mass per {cfg.granularity}, score-weighted"
    return record


def _extension(c: Computation, alloc: Allocation, unreached: list[str]) -> dict[str, Any]:
    """What the reference implementation records outside the spec (SPEC 12)."""
    return {
        "element_statistic": "abs-mean-gradient",
        "element_shares_exact": all(d.stats.element_shares_exact for d in c.domains),
        "gain_curves_exact": c.collector.exact,
        "expected_gain": alloc.gain,
        "unreached_modules": unreached[:1000],
        "unbound_parameters": c.layout.unbound[:1000],
    }


def _write_sidecar(c: Computation, keep: list[int]) -> dict[str, Any]:
    """Write the combined scores as safetensors, atomically; return the `sidecars` entry (SPEC 11)."""
    from safetensors.torch import save

    from blueprint_format.atomic import atomic_write_bytes

    cfg = c.config
    assert cfg.sidecar is not None
    path = Path(cfg.sidecar)
    granularity = cfg.sidecar_granularity
    tensors = c.collector.score_tensors(granularity, keep)
    data = save(tensors, metadata={"granularity": granularity, "statistic": SIDECAR_STATISTIC})
    atomic_write_bytes(path, data)
    return {
        "path": cfg.sidecar_ref or path.name, "digest": sha256_digest(data), "format": "safetensors",
        "granularity": granularity, "statistic": SIDECAR_STATISTIC,
    }
