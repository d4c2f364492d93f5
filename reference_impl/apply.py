"""Apply a blueprint in fine-tuning: train only what it recommends, with real memory savings.

`apply_blueprint(model, bp, ApplyConfig(budget=..., granularity=...))` runs four steps:
`bind`, `module_scores` and `select` (selection.py: does the blueprint describe the model, how
does each module score, which modules, rows or elements fit the budget), then `attach` (here):
everything else is frozen (requires_grad False); tensors selected whole train as usual; partly
selected tensors are trained in place by the sparse engine (sparse_update.py), so gradients and
optimizer state exist only for the selected entries; a module the engine cannot train in part is
refused before the model is touched.

The `BlueprintHandle` it returns gives the optimizer its parameters, measures the trainable
state, and saves the update (`update.safetensors`: trained values with int32 indices, or whole
tensors) or merges it. Parameters that the weight files do not hold (e.g. a freshly initialised
classification head) cannot be named by a blueprint; they are trained whole when `train_unbound`
(default) and are not counted against the budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blueprint_format.api import digest as blueprint_digest
from blueprint_format.binding import TensorInfo, structure_digest
from blueprint_format.errors import BindingError, make_error
from blueprint_format.models import Blueprint
from reference_impl.losses import LossFn
from reference_impl.selection import (
    GRANULARITIES,
    ApplyConfig,
    ApplyError,
    Binding,
    Scores,
    Selection,
    apply_error,
    bind,
    local_statistics,
    module_scores,
    published_scores,
    select,
    sidecar_scores,
)
from reference_impl.sparse_update import (
    SparseEngine,
    SparseSelection,
    attach_sparse,
    index_dtype,
    patch_problem,
)

UPDATE_FORMAT = "gradient-blueprints-update/2"
#: Earlier update files stored sparse entries as deltas to add; they still load.
UPDATE_FORMAT_DELTAS = "gradient-blueprints-update/1"


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
class SparseEntry:
    """One partly selected tensor: its state_dict name (before the blueprint) and its selection."""

    param_name: str
    selection: SparseSelection


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
    sparse: list[SparseEntry] = field(default_factory=list)
    unbound: dict[str, nn.Parameter] = field(default_factory=dict)  # trained whole, outside the budget
    engine: SparseEngine = field(default_factory=SparseEngine)
    merged: bool = False

    # -- training ---------------------------------------------------------------------------
    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) for every tensor the optimizer must see; sparse ones as `<name>::values`."""
        out = [(n, p) for n, p in self.dense.items()]
        out += [(f"{e.param_name}::values", e.selection.values) for e in self.sparse]
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
        """Bytes allocated for trainable state: parameters, gradients, optimizer state, and the
        sparse selections' index tensors (indices and row pointers: they must stay in memory)."""
        params = self.parameters()
        p_bytes = sum(p.numel() * p.element_size() for p in params)
        i_bytes = 0
        for e in self.sparse:
            s = e.selection
            i_bytes += s.indices.numel() * s.indices.element_size()
            for extra in (s.row_ptr, s.active_rows):
                if extra is not None:
                    i_bytes += extra.numel() * extra.element_size()
        g_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
        o_bytes = 0
        if optimizer is not None:
            for p in params:
                for v in optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor):
                        o_bytes += v.numel() * v.element_size()
        return {"parameters": p_bytes, "indices": i_bytes, "gradients": g_bytes, "optimizer": o_bytes,
                "total": p_bytes + i_bytes + g_bytes + o_bytes}

    def trainable_modules(self) -> list[nn.Module]:
        """Submodules owning trainable parameters (for the meter's FLOP credit)."""
        ids = {id(p) for p in self.parameters()}
        return [m for m in self.model.modules() if any(id(p) in ids for p in m.parameters(recurse=False))]

    def weight_grad_fraction(self, module: nn.Module) -> float | None:
        """Share of `module`'s dense weight-gradient products that backward forms for it (None:
        the module is not trained in part, so it forms all or nothing as usual)."""
        return self.engine.module_fraction(module)

    # -- results ------------------------------------------------------------------------------
    def sync(self) -> None:
        """Write the latest sparse values into the weights (done after every optimizer step anyway)."""
        self.engine.sync()

    def merge(self) -> nn.Module:
        """Remove the sparse machinery; the weights already hold the trained values. Returns the model,
        a plain one again (its state_dict has the original keys; weights stay frozen)."""
        self.engine.remove()
        self.merged = True
        return self.model

    def update_tensors(self) -> dict[str, torch.Tensor]:
        """The update as named tensors: `<name>::values` + `<name>::indices` (sparse) or `<name>` (whole).

        Values are the trained values themselves (not differences to the base)."""
        if self.merged:
            raise RuntimeError("the update was merged; save it before merge()")
        self.sync()
        out: dict[str, torch.Tensor] = {}
        for e in self.sparse:
            out[f"{e.param_name}::values"] = e.selection.values.detach().to("cpu").contiguous()
            sel = e.selection  # flat element positions (or rows), int32 where they fit
            out[f"{e.param_name}::indices"] = sel.flat_indices().to("cpu", index_dtype(sel.units)).contiguous()
        for n, p in list(self.dense.items()) + list(self.unbound.items()):
            out[n] = p.detach().to("cpu").contiguous()
        return out

    def save_update(self, path: str | Path) -> int:
        """Write the update alone as a safetensors file (atomically); returns its size in bytes."""
        import json

        from safetensors.torch import save

        from blueprint_format.atomic import atomic_write_bytes

        kinds = {e.param_name: f"sparse-{e.selection.granularity}" for e in self.sparse}
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
# step 4: attaching


def _refuse_unsupported(model: nn.Module, binding: Binding, selection: Selection, granularity: str) -> None:
    """Refuse, before the model is touched, a partial selection the sparse engine cannot train."""
    by_tensor = {n: (m, p) for m in binding.bound for n, p in zip(m.tensor_names, m.params)}
    refused: list[str] = []
    for n, idx in selection.units.items():
        m, p = by_tensor[n]
        if not idx.numel() or int(idx.numel()) == _units(p, granularity):
            continue
        problem = patch_problem(model, p)
        if problem is not None:
            refused.append(f"{m.name} ({m.type}: {problem})")
    if refused:
        raise apply_error(
            "unsupported-module",
            f"{granularity} granularity can update only Linear, Embedding and Conv modules in part; selected: "
            + "; ".join(refused[:5]) + "; use granularity='module' or train these modules whole",
            "/granularity",
        )


def _units(p: torch.Tensor, granularity: str) -> int:
    return p.numel() if granularity == "element" or p.dim() <= 1 else int(p.shape[0])


def attach(model: nn.Module, bp: Blueprint, binding: Binding, selection: Selection, config: ApplyConfig,
           scores: Scores) -> BlueprintHandle:
    """Freeze everything but the selection; train whole tensors densely and partial ones in place."""
    _refuse_unsupported(model, binding, selection, config.granularity)
    unbound_names = set(binding.layout.unbound)
    for n, p in model.named_parameters():
        p.requires_grad_(config.train_unbound and n in unbound_names)
    handle = BlueprintHandle(
        model=model, granularity=config.granularity, budget=config.budget, blueprint_digest=blueprint_digest(bp),
        structure_digest=structure_digest(binding.inventory), selection=[], bound_parameters=binding.parameter_count,
    )
    if config.train_unbound:
        handle.unbound = {n: p for n, p in model.named_parameters() if n in unbound_names}
    targets: list[tuple[str, torch.Tensor, str]] = []
    for m, owner in zip(binding.bound, binding.owners):
        mtype = type(owner).__name__ if owner is not None else m.type
        selected = 0
        for tn, pn, p in zip(m.tensor_names, m.param_names, m.params):
            idx = selection.units.get(tn)
            if m.name in selection.whole or (idx is not None and int(idx.numel()) == _units(p, config.granularity)):
                p.requires_grad_(True)  # the whole tensor: plain dense training is cheaper
                handle.dense[pn] = p
                selected += int(p.numel())
            elif idx is not None and idx.numel():
                gran = "element" if config.granularity == "element" or p.dim() <= 1 else "row"
                targets.append((pn, idx, gran))
                selected += int(idx.numel()) * (1 if gran == "element" else p.numel() // int(p.shape[0]))
        mode = "dense" if m.name in selection.whole else ("sparse" if selected else "frozen")
        handle.selection.append(ModuleSelection(m.name, mtype, m.parameter_count, selected, mode,
                                                scores.gprime.get(m.name, 0.0)))
    handle.engine = attach_sparse(model, targets)
    by_name = handle.engine.selections
    handle.sparse = [SparseEntry(pn, by_name[pn]) for pn, _, _ in targets]
    return handle


def apply_blueprint(
    model: nn.Module,
    blueprint: Blueprint,
    config: ApplyConfig | None = None,
    *,
    local_batches: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    element_scores: Mapping[str, torch.Tensor] | None = None,
    model_path: str | Path | None = None,
    tensors: Iterable[TensorInfo] | None = None,
    **settings: Any,
) -> BlueprintHandle:
    """Make only what `blueprint` recommends trainable on `model`; return the handle.

    config: an ApplyConfig; its fields may also be given as keywords (`budget=0.2,
    granularity="element"`), alone or to override `config`. local_batches: a few batches of the
    user's data (`loss_fn(model, batch)` gives the loss; default: the model's own) for the blend of
    G' and for choosing rows/elements. element_scores: per-tensor element scores (e.g. the
    blueprint's sidecar, `sidecar_scores`) used instead of local gradients to choose rows/elements.
    model_path / tensors: the weight files (or inventory) the blueprint binds to; default: the
    model's state_dict, or the same with the task model's prefix stripped.

    Nothing is changed on the model when the call is refused.
    """
    if config is None:
        config = ApplyConfig(**settings)
    elif settings:
        config = replace(config, **settings)
    binding = bind(model, blueprint, config.force, model_path, tensors)
    scores = module_scores(model, blueprint, binding, config, local_batches, loss_fn, element_scores)
    selection = select(binding, scores, config)
    scores.units = None  # the unit scores must not stay alive through training
    return attach(model, blueprint, binding, selection, config, scores)


# ----------------------------------------------------------------------------------------------
# saved updates


def _bad_update(path: Path, message: str) -> ApplyError:
    return apply_error("bad-container", f"{path}: {message}")


def load_update(model: nn.Module, path: str | Path, expect_structure: str | None = None) -> list[str]:
    """Put a saved update into a base model's weights (in place); returns the tensor names changed.

    Sparse entries are set at their indices (older "/1" files hold differences, which are added);
    whole tensors replace the model's. Raises ApplyError (bad-container) for a file that is not an
    update or does not fit the model.
    """
    import json

    from safetensors import safe_open

    p = Path(path)
    try:
        handle = safe_open(str(p), framework="pt")
    except Exception as exc:
        raise _bad_update(p, f"not a readable safetensors file: {exc}") from None
    meta = handle.metadata() or {}  # type: ignore[no-untyped-call]
    fmt = meta.get("format")
    if fmt not in (UPDATE_FORMAT, UPDATE_FORMAT_DELTAS):
        raise _bad_update(p, f"not a blueprint update (format {fmt!r})")
    if expect_structure is not None and meta.get("structure_digest") != expect_structure:
        raise BindingError(make_error("structure-digest-mismatch", f"{p}: update made for another model structure"))
    get: Any = handle.get_tensor
    kinds: dict[str, str] = json.loads(meta.get("kinds", "{}"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, kind in sorted(kinds.items()):
            target = params.get(name)
            if target is None:
                raise _bad_update(p, f"the model has no parameter {name!r}")
            if kind == "whole":
                t = get(name)
                if tuple(t.shape) != tuple(target.shape):
                    raise _bad_update(p, f"{name} has shape {tuple(t.shape)}, the model {tuple(target.shape)}")
                target.copy_(t.to(target.dtype))
            else:
                _put_sparse(target, get(f"{name}::values"), get(f"{name}::indices"), kind, fmt == UPDATE_FORMAT, p, name)
    return sorted(kinds)


def _put_sparse(target: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, kind: str, absolute: bool,
                path: Path, name: str) -> None:
    """Set (or, for old delta files, add) sparse values at their indices of `target`."""
    values = values.to(target.device, target.dtype)
    idx = indices.to(target.device).long()
    element = kind == "sparse-element"
    units = target.numel() if element else int(target.shape[0])
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= units):
        raise _bad_update(path, f"indices of {name} out of range")
    view = target.view(-1) if element else target
    expected = (int(idx.numel()),) if element else (int(idx.numel()), *target.shape[1:])
    if tuple(values.reshape(-1).shape if element else values.shape) != expected:
        raise _bad_update(path, f"values of {name} do not match its indices")
    if absolute:
        view.index_copy_(0, idx, values.reshape(-1) if element else values)
    else:
        view.index_add_(0, idx, values.reshape(-1) if element else values)


def selected_entries(handle: BlueprintHandle) -> dict[str, torch.Tensor]:
    """Boolean masks of the selected entries per partly selected tensor (tests and inspection)."""
    return {e.param_name: e.selection.mask() for e in handle.sparse}


__all__ = [
    "GRANULARITIES",
    "UPDATE_FORMAT",
    "ApplyConfig",
    "ApplyError",
    "Binding",
    "BlueprintHandle",
    "ModuleSelection",
    "Scores",
    "Selection",
    "SparseEntry",
    "apply_blueprint",
    "apply_error",
    "attach",
    "bind",
    "load_update",
    "local_statistics",
    "module_scores",
    "published_scores",
    "select",
    "selected_entries",
    "sidecar_scores",
]
