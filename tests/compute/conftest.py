"""Fixtures for the compute tests: tiny models built in code (no download) and fixed batches."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """Embedding -> Linear -> LayerNorm -> Linear classifier, plus a parameter owned by the root."""

    def __init__(self, vocab: int = 20, dim: int = 8, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.l1 = nn.Linear(dim, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.l2 = nn.Linear(hidden, classes)
        self.temperature = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.l1(self.emb(x).mean(dim=1)))
        return self.l2(self.ln(h)) / self.temperature


def tiny_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def tiny_batches(seed: int, n: int, size: int = 8, vocab: int = 20, classes: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, vocab, (size, 5), generator=g), torch.randint(0, classes, (size,), generator=g))
        for _ in range(n)
    ]


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


def tiny_bert_mlm() -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16, type_vocab_size=1,
    )
    return BertForMaskedLM(cfg)


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=40, n_embd=8, n_layer=2, n_head=2, n_positions=16)
    return GPT2LMHeadModel(cfg)


def token_batches(seed: int, n: int, size: int = 4, length: int = 7, vocab: int = 40, mlm: bool = False) -> list[dict[str, torch.Tensor]]:
    """Token batches with right padding (lengths vary); MLM batches carry fixed labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (size, length), generator=g)
        lengths = torch.randint(3, length + 1, (size,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        ids = ids.masked_fill(mask == 0, 0)
        batch = {"input_ids": ids, "attention_mask": mask}
        if mlm:
            chosen = (torch.rand(size, length, generator=g) < 0.3) & (mask == 1)
            chosen[:, 0] = True
            batch["labels"] = torch.where(chosen, ids, torch.full_like(ids, -100))
            batch["input_ids"] = ids.masked_fill(chosen, 4)
        out.append(batch)
    return out


def tiny_llama() -> nn.Module:
    """A tiny Llama causal LM: RMSNorm and tied input/output embeddings, as SmolLM2 has."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=40, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=16, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def unpadded_token_batches(seed: int, n: int, size: int = 2, length: int = 6, vocab: int = 40) -> list[dict[str, torch.Tensor]]:
    """Token batches without padding: every batch has the same number of target tokens, so the
    mean loss of two processes' batches equals that of their union."""
    g = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(3, vocab, (size, length), generator=g), "attention_mask": torch.ones(size, length,
                                                                                                       dtype=torch.long)}
        for _ in range(n)
    ]


def merge_pairs(batches: list) -> list:  # type: ignore[type-arg]
    """Batches 2k and 2k+1 concatenated: what two processes taking every other batch see per step."""
    def cat(a: object, b: object) -> object:
        if isinstance(a, torch.Tensor):
            return torch.cat([a, b])  # type: ignore[list-item]
        if isinstance(a, dict):
            return {k: cat(a[k], b[k]) for k in a}  # type: ignore[index]
        return type(a)(cat(x, y) for x, y in zip(a, b))  # type: ignore[call-arg, attr-defined]

    return [cat(batches[k], batches[k + 1]) for k in range(0, len(batches) - 1, 2)]
