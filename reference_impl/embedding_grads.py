"""Embedding gradients in bounded memory while the collector streams gradients (stream mode).

Two things make an embedding's gradient expensive, and both are undone for the duration of a
computation (`EmbeddingGrads.close` restores the model):

* torch builds an embedding's gradient as a dense matrix the size of the whole table, although
  only the rows of the batch's tokens are nonzero. Embeddings switch to sparse gradients
  (`nn.Embedding.sparse`), which hold only those rows; the collector adds them into its dense
  running sum. The numbers are the same up to float summation order.
* An output head that shares the table (tied input/output embeddings, as in most small language
  models) produces a dense table-sized gradient at the very start of backward, which autograd
  keeps until the embedding's part arrives at the very end, to add them: a table-sized buffer
  alive during the whole pass, when activations are largest. The head's forward runs through
  `_HeadFunction` for the computation: its backward computes the input's gradient as usual and
  hands the weight's gradient G_head = dY^T X to the collector in blocks of rows, added straight
  into the running sum; no table-sized gradient ever exists. The batch's squared norm of the
  shared table is assembled as ||G_head||^2 + ||G_emb||^2 + 2 <G_head, G_emb>, where the inner
  product involves only the rows of the batch's tokens (G_emb is zero elsewhere), computed as
  dY[:, ids]^T X.

Only the pattern "one nn.Embedding plus one nn.Linear head holding the same parameter" is taken
apart; other sharing is left to autograd (correct, just not lighter).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from reference_impl.sketch import squared_norm

#: Elements per block of the head's weight gradient (16 MiB in float32).
BLOCK = 1 << 22


def _holders(model: nn.Module, p: nn.Parameter) -> list[tuple[nn.Module, str]]:
    """Every (module, attribute) that holds parameter `p` directly."""
    return [(m, name) for m in model.modules() for name, q in m._parameters.items() if q is p]


class _HeadFunction(torch.autograd.Function):
    """y = x W^T + b whose backward hands W's gradient to `pair` instead of autograd."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pair: Any) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.pair = pair
        ctx.has_bias = bias is not None
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        gy = grad.reshape(-1, grad.shape[-1])
        ctx.pair.head_gradient(gy, x.reshape(-1, x.shape[-1]))
        grad_x = grad.matmul(weight.to(grad.dtype)).to(x.dtype)
        return grad_x, None, gy.sum(0) if ctx.has_bias else None, None


class _TiedPair:
    """One table shared by an embedding and a linear head: the head's gradient goes to the
    collector in blocks, and the cross term of the two parts is added to the batch's norm."""

    def __init__(
        self, embedding: nn.Embedding, head: nn.Linear, add_sq: Callable[[torch.Tensor], None],
        add_rows: Callable[[int, torch.Tensor], None],
    ) -> None:
        self.embedding, self.head = embedding, head
        self.add_sq, self.add_rows = add_sq, add_rows
        self.previous_forward = head.__dict__.get("forward")
        head.forward = self._forward  # type: ignore[method-assign, assignment]
        self.handle = embedding.register_forward_pre_hook(self._seen)
        self.reset()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _HeadFunction.apply(x, self.head.weight, self.head.bias, self)  # type: ignore[no-untyped-call]
        return out

    def reset(self) -> None:
        """Forget the batch (called after each batch)."""
        self.ids: torch.Tensor | None = None  # sorted unique token ids of the batch
        self.head_rows: torch.Tensor | None = None  # the head's part at `ids` (or whole, if ids unknown)
        self.emb_part: torch.Tensor | None = None  # the embedding's part (sparse coalesced or dense)

    def _seen(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            ids = torch.unique(args[0].detach().reshape(-1))
            self.ids = ids if self.ids is None else torch.unique(torch.cat([self.ids, ids]))

    def head_gradient(self, gy: torch.Tensor, x: torch.Tensor) -> None:
        """The head's weight gradient dY^T X (gy: tokens x vocabulary, x: tokens x width), added
        to the running sum block by block, with its squared norm and its rows at the batch's ids."""
        step = max(1, BLOCK // max(1, x.shape[1]))
        wide = torch.float32 if gy.device.type == "mps" else torch.float64
        sq = torch.zeros((), dtype=wide, device=gy.device)
        x = x.to(gy.dtype)  # once, not per block
        for start in range(0, gy.shape[1], step):
            block = gy[:, start : start + step].T.matmul(x)
            sq += squared_norm(block, wide)
            self.add_rows(start, block)
        self.add_sq(sq)
        rows = gy.T.matmul(x) if self.ids is None else gy[:, self.ids].T.matmul(x)
        if self.emb_part is not None:
            self._cross(rows, self.emb_part, whole=self.ids is None)
        else:
            self.head_rows = rows

    def emb_part_arrived(self, g: torch.Tensor) -> None:
        """The embedding's part (sparse coalesced, or dense) arrived."""
        if self.head_rows is None:
            self.emb_part = g
        else:
            self._cross(self.head_rows, g, whole=self.ids is None)

    def _cross(self, head_rows: torch.Tensor, emb: torch.Tensor, whole: bool) -> None:
        """Add 2 <G_head, G_emb>; `head_rows` is the whole head part or its rows at `ids`."""
        if whole:
            if emb.is_sparse:
                self._add(head_rows.index_select(0, emb.indices()[0]), emb.values())
            else:
                self._add(head_rows, emb)
        elif emb.is_sparse:  # its rows are tokens of the batch, all among `ids`
            assert self.ids is not None
            self._add(head_rows.index_select(0, torch.searchsorted(self.ids, emb.indices()[0])), emb.values())
        else:
            assert self.ids is not None
            self._add(head_rows, emb.index_select(0, self.ids))

    def _add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        # In float64 (float32 on MPS, which has none): the cross term may cancel much of the rest.
        dtype = torch.float32 if a.device.type == "mps" else torch.float64
        self.add_sq(2.0 * (a.to(dtype) * b.to(dtype)).sum())

    def close(self) -> None:
        if self.previous_forward is None:
            del self.head.forward
        else:
            self.head.forward = self.previous_forward  # type: ignore[method-assign]
        self.handle.remove()


class EmbeddingGrads:
    """Sparse embedding gradients and tied heads taken apart for `params` of `model` (see the
    module docstring). `take(j, g)` receives parameter j's gradient parts that autograd delivers;
    `add_sq(j, value)` adds to parameter j's squared norm of the batch; `add_rows(j, start, block)`
    adds a block of rows of a head's weight gradient to parameter j's running sum."""

    def __init__(
        self,
        model: nn.Module,
        params: list[nn.Parameter],
        take: Callable[[int, torch.Tensor], None],
        add_sq: Callable[[int, torch.Tensor], None],
        add_rows: Callable[[int, int, torch.Tensor], None],
    ) -> None:
        self.pairs: dict[int, _TiedPair] = {}
        self._sparse: list[tuple[nn.Embedding, bool]] = []
        self._take = take
        for j, p in enumerate(params):
            holders = _holders(model, p)
            embeddings = [m for m, _ in holders if isinstance(m, nn.Embedding) and m.max_norm is None]
            if len(embeddings) != 1:
                continue
            emb = embeddings[0]
            self._sparse.append((emb, emb.sparse))
            emb.sparse = True
            heads = [(m, a) for m, a in holders if m is not emb]
            if len(heads) == 1 and isinstance(heads[0][0], nn.Linear) and heads[0][1] == "weight":
                self.pairs[j] = _TiedPair(emb, heads[0][0], functools.partial(add_sq, j),
                                          functools.partial(add_rows, j))

    def parts(self, j: int, g: torch.Tensor) -> None:
        """A gradient part of parameter j from autograd: to its pair's cross term (if tied) and
        to the collector."""
        pair = self.pairs.get(j)
        if pair is not None:
            g = g.coalesce() if g.is_sparse else g
            pair.emb_part_arrived(g)
        self._take(j, g)

    def end_batch(self) -> None:
        """Forget per-batch state."""
        for pair in self.pairs.values():
            pair.reset()

    def close(self) -> None:
        """Give the model back as it was."""
        for pair in self.pairs.values():
            pair.close()
        for emb, sparse in self._sparse:
            emb.sparse = sparse
        self.pairs = {}
        self._sparse = []
