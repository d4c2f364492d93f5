"""In-place sparse fine-tuning: train a few entries of a weight, with the weight itself as the storage.

A selected tensor W stays where it is, frozen (requires_grad False), and keeps being the model's
weight. Its selected entries get a `SparseSelection`: `values`, the only trainable tensor, holds
the current values of those entries (one per selected element, or one row per selected row), and
small index tensors name them (row numbers; or, for elements, compressed rows: row pointers and
int16 column numbers). Hence `values.grad` and
every optimizer state (AdamW's exp_avg and exp_avg_sq) have the size of the selection, not of W,
as in SIFT. After each optimizer step the new values are written into W in place, under no_grad
(by a global optimizer step hook, and again before any forward that finds them changed): no
full-size copy of W is ever made (values changed in any other way, e.g. by writing to
`values.data`, reach W at `sync()`). Entries outside the selection are never written, so they stay
bit-identical; AdamW on `values` is AdamW on the selected entries of W, weight decay included,
unlike a dense 0/1 gradient mask that would still decay the "frozen" ones.

Every module that uses a selected tensor (a tied embedding and output layer: both) runs through a
patched forward (`ModulePatch`), whose backward (sparse_kernels.py) computes only what is needed:
the selected rows' gradient at row granularity, the selected entries at element granularity (the
dense gradient one block of rows at a time), and the input's gradient only when autograd asks for
it, so backward never descends below the lowest trainable tensor.
"""

from __future__ import annotations

import typing
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from blueprint_format.models import SidecarGranularity
from reference_impl.sparse_kernels import SparseModuleFunction, block_rows, module_op, unsupported_reason

INT32_MAX = 2**31 - 1
#: Entries written back at once (index_put needs int64 positions: their temporary stays small).
WRITE_CHUNK = 1 << 18
#: What a partly selected tensor can be (the granularities a score sidecar has, too).
GRANULARITIES: tuple[str, ...] = typing.get_args(SidecarGranularity)
#: At element granularity, backward forms only the rows holding a selected entry when they are at
#: most this share of the weight's rows (gathering them costs a copy of their output gradients).
COMPACT_SHARE = 0.75


def index_dtype(numel: int) -> torch.dtype:
    """int32 when every index of a tensor with `numel` units fits, else int64."""
    return torch.int32 if numel - 1 <= INT32_MAX else torch.int64


def unit_count(shape: torch.Size, granularity: str) -> int:
    """Number of selectable units of a tensor: elements, or rows (first-dimension slices)."""
    numel = 1
    for d in shape:
        numel *= int(d)
    return numel if granularity == "element" or len(shape) <= 1 else int(shape[0])


def column_dtype(cols: int) -> torch.dtype:
    """The smallest signed integer type that indexes `cols` columns (int16 for up to 32768)."""
    if cols - 1 <= 2**15 - 1:
        return torch.int16
    return index_dtype(cols)


class SparseSelection(nn.Module):
    """The selected entries of one weight tensor: trainable `values` and where they are.

    `granularity` is "element" or "row" (first-dimension slices; 1-D tensors are always element).
    Rows: `indices` are the selected row numbers. Elements: the tensor is seen as rows x cols
    (rows = its first dimension, 1 for a 1-D tensor) and the entries, sorted, are stored as
    compressed rows: `row_ptr[r]:row_ptr[r + 1]` are row r's entries and `indices` their columns,
    int16 where the rows are at most 32768 wide, so that an entry's index costs 2 bytes
    (`flat_indices()` gives flat positions). The weight is not registered here (it stays its
    module's parameter).
    """

    def __init__(self, weight: nn.Parameter, indices: torch.Tensor, granularity: str) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.granularity = "element" if weight.dim() <= 1 else granularity
        self.shape = torch.Size(weight.shape)
        units = unit_count(self.shape, self.granularity)
        idx = torch.unique(indices.reshape(-1).to(device=weight.device, dtype=torch.int64))  # sorted
        if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= units):
            raise IndexError(f"indices out of range for a tensor with {units} units")
        object.__setattr__(self, "_weight", weight)  # a plain reference: not a second registration
        # Buffers, so that moving the model moves them; not saved (they follow from `indices`).
        self.row_ptr: torch.Tensor | None
        self.active_rows: torch.Tensor | None
        self.register_buffer("row_ptr", None, persistent=False)
        self.register_buffer("active_rows", None, persistent=False)
        self.blocks: list[tuple[int, int, int, int]] = []  # row blocks backward forms (matrices)
        self.ranges: list[tuple[int, int, int, int]] = []  # row ranges written back at once
        self.units = units
        self.rows = int(self.shape[0]) if weight.dim() >= 2 else 1
        self.cols = weight.numel() // self.rows if self.rows else 0
        self.indices: torch.Tensor
        if self.granularity == "row":
            self.register_buffer("indices", idx.to(index_dtype(units)))
            with torch.no_grad():
                self.values = nn.Parameter(weight.detach().index_select(0, self.indices))
        else:
            self.register_buffer("indices", self._compress(idx))
            with torch.no_grad():
                self.values = nn.Parameter(weight.detach().reshape(-1).index_select(0, idx))
            if weight.dim() == 2:
                self._index_blocks(weight.element_size())
        self._synced = self.values._version

    def _compress(self, idx: torch.Tensor) -> torch.Tensor:
        """Row pointers of the sorted flat indices and the write-back ranges; returns the columns."""
        bounds = torch.arange(self.rows + 1, device=idx.device, dtype=torch.int64) * self.cols
        self.row_ptr = torch.searchsorted(idx, bounds)
        ptr = self.row_ptr.tolist()
        self.ranges = _ranges(ptr, min(WRITE_CHUNK, max(4096, -(-int(idx.numel()) // 8))))
        cols = torch.empty(idx.shape, dtype=column_dtype(self.cols), device=idx.device)
        for r0, r1, p0, p1 in self.ranges:
            cols[p0:p1] = idx[p0:p1] - self.rows_of(r0, r1) * self.cols
        return cols

    def rows_of(self, r0: int, r1: int) -> torch.Tensor:
        """The row of each selected entry of rows r0..r1-1, int64 (element selections of matrices)."""
        assert self.row_ptr is not None
        which = torch.arange(r0, r1, device=self.row_ptr.device)
        counts = self.row_ptr[which + 1] - self.row_ptr[which]
        return torch.repeat_interleave(which, counts)

    def flat_indices(self) -> torch.Tensor:
        """Flat positions of the selected elements (int64), or the selected rows."""
        if self.granularity == "row":
            return self.indices.to(torch.int64)
        parts = [self.rows_of(r0, r1) * self.cols + self.indices[p0:p1] for r0, r1, p0, p1 in self.ranges]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=self.indices.device)

    def _index_blocks(self, itemsize: int) -> None:
        """The row blocks backward forms for a matrix.

        When few rows hold a selected entry (at most COMPACT_SHARE of them), backward forms the
        gradient of those rows only (`active_rows`), in blocks of them; else it forms blocks of
        consecutive rows, skipping blocks without an entry. A block is (first, end, p0, p1): rows
        first..end-1 (of the weight, or of `active_rows`), entries p0..p1-1 of `indices`.
        """
        assert self.row_ptr is not None
        rows, cols = self.rows, self.cols
        ptr = self.row_ptr.tolist()
        active = [r for r in range(rows) if ptr[r + 1] > ptr[r]]
        if len(active) <= COMPACT_SHARE * rows:
            self.active_rows = torch.tensor(active, dtype=torch.int64, device=self.row_ptr.device)
            step = block_rows(len(active), cols, itemsize)
            self.blocks = [(a0, min(a0 + step, len(active)), ptr[active[a0]], ptr[active[min(a0 + step, len(active)) - 1] + 1])
                           for a0 in range(0, len(active), step)]
            return
        step = block_rows(rows, cols, itemsize)
        self.blocks = [
            (r0, min(r0 + step, rows), ptr[r0], ptr[min(r0 + step, rows)])
            for r0 in range(0, rows, step)
            if ptr[min(r0 + step, rows)] > ptr[r0]
        ]

    @property
    def weight(self) -> nn.Parameter:
        w: nn.Parameter = self.__dict__["_weight"]
        return w

    @property
    def selected_count(self) -> int:
        """Selected scalar entries (rows count their length)."""
        return int(self.values.numel())

    def weight_grad_fraction(self) -> float:
        """Share of the dense weight gradient's products that backward forms for this selection."""
        if self.granularity == "row":
            return int(self.indices.numel()) / int(self.shape[0]) if self.shape[0] else 0.0
        if len(self.shape) != 2:
            return 1.0  # 1-D tensors and conv kernels: formed whole (they are small)
        rows = sum(r1 - r0 for r0, r1, _, _ in self.blocks)
        return rows / int(self.shape[0]) if self.shape[0] else 0.0

    @torch.no_grad()
    def sync(self, force: bool = False) -> bool:
        """Write the values into the weight if they changed since the last write (or always, with
        `force`); True if written. Changes are seen through the values' version counter, which
        fused optimizer kernels do not advance: the optimizer step hook therefore forces the write."""
        if not force and self.values._version == self._synced:
            return False
        w = self.weight
        v = self.values.detach().to(w.dtype)
        if self.granularity == "row":
            w.index_copy_(0, self.indices.to(torch.int64), v)
        else:
            flat = w.view(-1)
            for r0, r1, p0, p1 in self.ranges:  # index_put needs int64 positions: a range at a time
                flat.index_put_((self.rows_of(r0, r1) * self.cols + self.indices[p0:p1],), v[p0:p1])
        self._synced = self.values._version
        return True

    def mask(self) -> torch.Tensor:
        """A boolean tensor of the weight's shape, True at the selected entries (tests, inspection)."""
        m = torch.zeros(self.shape, dtype=torch.bool, device=self.indices.device)
        if self.granularity == "row":
            m[self.indices.long()] = True
        else:
            m.view(-1)[self.flat_indices()] = True
        return m


def _ranges(ptr: list[int], most: int) -> list[tuple[int, int, int, int]]:
    """Consecutive row ranges (r0, r1, p0, p1) of about `most` entries each (a longer row alone),
    covering every row with an entry; p0..p1 are the entries of rows r0..r1-1."""
    out: list[tuple[int, int, int, int]] = []
    rows = len(ptr) - 1
    r0 = 0
    while r0 < rows:
        r1 = r0 + 1
        while r1 < rows and ptr[r1 + 1] - ptr[r0] <= most:
            r1 += 1
        if ptr[r1] > ptr[r0]:
            out.append((r0, r1, ptr[r0], ptr[r1]))
        r0 = r1
    return out


class ModulePatch:
    """Replaces one module's forward by SparseModuleFunction; callable as the forward itself."""

    def __init__(self, module: nn.Module, weight_sel: SparseSelection | None,
                 bias_sel: SparseSelection | None) -> None:
        op = module_op(module)
        if op is None:
            raise TypeError(f"cannot patch {type(module).__name__}")
        self.module = module
        self.op = op
        self.weight_sel = weight_sel
        self.bias_sel = bias_sel

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        x: torch.Tensor = args[0] if args else kwargs["input"]
        m = self.module
        for sel in (self.weight_sel, self.bias_sel):
            if sel is not None:
                sel.sync()
        w: Any = m.weight
        b: Any = getattr(m, "bias", None)
        if not torch.is_grad_enabled():
            return self.op.forward(m, x, w, b)
        wv = self.weight_sel.values if self.weight_sel is not None else None
        bv = self.bias_sel.values if self.bias_sel is not None else None
        out: torch.Tensor = SparseModuleFunction.apply(x, w, wv, b, bv, self)  # type: ignore[no-untyped-call]
        return out

    def install(self) -> None:
        self.module.forward = self

    def remove(self) -> None:
        if self.module.__dict__.get("forward") is self:
            del self.module.__dict__["forward"]


@dataclass
class SparseEngine:
    """Every selection and patch of one model; `remove()` leaves a plain model with the trained weights."""

    selections: dict[str, SparseSelection] = field(default_factory=dict)  # parameter name -> selection
    patches: list[ModulePatch] = field(default_factory=list)
    _owners: list[tuple[nn.Module, str]] = field(default_factory=list)
    _hook: Any = None

    def sync(self, force: bool = False) -> None:
        """Write every changed selection (every one, with `force`) into its weight."""
        for sel in self.selections.values():
            sel.sync(force)

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Write the selections whose values `optimizer` holds (called after each of its steps)."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for sel in self.selections.values():
            if id(sel.values) in held:
                sel.sync(force=True)

    def module_fraction(self, module: nn.Module) -> float | None:
        """Share of `module`'s weight gradient that backward forms (None: not patched)."""
        for p in self.patches:
            if p.module is module:
                if p.weight_sel is not None:
                    return p.weight_sel.weight_grad_fraction()
                return 1.0 if getattr(module, "weight", None) is not None and module.weight.requires_grad else 0.0
        return None

    def remove(self) -> None:
        """Write the last values, restore the forwards and unregister the selections (weights stay frozen)."""
        self.sync()
        for p in self.patches:
            p.remove()
        for owner, name in self._owners:
            if name in owner._modules:
                delattr(owner, name)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.patches.clear()
        self._owners.clear()


def _users(model: nn.Module, param: nn.Parameter) -> list[tuple[nn.Module, str]]:
    """(module, attribute) of every module holding `param` directly (tied weights: several)."""
    out = []
    for m in model.modules():
        for attr, p in m._parameters.items():
            if p is param:
                out.append((m, attr))
    return out


def patch_problem(model: nn.Module, param: nn.Parameter) -> str | None:
    """Why a partial selection of `param` cannot be trained in place (None when it can)."""
    users = _users(model, param)
    if not users:
        return "the tensor belongs to no module of the model"
    for m, attr in users:
        if attr not in ("weight", "bias"):
            return f"{type(m).__name__}.{attr} is neither a weight nor a bias"
        reason = unsupported_reason(m)
        if reason is not None:
            return reason
    return None


def attach_sparse(model: nn.Module, targets: Iterable[tuple[str, torch.Tensor, str]]) -> SparseEngine:
    """Make only the given entries trainable, in place: `targets` are (parameter name, indices,
    granularity) with flat element or first-dimension row indices. Raises TypeError for a tensor
    the engine cannot patch (check `patch_problem` first)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    engine = SparseEngine()
    by_module: dict[int, dict[str, SparseSelection]] = {}
    modules: dict[int, nn.Module] = {}
    for name, indices, granularity in targets:
        param = params[name]
        problem = patch_problem(model, param)
        if problem is not None:
            raise TypeError(f"{name}: {problem}")
        if not param.is_contiguous():
            with torch.no_grad():
                param.data = param.data.contiguous()
        param.requires_grad_(False)
        sel = SparseSelection(param, indices, granularity)
        owner, attr = _users(model, param)[0]
        slot = f"sparse_{attr}"
        owner.add_module(slot, sel)
        engine._owners.append((owner, slot))
        engine.selections[name] = sel
        for m, a in _users(model, param):
            by_module.setdefault(id(m), {})[a] = sel
            modules[id(m)] = m
    for key, sels in by_module.items():
        patch = ModulePatch(modules[key], sels.get("weight"), sels.get("bias"))
        patch.install()
        engine.patches.append(patch)
    ref = weakref.ref(engine)

    def after_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        live = ref()
        if live is not None:
            live.after_step(optimizer)

    engine._hook = register_optimizer_step_post_hook(after_step)
    return engine
