"""Values-only sparse updates: train a few entries of a weight without dense gradients or optimizer state.

A selected tensor W of a module is frozen and re-parametrised (torch.nn.utils.parametrize) as

    W_eff = W_frozen + scatter(values, indices)

where `indices` (int32 where the tensor fits, else int64) name the selected flat elements
(element granularity) or rows (row granularity: the slices W[i, ...]), and `values` is the only
trainable tensor, one entry per selected element (or one row per selected row). Hence
`values.grad` and every optimizer state (AdamW's exp_avg and exp_avg_sq) have the size of the
selection, not of W (SIFT / SpIEL; RESEARCH.md section 2). Entries outside the selection are
W_frozen exactly: weight decay and updates never touch them, unlike a dense 0/1 gradient mask.

The dense gradient of W_eff is still formed transiently by the module's backward and gathered at
`indices`; only the persistent state shrinks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

INT32_MAX = 2**31 - 1


def index_dtype(numel: int) -> torch.dtype:
    """int32 when every index of a tensor with `numel` units fits, else int64."""
    return torch.int32 if numel - 1 <= INT32_MAX else torch.int64


class SparseDelta(nn.Module):
    """Parametrisation W -> W + scatter(values at indices), rows or flat elements.

    `values` starts at zero, so the parametrised weight equals the original until trained.
    """

    def __init__(self, shape: torch.Size, indices: torch.Tensor, granularity: str, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        if granularity not in ("row", "element"):
            raise ValueError("granularity must be 'row' or 'element'")
        self.granularity = granularity
        self.shape = torch.Size(shape)
        self.indices: torch.Tensor
        self.register_buffer("indices", indices.to(device))
        if granularity == "element":
            vshape: tuple[int, ...] = (int(indices.numel()),)
        else:
            vshape = (int(indices.numel()), *self.shape[1:]) if len(self.shape) >= 1 else (int(indices.numel()),)
        self.values = nn.Parameter(torch.zeros(vshape, dtype=dtype, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        idx = self.indices.long()
        if self.granularity == "element" or weight.dim() <= 1:
            flat = weight.reshape(-1).index_add(0, idx, self.values.reshape(-1))
            return flat.view(weight.shape)
        return weight.index_add(0, idx, self.values)

    def dense_delta(self) -> torch.Tensor:
        """The update as a dense tensor of the weight's shape (for tests and merging by hand)."""
        z = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        return self.forward(z).detach()


def attach_sparse_delta(module: nn.Module, tensor_name: str, indices: torch.Tensor, granularity: str) -> SparseDelta:
    """Freeze `module.<tensor_name>` and make only the entries at `indices` trainable, values-only.

    `indices`: flat element indices (element granularity) or first-dimension row indices (row);
    they are sorted and stored as int32 where they fit.
    """
    weight = getattr(module, tensor_name)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.{tensor_name} is not a tensor")
    units = weight.numel() if granularity == "element" or weight.dim() <= 1 else int(weight.shape[0])
    idx = torch.unique(indices.reshape(-1).to(torch.int64))  # sorted, no duplicates
    if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= units):
        raise IndexError(f"indices out of range for {tensor_name} with {units} units")
    weight.requires_grad_(False)
    param = SparseDelta(weight.shape, idx.to(index_dtype(units)), granularity, weight.dtype, weight.device)
    parametrize.register_parametrization(module, tensor_name, param, unsafe=True)
    # The original lives on under parametrizations.<name>.original; it stays frozen.
    getattr(module.parametrizations, tensor_name).original.requires_grad_(False)
    return param


def sparse_deltas(module: nn.Module) -> dict[str, SparseDelta]:
    """The SparseDelta parametrisations of a module, by tensor name."""
    out: dict[str, SparseDelta] = {}
    if not parametrize.is_parametrized(module):
        return out
    plists: Any = module.parametrizations
    for name, plist in plists.items():
        for p in plist:
            if isinstance(p, SparseDelta):
                out[name] = p
    return out


def merge_sparse_deltas(module: nn.Module) -> None:
    """Fold every SparseDelta of `module` into its dense weight (which stays frozen)."""
    for name in list(sparse_deltas(module)):
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        getattr(module, name).requires_grad_(False)
