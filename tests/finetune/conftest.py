"""Fixtures for the fine-tuning tests: tiny models built from config (no download), their blueprints."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from typing import Any

import pytest
import torch
from torch import nn


class TinyMLP(nn.Module):
    """Linear(4, 8) -> ReLU -> LayerNorm(8) -> Linear(8, 3): a hand-countable model."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 8)
        self.ln = nn.LayerNorm(8)
        self.l2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.ln(torch.relu(self.l1(x))))


def mlp_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def mlp_batches(seed: int, n: int, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 4, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def mlp_blueprint(model: nn.Module, seed: int = 0, **kw: Any) -> Any:
    from reference_impl.compute import compute_blueprint

    return compute_blueprint(
        model, {"a": mlp_batches(seed, 6), "b": mlp_batches(seed + 1, 6)}, mlp_loss, device="cpu",
        min_examples_per_aggregate=1, seed=seed, **kw,
    )


def tiny_bert_cls(seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, type_vocab_size=1, num_labels=2,
    )
    return BertForSequenceClassification(cfg)


def bert_batches(seed: int, n: int, size: int = 4, length: int = 8) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 60, (size, length), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "labels": torch.randint(0, 2, (size,), generator=g)})
    return out


@pytest.fixture
def mlp() -> TinyMLP:
    torch.manual_seed(0)
    return TinyMLP()


_WORDS = "hello how are you i am fine what is your name my the a robot good bad yes no do like music science computer"
LLAMA_WORDS = ["<pad>", "<unk>", "<s>", "</s>", *_WORDS.split(" "), "love", "it", "to"]


def tiny_llama_folder(folder: Any, seed: int = 0) -> Any:
    """A saved tiny LlamaForCausalLM (tied embeddings, like SmolLM2) with a word-level tokenizer
    that puts <s> before a text and has </s> and <pad>; built from config, nothing downloaded."""
    from pathlib import Path

    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(LLAMA_WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])  # type: ignore[assignment]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(LLAMA_WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=24,
                      tie_word_embeddings=True, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    return folder
