"""Within-module gain curves from the distribution of per-element (or per-row) gradient mass.

A gain curve G(k) says which fraction of a module's gradient mass the top-k fraction of its
elements holds (elements ranked by their own mass). It is concave, G(0) = 0 and G(1) = 1. It is
represented by its vertices: `fractions` (cumulative share of elements) and `masses` (cumulative
share of mass), both starting at 0 and ending at 1; between vertices the curve is linear.

Two ways to get one, chosen by size:

* exact: sort the per-unit masses (units: single elements, or rows of given sizes); vertices
  are downsampled to at most `MAX_VERTICES`, which keeps the curve concave and below the exact one;
* sketch: a fixed log-spaced histogram of the values relative to the module's largest value
  (`BINS_PER_DECADE` bins per decade over `DECADES` decades, everything smaller in a last bin).
  Elements within a bin are treated as equal, which bounds the error of G by one bin's width
  (a factor 10^(1/BINS_PER_DECADE) in value).

Both are computed with torch on the tensors' device; only the (small) curves come back to host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MAX_VERTICES = 2049
BINS_PER_DECADE = 40
DECADES = 24


@dataclass(frozen=True)
class GainCurve:
    """A concave piecewise-linear gain curve over `size` units of parameters.

    `sizes[j]` and `gains[j]` describe segment j (sorted by decreasing gain per element):
    how many parameters it holds and which share of the module's mass it adds.
    """

    size: int
    sizes: np.ndarray  # int64, parameters per segment, sums to `size`
    gains: np.ndarray  # float64, share of mass per segment, sums to 1 (or all 0 for a zero module)
    exact: bool

    @property
    def fractions(self) -> np.ndarray:
        """Cumulative fraction of parameters at each vertex (starting at 0)."""
        return np.concatenate([[0.0], np.cumsum(self.sizes) / max(self.size, 1)])

    @property
    def masses(self) -> np.ndarray:
        """Cumulative share of mass at each vertex (starting at 0)."""
        return np.concatenate([[0.0], np.cumsum(self.gains)])

    def __call__(self, k: float) -> float:
        """G(k): share of mass held by the top-k fraction of parameters."""
        return float(np.interp(k, self.fractions, self.masses))


def _from_sorted_units(sizes: torch.Tensor, masses: torch.Tensor, exact: bool) -> GainCurve:
    """Curve from units already sorted by decreasing mass per parameter; downsampled on device."""
    total_size = int(sizes.sum().item())
    total_mass = masses.sum()
    n = sizes.numel()
    if n > MAX_VERTICES - 1:
        # Keep every vertex at an evenly spaced unit index; a chord of a concave curve lies
        # below it, so the downsampled curve never overstates the gain.
        cut = torch.unique(torch.linspace(0, n, MAX_VERTICES, device=sizes.device).round().long())
        cum_s = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])[cut]
        cum_m = torch.cat([masses.new_zeros(1), torch.cumsum(masses, 0)])[cut]
        sizes = torch.diff(cum_s)
        masses = torch.diff(cum_m)
    host_sizes = sizes.to("cpu", torch.int64).numpy()
    host_mass = masses.to("cpu", torch.float64).numpy()
    tm = float(total_mass.item())
    gains = host_mass / tm if tm > 0 else np.zeros_like(host_mass)
    return GainCurve(size=total_size, sizes=host_sizes, gains=gains, exact=exact)


def exact_curve(values: torch.Tensor) -> GainCurve:
    """Exact gain curve of elements whose masses are `values` (non-negative, any shape)."""
    v = values.detach().reshape(-1).to(torch.float64)
    order = torch.sort(v, descending=True, stable=True).values
    return _from_sorted_units(torch.ones_like(order, dtype=torch.int64), order, exact=True)


def row_curve(row_sizes: torch.Tensor, row_masses: torch.Tensor) -> GainCurve:
    """Exact gain curve over rows of possibly different sizes, ranked by mass per parameter."""
    density = row_masses.to(torch.float64) / row_sizes.to(torch.float64)
    order = torch.sort(density, descending=True, stable=True).indices
    return _from_sorted_units(row_sizes[order].to(torch.int64), row_masses[order].to(torch.float64), exact=True)


#: Elements per histogram chunk: small enough that the temporaries stay in cache and are reused.
CHUNK = 1 << 20


#: Elements per chunk of `squared_norm` on the CPU (1 MiB of float32 temporaries).
NORM_CHUNK_CPU = 1 << 18
#: Elements per chunk of `squared_norm` on accelerators, whose reductions make no temporary.
NORM_CHUNK_DEVICE = 1 << 24


def squared_norm(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Sum of squares of `t`'s elements as a `dtype` scalar, accurate and without a temporary the
    size of `t`. torch's `vector_norm(dtype=float64)` first widens the whole tensor (on the CPU a
    copy twice its size), and its float32 norm on the CPU is off by ~1e-4 relative over tens of
    millions of elements; so the CPU squares chunks and sums them with torch's cascade summation
    (~1e-9), and accelerators take float32 norms of large chunks; chunk results add up in `dtype`."""
    flat = t.reshape(-1)
    wide = torch.promote_types(flat.dtype, torch.float32)
    total = torch.zeros((), dtype=dtype, device=t.device)
    if flat.device.type == "cpu":
        for start in range(0, flat.numel(), NORM_CHUNK_CPU):
            chunk = flat[start : start + NORM_CHUNK_CPU].to(wide)
            total += (chunk * chunk).sum().to(dtype)
    else:
        for start in range(0, flat.numel(), NORM_CHUNK_DEVICE):
            total += torch.linalg.vector_norm(flat[start : start + NORM_CHUNK_DEVICE].to(wide)).to(dtype).square()
    return total


def histogram(
    values: torch.Tensor | list[torch.Tensor], top: torch.Tensor | float, absolute: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts, masses) of non-negative `values` in log-spaced bins below `top`, largest bin first.

    Bin j holds values in (top * 10^-(j+1)/B, top * 10^-j/B] for B = BINS_PER_DECADE; the last
    bin holds everything below DECADES decades under `top`, including zeros. `values` may be a
    list of tensors (one histogram of all their elements); `absolute` bins |values|. The work is
    done in chunks so that no temporary as large as the input is ever allocated.
    """
    tensors = values if isinstance(values, list) else [values]
    nbins = BINS_PER_DECADE * DECADES + 1
    top_v = float(top) if not isinstance(top, torch.Tensor) else float(top.item())
    device = tensors[0].device if tensors else torch.device("cpu")
    counts = torch.zeros(nbins, dtype=torch.int64, device=device)
    masses = torch.zeros(nbins, dtype=torch.float64, device=device)
    log_top = math.log10(top_v) if top_v > 0 else 0.0
    largest = max((min(t.numel(), CHUNK) for t in tensors), default=0)
    ones = torch.ones(largest, dtype=torch.int64, device=device)
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), CHUNK):
            v = flat[start : start + CHUNK].to(torch.float32)
            if absolute:
                v = v.abs()
            if top_v > 0:
                # Bin = floor(B * log10(top / v)); zeros give +inf and land in the last bin.
                t = torch.log10(v)
                t.sub_(log_top).mul_(-float(BINS_PER_DECADE)).clamp_(0, nbins - 1)
                idx = t.long()  # truncation = floor for non-negative values
            else:
                idx = torch.full(v.shape, nbins - 1, dtype=torch.long, device=v.device)
            # scatter_add_ is far faster than bincount on CPU (and deterministic there).
            counts.scatter_add_(0, idx, ones[: idx.numel()])
            chunk_mass = torch.zeros(nbins, dtype=torch.float32, device=device).scatter_add_(0, idx, v)
            masses += chunk_mass.to(torch.float64)
    return counts, masses


def curve_from_histogram(counts: torch.Tensor, masses: torch.Tensor) -> GainCurve:
    """Approximate gain curve from a `histogram` (largest bin first); histograms with the same
    `top` merge by adding their counts and masses (as processes holding shards do)."""
    keep = counts > 0
    return _from_sorted_units(counts[keep], masses[keep], exact=False)


def sketch_curve(values: torch.Tensor | list[torch.Tensor]) -> GainCurve:
    """Approximate gain curve of elements with masses `values` (non-negative; a tensor or a list
    of tensors taken together), from a log-spaced histogram."""
    tensors = values if isinstance(values, list) else [values]
    nonempty = [t for t in tensors if t.numel()]
    top = torch.stack([t.detach().max() for t in nonempty]).max() if nonempty else 0.0
    return curve_from_histogram(*histogram(tensors, top))
