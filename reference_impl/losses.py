"""Loss functions: a model's own loss for Hugging Face task models, and a contrastive pair loss.

A loss function takes `(model, batch)` and returns the scalar batch-mean loss. Randomness inside a
loss (the masked-LM masks) draws from torch's global generator, which `compute_blueprint` reseeds
before every batch from (seed, domain, batch index): results do not depend on how batches are
spread over processes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

LossFn = Callable[[nn.Module, Any], torch.Tensor]

#: Fraction of eligible tokens a masked-LM loss masks (BERT's choice).
MLM_PROBABILITY = 0.15


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) and type(model).__name__ == "DistributedDataParallel" else model


def task_of_architecture(class_name: str) -> str:
    """"causal-lm", "masked-lm", "sequence-classification" or "other", from a model class name
    (a loaded model's class, or an entry of config.json's `architectures`)."""
    if class_name.endswith("ForCausalLM") or class_name.endswith("LMHeadModel"):
        return "causal-lm"
    if class_name.endswith("ForMaskedLM"):
        return "masked-lm"
    if class_name.endswith("ForSequenceClassification"):
        return "sequence-classification"
    return "other"


def model_task(model: nn.Module) -> str:
    """"causal-lm", "masked-lm", "sequence-classification" or "other", from the model's class."""
    return task_of_architecture(type(_unwrap(model)).__name__)


def _loss_from_output(out: Any) -> torch.Tensor:
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None and isinstance(out, torch.Tensor) and out.dim() == 0:
        loss = out
    if not isinstance(loss, torch.Tensor):
        raise TypeError("the model returned no loss; pass loss_fn= to compute_blueprint")
    return loss


#: Label of a position that carries no loss (PyTorch's and transformers' convention).
IGNORE_INDEX = -100


def response_only_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor
) -> torch.Tensor:
    """Causal-LM labels that count only response tokens: input_ids, with IGNORE_INDEX on padding
    and on the first `prompt_lengths[i]` tokens of row i (0: plain text, every token counts)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    keep = (attention_mask != 0) & (positions >= prompt_lengths.to(input_ids.device).unsqueeze(1))
    return input_ids.masked_fill(~keep, IGNORE_INDEX)


def causal_lm_token_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropies, number of tokens) over the positions whose label is not
    IGNORE_INDEX, so that a mean over many batches weighs every token once."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"][:, 1:]
    logits = model(**inputs).logits[:, :-1]
    total = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total, int((labels != IGNORE_INDEX).sum())


def causal_lm_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy averaged over real (non-padding) target tokens."""
    inputs = dict(batch)
    if "labels" not in inputs:
        labels = inputs["input_ids"].clone()
        mask = inputs.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, -100)
        inputs["labels"] = labels
    return _loss_from_output(model(**inputs))


class MaskedLMLoss:
    """Masked-LM loss with BERT's masking: 15% of real, non-special tokens are chosen; of those
    80% become the mask token, 10% a random token, 10% stay. At least one token per sequence
    with an eligible token is chosen, so a batch never has an empty (NaN) loss."""

    def __init__(self, mask_token_id: int, vocab_size: int, special_ids: list[int] | None = None) -> None:
        self.mask_token_id = int(mask_token_id)
        self.vocab_size = int(vocab_size)
        self.special_ids = sorted(set(special_ids or []))

    def mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input ids, labels with -100 where not chosen). Draws from the global CPU RNG."""
        ids = input_ids.detach().cpu()
        eligible = torch.ones_like(ids, dtype=torch.bool)
        if attention_mask is not None:
            eligible &= attention_mask.detach().cpu() != 0
        for s in self.special_ids:
            eligible &= ids != s
        u = torch.rand(ids.shape)
        chosen = (u < MLM_PROBABILITY) & eligible
        # Guarantee one choice per sequence that has any eligible token: the eligible position
        # with the smallest draw.
        none = ~chosen.any(dim=1) & eligible.any(dim=1)
        if bool(none.any()):
            first = torch.where(eligible, u, torch.full_like(u, 2.0)).argmin(dim=1)
            chosen[none.nonzero().flatten(), first[none]] = True
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        r = torch.rand(ids.shape)
        random_tokens = torch.randint(0, self.vocab_size, ids.shape)
        masked = torch.where(chosen & (r < 0.8), torch.full_like(ids, self.mask_token_id), ids)
        masked = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_tokens, masked)
        return masked.to(input_ids.device), labels.to(input_ids.device)

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = dict(batch)
        if "labels" not in inputs:
            inputs["input_ids"], inputs["labels"] = self.mask(inputs["input_ids"], inputs.get("attention_mask"))
        return _loss_from_output(model(**inputs))


def model_output_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The loss the model itself returns for `batch` (a dict of keyword arguments, or positional)."""
    if isinstance(batch, Mapping):
        return _loss_from_output(model(**batch))
    if isinstance(batch, (tuple, list)):
        return _loss_from_output(model(*batch))
    return _loss_from_output(model(batch))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token embeddings over real tokens (sentence-transformers' pooling)."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)


def contrastive_pair_loss(model: nn.Module, batch: Mapping[str, Any], scale: float = 20.0) -> torch.Tensor:
    """In-batch contrastive loss of (anchor, positive) text pairs on mean-pooled, normalised
    embeddings: cross-entropy of scaled cosine similarities with the matching pair as the target
    (the objective all-MiniLM-L6-v2 was trained with). `batch` holds `anchor` and `positive`,
    each a dict of tokenizer outputs."""
    a = batch["anchor"]
    p = batch["positive"]
    ea = mean_pool(model(**a).last_hidden_state, a["attention_mask"])
    ep = mean_pool(model(**p).last_hidden_state, p["attention_mask"])
    ea = nn.functional.normalize(ea, dim=-1)
    ep = nn.functional.normalize(ep, dim=-1)
    logits = scale * ea @ ep.T
    target = torch.arange(logits.shape[0], device=logits.device)
    return nn.functional.cross_entropy(logits, target)


def default_loss(model: nn.Module, tokenizer: Any | None = None) -> tuple[LossFn, str]:
    """The model's own loss and its name, for Hugging Face task models and models returning .loss."""
    task = model_task(model)
    if task == "causal-lm":
        return causal_lm_loss, "causal-lm-next-token-cross-entropy"
    if task == "masked-lm":
        inner = _unwrap(model)
        config = getattr(inner, "config", None)
        mask_id = getattr(tokenizer, "mask_token_id", None) if tokenizer is not None else None
        if mask_id is None:
            raise ValueError("a masked-LM loss needs a tokenizer with a mask token (pass tokenizer= or loss_fn=)")
        vocab = int(getattr(config, "vocab_size", 0) or len(tokenizer))  # type: ignore[arg-type]
        specials = list(getattr(tokenizer, "all_special_ids", []) or [])
        return MaskedLMLoss(mask_id, vocab, specials), "masked-lm-15pct-cross-entropy"
    if task == "sequence-classification":
        return model_output_loss, "sequence-classification-cross-entropy"
    return model_output_loss, "model-output-loss"
