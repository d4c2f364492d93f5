"""Choose what to train: bind a blueprint to a model, score its modules, select under a budget.

The first three steps of `apply_blueprint` (apply.py), each a function of its own:

1. `bind`: the blueprint must describe this model (structure digest, module names and sizes;
   `force=True` overrides a mismatch with a warning);
2. `module_scores`: the blueprint's modules are ranked by the combined score of SPEC 7.5 under the
   user's domain weights, optionally blended with the same statistic measured on a few local
   batches (G' = a * Gbar + (1 - a) * Gtilde, both as shares summing to 1 so that the scale of the
   user's loss does not matter; SPEC 7.6);
3. `select`: under `budget` (a fraction of the bound modules' parameters):
   * "module": whole modules by decreasing G', first fit (SPEC 9.2 global-budget);
   * "row" / "element": units (rows or single elements) of all modules by decreasing gain per
     parameter G'_m * (unit's share of module m's squared mean gradient) / unit size, as many as
     fit. The unit scores come from local gradients or from the blueprint's sidecar (SPEC 11,
     `sidecar_scores`). Modules that are neither Linear, Embedding nor Conv are taken whole or
     not at all when their parameters are 1-D (LayerNorm, biases: one unit each).

Settings live in `ApplyConfig`; a refusal is an `ApplyError` (exit status 1) with a registered code.
"""

from __future__ import annotations

import math
import random
import typing
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blueprint_format.binding import TensorInfo, check_binding, model_tensors, structure_digest
from blueprint_format.errors import BindingError, BlueprintError, make_error
from blueprint_format.models import Blueprint, Granularity
from reference_impl.config import choice, config_error, finite_float, fraction
from reference_impl.losses import LossFn, default_loss
from reference_impl.model_binding import (
    BoundModule,
    ModuleLayout,
    dtype_code,
    module_layout,
    state_dict_tensors,
)

GRANULARITIES: tuple[str, ...] = typing.get_args(Granularity)
#: Module classes whose tensors can be selected at row or element granularity (by class name, so
#: transformers' GPT-2 Conv1D counts without importing transformers).
PARTIAL_TYPES = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "NonDynamicallyQuantizableLinear")


class ApplyError(BlueprintError):
    """A blueprint cannot be applied to this model with these settings (exit status 1)."""

    exit_status = 1


def apply_error(code: str, message: str, path: str = "") -> ApplyError:
    """An ApplyError with one issue (`code` must be registered in blueprint_format.errors)."""
    return ApplyError(make_error(code, message, path))


@dataclass(frozen=True)
class ApplyConfig:
    """How to apply a blueprint; validated once (ConfigError, a usage-error at the field).

    budget: fraction of the blueprint modules' parameters to train, in (0, 1] (1 = everything,
    full fine-tuning through the same path). granularity: module, row or element. domains: the
    user's domain mixture (names declared by the blueprint, weights summing to 1; None: the
    blueprint's). blend: a in G' = a * published + (1 - a) * local. force: apply even if the
    blueprint does not bind (warns). modules: train exactly these blueprint modules (control arms
    such as "last layers only"). random_seed: replace every score by a seeded uniform draw (the
    random-selection control at the same budget). train_unbound: train parameters the weight
    files do not hold (a new head). consume_scores: float32 element scores passed in may be
    overwritten in place (saves a model-sized copy).
    """

    budget: float = 0.2
    granularity: str = "module"
    domains: Mapping[str, float] | None = None
    blend: float = 0.5
    force: bool = False
    modules: tuple[str, ...] | None = None
    random_seed: int | None = None
    train_unbound: bool = True
    consume_scores: bool = False

    def __post_init__(self) -> None:
        fraction("budget", self.budget)
        object.__setattr__(self, "budget", float(self.budget))
        choice("granularity", self.granularity, GRANULARITIES)
        finite_float("blend", self.blend, minimum=0.0, maximum=1.0)
        if self.domains is not None:
            for name, w in self.domains.items():
                finite_float(f"domains[{name}]", w, minimum=0.0)
            object.__setattr__(self, "domains", dict(self.domains))
        if self.modules is not None:
            if isinstance(self.modules, str) or not all(isinstance(m, str) for m in self.modules):
                raise config_error("modules", "modules must be a sequence of module names")
            object.__setattr__(self, "modules", tuple(self.modules))
        if self.random_seed is not None and (isinstance(self.random_seed, bool) or not isinstance(self.random_seed, int)):
            raise config_error("random_seed", f"random_seed must be an integer or None, got {self.random_seed!r}")
        for flag in ("force", "train_unbound", "consume_scores"):
            if not isinstance(getattr(self, flag), bool):
                raise config_error(flag, f"{flag} must be True or False")


# ----------------------------------------------------------------------------------------------
# step 1: binding


@dataclass
class Binding:
    """The blueprint's modules found in the model."""

    inventory: list[TensorInfo]
    layout: ModuleLayout
    bound: list[BoundModule]
    owners: list[nn.Module | None]  # the module owning each bound module's first parameter

    @property
    def parameter_count(self) -> int:
        return sum(m.parameter_count for m in self.bound)


def _base_view(model: nn.Module) -> list[TensorInfo] | None:
    """The state_dict as the base model's files would name it (task-head prefix stripped)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    if not prefix:
        return None
    out = [
        TensorInfo(name=n[len(prefix) + 1 :], dtype=dtype_code(t.dtype), shape=tuple(int(d) for d in t.shape))
        for n, t in model.state_dict().items()
        if n.startswith(prefix + ".")
    ]
    return out or None


def _inventory(
    model: nn.Module, bp: Blueprint, model_path: str | Path | None, tensors: Iterable[TensorInfo] | None, force: bool
) -> list[TensorInfo]:
    if tensors is not None:
        candidates = [list(tensors)]
    elif model_path is not None:
        candidates = [model_tensors(model_path)]
    else:
        base = _base_view(model)
        candidates = [state_dict_tensors(model)] + ([base] if base else [])
    want = bp.model.structure_digest
    chosen = next((c for c in candidates if structure_digest(c) == want), None)
    if chosen is None:
        chosen = min(candidates, key=lambda c: len(check_binding(bp, c)))
    issues = [i for i in check_binding(bp, chosen) if i.is_error]
    if issues:
        if not force:
            raise BindingError(issues)
        warnings.warn(
            "force=True: applying a blueprint that does not bind to this model: " + "; ".join(map(str, issues)),
            stacklevel=4,
        )
    return chosen


def bind(
    model: nn.Module, bp: Blueprint, force: bool = False, model_path: str | Path | None = None,
    tensors: Iterable[TensorInfo] | None = None,
) -> Binding:
    """Find the blueprint's modules in `model` (BindingError / ApplyError when it does not describe it)."""
    inventory = _inventory(model, bp, model_path, tensors, force)
    layout = module_layout(model, tensors=inventory)
    bp_names = {m.name for m in bp.modules}
    missing = [m.name for m in layout.modules if m.name not in bp_names]
    if missing and not force:
        raise apply_error(
            "model-module-not-in-blueprint",
            f"the blueprint lacks {len(missing)} trainable module(s) of the model, e.g. {missing[:3]}",
            "/modules",
        )
    bound = [m for m in layout.modules if m.name in bp_names]
    if not bound:
        raise apply_error("module-not-in-model", "no module of the blueprint is a trainable module of the model",
                          "/modules")
    named = dict(model.named_modules())
    owners = [named.get(m.param_names[0].rsplit(".", 1)[0] if "." in m.param_names[0] else "") for m in bound]
    return Binding(inventory, layout, bound, owners)


# ----------------------------------------------------------------------------------------------
# step 2: scores


def _domain_weights(bp: Blueprint, domains: Mapping[str, float] | None) -> dict[str, float]:
    declared = bp.domain_names
    if domains is None:
        return bp.effective_domain_weights()
    unknown = sorted(set(domains) - set(declared))
    if unknown:
        raise apply_error("unknown-domain", f"domains {unknown} are not declared by the blueprint (it has {declared})",
                          "/domains")
    total = float(sum(domains.values()))
    if abs(total - 1.0) > 1e-6:
        raise apply_error("domain-weights-sum", f"domain weights sum to {total}, not 1", "/domains")
    return {n: float(w) for n, w in domains.items()}


def published_scores(bp: Blueprint, weights: Mapping[str, float]) -> dict[str, float]:
    """SPEC 7.5 combined score of every module under `weights` (sums to sum(weights))."""
    stat = bp.allocation.statistic
    scores = {m.name: 0.0 for m in bp.modules}
    for d, w in weights.items():
        vals = {m.name: float(getattr(m.stats[d], stat) or 0.0) for m in bp.modules}
        total = sum(vals.values())
        if total > 0 and w > 0:
            for n, v in vals.items():
                scores[n] += w * v / total
    return scores


def _normalised(values: Mapping[str, float]) -> dict[str, float]:
    total = sum(values.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in values.items()}


def _to(batch: Any, device: torch.device) -> Any:
    from reference_impl.compute import to_device

    return to_device(batch, device)


def local_statistics(
    model: nn.Module, modules: list[BoundModule], batches: Iterable[Any], loss_fn: LossFn, statistic: str,
    want_elements: bool,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """(per-module statistic, per-tensor element scores) on a few local batches.

    Definitions as in compute.py (SPEC 7.2): per batch, a module's gradient norm is the L2 norm
    of the gradient of the batch-mean loss over its own parameters; element scores are the squared
    mean gradient normalised within each module (what the reference sidecar and gain curves rank).
    Memory-light on purpose, since it runs on the user's small machine: each gradient is folded
    into the accumulators by a post-accumulate hook and freed at once, so the full set of
    gradients never exists; element scores need one float32 buffer per tensor of the model.
    """
    device = next(model.parameters()).device
    params = [p for m in modules for p in m.params]
    owner = {id(p): i for i, m in enumerate(modules) for p in m.params}
    sq = torch.zeros(len(modules), dtype=torch.float64, device=device)
    keep_sums = want_elements or statistic == "mean_grad_norm"
    sums: dict[int, torch.Tensor] = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in params} if keep_sums else {}

    def fold(p: torch.Tensor) -> None:
        g = p.grad
        if g is None:
            return
        # Norms in float32 as the compute collector takes them; squares summed in float64.
        sq[owner[id(p)]] += torch.linalg.vector_norm(g.detach()).to(torch.float64).pow(2)
        if sums:
            sums[id(p)].add_(g.detach())
        p.grad = None

    hooks = [p.register_post_accumulate_grad_hook(fold) for p in params]  # type: ignore[no-untyped-call]
    rows: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for batch in batches:
                model.zero_grad(set_to_none=True)
                sq.zero_()
                loss_fn(model, _to(batch, device)).backward()  # type: ignore[no-untyped-call]
                rows.append(sq.sqrt())
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if not rows:
        raise config_error("local_batches", "local_batches is empty: give at least one batch or leave it out")
    return _fold_statistics(modules, torch.stack(rows).cpu(), sums, statistic, want_elements)


def _fold_statistics(
    modules: list[BoundModule], bn: torch.Tensor, sums: dict[int, torch.Tensor], statistic: str, want_elements: bool
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The chosen statistic per module from batch norms `bn` (batches x modules) and gradient sums."""
    n = bn.shape[0]
    mean_grad_sq = torch.zeros(len(modules), dtype=torch.float64)
    if sums:
        for i, m in enumerate(modules):
            for p in m.params:
                mean_grad_sq[i] += float((sums[id(p)].double() / n).pow(2).sum())
    srt = bn.sort(dim=0).values
    median = srt[n // 2] if n % 2 else 0.5 * (srt[n // 2 - 1] + srt[n // 2])
    per_stat = {
        "grad_norm_mean": bn.mean(dim=0),
        "grad_norm_median": median,
        "grad_norm_sq_mean": (bn * bn).mean(dim=0),
        "mean_grad_norm": mean_grad_sq.sqrt(),
    }[statistic]
    module_stat = {m.name: float(v) for m, v in zip(modules, per_stat)}
    elements: dict[str, torch.Tensor] = {}
    if want_elements:
        for i, m in enumerate(modules):
            total = float(mean_grad_sq[i]) * n * n
            for tn, p in zip(m.tensor_names, m.params):
                buf = sums.pop(id(p))
                buf.pow_(2)  # in place: (n * mean gradient)^2
                if total > 0:
                    buf.div_(total)
                else:
                    buf.zero_()
                elements[tn] = buf
    return module_stat, elements


@dataclass
class Scores:
    """Normalised module scores G', and unit scores per tensor (row/element granularity)."""

    gprime: dict[str, float]
    units: Mapping[str, torch.Tensor] | None = None
    owned: bool = False  # the unit scores may be overwritten in place


def module_scores(
    model: nn.Module, bp: Blueprint, binding: Binding, config: ApplyConfig, local_batches: Iterable[Any] | None,
    loss_fn: LossFn | None, element_scores: Mapping[str, torch.Tensor] | None,
) -> Scores:
    """G' of every bound module, and the unit scores the row/element selection needs."""
    bound = binding.bound
    if config.random_seed is not None:
        return _random_scores(binding, config)
    partial = config.granularity != "module" and config.budget < 1.0 and config.modules is None
    want_elements = partial and element_scores is None
    local_stat: dict[str, float] = {}
    local_elements: dict[str, torch.Tensor] = {}
    if local_batches is not None and config.budget < 1.0 and config.modules is None:
        loss = loss_fn if loss_fn is not None else default_loss(model)[0]
        local_stat, local_elements = local_statistics(
            model, bound, local_batches, loss, bp.allocation.statistic, want_elements
        )
    pub = _normalised(published_scores(bp, _domain_weights(bp, config.domains)))
    if local_stat:
        loc = _normalised(local_stat)
        a = config.blend
        gprime = {m.name: a * pub.get(m.name, 0.0) + (1 - a) * loc.get(m.name, 0.0) for m in bound}
    else:
        gprime = {m.name: pub.get(m.name, 0.0) for m in bound}
    gprime = _normalised(gprime)
    if not partial:
        return Scores(gprime)
    if element_scores is not None:
        return Scores(gprime, element_scores, owned=config.consume_scores)
    if local_elements:
        return Scores(gprime, local_elements, owned=True)
    raise apply_error(
        "missing-field",
        f"{config.granularity} granularity needs local_batches or element_scores (e.g. the blueprint's sidecar) "
        "to choose which entries to train",
        "/local_batches",
    )


def _random_scores(binding: Binding, config: ApplyConfig) -> Scores:
    """The random control: seeded uniform module scores, and uniform unit scores per element."""
    rng = random.Random(config.random_seed)
    gprime = _normalised({m.name: rng.random() for m in binding.bound})
    if config.granularity == "module" or config.budget >= 1.0 or config.modules is not None:
        return Scores(gprime)
    gen = torch.Generator().manual_seed(int(config.random_seed or 0))
    units = {n: torch.rand(tuple(p.shape), generator=gen) for m in binding.bound
             for n, p in zip(m.tensor_names, m.params)}
    # Uniform per element: each module's share is its size, so every entry is equally likely.
    return Scores(_normalised({m.name: float(m.parameter_count) for m in binding.bound}), units, owned=True)


# ----------------------------------------------------------------------------------------------
# step 3: selection


@dataclass
class Selection:
    """What to train: whole modules, and selected unit indices per tensor (by weight-file name)."""

    whole: set[str]
    units: dict[str, torch.Tensor]


def _is_partial_type(module: nn.Module | None) -> bool:
    return module is not None and type(module).__name__ in PARTIAL_TYPES


def _unit_scores(t: torch.Tensor, granularity: str) -> tuple[torch.Tensor, int]:
    """(score per unit, unit size) of a tensor's element scores: rows sum over the row."""
    if granularity == "row" and t.dim() >= 2:
        rows = t.reshape(t.shape[0], -1)
        return rows.sum(dim=1), int(rows.shape[1])
    return t.reshape(-1), 1


def _densities(
    binding: Binding, scores: Scores, granularity: str
) -> tuple[list[tuple[str, torch.Tensor, int]], list[tuple[str, float, int]]]:
    """Gain per parameter of every unit: (tensor, densities, unit size) and whole-only modules."""
    parts: list[tuple[str, torch.Tensor, int]] = []
    wholes: list[tuple[str, float, int]] = []
    elements = scores.units or {}
    for m, owner in zip(binding.bound, binding.owners):
        g = scores.gprime.get(m.name, 0.0)
        if g <= 0:
            continue
        if not _is_partial_type(owner) and all(p.dim() <= 1 for p in m.params):
            wholes.append((m.name, g / m.parameter_count, m.parameter_count))
            continue
        tensors = [elements.get(n) for n in m.tensor_names]
        missing = [n for n, s in zip(m.tensor_names, tensors) if s is None]
        if missing:
            raise apply_error("missing-field", f"no element scores for {missing}", "/element_scores")
        total = float(sum(float(s.sum()) for s in tensors if s is not None))
        if total <= 0:
            continue
        for n, s, p in zip(m.tensor_names, tensors, m.params):
            assert s is not None
            if s.dtype != torch.float32 or not s.is_contiguous():
                s = s.to(torch.float32).contiguous()
            elif not scores.owned:
                s = s.clone()
            if granularity == "row" and p.dim() >= 2 and s.dim() == 1 and s.numel() == p.shape[0]:
                u, size = s, p.numel() // int(p.shape[0])  # row scores (a row sidecar)
            elif s.numel() != p.numel():
                raise apply_error("bad-container", f"scores of {n} have shape {tuple(s.shape)}, the tensor "
                                  f"{tuple(p.shape)}", "/element_scores")
            else:
                u, size = _unit_scores(s, granularity)
            parts.append((n, u.mul_(g / total / size), size))
    return parts, wholes


#: Bins of the density histogram that locates the selection threshold.
HISTOGRAM_BINS = 4096
#: Densities processed at once while binning (bounds the temporary bin indices).
BIN_CHUNK = 1 << 22


def _units_of(parts: list[tuple[str, torch.Tensor, int]],
              wholes: list[tuple[str, float, int]]) -> list[tuple[torch.Tensor, int | torch.Tensor]]:
    """(float32 densities, unit size: one int for a tensor's units, or one per unit) of every candidate."""
    units: list[tuple[torch.Tensor, int | torch.Tensor]] = [(d.reshape(-1), size) for _, d, size in parts]
    if wholes:
        units.append((torch.tensor([d for _, d, _ in wholes], dtype=torch.float32),
                      torch.tensor([size for _, _, size in wholes], dtype=torch.float64)))
    return units


def _weight(size: int | torch.Tensor, mask: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Entries of the masked units (mask over units start.. of this candidate)."""
    if isinstance(size, int):
        return mask.sum(dtype=torch.float64) * size
    return size[start : start + mask.numel()][mask].sum()


def _histogram(units: list[tuple[torch.Tensor, int | torch.Tensor]], edges: torch.Tensor) -> torch.Tensor:
    """Entries per density bin [edges[b], edges[b + 1]) (the top bin includes its upper edge)."""
    counts = torch.zeros(len(edges) - 1, dtype=torch.float64)
    last = len(edges) - 2
    for d, size in units:
        for start in range(0, int(d.numel()), BIN_CHUNK):
            chunk = d[start : start + BIN_CHUNK]
            keep = chunk >= edges[0]
            b = (torch.bucketize(chunk[keep], edges, right=True) - 1).clamp_(max=last)
            w = (torch.full((int(b.numel()),), float(size), dtype=torch.float64) if isinstance(size, int)
                 else size[start : start + int(chunk.numel())][keep])
            counts += torch.bincount(b, weights=w, minlength=last + 1)
    return counts


def _threshold(parts: list[tuple[str, torch.Tensor, int]], wholes: list[tuple[str, float, int]], cap: int) -> float | None:
    """The smallest density v whose units (those with density >= v) fit `cap` entries; None when
    nothing can be selected.

    One pass bins every density into a log-spaced histogram to find the bin where the count
    from the top crosses `cap`; a second pass sorts only that bin's densities. No concatenated
    score vector of the model is ever built."""
    units = _units_of(parts, wholes)
    positive = [float(d[d > 0].min()) for d, _ in units if bool((d > 0).any())]
    if not positive:
        return None
    floor, hi = min(positive), max(float(d.max()) for d, _ in units if d.numel())
    if float(sum(_weight(size, d > 0) for d, size in units)) <= cap:
        return floor
    grid = torch.linspace(math.log(floor), math.log(hi), HISTOGRAM_BINS + 1, dtype=torch.float64).exp()
    edges = grid.to(torch.float32)
    edges[0], edges[-1] = floor, hi  # exactly the extreme densities, whatever exp() rounded to
    counts = _histogram(units, edges)
    above = torch.flip(torch.cumsum(torch.flip(counts, [0]), 0), [0])  # entries in bins >= b
    crossing = int((above > cap).nonzero().max())
    fits = float(above[crossing + 1]) if crossing + 1 < len(counts) else 0.0
    lo, up = float(edges[crossing]), float(edges[crossing + 1])
    values: list[torch.Tensor] = []
    sizes: list[torch.Tensor] = []
    for d, size in units:
        m = (d >= lo) & ((d < up) if crossing + 1 < len(counts) else (d <= up))
        values.append(d[m])
        sizes.append(torch.full((int(m.sum()),), float(size), dtype=torch.float64) if isinstance(size, int)
                     else size[m])
    return _walk_down(torch.cat(values), torch.cat(sizes), fits, cap, up)


def _walk_down(values: torch.Tensor, sizes: torch.Tensor, taken: float, cap: int, ceiling: float) -> float:
    """Take the bin's densities from the largest down while they fit; the last one taken (or the
    bin's upper edge when none fits) is the threshold. Equal densities are taken together."""
    order = torch.argsort(values, descending=True, stable=True)
    vals, sz = values[order], sizes[order]
    distinct, runs = torch.unique_consecutive(vals, return_counts=True)
    totals = torch.cumsum(sz, 0)[torch.cumsum(runs, 0) - 1]  # entries down to each distinct density
    fit = (taken + totals) <= cap
    if not bool(fit.any()):
        return ceiling
    return float(distinct[int(fit.nonzero().max())])


def select(binding: Binding, scores: Scores, config: ApplyConfig) -> Selection:
    """Whole modules and units to train under the budget (module names / weight-file tensor names)."""
    bound = binding.bound
    if config.budget >= 1.0:
        return Selection({m.name for m in bound}, {})
    if config.modules is not None:
        unknown = sorted(set(config.modules) - {m.name for m in bound})
        if unknown:
            raise apply_error("module-not-in-model", f"modules {unknown[:3]} are not blueprint modules of the model",
                              "/modules")
        return Selection(set(config.modules), {})
    cap = math.floor(config.budget * binding.parameter_count * (1 + 1e-12))
    if config.granularity == "module":
        whole: set[str] = set()
        left = cap
        for m in sorted(bound, key=lambda m: -scores.gprime[m.name]):
            if m.parameter_count <= left and scores.gprime[m.name] > 0:
                whole.add(m.name)
                left -= m.parameter_count
        return Selection(whole, {})
    parts, wholes = _densities(binding, scores, config.granularity)
    tau = _threshold(parts, wholes, cap)
    if tau is None:
        return Selection(set(), {})
    return Selection({name for name, d, _ in wholes if d >= tau},
                     {n: (d >= tau).nonzero().flatten() for n, d, _ in parts})


def sidecar_scores(bp: Blueprint, blueprint_dir: str | Path, granularity: str = "element") -> dict[str, torch.Tensor]:
    """Scores from the blueprint's sidecar (SPEC 11), to choose rows/elements without local gradients.

    Takes an element sidecar (usable for both granularities) or, for `row`, a row sidecar. The
    path must stay inside `blueprint_dir` and the file must match its digest (bad-container
    otherwise); unsafe paths are refused with unsafe-path.
    """
    import hashlib

    from safetensors.torch import load_file

    from blueprint_format.semantic import unsafe_path_reason

    wanted = ("element",) if granularity == "element" else ("row", "element")
    entries = [s for s in (bp.sidecars or []) if s.granularity in wanted and s.format == "safetensors"]
    if not entries:
        raise apply_error("missing-field", f"the blueprint has no {' or '.join(wanted)} sidecar", "/sidecars")
    entry = sorted(entries, key=lambda s: wanted.index(s.granularity))[0]
    folder = Path(blueprint_dir).resolve()
    reason = unsafe_path_reason(entry.path)
    target = (folder / entry.path).resolve()
    if reason is None and folder not in target.parents:
        reason = f"resolves outside {folder}"
    if reason is not None:
        raise apply_error("unsafe-path", f"sidecar path {entry.path!r} {reason}", "/sidecars")
    h = hashlib.sha256()
    try:
        with target.open("rb") as fh:  # streamed: the file's bytes are never all in memory
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    except OSError as exc:
        raise apply_error("io-error", f"cannot read sidecar {target}: {exc.strerror or exc}", "/sidecars") from None
    if "sha256:" + h.hexdigest() != entry.digest:
        raise apply_error("bad-container", f"sidecar {entry.path} does not match its digest", "/sidecars")
    return dict(load_file(str(target)))
