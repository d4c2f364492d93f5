"""Naive, independent reference computations for the compute tests.

Plain autograd one parameter at a time, Python loops and math.fsum in float64: slow, obvious and
sharing no code with reference_impl.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def _flat(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().to(torch.float64).reshape(-1).tolist()]


def naive_domain_stats(
    model: nn.Module,
    batches: Sequence[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    modules: dict[str, list[str]],
) -> dict[str, Any]:
    """Per-module statistics of one domain. `modules` maps module name -> its parameter names."""
    params = dict(model.named_parameters())
    model.eval()
    per_batch: dict[str, list[float]] = {m: [] for m in modules}
    sums: dict[str, list[float]] = {p: [0.0] * params[p].numel() for names in modules.values() for p in names}
    for batch in batches:
        loss = loss_fn(model, batch)
        for m, names in modules.items():
            sq = 0.0
            for pname in names:
                # One parameter's gradient at a time, from the same graph.
                (g,) = torch.autograd.grad(loss, params[pname], allow_unused=True, retain_graph=True)
                values = _flat(g) if g is not None else [0.0] * params[pname].numel()
                sq += math.fsum(v * v for v in values)
                acc = sums[pname]
                for i, v in enumerate(values):
                    acc[i] += v
            per_batch[m].append(math.sqrt(sq))
    b = len(batches)
    out: dict[str, Any] = {}
    for m, names in modules.items():
        norms = per_batch[m]
        mean_sq = math.fsum(v * v for pname in names for v in (s / b for s in sums[pname]))
        out[m] = {
            "grad_norm_mean": math.fsum(norms) / b,
            "grad_norm_median": statistics.median(norms),
            "grad_norm_sq_mean": math.fsum(v * v for v in norms) / b,
            "mean_grad_norm": math.sqrt(mean_sq),
        }
    elements = [abs(s / b) for names in modules.values() for pname in names for s in sums[pname]]
    out["__elements__"] = elements
    return out


def naive_shares(values: Sequence[float]) -> dict[str, float]:
    """Share held by the ceil(p*n) largest values, by sorting in Python."""
    xs = sorted(values, reverse=True)
    total = math.fsum(xs)
    out = {}
    for key, p in (("top_1", 1), ("top_5", 5), ("top_10", 10), ("top_20", 20), ("top_50", 50)):
        k = max(1, -(-p * len(xs) // 100))
        out[key] = math.fsum(xs[:k]) / total
    return out
