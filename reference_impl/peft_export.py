"""Export a blueprint selection to PEFT: a LoraConfig following k*, and a SHiRA sparse mask.

LoRA mapping (documented contract). A LoRA adapter of rank r on a Linear layer with weight
d_out x d_in trains r * (d_in + d_out) parameters. A module with update fraction k* trains
k* * d_in * d_out entries. Equal trainable size gives

    r_m = round(k*_m * d_in * d_out / (d_in + d_out)),  clipped to [1, min(d_in, d_out, max_rank)],

so the adapter's trainable size follows the blueprint's allocation module by module (and the
modules the blueprint does not select get no adapter). `target_modules` lists the selected Linear
modules by their blueprint names (PEFT matches a target as a suffix of the model's module path, so
names bound to a base checkpoint, e.g. `encoder.layer.0.attention.self.query`, also match inside a
task model `bert.encoder...`); `rank_pattern` maps each name to r_m and `alpha_pattern` to
alpha_ratio * r_m (the scale alpha/r stays alpha_ratio for every module). Only Linear (and GPT-2
Conv1D) modules are exported: LayerNorms, embeddings and biases selected by the blueprint have no
LoRA counterpart and are listed in `skipped`.

SHiRA (PEFT's sparse high-rank adapter) trains exactly r * (d_in + d_out) entries of each target
layer chosen by a mask function; `shira_config` supplies a mask function that takes the
top-scoring entries (the same element scores the blueprint selection ranks) instead of random ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from blueprint_format.models import Blueprint

_LINEAR_TYPES = ("Linear", "Conv1D", "NonDynamicallyQuantizableLinear")


def lora_rank(k: float, d_in: int, d_out: int, max_rank: int | None = None) -> int:
    """LoRA rank whose trainable size r*(d_in+d_out) is closest to k*d_in*d_out (at least 1)."""
    r = round(k * d_in * d_out / (d_in + d_out))
    hi = min(d_in, d_out) if max_rank is None else min(d_in, d_out, max_rank)
    return max(1, min(r, hi))


def _find(model: nn.Module, name: str) -> tuple[str, nn.Module] | None:
    for path, mod in model.named_modules():
        if path == name or path.endswith("." + name):
            return path, mod
    return None


def _dims(mod: nn.Module) -> tuple[int, int] | None:
    if type(mod).__name__ not in _LINEAR_TYPES:
        return None
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return None
    if type(mod).__name__ == "Conv1D":  # weight stored (in, out)
        return int(w.shape[0]), int(w.shape[1])
    return int(w.shape[1]), int(w.shape[0])


def selection_fractions(selection: Any) -> dict[str, float]:
    """Module name -> update fraction, from a Blueprint (k_star), a BlueprintHandle or a mapping."""
    if isinstance(selection, Blueprint):
        return {m.name: float(m.k_star) for m in selection.modules if m.k_star}
    if hasattr(selection, "selection"):
        return {s.name: s.k for s in selection.selection if s.selected}
    return {str(k): float(v) for k, v in dict(selection).items() if v}


@dataclass
class LoraExport:
    """The LoraConfig and how it was derived."""

    config: Any
    ranks: dict[str, int]
    trainable: int  # LoRA parameters the config creates on the targets
    skipped: list[str] = field(default_factory=list)


def lora_config(
    model: nn.Module,
    selection: Any,
    *,
    max_rank: int | None = None,
    alpha_ratio: float = 2.0,
    task_type: str | None = None,
    modules_to_save: list[str] | None = None,
    **kwargs: Any,
) -> LoraExport:
    """A peft.LoraConfig whose target_modules and rank_pattern follow the selection's k* (module docstring)."""
    from peft import LoraConfig

    ranks: dict[str, int] = {}
    skipped: list[str] = []
    trainable = 0
    for name, k in selection_fractions(selection).items():
        found = _find(model, name)
        dims = _dims(found[1]) if found else None
        if dims is None:
            skipped.append(name)
            continue
        r = lora_rank(k, dims[0], dims[1], max_rank)
        ranks[name] = r
        trainable += r * (dims[0] + dims[1])
    if not ranks:
        raise ValueError("the selection holds no Linear module to put a LoRA adapter on")
    default_r = max(ranks.values())
    config = LoraConfig(
        r=default_r,
        lora_alpha=round(alpha_ratio * default_r),
        target_modules=sorted(ranks),
        rank_pattern=dict(ranks),
        alpha_pattern={n: round(alpha_ratio * r) for n, r in ranks.items()},
        task_type=task_type,
        modules_to_save=modules_to_save,
        **kwargs,
    )
    return LoraExport(config=config, ranks=ranks, trainable=trainable, skipped=skipped)


def shira_available() -> bool:
    """Whether the installed PEFT has SHiRA."""
    try:
        from peft import ShiraConfig  # noqa: F401
    except ImportError:
        return False
    return True


def shira_config(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    r: int,
    *,
    task_type: str | None = None,
    modules_to_save: list[str] | None = None,
) -> Any:
    """A peft.ShiraConfig on the Linear modules named in `scores` (module name -> element scores of the
    weight, shape d_out x d_in) whose mask keeps each layer's top r*(d_in+d_out) entries by score.

    Raises RuntimeError when the installed PEFT has no SHiRA.
    """
    if not shira_available():
        raise RuntimeError("the installed PEFT has no ShiraConfig (SHiRA needs peft >= 0.16)")
    from peft import ShiraConfig

    by_layer: dict[int, torch.Tensor] = {}
    targets: list[str] = []
    for name, s in scores.items():
        found = _find(model, name)
        if found is None or _dims(found[1]) is None:
            continue
        by_layer[id(found[1])] = s
        targets.append(name)
    if not targets:
        raise ValueError("no Linear module of the model is scored")

    def mask_fn(base_layer: nn.Module, r: int, **_: Any) -> torch.Tensor:
        w: torch.Tensor = base_layer.weight  # type: ignore[assignment]
        m, n = (int(d) for d in w.shape)
        s = by_layer[id(base_layer)].to(w.device).reshape(m, n)
        count = min(r * (m + n), m * n)
        mask = torch.zeros(m * n, dtype=w.dtype, device=w.device)
        mask[torch.topk(s.reshape(-1).float(), count).indices] = 1
        return mask.view(m, n)

    config = ShiraConfig(r=r, target_modules=sorted(targets), task_type=task_type, modules_to_save=modules_to_save)
    config.mask_fn = mask_fn  # type: ignore[assignment]
    return config
