"""Tiny models and the naive per-example reference used by the ghost-norm tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn


class Scale(nn.Module):
    """A module no ghost-norm rule covers: an elementwise learned scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class SeqNet(nn.Module):
    """Embedding (padding_idx 0) -> Linear -> GELU -> LayerNorm -> Scale -> masked mean -> Linear.

    Takes input_ids and attention_mask, returns logits; padded positions are masked out of the
    pooling, so they must not contribute to any gradient."""

    def __init__(self, vocab: int = 11, dim: int = 6, hidden: int = 12, classes: int = 3, scale: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.l1 = nn.Linear(dim, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.scale = Scale(hidden) if scale else nn.Identity()
        self.head = nn.Linear(hidden, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.scale(self.ln(nn.functional.gelu(self.l1(self.emb(input_ids)))))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1)
        return self.head(pooled)


def seqnet_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-example cross-entropy of SeqNet."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return nn.functional.cross_entropy(logits, batch["labels"], reduction="none")


class TiedLM(nn.Module):
    """Causal toy LM whose output layer shares the embedding matrix and runs a Linear twice."""

    def __init__(self, vocab: int = 9, dim: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)
        h = torch.tanh(self.mix(h))
        h = torch.cumsum(h, dim=1) / torch.arange(1, h.shape[1] + 1, dtype=h.dtype)[:, None]
        h = torch.tanh(self.mix(h))  # the same Linear twice
        return self.out(h)


def tied_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy per sequence."""
    ids = batch["input_ids"]
    logits = model(ids)[:, :-1]
    tok = nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return tok.mean(1)


def naive_sq_norms(
    model: nn.Module,
    examples: Sequence[Mapping[str, torch.Tensor]],
    loss: Callable[[nn.Module, Any], torch.Tensor],
    modules: Mapping[str, Sequence[nn.Parameter]],
) -> torch.Tensor:
    """modules x examples squared norms, one example at a time with plain autograd, in float64."""
    cols = []
    for ex in examples:
        model.zero_grad(set_to_none=True)
        loss(model, ex).sum().backward()
        col = []
        for ps in modules.values():
            col.append(sum(float(p.grad.double().pow(2).sum()) if p.grad is not None else 0.0 for p in ps))
        cols.append(col)
    model.zero_grad(set_to_none=True)
    return torch.tensor(cols, dtype=torch.float64).T


def module_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Module name -> its own trainable parameters (shared ones listed once)."""
    out: dict[str, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, mod in model.named_modules():
        ps = [p for p in mod._parameters.values() if p is not None and p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in ps)
        if ps:
            out[name] = ps
    return out


def split_unpadded(batch: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Each example of a right-padded batch as a batch of one, cut to its real length."""
    out = []
    mask = batch["attention_mask"]
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        ex = {}
        for k, v in batch.items():
            ex[k] = v[i : i + 1, :n] if v.dim() == 2 and v.shape[1] == mask.shape[1] else v[i : i + 1]
        out.append(ex)
    return out
