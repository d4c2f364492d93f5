"""The gradient kernels of the sparse update engine: what a patched module computes, forward and backward.

A module with a selected tensor (sparse_update.py) runs its forward through `SparseModuleFunction`:
the forward is the module's own operation on its (frozen, in-place updated) weight; the backward
returns the gradient of the input (only when autograd asks for it, so backward stops at the
lowest trainable tensor), dense gradients for tensors trained whole, and for each selected tensor
the gradient of its selected entries only, written straight into a selection-sized tensor:

* row granularity of a matrix W (rows x cols) with dW = L^T R (Linear: L = the output gradient G,
  R = the input X; GPT-2's Conv1D: L = X, R = G): dW[rows] = L[:, rows]^T R, nothing else;
* element granularity: dW is formed one block of rows at a time (a block is at most a quarter of
  W and at most BLOCK_BYTES), the block's selected entries are gathered, and the block is freed;
  blocks without a selected entry are skipped, and when few rows hold an entry only those rows
  are formed. No weight-sized tensor is allocated;
* Embedding: the gradient is a scatter of the output gradient at the looked-up ids, so it is formed
  for the distinct ids of the batch only (at most batch x sequence rows), never for the vocabulary;
* Conv1d/2d/3d: the (small) dense weight gradient is formed transiently by
  torch.nn.grad.conv*_weight and gathered (convolution kernels are rarely large).

Under autocast the products run in the output gradient's dtype (what autocast chose in forward),
and the selected gradients are cast to the values' dtype.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from reference_impl.sparse_update import SparseSelection

#: Largest dense block of a weight gradient formed at once at element granularity (bytes).
BLOCK_BYTES = 4 << 20
#: A block is also at most this fraction of its weight, so that even small weights are never
#: formed whole.
MIN_BLOCKS = 4


def block_rows(rows: int, cols: int, itemsize: int) -> int:
    """Rows per dense block of a (rows x cols) weight gradient at element granularity."""
    by_bytes = max(1, BLOCK_BYTES // max(1, cols * itemsize))
    return max(1, min(math.ceil(rows / MIN_BLOCKS), by_bytes))


def matrix_values_grad(sel: SparseSelection, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The gradient of `sel`'s values where the weight's gradient is dW = left^T @ right.

    left: (T x rows), right: (T x cols), in the compute dtype. Returns a tensor shaped like
    sel.values, in its dtype.
    """
    if sel.granularity == "row":
        rows = sel.indices
        out = left.index_select(1, rows).t().matmul(right)
        return out.to(sel.values.dtype)
    cols = int(right.shape[1])
    grad = torch.zeros(sel.values.shape, dtype=left.dtype, device=left.device)
    active = sel.active_rows
    for a0, a1, p0, p1 in sel.blocks:
        if active is None:  # consecutive rows a0..a1-1
            block = left[:, a0:a1].t().matmul(right)  # (a1 - a0) x cols, freed at the next iteration
            row = sel.rows_of(a0, a1) - a0  # each entry's row within the block
        else:  # the block's rows with a selected entry, gathered
            rows = active[a0:a1]
            block = left.index_select(1, rows).t().matmul(right)
            counts = sel.row_ptr[rows + 1] - sel.row_ptr[rows]  # type: ignore[index]
            row = torch.repeat_interleave(torch.arange(int(rows.numel()), device=rows.device), counts)
        local = row * cols + sel.indices[p0:p1]
        torch.index_select(block.view(-1), 0, local, out=grad[p0:p1])
        del block
    return grad.to(sel.values.dtype)


def vector_values_grad(sel: SparseSelection, dense_grad: torch.Tensor) -> torch.Tensor:
    """The gradient of `sel`'s values from the (small) dense gradient of a 1-D tensor or a conv kernel."""
    if sel.granularity == "row":
        return dense_grad.index_select(0, sel.indices).to(sel.values.dtype)
    return dense_grad.reshape(-1).index_select(0, sel.flat_indices()).to(sel.values.dtype)


def embedding_values_grad(
    sel: SparseSelection, ids: torch.Tensor, g: torch.Tensor, padding_idx: int | None
) -> torch.Tensor:
    """The gradient of an Embedding weight's selected values: formed for the batch's distinct ids only."""
    dim = int(g.shape[-1])
    flat_ids = ids.reshape(-1)
    uniq, inverse = torch.unique(flat_ids, return_inverse=True)
    per_id = torch.zeros(int(uniq.numel()), dim, dtype=g.dtype, device=g.device)
    per_id.index_add_(0, inverse, g.reshape(-1, dim))
    if padding_idx is not None:
        per_id[uniq == padding_idx] = 0  # F.embedding never updates the padding row
    grad = torch.zeros(sel.values.shape, dtype=g.dtype, device=g.device)
    if sel.granularity == "row":
        rows = sel.indices.to(uniq.dtype)
        if rows.numel():
            pos = torch.searchsorted(rows, uniq).clamp_(max=int(rows.numel()) - 1)
            hit = rows[pos] == uniq
            grad[pos[hit]] = per_id[hit]
        return grad.to(sel.values.dtype)
    # Element granularity: the selected entries of the rows of the distinct ids, found through the
    # selection's row pointers (each row's entries are one run, `indices` holds their columns).
    ptr = sel.row_ptr
    assert ptr is not None, "element selections of an Embedding have row pointers"
    starts = ptr[uniq]
    counts = ptr[uniq + 1] - starts
    total = int(counts.sum())
    if total == 0:
        return grad.to(sel.values.dtype)
    which = torch.repeat_interleave(torch.arange(int(uniq.numel()), device=g.device), counts)
    offsets = torch.cumsum(counts, 0) - counts
    positions = torch.arange(total, device=g.device) - offsets[which] + starts[which]
    cols = sel.indices.index_select(0, positions).to(torch.int64)
    grad[positions] = per_id[which, cols]
    return grad.to(sel.values.dtype)


# ----------------------------------------------------------------------------------------------
# module operations


class ModuleOp(Protocol):
    """Forward and backward pieces of one module type."""

    def forward(self, module: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor: ...

    def grad_input(self, module: nn.Module, x_shape: torch.Size, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor: ...

    def weight_grad(self, module: nn.Module, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor,
                    sel: SparseSelection | None) -> torch.Tensor: ...

    def bias_grad(self, g: torch.Tensor) -> torch.Tensor: ...


class LinearOp:
    """nn.Linear (weight out x in) and, with `transposed`, transformers' Conv1D (weight in x out)."""

    def __init__(self, transposed: bool = False) -> None:
        self.transposed = transposed

    def forward(self, module: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if not self.transposed:
            return F.linear(x, w, b)
        out = x.reshape(-1, x.shape[-1]).matmul(w)
        if b is not None:
            out = out + b
        return out.view(*x.shape[:-1], int(w.shape[1]))

    def grad_input(self, module: nn.Module, x_shape: torch.Size, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        wc = w.to(g.dtype)
        return g.matmul(wc.t() if self.transposed else wc)

    def _operands(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xm = x.reshape(-1, x.shape[-1]).to(g.dtype)
        gm = g.reshape(-1, g.shape[-1])
        return (xm, gm) if self.transposed else (gm, xm)

    def weight_grad(self, module: nn.Module, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor,
                    sel: SparseSelection | None) -> torch.Tensor:
        left, right = self._operands(x, g)
        if sel is None:
            return left.t().matmul(right).to(w.dtype)
        return matrix_values_grad(sel, left, right)

    def bias_grad(self, g: torch.Tensor) -> torch.Tensor:
        return g.reshape(-1, g.shape[-1]).sum(0)


class EmbeddingOp:
    """nn.Embedding without max_norm, scale_grad_by_freq or sparse gradients (refused at attach)."""

    def forward(self, module: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.embedding(x, w, getattr(module, "padding_idx", None))

    def grad_input(self, module: nn.Module, x_shape: torch.Size, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("an Embedding's integer input has no gradient")

    def weight_grad(self, module: nn.Module, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor,
                    sel: SparseSelection | None) -> torch.Tensor:
        padding_idx = getattr(module, "padding_idx", None)
        if sel is not None:
            return embedding_values_grad(sel, x, g, padding_idx)
        dense = torch.zeros(w.shape, dtype=g.dtype, device=g.device)
        dense.index_add_(0, x.reshape(-1), g.reshape(-1, g.shape[-1]))
        if padding_idx is not None:
            dense[padding_idx] = 0
        return dense.to(w.dtype)

    def bias_grad(self, g: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("an Embedding has no bias")


class ConvOp:
    """nn.Conv1d/2d/3d with zero padding given as integers (checked at attach)."""

    def __init__(self, dims: int) -> None:
        self.dims = dims
        import torch.nn.grad as conv_grad

        self._input = getattr(conv_grad, f"conv{dims}d_input")
        self._weight = getattr(conv_grad, f"conv{dims}d_weight")

    def _args(self, module: nn.Module) -> tuple[Any, ...]:
        m: Any = module
        return m.stride, m.padding, m.dilation, m.groups

    def forward(self, module: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        fn = getattr(F, f"conv{self.dims}d")
        return fn(x, w, b, *self._args(module))  # type: ignore[no-any-return]

    def grad_input(self, module: nn.Module, x_shape: torch.Size, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self._input(x_shape, w.to(g.dtype), g, *self._args(module))  # type: ignore[no-any-return]

    def weight_grad(self, module: nn.Module, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor,
                    sel: SparseSelection | None) -> torch.Tensor:
        dense = self._weight(x.to(g.dtype), w.shape, g, *self._args(module))
        return dense.to(w.dtype) if sel is None else vector_values_grad(sel, dense)

    def bias_grad(self, g: torch.Tensor) -> torch.Tensor:
        return g.sum(dim=[d for d in range(g.dim()) if d != 1])


def module_op(module: nn.Module) -> ModuleOp | None:
    """The operation of a module type the engine can patch, or None."""
    name = type(module).__name__
    if isinstance(module, nn.Linear) or name == "NonDynamicallyQuantizableLinear":
        return LinearOp()
    if name == "Conv1D":
        return LinearOp(transposed=True)
    if isinstance(module, nn.Embedding):
        return EmbeddingOp()
    for dims, cls in ((1, nn.Conv1d), (2, nn.Conv2d), (3, nn.Conv3d)):
        if type(module) is cls:
            return ConvOp(dims)
    return None


def unsupported_reason(module: nn.Module) -> str | None:
    """Why the engine cannot patch this module (None when it can)."""
    m: Any = module
    if module_op(module) is None:
        return f"{type(module).__name__} is not a Linear, Embedding or Conv module"
    if isinstance(module, nn.Embedding) and (m.max_norm is not None or m.scale_grad_by_freq or m.sparse):
        return "an Embedding with max_norm, scale_grad_by_freq or sparse gradients"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and (
        m.padding_mode != "zeros" or isinstance(m.padding, str)
    ):
        return "a convolution with non-zero or string padding"
    return None


# ----------------------------------------------------------------------------------------------
# the autograd function


class SparseModuleFunction(torch.autograd.Function):
    """One call of a patched module. Inputs: x, weight, weight values, bias, bias values, patch.

    `patch` (sparse_update.ModulePatch) says which tensors are selected; the tensors passed
    explicitly are the ones autograd must route gradients to.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, wv: torch.Tensor | None, b: torch.Tensor | None,
                bv: torch.Tensor | None, patch: Any) -> torch.Tensor:
        ctx.patch = patch
        ctx.has_bias = b is not None
        # The input is kept only when a weight gradient needs it (as a dense step would keep it).
        keep_x = wv is not None or w.requires_grad
        ctx.save_for_backward(x if keep_x else None, w)
        ctx.x_shape = x.shape
        return patch.op.forward(patch.module, x, w, b)  # type: ignore[no-any-return]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # The products run in the output gradient's dtype, chosen here: an autocast context that
        # is still active (backward called inside it, on the CPU's own thread) must not recast them.
        with torch.autocast(g.device.type, enabled=False):
            return SparseModuleFunction._backward(ctx, g)

    @staticmethod
    def _backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        patch = ctx.patch
        op, module = patch.op, patch.module
        need_x, need_w, need_wv, need_b, need_bv = ctx.needs_input_grad[:5]
        gx = op.grad_input(module, ctx.x_shape, w, g) if need_x else None
        gw = op.weight_grad(module, x, w, g, None) if need_w else None
        gwv = op.weight_grad(module, x, w, g, patch.weight_sel) if need_wv else None
        gb = gbv = None
        if need_b or need_bv:
            dense_b = op.bias_grad(g)
            gb = dense_b.to(module.bias.dtype) if need_b else None
            gbv = vector_values_grad(patch.bias_sel, dense_b) if need_bv else None
        return gx, gw, gwv, gb, gbv, None
