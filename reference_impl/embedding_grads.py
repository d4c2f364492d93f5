"""Embedding gradients in bounded memory while the collector streams gradients (stream mode).

Two things make an embedding's gradient expensive, and both are undone for the duration of a
computation (`EmbeddingGrads.close` restores the model):

* torch builds an embedding's gradient as a dense matrix the size of the whole table, although
  only the rows of the batch's tokens are nonzero. Embeddings switch to sparse gradients
  (`nn.Embedding.sparse`), which hold only those rows; the collector adds them into its dense
  running sum. The numbers are the same up to float summation order.
* An output head that shares the table (tied input/output embeddings, as in most small language
  models) produces a dense gradient at the very start of backward, which autograd keeps until
  the embedding's part arrives at the very end, to add them: a table-sized buffer alive during
  the whole pass, when activations are largest. The head gets its own parameter object for the
  computation, an alias of the same storage (no copy), so each part reaches the collector as
  soon as it exists. The batch's squared norm of the shared parameter is then assembled as
  ||G_head||^2 + ||G_emb||^2 + 2 <G_head, G_emb>, where the inner product only involves the rows
  of the batch's tokens: when the head's part comes first, only those rows of it are kept.

Only the pattern "one nn.Embedding plus any number of uses through one nn.Linear" is taken
apart; other sharing is left to autograd (correct, just not lighter).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _holders(model: nn.Module, p: nn.Parameter) -> list[tuple[nn.Module, str]]:
    """Every (module, attribute) that holds parameter `p` directly."""
    return [(m, name) for m in model.modules() for name, q in m._parameters.items() if q is p]


class _TiedPair:
    """One table shared by an embedding and a linear head, with the cross term of its parts."""

    def __init__(self, embedding: nn.Embedding, head: nn.Linear, attr: str, add_sq: Callable[[torch.Tensor], None]):
        self.embedding, self.head, self.attr = embedding, head, attr
        self.original = head._parameters[attr]
        assert self.original is not None
        self.alias = nn.Parameter(self.original.detach(), requires_grad=True)  # same storage
        head._parameters[attr] = self.alias
        self.add_sq = add_sq
        self.handle = embedding.register_forward_pre_hook(self._seen)
        self.reset()

    def reset(self) -> None:
        """Forget the batch (called after each batch)."""
        self.ids: torch.Tensor | None = None  # sorted unique token ids of the batch
        self.head_rows: torch.Tensor | None = None  # the head's part at `ids` (or whole, if ids unknown)
        self.emb_part: torch.Tensor | None = None  # the embedding's part (sparse coalesced or dense)

    def _seen(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            ids = torch.unique(args[0].detach().reshape(-1))
            self.ids = ids if self.ids is None else torch.unique(torch.cat([self.ids, ids]))

    def head_part(self, g: torch.Tensor) -> None:
        """The head's (dense) part arrived."""
        if self.emb_part is not None:
            self._cross(g, self.emb_part)
        elif self.ids is not None:
            self.head_rows = g.index_select(0, self.ids)
        else:  # the embedding ran outside its forward (functional call): keep the whole part
            self.head_rows = g.detach().clone()

    def emb_part_arrived(self, g: torch.Tensor) -> None:
        """The embedding's part (sparse coalesced, or dense) arrived."""
        if self.head_rows is None:
            self.emb_part = g
        elif self.ids is None or self.head_rows.shape[0] != self.ids.numel():  # the whole head part
            self._cross(self.head_rows, g)
        elif g.is_sparse:  # its rows are tokens of the batch, all among `ids`
            self._add(self.head_rows.index_select(0, torch.searchsorted(self.ids, g.indices()[0])), g.values())
        else:
            self._add(self.head_rows, g.index_select(0, self.ids))

    def _cross(self, dense: torch.Tensor, other: torch.Tensor) -> None:
        if other.is_sparse:
            self._add(dense.index_select(0, other.indices()[0]), other.values())
        else:
            self._add(dense, other)

    def _add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        self.add_sq(2.0 * (a.to(dtype) * b.to(dtype)).sum())

    def close(self) -> None:
        self.head._parameters[self.attr] = self.original
        self.handle.remove()


class EmbeddingGrads:
    """Sparse embedding gradients and split tied heads for `params` of `model` (see the module
    docstring). `take(j, g)` receives every gradient part of parameter j; `add_sq(j, value)` adds
    a cross term to parameter j's squared norm of the batch. `aliases` lists (j, alias) for each
    head taken apart: the alias parameter's gradient is a part of parameter j's."""

    def __init__(
        self,
        model: nn.Module,
        params: list[nn.Parameter],
        take: Callable[[int, torch.Tensor], None],
        add_sq: Callable[[int, torch.Tensor], None],
    ) -> None:
        self.pairs: dict[int, _TiedPair] = {}
        self._sparse: list[tuple[nn.Embedding, bool]] = []
        self.aliases: list[tuple[int, nn.Parameter]] = []
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
            if len(heads) == 1 and isinstance(heads[0][0], nn.Linear):
                pair = _TiedPair(emb, heads[0][0], heads[0][1], functools.partial(add_sq, j))
                self.pairs[j] = pair
                self.aliases.append((j, pair.alias))

    def parts(self, j: int, g: torch.Tensor, from_alias: bool) -> None:
        """A gradient part of parameter j: to the collector, and to its pair's cross term."""
        pair = self.pairs.get(j)
        if pair is not None:
            if from_alias:
                pair.head_part(g)
            else:
                pair.emb_part_arrived(g.coalesce() if g.is_sparse else g)
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
