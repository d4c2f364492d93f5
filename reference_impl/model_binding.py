"""Which submodules a blueprint describes, under which names, and the model's structure digest.

A blueprint module is a "leaf-ish" parameterised submodule: one that owns trainable parameters
directly (every nn.Linear, nn.Embedding, nn.LayerNorm...). Its name is the state_dict prefix of
its parameters *as the model's weight files spell it*, so the blueprint binds to the published
weights: transformers models loaded with a task head often carry a prefix the base checkpoint
lacks (`bert.encoder...` in memory, `encoder...` in the file) or the reverse; both are mapped.

A module whose prefix also covers other tensors of the model (buffers, parameters of children)
would not bind by prefix (SPEC: a module's parameter count is the sum over the tensors under its
prefix), so its parameters are listed one tensor at a time instead, under their tensor names.
Parameters that the weight files do not hold (e.g. a freshly initialised task head) cannot be
named in a blueprint of those files and are left out; `ModuleLayout.unbound` lists them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from blueprint_format.binding import TensorInfo, model_tensors, structure_digest

#: torch dtype -> safetensors dtype code.
_DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
}


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors dtype code of a torch dtype."""
    try:
        return _DTYPE_CODES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no safetensors code") from None


def state_dict_tensors(model: nn.Module) -> list[TensorInfo]:
    """Tensor inventory of a model's state_dict, as a safetensors file of it would list it."""
    return [
        TensorInfo(name=name, dtype=dtype_code(t.dtype), shape=tuple(int(d) for d in t.shape))
        for name, t in model.state_dict().items()
    ]


@dataclass
class BoundModule:
    """One blueprint module: its name in the weight files and its trainable parameters."""

    name: str
    type: str
    params: list[nn.Parameter]
    param_names: list[str]  # in-memory names, for messages
    tensor_names: list[str] = field(default_factory=list)  # names in the weight files, same order

    @property
    def parameter_count(self) -> int:
        return sum(int(p.numel()) for p in self.params)


@dataclass
class ModuleLayout:
    """The modules a blueprint describes and the tensor inventory it binds to."""

    modules: list[BoundModule]
    tensors: list[TensorInfo]
    structure_digest: str
    unbound: list[str] = field(default_factory=list)  # in-memory parameter names not in the weights

    @property
    def parameter_count(self) -> int:
        """Parameters of the whole model inventory (all tensors, as the files hold them)."""
        return sum(t.numel for t in self.tensors)


def _name_mapper(model: nn.Module, file_names: set[str]) -> dict[str, str]:
    """Map each in-memory state_dict name to its name in the weight files, where one exists."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    mapping: dict[str, str] = {}
    for name in model.state_dict():
        candidates = [name]
        if prefix:
            if name.startswith(prefix + "."):
                candidates.append(name[len(prefix) + 1 :])
            else:
                candidates.append(f"{prefix}.{name}")
        for c in candidates:
            if c in file_names:
                mapping[name] = c
                break
    return mapping


def module_layout(
    model: nn.Module, model_path: str | Path | None = None, tensors: Iterable[TensorInfo] | None = None
) -> ModuleLayout:
    """Group the model's trainable parameters into blueprint modules and bind them.

    The inventory is the model folder's (or file's) safetensors headers when `model_path` is
    given, `tensors` when given, else the model's own state_dict.
    """
    if tensors is not None:
        inventory = list(tensors)
    elif model_path is not None:
        inventory = model_tensors(model_path)
    else:
        inventory = state_dict_tensors(model)
    file_names = {t.name for t in inventory}
    mapping = _name_mapper(model, file_names)
    owners = dict(model.named_modules())

    # Group trainable parameters (shared ones once, as named_parameters yields them) by owner.
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    unbound: list[str] = []
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if pname not in mapping:
            unbound.append(pname)
            continue
        owner = pname.rsplit(".", 1)[0] if "." in pname else ""
        groups.setdefault(owner, []).append((pname, p))

    modules: list[BoundModule] = []
    for owner, members in groups.items():
        file_params = [mapping[n] for n, _ in members]
        prefixes = {f.rsplit(".", 1)[0] if "." in f else "" for f in file_params}
        mtype = type(owners[owner]).__name__ if owner in owners else "Parameter"
        prefix = prefixes.pop() if len(prefixes) == 1 else None
        under = (
            {t.name for t in inventory if t.name.startswith(prefix + ".")} if prefix else None
        )
        if prefix and under == set(file_params):
            modules.append(
                BoundModule(prefix, mtype, [p for _, p in members], [n for n, _ in members], list(file_params))
            )
        else:
            # The prefix also covers other tensors (or there is none): one entry per tensor.
            for (n, p), f in zip(members, file_params):
                modules.append(BoundModule(f, mtype, [p], [n], [f]))
    return ModuleLayout(
        modules=modules, tensors=inventory, structure_digest=structure_digest(inventory), unbound=unbound
    )
