"""The per-module statistics of a blueprint (SPEC.md section 7.2), as a registry.

Each entry of `STATISTICS` says how one statistic follows from a domain's raw results: the
(batches x modules) matrix of per-batch gradient norms ||g_{m,b}|| and the norm of the mean
gradient per module. Adding a statistic is one entry here plus its text in SPEC.md 7.2 (and its
member in the format's models); everything else (the blueprint's module records, the CLI's
`--statistic` choices, the allocation input) reads the registry.

The names come from `blueprint_format.models.StatisticName`, the single source of the spec's
choices; importing this module checks that the registry covers exactly those names.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from blueprint_format.models import StatisticName


@dataclass(frozen=True)
class Statistic:
    """One per-module statistic: its name, what it is, and how to compute it.

    `compute(batch_norms, mean_grad_norm)` gets the (batches x modules) per-batch norms and the
    (modules,) norms of the mean gradient, both float64, and returns one value per module.
    """

    name: StatisticName
    summary: str
    compute: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _mean(bn: np.ndarray, mgn: np.ndarray) -> np.ndarray:
    return np.asarray(bn.mean(axis=0))


def _median(bn: np.ndarray, mgn: np.ndarray) -> np.ndarray:
    return np.asarray(np.median(bn, axis=0))


def _sq_mean(bn: np.ndarray, mgn: np.ndarray) -> np.ndarray:
    return np.asarray((bn * bn).mean(axis=0))


def _norm_of_mean(bn: np.ndarray, mgn: np.ndarray) -> np.ndarray:
    return np.asarray(mgn, dtype=np.float64)


#: name -> Statistic, in the spec's order.
STATISTICS: dict[str, Statistic] = {
    s.name: s
    for s in (
        Statistic("grad_norm_mean", "mean over batches of the module's gradient L2 norm", _mean),
        Statistic("grad_norm_median", "median over batches of the module's gradient L2 norm", _median),
        Statistic("grad_norm_sq_mean", "mean over batches of the squared gradient norm (a Fisher-trace proxy)", _sq_mean),
        Statistic("mean_grad_norm", "L2 norm of the mean gradient over batches", _norm_of_mean),
    )
}
#: The statistic that orders modules within a domain (SPEC 7.4).
RANK_STATISTIC = "grad_norm_mean"

if set(STATISTICS) != set(typing.get_args(StatisticName)):  # pragma: no cover - a programming error
    raise RuntimeError("reference_impl.statistics must cover exactly blueprint_format.models.StatisticName")


def module_statistics(batch_norms: np.ndarray, mean_grad_norm: np.ndarray) -> dict[str, np.ndarray]:
    """Every registered statistic per module, in float64, made exactly consistent (SPEC 7.3).

    Jensen's inequality (mean square >= squared mean) and the triangle inequality (norm of the
    mean <= mean norm) hold exactly in real arithmetic; the clamps only absorb rounding.
    """
    values = {name: s.compute(batch_norms, mean_grad_norm) for name, s in STATISTICS.items()}
    mean = values["grad_norm_mean"]
    values["grad_norm_sq_mean"] = np.maximum(values["grad_norm_sq_mean"], mean * mean)
    values["mean_grad_norm"] = np.minimum(values["mean_grad_norm"], mean)
    return values


def ranks(values: np.ndarray) -> list[int]:
    """1 for the largest value; ties in module order."""
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
    out = [0] * len(values)
    for r, i in enumerate(order, start=1):
        out[i] = r
    return out
