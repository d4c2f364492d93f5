"""Apply a blueprint in fine-tuning: train only what it recommends, with real memory savings.

`apply_blueprint(model, bp, budget=...)`:

1. binds the blueprint to the model (structure digest, module names and sizes; `force=True`
   overrides a mismatch with a warning);
2. ranks the blueprint's modules by the combined score of SPEC 7.5 under the user's domain
   weights, optionally blended with the same statistic measured on a few local batches
   (G' = a * Gbar + (1 - a) * Gtilde, both as shares summing to 1 so that the scale of the
   user's loss does not matter; RESEARCH.md section 1, SPEC 7.6);
3. selects under `budget` (a fraction of the bound modules' parameters):
   * "module": whole modules by decreasing G', first fit (SPEC 9.2 global-budget);
   * "row" / "element": units (rows or single elements) of all modules by decreasing gain per
     parameter G'_m * (unit's share of module m's squared mean local gradient) / unit size, as
     many as fit. Modules that are neither Linear, Embedding nor Conv are taken whole or not at
     all when their parameters are 1-D (LayerNorm, biases: one unit each); a module with a
     matrix parameter of another type that ends up partly selected is refused.
4. freezes everything else (requires_grad False) and stores partial updates values-only
   (sparse_update.SparseDelta), so gradients and optimizer state exist only for selected entries.

Parameters that the weight files do not hold (e.g. a freshly initialised classification head)
cannot be named by a blueprint; they are trained whole when `train_unbound` (default) and are not
counted against the budget.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blueprint_format.api import digest as blueprint_digest
from blueprint_format.binding import TensorInfo, check_binding, model_tensors, structure_digest
from blueprint_format.errors import ERROR_CODES, BindingError, BlueprintError, Issue, make_error
from blueprint_format.models import Blueprint
from reference_impl.losses import LossFn, default_loss
from reference_impl.model_binding import BoundModule, dtype_code, module_layout, state_dict_tensors
from reference_impl.sparse_update import SparseDelta, attach_sparse_delta, merge_sparse_deltas, sparse_deltas

GRANULARITIES = ("module", "row", "element")
UPDATE_FORMAT = "gradient-blueprints-update/1"
#: Module classes whose tensors can be updated at row or element granularity (by class name, so
#: transformers' GPT-2 Conv1D counts without importing transformers).
PARTIAL_TYPES = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "NonDynamicallyQuantizableLinear")


class ApplyError(BlueprintError):
    """A blueprint cannot be applied to this model with these settings (exit status 1)."""

    exit_status = 1


def _issue(code: str, message: str, path: str = "", fallback: str = "out-of-range") -> Issue:
    return make_error(code if code in ERROR_CODES else fallback, message, path)


def apply_error(code: str, message: str, path: str = "", fallback: str = "out-of-range") -> ApplyError:
    """An ApplyError with one issue; `fallback` replaces a code the table does not (yet) have."""
    return ApplyError(_issue(code, message, path, fallback))


@dataclass
class ModuleSelection:
    """What was selected in one blueprint module."""

    name: str
    type: str
    parameter_count: int
    selected: int
    mode: str  # "frozen", "dense" or "sparse"
    score: float  # blended, normalised G'

    @property
    def k(self) -> float:
        return self.selected / self.parameter_count if self.parameter_count else 0.0


@dataclass
class _SparseEntry:
    param_name: str  # the tensor's state_dict name before the blueprint was applied
    module: nn.Module
    attr: str
    delta: SparseDelta


@dataclass
class BlueprintHandle:
    """The result of `apply_blueprint`: what is trainable, and how to save or merge the update."""

    model: nn.Module
    granularity: str
    budget: float
    blueprint_digest: str
    structure_digest: str
    selection: list[ModuleSelection]
    bound_parameters: int
    dense: dict[str, nn.Parameter] = field(default_factory=dict)  # state_dict name -> trained whole
    sparse: list[_SparseEntry] = field(default_factory=list)
    unbound: dict[str, nn.Parameter] = field(default_factory=dict)  # trained whole, outside the budget
    merged: bool = False

    # -- training ---------------------------------------------------------------------------
    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) for every tensor the optimizer must see; sparse ones as `<name>::values`."""
        out = [(n, p) for n, p in self.dense.items()]
        out += [(f"{e.param_name}::values", e.delta.values) for e in self.sparse]
        out += [(n, p) for n, p in self.unbound.items()]
        return out

    def parameters(self) -> list[nn.Parameter]:
        """The parameters to give the optimizer (and nothing else)."""
        return [p for _, p in self.named_parameters()]

    @property
    def trainable_count(self) -> int:
        """Trainable scalar entries, including unbound (head) parameters."""
        return sum(int(p.numel()) for p in self.parameters())

    @property
    def selected_count(self) -> int:
        """Selected entries of the blueprint's modules (what the budget bounds)."""
        return sum(s.selected for s in self.selection)

    @property
    def trainable_fraction(self) -> float:
        return self.selected_count / self.bound_parameters if self.bound_parameters else 0.0

    def trainable_state_bytes(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """Bytes actually allocated for trainable state: parameters, gradients, optimizer state.

        Index tensors of sparse updates count as parameter bytes (they must stay in memory).
        """
        params = self.parameters()
        p_bytes = sum(p.numel() * p.element_size() for p in params)
        p_bytes += sum(e.delta.indices.numel() * e.delta.indices.element_size() for e in self.sparse)
        g_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
        o_bytes = 0
        if optimizer is not None:
            for p in params:
                for v in optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor):
                        o_bytes += v.numel() * v.element_size()
        return {"parameters": p_bytes, "gradients": g_bytes, "optimizer": o_bytes,
                "total": p_bytes + g_bytes + o_bytes}

    def trainable_modules(self) -> list[nn.Module]:
        """Submodules owning trainable parameters (for the meter's FLOP credit)."""
        ids = {id(p) for p in self.parameters()}
        return [m for m in self.model.modules() if any(id(p) in ids for p in m.parameters(recurse=False))]

    # -- results ------------------------------------------------------------------------------
    def merge(self) -> nn.Module:
        """Fold the sparse updates into the dense weights (removing the parametrisations); returns the model."""
        for e in self.sparse:
            if sparse_deltas(e.module):
                merge_sparse_deltas(e.module)
        self.merged = True
        return self.model

    def update_tensors(self) -> dict[str, torch.Tensor]:
        """The update as named tensors: `<name>::values` + `<name>::indices` (sparse) or `<name>` (whole)."""
        if self.merged:
            raise RuntimeError("the update was merged; save it before merge()")
        out: dict[str, torch.Tensor] = {}
        for e in self.sparse:
            out[f"{e.param_name}::values"] = e.delta.values.detach().to("cpu").contiguous()
            out[f"{e.param_name}::indices"] = e.delta.indices.detach().to("cpu").contiguous()
        for n, p in list(self.dense.items()) + list(self.unbound.items()):
            out[n] = p.detach().to("cpu").contiguous()
        return out

    def save_update(self, path: str | Path) -> int:
        """Write the update alone as a safetensors file (atomically); returns its size in bytes."""
        from safetensors.torch import save

        from blueprint_format.atomic import atomic_write_bytes

        kinds = {e.param_name: f"sparse-{e.delta.granularity}" for e in self.sparse}
        kinds.update({n: "whole" for n in list(self.dense) + list(self.unbound)})
        meta = {
            "format": UPDATE_FORMAT,
            "blueprint_digest": self.blueprint_digest,
            "structure_digest": self.structure_digest,
            "granularity": self.granularity,
            "budget": repr(self.budget),
            "selected": str(self.selected_count),
            "kinds": json.dumps(kinds, sort_keys=True),
        }
        data = save(self.update_tensors(), metadata=meta)
        atomic_write_bytes(Path(path), data)
        return len(data)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of the selection."""
        return {
            "granularity": self.granularity,
            "budget": self.budget,
            "bound_parameters": self.bound_parameters,
            "selected": self.selected_count,
            "trainable_fraction": self.trainable_fraction,
            "unbound_trainable": sum(int(p.numel()) for p in self.unbound.values()),
            "blueprint_digest": self.blueprint_digest,
            "modules": [
                {"name": s.name, "type": s.type, "parameter_count": s.parameter_count, "selected": s.selected,
                 "k": s.k, "mode": s.mode, "score": s.score}
                for s in self.selection if s.selected
            ],
        }


# ----------------------------------------------------------------------------------------------
# binding


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
            stacklevel=3,
        )
    return chosen


# ----------------------------------------------------------------------------------------------
# scores


def _domain_weights(bp: Blueprint, domains: Mapping[str, float] | None) -> dict[str, float]:
    declared = bp.domain_names
    if domains is None:
        return bp.effective_domain_weights()
    unknown = sorted(set(domains) - set(declared))
    if unknown:
        raise apply_error("unknown-domain", f"domains {unknown} are not declared by the blueprint (it has {declared})",
                          "/domains")
    bad = [n for n, w in domains.items() if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0)]
    if bad:
        raise apply_error("out-of-range", f"domain weights must be finite and non-negative: {bad}", "/domains")
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
    sums: dict[int, torch.Tensor] = (
        {id(p): torch.zeros_like(p, dtype=torch.float32) for p in params} if want_elements or
        statistic == "mean_grad_norm" else {}
    )

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
        raise apply_error("empty-document", "local_batches is empty", "/local_batches", fallback="missing-field")
    bn = torch.stack(rows).cpu()
    n = bn.shape[0]
    mean_grad_sq = torch.zeros(len(modules), dtype=torch.float64)
    for p in params:
        if sums:
            mean_grad_sq[owner[id(p)]] += float((sums[id(p)].double() / n).pow(2).sum())
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


def _to(batch: Any, device: torch.device) -> Any:
    from reference_impl.compute import to_device

    return to_device(batch, device)


# ----------------------------------------------------------------------------------------------
# selection


def _is_partial_type(module: nn.Module | None) -> bool:
    return module is not None and type(module).__name__ in PARTIAL_TYPES


def _unit_scores(t: torch.Tensor, granularity: str) -> tuple[torch.Tensor, int]:
    """(score per unit, unit size) of a tensor's element scores: rows sum over the row."""
    if granularity == "row" and t.dim() >= 2:
        rows = t.reshape(t.shape[0], -1)
        return rows.sum(dim=1), int(rows.shape[1])
    return t.reshape(-1), 1


def _select_units(
    modules: list[BoundModule], owners: list[nn.Module | None], gprime: dict[str, float],
    elements: Mapping[str, torch.Tensor], granularity: str, cap: int, inplace: bool = False,
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Rows/elements to train under `cap` entries: (tensor name -> selected unit indices, whole modules).

    Greedy by gain per parameter; the threshold is found by bisection so that no concatenated
    score vector of the whole model is ever built. With `inplace`, element densities are computed
    in the score tensors themselves (float32), so no second model-sized buffer is allocated.
    """
    # Per tensor: (tensor name, density per unit, unit size); per whole-unit module: one unit.
    parts: list[tuple[str, torch.Tensor, int]] = []
    wholes: list[tuple[str, float, int]] = []
    for m, owner in zip(modules, owners):
        g = gprime.get(m.name, 0.0)
        if g <= 0:
            continue
        if not _is_partial_type(owner) and all(p.dim() <= 1 for p in m.params):
            wholes.append((m.name, g / m.parameter_count, m.parameter_count))
            continue
        scores = [elements.get(n) for n in m.tensor_names]
        if any(s is None for s in scores):
            missing = [n for n, s in zip(m.tensor_names, scores) if s is None]
            raise apply_error("missing-field", f"no element scores for {missing}", fallback="missing-field")
        total = float(sum(float(s.sum()) for s in scores if s is not None))
        if total <= 0:
            continue
        for n, s, p in zip(m.tensor_names, scores, m.params):
            assert s is not None
            if s.dtype != torch.float32 or not s.is_contiguous():
                s = s.to(torch.float32).contiguous()
            elif not inplace:
                s = s.clone()
            if granularity == "row" and p.dim() >= 2 and s.dim() == 1 and s.numel() == p.shape[0]:
                u, size = s, p.numel() // int(p.shape[0])  # row scores (a row sidecar)
            elif s.numel() != p.numel():
                raise apply_error("bad-container", f"scores of {n} have shape {tuple(s.shape)}, the tensor "
                                  f"{tuple(p.shape)}", fallback="bad-container")
            else:
                u, size = _unit_scores(s, granularity)
            parts.append((n, u.mul_(g / total / size), size))

    maxima = [float(d.max()) if d.numel() else 0.0 for _, d, _ in parts]

    def f32(x: float) -> float:
        # Thresholds are compared with float32 densities: round them the same way everywhere.
        return float(torch.tensor(x, dtype=torch.float32))

    def taken(tau: float) -> int:
        tau = f32(tau)
        n = sum(int((d >= tau).sum()) * size for (_, d, size), mx in zip(parts, maxima) if mx >= tau)
        return n + sum(size for _, d, size in wholes if d >= tau)

    hi = max([*maxima, *(d for _, d, _ in wholes), 0.0])
    if hi <= 0:
        return {}, set()
    lo = hi
    positive = [float(d[d > 0].min()) for _, d, _ in parts if bool((d > 0).any())] + [d for _, d, _ in wholes]
    floor = min(positive)
    if taken(floor) <= cap:
        tau = floor
    else:
        # Bisection in log space between floor (too many) and hi (fits unless one unit exceeds cap).
        lo, up = math.log(floor), math.log(hi) + 1e-12
        for _ in range(48):
            mid = 0.5 * (lo + up)
            if taken(math.exp(mid)) <= cap:
                up = mid
            else:
                lo = mid
        tau = math.exp(up)
    tau = f32(tau)
    chosen = {n: (d >= tau).nonzero().flatten() for n, d, _ in parts}
    whole = {name for name, d, size in wholes if d >= tau}
    return chosen, whole


def sidecar_scores(bp: Blueprint, blueprint_dir: str | Path, granularity: str = "element") -> dict[str, torch.Tensor]:
    """Scores from the blueprint's sidecar (SPEC 11), to choose rows/elements without local gradients.

    Takes an element sidecar (usable for both granularities) or, for `row`, a row sidecar. The
    path must stay inside `blueprint_dir` and the file must match its digest (bad-container
    otherwise); unsafe paths are refused with unsafe-path.
    """
    import hashlib

    from safetensors.torch import load_file

    wanted = ("element",) if granularity == "element" else ("row", "element")
    entries = [s for s in (bp.sidecars or []) if s.granularity in wanted and s.format == "safetensors"]
    if not entries:
        raise apply_error("missing-field", f"the blueprint has no {' or '.join(wanted)} sidecar", "/sidecars",
                          fallback="missing-field")
    entry = sorted(entries, key=lambda s: wanted.index(s.granularity))[0]
    folder = Path(blueprint_dir).resolve()
    rel = entry.path
    segments = rel.split("/")
    if rel.startswith("/") or "\\" in rel or rel[1:2] == ":" or any(s in ("", ".", "..") for s in segments):
        raise apply_error("unsafe-path", f"sidecar path {rel!r} is not a safe relative path", "/sidecars",
                          fallback="unsafe-path")
    target = (folder / rel).resolve()
    if folder not in target.parents:
        raise apply_error("unsafe-path", f"sidecar {rel!r} resolves outside {folder}", "/sidecars",
                          fallback="unsafe-path")
    h = hashlib.sha256()
    try:
        with target.open("rb") as fh:  # streamed: the file's bytes are never all in memory
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    except OSError as exc:
        raise apply_error("io-error", f"cannot read sidecar {target}: {exc.strerror or exc}", "/sidecars",
                          fallback="io-error") from None
    if "sha256:" + h.hexdigest() != entry.digest:
        raise apply_error("bad-container", f"sidecar {rel} does not match its digest", "/sidecars",
                          fallback="bad-container")
    return dict(load_file(str(target)))


def apply_blueprint(
    model: nn.Module,
    blueprint: Blueprint,
    budget: float = 0.2,
    domains: Mapping[str, float] | None = None,
    granularity: str = "module",
    local_batches: Iterable[Any] | None = None,
    blend: float = 0.5,
    loss_fn: LossFn | None = None,
    force: bool = False,
    *,
    model_path: str | Path | None = None,
    tensors: Iterable[TensorInfo] | None = None,
    element_scores: Mapping[str, torch.Tensor] | None = None,
    modules: Sequence[str] | None = None,
    random_seed: int | None = None,
    train_unbound: bool = True,
    consume_scores: bool = False,
) -> BlueprintHandle:
    """Make only what `blueprint` recommends trainable on `model`; return the handle.

    budget: fraction of the blueprint modules' parameters to train, in (0, 1] (1 = everything,
    i.e. full fine-tuning through the same path). domains: the user's domain mixture (names
    declared by the blueprint, weights summing to 1; default: the blueprint's). local_batches:
    a few batches of the user's data (`loss_fn(model, batch)` gives the loss; default: the model's
    own) for the blend G' = blend * published + (1 - blend) * local and for choosing rows/elements.
    model_path / tensors: the weight files (or inventory) the blueprint binds to; default: the
    model's state_dict, or the same with the task model's prefix stripped.
    element_scores: per-tensor element scores (e.g. a blueprint's element sidecar) used instead of
    local gradients to choose rows/elements. modules: train exactly these blueprint modules
    (control arms such as "last layers only"). random_seed: replace every score by a seeded
    uniform draw (the random-selection control at the same budget). consume_scores: the float32
    `element_scores` may be overwritten in place (saves a model-sized copy, e.g. for sidecar_scores).
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (0 < float(budget) <= 1):
        raise apply_error("out-of-range", f"budget must lie in (0, 1], got {budget!r}", "/budget")
    budget = float(budget)
    if granularity not in GRANULARITIES:
        raise apply_error("bad-enum", f"granularity must be one of {GRANULARITIES}, got {granularity!r}",
                          "/granularity", fallback="bad-enum")
    if not (0.0 <= float(blend) <= 1.0):
        raise apply_error("out-of-range", f"blend must lie in [0, 1], got {blend!r}", "/blend")
    weights = _domain_weights(blueprint, domains)
    inventory = _inventory(model, blueprint, model_path, tensors, force)

    layout = module_layout(model, tensors=inventory)
    bp_names = {m.name for m in blueprint.modules}
    missing = [m.name for m in layout.modules if m.name not in bp_names]
    if missing and not force:
        raise apply_error(
            "model-module-not-in-blueprint",
            f"the blueprint lacks {len(missing)} trainable module(s) of the model, e.g. {missing[:3]}",
            "/modules", fallback="module-not-in-model",
        )
    bound = [m for m in layout.modules if m.name in bp_names]
    if not bound:
        raise apply_error("module-not-in-model", "no module of the blueprint is a trainable module of the model",
                          "/modules", fallback="module-not-in-model")
    named_modules = dict(model.named_modules())
    owners: list[nn.Module | None] = [
        named_modules.get(m.param_names[0].rsplit(".", 1)[0] if "." in m.param_names[0] else "") for m in bound
    ]
    n_total = sum(m.parameter_count for m in bound)
    cap = math.floor(budget * n_total * (1 + 1e-12))

    # -- scores ---------------------------------------------------------------------------------
    rng = random.Random(random_seed) if random_seed is not None else None
    want_elements = granularity != "module" and budget < 1.0 and element_scores is None and modules is None
    local_stat: dict[str, float] = {}
    local_elements: dict[str, torch.Tensor] = {}
    if local_batches is not None and rng is None and budget < 1.0 and modules is None:
        if loss_fn is None:
            loss_fn, _ = default_loss(model)
        local_stat, local_elements = local_statistics(
            model, bound, local_batches, loss_fn, blueprint.allocation.statistic, want_elements
        )
    if rng is not None:
        gprime = {m.name: rng.random() for m in bound}
    else:
        pub = _normalised({k: v for k, v in published_scores(blueprint, weights).items()})
        if local_stat:
            loc = _normalised(local_stat)
            gprime = {m.name: blend * pub.get(m.name, 0.0) + (1 - blend) * loc.get(m.name, 0.0) for m in bound}
        else:
            gprime = {m.name: pub.get(m.name, 0.0) for m in bound}
    gprime = _normalised(gprime)

    # -- selection -------------------------------------------------------------------------------
    chosen_units: dict[str, torch.Tensor] = {}
    whole: set[str] = set()
    if budget >= 1.0:
        whole = {m.name for m in bound}
    elif modules is not None:
        unknown = sorted(set(modules) - {m.name for m in bound})
        if unknown:
            raise apply_error("module-not-in-model", f"modules {unknown[:3]} are not blueprint modules of the model",
                              "/modules", fallback="module-not-in-model")
        whole = set(modules)
    elif granularity == "module":
        left = cap
        for m in sorted(bound, key=lambda m: -gprime[m.name]):
            if m.parameter_count <= left and gprime[m.name] > 0:
                whole.add(m.name)
                left -= m.parameter_count
    else:
        if rng is not None:
            gen = torch.Generator().manual_seed(int(random_seed or 0))
            scores: Mapping[str, torch.Tensor] = {
                n: torch.rand(tuple(p.shape), generator=gen) for m in bound for n, p in zip(m.tensor_names, m.params)
            }
            gprime = _normalised({m.name: float(m.parameter_count) for m in bound})  # uniform per element
        elif element_scores is not None:
            scores = element_scores
        elif local_elements:
            scores = local_elements
        else:
            raise apply_error(
                "missing-field",
                f"{granularity} granularity needs local_batches or element_scores (e.g. the blueprint's sidecar) "
                "to choose which entries to train",
                "/local_batches", fallback="missing-field",
            )
        own = rng is not None or consume_scores or (element_scores is None and bool(local_elements))
        chosen_units, whole = _select_units(bound, owners, gprime, scores, granularity, cap, inplace=own)
        del scores
        local_elements.clear()

    # Refuse before touching the model, so that a refused call leaves it as it was.
    by_tensor = {n: (m, j) for m in bound for j, n in enumerate(m.tensor_names)}
    partial: dict[str, int] = {}
    for n, idx in chosen_units.items():
        if idx.numel():
            m, _ = by_tensor[n]
            partial[m.name] = partial.get(m.name, 0)
    refused = [m.name for m, o in zip(bound, owners) if m.name in partial and not _is_partial_type(o)]
    if refused:
        raise apply_error(
            "unsupported-module",
            f"{granularity} granularity can update only Linear, Embedding and Conv modules; selected: "
            + ", ".join(f"{n} ({m.type})" for n, m in ((m.name, m) for m in bound) if n in refused[:5])
            + "; use granularity='module' or train these modules whole",
            "/granularity", fallback="wrong-type",
        )

    # -- freeze and re-parametrise ----------------------------------------------------------------
    unbound_names = set(layout.unbound)
    for n, p in model.named_parameters():
        p.requires_grad_(train_unbound and n in unbound_names)
    handle = BlueprintHandle(
        model=model, granularity=granularity, budget=budget, blueprint_digest=blueprint_digest(blueprint),
        structure_digest=structure_digest(inventory), selection=[], bound_parameters=n_total,
    )
    if train_unbound:
        handle.unbound = {n: p for n, p in model.named_parameters() if n in unbound_names}
    for m, owner in zip(bound, owners):
        mtype = type(owner).__name__ if owner is not None else m.type
        if m.name in whole:
            for pn, p in zip(m.param_names, m.params):
                p.requires_grad_(True)
                handle.dense[pn] = p
            handle.selection.append(ModuleSelection(m.name, mtype, m.parameter_count, m.parameter_count, "dense",
                                                    gprime.get(m.name, 0.0)))
            continue
        selected = 0
        for _j, (tn, pn, p) in enumerate(zip(m.tensor_names, m.param_names, m.params)):
            sel_idx = chosen_units.get(tn)
            if sel_idx is None or sel_idx.numel() == 0:
                continue
            units = p.numel() if granularity == "element" or p.dim() <= 1 else int(p.shape[0])
            row = 1 if granularity == "element" or p.dim() <= 1 else p.numel() // max(int(p.shape[0]), 1)
            if int(sel_idx.numel()) == units:  # the whole tensor: plain dense training is cheaper
                p.requires_grad_(True)
                handle.dense[pn] = p
                selected += int(p.numel())
                continue
            assert owner is not None
            attr = pn.rsplit(".", 1)[-1]
            gran = "element" if granularity == "element" or p.dim() <= 1 else "row"
            delta = attach_sparse_delta(owner, attr, sel_idx, gran)
            handle.sparse.append(_SparseEntry(pn, owner, attr, delta))
            selected += int(sel_idx.numel()) * row
        handle.selection.append(ModuleSelection(m.name, mtype, m.parameter_count, selected,
                                                "sparse" if selected else "frozen", gprime.get(m.name, 0.0)))
    return handle


def load_update(model: nn.Module, path: str | Path, expect_structure: str | None = None) -> list[str]:
    """Add a saved update onto a base model's dense weights (in place); returns the tensor names changed.

    Sparse entries are added at their indices; whole tensors replace the model's. Raises
    ApplyError (bad-container) for a file that is not an update or does not fit the model.
    """
    from safetensors import safe_open

    p = Path(path)
    try:
        handle = safe_open(str(p), framework="pt")
    except Exception as exc:
        raise apply_error("bad-container", f"{p}: not a readable safetensors file: {exc}",
                          fallback="bad-container") from None
    meta = handle.metadata() or {}  # type: ignore[no-untyped-call]
    if meta.get("format") != UPDATE_FORMAT:
        raise apply_error("bad-container", f"{p}: not a blueprint update (format {meta.get('format')!r})",
                          fallback="bad-container")
    if expect_structure is not None and meta.get("structure_digest") != expect_structure:
        raise BindingError(make_error("structure-digest-mismatch", f"{p}: update made for another model structure"))
    get: Any = handle.get_tensor
    kinds: dict[str, str] = json.loads(meta.get("kinds", "{}"))
    params = dict(model.named_parameters())
    changed: list[str] = []
    with torch.no_grad():
        for name, kind in sorted(kinds.items()):
            target = params.get(name)
            if target is None:
                raise apply_error("bad-container", f"{p}: the model has no parameter {name!r}", fallback="bad-container")
            if kind == "whole":
                t = get(name)
                if tuple(t.shape) != tuple(target.shape):
                    raise apply_error("bad-container", f"{p}: {name} has shape {tuple(t.shape)}, the model "
                                      f"{tuple(target.shape)}", fallback="bad-container")
                target.copy_(t.to(target.dtype))
            else:
                values = get(f"{name}::values").to(target.device, target.dtype)
                idx = get(f"{name}::indices").to(target.device).long()
                units = target.numel() if kind == "sparse-element" else int(target.shape[0])
                if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= units):
                    raise apply_error("bad-container", f"{p}: indices of {name} out of range",
                                      fallback="bad-container")
                if kind == "sparse-element":
                    target.view(-1).index_add_(0, idx, values.reshape(-1))
                else:
                    target.index_add_(0, idx, values)
            changed.append(name)
    return changed
