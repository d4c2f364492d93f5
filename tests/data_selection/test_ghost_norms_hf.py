"""Ghost norms on tiny transformers models built from config (no download): BERT sequence
classification and a GPT-2 causal LM (Conv1D layers, tied input/output embeddings, broadcast
position embeddings), with padded batches compared against each example alone, unpadded."""

from __future__ import annotations

import pytest
import torch

from reference_impl.ghost_norms import (
    causal_lm_per_example_loss,
    per_example_grad_norms,
    sequence_classification_per_example_loss,
)
from tests.data_selection.models import module_params, naive_sq_norms, split_unpadded

transformers = pytest.importorskip("transformers")


def _padded(lengths: list[int], vocab: int, pad: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.full((len(lengths), t), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, 3 + 6, (n,), generator=g)  # small id range: repeated tokens
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def test_bert_sequence_classification() -> None:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    model = transformers.BertForSequenceClassification(config).eval()
    batch = _padded([9, 4, 6, 2], 40, 0, 1)
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    batch["labels"] = torch.tensor([0, 2, 1, 2])
    rows = module_params(model)
    res = per_example_grad_norms(model, batch, sequence_classification_per_example_loss, rows)
    assert not res.unsupported
    assert set(res.methods) <= {"gram", "explicit", "embedding", "direct"}
    expected = naive_sq_norms(model, split_unpadded(batch), sequence_classification_per_example_loss, rows)
    torch.testing.assert_close(res.sq_norms.double(), expected, rtol=1e-4, atol=1e-8)
    # position embeddings arrive as a (1, T) call: still per example
    pos = res.modules.index("bert.embeddings.position_embeddings")
    assert res.sq_norms[pos].min() > 0


def test_gpt2_causal_lm_tied_and_conv1d() -> None:
    torch.manual_seed(1)
    config = transformers.GPT2Config(
        vocab_size=30, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, tie_word_embeddings=True,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    batch = _padded([8, 3, 5], 30, 0, 2)
    rows = module_params(model)
    res = per_example_grad_norms(model, batch, causal_lm_per_example_loss, rows)
    assert not res.unsupported
    methods = dict(zip(res.modules, res.methods))
    assert methods["transformer.wte"] == "tied-gram"
    expected = naive_sq_norms(model, split_unpadded(batch), causal_lm_per_example_loss, rows)
    torch.testing.assert_close(res.sq_norms.double(), expected, rtol=1e-4, atol=1e-8)


def test_own_loss_matches_transformers_loss() -> None:
    """The per-example loss of one example equals the loss transformers computes for it alone."""
    torch.manual_seed(2)
    config = transformers.GPT2Config(vocab_size=30, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    ex = {"input_ids": torch.tensor([[5, 6, 7, 5, 9]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    ours = causal_lm_per_example_loss(model, ex)
    theirs = model(**ex, labels=ex["input_ids"]).loss
    torch.testing.assert_close(ours[0], theirs, rtol=1e-5, atol=1e-6)


def test_llama_rmsnorm_tied_matches_loop() -> None:
    """A Llama causal LM (SmolLM2's architecture): every RMSNorm weight gets a ghost norm (none is
    left out), equal to the per-example loop on padded batches, with tied embeddings."""
    torch.manual_seed(3)
    config = transformers.LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=True, pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # RMSNorm weights start at 1: make them differ, so a wrong xhat shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.mul_(1 + 0.5 * torch.rand_like(p))
    batch = _padded([7, 3, 5, 6], 40, 0, 4)
    rows = module_params(model)
    res = per_example_grad_norms(model, batch, causal_lm_per_example_loss, rows)
    assert not res.unsupported
    methods = dict(zip(res.modules, res.methods))
    assert methods["model.norm"] == methods["model.layers.0.input_layernorm"] == "direct"
    expected = naive_sq_norms(model, split_unpadded(batch), causal_lm_per_example_loss, rows)
    torch.testing.assert_close(res.sq_norms.double(), expected, rtol=1e-4, atol=1e-8)


def test_torch_rmsnorm_float64() -> None:
    """torch.nn.RMSNorm (with and without its own eps) against the loop, in float64."""
    torch.manual_seed(4)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(20, 6)
            self.norm = torch.nn.RMSNorm(6)
            self.norm2 = torch.nn.RMSNorm([4, 6], eps=1e-3)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            h = self.norm(self.emb(input_ids))
            h = self.norm2(h.reshape(h.shape[0], -1, 4, 6)).reshape(h.shape)
            return self.head(h).mean(1)

    model = Net().double().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm2.weight.uniform_(0.5, 1.5)

    def loss(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(batch["input_ids"]), batch["labels"], reduction="none")

    g = torch.Generator().manual_seed(5)
    batch = {"input_ids": torch.randint(0, 20, (5, 8), generator=g), "labels": torch.randint(0, 3, (5,), generator=g)}
    rows = module_params(model)
    res = per_example_grad_norms(model, batch, loss, rows, fallback=False)
    assert not res.unsupported
    examples = [{k: v[i : i + 1] for k, v in batch.items()} for i in range(5)]
    torch.testing.assert_close(res.sq_norms.double(), naive_sq_norms(model, examples, loss, rows), rtol=1e-9, atol=1e-14)
