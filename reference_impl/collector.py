"""Accumulation of per-module gradient statistics, on the device and in bounded memory.

For every batch the collector needs each module's gradient norm, and over a domain the running
sum of the gradients (for the norm of the mean gradient, the element shares and the per-element
scores that rank elements within a module). How the gradients are read depends on the mode:

* "stream" (one process, or a plain process group where each process takes its own batches): a
  post-accumulate-grad hook on every trainable parameter takes the batch's gradient the moment
  backward has produced it, records its squared norm (accumulated in float64), adds it into the
  parameter's running sum (the first batch's gradient simply becomes the sum) and frees it. So at most a few gradients
  exist at once and the model-sized memory is the weights plus one running sum, in float32
  (float64 for float64 weights) whatever the weights' dtype: half and bfloat16 weights get
  float32 accumulation. An embedding's sparse gradient is added as it is.
* "synchronized" (DistributedDataParallel): the gradients are already averaged across processes
  during backward; after backward the collector reads them, adds them into the sums and frees
  them. A "batch" is the union of the processes' local batches.
* "sharded" (FSDP2, `fully_shard`): as "synchronized", but every process holds only its shard of
  each gradient; module norms are assembled from the shards' squared norms (see sharded.py).

Squared per-module norms are kept per batch as small device tensors (one segment sum per batch,
no host synchronisation) and come to the host once per domain. At the end of a domain the sums
become the mean gradient in place, then the domain's per-element score terms; while more domains
follow, those terms go to `score_store.CombinedScores` (a temporary file), so memory does not grow
with the number of domains.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from reference_impl import heavy_tail
from reference_impl.embedding_grads import EmbeddingGrads
from reference_impl.model_binding import BoundModule
from reference_impl.score_store import CombinedScores
from reference_impl.sharded import all_reduce_, distributed, gather_values, is_dtensor, local
from reference_impl.sketch import (
    GainCurve,
    curve_from_histogram,
    exact_curve,
    histogram,
    row_curve,
    squared_norm,
)

#: Up to this many trainable elements in total, element-level shares and gain curves are exact.
EXACT_ELEMENT_LIMIT = 1 << 22
#: How often (in local batches) the loop checks for non-finite gradients: one sync per window.
FINITE_CHECK_EVERY = 64
MODES = ("stream", "synchronized", "sharded")


class NonFiniteGradient(Exception):
    """A batch produced a NaN or infinite gradient; `batch_index` is its position in the domain."""

    def __init__(self, batch_index: int, modules: list[str]) -> None:
        self.batch_index = batch_index
        self.modules = modules
        shown = ", ".join(modules[:5]) + (" ..." if len(modules) > 5 else "")
        super().__init__(f"batch {batch_index} produced non-finite gradients in {shown}")


@dataclass
class DomainStats:
    """Raw per-domain results, in float64 on the host."""

    batch_norms: np.ndarray  # (batches, modules): per-batch gradient L2 norm of each module
    mean_grad_norm: np.ndarray  # (modules,): L2 norm of the mean gradient over batches
    element_shares: dict[str, float]  # top-p shares of sum |mean gradient| over all elements
    element_shares_exact: bool
    reached: np.ndarray  # (modules,) bool: the loss reached the module in some batch


class GradientCollector:
    """Accumulates gradient statistics of `modules` batch by batch, per domain.

    `mode` is one of MODES (see the module docstring). In "stream" mode the collector hooks the
    parameters from construction until `close()`; call `close()` when done. `model`: in stream
    mode, also make its embeddings' gradients sparse and split tied heads for the computation
    (embedding_grads.py; `close()` restores it). `spill_dir`: where the combined scores of
    finished domains go while more domains follow (default: the system's temporary folder).
    """

    def __init__(
        self,
        modules: list[BoundModule],
        device: torch.device,
        mode: str = "stream",
        exact_limit: int = EXACT_ELEMENT_LIMIT,
        spill_dir: str | Path | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.modules = modules
        self.device = device
        self.mode = mode
        self.params: list[torch.nn.Parameter] = [p for m in modules for p in m.params]
        if not self.params:
            raise ValueError("no trainable parameters to collect")
        owner = [i for i, m in enumerate(modules) for _ in m.params]
        self._owner = torch.tensor(owner, dtype=torch.long, device=device)
        self._owner_list = owner
        self._acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        # Norms accumulate in float64 (float32 on MPS, which has none), whatever the gradients'
        # dtype: a float32 sum of squares over a tensor of tens of millions of elements is off by
        # ~1e-4 relative (SmolLM2's embedding), more than the shards of a sharded run may differ by.
        self._norm_dtype = self._acc_dtype
        self._sum_dtype = [torch.float64 if p.dtype == torch.float64 else torch.float32 for p in self.params]
        self.total_elements = sum(int(p.numel()) for p in self.params)  # global counts, also for DTensors
        self.exact = self.total_elements <= exact_limit
        self.scores = CombinedScores([local(p).shape for p in self.params], device, spill_dir)
        # Under FSDP2 a parameter left out of sharding (a scalar) is replicated: every process
        # holds all of it, so only the first process counts it when shards' partials are summed.
        rank = distributed()[1]
        self._replicated = [mode == "sharded" and not is_dtensor(p) for p in self.params]
        self._counted = [not r or rank == 0 for r in self._replicated]
        self._zero = torch.zeros((), dtype=self._acc_dtype, device=device)
        self._handles: list[Any] = []
        self._embeddings: EmbeddingGrads | None = None
        self.begin_domain()
        if mode == "stream":
            self._hook_parameters(model)

    def _hook_parameters(self, model: torch.nn.Module | None) -> None:
        if model is not None:
            self._embeddings = EmbeddingGrads(model, self.params, self._take, self._add_sq, self._add_rows)
        self._handles = [
            p.register_post_accumulate_grad_hook(self._hook(j))  # type: ignore[no-untyped-call]
            for j, p in enumerate(self.params)
        ]

    def close(self) -> None:
        """Remove the gradient hooks, give the model's embeddings back, delete the score file."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._embeddings is not None:
            self._embeddings.close()
            self._embeddings = None
        self.scores.close()

    # -- per batch -------------------------------------------------------------------------
    def begin_domain(self) -> None:
        """Reset the per-domain accumulators."""
        self._sums: list[torch.Tensor | None] = [None] * len(self.params)
        self._batch_sq: list[torch.Tensor | None] = [None] * len(self.params)
        self._rows: list[torch.Tensor] = []
        self._batch_ids: list[int] = []
        self._reached = [False] * len(self.params)

    def _hook(self, j: int) -> Callable[[torch.Tensor], None]:
        def hook(p: torch.Tensor) -> None:
            g = p.grad
            p.grad = None  # the gradient lives on only as part of the running sum
            if g is None:
                return
            if self._embeddings is not None and j in self._embeddings.pairs:
                self._embeddings.parts(j, g)
            else:
                self._take(j, g)

        return hook

    def _add_rows(self, j: int, start: int, block: torch.Tensor) -> None:
        """Add rows start.. of parameter j's gradient (a tied head's part, see embedding_grads)."""
        if self._sums[j] is None:
            self._sums[j] = torch.zeros_like(self.params[j], dtype=self._sum_dtype[j],
                                             memory_format=torch.contiguous_format)
        s = self._sums[j]
        assert s is not None
        s[start : start + block.shape[0]].add_(block)
        self._reached[j] = True

    def _add_sq(self, j: int, value: torch.Tensor) -> None:
        """Add a cross term of a parameter's parts to its squared norm of the batch."""
        prev = self._batch_sq[j]
        v = value.to(self._acc_dtype)
        self._batch_sq[j] = v if prev is None else prev + v

    def _take(self, j: int, g: torch.Tensor) -> None:
        """Record gradient `g` of parameter j (this batch): its squared norm, and add it to the sum."""
        if g.is_sparse:
            g = g.coalesce()
        sq = self._sq_norm(g.values() if g.is_sparse else g) if self._counted[j] else self._zero
        prev = self._batch_sq[j]
        self._batch_sq[j] = sq if prev is None else prev + sq
        self._reached[j] = True
        s = self._sums[j]
        if s is not None:
            s.add_(g)
        elif g.is_sparse:
            self._sums[j] = g.to_dense().to(self._sum_dtype[j])
        elif g.dtype == self._sum_dtype[j] and g.is_contiguous() and g._base is None:
            self._sums[j] = g  # the first batch's gradient becomes the sum (nobody else holds it)
        else:  # a copy: a view may belong to someone else's buffer (FSDP's reduce-scatter output)
            self._sums[j] = g.to(self._sum_dtype[j], memory_format=torch.contiguous_format, copy=True)

    def _sq_norm(self, t: torch.Tensor) -> torch.Tensor:
        """Squared L2 norm, accumulated in the norm dtype."""
        return squared_norm(t, self._norm_dtype)

    def accumulate(self, batch_index: int) -> None:
        """Fold the batch that just ran backward into the accumulators. No host sync."""
        if self.mode != "stream":
            for j, p in enumerate(self.params):
                if p.grad is not None:
                    g = local(p.grad)
                    p.grad = None
                    if self._replicated[j]:  # FSDP2 did not average it: each process has its own
                        g = all_reduce_(g.clone()).div_(distributed()[2])
                    self._take(j, g)
        sq = torch.stack([self._zero if s is None else s for s in self._batch_sq])
        self._batch_sq = [None] * len(self.params)
        if self._embeddings is not None:
            self._embeddings.end_batch()
        module_sq = torch.zeros(len(self.modules), dtype=self._acc_dtype, device=self.device)
        self._rows.append(module_sq.index_add_(0, self._owner, sq))
        self._batch_ids.append(batch_index)
        if len(self._rows) % FINITE_CHECK_EVERY == 0 and not distributed()[0]:
            self._check_finite(self._rows[-FINITE_CHECK_EVERY:], self._batch_ids[-FINITE_CHECK_EVERY:])

    def _check_finite(self, rows: list[torch.Tensor], ids: list[int]) -> None:
        block = torch.stack(rows)
        if bool(torch.isfinite(block).all().item()):
            return
        bad_rows = (~torch.isfinite(block)).any(dim=1).nonzero().flatten().tolist()
        row = int(bad_rows[0])
        bad_cols = (~torch.isfinite(block[row])).nonzero().flatten().tolist()
        raise NonFiniteGradient(ids[row], [self.modules[int(c)].name for c in bad_cols])

    # -- per domain ------------------------------------------------------------------------
    def end_domain(self, weight: float, more: bool = False) -> DomainStats:
        """Combine across processes and finish the domain's statistics; fold its per-element
        score terms (weighted by `weight`) into the combined scores. `more`: further domains
        follow (their terms are then kept in the score store's file, not in memory)."""
        local_sq = self._local_rows()
        self._raise_if_non_finite(local_sq)
        rows, n_batches = self._combined_rows(local_sq)
        if n_batches == 0:
            raise ValueError("no batches were processed in this domain")
        reached = self._reached_modules()
        mean = self._mean(n_batches)
        module_sq = self._module_sq(mean)
        shares, exact = self._element_shares(mean)
        self._fold(mean, module_sq, weight, more)
        # clamp: a tied parameter's norm adds a cross term, which rounding may leave a hair below 0
        host = torch.cat([rows.clamp_min(0).sqrt().reshape(-1), module_sq.sqrt(), reached]).to("cpu", torch.float64).numpy()
        m = len(self.modules)
        self.begin_domain()
        return DomainStats(
            batch_norms=host[: n_batches * m].reshape(n_batches, m),
            mean_grad_norm=host[n_batches * m : n_batches * m + m].copy(),
            element_shares=shares,
            element_shares_exact=exact,
            reached=host[n_batches * m + m :] > 0,
        )

    def _local_rows(self) -> torch.Tensor:
        if self._rows:
            return torch.stack(self._rows)
        return torch.zeros((0, len(self.modules)), dtype=self._acc_dtype, device=self.device)

    def _raise_if_non_finite(self, local_sq: torch.Tensor) -> None:
        # Every process must learn of a bad batch anywhere, or the others would wait forever.
        bad = all_reduce_((~torch.isfinite(local_sq)).any().to(torch.float32).reshape(1), "max")
        if bool(bad.item()):
            if self._rows:
                self._check_finite(self._rows, self._batch_ids)
            raise NonFiniteGradient(-1, ["(a batch on another process)"])

    def _combined_rows(self, local_sq: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Per-batch squared module norms of the whole domain, and the number of batches."""
        on, _, world = distributed()
        if not on or world == 1 or self.mode == "synchronized":
            return local_sq, int(local_sq.shape[0])
        if self.mode == "sharded":
            # Same batches on every process, each holding a shard: squared norms add up.
            return all_reduce_(local_sq.contiguous()), int(local_sq.shape[0])
        # Plain process group: every process ran other batches; gather their rows, sum the sums.
        rows = _gather_rows(local_sq, world)
        for j, s in enumerate(self._sums):
            if s is None:
                s = self._sums[j] = torch.zeros_like(local(self.params[j]), dtype=self._sum_dtype[j])
            dist.all_reduce(s, op=dist.ReduceOp.SUM)
        return rows, int(rows.shape[0])

    def _reached_modules(self) -> torch.Tensor:
        flags = [0.0] * len(self.modules)
        for j, o in enumerate(self._owner_list):
            if self._reached[j]:
                flags[o] = 1.0
        return all_reduce_(torch.tensor(flags, dtype=self._acc_dtype, device=self.device), "max")

    def _mean(self, n_batches: int) -> list[torch.Tensor | None]:
        """The running sums divided by the number of batches, in place (None: never reached)."""
        present = [s for s in self._sums if s is not None]
        if present:
            torch._foreach_div_(present, float(n_batches))
        sums, self._sums = self._sums, [None] * len(self.params)
        return sums

    def _module_sq(self, mean: list[torch.Tensor | None]) -> torch.Tensor:
        """Squared norm of the mean gradient per module (assembled from shards when sharded)."""
        sq = torch.stack([self._zero if a is None or not c else self._sq_norm(a) for a, c in zip(mean, self._counted)])
        module_sq = torch.zeros(len(self.modules), dtype=self._acc_dtype, device=self.device)
        module_sq.index_add_(0, self._owner, sq)
        return all_reduce_(module_sq) if self.mode == "sharded" else module_sq

    def _element_shares(self, mean: list[torch.Tensor | None]) -> tuple[dict[str, float], bool]:
        """Top-p shares of sum |mean gradient| over every trainable element."""
        sharded = self.mode == "sharded"
        if self.exact:
            flat = torch.cat([
                (a.reshape(-1).abs() if a is not None else torch.zeros(local(p).numel(), device=self.device))
                .to(torch.float64) for a, p, c in zip(mean, self.params, self._counted) if c
            ])
            if sharded:
                flat = gather_values(flat)
            return heavy_tail.mass_shares(flat.cpu().numpy()), True
        counts, masses = self._histogram(mean, absolute=True, counted=self._counted)
        keep = counts > 0
        c_h = counts[keep].to("cpu", torch.float64).numpy()
        w_h = masses[keep].to("cpu", torch.float64).numpy()
        total_w = float(w_h.sum())
        fractions = np.concatenate([[0.0], np.cumsum(c_h) / c_h.sum()])
        cum = np.concatenate([[0.0], np.cumsum(w_h) / total_w]) if total_w > 0 else fractions
        return heavy_tail.shares_from_curve(fractions, cum, int(c_h.sum())), False

    def _histogram(
        self, tensors: list[torch.Tensor | None], absolute: bool, counted: list[bool],
        params: list[torch.nn.Parameter] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-binned (counts, masses) of the tensors' elements (None: zeros of the parameter's
        size), merged over processes when sharded; tensors not `counted` here are left out."""
        params = params if params is not None else self.params
        tensors = [t for t, c in zip(tensors, counted) if c]
        params = [p for p, c in zip(params, counted) if c]
        present = [t for t in tensors if t is not None and t.numel()]
        top = torch.stack([torch.linalg.vector_norm(t, math.inf) for t in present]).max() if present else self._zero
        if self.mode == "sharded":
            top = all_reduce_(top.to(torch.float64).reshape(1), "max")[0]
        counts, masses = histogram(present, top, absolute=absolute) if present else histogram([], 0.0)
        counts = counts.to(self.device)
        masses = masses.to(self.device)
        counts[-1] += sum(local(p).numel() for t, p in zip(tensors, params) if t is None)
        if self.mode == "sharded":
            all_reduce_(counts)
            all_reduce_(masses)
        return counts, masses

    def _fold(self, mean: list[torch.Tensor | None], module_sq: torch.Tensor, weight: float, more: bool) -> None:
        """mean -> weight * mean^2 / (module's sum of mean^2), in place; then into the scores."""
        scale = torch.where(module_sq > 0, weight / module_sq.clamp_min(1e-300), torch.zeros_like(module_sq))
        per_param = scale[self._owner].to(torch.float32).tolist()
        terms: list[torch.Tensor | None] = []
        for j, a in enumerate(mean):
            if a is not None:
                a = a.square_().mul_(per_param[j]).to(torch.float32)
            if more:
                self.scores.spill(j, a)  # then dropped: memory stays one model-sized buffer
                mean[j] = None
            else:
                terms.append(a)
        if not more:
            self.scores.finish(terms)

    # -- results -----------------------------------------------------------------------------
    def _final(self) -> list[torch.Tensor | None]:
        if self.scores.tensors is None:
            raise RuntimeError("scores need a finished last domain (end_domain(..., more=False))")
        return self.scores.tensors

    def score_tensors(self, granularity: str, keep: list[int]) -> dict[str, torch.Tensor]:
        """Combined per-element (or per-row) scores of the kept modules, by tensor name, on the CPU.

        The score is the domain-weighted squared mean gradient, normalised within each module and
        domain (the quantity the gain curves rank); rows sum it over each row of a parameter.
        """
        if self.mode == "sharded":
            raise RuntimeError("score sidecars are not written from sharded (FSDP) computations")
        final = self._final()
        out: dict[str, torch.Tensor] = {}
        start = 0
        offsets = []
        for m in self.modules:
            offsets.append(start)
            start += len(m.params)
        for i in keep:
            m = self.modules[i]
            for j, name in enumerate(m.tensor_names):
                p = m.params[j]
                v = final[offsets[i] + j]
                v = torch.zeros(p.shape, dtype=torch.float32) if v is None else v.detach()
                if granularity == "row":
                    v = v.reshape(v.shape[0], -1).sum(dim=1) if v.dim() >= 1 else v.reshape(1)
                out[name] = v.to("cpu", torch.float32).contiguous()
        return out

    # -- allocation inputs -----------------------------------------------------------------
    def gain_curves(self, granularity: str) -> list[GainCurve]:
        """Per-module gain curves over the combined per-element squared-gradient mass.

        granularity "element": units are single elements (exact or sketched by size);
        "row": units are rows (first dimension) of each parameter, exact.
        """
        final = self._final()
        curves: list[GainCurve] = []
        start = 0
        for m in self.modules:
            part = slice(start, start + len(m.params))
            start += len(m.params)
            params, counted = self.params[part], self._counted[part]
            vals = [
                v if v is not None else torch.zeros(local(p).shape, dtype=torch.float32, device=self.device)
                for v, p in zip(final[part], params)
            ]
            mine = [v for v, c in zip(vals, counted) if c]
            if granularity == "row":
                curves.append(self._row_curve(mine))
            elif self.exact:
                flat = torch.cat([v.reshape(-1) for v in mine]) if mine else torch.zeros(0, device=self.device)
                curves.append(exact_curve(gather_values(flat) if self.mode == "sharded" else flat))
            else:
                curves.append(curve_from_histogram(*self._histogram(list(vals), False, counted, params)))
        return curves

    def _row_curve(self, vals: list[torch.Tensor]) -> GainCurve:
        sizes: list[torch.Tensor] = [torch.zeros(0, dtype=torch.int64, device=self.device)]
        masses: list[torch.Tensor] = [torch.zeros(0, dtype=torch.float64, device=self.device)]
        for v in vals:
            rows = v.reshape(v.shape[0], -1) if v.dim() >= 1 else v.reshape(1, 1)
            masses.append(rows.to(torch.float64).sum(dim=1))
            sizes.append(torch.full((rows.shape[0],), rows.shape[1], dtype=torch.int64, device=v.device))
        size, mass = torch.cat(sizes), torch.cat(masses)
        if self.mode == "sharded":  # FSDP2 shards on the first dimension: rows are whole
            size, mass = gather_values(size), gather_values(mass)
        return row_curve(size, mass)


def _gather_rows(local_sq: torch.Tensor, world: int) -> torch.Tensor:
    """All-gather per-batch rows of unequal counts (padded with NaN, then dropped)."""
    m = local_sq.shape[1]
    n_local = all_reduce_(torch.tensor([local_sq.shape[0]], dtype=torch.long, device=local_sq.device), "max")
    n_max = int(n_local.item())
    padded = torch.full((n_max, m), math.nan, dtype=local_sq.dtype, device=local_sq.device)
    padded[: local_sq.shape[0]] = local_sq
    valid = torch.zeros(n_max, dtype=local_sq.dtype, device=local_sq.device)
    valid[: local_sq.shape[0]] = 1
    parts = [torch.empty_like(padded) for _ in range(world)]
    flags = [torch.empty_like(valid) for _ in range(world)]
    dist.all_gather(parts, padded)
    dist.all_gather(flags, valid)
    return torch.cat([p[f > 0] for p, f in zip(parts, flags)])
