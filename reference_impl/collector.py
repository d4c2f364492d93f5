"""On-device accumulation of per-module gradient statistics.

After each backward pass `GradientCollector.accumulate` does, for all trainable parameters at once
and without any host synchronisation:

* one fused `torch._foreach_norm` over the gradients, giving each parameter's L2 norm;
* a segment sum of the squared norms into the modules (`index_add_`), whose square roots are the
  batch's per-module gradient norms, appended to a list of small device tensors;
* one fused `torch._foreach_add_` of the gradients into a running sum per parameter, from which
  the norm of the mean gradient and the per-element gain curves follow at the end of a domain.

At the end of a domain the per-batch norms come to the host in one transfer. Under
torch.distributed the accumulators are combined across processes (see `end_domain`).

Distributed modes. Without DDP every process handles its own batches (a plain process group): the
per-batch norms are all-gathered and the gradient sums all-reduced, so the statistics equal those of
one process seeing all batches. With DistributedDataParallel the gradients are already averaged
across processes during backward: a "batch" is then the union of the processes' local batches, all
processes hold identical gradients, and nothing needs reducing except the example counts.
FSDP is not supported: under FSDP a process holds only a shard of each gradient (flattened across
module boundaries in FlatParameters), so per-module norms would need a reduction of partial squared
norms per module plus a mapping from flat shards back to parameters; `compute_blueprint` refuses a
model wrapped in FullyShardedDataParallel rather than report norms of shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from reference_impl import heavy_tail
from reference_impl.model_binding import BoundModule
from reference_impl.sketch import GainCurve, exact_curve, histogram, row_curve, sketch_curve

#: Up to this many trainable elements in total, element-level shares and gain curves are exact.
EXACT_ELEMENT_LIMIT = 1 << 22
#: How often (in local batches) the loop checks for non-finite gradients: one sync per window.
FINITE_CHECK_EVERY = 64


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


def _distributed() -> tuple[bool, int, int]:
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


class GradientCollector:
    """Accumulates gradient statistics of `modules` batch by batch, per domain.

    `synchronized_grads` says that gradients are already identical across processes (DDP);
    otherwise each process contributes different batches and results are combined at the end.
    """

    def __init__(
        self,
        modules: list[BoundModule],
        device: torch.device,
        synchronized_grads: bool = False,
        exact_limit: int = EXACT_ELEMENT_LIMIT,
    ) -> None:
        self.modules = modules
        self.device = device
        self.params: list[torch.nn.Parameter] = [p for m in modules for p in m.params]
        if not self.params:
            raise ValueError("no trainable parameters to collect")
        owner = [i for i, m in enumerate(modules) for _ in m.params]
        self._owner = torch.tensor(owner, dtype=torch.long, device=device)
        self._owner_list = owner
        self._acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        # Norms are taken in float32 (widening half/bfloat16 gradients) unless the model is float64.
        self._norm_dtype = torch.float64 if any(p.dtype == torch.float64 for p in self.params) else torch.float32
        self.synchronized_grads = synchronized_grads
        self.total_elements = sum(int(p.numel()) for p in self.params)
        self.exact = self.total_elements <= exact_limit
        self._zeros: dict[int, torch.Tensor] = {}
        self._sums: list[torch.Tensor] = []
        self._combined: list[torch.Tensor] | None = None
        self._norms: list[torch.Tensor] = []
        self._batch_ids: list[int] = []
        self._reached = [False] * len(self.params)

    # -- per batch -------------------------------------------------------------------------
    def begin_domain(self) -> None:
        """Reset the per-domain accumulators."""
        self._sums = [
            torch.zeros_like(p, dtype=torch.float64 if p.dtype == torch.float64 else torch.float32,
                             memory_format=torch.contiguous_format)
            for p in self.params
        ]
        self._norms = []
        self._batch_ids = []
        self._reached = [False] * len(self.params)

    def _grads(self) -> list[torch.Tensor]:
        grads: list[torch.Tensor] = []
        for j, p in enumerate(self.params):
            g = p.grad
            if g is None:
                # Unreached in this batch: its gradient is zero. The zero tensor is made once.
                z = self._zeros.get(j)
                if z is None:
                    z = torch.zeros_like(p)
                    self._zeros[j] = z
                grads.append(z)
            else:
                self._reached[j] = True
                grads.append(g.to_dense() if g.is_sparse else g)
        return grads

    def accumulate(self, batch_index: int) -> None:
        """Fold the gradients now in `.grad` (one batch) into the accumulators. No host sync."""
        grads = self._grads()
        norms = torch.stack(torch._foreach_norm(grads, 2, dtype=self._norm_dtype)).to(self._acc_dtype)
        module_sq = torch.zeros(len(self.modules), dtype=self._acc_dtype, device=self.device)
        module_sq.index_add_(0, self._owner, norms * norms)
        self._norms.append(module_sq.sqrt_())
        self._batch_ids.append(batch_index)
        torch._foreach_add_(self._sums, grads)
        if len(self._norms) % FINITE_CHECK_EVERY == 0 and not _distributed()[0]:
            self._check_finite(self._norms[-FINITE_CHECK_EVERY:], self._batch_ids[-FINITE_CHECK_EVERY:])

    def _check_finite(self, norms: list[torch.Tensor], ids: list[int]) -> None:
        block = torch.stack(norms)
        if bool(torch.isfinite(block).all().item()):
            return
        bad_rows = (~torch.isfinite(block)).any(dim=1).nonzero().flatten().tolist()
        row = int(bad_rows[0])
        bad_cols = (~torch.isfinite(block[row])).nonzero().flatten().tolist()
        raise NonFiniteGradient(ids[row], [self.modules[int(c)].name for c in bad_cols])

    # -- per domain ------------------------------------------------------------------------
    def end_domain(self, weight: float) -> DomainStats:
        """Combine across processes, finish the domain's statistics and fold its element
        masses (weighted by `weight`) into the combined per-element scores for allocation."""
        is_dist, _, world = _distributed()
        combine = is_dist and world > 1 and not self.synchronized_grads
        if self._norms:
            local = torch.stack(self._norms)
        else:
            local = torch.zeros((0, len(self.modules)), dtype=self._acc_dtype, device=self.device)
        # Every process must learn of a bad batch anywhere, or the others would wait forever.
        bad = (~torch.isfinite(local)).any().to(torch.float32).reshape(1)
        if is_dist and world > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bool(bad.item()):
            if self._norms:
                self._check_finite(self._norms, self._batch_ids)
            raise NonFiniteGradient(-1, ["(a batch on another process)"])
        reached_list = [0.0] * len(self.modules)
        for j, o in enumerate(self._owner_list):
            if self._reached[j]:
                reached_list[o] = 1.0
        reached = torch.tensor(reached_list, dtype=torch.float32, device=self.device)
        count = torch.tensor([float(local.shape[0])], dtype=torch.float64, device=self.device)
        if combine:
            local, count = self._gather_norms(local, world)
            for s in self._sums:
                dist.all_reduce(s, op=dist.ReduceOp.SUM)
            dist.all_reduce(reached, op=dist.ReduceOp.MAX)
        n_batches = int(count.item())
        if n_batches == 0:
            raise ValueError("no batches were processed in this domain")
        # Mean gradient per element, in place (the sums are not needed afterwards).
        torch._foreach_div_(self._sums, float(n_batches))
        mean = self._sums
        pnorm = torch.stack(torch._foreach_norm(mean, 2, dtype=self._norm_dtype)).to(self._acc_dtype)
        msq = torch.zeros(len(self.modules), dtype=self._acc_dtype, device=self.device)
        msq.index_add_(0, self._owner, pnorm * pnorm)
        mean_grad_norm = msq.sqrt()

        shares, exact = self._element_shares(mean)
        self._fold_combined(mean, msq, weight)

        host = torch.cat([local.reshape(-1), mean_grad_norm, reached.to(self._acc_dtype)]).to("cpu", torch.float64)
        m = len(self.modules)
        arr = host.numpy()
        batch_norms = arr[: n_batches * m].reshape(n_batches, m)
        self._sums = []
        return DomainStats(
            batch_norms=batch_norms,
            mean_grad_norm=arr[n_batches * m : n_batches * m + m].copy(),
            element_shares=shares,
            element_shares_exact=exact,
            reached=arr[n_batches * m + m :] > 0,
        )

    def _gather_norms(self, local: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All-gather per-batch norm rows of unequal counts (padded with NaN, then dropped)."""
        m = len(self.modules)
        n_local = torch.tensor([local.shape[0]], dtype=torch.long, device=self.device)
        dist.all_reduce(n_local, op=dist.ReduceOp.MAX)
        n_max = int(n_local.item())
        padded = torch.full((n_max, m), math.nan, dtype=self._acc_dtype, device=self.device)
        padded[: local.shape[0]] = local
        valid = torch.zeros(n_max, dtype=self._acc_dtype, device=self.device)
        valid[: local.shape[0]] = 1
        parts = [torch.empty_like(padded) for _ in range(world)]
        flags = [torch.empty_like(valid) for _ in range(world)]
        dist.all_gather(parts, padded)
        dist.all_gather(flags, valid)
        rows = torch.cat([p[f > 0] for p, f in zip(parts, flags)])
        return rows, torch.tensor([float(rows.shape[0])], dtype=torch.float64, device=self.device)

    def _element_shares(self, mean: list[torch.Tensor]) -> tuple[dict[str, float], bool]:
        """Top-p shares of sum |mean gradient| over every trainable element."""
        if self.exact:
            flat = torch.cat([a.reshape(-1) for a in mean]).abs().to("cpu", torch.float64).numpy()
            return heavy_tail.mass_shares(flat), True
        # Largest |value| per tensor without a temporary: the infinity norm.
        top = torch.stack(torch._foreach_norm(mean, math.inf)).max()
        counts, masses = histogram(list(mean), top, absolute=True)
        keep = counts > 0
        c_h = counts[keep].to("cpu", torch.float64).numpy()
        w_h = masses[keep].to("cpu", torch.float64).numpy()
        total_w = float(w_h.sum())
        fractions = np.concatenate([[0.0], np.cumsum(c_h) / c_h.sum()])
        cum = np.concatenate([[0.0], np.cumsum(w_h) / total_w]) if total_w > 0 else fractions
        return heavy_tail.shares_from_curve(fractions, cum, int(c_h.sum())), False

    def _fold_combined(self, mean: list[torch.Tensor], module_sq: torch.Tensor, weight: float) -> None:
        """combined += weight * mean^2 / (module's sum of mean^2), element-wise, in place on `mean`."""
        torch._foreach_mul_(mean, mean)
        scale = torch.where(module_sq > 0, weight / module_sq.clamp_min(1e-300), torch.zeros_like(module_sq))
        per_param = scale[self._owner].to(torch.float32)
        torch._foreach_mul_(mean, list(per_param.unbind()))
        if self._combined is None:
            self._combined = mean
        else:
            torch._foreach_add_(self._combined, mean)

    def score_tensors(self, granularity: str, keep: list[int]) -> dict[str, torch.Tensor]:
        """Combined per-element (or per-row) scores of the kept modules, by tensor name, on the CPU.

        The score is the domain-weighted squared mean gradient, normalised within each module and
        domain (the quantity the gain curves rank); rows sum it over each row of a parameter.
        """
        if self._combined is None:
            raise RuntimeError("scores need at least one finished domain")
        out: dict[str, torch.Tensor] = {}
        start = 0
        offsets = []
        for m in self.modules:
            offsets.append(start)
            start += len(m.params)
        for i in keep:
            m = self.modules[i]
            for j, name in enumerate(m.tensor_names):
                v = self._combined[offsets[i] + j].detach()
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
        if self._combined is None:
            raise RuntimeError("gain curves need at least one finished domain")
        curves: list[GainCurve] = []
        start = 0
        for m in self.modules:
            vals = self._combined[start : start + len(m.params)]
            start += len(m.params)
            if granularity == "row":
                sizes: list[torch.Tensor] = []
                masses: list[torch.Tensor] = []
                for v in vals:
                    rows = v.reshape(v.shape[0], -1) if v.dim() >= 1 else v.reshape(1, 1)
                    masses.append(rows.to(torch.float64).sum(dim=1))
                    sizes.append(torch.full((rows.shape[0],), rows.shape[1], dtype=torch.int64, device=v.device))
                curves.append(row_curve(torch.cat(sizes), torch.cat(masses)))
            else:
                if self.exact:
                    curves.append(exact_curve(torch.cat([v.reshape(-1) for v in vals])))
                else:
                    curves.append(sketch_curve(list(vals)))
        return curves
